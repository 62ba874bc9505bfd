//! Issuances on a store shared by several servers: each unfinished issuance is worked by the one
//! server holding its claim, a lease on its row renewed while that server drives it. A server
//! that dies is gone from `pg_stat_activity` at once, and one that loses the database stops
//! renewing; then (at once, or once the claim has run out) another server takes the issuance
//! over and carries on from its record (the record is saved after every
//! upstream call, so at most the call in flight when the first server died is repeated, and AIR
//! Kit's `onDuplicate` handling applies to it as to any retry).
//!
//! Claims run on the database's clock. Writers are serialised, so two servers never both win
//! one claim (the same role `FOR UPDATE SKIP LOCKED` plays in a queue table). On a store of its
//! own (SQLite, one server) there are no claims: the server drives every unfinished issuance.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::IssuanceService;
use crate::store::{self, StoreError};

/// Unclaimed issuances taken over in one look.
const TAKE_OVER_BATCH: u32 = 100;

/// This server's part in sharing issuances.
#[derive(Debug)]
pub(super) struct Claims {
    pub(super) holder: String,
    /// Claim lifetime in seconds (on the database's clock).
    ttl: i64,
    /// How long a claim's holder must have been silent, and gone from the database, before
    /// another server takes the claim without waiting for it to run out, in seconds.
    silent: i64,
    /// How long after its last renewal this server still acts on a claim: less than `silent`,
    /// so that it has stopped before anyone may take the claim over.
    trust: Duration,
    /// How often claims are renewed and unclaimed issuances looked for.
    every: Duration,
    /// The claims this server holds, each with when its last renewal was sent (monotonic).
    held: Mutex<HashMap<String, Instant>>,
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl IssuanceService {
    /// Shares this service's issuances with the other servers of a shared store, as `holder`:
    /// a worker drives an issuance only while this server holds its claim, renewed every
    /// `refresh_interval` (and lasting ten of them, at least 5 s). Call before serving.
    pub fn share_with_replicas(&self, holder: &str, refresh_interval: Duration) {
        let ttl = (refresh_interval.as_secs_f64() * 10.0).ceil().max(5.0) as i64;
        // Two missed renewals and a second: then this server stops acting on the claim; one
        // more second, and (if it is gone from the database) another server may take it.
        let trust = refresh_interval * 2 + Duration::from_secs(1);
        let silent = trust.as_secs_f64().ceil() as i64 + 1;
        let _ = self.claims.set(Claims {
            holder: holder.to_owned(),
            ttl,
            silent,
            trust,
            every: refresh_interval,
            held: Mutex::default(),
        });
    }

    /// The claims, when issuances are shared.
    pub(super) fn claims(&self) -> Option<&Claims> {
        self.claims.get()
    }

    /// Whether this server may drive `id` now: always on a store of its own; on a shared one
    /// when it holds (or has just taken) the issuance's claim.
    pub(super) async fn claim(&self, id: &str) -> Result<bool, StoreError> {
        let Some(claims) = self.claims.get() else {
            return Ok(true);
        };
        let (id, holder, ttl, silent) = (
            id.to_owned(),
            claims.holder.clone(),
            claims.ttl,
            claims.silent,
        );
        let sent = Instant::now();
        let claimed = {
            let id = id.clone();
            self.store
                .write(move |tx| store::issuances::claim(tx, &id, &holder, ttl, silent))
                .await?
        };
        if claimed {
            claims.lock().insert(id, sent);
        } else {
            tracing::debug!(issuance = %id, "another server holds this issuance's claim");
        }
        Ok(claimed)
    }

    /// Whether this server may act on the claim on `id` now (true without claims): it holds it
    /// and renewed it lately enough that no other server can have taken it over.
    pub(super) fn holds(&self, id: &str) -> bool {
        self.claims.get().is_none_or(|c| {
            c.lock()
                .get(id)
                .is_some_and(|renewed| renewed.elapsed() < c.trust)
        })
    }

    /// Forgets the claim on `id` (its worker ended; the claim runs out by itself).
    pub(super) fn release(&self, id: &str) {
        if let Some(c) = self.claims.get() {
            c.lock().remove(id);
        }
    }

    /// Runs until `shutdown` turns true (only on a shared store): renews the claims of the
    /// issuances this server drives, and takes over the unfinished ones nobody's claim covers.
    pub async fn keep_claims(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(claims) = self.claims.get() else {
            return;
        };
        if self.airkit.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(claims.every) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let driving: Vec<String> = self
                .driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            let (holder, ttl, silent) = (claims.holder.clone(), claims.ttl, claims.silent);
            let sent = Instant::now();
            let renewed = self
                .store
                .write(move |tx| {
                    let (mut kept, mut lost) = (Vec::new(), Vec::new());
                    for id in driving {
                        if store::issuances::renew_claim(tx, &id, &holder, ttl)? {
                            kept.push(id);
                        } else {
                            lost.push(id);
                        }
                    }
                    let unclaimed = store::issuances::unclaimed(tx, TAKE_OVER_BATCH, ttl, silent)?;
                    Ok::<_, StoreError>((kept, lost, unclaimed))
                })
                .await;
            match renewed {
                Ok((kept, lost, unclaimed)) => {
                    {
                        let mut held = claims.lock();
                        for id in kept {
                            held.insert(id, sent);
                        }
                        for id in &lost {
                            held.remove(id);
                        }
                    }
                    if !lost.is_empty() {
                        tracing::warn!(
                            issuances = ?lost,
                            "lost the claim on issuances (finished meanwhile, or taken over by \
                             another server after this one missed its renewals); leaving them"
                        );
                    }
                    for id in unclaimed {
                        tracing::info!(issuance = %id, "taking over an issuance nobody works on");
                        self.spawn(id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not renew issuance claims"),
            }
        }
    }
}
