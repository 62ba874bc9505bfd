//! Key rows. Private keys enter and leave only as sealed blobs; destroying one nulls the column
//! (with `secure_delete` on, SQLite overwrites the freed bytes).

use super::sql::{ReadError, Row, args};
use super::{Rows, StoreError, Topic, Tx};
use crate::clock::UnixTime;
use crate::keys::types::{Alg, KeyRecord, KeyState, Origin};

const COLUMNS: &str = "id, kid, alg, state, origin, bits, public_jwk, created_at, published_at, \
                       signable_at, activated_at, retired_at, expires_at, revoked_at, \
                       lead_remaining, grace_remaining, master_key_id, mac, private_key_enc IS \
                       NOT NULL, last_exp";

/// A key row as stored: the record, the master key that sealed it and its MAC (both checked by
/// the service, never here).
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The key.
    pub record: KeyRecord,
    /// Id of the master key that sealed its private half.
    pub master_key_id: Option<String>,
    /// The row's MAC (`None` for a row written by nobody that holds the master key).
    pub mac: Option<Vec<u8>>,
    /// Whether the row holds a sealed private key.
    pub sealed: bool,
}

/// A key about to be inserted.
#[derive(Debug)]
pub struct NewKey<'a> {
    /// Key id.
    pub kid: &'a str,
    /// Algorithm.
    pub alg: Alg,
    /// Initial state (pending or active).
    pub state: KeyState,
    /// Generated or imported.
    pub origin: Origin,
    /// Key size.
    pub bits: u32,
    /// Public JWK as JSON.
    pub public_jwk: &'a str,
    /// Sealed PKCS#8.
    pub sealed: &'a [u8],
    /// Id of the master key that sealed it.
    pub master_key_id: &'a str,
    /// Creation time.
    pub created_at: UnixTime,
    /// Publication time, if a server publishes it now.
    pub published_at: Option<UnixTime>,
    /// Earliest signing time, if published.
    pub signable_at: Option<UnixTime>,
    /// Activation time, if active at once.
    pub activated_at: Option<UnixTime>,
    /// Publish lead still to be served (pending keys).
    pub lead_remaining: i64,
}

/// A sealed private key and what it is bound to.
#[derive(Debug)]
pub struct SealedKey {
    /// Row id.
    pub id: i64,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    /// Creation time (part of the envelope's context).
    pub created_at: UnixTime,
    /// The envelope.
    pub sealed: Vec<u8>,
    /// Master key id recorded with it.
    pub master_key_id: String,
}

fn stored(r: &Row) -> Result<StoredKey, ReadError> {
    Ok(StoredKey {
        record: record(r)?,
        master_key_id: r.get(16)?,
        mac: r.get(17)?,
        sealed: r.get(18)?,
    })
}

fn record(r: &Row) -> Result<KeyRecord, ReadError> {
    let jwk: String = r.get(6)?;
    let origin: String = r.get(4)?;
    Ok(KeyRecord {
        id: r.get(0)?,
        kid: r.get(1)?,
        alg: r.parse(2)?,
        state: r.parse(3)?,
        origin: if origin == "imported" {
            Origin::Imported
        } else {
            Origin::Generated
        },
        bits: r.get(5)?,
        public_jwk: serde_json::from_str(&jwk).map_err(|e| ReadError::invalid(6, e))?,
        created_at: r.get(7)?,
        published_at: r.get(8)?,
        signable_at: r.get(9)?,
        activated_at: r.get(10)?,
        retired_at: r.get(11)?,
        expires_at: r.get(12)?,
        revoked_at: r.get(13)?,
        lead_remaining: r.get(14)?,
        grace_remaining: r.get(15)?,
        last_exp: r.get(19)?,
    })
}

/// Every key row, oldest first (rows that cannot be read apart).
#[tracing::instrument(skip_all)]
pub fn list(tx: &Tx<'_>) -> Result<Rows<StoredKey>, StoreError> {
    tx.read_rows(
        &format!("SELECT {COLUMNS} FROM keys ORDER BY id"),
        &args![],
        stored,
    )
}

/// The readable rows named `kid`: live ones first, then the most recent.
#[tracing::instrument(skip_all)]
pub fn find_by_kid(tx: &Tx<'_>, kid: &str) -> Result<Vec<StoredKey>, StoreError> {
    Ok(tx
        .read_rows(
            &format!(
                "SELECT {COLUMNS} FROM keys WHERE kid = ?1
                 ORDER BY state IN ('pending', 'active', 'retired') DESC, id DESC"
            ),
            &args![kid],
            stored,
        )?
        .rows)
}

/// One key row by id.
#[tracing::instrument(skip_all)]
pub fn get(tx: &Tx<'_>, id: i64) -> Result<StoredKey, StoreError> {
    tx.query_one(
        &format!("SELECT {COLUMNS} FROM keys WHERE id = ?1"),
        &args![id],
        stored,
    )
}

/// Stores the MAC of key row `id`.
#[tracing::instrument(skip_all)]
pub fn set_mac(tx: &Tx<'_>, id: i64, mac: &[u8]) -> Result<(), StoreError> {
    let n = tx.execute("UPDATE keys SET mac = ?2 WHERE id = ?1", &args![id, mac])?;
    changed(n, id, "a MAC")
}

/// Sealed private keys of the given states.
#[tracing::instrument(skip_all)]
pub fn sealed(tx: &Tx<'_>, states: &[KeyState]) -> Result<Vec<SealedKey>, StoreError> {
    let rows = tx.read_rows(
        "SELECT id, kid, alg, created_at, private_key_enc, master_key_id, state FROM keys
         WHERE private_key_enc IS NOT NULL ORDER BY id",
        &args![],
        |r| {
            let state: KeyState = r.parse(6)?;
            Ok((
                state,
                SealedKey {
                    id: r.get(0)?,
                    kid: r.get(1)?,
                    alg: r.parse(2)?,
                    created_at: r.get(3)?,
                    sealed: r.get(4)?,
                    master_key_id: r.get(5)?,
                },
            ))
        },
    )?;
    // Unreadable rows are reported by the listing of key rows; they are never opened.
    Ok(rows
        .rows
        .into_iter()
        .filter(|(state, _)| states.contains(state))
        .map(|(_, key)| key)
        .collect())
}

/// Inserts a key and returns its row id.
#[tracing::instrument(skip_all)]
pub fn insert(tx: &Tx<'_>, k: &NewKey<'_>) -> Result<i64, StoreError> {
    tx.announce(Topic::Keys);
    tx.query_one(
        "INSERT INTO keys (kid, alg, state, origin, bits, public_jwk, private_key_enc, \
         master_key_id,
                           created_at, published_at, signable_at, activated_at, lead_remaining)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
        &args![
            k.kid,
            k.alg.as_str(),
            k.state.as_str(),
            k.origin.as_str(),
            k.bits,
            k.public_jwk,
            k.sealed,
            k.master_key_id,
            k.created_at,
            k.published_at,
            k.signable_at,
            k.activated_at,
            k.lead_remaining
        ],
        |r| r.get(0),
    )
}

fn changed(n: usize, id: i64, what: &str) -> Result<(), StoreError> {
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "key {id} was not in a state that allows {what}"
        )))
    }
}

/// Starts publication of a pending key added while no server ran; its lead (to be served) is
/// `signable_at - now`.
#[tracing::instrument(skip_all)]
pub fn publish(
    tx: &Tx<'_>,
    id: i64,
    now: UnixTime,
    signable_at: UnixTime,
) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        &format!(
            "UPDATE keys SET published_at = ?2, signable_at = ?3, lead_remaining = {}
             WHERE id = ?1 AND state = 'pending' AND published_at IS NULL",
            tx.dialect("MAX(0, ?3 - ?2)", "GREATEST(0, $3::BIGINT - $2::BIGINT)")
        ),
        &args![id, now, signable_at],
    )?;
    changed(n, id, "publication")
}

/// pending → active, once its lead has been served.
#[tracing::instrument(skip_all)]
pub fn activate(tx: &Tx<'_>, id: i64, now: UnixTime) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        "UPDATE keys SET state = 'active', activated_at = ?2
         WHERE id = ?1 AND state = 'pending' AND signable_at IS NOT NULL AND lead_remaining = 0",
        &args![id, now],
    )?;
    changed(n, id, "activation")
}

/// pending|active → retired, published until `expires_at` and for `expires_at - now` of served
/// time.
#[tracing::instrument(skip_all)]
pub fn retire(tx: &Tx<'_>, id: i64, now: UnixTime, expires_at: UnixTime) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        &format!(
            "UPDATE keys SET state = 'retired', retired_at = ?2, expires_at = ?3,
                             grace_remaining = {}, lead_remaining = 0
             WHERE id = ?1 AND state IN ('pending', 'active')",
            tx.dialect("MAX(0, ?3 - ?2)", "GREATEST(0, $3::BIGINT - $2::BIGINT)")
        ),
        &args![id, now, expires_at],
    )?;
    changed(n, id, "retirement")
}

/// retired → expired, once its grace has been served; the private key is destroyed.
#[tracing::instrument(skip_all)]
pub fn expire(tx: &Tx<'_>, id: i64, now: UnixTime) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        "UPDATE keys SET state = 'expired', private_key_enc = NULL, destroyed_at = ?2
         WHERE id = ?1 AND state = 'retired' AND grace_remaining = 0",
        &args![id, now],
    )?;
    changed(n, id, "expiry")
}

/// any live state → revoked; the private key is destroyed.
#[tracing::instrument(skip_all)]
pub fn revoke(tx: &Tx<'_>, id: i64, now: UnixTime) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        "UPDATE keys SET state = 'revoked', revoked_at = ?2, private_key_enc = NULL, destroyed_at \
         = ?2
         WHERE id = ?1 AND state IN ('pending', 'active', 'retired')",
        &args![id, now],
    )?;
    changed(n, id, "revocation")
}

/// Distinct master key ids that sealed the keys still held.
#[tracing::instrument(skip_all)]
pub fn master_key_ids(tx: &Tx<'_>) -> Result<Vec<String>, StoreError> {
    tx.query_map(
        "SELECT DISTINCT master_key_id FROM keys WHERE private_key_enc IS NOT NULL",
        &args![],
        |r| r.get(0),
    )
}

/// Moves a pending or active key's earliest signing time (the wall clock moved).
#[tracing::instrument(skip_all)]
pub fn reschedule(tx: &Tx<'_>, id: i64, signable_at: UnixTime) -> Result<(), StoreError> {
    tx.announce(Topic::Keys);
    let n = tx.execute(
        "UPDATE keys SET signable_at = ?2
         WHERE id = ?1 AND state IN ('pending', 'active') AND signable_at IS NOT NULL",
        &args![id, signable_at],
    )?;
    changed(n, id, "rescheduling")
}

/// Records that key `id` signed a token expiring at `exp`; false if it already had a later one.
#[tracing::instrument(skip_all)]
pub fn note_exp(tx: &Tx<'_>, id: i64, exp: UnixTime) -> Result<bool, StoreError> {
    let n = tx.execute(
        "UPDATE keys SET last_exp = ?2 WHERE id = ?1 AND (last_exp IS NULL OR last_exp < ?2)",
        &args![id, exp],
    )?;
    Ok(n == 1)
}

/// Counts `seconds` of served time against a published pending key's lead, or a retired key's
/// grace; false for a key in another state.
#[tracing::instrument(skip_all)]
pub fn serve(tx: &Tx<'_>, id: i64, seconds: i64) -> Result<bool, StoreError> {
    let n = tx.execute(
        &format!(
            "UPDATE keys SET
             lead_remaining = CASE WHEN state = 'pending' THEN {max}(0, lead_remaining - ?2)
                                   ELSE lead_remaining END,
             grace_remaining = CASE WHEN state = 'retired' THEN {max}(0, grace_remaining - ?2)
                                    ELSE grace_remaining END
         WHERE id = ?1 AND ((state = 'pending' AND published_at IS NOT NULL AND lead_remaining > 0)
                            OR (state = 'retired' AND grace_remaining > 0))",
            max = tx.dialect("MAX", "GREATEST")
        ),
        &args![id, seconds],
    )?;
    Ok(n == 1)
}
