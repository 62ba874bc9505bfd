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

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::IssuanceService;
use crate::store::{self, StoreError};

/// Unclaimed issuances taken over in one look.
const TAKE_OVER_BATCH: u32 = 100;

/// This server's part in sharing issuances.
#[derive(Debug)]
pub(super) struct Claims {
    holder: String,
    /// Claim lifetime in seconds.
    ttl: i64,
    /// How often claims are renewed and unclaimed issuances looked for.
    every: Duration,
    /// Issuances whose claim this server has lost: their workers stop before the next call.
    lost: Mutex<HashSet<String>>,
}

impl IssuanceService {
    /// Shares this service's issuances with the other servers of a shared store, as `holder`:
    /// a worker drives an issuance only while this server holds its claim, renewed every
    /// `refresh_interval` (and lasting ten of them, at least 5 s). Call before serving.
    pub fn share_with_replicas(&self, holder: &str, refresh_interval: Duration) {
        let ttl = (refresh_interval.as_secs_f64() * 10.0).ceil().max(5.0) as i64;
        let _ = self.claims.set(Claims {
            holder: holder.to_owned(),
            ttl,
            every: refresh_interval,
            lost: Mutex::default(),
        });
    }

    /// Whether this server may drive `id` now: always on a store of its own; on a shared one
    /// when it holds (or has just taken) the issuance's claim.
    pub(super) async fn claim(&self, id: &str) -> Result<bool, StoreError> {
        let Some(claims) = self.claims.get() else {
            return Ok(true);
        };
        let (id, holder, ttl) = (id.to_owned(), claims.holder.clone(), claims.ttl);
        let claimed = {
            let id = id.clone();
            self.store
                .write(move |tx| store::issuances::claim(tx, &id, &holder, ttl))
                .await?
        };
        if claimed {
            claims
                .lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        } else {
            tracing::debug!(issuance = %id, "another server holds this issuance's claim");
        }
        Ok(claimed)
    }

    /// Whether this server still holds the claim on `id` (true without claims).
    pub(super) fn holds(&self, id: &str) -> bool {
        self.claims.get().is_none_or(|c| {
            !c.lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
        })
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
            let (holder, ttl) = (claims.holder.clone(), claims.ttl);
            let renewed = self
                .store
                .write(move |tx| {
                    let mut lost = Vec::new();
                    for id in driving {
                        if !store::issuances::renew_claim(tx, &id, &holder, ttl)? {
                            lost.push(id);
                        }
                    }
                    let unclaimed = store::issuances::unclaimed(tx, TAKE_OVER_BATCH)?;
                    Ok::<_, StoreError>((lost, unclaimed))
                })
                .await;
            match renewed {
                Ok((lost, unclaimed)) => {
                    if !lost.is_empty() {
                        tracing::warn!(
                            issuances = ?lost,
                            "lost the claim on issuances (finished meanwhile, or taken over by \
                             another server after this one missed its renewals); leaving them"
                        );
                        claims
                            .lost
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(lost);
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
