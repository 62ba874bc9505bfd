//! The audit trail: reading it, proving it whole, exporting it, and signing its head.
//!
//! Every change writes its own row in the transaction that makes it, chained to the row before
//! ([`crate::store::audit`]): SHA-256 over the row and its predecessor's hash, plus a MAC of that
//! hash under the master key. What that proves, and how:
//!
//! - **An edited, deleted, inserted or moved row** breaks the chain at that row:
//!   `keyhost audit verify` names it.
//! - **Rows written without the master key** (even with hashes recomputed) fail their MAC.
//! - **Rows removed from the end**: the chain's head (the newest row's id and hash, in a setting
//!   with a MAC) no longer matches the trail.
//! - **A whole store rolled back** (restored from an older backup, or the head setting rolled
//!   back with the rows): only something kept outside the store can tell. So keyhost signs the
//!   chain's head with the active ES256 key at every key transition and at least hourly while the
//!   trail grows (`audit.head` rows), logs each signed head, and `keyhost audit verify --head`
//!   checks the trail against one kept elsewhere (a log archive, a SIEM, `keyhost audit export`).
//!
//! Never secrets or tokens in the audit: e-mail addresses neither (see the issuance records).

use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::json;

use crate::canonical::Field;
use crate::clock::{UnixTime, rfc3339};
use crate::integrity::RowAuth;
use crate::signer::SigningKey;
pub use crate::store::audit::HEAD_ACTION;
use crate::store::audit::{ChainRow, GENESIS, HEAD_SETTING, MAC_DOMAIN};
use crate::store::{self, Store, StoreError, Tx};

/// The `typ` of a signed chain head.
pub const HEAD_TYP: &str = "keyhost-audit-head";
/// How often the chain's head is signed while the trail grows (and at every key transition).
pub const HEAD_INTERVAL: i64 = 3600;

/// An audit row as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditView {
    /// Sequence number (pass it as `before` for the next page).
    pub id: i64,
    /// When, RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    /// Who: `admin:<name>`, `admin:bootstrap`, `cli:<user>`, `client:<id>`, `scheduler`,
    /// `webhook`, `system`.
    pub actor: String,
    /// What, e.g. `key.activate`, `client.create`, `audit.head`.
    pub action: String,
    /// Which key (kid), client, issuance or provider.
    pub subject: String,
    /// Details (never secrets).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The audit trail, for reading.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<Store>,
}

impl AuditLog {
    /// The trail of `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The newest rows first, at most `limit`, with ids below `before` when given.
    pub async fn entries(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditView>, StoreError> {
        let rows = self
            .store
            .read(move |tx| store::audit::list(tx, limit, before))
            .await?;
        Ok(rows
            .into_iter()
            .map(|e| AuditView {
                id: e.id,
                at: rfc3339(e.at),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                detail: e.detail,
            })
            .collect())
    }
}

/// A signed chain head: the statement that row `seq` of the trail has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// The row it covers.
    pub seq: i64,
    /// That row's hash.
    pub hash: Vec<u8>,
    /// When it was signed.
    pub iat: UnixTime,
    /// The key that signed it.
    pub kid: String,
    /// The compact JWS.
    pub jws: String,
}

impl SignedHead {
    /// Reads a head's claims without checking its signature (the verifier checks it against
    /// the key rows).
    pub fn parse(jws: &str) -> Result<Self, String> {
        let jws = jws.trim();
        let mut parts = jws.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a signed head is a compact JWS (three dot-separated parts)".into());
        };
        let decode = |part: &str| -> Result<serde_json::Value, String> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| format!("not base64url: {e}"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
        };
        let header = decode(header)?;
        let payload = decode(payload)?;
        if header["typ"] != HEAD_TYP {
            return Err(format!("not a signed audit head (typ is not {HEAD_TYP})"));
        }
        let hash = payload["hash"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or("the head has no hash")?;
        Ok(Self {
            seq: payload["seq"].as_i64().ok_or("the head has no seq")?,
            hash,
            iat: payload["iat"].as_i64().ok_or("the head has no iat")?,
            kid: header["kid"]
                .as_str()
                .ok_or("the head has no kid")?
                .to_owned(),
            jws: jws.to_owned(),
        })
    }
}

/// Signs the chain's head with `signer` and appends it as an `audit.head` row, unless the
/// newest row already is one (nothing happened since); the head signed, if any. Runs inside the
/// caller's write transaction, so that no row slips in between the head and its statement.
pub fn sign_head(
    tx: &Tx<'_>,
    signer: &SigningKey,
    rng: &aws_lc_rs::rand::SystemRandom,
    now: UnixTime,
    actor: &str,
) -> Result<Option<SignedHead>, HeadError> {
    let Some(tip) = store::audit::newest(tx)? else {
        return Ok(None);
    };
    let Some(hash) = tip.hash.clone() else {
        return Ok(None);
    };
    if tip.action == HEAD_ACTION {
        return Ok(None);
    }
    let hex_hash = hex::encode(&hash);
    let jws = signer
        .sign_statement(
            rng,
            HEAD_TYP,
            &json!({"seq": tip.id, "hash": hex_hash, "iat": now}),
        )
        .map_err(HeadError::Sign)?;
    store::audit::record(
        tx,
        now,
        actor,
        HEAD_ACTION,
        &signer.kid,
        &json!({"seq": tip.id, "hash": hex_hash, "jws": jws}),
    )?;
    Ok(Some(SignedHead {
        seq: tip.id,
        hash,
        iat: now,
        kid: signer.kid.clone(),
        jws,
    }))
}

/// Signs the chain's head at every key transition and at least every [`HEAD_INTERVAL`] while
/// the trail grows, with the active ES256 key (else the active key of another algorithm).
#[derive(Debug, Default)]
pub struct HeadSchedule {
    last: std::sync::Mutex<Option<UnixTime>>,
}

impl HeadSchedule {
    /// Signs the head if `transition` or the interval has passed since the last one, unless the
    /// keys may not sign (a stale view on a shared store) or nothing was written since. Failures
    /// are logged, never returned: the trail's head is signed at the next occasion.
    pub fn maybe_sign(
        &self,
        store: &Store,
        live: &crate::live::LiveKeys,
        now: UnixTime,
        transition: bool,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = transition || last.is_none_or(|t| now - t >= HEAD_INTERVAL);
        if !due || live.may_sign().is_err() {
            return;
        }
        let signers = live.signers_now();
        let Some(signer) = signers
            .active
            .get(&crate::keys::Alg::ES256)
            .or_else(|| signers.active.values().next())
        else {
            return;
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match store.blocking_write(|tx| sign_head(tx, signer, &rng, now, "system")) {
            Ok(Some(head)) => {
                *last = Some(now);
                tracing::info!(
                    seq = head.seq,
                    hash = %hex::encode(&head.hash),
                    kid = %head.kid,
                    head = %head.jws,
                    "signed the audit chain's head (keep it: `keyhost audit verify --head` checks \
                     the trail against it)"
                );
            }
            Ok(None) => *last = Some(now),
            Err(e) => {
                tracing::warn!(error = %e, "could not sign the audit chain's head; will retry")
            }
        }
    }
}

/// Why a head was not signed.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key could not sign.
    #[error("signing the audit chain's head: {0}")]
    Sign(crate::keys::material::KeyMaterialError),
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The first row that is not as keyhost wrote it (0: before the first row).
    pub row: i64,
    /// What is wrong with it.
    pub what: String,
}

/// What `keyhost audit verify` found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Rows checked.
    pub rows: u64,
    /// The newest row's id.
    pub last_row: Option<i64>,
    /// Rows from before the chain: chained as found, without a MAC.
    pub from_before_the_chain: u64,
    /// Signed heads in the trail whose signature and hash were checked.
    pub signed_heads: u64,
    /// The first problem, if any.
    pub problem: Option<Break>,
}

impl Verification {
    /// Whether the trail is whole.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Walks the whole chain, checks every row's link, hash and MAC, every signed head in it, the
/// head keyhost last recorded, and `external` (a head kept outside the store); the first break.
pub fn verify(
    store: &Store,
    auth: &RowAuth,
    external: Option<&SignedHead>,
) -> Result<Verification, StoreError> {
    store.blocking_read(|tx| {
        let mut v = Verification::default();
        let mut prev = GENESIS.to_vec();
        let mut prev_id: Option<i64> = None;
        let mut macs_began = false;
        let mut after = i64::MIN;
        let mut external_seen = false;
        // Heads are checked against the public keys of authentic key rows only: a key row
        // inserted behind keyhost's back cannot vouch for a forged head.
        let mut keys: PublicKeys = std::collections::HashMap::new();
        for row in store::keys::list(tx)?.rows {
            if auth.stored_key_ok(&row) {
                let jwk = serde_json::to_value(&row.record.public_jwk).expect("a JWK serialises");
                keys.entry(row.record.kid.clone()).or_default().push(jwk);
            }
        }
        loop {
            let page = store::audit::chain_page(tx, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for row in &page {
                if let Some(problem) = check_row(row, &prev, prev_id, &mut macs_began, auth) {
                    v.problem = Some(problem);
                    return Ok(v);
                }
                if macs_began {
                    if row.action == HEAD_ACTION {
                        if let Err(what) = check_head_row(row, tx, &keys) {
                            v.problem = Some(Break { row: row.id, what });
                            return Ok(v);
                        }
                        v.signed_heads += 1;
                    }
                } else if row.action == HEAD_ACTION {
                    // Signed heads exist only since the chain: one among rows from before it
                    // means the chain's MACs were wiped.
                    v.problem = Some(Break {
                        row: row.id,
                        what: "is a signed head without a MAC: the chain's MACs were removed, \
                               and the rows up to here can no longer be vouched for"
                            .into(),
                    });
                    return Ok(v);
                } else {
                    v.from_before_the_chain += 1;
                }
                let hash = row.hash.clone().unwrap_or_default();
                if let Some(head) = external
                    && head.seq == row.id
                {
                    if head.hash != hash {
                        v.problem = Some(Break {
                            row: row.id,
                            what: format!(
                                "differs from the signed head of {}: the trail was rewritten from \
                                 here",
                                rfc3339(head.iat)
                            ),
                        });
                        return Ok(v);
                    }
                    external_seen = true;
                }
                prev = hash;
                prev_id = Some(row.id);
                v.rows += 1;
            }
        }
        v.last_row = prev_id;
        if let Some(head) = external {
            if let Err(what) = check_head_signature(head, &keys) {
                v.problem = Some(Break {
                    row: head.seq,
                    what,
                });
                return Ok(v);
            }
            if !external_seen {
                v.problem = Some(Break {
                    row: prev_id.unwrap_or(0),
                    what: format!(
                        "the trail has no row {} that the head signed at {} covers: it was \
                         truncated, or the store was restored from an older backup",
                        head.seq,
                        rfc3339(head.iat)
                    ),
                });
                return Ok(v);
            }
        }
        v.problem = check_recorded_head(tx, auth, prev_id, &prev)?;
        Ok(v)
    })
}

fn check_row(
    row: &ChainRow,
    prev: &[u8],
    prev_id: Option<i64>,
    macs_began: &mut bool,
    auth: &RowAuth,
) -> Option<Break> {
    let broken = |what: String| Some(Break { row: row.id, what });
    let Some(hash) = &row.hash else {
        return broken(
            "has no hash: inserted behind keyhost's back, or its hash was removed".into(),
        );
    };
    if row.prev_hash.as_deref() != Some(prev) {
        return broken(match prev_id {
            Some(p) => format!(
                "does not follow row {p}: a row between them was deleted, or this one was \
                 inserted or moved here"
            ),
            None => "is not the first row keyhost wrote: earlier rows were deleted, or this one \
                     was inserted"
                .into(),
        });
    }
    if row.link_hash(prev).as_slice() != hash.as_slice() {
        return broken("was edited: its content no longer matches its hash".into());
    }
    match &row.mac {
        None if *macs_began => broken(
            "carries no MAC: not written by keyhost (rows after the first MAC all carry one)"
                .into(),
        ),
        None => None,
        Some(mac) => {
            if !crate::store::Sealer::verify(auth, MAC_DOMAIN, &[Field::Bytes(hash)], Some(mac)) {
                return broken(
                    "fails its MAC: not written by keyhost (whoever wrote it lacks the master \
                     key), or the master key is not this store's"
                        .into(),
                );
            }
            *macs_began = true;
            None
        }
    }
}

/// Checks an `audit.head` row: its JWS is signed by the key it names, and states the hash the
/// trail has at the row it covers.
fn check_head_row(row: &ChainRow, tx: &Tx<'_>, keys: &PublicKeys) -> Result<(), String> {
    let detail: serde_json::Value =
        serde_json::from_str(&row.detail).map_err(|e| format!("unreadable head: {e}"))?;
    let head = SignedHead::parse(detail["jws"].as_str().unwrap_or_default())
        .map_err(|e| format!("holds an unreadable signed head: {e}"))?;
    check_head_signature(&head, keys)?;
    let covered = store::audit::chain_page(tx, head.seq - 1, 1)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .filter(|r| r.id == head.seq);
    match covered {
        Some(r) if r.hash.as_deref() == Some(head.hash.as_slice()) => Ok(()),
        _ => Err(format!(
            "is a signed head for row {} that the trail does not hold as signed",
            head.seq
        )),
    }
}

/// Public JWKs of the authentic key rows, by kid (an operator-chosen kid may name several keys
/// over time).
type PublicKeys = std::collections::HashMap<String, Vec<serde_json::Value>>;

fn check_head_signature(head: &SignedHead, keys: &PublicKeys) -> Result<(), String> {
    let jwks = keys.get(&head.kid).ok_or_else(|| {
        format!(
            "the signed head names key {:?}, which this store does not hold as keyhost wrote it",
            head.kid
        )
    })?;
    let (message, signature) = head
        .jws
        .rsplit_once('.')
        .ok_or("a signed head is a compact JWS")?;
    let verifies = |jwk: &serde_json::Value| -> Option<bool> {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
        let alg = match jwk.common.key_algorithm {
            Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => jsonwebtoken::Algorithm::RS256,
            _ => jsonwebtoken::Algorithm::ES256,
        };
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg).ok()
    };
    if jwks.iter().any(|jwk| verifies(jwk) == Some(true)) {
        Ok(())
    } else {
        Err(format!(
            "the signed head's signature does not verify with key {}",
            head.kid
        ))
    }
}

fn check_recorded_head(
    tx: &Tx<'_>,
    auth: &RowAuth,
    last: Option<i64>,
    last_hash: &[u8],
) -> Result<Option<Break>, StoreError> {
    let Some(last) = last else {
        return Ok(store::audit::head(tx)?.map(|_| Break {
            row: 0,
            what: "the trail is empty, but keyhost recorded a head: every row was deleted".into(),
        }));
    };
    let Some((value, mac)) = store::audit::head(tx)? else {
        return Ok(Some(Break {
            row: last,
            what: "the record of the chain's head is missing (deleted behind keyhost's back)"
                .into(),
        }));
    };
    let at_rest = crate::store::Sealer::verify(
        auth,
        "setting",
        &[Field::Text(HEAD_SETTING), Field::Text(&value)],
        mac.as_deref(),
    );
    // keyhost records every head with a MAC (rows from before the chain are chained once the
    // master key is known): without one, anybody could record a head after rows cut off the
    // end, or after a trail rehashed from its first row without MACs.
    if !at_rest {
        return Ok(Some(Break {
            row: last,
            what: format!(
                "the record of the chain's head {} (not written by keyhost): rows may have been \
                 removed from the end",
                if mac.is_some() {
                    "fails its MAC"
                } else {
                    "carries no MAC"
                }
            ),
        }));
    }
    if value != store::audit::head_value(last, last_hash) {
        let recorded = value.split(':').next().unwrap_or("?").to_owned();
        return Ok(Some(Break {
            row: last,
            what: format!(
                "the trail ends at row {last}, but keyhost last wrote row {recorded}: rows were \
                 removed from the end (or the store was rolled back)"
            ),
        }));
    }
    Ok(None)
}

/// One row as `keyhost audit export` writes it (one JSON object per line).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Exported<'a> {
    id: i64,
    at: String,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    detail: serde_json::Value,
    prev_hash: Option<String>,
    hash: Option<String>,
}

/// Writes the rows at or after `since` (all when `None`) as JSON lines, in chain order, with
/// their hashes (a SIEM can check the links itself); how many.
pub fn export(
    store: &Store,
    since: Option<UnixTime>,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    let mut after = match since {
        None => i64::MIN,
        Some(at) => match store.blocking_read(|tx| store::audit::first_since(tx, at))? {
            Some(first) => first - 1,
            None => return Ok(0),
        },
    };
    let mut written = 0;
    loop {
        let page = store.blocking_read(|tx| store::audit::chain_page(tx, after, 1000))?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for row in &page {
            let line = serde_json::to_string(&Exported {
                id: row.id,
                at: rfc3339(row.at),
                actor: &row.actor,
                action: &row.action,
                subject: &row.subject,
                detail: serde_json::from_str(&row.detail)
                    .unwrap_or_else(|_| json!(row.detail.clone())),
                prev_hash: row.prev_hash.as_ref().map(hex::encode),
                hash: row.hash.as_ref().map(hex::encode),
            })
            .expect("a row serialises");
            writeln!(out, "{line}")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
