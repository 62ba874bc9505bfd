//! Applies lifecycle transitions and admin actions to the store.
//!
//! Every change is one `BEGIN IMMEDIATE` transaction that re-reads the keys it depends on, writes
//! the new states and the audit rows together, and commits; a crash at any point leaves either the
//! old or the new key set, never a mix. Key generation (RSA takes tens of milliseconds) happens
//! outside the write lock.
//!
//! Every key row carries a MAC ([`crate::integrity`]): rows are checked whenever they are read,
//! only rows that pass are planned with, published, opened or changed, and each change re-MACs
//! the row it made inside the same transaction. A server also counts, at every round, the time
//! it has served each pending key's lead and each retired key's grace (on its monotonic clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::master::{MasterKey, MasterKeyError};
use super::material::{self, ImportError, KeyMaterial, KeyMaterialError, KeyPair};
use super::planner::{self, Policy, Transition};
use super::{Alg, KeyRecord, KeyState, Origin};
use crate::clock::{Clock, UnixTime, rfc3339};
use crate::integrity::RowAuth;
use crate::log_limit::LogLimiter;
use crate::store::keys::StoredKey;
use crate::store::{self, Rows, Store, StoreError, Tx};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key material could not be produced or parsed.
    #[error(transparent)]
    Material(#[from] KeyMaterialError),
    /// An imported PEM was refused.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A sealed key could not be opened.
    #[error(transparent)]
    Master(#[from] MasterKeyError),
    /// No key has this kid.
    #[error("no key with kid {0:?}")]
    NotFound(String),
    /// The action conflicts with the key's state or another key.
    #[error("{0}")]
    Conflict(String),
    /// A request value is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// What a planning round did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Transitions applied, with the kid each concerned.
    pub applied: Vec<(Transition, String)>,
    /// When to plan again.
    pub next_due: Option<UnixTime>,
}

/// The result of a rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The new key.
    pub key: KeyRecord,
    /// Kids revoked by an emergency rotation.
    pub revoked: Vec<String>,
    /// Something the operator must know.
    pub warning: Option<String>,
}

/// Applies the lifecycle to the store.
pub struct KeyService {
    store: Arc<Store>,
    master: Arc<MasterKey>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    serving: bool,
    served: std::sync::atomic::AtomicBool,
    /// Monotonic time up to which served time has been counted (a server only).
    counted_to: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("policy", &self.policy)
            .field("serving", &self.serving)
            .finish_non_exhaustive()
    }
}

fn envelope_context(alg: Alg, kid: &str, created_at: UnixTime) -> Vec<u8> {
    format!("keyhost/v1/{alg}/{kid}/{created_at}").into_bytes()
}

/// Whether a server has ever served this store's JWKS. Until then a missing key may be active at
/// once (nobody can have cached the JWKS); afterwards never. The setting records it; since a
/// database writer could delete the setting, the trusted key rows testify too: a key keyhost
/// generated and activated, or one that has already left signing, means a server ran.
fn ever_served(tx: &Tx<'_>, keys: &[KeyRecord]) -> Result<bool, KeyError> {
    Ok(
        store::settings::get(tx, store::settings::FIRST_SERVED_AT)?.is_some()
            || keys.iter().any(|k| {
                matches!(
                    k.state,
                    KeyState::Retired | KeyState::Expired | KeyState::Revoked
                ) || (k.origin == Origin::Generated && k.activated_at.is_some())
            }),
    )
}

/// Checks an operator-chosen kid: 1 to 128 visible ASCII characters, no quotes or backslashes.
pub fn validate_kid(kid: &str) -> Result<(), KeyError> {
    let ok = !kid.is_empty()
        && kid.len() <= 128
        && kid
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(
            "kid must be 1 to 128 visible ASCII characters without quotes or backslashes".into(),
        ))
    }
}

impl KeyService {
    /// A service over `store`. `serving` is true in the server, which publishes what it writes at
    /// once; the CLI passes false, and keys it adds are published when a server next plans.
    pub fn new(
        store: Arc<Store>,
        master: Arc<MasterKey>,
        clock: Arc<dyn Clock>,
        policy: Policy,
        serving: bool,
    ) -> Self {
        Self {
            store,
            master,
            clock,
            policy,
            serving,
            served: std::sync::atomic::AtomicBool::new(false),
            counted_to: Mutex::new(None),
        }
    }

    /// The row authenticator (keyed from the master key).
    pub fn row_auth(&self) -> &Arc<RowAuth> {
        self.master.row_auth()
    }

    /// The records among `rows` whose MAC verifies; the others, and rows that cannot be read,
    /// are counted in `keyhost_integrity_failures{table="keys"}` and logged (at most once a
    /// minute).
    fn trusted(&self, rows: Rows<StoredKey>) -> Vec<KeyRecord> {
        let auth = self.row_auth();
        let (mut trusted, mut failed) = (Vec::with_capacity(rows.rows.len()), Vec::new());
        for bad in rows.unreadable {
            failed.push(format!("row {} (unreadable: {})", bad.id, bad.why));
        }
        for row in rows.rows {
            if auth.stored_key_ok(&row) {
                trusted.push(row.record);
            } else {
                failed.push(format!("{} (row {})", row.record.kid, row.record.id));
            }
        }
        auth.failures.table("keys").set(failed.len() as i64);
        static REPORTS: LogLimiter = LogLimiter::new(Duration::from_secs(60));
        if !failed.is_empty()
            && let Some(suppressed) = REPORTS.allow()
        {
            tracing::error!(
                rows = %failed.join(", "),
                suppressed,
                "key rows fail their integrity check (written by something without the master \
                 key): they are not published, opened or changed; revoke them \
                 (keyhost keys revoke KID) once you have found how they got there"
            );
        }
        trusted
    }

    /// Recomputes the MAC of key row `id` after keyhost changed it (inside the transaction that
    /// first checked it).
    fn seal_row(&self, tx: &Tx<'_>, id: i64) -> Result<KeyRecord, KeyError> {
        let row = store::keys::get(tx, id)?;
        let mac = self
            .row_auth()
            .key_mac(&row.record, row.master_key_id.as_deref());
        store::keys::set_mac(tx, id, &mac)?;
        Ok(row.record)
    }

    /// Every key row with whether it passed its integrity check (for listings).
    pub fn inventory(&self) -> Result<Vec<(KeyRecord, bool)>, KeyError> {
        let rows = self.store.blocking_read(store::keys::list)?;
        let auth = self.row_auth();
        Ok(rows
            .rows
            .into_iter()
            .map(|r| {
                let ok = auth.stored_key_ok(&r);
                (r.record, ok)
            })
            .collect())
    }

    /// Counts the served time since the last count against the published pending keys' leads
    /// and the retired keys' graces (a server only; the first count of a process counts none,
    /// so downtime never counts). Runs inside the transaction of every round, and of every change
    /// that starts a lead or a grace, before the change (so a new key is never credited with time
    /// from before it existed), on verified rows.
    fn count_served(&self, tx: &Tx<'_>, keys: &[KeyRecord]) -> Result<(), KeyError> {
        self.count_served_then(tx, keys, false)
    }

    /// [`KeyService::count_served`] before a change that starts a lead or a grace: the fraction
    /// of a second not yet counted is dropped (the keys already counting lose it, which only
    /// delays them), so that the new lead or grace starts from now and is never credited with
    /// time from before it existed.
    fn count_served_before_a_start(&self, tx: &Tx<'_>, keys: &[KeyRecord]) -> Result<(), KeyError> {
        self.count_served_then(tx, keys, true)
    }

    fn count_served_then(
        &self,
        tx: &Tx<'_>,
        keys: &[KeyRecord],
        drop_fraction: bool,
    ) -> Result<(), KeyError> {
        if !self.serving {
            return Ok(());
        }
        let now = self.clock.monotonic();
        let mut counted_to = self.counted_to.lock().unwrap_or_else(|p| p.into_inner());
        let served = counted_to.map_or(0, |before| now.saturating_sub(before).as_secs() as i64);
        if served > 0 {
            for k in keys {
                let owed = match k.state {
                    KeyState::Pending if k.published_at.is_some() => k.lead_remaining,
                    KeyState::Retired => k.grace_remaining,
                    _ => 0,
                };
                if owed > 0 && store::keys::serve(tx, k.id, served)? {
                    self.seal_row(tx, k.id)?;
                }
            }
        }
        // Whole seconds only: the fraction stays for the next round, unless a lead or a grace
        // starts now.
        *counted_to = Some(match *counted_to {
            _ if drop_fraction => now,
            Some(before) if served > 0 => before + Duration::from_secs(served as u64),
            Some(before) => before,
            None => now,
        });
        Ok(())
    }

    /// The lifecycle policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The clock decisions are made with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Every key whose row passes its integrity check, oldest first.
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let rows = self.store.blocking_read(store::keys::list)?;
        Ok(self.trusted(rows))
    }

    /// Plans and applies until nothing is due now.
    pub fn tick(&self, actor: &str) -> Result<TickReport, KeyError> {
        let mut report = TickReport::default();
        let mut spare: HashMap<Alg, KeyMaterial> = HashMap::new();
        for _ in 0..16 {
            let now = self.clock.now();
            let missing: Vec<Alg> = self.store.blocking_read(|tx| {
                let keys = self.trusted(store::keys::list(tx)?);
                let served = ever_served(tx, &keys)?;
                let plan = planner::plan(now, &keys, &self.policy, served);
                Ok::<_, KeyError>(
                    plan.transitions
                        .iter()
                        .filter_map(|t| match t {
                            Transition::Generate { alg, .. } if !spare.contains_key(alg) => {
                                Some(*alg)
                            }
                            _ => None,
                        })
                        .collect(),
                )
            })?;
            for alg in missing {
                spare.insert(alg, material::generate(alg, self.policy.rsa_bits)?);
            }
            let done = self.store.blocking_write(|tx| {
                // Read the time again: key generation above may have taken a while.
                let now = self.clock.now();
                self.count_served(tx, &self.trusted(store::keys::list(tx)?))?;
                let keys = self.trusted(store::keys::list(tx)?);
                let served = ever_served(tx, &keys)?;
                let plan = planner::plan(now, &keys, &self.policy, served);
                if plan.transitions.is_empty() {
                    report.next_due = plan.next_due;
                    return Ok::<_, KeyError>(true);
                }
                for t in &plan.transitions {
                    if let Transition::Generate { alg, .. } = t
                        && !spare.contains_key(alg)
                    {
                        return Ok(false); // another writer changed the picture: plan again
                    }
                }
                // A lead or a grace starting now must not inherit the fraction of a second not
                // counted yet.
                let starts = plan.transitions.iter().any(|t| {
                    matches!(
                        t,
                        Transition::Generate {
                            activate_now: false,
                            ..
                        } | Transition::Publish { .. }
                            | Transition::Retire { .. }
                    )
                });
                if starts {
                    self.count_served_before_a_start(tx, &keys)?;
                }
                for t in plan.transitions {
                    let kid = self.apply(tx, now, &keys, &t, &mut spare, actor)?;
                    report.applied.push((t, kid));
                }
                Ok(false)
            })?;
            if done {
                if report
                    .applied
                    .iter()
                    .any(|(t, _)| matches!(t, Transition::Expire { .. }))
                {
                    self.scrub();
                }
                return Ok(report);
            }
        }
        Err(KeyError::Conflict(
            "the key lifecycle did not settle; another writer keeps changing the store".into(),
        ))
    }

    fn apply(
        &self,
        tx: &Tx<'_>,
        now: UnixTime,
        keys: &[KeyRecord],
        t: &Transition,
        spare: &mut HashMap<Alg, KeyMaterial>,
        actor: &str,
    ) -> Result<String, KeyError> {
        let kid_of = |id: i64| {
            keys.iter()
                .find(|k| k.id == id)
                .map(|k| k.kid.clone())
                .unwrap_or_default()
        };
        let (action, kid, detail) = match *t {
            Transition::Reschedule {
                id,
                signable_at,
                reason,
            } => {
                let before = keys.iter().find(|k| k.id == id).and_then(|k| k.signable_at);
                store::keys::reschedule(tx, id, signable_at)?;
                self.seal_row(tx, id)?;
                tracing::warn!(kid = %kid_of(id), reason, "key rescheduled: the wall clock moved");
                (
                    "key.reschedule",
                    kid_of(id),
                    json!({
                        "signableAt": rfc3339(signable_at),
                        "was": before.map(rfc3339),
                        "reason": reason,
                    }),
                )
            }
            Transition::Publish { id, signable_at } => {
                store::keys::publish(tx, id, now, signable_at)?;
                self.seal_row(tx, id)?;
                (
                    "key.publish",
                    kid_of(id),
                    json!({"signableAt": rfc3339(signable_at)}),
                )
            }
            Transition::Generate {
                alg,
                activate_now,
                signable_at,
                reason,
            } => {
                let m = spare
                    .remove(&alg)
                    .expect("material generated before the transaction");
                let state = if activate_now {
                    KeyState::Active
                } else {
                    KeyState::Pending
                };
                let rec = self.insert(
                    tx,
                    &m,
                    None,
                    Origin::Generated,
                    state,
                    Some(signable_at),
                    now,
                )?;
                (
                    "key.generate",
                    rec.kid,
                    json!({"alg": alg, "state": state, "reason": reason}),
                )
            }
            Transition::Activate { id } => {
                store::keys::activate(tx, id, now)?;
                self.seal_row(tx, id)?;
                ("key.activate", kid_of(id), json!({}))
            }
            Transition::Retire {
                id,
                expires_at,
                reason,
            } => {
                store::keys::retire(tx, id, now, expires_at)?;
                self.seal_row(tx, id)?;
                (
                    "key.retire",
                    kid_of(id),
                    json!({"reason": reason, "expiresAt": rfc3339(expires_at)}),
                )
            }
            Transition::Expire { id } => {
                store::keys::expire(tx, id, now)?;
                self.seal_row(tx, id)?;
                ("key.expire", kid_of(id), json!({"privateKey": "destroyed"}))
            }
        };
        store::audit::record(tx, now, actor, action, &kid, &detail)?;
        tracing::info!(action, kid = %kid, %detail, "key transition");
        Ok(kid)
    }

    /// Checkpoints the write-ahead log after private keys were destroyed, so their sealed bytes do
    /// not linger in old WAL frames (`secure_delete` already zeroes the freed pages). Best effort:
    /// readers can hold the checkpoint back, and a later one completes it.
    fn scrub(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint after key destruction failed");
        }
    }

    /// Records the latest `exp` each key signed (key row id, exp), where it is later than what is
    /// recorded: a retired key stays published until then.
    pub fn note_signed_until(&self, exps: &[(i64, UnixTime)]) -> Result<(), KeyError> {
        if exps.is_empty() {
            return Ok(());
        }
        self.store.blocking_write(|tx| {
            let trusted = self.trusted(store::keys::list(tx)?);
            for (id, exp) in exps {
                let later = trusted
                    .iter()
                    .any(|k| k.id == *id && k.last_exp.is_none_or(|known| known < *exp));
                if later && store::keys::note_exp(tx, *id, *exp)? {
                    self.seal_row(tx, *id)?;
                }
            }
            Ok(())
        })
    }

    /// Records that a server has served this store's JWKS (once; later calls are free).
    pub fn mark_served(&self) -> Result<(), KeyError> {
        if !self.serving || self.served.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let now = self.clock.now();
        self.store.blocking_write(|tx| {
            if store::settings::get(tx, store::settings::FIRST_SERVED_AT)?.is_none() {
                store::settings::set(tx, store::settings::FIRST_SERVED_AT, &now.to_string())?;
            }
            Ok::<_, StoreError>(())
        })?;
        self.served
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// When a key added now by an admin action may sign: see [`planner::new_key_signable_at`];
    /// `None` (not yet published) when no server runs, since the publish lead counts from the
    /// moment a server serves the key (the planner then publishes it).
    fn signable_at_of_new(&self, state: KeyState, now: UnixTime) -> Option<UnixTime> {
        let active = state == KeyState::Active;
        (active || self.serving).then(|| planner::new_key_signable_at(now, &self.policy, active))
    }

    /// Seals and inserts key material in `state`, published now if it has a `signable_at`.
    #[allow(clippy::too_many_arguments)] // one row's worth of facts, each from a different caller
    fn insert(
        &self,
        tx: &Tx<'_>,
        m: &KeyMaterial,
        kid: Option<&str>,
        origin: Origin,
        state: KeyState,
        signable_at: Option<UnixTime>,
        now: UnixTime,
    ) -> Result<KeyRecord, KeyError> {
        let public = m.pair.public_jwk();
        let kid = kid
            .map(str::to_owned)
            .unwrap_or_else(|| public.thumbprint());
        let alg = m.pair.alg();
        let published_at = signable_at.map(|_| now);
        let activated_at = (state == KeyState::Active).then_some(now);
        let sealed = self
            .master
            .seal(&envelope_context(alg, &kid, now), &m.pkcs8);
        let jwk = serde_json::to_string(&public).expect("a JWK serialises");
        let id = store::keys::insert(
            tx,
            &store::keys::NewKey {
                kid: &kid,
                alg,
                state,
                origin,
                bits: m.pair.bits(),
                public_jwk: &jwk,
                sealed: &sealed,
                master_key_id: self.master.id(),
                created_at: now,
                published_at,
                signable_at,
                activated_at,
                lead_remaining: match (state, signable_at) {
                    (KeyState::Pending, Some(t)) => (t - now).max(0),
                    _ => 0,
                },
            },
        )
        .map_err(|e| {
            if e.is_constraint() {
                KeyError::Conflict(format!(
                    "kid {kid:?} already names a published key; choose another kid or wait until that key has expired"
                ))
            } else {
                e.into()
            }
        })?;
        store::settings::set(tx, store::settings::MASTER_KEY_ID, self.master.id())?;
        self.seal_row(tx, id)
    }

    fn require_enabled(&self, alg: Alg) -> Result<(), KeyError> {
        if self.policy.algorithms.contains(&alg) {
            Ok(())
        } else {
            Err(KeyError::Invalid(format!(
                "{alg} is not in KEYHOST_ALGORITHMS; enable it first"
            )))
        }
    }

    /// Rotates `alg`: normally a new pending key that takes over after `publish_lead`; in an
    /// emergency a new key active at once, with the old active and pending keys revoked.
    pub fn rotate(&self, alg: Alg, emergency: bool, actor: &str) -> Result<Rotated, KeyError> {
        self.require_enabled(alg)?;
        let m = material::generate(alg, self.policy.rsa_bits)?;
        self.store.blocking_write(|tx| {
            let now = self.clock.now();
            let keys = self.trusted(store::keys::list(tx)?);
            let of_alg = |s: KeyState| keys.iter().filter(move |k| k.alg == alg && k.state == s);
            let mut revoked = Vec::new();
            let warning;
            let state = if emergency {
                for k in of_alg(KeyState::Active).chain(of_alg(KeyState::Pending)) {
                    store::keys::revoke(tx, k.id, now)?;
                    self.seal_row(tx, k.id)?;
                    store::audit::record(
                        tx,
                        now,
                        actor,
                        "key.revoke",
                        &k.kid,
                        &json!({"reason": "emergency rotation"}),
                    )?;
                    revoked.push(k.kid.clone());
                }
                let retired: Vec<&str> = of_alg(KeyState::Retired).map(|k| k.kid.as_str()).collect();
                let mut w = format!(
                    "emergency rotation: the new {alg} key signs at once, so verifiers holding a cached JWKS \
                     (up to its max-age, or longer if they ignore it) reject its tokens until they refresh; \
                     revoked: {}",
                    if revoked.is_empty() { "none".to_owned() } else { revoked.join(", ") }
                );
                if !retired.is_empty() {
                    w.push_str(&format!(
                        "; retired keys still published: {} (revoke them too if they may be compromised)",
                        retired.join(", ")
                    ));
                }
                warning = Some(w);
                KeyState::Active
            } else {
                if let Some(p) = of_alg(KeyState::Pending).next() {
                    return Err(KeyError::Conflict(format!(
                        "a successor {alg} key is already pending (kid {}, {}); retire or revoke it first",
                        p.kid,
                        p.signable_at
                            .map(|t| format!("signs from {}", rfc3339(t)))
                            .unwrap_or_else(|| "published when the server next runs".into())
                    )));
                }
                warning = None;
                KeyState::Pending
            };
            if state == KeyState::Pending {
                // What was served up to now is counted first: the new key's lead starts now.
                self.count_served_before_a_start(tx, &keys)?;
            }
            let signable_at = self.signable_at_of_new(state, now);
            let key = self.insert(tx, &m, None, Origin::Generated, state, signable_at, now)?;
            store::audit::record(
                tx,
                now,
                actor,
                if emergency { "key.rotate.emergency" } else { "key.rotate" },
                &key.kid,
                &json!({"alg": alg, "state": state}),
            )?;
            Ok(Rotated {
                key,
                revoked,
                warning,
            })
        })
        .inspect(|r| {
            if !r.revoked.is_empty() {
                self.scrub();
            }
        })
    }

    /// The key named `kid` (the live one if any), with whether its row passes its integrity
    /// check.
    fn find(&self, tx: &Tx<'_>, kid: &str) -> Result<(KeyRecord, bool), KeyError> {
        let rows = store::keys::find_by_kid(tx, kid)?;
        let auth = self.row_auth();
        let mut checked = rows.into_iter().map(|r| {
            let ok = auth.stored_key_ok(&r);
            (r.record, ok)
        });
        let first = checked
            .next()
            .ok_or_else(|| KeyError::NotFound(kid.to_owned()))?;
        // A live trusted row wins over a forged one of the same kid.
        Ok(match first {
            (_, false) => checked
                .find(|(k, ok)| *ok && k.state.is_live())
                .unwrap_or(first),
            trusted => trusted,
        })
    }

    /// Retires a pending key (it stays published for `retire_grace`). The active key is retired by
    /// rotation, never directly, so that an algorithm is never left without a signer by mistake.
    pub fn retire(&self, kid: &str, actor: &str) -> Result<KeyRecord, KeyError> {
        self.store.blocking_write(|tx| {
            let now = self.clock.now();
            let (key, trusted) = self.find(tx, kid)?;
            if !trusted {
                return Err(KeyError::Conflict(format!(
                    "the row of {kid} fails its integrity check (it was not written by keyhost); \
                     it is not published and cannot be retired: revoke it"
                )));
            }
            match key.state {
                KeyState::Pending => {}
                KeyState::Active => {
                    return Err(KeyError::Conflict(format!(
                        "{kid} is the active {} signing key; rotate instead (POST /admin/keys/rotate): its \
                         successor takes over after the publish lead and it then retires by itself",
                        key.alg
                    )));
                }
                s => {
                    return Err(KeyError::Conflict(format!(
                        "{kid} is already {}",
                        s.as_str()
                    )));
                }
            }
            let expires_at = now + self.policy.retire_grace;
            // What was served up to now is counted first: the key's grace starts now.
            self.count_served_before_a_start(tx, &self.trusted(store::keys::list(tx)?))?;
            store::keys::retire(tx, key.id, now, expires_at)?;
            let key = self.seal_row(tx, key.id)?;
            store::audit::record(
                tx,
                now,
                actor,
                "key.retire",
                kid,
                &json!({"expiresAt": rfc3339(expires_at)}),
            )?;
            Ok(key)
        })
    }

    /// Revokes a key in any live state: it leaves the JWKS now and its private key is destroyed.
    /// Returns a warning when that leaves its algorithm without a signing key.
    pub fn revoke(&self, kid: &str, actor: &str) -> Result<(KeyRecord, Option<String>), KeyError> {
        self.store.blocking_write(|tx| {
            let now = self.clock.now();
            // A row failing its integrity check may be revoked (that is the remedy): revoking
            // destroys what it holds and keeps it out of the JWKS for good.
            let (key, trusted) = self.find(tx, kid)?;
            if !key.state.is_live() {
                return Err(KeyError::Conflict(format!(
                    "{kid} is already {}",
                    key.state.as_str()
                )));
            }
            store::keys::revoke(tx, key.id, now)?;
            store::audit::record(
                tx,
                now,
                actor,
                "key.revoke",
                kid,
                &json!({"was": key.state, "integrity": if trusted { "ok" } else { "failed" }}),
            )?;
            let warning = (trusted && key.state == KeyState::Active).then(|| {
                format!(
                    "{kid} was the active {alg} key: no {alg} token can be minted until a successor has been \
                     published for the publish lead; if the key is compromised and you need {alg} now, use an \
                     emergency rotation",
                    alg = key.alg
                )
            });
            let key = self.seal_row(tx, key.id)?;
            Ok((key, warning))
        })
        .inspect(|_| self.scrub())
    }

    /// Imports a private key from PEM. In a store no server has served yet it is active at once
    /// (if its algorithm has no active key); otherwise it is pending like any successor and signs
    /// after the publish lead. A key the store has held before is refused, whatever its state.
    pub fn import(&self, pem: &str, kid: Option<&str>, actor: &str) -> Result<KeyRecord, KeyError> {
        if let Some(kid) = kid {
            validate_kid(kid)?;
        }
        let m = material::import_pem(pem)?;
        let alg = m.pair.alg();
        self.require_enabled(alg)?;
        self.store.blocking_write(|tx| {
            let now = self.clock.now();
            let keys = self.trusted(store::keys::list(tx)?);
            let thumbprint = m.pair.public_jwk().thumbprint();
            if let Some(same) = keys
                .iter()
                .find(|k| k.public_jwk.thumbprint() == thumbprint)
            {
                return Err(KeyError::Conflict(if same.state.is_live() {
                    format!(
                        "this key is already held as {} ({})",
                        same.kid,
                        same.state.as_str()
                    )
                } else {
                    format!(
                        "this key was already used as {} and is now {}; a key never comes back \
                         (a revoked one may be compromised): generate a new key",
                        same.kid,
                        same.state.as_str()
                    )
                }));
            }
            if let Some(p) = keys
                .iter()
                .find(|k| k.alg == alg && k.state == KeyState::Pending)
            {
                return Err(KeyError::Conflict(format!(
                    "a successor {alg} key is already pending (kid {}); retire or revoke it first",
                    p.kid
                )));
            }
            let served = ever_served(tx, &keys)?;
            let has_active = keys
                .iter()
                .any(|k| k.alg == alg && k.state == KeyState::Active);
            let state = if !served && !has_active {
                KeyState::Active
            } else {
                KeyState::Pending
            };
            if state == KeyState::Pending {
                // What was served up to now is counted first: the new key's lead starts now.
                self.count_served_before_a_start(tx, &keys)?;
            }
            let signable_at = self.signable_at_of_new(state, now);
            let key = self.insert(tx, &m, kid, Origin::Imported, state, signable_at, now)?;
            store::audit::record(
                tx,
                now,
                actor,
                "key.import",
                &key.kid,
                &json!({"alg": alg, "bits": key.bits, "state": state}),
            )?;
            Ok(key)
        })
    }

    /// Opens the sealed private keys of `ids`, checking each against its published public key.
    pub fn open(&self, records: &[&KeyRecord]) -> Result<Vec<KeyPair>, KeyError> {
        let sealed = self.store.blocking_read(|tx| {
            store::keys::sealed(
                tx,
                &[KeyState::Pending, KeyState::Active, KeyState::Retired],
            )
        })?;
        records
            .iter()
            .map(|rec| {
                let s = sealed
                    .iter()
                    .find(|s| s.id == rec.id)
                    .ok_or_else(|| KeyError::NotFound(rec.kid.clone()))?;
                self.open_sealed(s, Some(rec))
            })
            .collect()
    }

    fn open_sealed(
        &self,
        s: &store::keys::SealedKey,
        rec: Option<&KeyRecord>,
    ) -> Result<KeyPair, KeyError> {
        if s.master_key_id != self.master.id() {
            return Err(MasterKeyError::Mismatch {
                expected: s.master_key_id.clone(),
                found: format!("the configured master key is {}", self.master.id()),
                file: "keys/master.key".into(),
            }
            .into());
        }
        let der = self
            .master
            .open(&envelope_context(s.alg, &s.kid, s.created_at), &s.sealed)?;
        let pair = material::from_pkcs8(s.alg, &der)?;
        if let Some(rec) = rec
            && pair.public_jwk() != rec.public_jwk
        {
            return Err(KeyError::Store(StoreError::Corrupt(format!(
                "the private key of {} does not match its published public key",
                rec.kid
            ))));
        }
        Ok(pair)
    }

    /// Opens every stored private key of a trusted row; a start-up check that the master key is
    /// the right one. Rows failing their integrity check are reported, not opened.
    pub fn verify_all(&self) -> Result<usize, KeyError> {
        let records = self.list()?;
        let sealed = self.store.blocking_read(|tx| {
            store::keys::sealed(
                tx,
                &[KeyState::Pending, KeyState::Active, KeyState::Retired],
            )
        })?;
        let mut opened = 0;
        for s in &sealed {
            if let Some(rec) = records.iter().find(|r| r.id == s.id) {
                self.open_sealed(s, Some(rec))?;
                opened += 1;
            }
        }
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;

    /// A clock whose monotonic face moves in milliseconds.
    struct MsClock {
        wall: std::sync::atomic::AtomicI64,
        mono_ms: std::sync::atomic::AtomicU64,
    }

    impl Clock for MsClock {
        fn now(&self) -> UnixTime {
            self.wall.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn monotonic(&self) -> Duration {
            Duration::from_millis(self.mono_ms.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    #[test]
    fn not_even_the_fraction_of_a_second_before_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(MsClock {
            wall: std::sync::atomic::AtomicI64::new(crate::clock::SystemClock.now()),
            mono_ms: std::sync::atomic::AtomicU64::new(10_000),
        });
        let at = |ms: u64| clock.mono_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
        let config = Config::rooted_at(dir.path());
        let keys = crate::startup::open(&config, clock.clone(), true)
            .unwrap()
            .keys;
        keys.tick("test").unwrap(); // counting starts at 10.0 s
        keys.mark_served().unwrap();
        at(10_900); // 0.9 s not counted yet when the rotation comes
        let rotated = keys.rotate(Alg::ES256, false, "test").unwrap().key;
        at(13_000); // the new key has existed 2.1 s
        keys.tick("test").unwrap();
        let pending = keys
            .list()
            .unwrap()
            .into_iter()
            .find(|k| k.id == rotated.id)
            .unwrap();
        assert_eq!(
            pending.lead_remaining,
            keys.policy().publish_lead - 2,
            "2 whole seconds served, not 3"
        );
    }

    #[test]
    fn a_new_key_is_never_credited_with_time_served_before_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let config = Config::rooted_at(dir.path());
        let keys = crate::startup::open(&config, clock.clone(), true)
            .unwrap()
            .keys;
        keys.tick("test").unwrap();
        keys.mark_served().unwrap();
        // Fifty seconds pass with no round; then a rotation and a round.
        clock.advance(50);
        let rotated = keys.rotate(Alg::ES256, false, "test").unwrap().key;
        assert_eq!(rotated.lead_remaining, keys.policy().publish_lead);
        clock.advance(10);
        keys.tick("test").unwrap();
        let now = keys.list().unwrap();
        let pending = now.iter().find(|k| k.id == rotated.id).unwrap();
        assert_eq!(pending.lead_remaining, keys.policy().publish_lead - 10);
    }
}
