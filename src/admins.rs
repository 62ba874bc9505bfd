//! Admin credentials: named ones (`POST /admin/admins`, `keyhost admins create`), each with a
//! role, and the bootstrap token (`KEYHOST_ADMIN_TOKEN` or the generated `admin.token`).
//!
//! - The audit trail names the credential behind every change: `admin:<name>`, and
//!   `admin:bootstrap` for the bootstrap token, so the trail says which person rotated a key.
//! - Role `reader` may only read (`GET`); any change answers 403 `PERMISSIONS_ERROR`. Role
//!   `operator` may do everything, managing admins included. The bootstrap token is an operator.
//! - A named credential is `kha_<id>_<secret>`: 256 random bits, shown once, stored as a SHA-256
//!   hash in a row with a MAC under the master key (a database writer cannot add an admin), and
//!   compared in constant time. Names are never reused: a name is an identity in the trail.
//! - The bootstrap token can be disabled once an enabled named operator exists; the last enabled
//!   operator cannot be disabled while the bootstrap token is. The CLI, which holds the master
//!   key, can always create an operator again.
//!
//! Credentials live in memory and are reloaded when the store changes, so authenticating a
//! request never reads the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::{ADMIN_TOKEN_PREFIX, AdminToken, AuthError, random_b64, sha256};
use crate::clock::{Clock, rfc3339};
use crate::integrity::RowAuth;
use crate::log_limit::LogLimiter;
use crate::store::admins::AdminRow;
use crate::store::{self, Store, StoreError};

/// The name under which the bootstrap token acts.
pub const BOOTSTRAP: &str = "bootstrap";
const ADMIN_ID_LEN: usize = 16;

/// What an admin credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only: `GET` requests.
    Reader,
    /// Everything, managing admins included.
    Operator,
}

impl Role {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "operator" => Ok(Role::Operator),
            other => Err(format!("role must be reader or operator, not {other:?}")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who presented an admin credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// The credential's name (`bootstrap` for the bootstrap token).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl AdminIdentity {
    /// The audit trail's actor: `admin:<name>`.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }
}

/// A named credential in memory.
#[derive(Debug)]
struct Named {
    name: String,
    role: Role,
    secret_hash: [u8; 32],
    disabled: bool,
}

/// Splits `kha_<id>_<secret>` into id and secret.
fn split_admin_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(ADMIN_TOKEN_PREFIX)?;
    let (id, secret) = (rest.get(..ADMIN_ID_LEN)?, rest.get(ADMIN_ID_LEN..)?);
    let secret = secret.strip_prefix('_')?;
    (!secret.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// The admin credentials, in memory: the bootstrap token and the named credentials whose rows
/// pass their integrity check.
pub struct AdminRegistry {
    bootstrap: AdminToken,
    bootstrap_disabled: AtomicBool,
    named: ArcSwap<HashMap<String, Arc<Named>>>,
    auth: Arc<RowAuth>,
    ordered: std::sync::Mutex<()>,
}

impl std::fmt::Debug for AdminRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRegistry").finish_non_exhaustive()
    }
}

impl AdminRegistry {
    /// A registry with the bootstrap token only, until the first [`AdminRegistry::reload`].
    pub fn new(bootstrap: AdminToken, auth: Arc<RowAuth>) -> Self {
        Self {
            bootstrap,
            bootstrap_disabled: AtomicBool::new(false),
            named: ArcSwap::default(),
            auth,
            ordered: std::sync::Mutex::new(()),
        }
    }

    /// Reloads the named credentials and the bootstrap token's state from the store; a row
    /// failing its integrity check is left out and reported.
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        // Read and load under one lock (see `ClientRegistry::reload`).
        let _ordered = self.ordered.lock().unwrap_or_else(|p| p.into_inner());
        let auth = &self.auth;
        let (found, bootstrap) = store.blocking_read(|tx| {
            Ok::<_, StoreError>((store::admins::list(tx)?, bootstrap_disabled_at(tx, auth)?))
        })?;
        let (rows, failing) = self
            .auth
            .authentic("admins", found, RowAuth::admin_ok, |r| r.id.as_str());
        static REPORTS: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(60));
        if !failing.is_empty()
            && let Some(suppressed) = REPORTS.allow()
        {
            tracing::error!(
                admins = %failing.join(", "),
                suppressed,
                "admin credential rows fail their integrity check (written by something without \
                 the master key): they are refused"
            );
        }
        // Disabled only by a setting keyhost wrote; a forged one changes nothing.
        self.bootstrap_disabled
            .store(bootstrap.is_some(), Ordering::SeqCst);
        let map = rows
            .into_iter()
            .filter_map(|r| {
                let hash: [u8; 32] = r.secret_hash.as_slice().try_into().ok()?;
                let role = r.role.parse().ok()?;
                Some((
                    r.id,
                    Arc::new(Named {
                        name: r.name,
                        role,
                        secret_hash: hash,
                        disabled: r.disabled_at.is_some(),
                    }),
                ))
            })
            .collect();
        self.named.store(Arc::new(map));
        Ok(())
    }

    /// Stops the credential `name` (or the bootstrap token) from authenticating at once,
    /// without reading the store.
    pub fn withdraw(&self, name: &str) {
        let _ordered = self.ordered.lock().unwrap_or_else(|p| p.into_inner());
        if name == BOOTSTRAP {
            self.bootstrap_disabled.store(true, Ordering::SeqCst);
            return;
        }
        self.named.rcu(|map| {
            let mut map = (**map).clone();
            map.retain(|_, a| a.name != name);
            map
        });
    }

    /// Whether the bootstrap token still authenticates.
    pub fn bootstrap_enabled(&self) -> bool {
        !self.bootstrap_disabled.load(Ordering::SeqCst)
    }

    /// Who holds `token`.
    pub fn authenticate(&self, token: &str) -> Result<AdminIdentity, AuthError> {
        if self.bootstrap.verify(token) {
            return if self.bootstrap_enabled() {
                Ok(AdminIdentity {
                    name: BOOTSTRAP.to_owned(),
                    role: Role::Operator,
                })
            } else {
                Err(AuthError::Disabled)
            };
        }
        let (id, secret) = split_admin_key(token).ok_or(AuthError::Invalid)?;
        let presented = sha256(secret.as_bytes());
        let named = self.named.load();
        match named.get(id) {
            Some(a) if bool::from(presented.ct_eq(&a.secret_hash)) => {
                if a.disabled {
                    Err(AuthError::Disabled)
                } else {
                    Ok(AdminIdentity {
                        name: a.name.clone(),
                        role: a.role,
                    })
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

/// A named credential as the API shows it (never its secret or hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Admin)]
pub struct AdminView {
    /// Name; the audit trail's actor is `admin:<name>`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Disabling time, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
    /// `failed` when the row fails its integrity check: it was not written by keyhost and is
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^failed$")]
    pub integrity: Option<&'static str>,
}

impl AdminView {
    fn of(r: &AdminRow, auth: &RowAuth) -> Self {
        let role = r.role.parse().ok();
        Self {
            name: r.name.clone(),
            role: role.unwrap_or(Role::Reader),
            created_at: rfc3339(r.created_at),
            disabled_at: r.disabled_at.map(rfc3339),
            integrity: (role.is_none() || !auth.admin_ok(r)).then_some("failed"),
        }
    }
}

/// The bootstrap token's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapView {
    /// Whether the bootstrap token still authenticates.
    pub enabled: bool,
    /// When it was disabled, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
}

/// Every admin credential.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminListing {
    /// Named credentials, oldest first.
    pub admins: Vec<AdminView>,
    /// The bootstrap token (`KEYHOST_ADMIN_TOKEN` or the generated `admin.token`).
    pub bootstrap: BootstrapView,
}

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A value breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken, now or in the past.
    #[error(
        "an admin named {0:?} exists or existed (names are never reused: they identify people in \
         the audit trail)"
    )]
    NameTaken(String),
    /// No such credential.
    #[error("no admin named {0:?}")]
    NotFound(String),
    /// Already disabled.
    #[error("admin {0:?} is already disabled")]
    AlreadyDisabled(String),
    /// Disabling it would leave no operator.
    #[error("{0}")]
    LastOperator(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn validate_name(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !ok {
        return Err(AdminError::Invalid(
            "name must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a \
             letter or digit (e.g. \"alice\")"
                .into(),
        ));
    }
    if name == BOOTSTRAP {
        return Err(AdminError::Invalid(format!(
            "{BOOTSTRAP:?} names the bootstrap token; choose another name"
        )));
    }
    Ok(())
}

/// Named admin credentials: creation (the token is shown once), listing and disabling, each
/// change one transaction with its audit row. In a server, the in-memory registry follows every
/// change at once.
pub struct AdminService {
    store: Arc<Store>,
    auth: Arc<RowAuth>,
    clock: Arc<dyn Clock>,
    registry: Option<Arc<AdminRegistry>>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    /// A service over `store`; `registry` is the server's in-memory view (none in the CLI).
    pub fn new(
        store: Arc<Store>,
        auth: Arc<RowAuth>,
        clock: Arc<dyn Clock>,
        registry: Option<Arc<AdminRegistry>>,
    ) -> Self {
        Self {
            store,
            auth,
            clock,
            registry,
        }
    }

    /// Creates a named credential; returns it and its token (the only time the token exists in
    /// the clear).
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<(AdminView, SecretString), AdminError> {
        validate_name(name)?;
        let now = self.clock.now();
        let mut raw = [0u8; ADMIN_ID_LEN / 2];
        SystemRandom::new()
            .fill(&mut raw)
            .expect("the system RNG works");
        let id = hex::encode(raw);
        let secret = random_b64(32);
        let token = SecretString::from(format!("{ADMIN_TOKEN_PREFIX}{id}_{}", secret.as_str()));
        let mut row = AdminRow {
            id,
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            secret_hash: sha256(secret.as_bytes()).to_vec(),
            created_at: now,
            disabled_at: None,
            mac: None,
        };
        row.mac = Some(self.auth.admin_mac(&row));
        let view = AdminView::of(&row, &self.auth);
        let actor = actor.to_owned();
        self.store
            .write(move |tx| {
                if !store::admins::insert(tx, &row)? {
                    return Err(AdminError::NameTaken(row.name.clone()));
                }
                store::audit::record(
                    tx,
                    now,
                    &actor,
                    "admin.create",
                    &format!("admin:{}", row.name),
                    &json!({"role": row.role}),
                )?;
                Ok(())
            })
            .await?;
        self.reload().await?;
        Ok((view, token))
    }

    /// Every named credential, each flagged if its row fails its integrity check, and the
    /// bootstrap token's state.
    pub async fn list(&self) -> Result<AdminListing, AdminError> {
        let auth = self.auth.clone();
        let (rows, bootstrap) = self
            .store
            .read(move |tx| {
                Ok::<_, StoreError>((
                    store::admins::list(tx)?.rows,
                    bootstrap_disabled_at(tx, &auth)?,
                ))
            })
            .await?;
        Ok(AdminListing {
            admins: rows.iter().map(|r| AdminView::of(r, &self.auth)).collect(),
            bootstrap: BootstrapView {
                enabled: bootstrap.is_none(),
                disabled_at: bootstrap.map(rfc3339),
            },
        })
    }

    /// Disables the credential `name` (`bootstrap`: the bootstrap token) at once. Refused when
    /// it would leave no enabled operator.
    pub async fn disable(&self, name: &str, actor: &str) -> Result<AdminListing, AdminError> {
        let (now, auth, name_owned, actor) = (
            self.clock.now(),
            self.auth.clone(),
            name.to_owned(),
            actor.to_owned(),
        );
        self.store
            .write(move |tx| {
                let name = name_owned.as_str();
                let bootstrap_off = bootstrap_disabled_at(tx, &auth)?.is_some();
                let operators: Vec<AdminRow> = store::admins::list(tx)?
                    .rows
                    .into_iter()
                    .filter(|r| r.disabled_at.is_none() && r.role == "operator" && auth.admin_ok(r))
                    .collect();
                if name == BOOTSTRAP {
                    if bootstrap_off {
                        return Err(AdminError::AlreadyDisabled(name.to_owned()));
                    }
                    if operators.is_empty() {
                        return Err(AdminError::LastOperator(
                            "create a named operator first (POST /admin/admins with role \
                             operator): disabling the bootstrap token now would leave no \
                             operator"
                                .into(),
                        ));
                    }
                    let value = now.to_string();
                    let setting = store::settings::ADMIN_BOOTSTRAP_DISABLED_AT;
                    store::settings::set_with_mac(
                        tx,
                        setting,
                        &value,
                        &auth.setting_mac(setting, &value),
                    )?;
                } else {
                    let mut row = store::admins::by_name(tx, name)?
                        .ok_or_else(|| AdminError::NotFound(name.to_owned()))?;
                    if row.disabled_at.is_some() {
                        return Err(AdminError::AlreadyDisabled(name.to_owned()));
                    }
                    if bootstrap_off && operators.len() == 1 && operators[0].id == row.id {
                        return Err(AdminError::LastOperator(format!(
                            "{name:?} is the last enabled operator and the bootstrap token is \
                             disabled: create another operator first"
                        )));
                    }
                    // A disabled credential authenticates nothing, so a forged row may be
                    // disabled too (that is the remedy); its MAC then covers the disabling.
                    row.disabled_at = Some(now);
                    store::admins::disable(tx, &row.id, now, &auth.admin_mac(&row))?;
                }
                store::audit::record(
                    tx,
                    now,
                    &actor,
                    "admin.disable",
                    &format!("admin:{name}"),
                    &json!({}),
                )?;
                Ok(())
            })
            .await?;
        if let Some(registry) = self.registry.clone() {
            // Blocking (it waits for a reload in progress), so off the async threads.
            let name = name.to_owned();
            let _ = tokio::task::spawn_blocking(move || registry.withdraw(&name)).await;
        }
        self.reload().await?;
        self.list().await
    }

    /// Whether `who` still holds its credential as the store says now: enabled, its row as
    /// keyhost wrote it, its role unchanged. Checked before every change, so that a credential
    /// disabled through another replica changes nothing in the moment before this one hears of
    /// it; a credential the store no longer vouches for is withdrawn here at once.
    pub async fn confirm(&self, who: &AdminIdentity) -> Result<bool, AdminError> {
        let (auth, name, role) = (self.auth.clone(), who.name.clone(), who.role);
        let confirmed = self
            .store
            .read(move |tx| {
                if name == BOOTSTRAP {
                    return Ok::<_, StoreError>(bootstrap_disabled_at(tx, &auth)?.is_none());
                }
                Ok(store::admins::by_name(tx, &name)?.is_some_and(|r| {
                    r.disabled_at.is_none() && r.role == role.as_str() && auth.admin_ok(&r)
                }))
            })
            .await?;
        if !confirmed && let Some(registry) = self.registry.clone() {
            let name = who.name.clone();
            let _ = tokio::task::spawn_blocking(move || registry.withdraw(&name)).await;
        }
        Ok(confirmed)
    }

    /// Rebuilds the server's registry from the store (nothing in the CLI).
    pub async fn reload(&self) -> Result<(), AdminError> {
        if let Some(registry) = self.registry.clone() {
            let store = self.store.clone();
            crate::store::off_thread(move || registry.reload(&store)).await?;
        }
        Ok(())
    }
}

/// When the bootstrap token was disabled, if a setting keyhost wrote says so.
fn bootstrap_disabled_at(
    tx: &store::Tx<'_>,
    auth: &RowAuth,
) -> Result<Option<crate::clock::UnixTime>, StoreError> {
    let name = store::settings::ADMIN_BOOTSTRAP_DISABLED_AT;
    Ok(store::settings::get_with_mac(tx, name)?
        .filter(|s| auth.setting_ok(name, &s.value, s.mac.as_deref()))
        .and_then(|s| s.value.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["alice", "ops.bob", "a", "x-1_2"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-a", "a b", "bootstrap", &"a".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn named_tokens_split_and_near_misses_do_not() {
        assert_eq!(
            split_admin_key("kha_0123456789abcdef_secret"),
            Some(("0123456789abcdef", "secret"))
        );
        assert_eq!(split_admin_key("kha_0123456789abcdef_"), None);
        assert_eq!(split_admin_key("kha_0123456789abcdeg_secret"), None);
        assert_eq!(split_admin_key("khc_0123456789abcdef_secret"), None);
        assert_eq!(split_admin_key("kha_"), None);
    }
}
