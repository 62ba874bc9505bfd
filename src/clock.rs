//! Time as the rest of the crate sees it.
//!
//! Everything that depends on "now" (lifecycle planning, token `iat`/`exp`, audit rows) reads it
//! through [`Clock`], so that tests can drive the key lifecycle with a [`ManualClock`] instead of
//! sleeping. Times are whole seconds since the Unix epoch, the resolution of JWT claims.
//!
//! A clock has two faces: the wall time (which jumps when it is set, and may be wrong after a
//! boot) and a monotonic time that only moves with real time while the process runs. The key
//! lifecycle counts served time (a publish lead, a grace) on the second, so that no wrong wall
//! clock can shorten either.
//!
//! Waits (retry backoffs, status polls, request deadlines) go through [`Clock::sleep`], so that a
//! test skips a long wait by advancing a [`ManualClock`] instead of sleeping through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;

/// Seconds since the Unix epoch.
pub type UnixTime = i64;

/// A wait on a [`Clock`], boxed so that the trait stays usable as `dyn Clock`.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current wall time.
    fn now(&self) -> UnixTime;

    /// Real time elapsed since an arbitrary start, never going back and unaffected by wall-clock
    /// changes (within one process).
    fn monotonic(&self) -> Duration;

    /// Notified whenever the clock moves other than by the passage of real time, so that the
    /// lifecycle task re-plans at once. The system clock never notifies.
    fn jumps(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Waits until `duration` has passed on this clock's monotonic face (by default, in real
    /// time).
    fn sleep(&self, duration: Duration) -> Sleep<'_> {
        Box::pin(tokio::time::sleep(duration))
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

    fn monotonic(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that only moves when told to; for tests and simulations. [`ManualClock::advance`] is
/// the passage of real time (wall and monotonic move together); [`ManualClock::set`] and
/// [`ManualClock::jump`] move the wall time alone, as setting a real clock does.
///
/// A [`Clock::sleep`] on it ends once the clock has been advanced by its duration, or once that
/// much real time has passed, whichever comes first: a test skips a long wait by advancing the
/// clock, while the short waits of code that no test drives (a retry after a few milliseconds)
/// still end on their own. A test that checks a wait therefore uses one far longer than itself.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    monotonic: AtomicI64,
    jumps: Arc<Notify>,
    sleepers: AtomicUsize,
}

impl ManualClock {
    /// A clock frozen at `now`.
    pub fn new(now: UnixTime) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicI64::new(now),
            monotonic: AtomicI64::new(0),
            jumps: Arc::new(Notify::new()),
            sleepers: AtomicUsize::new(0),
        })
    }

    /// A clock frozen at the current wall-clock time.
    pub fn starting_now() -> Arc<Self> {
        Self::new(SystemClock.now())
    }

    /// Lets `seconds` of real time pass (a negative value sets the wall time back, as
    /// [`ManualClock::jump`] does) and wakes whoever waits on the clock.
    pub fn advance(&self, seconds: i64) {
        if seconds > 0 {
            self.monotonic.fetch_add(seconds, Ordering::SeqCst);
        }
        self.now.fetch_add(seconds, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }

    /// Moves the wall time alone by `seconds` (a clock being set) and wakes whoever waits on it.
    pub fn jump(&self, seconds: i64) {
        self.now.fetch_add(seconds, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }

    /// Sets the wall time to `now` (no real time passes) and wakes whoever waits on the clock.
    pub fn set(&self, now: UnixTime) {
        self.now.store(now, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }

    /// How many sleeps wait on this clock now (counted from the call to [`Clock::sleep`]): a
    /// test advances the clock once the code it drives has started the wait it means to cut.
    pub fn sleepers(&self) -> usize {
        self.sleepers.load(Ordering::SeqCst)
    }
}

/// Counts a sleep on a [`ManualClock`] while it lasts.
struct Sleeper<'a>(&'a AtomicUsize);

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.now.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_secs(self.monotonic.load(Ordering::SeqCst).max(0) as u64)
    }

    fn jumps(&self) -> Option<Arc<Notify>> {
        Some(self.jumps.clone())
    }

    fn sleep(&self, duration: Duration) -> Sleep<'_> {
        let start = self.monotonic();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let sleeper = Sleeper(&self.sleepers);
        Box::pin(async move {
            let _sleeper = sleeper;
            let real = tokio::time::sleep(duration);
            tokio::pin!(real);
            loop {
                // Registered before the clock is read, so that an advance in between is not
                // missed.
                let moved = self.jumps.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.monotonic().saturating_sub(start) >= duration {
                    return;
                }
                tokio::select! {
                    () = &mut real => return,
                    () = moved => {}
                }
            }
        })
    }
}

/// keyhost's clock compared with an independent one (the `Date` of AIR Kit's answers): a clock
/// minutes off makes every Partner JWT arrive expired (or not yet valid) at AIR Kit, one of the
/// causes of 401 its troubleshooting list names. The last measurement is exported as
/// `keyhost_clock_skew_seconds` (keyhost minus the other, so positive means keyhost is ahead),
/// logged when beyond the limit, and makes `/readyz` fail while recent and beyond it.
#[derive(Debug)]
pub struct ClockSkew {
    limit: i64,
    /// The last measurement and when (monotonic) it was made.
    last: std::sync::Mutex<Option<(i64, Instant)>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// How long a measurement counts for readiness.
const SKEW_MEMORY: Duration = Duration::from_secs(3600);

/// Network delay plus the one-second resolution of `Date`: differences up to this are noise.
const SKEW_NOISE: i64 = 2;

impl ClockSkew {
    /// A monitor that calls a difference beyond `limit` seconds wrong.
    pub fn new(limit: i64) -> Self {
        Self {
            limit,
            last: std::sync::Mutex::new(None),
            gauge: Default::default(),
        }
    }

    /// The gauge, for registration.
    pub fn gauge(&self) -> &prometheus_client::metrics::gauge::Gauge {
        &self.gauge
    }

    /// Records that another clock read `theirs` when keyhost's read `ours`.
    pub fn observe(&self, ours: UnixTime, theirs: UnixTime) {
        let raw = ours - theirs;
        let skew = if raw.abs() <= SKEW_NOISE { 0 } else { raw };
        self.gauge.set(skew);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((skew, Instant::now()));
        if skew.abs() > self.limit {
            static WARNINGS: crate::log_limit::LogLimiter =
                crate::log_limit::LogLimiter::new(Duration::from_secs(300));
            if let Some(suppressed) = WARNINGS.allow() {
                tracing::warn!(
                    skew_seconds = skew,
                    limit = self.limit,
                    suppressed,
                    "keyhost's clock differs from AIR Kit's: tokens will arrive expired or not \
                     yet valid; synchronise this host's clock (NTP)"
                );
            }
        }
    }

    /// The last difference if it is recent and beyond the limit.
    pub fn out_of_bounds(&self) -> Option<i64> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(skew, at)| skew.abs() > self.limit && at.elapsed() < SKEW_MEMORY)
            .map(|(skew, _)| skew)
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
    fn skew_beyond_the_limit_is_reported_and_noise_is_not() {
        let skew = ClockSkew::new(60);
        skew.observe(1000, 999);
        assert_eq!(skew.gauge().get(), 0);
        assert_eq!(skew.out_of_bounds(), None);
        skew.observe(1000, 1000 + 600);
        assert_eq!(skew.gauge().get(), -600);
        assert_eq!(skew.out_of_bounds(), Some(-600));
        skew.observe(1000, 1000 - 30);
        assert_eq!(skew.out_of_bounds(), None);
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told_and_only_real_time_moves_its_monotonic_face() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.now(), 100);
        clock.advance(50);
        assert_eq!(clock.now(), 150);
        assert_eq!(clock.monotonic(), Duration::from_secs(50));
        clock.advance(-200);
        assert_eq!(clock.now(), -50);
        clock.jump(1000);
        assert_eq!(clock.now(), 950);
        clock.set(7);
        assert_eq!(clock.now(), 7);
        assert_eq!(clock.monotonic(), Duration::from_secs(50));
    }

    /// Whether `sleep` has ended, after letting the runtime run the tasks it woke.
    async fn ended(sleep: &tokio::task::JoinHandle<()>) -> bool {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        sleep.is_finished()
    }

    #[tokio::test]
    async fn a_sleep_on_a_manual_clock_ends_when_the_clock_has_advanced_by_its_duration() {
        let clock = ManualClock::new(1000);
        let sleeping = clock.clone();
        let sleep = tokio::spawn(async move { sleeping.sleep(Duration::from_secs(3600)).await });
        assert!(!ended(&sleep).await);
        assert_eq!(clock.sleepers(), 1);
        clock.advance(3599);
        assert!(!ended(&sleep).await, "one second short");
        // Setting the wall clock is not time passing.
        clock.jump(86_400);
        clock.set(5000);
        assert!(!ended(&sleep).await, "the wall clock moved, not time");
        clock.advance(1);
        assert!(ended(&sleep).await);
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn a_sleep_on_a_manual_clock_also_ends_after_its_duration_of_real_time() {
        let clock = ManualClock::new(0);
        let sleeping = clock.clone();
        let sleep = tokio::spawn(async move { sleeping.sleep(Duration::from_secs(60)).await });
        let short = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::from_millis(1)).await })
        };
        short.await.unwrap();
        assert!(!ended(&sleep).await, "real time ends only the short sleep");
        clock.advance(60);
        assert!(ended(&sleep).await);
    }
}
