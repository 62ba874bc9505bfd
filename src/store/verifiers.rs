//! Verifier sightings, as the background rounds of every server flush them.

use serde::{Deserialize, Serialize};

use super::sql::{ReadError, Row, args};
use super::{StoreError, Tx};
use crate::clock::UnixTime;

/// Sightings kept per verifier.
pub const RECENT: usize = 8;

/// One JWKS request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sighting {
    /// When (Unix seconds).
    pub at: UnixTime,
    /// Source address (the client's, behind trusted proxies).
    pub address: Option<String>,
    /// The ETag of the key set it received or revalidated.
    pub etag: String,
    /// Whether it revalidated (`If-None-Match` answered `304`) rather than downloaded.
    pub revalidated: bool,
}

/// What one server saw of a verifier since its last flush.
#[derive(Debug)]
pub struct Seen<'a> {
    /// The verifier's user agent (as kept).
    pub user_agent: &'a str,
    /// First request in this batch.
    pub first: UnixTime,
    /// Last request in this batch.
    pub last: UnixTime,
    /// Requests in this batch.
    pub requests: i64,
    /// Its latest sightings, oldest first.
    pub recent: &'a [Sighting],
}

/// A verifier as stored.
#[derive(Debug, Clone)]
pub struct VerifierRow {
    /// User agent.
    pub user_agent: String,
    /// First fetch.
    pub first_seen: UnixTime,
    /// Last fetch.
    pub last_seen: UnixTime,
    /// Fetches counted.
    pub requests: i64,
    /// The last few sightings, oldest first.
    pub recent: Vec<Sighting>,
}

fn verifier(r: &Row) -> Result<VerifierRow, ReadError> {
    let recent: String = r.get(4)?;
    Ok(VerifierRow {
        user_agent: r.get(0)?,
        first_seen: r.get(1)?,
        last_seen: r.get(2)?,
        requests: r.get(3)?,
        recent: serde_json::from_str(&recent).unwrap_or_default(),
    })
}

/// Adds a batch of sightings to the verifier's summary (its recent sightings merged, newest
/// kept).
#[tracing::instrument(skip_all)]
pub fn record(tx: &Tx<'_>, seen: &Seen<'_>) -> Result<(), StoreError> {
    let before = tx.query_opt(
        "SELECT recent FROM verifiers WHERE user_agent = ?1",
        &args![seen.user_agent],
        |r| r.get::<String>(0),
    )?;
    let mut recent: Vec<Sighting> = before
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    recent.extend(seen.recent.iter().cloned());
    recent.sort_by_key(|s| s.at);
    let recent = &recent[recent.len().saturating_sub(RECENT)..];
    let recent = serde_json::to_string(recent).expect("sightings serialise");
    tx.execute(
        "INSERT INTO verifiers (user_agent, first_seen, last_seen, requests, recent)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_agent) DO UPDATE SET
             first_seen = CASE WHEN excluded.first_seen < verifiers.first_seen
                               THEN excluded.first_seen ELSE verifiers.first_seen END,
             last_seen = CASE WHEN excluded.last_seen > verifiers.last_seen
                              THEN excluded.last_seen ELSE verifiers.last_seen END,
             requests = verifiers.requests + excluded.requests,
             recent = excluded.recent",
        &args![
            seen.user_agent,
            seen.first,
            seen.last,
            seen.requests,
            recent
        ],
    )?;
    Ok(())
}

/// Notes that the verifier was served a key set listing `kid` (first at `at`).
#[tracing::instrument(skip_all)]
pub fn served(tx: &Tx<'_>, user_agent: &str, kid: &str, at: UnixTime) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO verifier_kids (user_agent, kid, first_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_agent, kid) DO UPDATE SET first_seen =
             CASE WHEN excluded.first_seen < verifier_kids.first_seen
                  THEN excluded.first_seen ELSE verifier_kids.first_seen END",
        &args![user_agent, kid, at],
    )?;
    Ok(())
}

/// Every verifier, most recently seen first.
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>) -> Result<Vec<VerifierRow>, StoreError> {
    tx.query_map(
        "SELECT user_agent, first_seen, last_seen, requests, recent FROM verifiers
         ORDER BY last_seen DESC, user_agent",
        &args![],
        verifier,
    )
}

/// When each verifier was first served a key set listing `kid`.
#[tracing::instrument(skip_all)]
pub fn seen_kid(tx: &Tx<'_>, kid: &str) -> Result<Vec<(String, UnixTime)>, StoreError> {
    tx.query_map(
        "SELECT user_agent, first_seen FROM verifier_kids WHERE kid = ?1",
        &args![kid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// How many verifiers are recorded.
#[tracing::instrument(skip_all)]
pub fn count(tx: &Tx<'_>) -> Result<i64, StoreError> {
    tx.query_one("SELECT COUNT(*) FROM verifiers", &args![], |r| r.get(0))
}

/// Whether `user_agent` is recorded.
#[tracing::instrument(skip_all)]
pub fn exists(tx: &Tx<'_>, user_agent: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM verifiers WHERE user_agent = ?1",
            &args![user_agent],
            |r| r.get::<i64>(0),
        )?
        .is_some())
}
