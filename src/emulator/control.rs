//! Run-time knobs and counters of the emulator, shared between the server and whoever embeds it.
//!
//! Tests turn faults on and off while the server runs and read back what the server saw, so the
//! knobs are atomics (read on every request without locking) and the counters sit behind short
//! mutexes that are never held across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::credentials::Credentials;

/// Handle to change faults at run time and read counters.
pub struct EmulatorControl {
    fail_rate_429: AtomicU64,
    fail_rate_500: AtomicU64,
    latency_nanos: AtomicU64,
    issue_calls: Mutex<Vec<(String, String, String)>>,
    status_counts: Mutex<BTreeMap<u16, u64>>,
    credentials: Arc<Credentials>,
}

impl std::fmt::Debug for EmulatorControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorControl")
            .field("fail_rate_429", &self.fail_rate_429())
            .field("fail_rate_500", &self.fail_rate_500())
            .field("latency", &self.latency())
            .finish_non_exhaustive()
    }
}

/// A rate as a probability: NaN counts as 0, anything else is clamped to 0.0..=1.0.
fn sanitize(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// Locks `m`, carrying on after a poisoned lock: the data are counters, valid at any point.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmulatorControl {
    pub(super) fn new(
        fail_rate_429: f64,
        fail_rate_500: f64,
        latency: Duration,
        credentials: Arc<Credentials>,
    ) -> Self {
        let control = Self {
            fail_rate_429: AtomicU64::new(0),
            fail_rate_500: AtomicU64::new(0),
            latency_nanos: AtomicU64::new(0),
            issue_calls: Mutex::new(Vec::new()),
            status_counts: Mutex::new(BTreeMap::new()),
            credentials,
        };
        control.set_fail_rate_429(fail_rate_429);
        control.set_fail_rate_500(fail_rate_500);
        control.set_latency(latency);
        control
    }

    /// Sets the share of API requests answered 429 (clamped to 0.0..=1.0; NaN means 0).
    pub fn set_fail_rate_429(&self, rate: f64) {
        self.fail_rate_429
            .store(sanitize(rate).to_bits(), Ordering::Relaxed);
    }

    /// Sets the share of API requests answered 500 (clamped to 0.0..=1.0; NaN means 0).
    pub fn set_fail_rate_500(&self, rate: f64) {
        self.fail_rate_500
            .store(sanitize(rate).to_bits(), Ordering::Relaxed);
    }

    /// Sets the delay added before every API request is handled (saturates at about 584 years).
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(super) fn fail_rate_429(&self) -> f64 {
        f64::from_bits(self.fail_rate_429.load(Ordering::Relaxed))
    }

    pub(super) fn fail_rate_500(&self) -> f64 {
        f64::from_bits(self.fail_rate_500.load(Ordering::Relaxed))
    }

    pub(super) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// Every issue-on-behalf request that reached the credential logic (it passed faults, auth
    /// and body validation), in order: (email as the token carries it, credentialId,
    /// onDuplicate). An absent `onDuplicate` is recorded as the default it stands for,
    /// `"revoke"`.
    pub fn issue_calls(&self) -> Vec<(String, String, String)> {
        lock(&self.issue_calls).clone()
    }

    /// Count of requests answered with each status code (all endpoints, including unknown
    /// paths and injected faults).
    pub fn status_counts(&self) -> BTreeMap<u16, u64> {
        lock(&self.status_counts).clone()
    }

    /// Credentials issued so far and not revoked by a later `onDuplicate: "revoke"`.
    pub fn credentials(&self) -> usize {
        self.credentials.live_count()
    }

    pub(super) fn record_issue_call(&self, email: &str, credential_id: &str, on_duplicate: &str) {
        lock(&self.issue_calls).push((
            email.to_owned(),
            credential_id.to_owned(),
            on_duplicate.to_owned(),
        ));
    }

    pub(super) fn record_status(&self, status: u16) {
        *lock(&self.status_counts).entry(status).or_insert(0) += 1;
    }
}
