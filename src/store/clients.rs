//! API client rows. Only a hash of each client's secret is stored.

use super::sql::{ReadError, Row, args};
use super::{Rows, StoreError, Topic, Tx};
use crate::clock::UnixTime;

/// A client as stored.
#[derive(Debug, Clone)]
pub struct ClientRow {
    /// Public id (part of the API key).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Scopes the client may request.
    pub scopes: Vec<String>,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Set once disabled.
    pub disabled_at: Option<UnixTime>,
    /// The row's MAC (checked by the service, never here).
    pub mac: Option<Vec<u8>>,
}

fn row(r: &Row) -> Result<ClientRow, ReadError> {
    let scopes: String = r.get(2)?;
    Ok(ClientRow {
        id: r.get(0)?,
        name: r.get(1)?,
        scopes: serde_json::from_str(&scopes).map_err(|e| ReadError::invalid(2, e))?,
        secret_hash: r.get(3)?,
        created_at: r.get(4)?,
        disabled_at: r.get(5)?,
        mac: r.get(6)?,
    })
}

/// Inserts a client.
#[tracing::instrument(skip_all)]
pub fn insert(tx: &Tx<'_>, c: &ClientRow) -> Result<(), StoreError> {
    tx.announce(Topic::Clients);
    tx.execute(
        "INSERT INTO clients (id, name, scopes, secret_hash, created_at, disabled_at, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &args![
            c.id,
            c.name,
            serde_json::to_string(&c.scopes).expect("strings serialise"),
            c.secret_hash,
            c.created_at,
            c.disabled_at,
            c.mac
        ],
    )?;
    Ok(())
}

/// Every client, oldest first (rows that cannot be read apart).
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>) -> Result<Rows<ClientRow>, StoreError> {
    tx.read_rows(
        "SELECT id, name, scopes, secret_hash, created_at, disabled_at, mac FROM clients
         ORDER BY created_at, id",
        &args![],
        row,
    )
}

/// One client.
#[tracing::instrument(skip_all)]
pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<ClientRow>, StoreError> {
    tx.query_opt(
        "SELECT id, name, scopes, secret_hash, created_at, disabled_at, mac FROM clients
             WHERE id = ?1",
        &args![id],
        row,
    )
}

/// Disables a client; returns false if it was already disabled.
#[tracing::instrument(skip_all)]
pub fn disable(tx: &Tx<'_>, id: &str, now: UnixTime) -> Result<bool, StoreError> {
    tx.announce(Topic::Clients);
    let n = tx.execute(
        "UPDATE clients SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
        &args![id, now],
    )?;
    Ok(n == 1)
}

/// Stores a client row's MAC.
#[tracing::instrument(skip_all)]
pub fn set_mac(tx: &Tx<'_>, id: &str, mac: &[u8]) -> Result<(), StoreError> {
    tx.announce(Topic::Clients);
    tx.execute("UPDATE clients SET mac = ?2 WHERE id = ?1", &args![id, mac])?;
    Ok(())
}
