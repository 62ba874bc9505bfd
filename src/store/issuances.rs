//! Issuance rows: every request to AIR Kit is recorded before the first upstream call and
//! updated after each, so a crash or an outage loses nothing.

use serde_json::Value;

use super::sql::{ReadError, Row, args};
use super::{Rows, StoreError, Tx};
use crate::clock::UnixTime;

/// An issuance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuanceRow {
    /// keyhost's issuance id (`iss_…`).
    pub id: String,
    /// Client id, or `webhook:kyc` / `webhook:idenfy`.
    pub source: String,
    /// Caller's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Hash of the canonical request.
    pub request_hash: String,
    /// The user's email.
    pub email: String,
    /// Issuer DID.
    pub issuer_did: String,
    /// Issuance program id.
    pub credential_id: String,
    /// Credential data.
    pub credential_subject: Value,
    /// `ignore` or `revoke`.
    pub on_duplicate: String,
    /// `queued`, `submitted`, `onchain`, `failed`, `stalled` or `unconfirmed`.
    pub state: String,
    /// Upstream issue attempts so far.
    pub attempts: u32,
    /// When the next attempt or poll is due.
    pub next_attempt_at: Option<UnixTime>,
    /// AIR's issuance id.
    pub core_claim_hash: Option<String>,
    /// AIR's user id.
    pub user_uuid: Option<String>,
    /// AIR reported an existing credential (`onDuplicate: "ignore"`).
    pub duplicate: bool,
    /// Last `vcStatus` seen.
    pub vc_status: Option<String>,
    /// Verifiable credential id once ONCHAIN.
    pub vc_id: Option<String>,
    /// AIR's issuance date once ONCHAIN.
    pub issuance_date: Option<String>,
    /// Status polls so far.
    pub polls: u32,
    /// Last upstream HTTP status.
    pub last_status: Option<u16>,
    /// Last error, with its fix.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: UnixTime,
    /// Last changed.
    pub updated_at: UnixTime,
    /// Accepted by AIR.
    pub submitted_at: Option<UnixTime>,
    /// Reached a final state.
    pub completed_at: Option<UnixTime>,
    /// MAC over the request (checked by the service, never here).
    pub mac: Option<Vec<u8>>,
    /// When its personal data was erased (retention, or a request): the email, credential
    /// data, idempotency key, AIR's user id and the last error are gone; it changes no more.
    pub erased_at: Option<UnixTime>,
}

const COLUMNS: &str = "id, source, idempotency_key, request_hash, email, issuer_did, \
                       credential_id, credential_subject, on_duplicate, state, attempts, \
                       next_attempt_at, core_claim_hash, user_uuid, duplicate, vc_status, vc_id, \
                       issuance_date, polls, last_status, last_error, created_at, updated_at, \
                       submitted_at, completed_at, mac";
/// Every column read: those written at insertion, and when the personal data was erased.
const READ: &str = "id, source, idempotency_key, request_hash, email, issuer_did, \
                    credential_id, credential_subject, on_duplicate, state, attempts, \
                    next_attempt_at, core_claim_hash, user_uuid, duplicate, vc_status, vc_id, \
                    issuance_date, polls, last_status, last_error, created_at, updated_at, \
                    submitted_at, completed_at, mac, erased_at";

fn row(r: &Row) -> Result<IssuanceRow, ReadError> {
    let subject: String = r.get(7)?;
    Ok(IssuanceRow {
        id: r.get(0)?,
        source: r.get(1)?,
        idempotency_key: r.get(2)?,
        request_hash: r.get(3)?,
        email: r.get(4)?,
        issuer_did: r.get(5)?,
        credential_id: r.get(6)?,
        credential_subject: serde_json::from_str(&subject).unwrap_or(Value::Null),
        on_duplicate: r.get(8)?,
        state: r.get(9)?,
        attempts: r.get(10)?,
        next_attempt_at: r.get(11)?,
        core_claim_hash: r.get(12)?,
        user_uuid: r.get(13)?,
        duplicate: r.get(14)?,
        vc_status: r.get(15)?,
        vc_id: r.get(16)?,
        issuance_date: r.get(17)?,
        polls: r.get(18)?,
        last_status: r.get(19)?,
        last_error: r.get(20)?,
        created_at: r.get(21)?,
        updated_at: r.get(22)?,
        submitted_at: r.get(23)?,
        completed_at: r.get(24)?,
        mac: r.get(25)?,
        erased_at: r.get(26)?,
    })
}

/// Inserts a new issuance.
#[tracing::instrument(skip_all)]
pub fn insert(tx: &Tx<'_>, i: &IssuanceRow) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO issuances ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
             ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)"
        ),
        &args![
            i.id,
            i.source,
            i.idempotency_key,
            i.request_hash,
            i.email,
            i.issuer_did,
            i.credential_id,
            i.credential_subject.to_string(),
            i.on_duplicate,
            i.state,
            i.attempts,
            i.next_attempt_at,
            i.core_claim_hash,
            i.user_uuid,
            i.duplicate,
            i.vc_status,
            i.vc_id,
            i.issuance_date,
            i.polls,
            i.last_status,
            i.last_error,
            i.created_at,
            i.updated_at,
            i.submitted_at,
            i.completed_at,
            i.mac
        ],
    )?;
    Ok(())
}

/// Writes the mutable part of an issuance (nothing once its personal data was erased: a worker
/// holding it in memory cannot bring any of it back).
#[tracing::instrument(skip_all)]
pub fn save(tx: &Tx<'_>, i: &IssuanceRow) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE issuances SET state = ?2, attempts = ?3, next_attempt_at = ?4, core_claim_hash = \
         ?5,
             user_uuid = ?6, duplicate = ?7, vc_status = ?8, vc_id = ?9, issuance_date = ?10, \
         polls = ?11,
             last_status = ?12, last_error = ?13, updated_at = ?14, submitted_at = ?15, \
         completed_at = ?16
         WHERE id = ?1 AND erased_at IS NULL",
        &args![
            i.id,
            i.state,
            i.attempts,
            i.next_attempt_at,
            i.core_claim_hash,
            i.user_uuid,
            i.duplicate,
            i.vc_status,
            i.vc_id,
            i.issuance_date,
            i.polls,
            i.last_status,
            i.last_error,
            i.updated_at,
            i.submitted_at,
            i.completed_at
        ],
    )?;
    Ok(())
}

/// One issuance.
#[tracing::instrument(skip_all)]
pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<IssuanceRow>, StoreError> {
    tx.query_opt(
        &format!("SELECT {READ} FROM issuances WHERE id = ?1"),
        &args![id],
        row,
    )
}

/// The issuance a source recorded under an idempotency key.
#[tracing::instrument(skip_all)]
pub fn by_idempotency_key(
    tx: &Tx<'_>,
    source: &str,
    key: &str,
) -> Result<Option<IssuanceRow>, StoreError> {
    tx.query_opt(
        &format!("SELECT {READ} FROM issuances WHERE source = ?1 AND idempotency_key = ?2"),
        &args![source, key],
        row,
    )
}

/// The latest issuance AIR identified by `hash`.
#[tracing::instrument(skip_all)]
pub fn by_core_claim_hash(tx: &Tx<'_>, hash: &str) -> Result<Option<IssuanceRow>, StoreError> {
    tx.query_opt(
        &format!(
            "SELECT {READ} FROM issuances WHERE core_claim_hash = ?1 ORDER BY created_at \
                 DESC LIMIT 1"
        ),
        &args![hash],
        row,
    )
}

/// Issuances, newest first, optionally in one state (rows that cannot be read apart).
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>, state: Option<&str>, limit: u32) -> Result<Rows<IssuanceRow>, StoreError> {
    tx.read_rows(
        &format!(
            "SELECT {READ} FROM issuances WHERE (CAST(?1 AS TEXT) IS NULL OR state = ?1)
             ORDER BY created_at DESC, id DESC LIMIT ?2"
        ),
        &args![state, limit],
        row,
    )
}

/// Issuances a server must carry on with: queued, or submitted and not yet ONCHAIN (rows that
/// cannot be read apart).
#[tracing::instrument(skip_all)]
pub fn unfinished(tx: &Tx<'_>) -> Result<Rows<IssuanceRow>, StoreError> {
    tx.read_rows(
        &format!(
            "SELECT {READ} FROM issuances WHERE state IN ('queued', 'submitted') ORDER BY \
         created_at"
        ),
        &args![],
        row,
    )
}

/// Readable issuances without a MAC.
#[tracing::instrument(skip_all)]
pub fn without_mac(tx: &Tx<'_>) -> Result<Vec<IssuanceRow>, StoreError> {
    Ok(tx
        .read_rows(
            &format!("SELECT {READ} FROM issuances WHERE mac IS NULL ORDER BY created_at"),
            &args![],
            row,
        )?
        .rows)
}

/// Stores an issuance's MAC.
#[tracing::instrument(skip_all)]
pub fn set_mac(tx: &Tx<'_>, id: &str, mac: &[u8]) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE issuances SET mac = ?2 WHERE id = ?1",
        &args![id, mac],
    )?;
    Ok(())
}

/// Claims the unfinished issuance `id` for the server `holder` for `ttl` seconds of the
/// database's clock, unless another server's claim on it is still running and that server is
/// still connected or renewed it less than `silent` seconds ago (PostgreSQL only: claims are
/// for servers sharing a store); whether it is now
/// `holder`'s. Writers are serialised, so two servers never both win the same claim.
#[tracing::instrument(skip_all)]
pub fn claim(
    tx: &Tx<'_>,
    id: &str,
    holder: &str,
    ttl: i64,
    silent: i64,
) -> Result<bool, StoreError> {
    let now = super::replicas::db_now(tx)?;
    let n = tx.execute(
        "UPDATE issuances SET claimed_by = ?2, claimed_until = ?4
         WHERE id = ?1 AND state IN ('queued', 'submitted')
           AND (claimed_by IS NULL OR claimed_by = ?2 OR claimed_until IS NULL
                OR claimed_until < ?3
                OR (claimed_until < ?5 AND NOT EXISTS (
                    SELECT 1 FROM pg_stat_activity WHERE application_name = issuances.claimed_by)))",
        &args![id, holder, now, now + ttl, now + ttl - silent],
    )?;
    Ok(n == 1)
}

/// Renews `holder`'s claim on the issuance `id` for `ttl` more seconds; false if the claim is no
/// longer `holder`'s (it ran out and another server took it) or the issuance is finished.
#[tracing::instrument(skip_all)]
pub fn renew_claim(tx: &Tx<'_>, id: &str, holder: &str, ttl: i64) -> Result<bool, StoreError> {
    let now = super::replicas::db_now(tx)?;
    let n = tx.execute(
        "UPDATE issuances SET claimed_until = ?3
         WHERE id = ?1 AND claimed_by = ?2 AND state IN ('queued', 'submitted')",
        &args![id, holder, now + ttl],
    )?;
    Ok(n == 1)
}

/// Unfinished issuances no server's claim covers (their server died or lost the database), at
/// most `limit`, oldest first (PostgreSQL only).
#[tracing::instrument(skip_all)]
pub fn unclaimed(
    tx: &Tx<'_>,
    limit: u32,
    ttl: i64,
    silent: i64,
) -> Result<Vec<String>, StoreError> {
    let now = super::replicas::db_now(tx)?;
    tx.query_map(
        "SELECT id FROM issuances
         WHERE state IN ('queued', 'submitted')
           AND (claimed_until IS NULL OR claimed_until < ?1
                OR (claimed_until < ?3 AND NOT EXISTS (
                    SELECT 1 FROM pg_stat_activity WHERE application_name = issuances.claimed_by)))
         ORDER BY created_at LIMIT ?2",
        &args![now, limit, now + ttl - silent],
        |r| r.get(0),
    )
}

/// Writes the mutable part of an issuance if the server `holder` still holds its claim;
/// whether it did (a server whose claim was taken over writes nothing).
#[tracing::instrument(skip_all)]
pub fn save_claimed(tx: &Tx<'_>, i: &IssuanceRow, holder: &str) -> Result<bool, StoreError> {
    let mine = tx
        .query_opt(
            "SELECT 1 FROM issuances WHERE id = ?1 AND claimed_by = ?2",
            &args![i.id, holder],
            |_| Ok(()),
        )?
        .is_some();
    if mine {
        save(tx, i)?;
    }
    Ok(mine)
}

/// Finished issuances (on chain, failed, stalled, unconfirmed) last changed before `cutoff`
/// whose personal data is still there, oldest first, at most `limit`.
#[tracing::instrument(skip_all)]
pub fn expired_personal_data(
    tx: &Tx<'_>,
    cutoff: UnixTime,
    limit: u32,
) -> Result<Vec<IssuanceRow>, StoreError> {
    tx.query_map(
        &format!(
            "SELECT {READ} FROM issuances
             WHERE erased_at IS NULL AND updated_at < ?1
               AND state IN ('onchain', 'failed', 'stalled', 'unconfirmed')
             ORDER BY updated_at LIMIT ?2"
        ),
        &args![cutoff, limit],
        row,
    )
}

/// The issuances for `email` (compared without regard to case) whose personal data is still
/// there.
#[tracing::instrument(skip_all)]
pub fn for_email(tx: &Tx<'_>, email: &str) -> Result<Vec<IssuanceRow>, StoreError> {
    tx.query_map(
        &format!(
            "SELECT {READ} FROM issuances WHERE erased_at IS NULL AND lower(email) = lower(?1)"
        ),
        &args![email],
        row,
    )
}

/// Erases an issuance's personal data (email, credential data, idempotency key, AIR's user id,
/// last error), leaving it in `state` with `mac` (computed over the erased row): it changes no
/// more, and no server's claim on it survives.
#[tracing::instrument(skip_all)]
pub fn erase(
    tx: &Tx<'_>,
    id: &str,
    now: UnixTime,
    state: &str,
    mac: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE issuances SET email = '', credential_subject = '{}', idempotency_key = NULL,
             user_uuid = NULL, last_error = NULL, state = ?3, next_attempt_at = NULL,
             claimed_by = NULL, claimed_until = NULL, mac = ?4, erased_at = ?2
         WHERE id = ?1",
        &args![id, now, state, mac],
    )?;
    Ok(())
}
