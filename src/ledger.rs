//! The mint ledger: which client minted how many tokens with which key, written to the audit
//! trail once a minute.
//!
//! The hot path only bumps a counter in memory; a background task turns the counts into one
//! `token.mint` audit row per (client, kid) and minute, so minting never waits for the database
//! and the audit trail still answers "who minted with this key, and when".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::{self, Store};

/// How often counts are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// Minted tokens by client id, then kid (with its algorithm), since the last flush.
type Counts = HashMap<String, HashMap<String, (&'static str, u64)>>;

/// Counts of minted tokens per (client id, kid) since the last flush.
#[derive(Debug, Default)]
pub struct MintLedger {
    counts: Mutex<Counts>,
}

impl MintLedger {
    /// Counts one token (no allocation once the client and kid have been seen).
    pub fn record(&self, client: &str, kid: &str, alg: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Writes the counts as audit rows and clears them; returns how many rows were written.
    pub fn flush(&self, store: &Store, clock: &dyn Clock) -> Result<usize, store::StoreError> {
        let drained: Vec<(String, String, &'static str, u64)> = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts
                .drain()
                .flat_map(|(client, by_kid)| {
                    by_kid
                        .into_iter()
                        .map(move |(kid, (alg, n))| (client.clone(), kid, alg, n))
                })
                .collect()
        };
        if drained.is_empty() {
            return Ok(0);
        }
        let now = clock.now();
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
            // Keep the counts for the next flush rather than losing them.
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (client, kid, alg, n) in drained {
                counts
                    .entry(client)
                    .or_default()
                    .entry(kid)
                    .or_insert((alg, 0))
                    .1 += n;
            }
        }
        result
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown`, then once more.
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
            };
            let (me, store, clock) = (self.clone(), store.clone(), clock.clone());
            let flushed =
                tokio::task::spawn_blocking(move || me.flush(&store, clock.as_ref())).await;
            if !matches!(flushed, Ok(Ok(_))) {
                tracing::warn!(
                    "could not write the mint ledger to the audit trail; retrying later"
                );
            }
            if stop || *shutdown.borrow() {
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
    fn counts_are_grouped_per_client_and_key_and_survive_a_failed_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keyhost.db")).unwrap();
        let clock = ManualClock::new(1_800_000_000);
        let ledger = MintLedger::default();
        ledger.record("c1", "k1", "ES256");
        ledger.record("c1", "k1", "ES256");
        ledger.record("c1", "k2", "RS256");
        store
            .execute_batch("ALTER TABLE audit RENAME TO audit_away")
            .unwrap();
        assert!(ledger.flush(&store, clock.as_ref()).is_err());
        store
            .execute_batch("ALTER TABLE audit_away RENAME TO audit")
            .unwrap();
        ledger.record("c1", "k1", "ES256");
        assert_eq!(ledger.flush(&store, clock.as_ref()).unwrap(), 2);
        assert_eq!(ledger.flush(&store, clock.as_ref()).unwrap(), 0);
        let rows = store
            .blocking_read(|tx| store::audit::list(tx, 10, None))
            .unwrap();
        let count = |kid: &str| {
            rows.iter()
                .find(|r| r.subject == kid)
                .map(|r| r.detail["count"].as_u64().unwrap())
        };
        assert_eq!(count("k1"), Some(3));
        assert_eq!(count("k2"), Some(1));
        assert!(
            rows.iter()
                .all(|r| r.actor == "client:c1" && r.action == "token.mint")
        );
    }
}
