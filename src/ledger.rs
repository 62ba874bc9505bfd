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

/// Counts of minted tokens per (client id, kid, alg) since the last flush.
#[derive(Debug, Default)]
pub struct MintLedger {
    counts: Mutex<HashMap<(String, String, &'static str), u64>>,
}

impl MintLedger {
    /// Counts one token.
    pub fn record(&self, client: &str, kid: &str, alg: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(&(client.to_owned(), kid.to_owned(), alg)) {
            Some(n) => *n += 1,
            None => {
                counts.insert((client.to_owned(), kid.to_owned(), alg), 1);
            }
        }
    }

    /// Writes the counts as audit rows and clears them; returns how many rows were written.
    pub fn flush(&self, store: &Store, clock: &dyn Clock) -> Result<usize, store::StoreError> {
        let drained: Vec<_> = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.drain().collect()
        };
        if drained.is_empty() {
            return Ok(0);
        }
        let now = clock.now();
        let result = store.with(|c| {
            let tx = c.transaction()?;
            for ((client, kid, alg), n) in &drained {
                store::audit::record(
                    &tx,
                    now,
                    &format!("client:{client}"),
                    "token.mint",
                    kid,
                    &json!({"count": n, "alg": alg}),
                )?;
            }
            tx.commit()?;
            Ok::<_, store::StoreError>(drained.len())
        });
        if result.is_err() {
            // Keep the counts for the next flush rather than losing them.
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in drained {
                *counts.entry(k).or_insert(0) += n;
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
