//! Credentials: client API keys and the admin token.
//!
//! Both are random 256-bit secrets with a recognisable prefix (`khc_` for client keys, `kha_` for
//! generated admin tokens) so that secret scanners can spot leaked ones. Only SHA-256 hashes are
//! stored (a hash suffices for high-entropy secrets, and no password-hash cost lands on the hot
//! path), and comparisons are constant-time. A client key carries the client id in the clear
//! (`khc_<id>_<secret>`), so lookup is by id and never by secret.
//!
//! Clients live in memory and are reloaded when the store changes, so authenticating a request
//! never reads the database.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::files::write_secret_file;
use crate::integrity::RowAuth;
use crate::log_limit::LogLimiter;
use crate::store::clients::ClientRow;
use crate::store::{self, Rows, Store, StoreError};

/// Prefix of client API keys.
pub const CLIENT_KEY_PREFIX: &str = "khc_";
/// Prefix of generated admin tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "kha_";
/// Name of the file that receives a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
const CLIENT_ID_LEN: usize = 16;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub(crate) fn random_b64(n: usize) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(vec![0u8; n]);
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the system RNG works");
    Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_slice()))
}

/// A freshly issued client key.
pub struct IssuedClientKey {
    /// The client id (public).
    pub id: String,
    /// The full key, shown once.
    pub api_key: SecretString,
    /// What the store keeps.
    pub secret_hash: [u8; 32],
}

/// Issues a new client id and API key.
pub fn issue_client_key() -> IssuedClientKey {
    let mut raw = [0u8; CLIENT_ID_LEN / 2];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the system RNG works");
    let id = hex::encode(raw);
    let secret = random_b64(32);
    IssuedClientKey {
        api_key: SecretString::from(format!("{CLIENT_KEY_PREFIX}{id}_{}", secret.as_str())),
        secret_hash: sha256(secret.as_bytes()),
        id,
    }
}

/// Splits `khc_<id>_<secret>` into id and secret.
fn split_client_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(CLIENT_KEY_PREFIX)?;
    let (id, secret) = (rest.get(..CLIENT_ID_LEN)?, rest.get(CLIENT_ID_LEN..)?);
    let secret = secret.strip_prefix('_')?;
    (!secret.is_empty()).then_some((id, secret))
}

/// A client as the authenticator sees it.
#[derive(Debug, Clone)]
pub struct Client {
    /// Client id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    secret_hash: [u8; 32],
    disabled: bool,
}

/// Why a credential was refused. Deliberately coarse: callers learn nothing about which part
/// was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable `Authorization: Bearer` header.
    #[error("missing credentials: send Authorization: Bearer <key>")]
    Missing,
    /// The credential does not match.
    #[error("invalid credentials")]
    Invalid,
    /// The client or admin credential exists but was disabled.
    #[error("this credential has been disabled")]
    Disabled,
}

/// Client credentials held in memory: only clients whose row passes its integrity check.
#[derive(Debug)]
pub struct ClientRegistry {
    clients: ArcSwap<HashMap<String, Arc<Client>>>,
    auth: Arc<RowAuth>,
    /// Orders reloads and withdrawals (see [`ClientRegistry::reload`]).
    ordered: std::sync::Mutex<()>,
}

impl ClientRegistry {
    /// An empty registry that will check rows with `auth`.
    pub fn new(auth: Arc<RowAuth>) -> Self {
        Self {
            clients: ArcSwap::default(),
            auth,
            ordered: std::sync::Mutex::new(()),
        }
    }

    /// Reloads every client from the store; a row failing its integrity check is left out and
    /// reported.
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        // Read and load under one lock, so that the list loaded last is the one read last: two
        // reloads at once (the background round's, a client change's) could otherwise load a
        // list read before the change after the one read after it, and a client just created
        // (or just disabled) would be refused (or accepted again) until the next round.
        let _ordered = self.ordered.lock().unwrap_or_else(|p| p.into_inner());
        self.load(store.blocking_read(store::clients::list)?);
        Ok(())
    }

    /// Replaces the clients with those of `found` whose rows pass their integrity check; the
    /// others are left out and reported.
    pub fn load(&self, found: Rows<ClientRow>) {
        let (rows, failing) = self
            .auth
            .authentic("clients", found, RowAuth::client_ok, |r| r.id.as_str());
        static REPORTS: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(60));
        if !failing.is_empty()
            && let Some(suppressed) = REPORTS.allow()
        {
            tracing::error!(
                clients = %failing.join(", "),
                suppressed,
                "client rows fail their integrity check (written by something without the master \
                 key): their keys are refused; disable them once you have found how they got there"
            );
        }
        let map = rows
            .into_iter()
            .filter_map(|r| {
                let hash: [u8; 32] = r.secret_hash.as_slice().try_into().ok()?;
                Some((
                    r.id.clone(),
                    Arc::new(Client {
                        id: r.id,
                        name: r.name,
                        scopes: r.scopes,
                        secret_hash: hash,
                        disabled: r.disabled_at.is_some(),
                    }),
                ))
            })
            .collect();
        self.clients.store(Arc::new(map));
    }

    /// Stops the client `id` from authenticating at once, without reading the store (a disabling
    /// takes effect even if the reload that follows it fails).
    pub fn withdraw(&self, id: &str) {
        // After any reload in progress, which may have read the client before it was disabled.
        let _ordered = self.ordered.lock().unwrap_or_else(|p| p.into_inner());
        self.clients.rcu(|map| {
            let mut map = (**map).clone();
            map.remove(id);
            map
        });
    }

    /// The client holding `api_key`.
    pub fn authenticate(&self, api_key: &str) -> Result<Arc<Client>, AuthError> {
        let (id, secret) = split_client_key(api_key).ok_or(AuthError::Invalid)?;
        let presented = sha256(secret.as_bytes());
        let clients = self.clients.load();
        match clients.get(id) {
            Some(c) if bool::from(presented.ct_eq(&c.secret_hash)) => {
                if c.disabled {
                    Err(AuthError::Disabled)
                } else {
                    Ok(c.clone())
                }
            }
            Some(_) => Err(AuthError::Invalid),
            None => {
                // Same work as a hit, so response time does not reveal which ids exist.
                let _ = presented.ct_eq(&[0u8; 32]);
                Err(AuthError::Invalid)
            }
        }
    }
}

/// The admin credential (a hash).
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<hash>)")
    }
}

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// `KEYHOST_ADMIN_TOKEN`.
    Environment,
    /// Generated on an earlier start; its hash is in the store.
    Stored,
    /// Generated now and written to this file (0600).
    Generated(PathBuf),
}

impl AdminToken {
    /// An admin credential for `token`.
    pub fn from_token(token: &str) -> Self {
        Self {
            hash: sha256(token.as_bytes()),
        }
    }

    /// Whether `presented` is the admin token (constant time).
    pub fn verify(&self, presented: &str) -> bool {
        bool::from(sha256(presented.as_bytes()).ct_eq(&self.hash))
    }

    /// The configured token; else the one generated on an earlier start (its stored hash must
    /// pass its integrity check: a hash written by anyone else is ignored and reported); else a
    /// new one, whose hash is stored and whose value is written once to `keys_dir/admin.token`
    /// (0600).
    pub fn resolve(
        configured: Option<&SecretString>,
        store: &Store,
        auth: &RowAuth,
        keys_dir: &Path,
    ) -> Result<(Self, AdminTokenSource), AdminTokenError> {
        if let Some(token) = configured {
            let token = token.expose_secret();
            if token.trim().len() < 16 {
                return Err(AdminTokenError::TooShort);
            }
            return Ok((
                Self::from_token(token.trim()),
                AdminTokenSource::Environment,
            ));
        }
        let name = store::settings::ADMIN_TOKEN_SHA256;
        let stored = store.blocking_read(|tx| store::settings::get_with_mac(tx, name))?;
        if let Some(stored) = stored {
            match decode_hex32(&stored.value) {
                Some(hash) if auth.setting_ok(name, &stored.value, stored.mac.as_deref()) => {
                    return Ok((Self { hash }, AdminTokenSource::Stored));
                }
                _ => tracing::error!(
                    "the stored admin token hash fails its integrity check (it was not written by \
                     keyhost): it is ignored; the token in {} is used, or a new one is generated \
                     there",
                    keys_dir.join(ADMIN_TOKEN_FILE).display()
                ),
            }
        }
        let file = keys_dir.join(ADMIN_TOKEN_FILE);
        let read = || {
            fs::read_to_string(&file)
                .map(|t| Zeroizing::new(t.trim().to_owned()))
                .map_err(|e| AdminTokenError::Io(file.clone(), e))
        };
        let token = if file.exists() {
            read()?
        } else {
            let token = Zeroizing::new(format!("{ADMIN_TOKEN_PREFIX}{}", random_b64(32).as_str()));
            match write_secret_file(&file, token.as_bytes()) {
                Ok(()) => token,
                // Created by another process a moment ago: the first file wins.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read()?,
                Err(e) => return Err(AdminTokenError::Io(file.clone(), e)),
            }
        };
        let me = Self::from_token(&token);
        let hex = hex::encode(me.hash);
        store.blocking_write(|tx| {
            store::settings::set_with_mac(tx, name, &hex, &auth.setting_mac(name, &hex))
        })?;
        Ok((me, AdminTokenSource::Generated(file)))
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Why the admin token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// A configured token that is too easy to guess.
    #[error(
        "KEYHOST_ADMIN_TOKEN must be at least 16 characters (use e.g. `head -c 32 /dev/urandom | \
         base64`)"
    )]
    TooShort,
    /// The token file could not be written or read.
    #[error("cannot write or read the admin token file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_authenticate_and_near_misses_do_not() {
        let registry = ClientRegistry::new(Arc::new(RowAuth::from_master(&[7; 32])));
        let issued = issue_client_key();
        let mut map = HashMap::new();
        map.insert(
            issued.id.clone(),
            Arc::new(Client {
                id: issued.id.clone(),
                name: "app".into(),
                scopes: vec!["issue".into()],
                secret_hash: issued.secret_hash,
                disabled: false,
            }),
        );
        registry.clients.store(Arc::new(map));
        let key = issued.api_key.expose_secret();
        assert!(key.starts_with(CLIENT_KEY_PREFIX));
        assert_eq!(registry.authenticate(key).unwrap().id, issued.id);
        let mut tampered = key.to_owned();
        tampered.pop();
        tampered.push('A');
        tampered.push('A');
        assert_eq!(
            registry.authenticate(&tampered).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            registry.authenticate("khc_").unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(registry.authenticate("").unwrap_err(), AuthError::Invalid);
        assert_eq!(
            registry
                .authenticate("khc_ééééééééééééééééé_x")
                .unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn admin_token_is_verified_by_hash() {
        let t = AdminToken::from_token("a-long-enough-admin-token");
        assert!(t.verify("a-long-enough-admin-token"));
        assert!(!t.verify("a-long-enough-admin-tokeN"));
        assert!(!t.verify(""));
    }
}
