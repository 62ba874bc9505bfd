//! Personal data: keyhost keeps e-mail addresses (and the data that comes with them) only as
//! long as needed.
//!
//! | where | what is personal | kept until |
//! |---|---|---|
//! | issuances | email, credential data, idempotency key, AIR's user id, last error | `KEYHOST_ISSUANCE_RETENTION` after the issuance last changed, once finished |
//! | KYC deliveries | iDenfy clientId, scanRef, detail | `KEYHOST_ISSUANCE_RETENTION` after arrival, unless their issuance is still in progress |
//! | clientId → email mappings | the address | until erased on request (they are needed for every future verification of that client) |
//! | audit rows, logs | never an address: a keyed hash where an erasure is recorded | the audit trail is kept |
//!
//! Erasing keeps the row with its ids, states, times and hashes, and rewrites the issuance's MAC
//! over what is left (only for a row whose MAC verified: keyhost never vouches for a row it did
//! not write). On SQLite, deleted and overwritten bytes are zeroed (`secure_delete`) and the
//! write-ahead log is checkpointed and truncated, so the address is gone from the database file
//! and its WAL, not only from query results. On PostgreSQL the old row versions stay in the
//! table's pages and the server's WAL until `VACUUM FULL` and WAL recycling.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::clock::{Clock, UnixTime};
use crate::integrity::RowAuth;
use crate::store::{self, Store, StoreError};

/// How often the retention purge runs.
pub const PURGE_INTERVAL: i64 = 3600;
/// Issuances purged per transaction (a large backlog is worked through in several).
const PURGE_BATCH: u32 = 500;

/// What a purge or an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    /// Issuances whose personal data was erased.
    pub issuances: usize,
    /// KYC deliveries whose personal data was erased.
    pub kyc_events: usize,
    /// clientId → email mappings deleted.
    pub kyc_subjects: usize,
    /// Whether the bytes are gone from the database file too (SQLite: the write-ahead log
    /// could be truncated; PostgreSQL: see the module documentation).
    pub scrubbed: bool,
}

/// Retention and erasure of personal data.
pub struct Privacy {
    store: Arc<Store>,
    auth: Arc<RowAuth>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    last_purge: std::sync::Mutex<Option<UnixTime>>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// Personal data of `store`, kept for `retention`.
    pub fn new(
        store: Arc<Store>,
        auth: Arc<RowAuth>,
        clock: Arc<dyn Clock>,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            auth,
            clock,
            retention,
            last_purge: Default::default(),
        }
    }

    /// Runs [`Privacy::purge_expired`] if it has not run for [`PURGE_INTERVAL`] (blocking; the
    /// background round calls it). Failures are logged and retried at the next round.
    pub fn maybe_purge(&self) {
        let now = self.clock.now();
        let mut last = self.last_purge.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| (0..PURGE_INTERVAL).contains(&(now - t))) {
            return;
        }
        match self.purge_expired() {
            Ok(erased) => {
                *last = Some(now);
                if erased.issuances + erased.kyc_events > 0 {
                    tracing::info!(
                        issuances = erased.issuances,
                        kyc_events = erased.kyc_events,
                        scrubbed = erased.scrubbed,
                        "erased personal data past KEYHOST_ISSUANCE_RETENTION"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging expired personal data failed; will retry")
            }
        }
    }

    /// Erases the personal data of finished issuances and KYC deliveries older than the
    /// retention, in batches, each with its audit row.
    pub fn purge_expired(&self) -> Result<Erased, StoreError> {
        let now = self.clock.now();
        let cutoff = now - self.retention.as_secs() as i64;
        let mut total = Erased::default();
        loop {
            let auth = &self.auth;
            let batch = self.store.blocking_write(|tx| {
                let rows = store::issuances::expired_personal_data(tx, cutoff, PURGE_BATCH)?;
                for row in &rows {
                    erase_issuance(tx, auth, row, &row.state, now)?;
                }
                let events = store::kyc::erase_received_before(tx, cutoff, now)?;
                if !rows.is_empty() || events > 0 {
                    store::audit::record(
                        tx,
                        now,
                        "scheduler",
                        "privacy.purge",
                        "retention",
                        &json!({"issuances": rows.len(), "kycEvents": events, "before": cutoff}),
                    )?;
                }
                Ok::<_, StoreError>((rows.len(), events))
            })?;
            total.issuances += batch.0;
            total.kyc_events += batch.1;
            if batch.0 < PURGE_BATCH as usize {
                break;
            }
        }
        if total.issuances + total.kyc_events > 0 {
            total.scrubbed = self.scrub();
        }
        Ok(total)
    }

    /// Erases one person's data: their issuances (one still in progress is stopped: it fails
    /// with "erased on request"), the KYC deliveries of those issuances and of the clientIds
    /// mapped to the address, and those mappings. Audited under a keyed hash of the address,
    /// never the address.
    pub fn erase_email(&self, email: &str, actor: &str) -> Result<Erased, StoreError> {
        let now = self.clock.now();
        let tag = self.auth.email_tag(email);
        let auth = &self.auth;
        let mut erased = self.store.blocking_write(|tx| {
            let mut erased = Erased::default();
            let issuances = store::issuances::for_email(tx, email)?;
            for row in &issuances {
                let pending = matches!(row.state.as_str(), "queued" | "submitted");
                let state = if pending {
                    "failed"
                } else {
                    row.state.as_str()
                };
                erase_issuance(tx, auth, row, state, now)?;
                erased.kyc_events += store::kyc::erase_linked(tx, None, Some(&row.id), now)?;
            }
            erased.issuances = issuances.len();
            for client_id in store::kyc::subjects_for_email(tx, email)? {
                erased.kyc_events += store::kyc::erase_linked(tx, Some(&client_id), None, now)?;
                store::kyc::delete_subject(tx, &client_id)?;
                erased.kyc_subjects += 1;
            }
            store::audit::record(
                tx,
                now,
                actor,
                "privacy.erase",
                &format!("email-tag:{tag}"),
                &json!({
                    "issuances": erased.issuances,
                    "kycEvents": erased.kyc_events,
                    "kycSubjects": erased.kyc_subjects,
                }),
            )?;
            Ok::<_, StoreError>(erased)
        })?;
        erased.scrubbed = self.scrub();
        Ok(erased)
    }

    /// Moves the write-ahead log into the database file and truncates it, so that the erased
    /// bytes are gone from both (SQLite; a reader holding an old snapshot can delay it, so it
    /// is tried a few times). `false` on PostgreSQL.
    fn scrub(&self) -> bool {
        if self.store.path().is_none() {
            return false;
        }
        for _ in 0..20 {
            match self.store.checkpoint() {
                Ok(true) => return true,
                Ok(false) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    tracing::warn!(error = %e, "truncating the write-ahead log failed");
                    return false;
                }
            }
        }
        false
    }
}

/// Erases one issuance's personal data, leaving it in `state`. Its new MAC covers the erased
/// row only if the old one verified: a row keyhost did not write stays unauthenticated.
fn erase_issuance(
    tx: &store::Tx<'_>,
    auth: &RowAuth,
    row: &store::issuances::IssuanceRow,
    state: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mac = auth.issuance_ok(row).then(|| {
        let mut erased = row.clone();
        erased.email = String::new();
        erased.credential_subject = json!({});
        erased.idempotency_key = None;
        auth.issuance_mac(&erased)
    });
    if state == "failed" && row.state != "failed" {
        tracing::info!(issuance = %row.id, "an issuance in progress was stopped: its personal data was erased on request");
    }
    store::issuances::erase(tx, &row.id, now, state, mac)
}
