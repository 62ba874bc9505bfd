//! Named settings the server keeps between starts (master key id, admin token hash, ...).

use super::sql::args;
use super::{StoreError, Topic, Tx};

/// Setting: id of the master key that sealed the stored keys.
pub const MASTER_KEY_ID: &str = "master_key_id";
/// Setting: when a server first served this store's JWKS (Unix seconds).
pub const FIRST_SERVED_AT: &str = "first_served_at";
/// Setting: SHA-256 (hex) of the generated admin token (with a MAC).
pub const ADMIN_TOKEN_SHA256: &str = "admin_token_sha256";
/// Setting: when the bootstrap admin token was disabled (Unix seconds, with a MAC).
pub const ADMIN_BOOTSTRAP_DISABLED_AT: &str = "admin_bootstrap_disabled_at";
/// Setting: the lifecycle policy and partner id of the last server that started (JSON, with a
/// MAC), which the CLI follows so that there is one truth about key transitions.
pub const SERVER_POLICY: &str = "server_policy";
/// Setting: since when every trusted row carries a MAC (Unix seconds); rows written before it
/// got theirs then.
pub const ROW_MACS_SINCE: &str = "row_macs_since";

/// Reads a setting.
#[tracing::instrument(skip_all)]
pub fn get(tx: &Tx<'_>, name: &str) -> Result<Option<String>, StoreError> {
    tx.query_opt(
        "SELECT value FROM settings WHERE name = ?1",
        &args![name],
        |r| r.get(0),
    )
}

/// Writes a setting (without a MAC: only for settings nothing trusts blindly).
#[tracing::instrument(skip_all)]
pub fn set(tx: &Tx<'_>, name: &str, value: &str) -> Result<(), StoreError> {
    tx.announce(Topic::Settings);
    tx.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, mac = NULL",
        &args![name, value],
    )?;
    Ok(())
}

/// A setting's value and MAC.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The value.
    pub value: String,
    /// Its MAC (checked by the caller, never here).
    pub mac: Option<Vec<u8>>,
}

/// Reads a setting with its MAC.
#[tracing::instrument(skip_all)]
pub fn get_with_mac(tx: &Tx<'_>, name: &str) -> Result<Option<Authenticated>, StoreError> {
    tx.query_opt(
        "SELECT value, mac FROM settings WHERE name = ?1",
        &args![name],
        |r| {
            Ok(Authenticated {
                value: r.get(0)?,
                mac: r.get(1)?,
            })
        },
    )
}

/// Writes a setting with its MAC.
#[tracing::instrument(skip_all)]
pub fn set_with_mac(tx: &Tx<'_>, name: &str, value: &str, mac: &[u8]) -> Result<(), StoreError> {
    tx.announce(Topic::Settings);
    tx.execute(
        "INSERT INTO settings (name, value, mac) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, mac = excluded.mac",
        &args![name, value, mac],
    )?;
    Ok(())
}
