//! The key lifecycle as a pure function.
//!
//! [`plan`] looks at the time, the keys and the policy and says which transitions are due; it never
//! reads a clock or a database, so every rule is testable with made-up times. The service applies
//! a plan in one transaction and plans again until nothing is due.
//!
//! The rules, which together guarantee that a verifier holding any JWKS it fetched within
//! `max-age` can verify every unexpired token:
//! - a key is published before it signs: it becomes active only once `signable_at` (publication +
//!   `publish_lead`) has passed on the wall clock *and* a running server has served it for the
//!   whole lead (`lead_remaining` is zero: served time is counted on the server's monotonic clock,
//!   so neither downtime nor a wall clock that is wrong at a restart counts); a key added while no
//!   server ran is published (and its lead starts) when a server first plans with it;
//! - while no server has ever served the store's JWKS, a missing key is generated active at once
//!   (nobody can have cached a JWKS yet);
//! - a signable pending key replaces the active key of its algorithm, which retires;
//! - with automatic rotation, the successor is generated `publish_lead` before the active key's
//!   `rotation_period` ends; a late planner (server down, clock jump) never shortens the lead, it
//!   only keeps the old key signing longer;
//! - a retired key stays published for `retire_grace` after it last signed, on the wall clock and
//!   in served time (`grace_remaining`), and until the last token it signed has expired
//!   (`last_exp`, which a clock that was ahead can put far out), then expires;
//! - keys of algorithms no longer enabled retire;
//! - the wall-clock schedule follows the served time: when the wall clock has moved (a jump, a
//!   host that booted with a wrong clock) so that a pending key's `signable_at` is more than
//!   [`RESCHEDULE_TOLERANCE`] away from `now + lead_remaining`, it is rescheduled there, and an
//!   active key whose `signable_at` is that far in the future (the clock went back after it
//!   started signing) is rescheduled to `now`, so that it keeps signing and no token is ever
//!   signed before its key's `signable_at`. A retired key's `expires_at` is never moved earlier:
//!   tokens it signed carry expiry times of the clock that signed them;
//! - a clock that jumps backwards delays transitions and never undoes one.

use crate::clock::UnixTime;
use crate::keys::{Alg, KeyRecord, KeyState};

/// The lifecycle settings, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Algorithms that each keep an active key.
    pub algorithms: Vec<Alg>,
    /// Publication time before a key may sign.
    pub publish_lead: i64,
    /// Signing time of a key before its successor takes over.
    pub rotation_period: i64,
    /// Whether rotation happens on schedule.
    pub auto_rotate: bool,
    /// Publication time after a key stops signing.
    pub retire_grace: i64,
    /// Modulus size of generated RSA keys.
    pub rsa_bits: u32,
}

/// How far a key's wall-clock schedule may drift from its served time before it is rescheduled
/// (NTP slews and the rounding of served seconds stay well below it).
pub const RESCHEDULE_TOLERANCE: i64 = 30;

/// One change to the key set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The wall clock moved: a pending or active key's `signable_at` becomes `signable_at`.
    Reschedule {
        /// Row id.
        id: i64,
        /// The new earliest signing time.
        signable_at: UnixTime,
        /// Why, for the audit trail.
        reason: &'static str,
    },
    /// Publish a key that was added while no server ran; it may sign at `signable_at`, once it
    /// has been served for the publish lead.
    Publish {
        /// Row id.
        id: i64,
        /// Earliest signing time.
        signable_at: UnixTime,
    },
    /// Create a key for `alg`.
    Generate {
        /// Algorithm of the new key.
        alg: Alg,
        /// Active at once (only on an empty store) rather than pending.
        activate_now: bool,
        /// When it may sign: now for a key active at once, else after the publish lead.
        signable_at: UnixTime,
        /// Why, for the audit trail.
        reason: &'static str,
    },
    /// A signable pending key starts signing.
    Activate {
        /// Row id.
        id: i64,
    },
    /// A key stops signing and stays published until `expires_at`, and for `retire_grace` of
    /// served time.
    Retire {
        /// Row id.
        id: i64,
        /// When it leaves the JWKS (at the earliest).
        expires_at: UnixTime,
        /// Why, for the audit trail.
        reason: &'static str,
    },
    /// A retired key leaves the JWKS and its private key is destroyed.
    Expire {
        /// Row id.
        id: i64,
    },
}

/// What is due now, and when to look again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Transitions to apply now, in order.
    pub transitions: Vec<Transition>,
    /// The earliest future time at which something else falls due, if any.
    pub next_due: Option<UnixTime>,
    /// Signable pending keys whose activation waits for evidence (the current key keeps
    /// signing).
    pub blocked: Vec<Blocked>,
}

/// A signable pending key that may not activate yet, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Row id.
    pub id: i64,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    /// Why.
    pub reason: String,
}

/// Why a key waits whose evidence nobody has looked at yet (the round looks, then plans again).
pub const NOT_LOOKED: &str = "its evidence has not been looked at yet";

/// How often a blocked activation looks for its evidence again.
pub const EVIDENCE_RETRY: UnixTime = 15;

/// What verifiers are known to see, when activation waits for evidence
/// (`KEYHOST_PUBLIC_JWKS_URL`): a pending key activates once its lead has been served *and*
/// the public URL lists it. The lead stays a floor: evidence never activates a key early.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Evidence {
    /// Activation waits for the lead only.
    #[default]
    NotRequired,
    /// Activation needs evidence, and nobody has looked yet: the round looks before it
    /// activates anything.
    NotLooked,
    /// The kids the public JWKS URL listed, fetched just now.
    Listed {
        /// The URL.
        url: String,
        /// Its kids.
        kids: std::collections::BTreeSet<String>,
    },
    /// Looked at for the kids `checked`: why some may not activate yet (a kid not checked has
    /// not been looked at: it waits for a look).
    Refused {
        /// The kids looked at.
        checked: std::collections::BTreeSet<String>,
        /// Why some of them may not activate yet.
        reasons: std::collections::BTreeMap<String, String>,
    },
    /// The public JWKS URL could not be read.
    Unavailable {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
}

impl Evidence {
    /// Why `kid` may not activate yet, if it may not.
    pub fn refuses(&self, kid: &str) -> Option<String> {
        match self {
            Evidence::NotRequired => None,
            Evidence::NotLooked => Some(NOT_LOOKED.into()),
            Evidence::Listed { kids, .. } if kids.contains(kid) => None,
            Evidence::Listed { url, .. } => Some(format!(
                "{url} does not list it yet (a cache in front of the JWKS serving an old copy?)"
            )),
            Evidence::Unavailable { url, why } => Some(format!("{url} could not be read: {why}")),
            Evidence::Refused { checked, reasons } => match reasons.get(kid) {
                Some(why) => Some(why.clone()),
                None if !checked.contains(kid) => Some(NOT_LOOKED.into()),
                None => None,
            },
        }
    }
}

impl Plan {
    fn due(&mut self, at: UnixTime) {
        self.next_due = Some(self.next_due.map_or(at, |t| t.min(at)));
    }
}

/// When a key created at `now` may sign: at once if it is `active_now` (an empty store, an
/// emergency), else after the publish lead, so that every verifier has had time to fetch it.
pub fn new_key_signable_at(now: UnixTime, policy: &Policy, active_now: bool) -> UnixTime {
    if active_now {
        now
    } else {
        now + policy.publish_lead
    }
}

/// When the active key `active` is due to be replaced under automatic rotation: its
/// `rotation_period` after it started signing. Its successor is generated `publish_lead` before.
pub fn scheduled_rotation(active: &KeyRecord, policy: &Policy) -> UnixTime {
    let since = active
        .activated_at
        .or(active.signable_at)
        .unwrap_or(active.created_at);
    since + policy.rotation_period
}

/// Decides which transitions are due at `now`. `ever_served` tells whether a server has ever
/// served this store's JWKS (until then nobody can have cached it).
pub fn plan(now: UnixTime, keys: &[KeyRecord], policy: &Policy, ever_served: bool) -> Plan {
    plan_with(now, keys, policy, ever_served, &Evidence::NotRequired)
}

/// [`plan`], with a signable pending key activating only once `evidence` allows it.
pub fn plan_with(
    now: UnixTime,
    keys: &[KeyRecord],
    policy: &Policy,
    ever_served: bool,
    evidence: &Evidence,
) -> Plan {
    let mut plan = Plan::default();
    let lead = policy.publish_lead;

    for key in keys {
        let Some(signable_at) = key.signable_at else {
            continue;
        };
        match key.state {
            // A key whose lead is served and whose time has come is only waiting (for its
            // round, or for evidence): nothing to move.
            KeyState::Pending if key.lead_remaining <= 0 && signable_at <= now => {}
            KeyState::Pending if key.published_at.is_some() => {
                let served_at = now + key.lead_remaining;
                if (signable_at - served_at).abs() > RESCHEDULE_TOLERANCE {
                    plan.transitions.push(Transition::Reschedule {
                        id: key.id,
                        signable_at: served_at,
                        reason: if signable_at > served_at {
                            "the wall clock is behind the time this key was scheduled under"
                        } else {
                            "the wall clock moved ahead of the time actually served"
                        },
                    });
                }
            }
            KeyState::Active if signable_at > now + RESCHEDULE_TOLERANCE => {
                plan.transitions.push(Transition::Reschedule {
                    id: key.id,
                    signable_at: now,
                    reason: "the wall clock went back after this key started signing",
                });
            }
            _ => {}
        }
    }
    if !plan.transitions.is_empty() {
        // Plan the rest on the new schedule.
        return plan;
    }

    for key in keys {
        match key.state {
            KeyState::Pending if key.published_at.is_none() => {
                let signable_at = new_key_signable_at(now, policy, false);
                plan.transitions.push(Transition::Publish {
                    id: key.id,
                    signable_at,
                });
                plan.due(signable_at);
            }
            KeyState::Retired => {
                // Published until its grace has passed on the wall clock and been served, and
                // until the last token it signed has expired (by the clock that signed it).
                let expires_at = key
                    .expires_at
                    .unwrap_or(key.retired_at.unwrap_or(key.created_at) + policy.retire_grace)
                    .max(key.last_exp.unwrap_or(UnixTime::MIN));
                if expires_at <= now && key.grace_remaining <= 0 {
                    plan.transitions.push(Transition::Expire { id: key.id });
                } else {
                    plan.due(expires_at.max(now + key.grace_remaining));
                }
            }
            KeyState::Pending | KeyState::Active if !policy.algorithms.contains(&key.alg) => {
                plan.transitions.push(Transition::Retire {
                    id: key.id,
                    expires_at: now + policy.retire_grace,
                    reason: "algorithm no longer enabled",
                });
            }
            _ => {}
        }
    }

    for &alg in &policy.algorithms {
        let of_alg = || keys.iter().filter(move |k| k.alg == alg);
        let active = of_alg().find(|k| k.state == KeyState::Active);
        let pending: Vec<&KeyRecord> = of_alg().filter(|k| k.state == KeyState::Pending).collect();
        let ready = pending
            .iter()
            .filter(|k| k.signable_at.is_some_and(|t| t <= now) && k.lead_remaining <= 0)
            .max_by_key(|k| (k.signable_at, k.id));

        if let Some(successor) = ready {
            // Only while a current key can sign meanwhile: without one, waiting helps nobody.
            if let Some(reason) = evidence
                .refuses(&successor.kid)
                .filter(|_| active.is_some())
            {
                // The current key keeps signing; look again soon.
                plan.blocked.push(Blocked {
                    id: successor.id,
                    kid: successor.kid.clone(),
                    alg,
                    reason,
                });
                plan.due(now + EVIDENCE_RETRY);
                continue;
            }
            if let Some(active) = active {
                plan.transitions.push(Transition::Retire {
                    id: active.id,
                    expires_at: now + policy.retire_grace,
                    reason: "superseded by a signable successor",
                });
            }
            plan.transitions
                .push(Transition::Activate { id: successor.id });
            if policy.auto_rotate {
                plan.due(now + policy.rotation_period - lead);
            }
            continue;
        }

        for p in &pending {
            if let Some(t) = p.signable_at {
                plan.due(t.max(now + p.lead_remaining));
            }
        }
        match active {
            None if pending.is_empty() => plan.transitions.push(Transition::Generate {
                alg,
                activate_now: !ever_served,
                signable_at: new_key_signable_at(now, policy, !ever_served),
                reason: if ever_served {
                    "no active or pending key"
                } else {
                    "first key of a store never served"
                },
            }),
            Some(active) if pending.is_empty() && policy.auto_rotate => {
                let generate_at = scheduled_rotation(active, policy) - lead;
                if now >= generate_at {
                    plan.transitions.push(Transition::Generate {
                        alg,
                        activate_now: false,
                        signable_at: new_key_signable_at(now, policy, false),
                        reason: "scheduled rotation",
                    });
                } else {
                    plan.due(generate_at);
                }
            }
            _ => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests;
