//! Served time: the seconds a running server has served each pending key's lead and each
//! retired key's grace, counted on its monotonic clock, and the latest `exp` each key signed.

use std::time::Duration;

use super::{KeyError, KeyService};
use crate::clock::UnixTime;
use crate::keys::{KeyRecord, KeyState};
use crate::store::{self, StoreError, Tx};

impl KeyService {
    /// Counts the served time since the last count against the published pending keys' leads
    /// and the retired keys' graces (a server only; the first count of a process counts none,
    /// so downtime never counts). Runs inside the transaction of every round, and of every change
    /// that starts a lead or a grace, before the change (so a new key is never credited with time
    /// from before it existed), on verified rows.
    pub(super) fn count_served(&self, tx: &Tx<'_>, keys: &[KeyRecord]) -> Result<(), KeyError> {
        self.count_served_then(tx, keys, false)
    }

    /// [`KeyService::count_served`] before a change that starts a lead or a grace: the fraction
    /// of a second not yet counted is dropped (the keys already counting lose it, which only
    /// delays them), so that the new lead or grace starts from now and is never credited with
    /// time from before it existed.
    pub(super) fn count_served_before_a_start(
        &self,
        tx: &Tx<'_>,
        keys: &[KeyRecord],
    ) -> Result<(), KeyError> {
        self.count_served_then(tx, keys, true)
    }

    pub(super) fn count_served_then(
        &self,
        tx: &Tx<'_>,
        keys: &[KeyRecord],
        drop_fraction: bool,
    ) -> Result<(), KeyError> {
        if !self.serving {
            return Ok(());
        }
        let now = self.clock.monotonic();
        let mut counted_to = self.counted_to.lock().unwrap_or_else(|p| p.into_inner());
        if !self.counting.load(std::sync::atomic::Ordering::SeqCst) {
            // Another server counts. Should this one count again later, it starts from then:
            // the seconds in between were that server's to count.
            *counted_to = None;
            return Ok(());
        }
        let served = counted_to.map_or(0, |before| now.saturating_sub(before).as_secs() as i64);
        if served > 0 {
            for k in keys {
                let owed = match k.state {
                    KeyState::Pending if k.published_at.is_some() => k.lead_remaining,
                    KeyState::Retired => k.grace_remaining,
                    _ => 0,
                };
                if owed > 0 && store::keys::serve(tx, k.id, served)? {
                    self.seal_row(tx, k.id)?;
                }
            }
        }
        // Whole seconds only: the fraction stays for the next round, unless a lead or a grace
        // starts now.
        *counted_to = Some(match *counted_to {
            _ if drop_fraction => now,
            Some(before) if served > 0 => before + Duration::from_secs(served as u64),
            Some(before) => before,
            None => now,
        });
        Ok(())
    }

    /// Whether this server counts served time from now on: on a store shared by several
    /// servers, only the planner does. A server that starts counting again credits nothing from
    /// before.
    pub fn set_counting(&self, counting: bool) {
        let was = self
            .counting
            .swap(counting, std::sync::atomic::Ordering::SeqCst);
        if was != counting {
            *self.counted_to.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Records the latest `exp` each key signed (key row id, exp), where it is later than what is
    /// recorded: a retired key stays published until then.
    pub fn note_signed_until(&self, exps: &[(i64, UnixTime)]) -> Result<(), KeyError> {
        if exps.is_empty() {
            return Ok(());
        }
        self.store.blocking_write(|tx| {
            let trusted = self.trusted(store::keys::list(tx)?);
            for (id, exp) in exps {
                let later = trusted
                    .iter()
                    .any(|k| k.id == *id && k.last_exp.is_none_or(|known| known < *exp));
                if later && store::keys::note_exp(tx, *id, *exp)? {
                    self.seal_row(tx, *id)?;
                }
            }
            Ok(())
        })
    }

    /// Records that a server has served this store's JWKS (once; later calls are free).
    pub fn mark_served(&self) -> Result<(), KeyError> {
        if !self.serving || self.served.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let now = self.clock.now();
        self.store.blocking_write(|tx| {
            if store::settings::get(tx, store::settings::FIRST_SERVED_AT)?.is_none() {
                store::settings::set(tx, store::settings::FIRST_SERVED_AT, &now.to_string())?;
            }
            Ok::<_, StoreError>(())
        })?;
        self.served
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
