//! The in-memory view of the key set that the hot paths read: the serialised JWKS and the parsed
//! signing keys, each swapped atomically when the store changes.
//!
//! Refreshing reads the store and opens only keys it has not opened before; requests only load an
//! `Arc`. Pending keys are opened ahead of time so that activation costs nothing at the switch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::clock::UnixTime;
use crate::jwks::JwksDocument;
use crate::keys::planner::{Policy, scheduled_rotation};
use crate::keys::{Alg, KeyError, KeyRecord, KeyService, KeyState};
use crate::signer::SigningKey;

/// Signing keys by algorithm.
#[derive(Debug, Default)]
pub struct SignerSet {
    /// The active key of each algorithm.
    pub active: HashMap<Alg, Arc<SigningKey>>,
    /// When each algorithm's pending key may sign, for error messages.
    pub next_signable: HashMap<Alg, UnixTime>,
}

/// The key set at the last refresh, as the metrics show it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// Keys the JWKS publishes, by algorithm and state (pending, active or retired).
    pub published: HashMap<(Alg, KeyState), i64>,
    /// When the active key of each algorithm is due to be replaced, under automatic rotation.
    pub rotation_due: BTreeMap<Alg, UnixTime>,
    /// When the next key will be published, as far as the schedule says: the earliest
    /// successor generation (its algorithm's rotation less the publish lead) of an algorithm
    /// that has no pending key yet.
    pub next_publication: Option<UnixTime>,
}

impl KeySummary {
    /// The summary of `records` under `policy`.
    pub fn of(records: &[KeyRecord], policy: &Policy) -> Self {
        let mut summary = Self::default();
        for rec in records.iter().filter(|k| k.is_published()) {
            *summary.published.entry((rec.alg, rec.state)).or_default() += 1;
            if rec.state == KeyState::Active && policy.auto_rotate {
                summary
                    .rotation_due
                    .insert(rec.alg, scheduled_rotation(rec, policy));
            }
        }
        summary.next_publication = summary
            .rotation_due
            .iter()
            .filter(|(alg, _)| !summary.published.contains_key(&(**alg, KeyState::Pending)))
            .map(|(_, due)| due - policy.publish_lead)
            .min();
        summary
    }
}

/// The published key set.
pub struct LiveKeys {
    jwks: ArcSwap<JwksDocument>,
    signers: ArcSwap<SignerSet>,
    summary: ArcSwap<KeySummary>,
    /// [`KeySummary::next_publication`], for the JWKS's `Cache-Control` (`i64::MAX`: none).
    next_publication: std::sync::atomic::AtomicI64,
    opened: Mutex<HashMap<i64, Arc<SigningKey>>>,
    /// The latest `exp` of keys dropped from `opened` before it was recorded in the store.
    dropped: Mutex<Vec<(i64, UnixTime)>>,
    freshness: Freshness,
}

/// How current the view is, for a server that shares its store with others: the view is as old
/// as the last successful read of the key set started, and past its bounds it may neither sign
/// (a key revoked through another server would still sign here) nor, later, publish.
struct Freshness {
    /// The process's reference instant.
    base: Instant,
    /// Milliseconds after `base` at which the last successful read of the store started.
    read_at: AtomicU64,
    /// Signing lease in milliseconds; 0: unbounded (the store is this server's alone).
    signing_lease: AtomicU64,
    /// How long the JWKS may be served from an old view, in milliseconds; 0: unbounded.
    jwks_limit: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            read_at: AtomicU64::new(0),
            signing_lease: AtomicU64::new(0),
            jwks_limit: AtomicU64::new(0),
        }
    }
}

/// Why the view may not be used: it is older than a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// Age of the view.
    pub age: Duration,
    /// The bound it passed.
    pub bound: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for LiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKeys")
            .field("kids", &self.jwks.load().kids)
            .finish_non_exhaustive()
    }
}

impl Default for LiveKeys {
    fn default() -> Self {
        Self {
            jwks: ArcSwap::from_pointee(JwksDocument::build(&[])),
            signers: ArcSwap::from_pointee(SignerSet::default()),
            summary: ArcSwap::from_pointee(KeySummary::default()),
            next_publication: std::sync::atomic::AtomicI64::new(i64::MAX),
            opened: Mutex::default(),
            dropped: Mutex::default(),
            freshness: Freshness::default(),
        }
    }
}

impl LiveKeys {
    /// Bounds the view's age (a server sharing its store with other replicas): past
    /// `signing_lease` it signs nothing, past `jwks_limit` it publishes nothing.
    pub fn bound_age(&self, signing_lease: Duration, jwks_limit: Duration) {
        let f = &self.freshness;
        f.signing_lease
            .store(millis(signing_lease).max(1), Ordering::SeqCst);
        f.jwks_limit
            .store(millis(jwks_limit).max(1), Ordering::SeqCst);
    }

    /// Records a successful read of the store that started at `started`.
    pub fn mark_read(&self, started: Instant) {
        let f = &self.freshness;
        let at = millis(started.saturating_duration_since(f.base));
        f.read_at.fetch_max(at, Ordering::SeqCst);
    }

    /// How old the view is (since the start of its last successful read).
    pub fn age(&self) -> Duration {
        let f = &self.freshness;
        let now = millis(f.base.elapsed());
        Duration::from_millis(now.saturating_sub(f.read_at.load(Ordering::SeqCst)))
    }

    fn past(&self, bound: &AtomicU64) -> Result<(), Stale> {
        let bound = bound.load(Ordering::Relaxed);
        if bound == 0 {
            return Ok(());
        }
        let age = self.age();
        if millis(age) > bound {
            Err(Stale {
                age,
                bound: Duration::from_millis(bound),
            })
        } else {
            Ok(())
        }
    }

    /// The signing lease, if the view's age is bounded (a store shared with other servers).
    pub fn signing_lease(&self) -> Option<Duration> {
        match self.freshness.signing_lease.load(Ordering::Relaxed) {
            0 => None,
            bound => Some(Duration::from_millis(bound)),
        }
    }

    /// When the next key will be published by the schedule, if it says (one atomic load: the
    /// JWKS path reads it).
    pub fn next_publication(&self) -> Option<UnixTime> {
        match self.next_publication.load(Ordering::Relaxed) {
            i64::MAX => None,
            at => Some(at),
        }
    }

    /// The key set at the last refresh, for the metrics.
    pub fn summary(&self) -> Arc<KeySummary> {
        self.summary.load_full()
    }

    /// Whether the view is recent enough to sign with.
    pub fn may_sign(&self) -> Result<(), Stale> {
        self.past(&self.freshness.signing_lease)
    }

    /// Whether the view is recent enough to publish.
    pub fn may_publish(&self) -> Result<(), Stale> {
        self.past(&self.freshness.jwks_limit)
    }

    /// The current JWKS.
    pub fn jwks(&self) -> Arc<JwksDocument> {
        self.jwks.load_full()
    }

    /// The current signing keys.
    pub fn signers(&self) -> Arc<SignerSet> {
        self.signers.load_full()
    }

    /// The current JWKS without taking a reference count (hot path; do not hold across awaits).
    pub fn jwks_now(&self) -> arc_swap::Guard<Arc<JwksDocument>> {
        self.jwks.load()
    }

    /// Stops the key `kid` from signing at once, without reading the store: a revocation takes
    /// effect even if the refresh that follows it fails. The JWKS follows at that refresh.
    pub fn withdraw(&self, kid: &str) {
        // After any refresh in progress (see `refresh`): blocking, so call it off the async
        // threads.
        let _ordered = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        self.signers.rcu(|set| SignerSet {
            active: set
                .active
                .iter()
                .filter(|(_, key)| key.kid != kid)
                .map(|(alg, key)| (*alg, key.clone()))
                .collect(),
            next_signable: set.next_signable.clone(),
        });
    }

    /// The current signing keys without taking a reference count (hot path; do not hold across
    /// awaits).
    pub fn signers_now(&self) -> arc_swap::Guard<Arc<SignerSet>> {
        self.signers.load()
    }

    /// The latest `exp` each opened key has signed in this process (key row id, exp).
    pub fn signed_until(&self) -> Vec<(i64, UnixTime)> {
        let mut exps: Vec<(i64, UnixTime)> = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(id, key)| key.last_exp().map(|exp| (*id, exp)))
            .collect();
        exps.extend(
            self.dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter(),
        );
        exps
    }

    /// Forgets the dropped keys' `exp`s among `exps`, now recorded in the store.
    pub fn noted(&self, exps: &[(i64, UnixTime)]) {
        self.dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| !exps.contains(e));
    }

    /// Rebuilds both views from the store.
    pub fn refresh(&self, service: &KeyService) -> Result<(), KeyError> {
        // Held from the read to the swap, and taken by `withdraw`: a refresh that read the keys
        // before a revocation can never install its signers after the revoked key was withdrawn.
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let records = service.list()?;
        let wanted: Vec<&KeyRecord> = records
            .iter()
            .filter(|k| matches!(k.state, KeyState::Pending | KeyState::Active))
            .collect();
        // A key that leaves (retired or revoked, here or by another server) may have signed
        // since its `exp` was last recorded: keep that until it is.
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        opened.retain(|id, key| {
            let keep = wanted.iter().any(|k| k.id == *id);
            if !keep && let Some(exp) = key.last_exp() {
                dropped.push((*id, exp));
            }
            keep
        });
        drop(dropped);
        let missing: Vec<&KeyRecord> = wanted
            .iter()
            .copied()
            .filter(|k| !opened.contains_key(&k.id))
            .collect();
        for (rec, pair) in missing.iter().zip(service.open(&missing)?) {
            opened.insert(rec.id, Arc::new(SigningKey::new(rec, pair)));
        }
        let mut set = SignerSet::default();
        for rec in &wanted {
            // Re-wrap when a pending key gained its signing time since it was opened.
            let key = opened.get(&rec.id).cloned().expect("opened above");
            let key = if Some(key.signable_at) != rec.signable_at {
                let pair = service.open(&[rec])?.pop().expect("one key");
                let fresh = Arc::new(SigningKey::new(rec, pair));
                opened.insert(rec.id, fresh.clone());
                fresh
            } else {
                key
            };
            match rec.state {
                KeyState::Active => {
                    set.active.insert(rec.alg, key);
                }
                _ => {
                    if let Some(t) = rec.signable_at {
                        set.next_signable.insert(rec.alg, t);
                    }
                }
            }
        }
        drop(opened);
        let doc = JwksDocument::build(&records);
        if doc.body != self.jwks.load().body {
            tracing::info!(kids = ?doc.kids, etag = %doc.etag, "JWKS updated");
            self.jwks.store(Arc::new(doc));
        }
        self.signers.store(Arc::new(set));
        let summary = KeySummary::of(&records, service.policy());
        self.next_publication.store(
            summary.next_publication.unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.summary.store(Arc::new(summary));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;

    #[test]
    fn a_withdrawn_key_stops_signing_at_once_and_the_others_keep_signing() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::rooted_at(dir.path());
        let opened = crate::startup::open(&config, ManualClock::starting_now(), true).unwrap();
        opened.keys.tick("test").unwrap();
        let live = LiveKeys::default();
        live.refresh(&opened.keys).unwrap();
        let es256 = live.signers().active[&Alg::ES256].kid.clone();
        let rs256 = live.signers().active[&Alg::RS256].kid.clone();

        live.withdraw(&es256);
        let set = live.signers();
        assert!(!set.active.contains_key(&Alg::ES256));
        assert_eq!(set.active[&Alg::RS256].kid, rs256);
        // The store still says active (nothing was revoked there), so a refresh brings it back.
        live.refresh(&opened.keys).unwrap();
        assert_eq!(live.signers().active[&Alg::ES256].kid, es256);
    }
}
