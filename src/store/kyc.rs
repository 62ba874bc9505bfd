//! KYC webhook events and the clientId → email mapping.

use serde::Serialize;

use super::sql::{ReadError, Row, args};
use super::{StoreError, Tx};
use crate::clock::UnixTime;

/// A received KYC webhook.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KycEvent {
    /// Sequence number.
    pub id: i64,
    /// `idenfy` or `kyc-complete`.
    pub provider: String,
    /// iDenfy's verification id.
    pub scan_ref: Option<String>,
    /// iDenfy's client id (your user id).
    pub client_id: Option<String>,
    /// Whether iDenfy marked the result final.
    pub is_final: Option<bool>,
    /// Overall status as sent.
    pub status: Option<String>,
    /// `queued`, `unmatched`, `ignored`, `duplicate` or `rejected`.
    pub outcome: String,
    /// Why.
    pub detail: Option<String>,
    /// The issuance it started.
    pub issuance_id: Option<String>,
    /// When it arrived.
    pub received_at: UnixTime,
    /// How many more times the same delivery (byte for byte) arrived.
    pub repeats: u32,
    /// When it last arrived, if more than once.
    pub last_received_at: Option<UnixTime>,
}

/// A new event.
#[derive(Debug, Clone, Default)]
pub struct NewKycEvent<'a> {
    /// Provider.
    pub provider: &'a str,
    /// scanRef.
    pub scan_ref: Option<&'a str>,
    /// clientId.
    pub client_id: Option<&'a str>,
    /// final.
    pub is_final: Option<bool>,
    /// status.overall.
    pub status: Option<&'a str>,
    /// Outcome.
    pub outcome: &'a str,
    /// Detail.
    pub detail: Option<&'a str>,
    /// Issuance started.
    pub issuance_id: Option<&'a str>,
    /// SHA-256 (hex) of the raw body: a second delivery with it is counted, not stored.
    pub delivery_hash: Option<&'a str>,
}

const EVENT_COLUMNS: &str = "id, provider, scan_ref, client_id, final, status, outcome, detail, \
                             issuance_id, received_at, repeats, last_received_at";

fn event(r: &Row) -> Result<KycEvent, ReadError> {
    Ok(KycEvent {
        id: r.get(0)?,
        provider: r.get(1)?,
        scan_ref: r.get(2)?,
        client_id: r.get(3)?,
        is_final: r.get(4)?,
        status: r.get(5)?,
        outcome: r.get(6)?,
        detail: r.get(7)?,
        issuance_id: r.get(8)?,
        received_at: r.get(9)?,
        repeats: r.get(10)?,
        last_received_at: r.get(11)?,
    })
}

/// Records an event; fails with a constraint violation for a second queued event with the same
/// scanRef, or a second row for the same delivery.
#[tracing::instrument(skip_all)]
pub fn record(tx: &Tx<'_>, e: &NewKycEvent<'_>, now: UnixTime) -> Result<i64, StoreError> {
    tx.query_one(
        "INSERT INTO kyc_events (provider, scan_ref, client_id, final, status, outcome, detail,
                                 issuance_id, received_at, delivery_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        &args![
            e.provider,
            e.scan_ref,
            e.client_id,
            e.is_final,
            e.status,
            e.outcome,
            e.detail,
            e.issuance_id,
            now,
            e.delivery_hash
        ],
        |r| r.get(0),
    )
}

/// Counts one more arrival of the delivery `delivery_hash` on its row and returns the row, or
/// `None` if it never arrived before.
#[tracing::instrument(skip_all)]
pub fn count_repeat(
    tx: &Tx<'_>,
    provider: &str,
    delivery_hash: &str,
    now: UnixTime,
) -> Result<Option<KycEvent>, StoreError> {
    tx.query_opt(
        &format!(
            "UPDATE kyc_events SET repeats = repeats + 1, last_received_at = ?3
                 WHERE provider = ?1 AND delivery_hash = ?2 RETURNING {EVENT_COLUMNS}"
        ),
        &args![provider, delivery_hash, now],
        event,
    )
}

/// Turns the unmatched event `id` into the one that queued `issuance_id` (its clientId has been
/// mapped since it first arrived). False if another delivery got there first.
#[tracing::instrument(skip_all)]
pub fn mark_queued(tx: &Tx<'_>, id: i64, issuance_id: &str) -> Result<bool, StoreError> {
    let n = tx.execute(
        "UPDATE kyc_events SET outcome = 'queued', detail = NULL, issuance_id = ?2
         WHERE id = ?1 AND outcome = 'unmatched'",
        &args![id, issuance_id],
    )?;
    Ok(n == 1)
}

/// Whether this scanRef already started an issuance.
#[tracing::instrument(skip_all)]
pub fn seen_scan_ref(tx: &Tx<'_>, provider: &str, scan_ref: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM kyc_events WHERE provider = ?1 AND scan_ref = ?2 AND outcome = 'queued'",
            &args![provider, scan_ref],
            |_| Ok(()),
        )?
        .is_some())
}

/// Events, newest first, optionally with one outcome.
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>, outcome: Option<&str>, limit: u32) -> Result<Vec<KycEvent>, StoreError> {
    tx.query_map(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM kyc_events WHERE (CAST(?1 AS TEXT) IS NULL OR outcome = ?1)
             ORDER BY id DESC LIMIT ?2"
        ),
        &args![outcome, limit],
        event,
    )
}

/// A clientId → email mapping as stored.
#[derive(Debug, Clone)]
pub struct Subject {
    /// iDenfy's clientId.
    pub client_id: String,
    /// The email it maps to.
    pub email: String,
    /// When the mapping was first made.
    pub created_at: UnixTime,
    /// The row's MAC (checked by the service, never here).
    pub mac: Option<Vec<u8>>,
}

/// Sets the email of an iDenfy clientId.
#[tracing::instrument(skip_all)]
pub fn put_subject(
    tx: &Tx<'_>,
    client_id: &str,
    email: &str,
    now: UnixTime,
    mac: &[u8],
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO kyc_subjects (client_id, email, created_at, mac) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (client_id) DO UPDATE SET email = excluded.email, mac = excluded.mac",
        &args![client_id, email, now, mac],
    )?;
    Ok(())
}

/// The mapping of an iDenfy clientId.
#[tracing::instrument(skip_all)]
pub fn subject(tx: &Tx<'_>, client_id: &str) -> Result<Option<Subject>, StoreError> {
    tx.query_opt(
        "SELECT client_id, email, created_at, mac FROM kyc_subjects WHERE client_id = ?1",
        &args![client_id],
        subject_row,
    )
}

fn subject_row(r: &Row) -> Result<Subject, ReadError> {
    Ok(Subject {
        client_id: r.get(0)?,
        email: r.get(1)?,
        created_at: r.get(2)?,
        mac: r.get(3)?,
    })
}

/// Every mapping.
#[tracing::instrument(skip_all)]
pub fn subjects(tx: &Tx<'_>) -> Result<Vec<Subject>, StoreError> {
    tx.query_map(
        "SELECT client_id, email, created_at, mac FROM kyc_subjects ORDER BY client_id",
        &args![],
        subject_row,
    )
}

/// Stores a mapping's MAC.
#[tracing::instrument(skip_all)]
pub fn set_subject_mac(tx: &Tx<'_>, client_id: &str, mac: &[u8]) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE kyc_subjects SET mac = ?2 WHERE client_id = ?1",
        &args![client_id, mac],
    )?;
    Ok(())
}

/// Erases the personal data (clientId, scanRef, detail) of the deliveries received before
/// `cutoff`, except those of an issuance still in progress; how many.
#[tracing::instrument(skip_all)]
pub fn erase_received_before(
    tx: &Tx<'_>,
    cutoff: UnixTime,
    now: UnixTime,
) -> Result<usize, StoreError> {
    tx.execute(
        "UPDATE kyc_events SET client_id = NULL, scan_ref = NULL, detail = NULL, erased_at = ?2
         WHERE erased_at IS NULL AND received_at < ?1
           AND (issuance_id IS NULL OR issuance_id NOT IN (
                SELECT id FROM issuances WHERE state IN ('queued', 'submitted')))",
        &args![cutoff, now],
    )
}

/// Erases the personal data of the deliveries of `client_id` or that started `issuance_id`;
/// how many.
#[tracing::instrument(skip_all)]
pub fn erase_linked(
    tx: &Tx<'_>,
    client_id: Option<&str>,
    issuance_id: Option<&str>,
    now: UnixTime,
) -> Result<usize, StoreError> {
    tx.execute(
        "UPDATE kyc_events SET client_id = NULL, scan_ref = NULL, detail = NULL, erased_at = ?3
         WHERE erased_at IS NULL AND (client_id = ?1 OR issuance_id = ?2)",
        &args![client_id, issuance_id, now],
    )
}

/// The clientIds mapped to `email` (compared without regard to case).
#[tracing::instrument(skip_all)]
pub fn subjects_for_email(tx: &Tx<'_>, email: &str) -> Result<Vec<String>, StoreError> {
    tx.query_map(
        "SELECT client_id FROM kyc_subjects WHERE lower(email) = lower(?1)",
        &args![email],
        |r| r.get(0),
    )
}

/// Deletes the mapping of `client_id`.
#[tracing::instrument(skip_all)]
pub fn delete_subject(tx: &Tx<'_>, client_id: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM kyc_subjects WHERE client_id = ?1",
        &args![client_id],
    )?;
    Ok(())
}
