//! Rate-limited log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets a repeated log line through at most once per period and counts the ones it held back,
/// so that a flood of bad requests cannot flood the log (each allowed line says how many it
/// stands for).
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// A limiter allowing one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(lines held back since the last one written)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_limiter_lets_one_line_through_per_period_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limiter.allow(), None);
        }
        let quick = LogLimiter::new(Duration::ZERO);
        assert_eq!(quick.allow(), Some(0));
        assert_eq!(quick.allow(), Some(0));
    }
}
