//! Named admin credentials. Only a hash of each credential's secret is stored.

use super::sql::{ReadError, Row, args};
use super::{Rows, StoreError, Topic, Tx};
use crate::clock::UnixTime;

/// An admin credential as stored.
#[derive(Debug, Clone)]
pub struct AdminRow {
    /// Public id (part of the credential).
    pub id: String,
    /// Unique name, the audit trail's actor (`admin:<name>`).
    pub name: String,
    /// `reader` or `operator`.
    pub role: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Set once disabled.
    pub disabled_at: Option<UnixTime>,
    /// The row's MAC (checked by the service, never here).
    pub mac: Option<Vec<u8>>,
}

const COLUMNS: &str = "id, name, role, secret_hash, created_at, disabled_at, mac";

fn row(r: &Row) -> Result<AdminRow, ReadError> {
    Ok(AdminRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at: r.get(4)?,
        disabled_at: r.get(5)?,
        mac: r.get(6)?,
    })
}

/// Inserts a credential; false when its name is taken (by a disabled one too).
#[tracing::instrument(skip_all)]
pub fn insert(tx: &Tx<'_>, a: &AdminRow) -> Result<bool, StoreError> {
    tx.announce(Topic::Clients);
    let n = tx.execute(
        "INSERT INTO admins (id, name, role, secret_hash, created_at, disabled_at, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING",
        &args![
            a.id,
            a.name,
            a.role,
            a.secret_hash,
            a.created_at,
            a.disabled_at,
            a.mac
        ],
    )?;
    Ok(n == 1)
}

/// Every credential, oldest first (rows that cannot be read apart).
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>) -> Result<Rows<AdminRow>, StoreError> {
    tx.read_rows(
        &format!("SELECT {COLUMNS} FROM admins ORDER BY created_at, id"),
        &args![],
        row,
    )
}

/// The credential named `name`.
#[tracing::instrument(skip_all)]
pub fn by_name(tx: &Tx<'_>, name: &str) -> Result<Option<AdminRow>, StoreError> {
    tx.query_opt(
        &format!("SELECT {COLUMNS} FROM admins WHERE name = ?1"),
        &args![name],
        row,
    )
}

/// Disables a credential and stores the row's new MAC; false if it was already disabled.
#[tracing::instrument(skip_all)]
pub fn disable(tx: &Tx<'_>, id: &str, now: UnixTime, mac: &[u8]) -> Result<bool, StoreError> {
    tx.announce(Topic::Clients);
    let n = tx.execute(
        "UPDATE admins SET disabled_at = ?2, mac = ?3 WHERE id = ?1 AND disabled_at IS NULL",
        &args![id, now, mac],
    )?;
    Ok(n == 1)
}
