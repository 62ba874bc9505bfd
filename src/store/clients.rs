//! API client rows. Only a hash of each client's secret is stored.

use rusqlite::{OptionalExtension, Row, params};

use super::{Rows, StoreError, Tx, read_rows};
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

fn row(r: &Row<'_>) -> Result<ClientRow, rusqlite::Error> {
    let scopes: String = r.get(2)?;
    Ok(ClientRow {
        id: r.get(0)?,
        name: r.get(1)?,
        scopes: serde_json::from_str(&scopes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        secret_hash: r.get(3)?,
        created_at: r.get(4)?,
        disabled_at: r.get(5)?,
        mac: r.get(6)?,
    })
}

/// Inserts a client.
#[tracing::instrument(skip_all)]
pub fn insert(tx: &Tx<'_>, c: &ClientRow) -> Result<(), StoreError> {
    let conn = tx.sql();
    conn.execute(
        "INSERT INTO clients (id, name, scopes, secret_hash, created_at, disabled_at, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
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
    let conn = tx.sql();
    let mut stmt = conn.prepare(
        "SELECT id, name, scopes, secret_hash, created_at, disabled_at, mac FROM clients
         ORDER BY created_at, id",
    )?;
    read_rows(&mut stmt, [], row)
}

/// One client.
#[tracing::instrument(skip_all)]
pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<ClientRow>, StoreError> {
    let conn = tx.sql();
    Ok(conn
        .query_row(
            "SELECT id, name, scopes, secret_hash, created_at, disabled_at, mac FROM clients
             WHERE id = ?1",
            [id],
            row,
        )
        .optional()?)
}

/// Disables a client; returns false if it was already disabled.
#[tracing::instrument(skip_all)]
pub fn disable(tx: &Tx<'_>, id: &str, now: UnixTime) -> Result<bool, StoreError> {
    let conn = tx.sql();
    let n = conn.execute(
        "UPDATE clients SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
        params![id, now],
    )?;
    Ok(n == 1)
}

/// Stores a client row's MAC.
#[tracing::instrument(skip_all)]
pub fn set_mac(tx: &Tx<'_>, id: &str, mac: &[u8]) -> Result<(), StoreError> {
    let conn = tx.sql();
    conn.execute(
        "UPDATE clients SET mac = ?2 WHERE id = ?1",
        params![id, mac],
    )?;
    Ok(())
}
