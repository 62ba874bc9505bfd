//! The audit trail: who changed which key or client, and when, as a hash chain.
//!
//! Each row carries the hash of its predecessor and its own: SHA-256 over the canonical encoding
//! of (predecessor's hash, id, time, actor, action, subject, detail), the first row's predecessor
//! being 32 zero bytes. Each row's hash also carries a MAC under the master key, and the newest
//! row's id and hash are kept in a setting with a MAC (the chain's head), so that rows removed
//! from the end show too. Appends happen inside the caller's write transaction, which every
//! writer takes in turn (SQLite's one writer, PostgreSQL's advisory lock), and a unique index on
//! the predecessor makes a fork impossible even if that ever changed.

use serde::Serialize;

use super::sql::{ReadError, Row, args};
use super::{StoreError, Tx};
use crate::canonical::{Field, sha256};
use crate::clock::UnixTime;

/// The predecessor of the first row.
pub const GENESIS: [u8; 32] = [0; 32];
/// Setting: the chain's head, `<id>:<hash in hex>` (with a MAC).
pub const HEAD_SETTING: &str = "audit_head";
/// MAC domain of a row's hash.
pub const MAC_DOMAIN: &str = "audit";
/// The action of a signed chain head, a row only the chain writes.
pub const HEAD_ACTION: &str = "audit.head";

/// One audit row.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: UnixTime,
    /// Who: `admin:<name>`, `cli:<user>`, `scheduler`, `system`.
    pub actor: String,
    /// What, e.g. `key.activate`, `client.create`.
    pub action: String,
    /// Which key (kid) or client (id).
    pub subject: String,
    /// Details (never secrets).
    pub detail: serde_json::Value,
}

/// An audit row as the chain sees it: the detail as stored, byte for byte.
#[derive(Debug, Clone)]
pub struct ChainRow {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: UnixTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which.
    pub subject: String,
    /// Details, as stored (JSON text).
    pub detail: String,
    /// The predecessor's hash (`None` on a row from before the chain).
    pub prev_hash: Option<Vec<u8>>,
    /// This row's hash.
    pub hash: Option<Vec<u8>>,
    /// MAC of the hash.
    pub mac: Option<Vec<u8>>,
}

impl ChainRow {
    /// The hash this row should carry after `prev`.
    pub fn link_hash(&self, prev: &[u8]) -> [u8; 32] {
        link_hash(
            prev,
            self.id,
            self.at,
            &self.actor,
            &self.action,
            &self.subject,
            &self.detail,
        )
    }
}

/// The hash of a row after `prev`.
pub fn link_hash(
    prev: &[u8],
    id: i64,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> [u8; 32] {
    sha256(
        "audit-link",
        &[
            Field::Bytes(prev),
            Field::Int(id),
            Field::Int(at),
            Field::Text(actor),
            Field::Text(action),
            Field::Text(subject),
            Field::Text(detail),
        ],
    )
}

/// The chain's head as recorded: the setting's value and its MAC.
pub type Head = (String, Option<Vec<u8>>);

/// The chain's head as keyhost last wrote it.
pub fn head(tx: &Tx<'_>) -> Result<Option<Head>, StoreError> {
    tx.query_opt(
        "SELECT value, mac FROM settings WHERE name = ?1",
        &args![HEAD_SETTING],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The head setting's value for the row `id` with `hash`.
pub fn head_value(id: i64, hash: &[u8]) -> String {
    format!("{id}:{}", hex::encode(hash))
}

const CHAIN_COLUMNS: &str = "id, at, actor, action, subject, detail, prev_hash, hash, mac";

fn chain_row(r: &Row) -> Result<ChainRow, ReadError> {
    Ok(ChainRow {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        detail: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
        mac: r.get(8)?,
    })
}

/// Writes the chain's head (`id`, `hash`) with its MAC, when the store has its sealer.
fn set_head(tx: &Tx<'_>, id: i64, hash: &[u8]) -> Result<(), StoreError> {
    let value = head_value(id, hash);
    let mac = tx
        .sealer()
        .map(|s| s.mac("setting", &[Field::Text(HEAD_SETTING), Field::Text(&value)]));
    tx.execute(
        "INSERT INTO settings (name, value, mac) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, mac = excluded.mac",
        &args![HEAD_SETTING, value, mac],
    )?;
    Ok(())
}

/// The MAC of a row's hash, when the store has its sealer.
fn seal(tx: &Tx<'_>, hash: &[u8]) -> Option<Vec<u8>> {
    tx.sealer()
        .map(|s| s.mac(MAC_DOMAIN, &[Field::Bytes(hash)]))
}

/// The id of the newest row and the hash of the newest chained one (`0` and [`GENESIS`] on an
/// empty trail). A row inserted without a hash behind keyhost's back is never chained: the next
/// row follows the newest chained one, and `keyhost audit verify` reports the intruder.
fn tip(tx: &Tx<'_>) -> Result<(i64, Vec<u8>), StoreError> {
    let last: Option<i64> = tx
        .query_opt("SELECT MAX(id) FROM audit", &args![], |r| {
            r.get::<Option<i64>>(0)
        })?
        .flatten();
    let chained = tx.query_opt(
        "SELECT hash FROM audit WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
        &args![],
        |r| r.get::<Vec<u8>>(0),
    )?;
    Ok((
        last.unwrap_or(0),
        chained.unwrap_or_else(|| GENESIS.to_vec()),
    ))
}

/// Chains the rows of a trail from before the chain, as found, in id order (without MACs:
/// keyhost vouches only for the rows it writes from now on); how many. Only while nothing shows
/// that the chain ever began: no row carries a hash, a predecessor's hash or a MAC, no row is a
/// signed head (only the chain writes them), and the chain never had a head. A trail whose
/// hashes were wiped is reported by `keyhost audit verify`, never chained again.
#[tracing::instrument(skip_all)]
pub fn chain_legacy(tx: &Tx<'_>) -> Result<usize, StoreError> {
    let started = tx
        .query_opt(
            "SELECT 1 FROM audit WHERE hash IS NOT NULL OR prev_hash IS NOT NULL
             OR mac IS NOT NULL OR action = ?1 LIMIT 1",
            &args![HEAD_ACTION],
            |r| r.get::<i64>(0),
        )?
        .is_some()
        || tx
            .query_opt(
                "SELECT 1 FROM settings WHERE name = ?1",
                &args![HEAD_SETTING],
                |r| r.get::<i64>(0),
            )?
            .is_some();
    if started {
        let unchained = tx.query_opt(
            "SELECT id FROM audit WHERE hash IS NULL ORDER BY id LIMIT 1",
            &args![],
            |r| r.get::<i64>(0),
        )?;
        if let Some(row) = unchained {
            tracing::error!(
                row,
                "audit rows without a hash in a trail that was chained (removed behind keyhost's \
                 back?): they are not chained again; run `keyhost audit verify`"
            );
        }
        return Ok(0);
    }
    let rows = tx.query_map(
        &format!("SELECT {CHAIN_COLUMNS} FROM audit ORDER BY id"),
        &args![],
        chain_row,
    )?;
    let mut prev = GENESIS.to_vec();
    for row in &rows {
        let hash = row.link_hash(&prev);
        tx.execute(
            "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1",
            &args![row.id, prev.clone(), hash.to_vec()],
        )?;
        prev = hash.to_vec();
    }
    if let Some(last) = rows.last() {
        tracing::info!(
            rows = rows.len(),
            "chained the audit rows from before the audit chain, as found"
        );
        set_head(tx, last.id, &prev)?;
    }
    Ok(rows.len())
}

/// Appends a row to the chain.
pub fn record(
    tx: &Tx<'_>,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    append(tx, at, actor, action, subject, detail).map(drop)
}

/// Appends a row to the chain; its id.
#[tracing::instrument(skip_all)]
pub fn append(
    tx: &Tx<'_>,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<i64, StoreError> {
    let detail = detail.to_string();
    let (last, prev) = tip(tx)?;
    let id = last + 1;
    let hash = link_hash(&prev, id, at, actor, action, subject, &detail);
    tx.execute(
        "INSERT INTO audit (id, at, actor, action, subject, detail, prev_hash, hash, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &args![
            id,
            at,
            actor,
            action,
            subject,
            detail,
            prev,
            hash.to_vec(),
            seal(tx, &hash)
        ],
    )?;
    set_head(tx, id, &hash)?;
    Ok(id)
}

/// The newest rows first, at most `limit`, with ids below `before` when given.
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = tx.query_map(
        &format!("SELECT {CHAIN_COLUMNS} FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2"),
        &args![before.unwrap_or(i64::MAX), limit],
        chain_row,
    )?;
    Ok(rows
        .into_iter()
        .map(|r| AuditEntry {
            detail: serde_json::from_str(&r.detail).unwrap_or_default(),
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            subject: r.subject,
        })
        .collect())
}

/// Rows in chain order with ids above `after`, at most `limit`.
#[tracing::instrument(skip_all)]
pub fn chain_page(tx: &Tx<'_>, after: i64, limit: u32) -> Result<Vec<ChainRow>, StoreError> {
    tx.query_map(
        &format!("SELECT {CHAIN_COLUMNS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"),
        &args![after, limit],
        chain_row,
    )
}

/// The newest row.
#[tracing::instrument(skip_all)]
pub fn newest(tx: &Tx<'_>) -> Result<Option<ChainRow>, StoreError> {
    tx.query_opt(
        &format!("SELECT {CHAIN_COLUMNS} FROM audit ORDER BY id DESC LIMIT 1"),
        &args![],
        chain_row,
    )
}

/// The id of the first row at or after `at`.
#[tracing::instrument(skip_all)]
pub fn first_since(tx: &Tx<'_>, at: UnixTime) -> Result<Option<i64>, StoreError> {
    tx.query_opt(
        "SELECT MIN(id) FROM audit WHERE at >= ?1",
        &args![at],
        |r| r.get::<Option<i64>>(0),
    )
    .map(Option::flatten)
}
