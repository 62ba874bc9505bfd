//! What an operator does to keys: rotate (also in an emergency), retire, revoke, import.

use serde_json::json;

use super::{KeyError, KeyService, Rotated, envelope_context, ever_served, validate_kid};
use crate::clock::{UnixTime, rfc3339};
use crate::keys::material::{self, KeyMaterial};
use crate::keys::planner;
use crate::keys::{Alg, KeyRecord, KeyState, Origin};
use crate::store::{self, Tx};

impl KeyService {
    /// When a key added now by an admin action may sign: see [`planner::new_key_signable_at`];
    /// `None` (not yet published) when no server runs, since the publish lead counts from the
    /// moment a server serves the key (the planner then publishes it).
    pub(super) fn signable_at_of_new(&self, state: KeyState, now: UnixTime) -> Option<UnixTime> {
        let active = state == KeyState::Active;
        (active || self.serving).then(|| planner::new_key_signable_at(now, &self.policy, active))
    }

    /// Seals and inserts key material in `state`, published now if it has a `signable_at`.
    #[allow(clippy::too_many_arguments)] // one row's worth of facts, each from a different caller
    pub(super) fn insert(
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
                    "kid {kid:?} already names a published key; choose another kid or wait until \
                     that key has expired"
                ))
            } else {
                e.into()
            }
        })?;
        store::settings::set(tx, store::settings::MASTER_KEY_ID, self.master.id())?;
        self.seal_row(tx, id)
    }

    pub(super) fn require_enabled(&self, alg: Alg) -> Result<(), KeyError> {
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
        self.store
            .blocking_write(|tx| {
                let now = self.clock.now();
                let keys = self.trusted(store::keys::list(tx)?);
                let of_alg =
                    |s: KeyState| keys.iter().filter(move |k| k.alg == alg && k.state == s);
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
                    let retired: Vec<&str> =
                        of_alg(KeyState::Retired).map(|k| k.kid.as_str()).collect();
                    let mut w = format!(
                        "emergency rotation: the new {alg} key signs at once, so verifiers \
                         holding a cached JWKS (up to its max-age, or longer if they ignore it) \
                         reject its tokens until they refresh; revoked: {}",
                        if revoked.is_empty() {
                            "none".to_owned()
                        } else {
                            revoked.join(", ")
                        }
                    );
                    if !retired.is_empty() {
                        w.push_str(&format!(
                            "; retired keys still published: {} (revoke them too if they may be \
                             compromised)",
                            retired.join(", ")
                        ));
                    }
                    warning = Some(w);
                    KeyState::Active
                } else {
                    if let Some(p) = of_alg(KeyState::Pending).next() {
                        return Err(KeyError::Conflict(format!(
                            "a successor {alg} key is already pending (kid {}, {}); retire or \
                             revoke it first",
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
                    if emergency {
                        "key.rotate.emergency"
                    } else {
                        "key.rotate"
                    },
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
    pub(super) fn find(&self, tx: &Tx<'_>, kid: &str) -> Result<(KeyRecord, bool), KeyError> {
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
                        "{kid} is the active {} signing key; rotate instead (POST \
                         /admin/keys/rotate): its successor takes over after the publish lead and \
                         it then retires by itself",
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
        self.store
            .blocking_write(|tx| {
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
                        "{kid} was the active {alg} key: no {alg} token can be minted until a \
                         successor has been published for the publish lead; if the key is \
                         compromised and you need {alg} now, use an emergency rotation",
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
                        "this key was already used as {} and is now {}; a key never comes back (a \
                         revoked one may be compromised): generate a new key",
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
}
