//! Planning rounds: plan, apply every due transition with its audit row in one transaction,
//! and plan again until nothing is due.

use std::collections::HashMap;

use serde_json::json;

use super::{KeyError, KeyService, TickReport, ever_served};
use crate::clock::{UnixTime, rfc3339};
use crate::keys::material::{self, KeyMaterial};
use crate::keys::planner::{self, Transition};
use crate::keys::{Alg, KeyRecord, KeyState, Origin};
use crate::store::{self, Tx};

impl KeyService {
    /// Plans and applies until nothing is due now.
    pub fn tick(&self, actor: &str) -> Result<TickReport, KeyError> {
        let mut report = TickReport::default();
        let mut spare: HashMap<Alg, KeyMaterial> = HashMap::new();
        // What the public JWKS URL shows, read outside any transaction: before the round if a
        // key may be due, else when the round finds one to activate.
        let mut evidence = {
            let now = self.clock.now();
            let keys = self
                .store
                .blocking_read(|tx| Ok::<_, KeyError>(self.trusted(store::keys::list(tx)?)))?;
            self.evidence(now, &keys, false)
        };
        for _ in 0..16 {
            let now = self.clock.now();
            let missing: Vec<Alg> = self.store.blocking_read(|tx| {
                let keys = self.trusted(store::keys::list(tx)?);
                let served = ever_served(tx, &keys)?;
                let plan = planner::plan_with(now, &keys, &self.policy, served, &evidence);
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
            let mut look = false;
            let done = self.store.blocking_write(|tx| {
                // Read the time again: key generation above may have taken a while.
                let now = self.clock.now();
                self.count_served(tx, &self.trusted(store::keys::list(tx)?))?;
                let keys = self.trusted(store::keys::list(tx)?);
                let served = ever_served(tx, &keys)?;
                let plan = planner::plan_with(now, &keys, &self.policy, served, &evidence);
                if plan.blocked.iter().any(|b| b.reason == planner::NOT_LOOKED) {
                    look = true;
                    return Ok(false);
                }
                if plan.transitions.is_empty() {
                    report.next_due = plan.next_due;
                    if self.evidence.is_some() || self.sighting.is_some() {
                        self.record_blocked(tx, now, &plan.blocked, actor)?;
                    }
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
            if look {
                let now = self.clock.now();
                let keys = self
                    .store
                    .blocking_read(|tx| Ok::<_, KeyError>(self.trusted(store::keys::list(tx)?)))?;
                evidence = self.evidence(now, &keys, true);
                continue;
            }
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

    pub(super) fn apply(
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
    pub(super) fn scrub(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint after key destruction failed");
        }
    }
}
