//! The mint ledger: which client minted how many tokens with which key, and in which minute,
//! written to the audit trail once the minute is over.
//!
//! The hot path only bumps a counter in memory; a background task turns the counts into one
//! `token.mint` audit row per (client, kid) and minute, dated at the start of the minute the
//! tokens were minted in (not when the row was written), so minting never waits for the database
//! and the audit trail still answers "who minted with this key, and when".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::clock::{Clock, UnixTime};
use crate::store::{self, Store};

/// How often the counts of finished minutes are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// Minted tokens by client id, then kid (with its algorithm).
type Counts = HashMap<String, HashMap<String, (&'static str, u64)>>;

/// The counts of one minute, flattened: (client id, kid, algorithm, tokens).
type Rows = Vec<(String, String, &'static str, u64)>;

/// Counts of minted tokens per minute (Unix time / 60) and (client id, kid), not yet written.
#[derive(Debug, Default)]
pub struct MintLedger {
    counts: Mutex<HashMap<i64, Counts>>,
}

impl MintLedger {
    /// Counts one token minted at `at` (no allocation once the client and kid have been seen in
    /// that minute).
    pub fn record(&self, client: &str, kid: &str, alg: &'static str, at: UnixTime) {
        let mut minutes = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let counts = minutes.entry(at.div_euclid(60)).or_default();
        let by_kid = match counts.get_mut(client) {
            Some(m) => m,
            None => counts.entry(client.to_owned()).or_default(),
        };
        match by_kid.get_mut(kid) {
            Some((_, n)) => *n += 1,
            None => {
                by_kid.insert(kid.to_owned(), (alg, 1));
            }
        }
    }

    /// Writes the counts of every minute but the current one (which may still grow) as audit
    /// rows and clears them; returns how many rows were written. What cannot be written is kept
    /// for the next flush.
    pub fn flush(&self, store: &Store, clock: &dyn Clock) -> Result<usize, store::StoreError> {
        let current = clock.now().div_euclid(60);
        self.flush_minutes(store, |minute| minute != current)
    }

    /// Writes every count, the current minute's too (when the server stops).
    pub fn flush_all(&self, store: &Store) -> Result<usize, store::StoreError> {
        self.flush_minutes(store, |_| true)
    }

    fn flush_minutes(
        &self,
        store: &Store,
        due: impl Fn(i64) -> bool,
    ) -> Result<usize, store::StoreError> {
        let mut minutes: Vec<(i64, Rows)> = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let due: Vec<i64> = counts.keys().copied().filter(|m| due(*m)).collect();
            due.into_iter()
                .filter_map(|minute| Some((minute, counts.remove(&minute)?)))
                .map(|(minute, by_client)| {
                    let rows = by_client
                        .into_iter()
                        .flat_map(|(client, by_kid)| {
                            by_kid
                                .into_iter()
                                .map(move |(kid, (alg, n))| (client.clone(), kid, alg, n))
                        })
                        .collect();
                    (minute, rows)
                })
                .collect()
        };
        minutes.sort_by_key(|(minute, _)| *minute);
        let mut written = 0;
        let mut minutes = minutes.into_iter();
        while let Some((minute, rows)) = minutes.next() {
            match self.write(store, minute * 60, rows) {
                Ok(n) => written += n,
                Err(e) => {
                    for (minute, rows) in minutes {
                        self.restore(minute, rows);
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// Writes the counts of one minute in one transaction, dated `now`, the first second of
    /// that minute; on failure they are kept for the next flush.
    fn write(
        &self,
        store: &Store,
        now: UnixTime,
        drained: Rows,
    ) -> Result<usize, store::StoreError> {
        if drained.is_empty() {
            return Ok(0);
        }
        let result = store.blocking_write(|tx| {
            for (client, kid, alg, n) in &drained {
                store::audit::record(
                    tx,
                    now,
                    &format!("client:{client}"),
                    "token.mint",
                    kid,
                    &json!({"count": n, "alg": alg}),
                )?;
            }
            Ok::<_, store::StoreError>(drained.len())
        });
        if result.is_err() {
            self.restore(now.div_euclid(60), drained);
        }
        result
    }

    /// Puts the counts of `minute` back, rather than losing them.
    fn restore(&self, minute: i64, rows: Rows) {
        let mut minutes = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let counts = minutes.entry(minute).or_default();
        for (client, kid, alg, n) in rows {
            counts
                .entry(client)
                .or_default()
                .entry(kid)
                .or_insert((alg, 0))
                .1 += n;
        }
    }

    /// Writes the finished minutes every [`FLUSH_EVERY`] until `shutdown`, then everything.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = shutdown.changed() => true,
            } || *shutdown.borrow();
            let (me, store, clock) = (self.clone(), store.clone(), clock.clone());
            let flushed = tokio::task::spawn_blocking(move || {
                if stop {
                    me.flush_all(&store)
                } else {
                    me.flush(&store, clock.as_ref())
                }
            })
            .await;
            if !matches!(flushed, Ok(Ok(_))) {
                tracing::warn!(
                    "could not write the mint ledger to the audit trail; retrying later"
                );
            }
            if stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn counts_are_grouped_per_client_key_and_minute_and_survive_a_failed_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keyhost.db")).unwrap();
        let t0 = 1_800_000_000 / 60 * 60;
        let clock = ManualClock::new(t0 + 30);
        let ledger = MintLedger::default();
        ledger.record("c1", "k1", "ES256", t0 + 1);
        ledger.record("c1", "k1", "ES256", t0 + 59);
        ledger.record("c1", "k2", "RS256", t0 + 30);
        assert_eq!(
            ledger.flush(&store, clock.as_ref()).unwrap(),
            0,
            "minute not over"
        );
        clock.advance(3600);
        store
            .execute_batch("ALTER TABLE audit RENAME TO audit_away")
            .unwrap();
        assert!(ledger.flush(&store, clock.as_ref()).is_err());
        store
            .execute_batch("ALTER TABLE audit_away RENAME TO audit")
            .unwrap();
        ledger.record("c1", "k1", "ES256", t0 + 60);
        ledger.record("c1", "k1", "ES256", clock.now());
        assert_eq!(ledger.flush(&store, clock.as_ref()).unwrap(), 3);
        assert_eq!(ledger.flush(&store, clock.as_ref()).unwrap(), 0);
        assert_eq!(
            ledger.flush_all(&store).unwrap(),
            1,
            "the current minute, at shutdown"
        );
        let rows = store
            .blocking_read(|tx| store::audit::list(tx, 10, None))
            .unwrap();
        let count = |kid: &str, at: i64| {
            rows.iter()
                .find(|r| r.subject == kid && r.at == at)
                .map(|r| r.detail["count"].as_u64().unwrap())
        };
        assert_eq!(count("k1", t0), Some(2));
        assert_eq!(count("k2", t0), Some(1));
        assert_eq!(count("k1", t0 + 60), Some(1));
        assert_eq!(count("k1", clock.now() / 60 * 60), Some(1));
        assert_eq!(rows.len(), 4);
        assert!(
            rows.iter()
                .all(|r| r.actor == "client:c1" && r.action == "token.mint")
        );
    }
}
