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
    pub(super) fn evidence(&self, now: UnixTime, keys: &[KeyRecord]) -> Evidence {
        self.evidence_at(
            now,
            keys.iter()
                .any(|k| k.state == KeyState::Pending && k.signable_at.is_some_and(|t| t <= now)),
        )
    }

    /// What the public URL shows now, if `due`.
    pub(super) fn evidence_at(&self, now: UnixTime, due: bool) -> Evidence {
        let Some(source) = &self.evidence else {
            return Evidence::NotRequired;
        };
        if due {
            source.look(now)
        } else {
            Evidence::NotLooked
        }
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
                    "activation postponed: the current key keeps signing until the public JWKS \
                     URL lists the new one"
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
