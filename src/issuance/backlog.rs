//! The backlog of unfinished issuances, measured for the metrics: how many are queued and
//! submitted, and how long the most overdue one's next attempt or status poll has been due.
//!
//! A worker moves an issuance's next attempt or poll into the future every time it acts on it,
//! so an overdue time that keeps growing means nothing works that issuance (a worker failing on
//! the store, no server holding its claim, AIR Kit calls that never return). The store is read
//! every [`BACKLOG_EVERY`]; on a shared store every server measures the same rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::IssuanceState;
use super::{IssuanceService, records};
use crate::clock::UnixTime;
use crate::metrics::StateLabel;
use crate::store::StoreError;

/// How often the backlog is measured.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(30);

/// What a look at the unfinished issuances found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Issuances not yet accepted by AIR Kit.
    pub queued: i64,
    /// Issuances accepted and followed until `ONCHAIN`.
    pub submitted: i64,
    /// Seconds the most overdue one's next attempt or poll has been due (0: none is overdue).
    pub overdue: i64,
}

impl Backlog {
    /// The backlog of unfinished issuances, each given as its state and when its next attempt
    /// or poll is due, at `now`.
    pub fn of(
        unfinished: impl IntoIterator<Item = (IssuanceState, Option<UnixTime>)>,
        now: UnixTime,
    ) -> Self {
        let mut backlog = Self::default();
        for (state, due) in unfinished {
            match state {
                IssuanceState::Queued => backlog.queued += 1,
                IssuanceState::Submitted => backlog.submitted += 1,
                IssuanceState::Onchain
                | IssuanceState::Failed
                | IssuanceState::Stalled
                | IssuanceState::Unconfirmed => continue,
            }
            if let Some(due) = due {
                backlog.overdue = backlog.overdue.max(now - due);
            }
        }
        backlog
    }
}

impl IssuanceService {
    /// Reads the unfinished issuances and sets the backlog gauges
    /// (`keyhost_issuances_unfinished{state}`, `keyhost_issuance_overdue_seconds`).
    pub async fn measure_backlog(&self) -> Result<Backlog, StoreError> {
        let found = records::unfinished(&self.store).await?;
        let backlog = Backlog::of(
            found.rows.iter().map(|i| (i.state, i.next_attempt_at)),
            self.clock.now(),
        );
        for (state, count) in [
            (IssuanceState::Queued, backlog.queued),
            (IssuanceState::Submitted, backlog.submitted),
        ] {
            self.metrics
                .issuances_unfinished
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(count);
        }
        self.metrics.issuance_overdue.set(backlog.overdue);
        Ok(backlog)
    }

    /// Runs until `shutdown` turns true (only with AIR Kit configured, since otherwise nothing
    /// works issuances): measures the backlog every [`BACKLOG_EVERY`].
    pub async fn watch_backlog(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.airkit.is_none() {
            return;
        }
        loop {
            if let Err(e) = self.measure_backlog().await {
                tracing::debug!(error = %e, "could not measure the issuance backlog");
            }
            tokio::select! {
                _ = tokio::time::sleep(BACKLOG_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_counts_unfinished_issuances_and_the_longest_overdue_wait() {
        use IssuanceState::*;
        assert_eq!(Backlog::of([], 100), Backlog::default());
        let backlog = Backlog::of(
            [
                (Queued, Some(130)),   // due later
                (Queued, Some(90)),    // 10 s overdue
                (Submitted, Some(40)), // 60 s overdue
                (Submitted, None),
                (Stalled, Some(0)), // not unfinished: left out
            ],
            100,
        );
        assert_eq!(
            backlog,
            Backlog {
                queued: 2,
                submitted: 2,
                overdue: 60
            }
        );
        assert_eq!(Backlog::of([(Queued, Some(130))], 100).overdue, 0);
    }
}
