//! The issuance proxy: asks AIR Kit to issue a credential on a user's behalf and follows it to
//! `ONCHAIN`, durably.
//!
//! Guarantees:
//! - every issuance is a row written *before* the first upstream call and updated after each, so
//!   a crash or an outage loses nothing; on start the server resumes every unfinished row;
//! - an `Idempotency-Key` returns the earlier issuance instead of issuing twice (a reused key with
//!   a different request is a conflict);
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
//!   deadline (`unconfirmed`).
//!
//! At-least-once: a crash after AIR accepted a request but before the row was updated makes the
//! resumed issuance call AIR again; with `onDuplicate: "revoke"` (the default) AIR reissues, with
//! `"ignore"` it answers with the existing credential.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, broadcast};

use crate::airkit::{AirKit, Reply, TransportError, hint};
use crate::clock::{Clock, ClockSkew, UnixTime, rfc3339};
use crate::integrity::RowAuth;
use crate::keys::Alg;
use crate::live::LiveKeys;
use crate::log_limit::LogLimiter;
use crate::metrics::{KidLabel, Metrics, StateLabel, UpstreamLabels};
use crate::signer::{MAX_TOKEN_TTL, TokenClaims};
use crate::store::issuances::IssuanceRow;
use crate::store::{self, Store, StoreError};

/// Issuance states.
pub mod state {
    /// Recorded; AIR has not accepted it yet (first attempt or retrying).
    pub const QUEUED: &str = "queued";
    /// AIR accepted it; waiting for `ONCHAIN`.
    pub const SUBMITTED: &str = "submitted";
    /// The credential is on chain.
    pub const ONCHAIN: &str = "onchain";
    /// AIR refused it (400/401/403/404/409); not retried.
    pub const FAILED: &str = "failed";
    /// The retry budget ran out on transient errors; an admin can resume it.
    pub const STALLED: &str = "stalled";
    /// Accepted but not `ONCHAIN` by the deadline.
    pub const UNCONFIRMED: &str = "unconfirmed";
    /// Every state.
    pub const ALL: [&str; 6] = [QUEUED, SUBMITTED, ONCHAIN, FAILED, STALLED, UNCONFIRMED];
}

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct IssuanceSettings {
    /// `partnerId` of the Partner JWTs.
    pub partner_id: Option<String>,
    /// `scope` of the Partner JWTs.
    pub scope: String,
    /// Algorithm of the Partner JWTs.
    pub alg: Alg,
    /// Default issuer DID.
    pub issuer_did: Option<String>,
    /// Default program id.
    pub credential_id: Option<String>,
    /// Upstream attempts before parking.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// First status poll delay (doubles up to 30 s).
    pub poll_interval: Duration,
    /// How long to follow the status.
    pub poll_deadline: Duration,
}

/// Longest delay between status polls.
const POLL_CAP: Duration = Duration::from_secs(30);
/// Upstream calls in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// A request to issue.
#[derive(Debug, Clone)]
pub struct NewIssuance {
    /// Client id or webhook name.
    pub source: String,
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
    /// `ignore` or `revoke` (default).
    pub on_duplicate: Option<String>,
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

/// An issuance as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Issuance)]
pub struct IssuanceView {
    /// keyhost's issuance id.
    pub issuance_id: String,
    /// State.
    pub state: String,
    /// Who asked: the client id, or `webhook:kyc` / `webhook:idenfy`.
    pub source: String,
    /// The user's email.
    pub email: String,
    /// Issuer DID.
    pub issuer_did: String,
    /// Program id.
    pub credential_id: String,
    /// The credential data sent to AIR Kit.
    #[schema(value_type = Object)]
    pub credential_subject: Value,
    /// `revoke` or `ignore`.
    pub on_duplicate: String,
    /// Upstream attempts.
    pub attempts: u32,
    /// AIR's issuance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_claim_hash: Option<String>,
    /// AIR's user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_uuid: Option<String>,
    /// AIR reported an existing credential.
    pub duplicate: bool,
    /// Last `vcStatus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vc_status: Option<String>,
    /// Credential id once on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vc_id: Option<String>,
    /// AIR's issuance date once on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuance_date: Option<String>,
    /// Last upstream status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Last error and its fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Next attempt or poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// Created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&IssuanceRow> for IssuanceView {
    fn from(r: &IssuanceRow) -> Self {
        let pending = matches!(r.state.as_str(), state::QUEUED | state::SUBMITTED);
        Self {
            issuance_id: r.id.clone(),
            state: r.state.clone(),
            source: r.source.clone(),
            email: r.email.clone(),
            issuer_did: r.issuer_did.clone(),
            credential_id: r.credential_id.clone(),
            credential_subject: r.credential_subject.clone(),
            on_duplicate: r.on_duplicate.clone(),
            attempts: r.attempts,
            core_claim_hash: r.core_claim_hash.clone(),
            user_uuid: r.user_uuid.clone(),
            duplicate: r.duplicate,
            vc_status: r.vc_status.clone(),
            vc_id: r.vc_id.clone(),
            issuance_date: r.issuance_date.clone(),
            last_status: r.last_status,
            last_error: r.last_error.clone(),
            next_attempt_at: r.next_attempt_at.filter(|_| pending).map(rfc3339),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// AIR accepted or refused it, or it stalled.
    Answer,
    /// It is on chain (or can no longer get there).
    Onchain,
}

/// AIR Kit as the proxy reaches it: the client (`None`: issuance not configured) and the monitor
/// that compares keyhost's clock with the `Date` of its answers.
pub struct Upstream {
    /// The AIR Kit client.
    pub airkit: Option<Arc<dyn AirKit>>,
    /// keyhost's clock against AIR Kit's.
    pub skew: Arc<ClockSkew>,
}

/// The issuance proxy.
pub struct IssuanceService {
    store: Arc<Store>,
    row_auth: Arc<RowAuth>,
    skew: Arc<ClockSkew>,
    airkit: Option<Arc<dyn AirKit>>,
    live: Arc<LiveKeys>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: IssuanceSettings,
    rng: SystemRandom,
    updates: broadcast::Sender<String>,
    in_flight: Semaphore,
    driving: Mutex<HashSet<String>>,
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

fn is_transient(status: u16) -> bool {
    status == 429 || status >= 500 || status == 408
}

impl IssuanceService {
    /// A service sending to `airkit` (`None`: issuance not configured).
    pub fn new(
        store: Arc<Store>,
        row_auth: Arc<RowAuth>,
        upstream: Upstream,
        live: Arc<LiveKeys>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: IssuanceSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            row_auth,
            skew: upstream.skew,
            airkit: upstream.airkit,
            live,
            clock,
            metrics,
            settings,
            rng: SystemRandom::new(),
            updates: broadcast::channel(1024).0,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            driving: Mutex::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &IssuanceSettings {
        &self.settings
    }

    fn airkit(&self) -> Result<&Arc<dyn AirKit>, IssuanceError> {
        self.airkit.as_ref().ok_or_else(|| {
            IssuanceError::NotConfigured(
                "issuance is not configured: set KEYHOST_AIRKIT_ENV=sandbox|production or KEYHOST_AIRKIT_BASE_URL"
                    .into(),
            )
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Corrupt(format!("blocking task failed: {e}")))?
    }

    /// Records an issuance (or finds the earlier one with the same idempotency key) and starts
    /// driving it. Returns the row and whether it was created now.
    pub async fn submit(
        self: &Arc<Self>,
        req: NewIssuance,
    ) -> Result<(IssuanceRow, bool), IssuanceError> {
        self.airkit()?;
        if self.settings.partner_id.is_none() {
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
        let on_duplicate = req.on_duplicate.unwrap_or_else(|| "revoke".into());
        if on_duplicate != "ignore" && on_duplicate != "revoke" {
            return Err(IssuanceError::Invalid(
                "onDuplicate must be \"ignore\" or \"revoke\"".into(),
            ));
        }
        if !req.credential_subject.is_object() {
            return Err(IssuanceError::Invalid(
                "credentialSubject must be an object".into(),
            ));
        }
        // A webhook's subject carries the time keyhost received it (`verifiedAt`): a redelivery
        // of the same event is the same request although that time differs.
        let mut hashed_subject = req.credential_subject.clone();
        if req.source.starts_with("webhook:")
            && let Some(subject) = hashed_subject.as_object_mut()
        {
            subject.remove("verifiedAt");
        }
        let canonical = json!({
            "email": req.email, "issuerDid": issuer_did, "credentialId": credential_id,
            "credentialSubject": hashed_subject, "onDuplicate": on_duplicate,
        });
        let request_hash = hex::encode(crate::auth::sha256(canonical.to_string().as_bytes()));
        let now = self.clock.now();
        let row = IssuanceRow {
            id: random_id(&self.rng, "iss_"),
            source: req.source.clone(),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: request_hash.clone(),
            email: req.email,
            issuer_did,
            credential_id,
            credential_subject: req.credential_subject,
            on_duplicate,
            state: state::QUEUED.into(),
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
        };
        let row = IssuanceRow {
            mac: Some(self.row_auth.issuance_mac(&row)),
            ..row
        };
        let key = req.idempotency_key.clone();
        let to_insert = row.clone();
        let (row, created) = self
            .blocking(move |store| {
                store.blocking_write(|tx| {
                    if let Some(key) = &key
                        && let Some(existing) =
                            store::issuances::by_idempotency_key(tx, &to_insert.source, key)?
                    {
                        return Ok((existing, false));
                    }
                    store::issuances::insert(tx, &to_insert)?;
                    Ok((to_insert, true))
                })
            })
            .await?;
        if !created {
            if row.request_hash != request_hash {
                return Err(IssuanceError::IdempotencyConflict(
                    req.idempotency_key.unwrap_or_default(),
                ));
            }
            if matches!(row.state.as_str(), state::QUEUED | state::SUBMITTED) {
                self.spawn(row.id.clone());
            }
            return Ok((row, false));
        }
        self.count_state(state::QUEUED);
        tracing::info!(issuance = %row.id, source = %row.source, "issuance recorded");
        self.spawn(row.id.clone());
        Ok((row, true))
    }

    /// One issuance.
    pub async fn get(&self, id: &str) -> Result<Option<IssuanceRow>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |s| s.blocking_read(|tx| store::issuances::get(tx, &id)))
            .await
    }

    /// Waits until the issuance reaches what `until` asks for, or `timeout`; returns its latest row.
    pub async fn wait(
        &self,
        id: &str,
        until: WaitFor,
        timeout: Duration,
    ) -> Result<IssuanceRow, StoreError> {
        let mut updates = self.updates.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self
                .get(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("issuance {id} vanished")))?;
            let done = match until {
                WaitFor::Answer => row.state != state::QUEUED,
                WaitFor::Onchain => row.state != state::QUEUED && row.state != state::SUBMITTED,
            };
            if done {
                return Ok(row);
            }
            loop {
                match tokio::time::timeout_at(deadline, updates.recv()).await {
                    Err(_) => return Ok(row),
                    Ok(Ok(changed)) if changed == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(row),
                }
            }
        }
    }

    /// Starts driving every unfinished issuance (after a start or restart).
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        if self.airkit.is_none() {
            return Ok(0);
        }
        let found = self
            .blocking(|s| s.blocking_read(store::issuances::unfinished))
            .await?;
        for bad in &found.unreadable {
            self.row_auth.failures.table("issuances").inc();
            tracing::error!(issuance = %bad.id, why = %bad.why, "an unfinished issuance cannot be read; it is left alone");
        }
        let rows = found.rows;
        for row in &rows {
            self.spawn(row.id.clone());
        }
        if !rows.is_empty() {
            tracing::info!(count = rows.len(), "resuming unfinished issuances");
        }
        Ok(rows.len())
    }

    /// Puts a stalled or unconfirmed issuance back to work.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<Option<IssuanceRow>, IssuanceError> {
        self.airkit()?;
        let Some(mut row) = self.get(id).await? else {
            return Ok(None);
        };
        if !self.authentic(&row) {
            return Err(IssuanceError::Invalid(format!(
                "issuance {id} fails its integrity check (it was not recorded by keyhost) and is \
                 never sent"
            )));
        }
        let next = match row.state.as_str() {
            state::STALLED => state::QUEUED,
            state::UNCONFIRMED => state::SUBMITTED,
            other => {
                return Err(IssuanceError::Invalid(format!(
                    "issuance {id} is {other}; only stalled or unconfirmed issuances can be resumed"
                )));
            }
        };
        let now = self.clock.now();
        row.state = next.into();
        row.attempts = 0;
        row.polls = 0;
        row.next_attempt_at = Some(now);
        row.updated_at = now;
        if next == state::SUBMITTED {
            row.submitted_at = Some(now);
        }
        self.save(&row).await?;
        self.spawn(row.id.clone());
        Ok(Some(row))
    }

    /// Whether the issuance's request was recorded by keyhost (its MAC verifies); a forged one
    /// is reported and never sent.
    fn authentic(&self, row: &IssuanceRow) -> bool {
        if self.row_auth.issuance_ok(row) {
            return true;
        }
        self.row_auth.failures.table("issuances").inc();
        static REPORTS: LogLimiter = LogLimiter::new(Duration::from_secs(60));
        if let Some(suppressed) = REPORTS.allow() {
            tracing::error!(
                issuance = %row.id,
                suppressed,
                "an issuance fails its integrity check (not recorded by keyhost): it is not sent \
                 to AIR Kit"
            );
        }
        false
    }

    fn spawn(self: &Arc<Self>, id: String) {
        {
            let mut driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
            if !driving.insert(id.clone()) {
                return;
            }
        }
        /// Takes the id out of the running set however the worker ends, panics included.
        struct Running(Arc<IssuanceService>, String);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0
                    .driving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.1);
            }
        }
        let running = Running(self.clone(), id);
        tokio::spawn(async move {
            let (me, id) = (&running.0, &running.1);
            // A store error (a busy database, a full disk) must not strand the issuance: the row
            // is the truth, so wait and carry on from it.
            while let Err(e) = me.drive(id).await {
                tracing::error!(issuance = %id, error = %e, "issuance worker failed; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    async fn save(&self, row: &IssuanceRow) -> Result<(), StoreError> {
        let to_save = row.clone();
        self.blocking(move |s| s.blocking_write(|tx| store::issuances::save(tx, &to_save)))
            .await?;
        let _ = self.updates.send(row.id.clone());
        Ok(())
    }

    fn count_state(&self, s: &str) {
        self.metrics
            .issuances
            .get_or_create(&StateLabel { state: s.into() })
            .inc();
    }

    /// Counts an upstream answer, and compares keyhost's clock with the answer's `Date`.
    fn count_upstream(&self, endpoint: &str, outcome: &Result<Reply, TransportError>) {
        if let Ok(Reply {
            date: Some(theirs), ..
        }) = outcome
        {
            self.skew.observe(self.clock.now(), *theirs);
        }
        let outcome = match outcome {
            Ok(r) => r.status.to_string(),
            Err(TransportError::Timeout(_)) => "timeout".into(),
            Err(TransportError::Connect(_)) => "connect".into(),
            Err(TransportError::Other(_)) => "error".into(),
            Err(TransportError::TooLarge { .. }) => "too_large".into(),
        };
        self.metrics
            .airkit_responses
            .get_or_create(&UpstreamLabels {
                endpoint: endpoint.into(),
                outcome,
            })
            .inc();
    }

    /// A fresh Partner JWT for `email`, and the kid that signed it.
    fn token(&self, email: &str) -> Result<(String, String), NoToken> {
        let partner_id = self
            .settings
            .partner_id
            .as_deref()
            .ok_or_else(|| NoToken::Unavailable("KEYHOST_PARTNER_ID is not set".into()))?;
        let now = self.clock.now();
        let signers = self.live.signers();
        let alg = self.settings.alg;
        let key = match signers.active.get(&alg) {
            Some(k) if k.signable_at <= now => k,
            Some(k) => return Err(NoToken::NotYet(alg, Some(k.signable_at))),
            None => {
                return Err(NoToken::NotYet(
                    alg,
                    signers.next_signable.get(&alg).copied(),
                ));
            }
        };
        let minted = key
            .mint(
                &self.rng,
                now,
                TokenClaims {
                    partner_id,
                    scope: &self.settings.scope,
                    email,
                    ttl: MAX_TOKEN_TTL,
                },
            )
            .map_err(|e| NoToken::Unavailable(e.to_string()))?;
        self.metrics.minted(self.settings.alg);
        Ok((minted.token, key.kid.clone()))
    }

    fn note_unauthorized(&self, kid: &str, endpoint: &str, reply: &Reply) {
        self.metrics
            .airkit_unauthorized
            .get_or_create(&KidLabel { kid: kid.into() })
            .inc();
        tracing::warn!(
            kid,
            endpoint,
            message = %reply.message(),
            "AIR Kit rejected a Partner JWT signed by a key keyhost holds: has it fetched the JWKS?"
        );
    }

    fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .settings
            .backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
            .min(self.settings.backoff_max);
        // "Equal jitter": half fixed, half random, so retries from a burst spread out.
        let mut r = [0u8; 4];
        let _ = self.rng.fill(&mut r);
        let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        let delay = exp / 2 + exp.mul_f64(frac / 2.0);
        delay.max(retry_after.unwrap_or_default())
    }

    /// How many polls the schedule (from the poll interval, doubling, capped) makes within the
    /// poll deadline. The deadline is counted in polls rather than on the wall clock, so that a
    /// clock that jumps ahead (or a long downtime) does not cut the following of an issuance short.
    fn polls_within_deadline(&self) -> u32 {
        let (mut total, mut polls, mut delay) = (Duration::ZERO, 0u32, self.settings.poll_interval);
        while total < self.settings.poll_deadline && polls < 100_000 {
            total += delay;
            polls += 1;
            delay = (delay * 2).min(POLL_CAP);
        }
        polls.max(1)
    }

    /// Waits until the row's next attempt or poll is due, but never longer than the delay that
    /// was scheduled (`next_attempt_at - updated_at`, both written under the same clock): a due
    /// time written while the wall clock was ahead (a host that booted before NTP corrected it)
    /// must not park the issuance for as long as the clock was wrong.
    async fn sleep_until_due(&self, row: &IssuanceRow) {
        if let Some(at) = row.next_attempt_at {
            let scheduled = (at - row.updated_at).max(0);
            let secs = (at - self.clock.now()).min(scheduled);
            if secs > 0 {
                tokio::time::sleep(Duration::from_secs(secs as u64)).await;
            }
        }
    }

    async fn drive(&self, id: &str) -> Result<(), StoreError> {
        if self.airkit.is_none() {
            return Ok(());
        }
        let Some(mut row) = self.get(id).await? else {
            return Ok(());
        };
        if !self.authentic(&row) {
            return Ok(());
        }
        // After a restart, honour a delay that was scheduled before it.
        self.sleep_until_due(&row).await;
        while row.state == state::QUEUED {
            let delay = self.attempt(&mut row).await?;
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
        }
        let mut delay = self
            .settings
            .poll_interval
            .saturating_mul(1u32 << row.polls.min(16))
            .min(POLL_CAP);
        while row.state == state::SUBMITTED {
            tokio::time::sleep(delay).await;
            self.poll(&mut row).await?;
            delay = (delay * 2).min(POLL_CAP);
        }
        Ok(())
    }

    /// One issue attempt; returns the delay before the next one, if any.
    async fn attempt(&self, row: &mut IssuanceRow) -> Result<Option<Duration>, StoreError> {
        let airkit = match self.airkit() {
            Ok(a) => a.clone(),
            Err(_) => return Ok(None),
        };
        let body = json!({
            "issuerDid": row.issuer_did,
            "credentialId": row.credential_id,
            "credentialSubject": row.credential_subject,
            "onDuplicate": row.on_duplicate,
        });
        row.attempts += 1;
        let outcome = match self.token(&row.email) {
            Ok((token, kid)) => {
                let _permit = self.in_flight.acquire().await.expect("never closed");
                let result = airkit.issue_on_behalf(&token, &body).await;
                self.count_upstream("issue", &result);
                Some((result, kid))
            }
            Err(NoToken::NotYet(alg, until)) => {
                // Nothing was sent: keyhost itself has no key that may sign yet (a key being
                // replaced, a clock set back). That is not AIR Kit's failure: wait for the key
                // without spending the retry budget.
                row.attempts -= 1;
                let now = self.clock.now();
                let wait = until.map_or(5, |t| t - now).clamp(1, 60);
                row.updated_at = now;
                row.next_attempt_at = Some(now + wait);
                row.last_error = Some(format!(
                    "waiting for a signing key: no {alg} key may sign yet{}",
                    until.map_or(String::new(), |t| format!(" (until {})", rfc3339(t)))
                ));
                self.save(row).await?;
                return Ok(Some(Duration::from_secs(wait as u64)));
            }
            Err(why) => {
                row.last_error = Some(format!("cannot mint a Partner JWT: {why}"));
                None
            }
        };
        let now = self.clock.now();
        row.updated_at = now;
        let mut retry_after = None;
        // Set when retrying cannot help: park now rather than spend the retry budget.
        let mut park_now = false;
        match outcome {
            Some((Ok(reply), kid)) => {
                row.last_status = Some(reply.status);
                let hash = reply.body.get("coreClaimHash").and_then(Value::as_str);
                if (200..300).contains(&reply.status) || (reply.status == 409 && hash.is_some()) {
                    row.state = state::SUBMITTED.into();
                    row.duplicate = reply.status == 409;
                    row.core_claim_hash = hash.map(str::to_owned);
                    row.user_uuid = reply
                        .body
                        .get("userUuid")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    row.vc_status = Some("WAIT_ONCHAIN".into());
                    row.submitted_at = Some(now);
                    row.last_error = None;
                    row.next_attempt_at = Some(now + self.settings.poll_interval.as_secs() as i64);
                    if row.core_claim_hash.is_none() {
                        row.state = state::FAILED.into();
                        row.last_error =
                            Some("AIR Kit accepted the request but sent no coreClaimHash".into());
                        row.completed_at = Some(now);
                    }
                    self.save(row).await?;
                    self.count_state(&row.state);
                    tracing::info!(issuance = %row.id, hash = ?row.core_claim_hash, duplicate = row.duplicate, "issuance accepted");
                    return Ok(None);
                }
                let message = format!(
                    "AIR Kit answered {}: {}. Fix: {}",
                    reply.status,
                    reply.message(),
                    hint::for_status(reply.status)
                );
                if reply.status == 401 {
                    self.note_unauthorized(&kid, "issue", &reply);
                }
                row.last_error = Some(message);
                if !is_transient(reply.status) {
                    row.state = state::FAILED.into();
                    row.completed_at = Some(now);
                    row.next_attempt_at = None;
                    self.save(row).await?;
                    self.count_state(state::FAILED);
                    tracing::warn!(issuance = %row.id, status = reply.status, "issuance refused by AIR Kit");
                    return Ok(None);
                }
                retry_after = reply.retry_after;
            }
            Some((Err(e), _)) if e.is_transient() => {
                row.last_status = None;
                row.last_error = Some(format!(
                    "AIR Kit unreachable: {e}. Fix: check KEYHOST_AIRKIT_BASE_URL and the network; keyhost retries"
                ));
            }
            Some((Err(e), _)) => {
                // An answer too large to be AIR Kit's. Not `failed`: that state means AIR
                // refused the request, whereas here no usable answer arrived (AIR may even have
                // accepted it) and a failed issuance cannot be resumed. Not retried either:
                // whatever answers at the base URL answers the same way seconds later, and each
                // retry would send the issue again (AIR reissues under `onDuplicate: "revoke"`)
                // for nothing. So it is parked as `stalled` at once: recorded, visible, and
                // resumable by an admin once the base URL or the proxy in the way is fixed.
                row.last_status = None;
                row.last_error = Some(format!("AIR Kit's answer could not be used: {e}"));
                park_now = true;
            }
            None => {}
        }
        if park_now || row.attempts >= self.settings.max_attempts {
            let why = if park_now {
                "not retried, since retrying cannot change such an answer".to_owned()
            } else {
                format!("gave up after {} attempts", row.attempts)
            };
            row.state = state::STALLED.into();
            row.next_attempt_at = None;
            row.last_error = Some(format!(
                "{why}; the issuance is recorded: an admin resumes it with \
                 POST /admin/issuances/{}/resume (sending the request again without the same \
                 Idempotency-Key would start a second issuance). Last error: {}",
                row.id,
                row.last_error.as_deref().unwrap_or("none")
            ));
            self.save(row).await?;
            self.count_state(state::STALLED);
            tracing::warn!(issuance = %row.id, attempts = row.attempts, "issuance stalled");
            return Ok(None);
        }
        let delay = self.backoff(row.attempts, retry_after);
        row.next_attempt_at = Some(now + delay.as_secs() as i64);
        self.save(row).await?;
        tracing::debug!(issuance = %row.id, attempts = row.attempts, ?delay, "issuance will be retried");
        Ok(Some(delay))
    }

    /// One status poll.
    async fn poll(&self, row: &mut IssuanceRow) -> Result<(), StoreError> {
        let Some(hash) = row.core_claim_hash.clone() else {
            return Ok(());
        };
        let airkit = match self.airkit() {
            Ok(a) => a.clone(),
            Err(_) => return Ok(()),
        };
        row.polls += 1;
        let now = self.clock.now();
        match self.token(&row.email) {
            Ok((token, kid)) => {
                let result = {
                    let _permit = self.in_flight.acquire().await.expect("never closed");
                    airkit.status(&token, &hash).await
                };
                self.count_upstream("status", &result);
                match result {
                    Ok(reply) if reply.status == 200 => {
                        let vc_status = reply.body.get("vcStatus").and_then(Value::as_str);
                        row.vc_status = vc_status.map(str::to_owned);
                        row.last_status = Some(200);
                        row.last_error = None;
                        if vc_status == Some("ONCHAIN") {
                            row.state = state::ONCHAIN.into();
                            row.vc_id = reply
                                .body
                                .get("vcId")
                                .and_then(Value::as_str)
                                .map(str::to_owned);
                            row.issuance_date = reply
                                .body
                                .get("issuanceDate")
                                .and_then(Value::as_str)
                                .map(str::to_owned);
                            row.completed_at = Some(now);
                            row.next_attempt_at = None;
                        }
                    }
                    Ok(reply) => {
                        if reply.status == 401 {
                            self.note_unauthorized(&kid, "status", &reply);
                        }
                        row.last_status = Some(reply.status);
                        row.last_error = Some(format!(
                            "status check answered {}: {}. Fix: {}",
                            reply.status,
                            reply.message(),
                            hint::for_status(reply.status)
                        ));
                    }
                    Err(e) => row.last_error = Some(format!("status check failed: {e}")),
                }
            }
            Err(why) => row.last_error = Some(format!("cannot mint a Partner JWT: {why}")),
        }
        row.updated_at = now;
        if row.state == state::SUBMITTED && row.polls >= self.polls_within_deadline() {
            row.state = state::UNCONFIRMED.into();
            row.next_attempt_at = None;
            row.completed_at = Some(now);
            row.last_error = Some(format!(
                "not ONCHAIN {} after AIR Kit accepted it; resume with POST /admin/issuances/{}/resume. Last: {}",
                humantime::format_duration(self.settings.poll_deadline),
                row.id,
                row.last_error.as_deref().unwrap_or("WAIT_ONCHAIN")
            ));
        }
        if row.state == state::SUBMITTED {
            let next = (self
                .settings
                .poll_interval
                .saturating_mul(1u32 << row.polls.min(16)))
            .min(POLL_CAP);
            row.next_attempt_at = Some(now + next.as_secs() as i64);
        }
        self.save(row).await?;
        if row.state != state::SUBMITTED {
            self.count_state(&row.state);
            tracing::info!(issuance = %row.id, state = %row.state, "issuance finished");
        }
        Ok(())
    }

    /// AIR Kit's status of the credential `hash`, asked with a Partner JWT for the issuance's
    /// email when `caller` issued it through keyhost, else for `email` (required then): a client
    /// learns nothing through keyhost about another source's issuances that AIR would not tell it.
    pub async fn status(
        &self,
        hash: &str,
        email: Option<&str>,
        caller: &str,
    ) -> Result<Reply, StatusError> {
        let airkit = self
            .airkit()
            .map_err(|e| StatusError::NotConfigured(e.to_string()))?
            .clone();
        let known = {
            let hash = hash.to_owned();
            self.blocking(move |s| {
                s.blocking_read(|tx| store::issuances::by_core_claim_hash(tx, &hash))
            })
            .await
            .map_err(StatusError::Store)?
        };
        let known = known.filter(|row| self.authentic(row));
        let email = match (known.as_ref().filter(|row| row.source == caller), email) {
            (Some(row), _) => row.email.clone(),
            (None, Some(e)) => e.to_owned(),
            (None, None) => return Err(StatusError::UnknownHash),
        };
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let (token, kid) = self.token(&email).map_err(StatusError::NoToken)?;
        let result = airkit.status(&token, hash).await;
        self.count_upstream("status", &result);
        let reply = result.map_err(StatusError::Transport)?;
        if reply.status == 401 {
            self.note_unauthorized(&kid, "status", &reply);
        }
        Ok(reply)
    }

    /// Issuances, newest first.
    pub async fn list(
        &self,
        state: Option<String>,
        limit: u32,
    ) -> Result<Vec<IssuanceRow>, StoreError> {
        let found = self
            .blocking(move |s| {
                s.blocking_read(|tx| store::issuances::list(tx, state.as_deref(), limit))
            })
            .await?;
        for bad in &found.unreadable {
            tracing::error!(issuance = %bad.id, why = %bad.why, "an issuance cannot be read; it is left out");
        }
        Ok(found.rows)
    }

    /// The time source.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }
}

/// Why no Partner JWT could be minted for an upstream call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoToken {
    /// No key of the algorithm may sign now; one may from the given time, if known.
    #[error("no {0} key may sign yet")]
    NotYet(Alg, Option<UnixTime>),
    /// Something else (no partner id, a signing failure).
    #[error("{0}")]
    Unavailable(String),
}

/// Why a status could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Issuance is not configured.
    #[error("{0}")]
    NotConfigured(String),
    /// keyhost did not issue this hash and no email was given.
    #[error(
        "this client has no issuance with this coreClaimHash through keyhost; pass email= to check it anyway"
    )]
    UnknownHash,
    /// No token could be minted.
    #[error("cannot mint a Partner JWT: {0}")]
    NoToken(NoToken),
    /// AIR Kit could not be reached, or its answer could not be used.
    #[error(
        "{what}: {0}",
        what = if .0.is_transient() { "AIR Kit unreachable" } else { "AIR Kit's answer could not be used" }
    )]
    Transport(TransportError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_429_408_and_5xx() {
        for s in [408, 429, 500, 502, 503] {
            assert!(is_transient(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(s), "{s}");
        }
    }
}
