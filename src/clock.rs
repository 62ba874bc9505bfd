//! Time as the rest of the crate sees it.
//!
//! Everything that depends on "now" (lifecycle planning, token `iat`/`exp`, audit rows) reads it
//! through [`Clock`], so that tests can drive the key lifecycle with a [`ManualClock`] instead of
//! sleeping. Times are whole seconds since the Unix epoch, the resolution of JWT claims.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixTime;

    /// Notified whenever the clock moves other than by the passage of real time, so that the
    /// lifecycle task re-plans at once. The system clock never notifies.
    fn jumps(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    jumps: Arc<Notify>,
}

impl ManualClock {
    /// A clock frozen at `now`.
    pub fn new(now: UnixTime) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicI64::new(now),
            jumps: Arc::new(Notify::new()),
        })
    }

    /// A clock frozen at the current wall-clock time.
    pub fn starting_now() -> Arc<Self> {
        Self::new(SystemClock.now())
    }

    /// Moves the clock by `seconds` (negative moves it back) and wakes whoever waits on it.
    pub fn advance(&self, seconds: i64) {
        self.now.fetch_add(seconds, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }

    /// Sets the clock to `now` and wakes whoever waits on it.
    pub fn set(&self, now: UnixTime) {
        self.now.store(now, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.now.load(Ordering::SeqCst)
    }

    fn jumps(&self) -> Option<Arc<Notify>> {
        Some(self.jumps.clone())
    }
}

/// Formats a Unix time as RFC 3339 (`2026-11-22T00:31:12Z`).
pub fn rfc3339(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.now(), 100);
        clock.advance(50);
        assert_eq!(clock.now(), 150);
        clock.advance(-200);
        assert_eq!(clock.now(), -50);
        clock.set(7);
        assert_eq!(clock.now(), 7);
    }
}
