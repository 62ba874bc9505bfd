//! The issuance proxy: asks AIR Kit to issue a credential on a user's behalf and follows it to
//! `ONCHAIN`, durably.
//!
//! Guarantees:
//! - every issuance is a row written *before* the first upstream call and updated after each, so
//!   a crash or an outage loses nothing; on start the server resumes every unfinished row;
//! - an `Idempotency-Key` returns the earlier issuance instead of issuing twice (a reused key with
//!   a different request is a conflict; the order of a request's members does not make it
//!   different);
//! - 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter,
//!   honouring `Retry-After`, with a fresh Partner JWT per attempt, up to `max_attempts`; then the
//!   issuance is parked as `stalled` (resumable by an admin), never dropped;
//! - 400/401/403/404/409 are never retried; the record carries AIR's status and message and the
//!   fix from AIR Kit's error reference;
//! - an answer too large to be AIR Kit's (over [`crate::airkit::MAX_ANSWER_BYTES`]) is not
//!   retried either, since retrying cannot change it, but the issuance is parked as `stalled`
//!   (resumable), not `failed`: AIR did not refuse it and may even have accepted it;
//! - a duplicate answered with `onDuplicate: "ignore"` is the existing issuance, not a failure;
//! - accepted issuances are polled from 1 s, doubling, capped at 30 s, until `ONCHAIN` or the
//!   deadline (`unconfirmed`);
//! - an admin's resume and its audit row commit together.
//!
//! At-least-once: a crash after AIR accepted a request but before the row was updated makes the
//! resumed issuance call AIR again; with `onDuplicate: "revoke"` (the default) AIR reissues, with
//! `"ignore"` it answers with the existing credential.
//!
//! Layout: this file is the service's face; [`state`] holds the record and its enums,
//! [`policy`] the pure rules (retry, backoff, poll schedule, AIR's answers and statuses),
//! `worker` drives attempts and polls, `status` proxies status checks, `upstream` makes the
//! calls to AIR Kit, `idempotency` hashes requests, `backlog` measures the unfinished issuances
//! for the metrics, and `records` is the only way to the store. Every wait of a worker goes
//! through the injected [`Clock`], so tests drive retries and polls by advancing a manual clock.

mod backlog;
mod claims;
mod idempotency;
pub mod policy;
mod records;
pub mod state;
mod status;
mod upstream;
mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast};

use crate::airkit::AirKit;
use crate::clock::{Clock, ClockSkew, UnixTime};
use crate::integrity::RowAuth;
use crate::keys::Alg;
use crate::log_limit::LogLimiter;
use crate::metrics::{Metrics, StateLabel};
use crate::mint::Minter;
use crate::store::issuances::IssuanceRow;
use crate::store::{Store, StoreError};

pub use self::backlog::{BACKLOG_EVERY, Backlog};
pub use self::state::{
    Issuance, IssuanceSource, IssuanceState, IssuanceView, OnDuplicate, UnknownName, Webhook,
};
pub use self::status::StatusError;
pub use self::upstream::NoToken;

use self::idempotency::HashedRequest;
use self::policy::{Backoff, PollSchedule};

/// How the proxy behaves: the `[airkit]` section of the configuration, as it is.
pub type IssuanceSettings = crate::config::AirKitSettings;

impl IssuanceSettings {
    /// The retry delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first: self.backoff,
            max: self.backoff_max,
        }
    }

    /// The status polls.
    pub fn polls(&self) -> PollSchedule {
        PollSchedule {
            interval: self.poll_interval,
            deadline: self.poll_deadline,
        }
    }
}

/// Upstream calls in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// A request to issue.
#[derive(Debug, Clone)]
pub struct NewIssuance {
    /// Who asks.
    pub source: IssuanceSource,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// The user's email.
    pub email: String,
    /// Issuer DID (defaults from configuration).
    pub issuer_did: Option<String>,
    /// Program id (defaults from configuration).
    pub credential_id: Option<String>,
    /// Credential data.
    pub credential_subject: Value,
    /// What AIR does with a duplicate (default `revoke`).
    pub on_duplicate: Option<OnDuplicate>,
}

/// Why an issuance could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    /// Issuance is not configured.
    #[error("{0}")]
    NotConfigured(String),
    /// A required value is missing.
    #[error("{0}")]
    Missing(String),
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The idempotency key was used for a different request.
    #[error("idempotency key {0:?} was already used for a different request")]
    IdempotencyConflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// AIR accepted or refused it, or it stalled.
    Answer,
    /// It is on chain (or can no longer get there).
    Onchain,
}

impl WaitFor {
    /// Whether an issuance in `state` is what is waited for.
    pub fn reached(self, state: IssuanceState) -> bool {
        match self {
            Self::Answer => state != IssuanceState::Queued,
            Self::Onchain => !state.is_pending(),
        }
    }
}

/// AIR Kit as the proxy reaches it: the client (`None`: issuance not configured) and the monitor
/// that compares keyhost's clock with the `Date` of its answers.
pub struct Upstream {
    /// The AIR Kit client.
    pub airkit: Option<Arc<dyn AirKit>>,
    /// keyhost's clock against AIR Kit's.
    pub skew: Arc<ClockSkew>,
    /// Algorithm of the Partner JWTs sent to it.
    pub alg: Alg,
}

/// The issuance proxy.
pub struct IssuanceService {
    store: Arc<Store>,
    row_auth: Arc<RowAuth>,
    skew: Arc<ClockSkew>,
    airkit: Option<Arc<dyn AirKit>>,
    alg: Alg,
    minter: Arc<Minter>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: IssuanceSettings,
    rng: SystemRandom,
    updates: broadcast::Sender<String>,
    in_flight: Semaphore,
    driving: Mutex<HashSet<String>>,
    claims: std::sync::OnceLock<claims::Claims>,
}

impl std::fmt::Debug for IssuanceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuanceService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn random_id(rng: &SystemRandom, prefix: &str) -> String {
    let mut raw = [0u8; 12];
    rng.fill(&mut raw).expect("the system RNG works");
    format!("{prefix}{}", hex::encode(raw))
}

impl IssuanceService {
    /// A service sending to `airkit` (`None`: issuance not configured).
    pub fn new(
        store: Arc<Store>,
        row_auth: Arc<RowAuth>,
        upstream: Upstream,
        minter: Arc<Minter>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: IssuanceSettings,
    ) -> Arc<Self> {
        // Every state's counter and the backlog's gauges from the start, so that the first
        // issuance to stall is an increase a rule can see.
        for state in IssuanceState::ALL {
            let label = StateLabel {
                state: state.as_str().into(),
            };
            let _ = metrics.issuances.get_or_create(&label);
            if state.is_pending() {
                let _ = metrics.issuances_unfinished.get_or_create(&label);
            }
        }
        Arc::new(Self {
            store,
            row_auth,
            skew: upstream.skew,
            airkit: upstream.airkit,
            alg: upstream.alg,
            minter,
            clock,
            metrics,
            settings,
            rng: SystemRandom::new(),
            updates: broadcast::channel(1024).0,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            driving: Mutex::default(),
            claims: std::sync::OnceLock::new(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &IssuanceSettings {
        &self.settings
    }

    fn airkit(&self) -> Result<&Arc<dyn AirKit>, IssuanceError> {
        self.airkit.as_ref().ok_or_else(|| {
            IssuanceError::NotConfigured(
                "issuance is not configured: set KEYHOST_AIRKIT_ENV=sandbox|production or \
                 KEYHOST_AIRKIT_BASE_URL"
                    .into(),
            )
        })
    }

    /// Records an issuance (or finds the earlier one with the same idempotency key) and starts
    /// driving it. Returns the issuance and whether it was created now.
    pub async fn submit(
        self: &Arc<Self>,
        req: NewIssuance,
    ) -> Result<(Issuance, bool), IssuanceError> {
        self.airkit()?;
        if self.minter.partner_id().is_none() {
            return Err(IssuanceError::NotConfigured(
                "KEYHOST_PARTNER_ID is not set, so no Partner JWT can be minted".into(),
            ));
        }
        let issuer_did = req
            .issuer_did
            .or_else(|| self.settings.issuer_did.clone())
            .ok_or_else(|| {
                IssuanceError::Missing("issuerDid is required (or set KEYHOST_ISSUER_DID)".into())
            })?;
        let credential_id = req
            .credential_id
            .or_else(|| self.settings.credential_id.clone())
            .ok_or_else(|| {
                IssuanceError::Missing(
                    "credentialId is required (or set KEYHOST_CREDENTIAL_ID)".into(),
                )
            })?;
        if issuer_did.trim().is_empty() || credential_id.trim().is_empty() {
            return Err(IssuanceError::Invalid(
                "issuerDid and credentialId must not be empty".into(),
            ));
        }
        let on_duplicate = req.on_duplicate.unwrap_or_default();
        if !req.credential_subject.is_object() {
            return Err(IssuanceError::Invalid(
                "credentialSubject must be an object".into(),
            ));
        }
        let hashes = HashedRequest {
            source: &req.source,
            email: &req.email,
            issuer_did: &issuer_did,
            credential_id: &credential_id,
            credential_subject: &req.credential_subject,
            on_duplicate,
        }
        .hashes();
        let now = self.clock.now();
        let mut new = Issuance {
            id: random_id(&self.rng, "iss_"),
            source: req.source,
            idempotency_key: req.idempotency_key,
            request_hash: hashes.canonical.clone(),
            email: req.email,
            issuer_did,
            credential_id,
            credential_subject: req.credential_subject,
            on_duplicate,
            state: IssuanceState::Queued,
            attempts: 0,
            next_attempt_at: Some(now),
            core_claim_hash: None,
            user_uuid: None,
            duplicate: false,
            vc_status: None,
            vc_id: None,
            issuance_date: None,
            polls: 0,
            last_status: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            submitted_at: None,
            completed_at: None,
            mac: None,
            erased_at: None,
        };
        new.mac = Some(self.row_auth.issuance_mac(&IssuanceRow::from(&new)));
        let (issuance, created) = records::insert_unless_replay(&self.store, new).await?;
        if !created {
            if !hashes.matches(&issuance.request_hash) {
                return Err(IssuanceError::IdempotencyConflict(
                    issuance.idempotency_key.unwrap_or_default(),
                ));
            }
            if issuance.state.is_pending() {
                self.spawn(issuance.id.clone());
            }
            return Ok((issuance, false));
        }
        self.count_state(IssuanceState::Queued);
        tracing::info!(issuance = %issuance.id, source = %issuance.source, "issuance recorded");
        self.spawn(issuance.id.clone());
        Ok((issuance, true))
    }

    /// One issuance.
    pub async fn get(&self, id: &str) -> Result<Option<Issuance>, StoreError> {
        records::get(&self.store, id).await
    }

    /// Waits until the issuance reaches what `until` asks for, or for `timeout` on the service's
    /// clock; returns its latest state.
    pub async fn wait(
        &self,
        id: &str,
        until: WaitFor,
        timeout: Duration,
    ) -> Result<Issuance, StoreError> {
        let mut updates = self.updates.subscribe();
        let mut deadline = self.clock.sleep(timeout);
        loop {
            let issuance = self
                .get(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("issuance {id} vanished")))?;
            if until.reached(issuance.state) {
                return Ok(issuance);
            }
            loop {
                tokio::select! {
                    () = &mut deadline => return Ok(issuance),
                    // Another server may be driving it: look at the record now and then.
                    () = async {
                        let elsewhere = self.claims.get().is_some()
                            && !self
                                .driving
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .contains(id);
                        if elsewhere {
                            tokio::time::sleep(Duration::from_millis(500)).await
                        } else {
                            std::future::pending().await
                        }
                    } => break,
                    changed = updates.recv() => match changed {
                        Ok(changed) if changed == id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(issuance),
                    },
                }
            }
        }
    }

    /// Starts driving every unfinished issuance (after a start or restart).
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        if self.airkit.is_none() {
            return Ok(0);
        }
        let found = records::unfinished(&self.store).await?;
        for bad in &found.unreadable {
            self.row_auth.failures.table("issuances").inc();
            tracing::error!(issuance = %bad.id, why = %bad.why, "an unfinished issuance cannot be read; it is left alone");
        }
        for issuance in &found.rows {
            self.spawn(issuance.id.clone());
        }
        if !found.rows.is_empty() {
            tracing::info!(count = found.rows.len(), "resuming unfinished issuances");
        }
        Ok(found.rows.len())
    }

    /// Puts a stalled or unconfirmed issuance back to work, and records that `actor` did, in
    /// one transaction.
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        actor: &str,
    ) -> Result<Option<Issuance>, IssuanceError> {
        self.airkit()?;
        let Some(mut issuance) = self.get(id).await? else {
            return Ok(None);
        };
        if !self.authentic(&issuance) {
            return Err(IssuanceError::Invalid(format!(
                "issuance {id} fails its integrity check (it was not recorded by keyhost) and is \
                 never sent"
            )));
        }
        if issuance.erased_at.is_some() {
            return Err(IssuanceError::Invalid(format!(
                "issuance {id}'s personal data was erased: it cannot be sent again"
            )));
        }
        let not_resumable = |state: IssuanceState| {
            IssuanceError::Invalid(format!(
                "issuance {id} is {state}; only stalled or unconfirmed issuances can be resumed"
            ))
        };
        let from = issuance.state;
        let next = from.resumed().ok_or_else(|| not_resumable(from))?;
        let now = self.clock.now();
        issuance.state = next;
        issuance.attempts = 0;
        issuance.polls = 0;
        issuance.next_attempt_at = Some(now);
        issuance.updated_at = now;
        if next == IssuanceState::Submitted {
            issuance.submitted_at = Some(now);
        }
        let audit = records::Audit {
            at: now,
            actor,
            action: "issuance.resume",
        };
        if !records::save_audited_if(&self.store, &issuance, from, audit).await? {
            // Changed meanwhile (resumed by someone else): report what it is now.
            let state = self.get(id).await?.map_or(from, |i| i.state);
            return Err(not_resumable(state));
        }
        self.announce(&issuance);
        self.spawn(issuance.id.clone());
        Ok(Some(issuance))
    }

    /// Issuances, newest first, optionally only those in `state`.
    pub async fn list(
        &self,
        state: Option<IssuanceState>,
        limit: u32,
    ) -> Result<Vec<Issuance>, StoreError> {
        let found = records::list(&self.store, state, limit).await?;
        for bad in &found.unreadable {
            tracing::error!(issuance = %bad.id, why = %bad.why, "an issuance cannot be read; it is left out");
        }
        Ok(found.rows)
    }

    /// The time source.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Whether the issuance's request was recorded by keyhost (its MAC verifies); a forged one
    /// is reported and never sent.
    fn authentic(&self, issuance: &Issuance) -> bool {
        if self.row_auth.issuance_ok(&IssuanceRow::from(issuance)) {
            return true;
        }
        self.row_auth.failures.table("issuances").inc();
        static REPORTS: LogLimiter = LogLimiter::new(Duration::from_secs(60));
        if let Some(suppressed) = REPORTS.allow() {
            tracing::error!(
                issuance = %issuance.id,
                suppressed,
                "an issuance fails its integrity check (not recorded by keyhost): it is not sent \
                 to AIR Kit"
            );
        }
        false
    }

    /// Writes the issuance's mutable part and tells waiters it changed.
    async fn save(&self, issuance: &Issuance) -> Result<(), StoreError> {
        if let Some(claims) = self.claims() {
            // Only while this server holds the claim: one whose claim was taken over must not
            // write over the record its successor keeps.
            if !records::save_claimed(&self.store, issuance, &claims.holder).await? {
                tracing::warn!(
                    issuance = %issuance.id,
                    "another server took this issuance over; this one's result is not recorded"
                );
                self.release(&issuance.id);
                return Ok(());
            }
        } else {
            records::save(&self.store, issuance).await?;
        }
        self.announce(issuance);
        Ok(())
    }

    fn announce(&self, issuance: &Issuance) {
        let _ = self.updates.send(issuance.id.clone());
    }

    fn count_state(&self, state: IssuanceState) {
        self.metrics
            .issuances
            .get_or_create(&StateLabel {
                state: state.as_str().into(),
            })
            .inc();
    }
}
