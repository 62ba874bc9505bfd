//! Named settings the server keeps between starts (master key id, admin token hash).

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// Setting: id of the master key that sealed the stored keys.
pub const MASTER_KEY_ID: &str = "master_key_id";
/// Setting: when a server first served this store's JWKS (Unix seconds).
pub const FIRST_SERVED_AT: &str = "first_served_at";
/// Setting: SHA-256 (hex) of the generated admin token.
pub const ADMIN_TOKEN_SHA256: &str = "admin_token_sha256";

/// Reads a setting.
#[tracing::instrument(skip_all)]
pub fn get(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Writes a setting.
#[tracing::instrument(skip_all)]
pub fn set(conn: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}
