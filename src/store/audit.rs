//! The audit trail: who changed which key or client, and when.

use serde::Serialize;

use super::sql::args;
use super::{StoreError, Tx};
use crate::clock::UnixTime;

/// One audit row.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: UnixTime,
    /// Who: `admin:<name>`, `admin:bootstrap`, `cli:<user>`, `scheduler`, `system`.
    pub actor: String,
    /// What, e.g. `key.activate`, `client.create`.
    pub action: String,
    /// Which key (kid) or client (id).
    pub subject: String,
    /// Details (never secrets).
    pub detail: serde_json::Value,
}

/// Appends a row.
#[tracing::instrument(skip_all)]
pub fn record(
    tx: &Tx<'_>,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        &args![at, actor, action, subject, detail.to_string()],
    )?;
    Ok(())
}

/// The newest rows first, at most `limit`, with ids below `before` when given.
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
    tx.query_map(
        "SELECT id, at, actor, action, subject, detail FROM audit
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
        &args![before.unwrap_or(i64::MAX), limit],
        |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                detail: serde_json::from_str(&r.get::<String>(5)?).unwrap_or_default(),
            })
        },
    )
}
