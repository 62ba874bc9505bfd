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

mod admin;
pub mod evidence;
mod rounds;
mod served;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::master::{MasterKey, MasterKeyError};
use super::material::{self, ImportError, KeyMaterialError, KeyPair};
use super::planner::{Policy, Transition};
use super::{Alg, KeyRecord, KeyState, Origin};
use crate::clock::{Clock, UnixTime};
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
    /// Whether this server counts served time: the one server of an SQLite store, the planner
    /// of a shared one (two counting at once would credit the same seconds twice).
    counting: std::sync::atomic::AtomicBool,
    /// Where activation looks for evidence (`KEYHOST_PUBLIC_JWKS_URL`), if anywhere.
    evidence: Option<Arc<dyn evidence::EvidenceSource>>,
    /// The verifier an activation waits to have been served the key, and for how long at most.
    sighting: Option<evidence::SightingPolicy>,
    /// Sets `keyhost_activation_blocked{alg}`.
    blocked_gauge: std::sync::OnceLock<BlockedGauge>,
}

/// Sets the number of blocked activations of an algorithm (a metric).
pub type BlockedGauge = Arc<dyn Fn(Alg, i64) + Send + Sync>;

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
            counting: std::sync::atomic::AtomicBool::new(true),
            evidence: None,
            sighting: None,
            blocked_gauge: std::sync::OnceLock::new(),
        }
    }

    /// Activation waits, beyond the lead, until `source` shows the key and `sighting`'s verifier
    /// has been served it.
    pub fn with_evidence(
        mut self,
        source: Option<Arc<dyn evidence::EvidenceSource>>,
        sighting: Option<evidence::SightingPolicy>,
    ) -> Self {
        self.evidence = source;
        self.sighting = sighting;
        self
    }

    /// From now on `gauge` reports the activations blocked per algorithm.
    pub fn report_blocked_with(&self, gauge: BlockedGauge) {
        let _ = self.blocked_gauge.set(gauge);
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

    /// The kids of the pending keys whose rows pass their integrity check.
    pub fn pending_kids(&self) -> Result<Vec<String>, KeyError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|k| k.state == KeyState::Pending)
            .map(|k| k.kid)
            .collect())
    }

    /// Every key as the admin API and the CLI show it: its row's integrity, and why a pending
    /// key's activation waits, if it does.
    pub fn views(&self) -> Result<Vec<crate::keys::KeyView>, KeyError> {
        let (rows, blocked) = self.store.blocking_read(|tx| {
            Ok::<_, KeyError>((store::keys::list(tx)?, evidence::recorded(tx)?))
        })?;
        let auth = self.row_auth();
        let now = self.clock.now();
        Ok(rows
            .rows
            .iter()
            .map(|r| {
                let k = &r.record;
                let why = (k.state == KeyState::Pending)
                    .then(|| blocked.get(&k.kid).map(|b| b.view(now)))
                    .flatten();
                crate::keys::KeyView::checked(k, auth.stored_key_ok(r)).blocked(why)
            })
            .collect())
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
