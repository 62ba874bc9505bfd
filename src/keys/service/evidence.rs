//! Activation on evidence: before a signable pending key starts signing, the planning server
//! reads the public JWKS URL (through whatever CDN or proxy verifiers go through) and activates
//! the key only once it is listed there. A blocked activation is recorded (shown by `GET
//! /admin/keys`, counted in `keyhost_activation_blocked`, logged) and looked at again every
//! [`EVIDENCE_RETRY`] seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{KeyError, KeyService};
use crate::clock::{UnixTime, rfc3339};
use crate::keys::planner::{Blocked, EVIDENCE_RETRY, Evidence};
use crate::keys::{KeyRecord, KeyState};
use crate::store::{self, Tx};

/// Reads the kids a JWKS URL lists, as a verifier would (implemented over HTTPS by
/// [`crate::public_jwks::PublicJwks`]).
pub trait EvidenceSource: Send + Sync {
    /// What the URL shows at `now` (a look may be reused for a few seconds).
    fn look(&self, now: UnixTime) -> Evidence;
}

/// `KEYHOST_ACTIVATION_REQUIRES_SIGHTING`: an activation also waits until a verifier whose user
/// agent contains `agent` has been served a key set listing the key, for at most `cap` seconds
/// after the key could have signed.
#[derive(Debug, Clone)]
pub struct SightingPolicy {
    /// User-agent substring.
    pub agent: String,
    /// Longest wait, in seconds.
    pub cap: UnixTime,
}

/// Setting: the activations waiting for evidence (JSON: kid → [`BlockedSince`]).
pub const BLOCKED_SETTING: &str = "activation_blocked";

/// A blocked activation as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedSince {
    /// Why.
    pub reason: String,
    /// Since when (Unix seconds).
    pub since: UnixTime,
}

/// The blocked activations as the admin API shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedView {
    /// Why the key does not sign yet.
    pub reason: String,
    /// Since when, RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
    /// When keyhost looks again, RFC 3339.
    #[schema(format = DateTime)]
    pub retry_at: String,
}

impl BlockedSince {
    /// As the admin API shows it, looked at again `EVIDENCE_RETRY` after `now`.
    pub fn view(&self, now: UnixTime) -> BlockedView {
        BlockedView {
            reason: self.reason.clone(),
            since: rfc3339(self.since),
            retry_at: rfc3339(now + EVIDENCE_RETRY),
        }
    }
}

/// The recorded blocked activations.
pub fn recorded(tx: &Tx<'_>) -> Result<BTreeMap<String, BlockedSince>, KeyError> {
    Ok(store::settings::get(tx, BLOCKED_SETTING)?
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default())
}

impl KeyService {
    /// What activation needs to know now: nothing unless a public URL is configured; the URL is
    /// read only when some pending key may sign by the wall clock (else the round reads it if
    /// it finds a key to activate after all: the clock may have moved meanwhile).
    pub(super) fn evidence(&self, now: UnixTime, keys: &[KeyRecord], look: bool) -> Evidence {
        if self.evidence.is_none() && self.sighting.is_none() {
            return Evidence::NotRequired;
        }
        let due: Vec<&KeyRecord> = keys
            .iter()
            .filter(|k| k.state == KeyState::Pending && k.signable_at.is_some_and(|t| t <= now))
            .collect();
        if due.is_empty() && !look {
            // The round looks if it finds a key to activate after all.
            return Evidence::NotLooked;
        }
        let url = match &self.evidence {
            Some(source) => source.look(now),
            None => Evidence::NotRequired,
        };
        let Some(policy) = &self.sighting else {
            return url;
        };
        let mut reasons = BTreeMap::new();
        let checked = due.iter().map(|k| k.kid.clone()).collect();
        for key in due {
            if let Some(why) = url.refuses(&key.kid) {
                reasons.insert(key.kid.clone(), why);
            } else if let Some(why) = self.unsighted(key, policy, now) {
                reasons.insert(key.kid.clone(), why);
            }
        }
        Evidence::Refused { checked, reasons }
    }

    /// Why `key` still waits for the sighting `policy` asks for, if it does. Past the cap it
    /// goes ahead, with a warning.
    fn unsighted(&self, key: &KeyRecord, policy: &SightingPolicy, now: UnixTime) -> Option<String> {
        let seen = self
            .store
            .blocking_read(|tx| store::verifiers::seen_kid(tx, &key.kid))
            .map(|v| v.iter().any(|(ua, _)| ua.contains(&policy.agent)))
            .unwrap_or(false);
        if seen {
            return None;
        }
        let deadline = key.signable_at.unwrap_or(now) + policy.cap;
        if now < deadline {
            return Some(format!(
                "no verifier whose user agent contains {:?} has been served a key set listing it \
                 yet (KEYHOST_ACTIVATION_REQUIRES_SIGHTING); it activates anyway at {}",
                policy.agent,
                rfc3339(deadline)
            ));
        }
        static LATE: crate::log_limit::LogLimiter =
            crate::log_limit::LogLimiter::new(std::time::Duration::from_secs(60));
        if let Some(suppressed) = LATE.allow() {
            tracing::warn!(
                kid = %key.kid,
                agent = %policy.agent,
                suppressed,
                "activating without a sighting: that verifier has not been served this key, and \
                 KEYHOST_ACTIVATION_SIGHTING_CAP has passed"
            );
        }
        None
    }

    /// Records the activations `blocked` now (inside the round's transaction), audits and logs
    /// each change, and sets `keyhost_activation_blocked`.
    pub(super) fn record_blocked(
        &self,
        tx: &Tx<'_>,
        now: UnixTime,
        blocked: &[Blocked],
        actor: &str,
    ) -> Result<(), KeyError> {
        let before = recorded(tx)?;
        let mut after = BTreeMap::new();
        for b in blocked {
            let since = before.get(&b.kid).map_or(now, |s| s.since);
            after.insert(
                b.kid.clone(),
                BlockedSince {
                    reason: b.reason.clone(),
                    since,
                },
            );
            if !before.contains_key(&b.kid) {
                tracing::warn!(
                    kid = %b.kid,
                    alg = %b.alg,
                    reason = %b.reason,
                    "activation postponed: the current key keeps signing until the evidence is in \
                     (see the reason)"
                );
                store::audit::record(
                    tx,
                    now,
                    actor,
                    "key.activation_blocked",
                    &b.kid,
                    &json!({"reason": b.reason}),
                )?;
            }
        }
        if let Some(gauge) = self.blocked_gauge.get() {
            for alg in &self.policy.algorithms {
                let n = blocked.iter().filter(|b| b.alg == *alg).count();
                gauge(*alg, n as i64);
            }
        }
        if after != before {
            store::settings::set(
                tx,
                BLOCKED_SETTING,
                &serde_json::to_string(&after).expect("a map serialises"),
            )?;
        }
        Ok(())
    }
}
