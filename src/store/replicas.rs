//! What the servers sharing a store agree through it: named leases (one key planner at a time)
//! and the roll of live servers. Times here are the database's own clock, so that servers whose
//! clocks disagree still agree on who holds a lease.

use super::sql::args;
use super::{StoreError, Tx};
use crate::clock::UnixTime;

/// The database's clock, in Unix seconds.
#[tracing::instrument(skip_all)]
pub fn db_now(tx: &Tx<'_>) -> Result<UnixTime, StoreError> {
    tx.query_one(
        tx.dialect(
            "SELECT unixepoch()",
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)",
        ),
        &args![],
        |r| r.get(0),
    )
}

/// Takes or renews the lease `name` for `holder` until `now + ttl`, if it is free, expired,
/// already `holder`'s, or its holder has no connection to the database any more and has not
/// renewed it for `silent` seconds (PostgreSQL only: the servers that share a store are
/// PostgreSQL's); the lease's epoch (a new one each time it changes hands), or `None` if
/// another server holds it.
#[tracing::instrument(skip_all)]
pub fn take_lease(
    tx: &Tx<'_>,
    name: &str,
    holder: &str,
    ttl: i64,
    silent: i64,
) -> Result<Option<i64>, StoreError> {
    let now = db_now(tx)?;
    tx.query_opt(
        "INSERT INTO leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?4)
         ON CONFLICT (name) DO UPDATE SET
             epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch
                          ELSE leases.epoch + 1 END,
             holder = excluded.holder,
             expires_at = excluded.expires_at
         WHERE leases.holder = excluded.holder OR leases.expires_at < ?3
            OR (leases.expires_at < ?5 AND NOT EXISTS (
                SELECT 1 FROM pg_stat_activity WHERE application_name = leases.holder))
         RETURNING epoch",
        &args![name, holder, now, now + ttl, now + ttl - silent],
        |r| r.get(0),
    )
}

/// Gives the lease `name` up, if `holder` has it (a server stopping lets another take over at
/// once).
#[tracing::instrument(skip_all)]
pub fn release_lease(tx: &Tx<'_>, name: &str, holder: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        &args![name, holder],
    )?;
    Ok(())
}

/// Records that server `id` (started at `started_at`) is alive, forgets servers unseen for
/// `forget_after` seconds, and returns how many were seen within `live_within` seconds (this
/// one included).
#[tracing::instrument(skip_all)]
pub fn heartbeat(
    tx: &Tx<'_>,
    id: &str,
    started_at: UnixTime,
    live_within: i64,
    forget_after: i64,
) -> Result<u32, StoreError> {
    let now = db_now(tx)?;
    tx.execute(
        "INSERT INTO replicas (id, started_at, seen_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        &args![id, started_at, now],
    )?;
    tx.execute(
        "DELETE FROM replicas WHERE seen_at < ?1",
        &args![now - forget_after],
    )?;
    tx.query_one(
        "SELECT COUNT(*) FROM replicas WHERE seen_at >= ?1",
        &args![now - live_within],
        |r| r.get(0),
    )
}

/// Removes server `id` from the roll (it is stopping).
#[tracing::instrument(skip_all)]
pub fn leave(tx: &Tx<'_>, id: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM replicas WHERE id = ?1", &args![id])?;
    Ok(())
}
