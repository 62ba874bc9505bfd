//! Several servers on one store (PostgreSQL): which of them plans the key lifecycle, and how
//! many are alive.
//!
//! - **One planner at a time.** Scheduled rotation, expiry and destruction, and the counting of
//!   served time, run on the server holding the `planner` lease, a row in the store renewed at
//!   every round and taken over by another server once it has run out (its holder lost the
//!   database), or at once when its holder is gone from `pg_stat_activity` (a killed process's
//!   connections close with it). Leases run on the database's clock, so servers whose clocks disagree still
//!   agree on who holds one. A lease that changes hands while its old holder is mid-round is
//!   harmless: every transition re-plans inside a write transaction, and writers are serialised,
//!   so two planners can never both generate a successor for the same due time (the unique
//!   indexes stay the last line of defence).
//! - **The roll of live servers**, each seen at its last round: a client's rate limit is shared
//!   out between them.
//!
//! On SQLite there is one server per store (the lock file): it always plans, and alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::UnixTime;
use crate::store::{self, EngineKind, Store, StoreError};

/// The planner's lease.
const PLANNER: &str = "planner";

/// This server among the others sharing its store.
#[derive(Debug)]
pub struct Replicas {
    id: String,
    started_at: UnixTime,
    store: Arc<Store>,
    /// How long a lease, and a place in the roll, lasts without renewal, in seconds.
    ttl: i64,
    /// How long a lease's holder must have been silent (and disconnected) before another
    /// takes it without waiting for it to run out, in seconds.
    silent: i64,
    planner: AtomicBool,
    live: AtomicU32,
}

impl Replicas {
    /// This server, renewing its lease and its place every `refresh_interval`.
    pub fn new(store: Arc<Store>, started_at: UnixTime, refresh_interval: Duration) -> Self {
        Self {
            id: store
                .instance()
                .map_or_else(|| format!("{}/sqlite", std::process::id()), str::to_owned),
            started_at,
            store,
            // Five missed rounds, and never less than five seconds; a holder gone from the
            // database is replaced after two missed rounds and a second (it plans only right
            // after renewing the lease, and writers are serialised, so a slow round of its own
            // overlapping its successor's cannot plan twice).
            ttl: (refresh_interval.as_secs_f64() * 5.0).ceil().max(5.0) as i64,
            silent: (refresh_interval.as_secs_f64() * 2.0).ceil() as i64 + 1,
            planner: AtomicBool::new(false),
            live: AtomicU32::new(1),
        }
    }

    /// This server's id in the roll (process id, a random part and the host).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether other servers may share the store.
    pub fn shared(&self) -> bool {
        self.store.engine() == EngineKind::Postgres
    }

    /// Renews this server's place in the roll and tries to take or keep the planner's lease,
    /// on the calling (blocking) thread; whether this server plans now. On failure this server
    /// does not plan.
    pub fn round(&self) -> Result<bool, StoreError> {
        if !self.shared() {
            self.planner.store(true, Ordering::SeqCst);
            return Ok(true);
        }
        let result = self.store.blocking_write(|tx| {
            let live =
                store::replicas::heartbeat(tx, &self.id, self.started_at, self.ttl, self.ttl * 20)?;
            let epoch = store::replicas::take_lease(tx, PLANNER, &self.id, self.ttl, self.silent)?;
            Ok::<_, StoreError>((live, epoch))
        });
        let plans = match result {
            Ok((live, epoch)) => {
                self.live.store(live.max(1), Ordering::SeqCst);
                epoch.is_some()
            }
            Err(e) => {
                self.planner.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let was = self.planner.swap(plans, Ordering::SeqCst);
        if plans && !was {
            tracing::info!(replica = %self.id, "this server now plans the key lifecycle");
        } else if was && !plans {
            tracing::info!(replica = %self.id, "another server plans the key lifecycle now");
        }
        Ok(plans)
    }

    /// Whether this server held the planner's lease at its last round.
    pub fn plans(&self) -> bool {
        self.planner.load(Ordering::SeqCst)
    }

    /// Servers seen alive at the last round (1 on SQLite).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// Leaves the roll and gives the planner's lease up (a server stopping cleanly), so that
    /// another takes over at once. Best effort.
    pub fn leave(&self) {
        if !self.shared() {
            return;
        }
        let left = self.store.blocking_write(|tx| {
            store::replicas::release_lease(tx, PLANNER, &self.id)?;
            store::replicas::leave(tx, &self.id)
        });
        if let Err(e) = left {
            tracing::warn!(error = %e, "could not leave the roll of servers; the others will notice");
        }
        self.planner.store(false, Ordering::SeqCst);
    }
}
