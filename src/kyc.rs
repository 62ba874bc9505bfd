//! KYC: the clientId → email mapping, the record of every KYC webhook delivery, and the iDenfy
//! workflow that turns an approved verification into an issuance.
//!
//! The webhook handlers authenticate and parse a delivery, then hand it here; every write is one
//! transaction with its audit row where it has one.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::clock::{Clock, UnixTime, rfc3339};
use crate::email::Email;
use crate::integrity::RowAuth;
use crate::issuance::{
    Issuance, IssuanceError, IssuanceService, IssuanceSource, NewIssuance, WaitFor, Webhook,
};
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::store::kyc::{KycEvent, NewKycEvent};
use crate::store::{self, Store, StoreError};

/// The provider name of iDenfy deliveries.
const IDENFY: &str = "idenfy";

/// What became of a KYC delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = KycOutcome)]
pub enum Outcome {
    /// It started an issuance.
    Queued,
    /// Approved, but its clientId maps to no email (yet).
    Unmatched,
    /// Not final, or not approved: nothing to do.
    Ignored,
    /// Its scanRef already started an issuance.
    Duplicate,
}

impl Outcome {
    /// Every outcome.
    /// (The schema also allows `rejected`, which is never written: a delivery refused for its
    /// signature goes to the audit trail instead.)
    pub const ALL: [Outcome; 4] = [
        Outcome::Queued,
        Outcome::Unmatched,
        Outcome::Ignored,
        Outcome::Duplicate,
    ];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Queued => "queued",
            Outcome::Unmatched => "unmatched",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
        }
    }
}

/// A name that is no outcome keyhost records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outcome must be one of queued, unmatched, ignored, duplicate, not {0:?}")]
pub struct UnknownOutcome(pub String);

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, UnknownOutcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

/// Why a KYC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KycError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The issuance could not be started.
    #[error(transparent)]
    Issuance(#[from] IssuanceError),
}

/// A clientId → email mapping as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = KycSubjectMapping)]
pub struct SubjectView {
    /// iDenfy's clientId.
    pub client_id: String,
    /// The email it maps to.
    pub email: String,
    /// When the mapping was first made, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `failed` when the row fails its integrity check: it was not written by keyhost and is
    /// not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^failed$")]
    pub integrity: Option<&'static str>,
}

/// A received KYC webhook as the admin API shows it: times in RFC 3339, like every other time.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = KycEvent)]
pub struct KycEventView {
    /// Sequence number.
    pub id: i64,
    /// `idenfy`.
    pub provider: String,
    /// iDenfy's verification id.
    pub scan_ref: Option<String>,
    /// iDenfy's clientId.
    pub client_id: Option<String>,
    /// Whether iDenfy marked the result final.
    pub is_final: Option<bool>,
    /// `status.overall` as sent.
    pub status: Option<String>,
    /// What became of it.
    pub outcome: String,
    /// Why.
    pub detail: Option<String>,
    /// The issuance it started.
    pub issuance_id: Option<String>,
    /// When it arrived.
    #[schema(format = DateTime)]
    pub received_at: String,
    /// How many more times the same delivery (byte for byte) arrived.
    pub repeats: u32,
    /// When it last arrived, if more than once.
    #[schema(format = DateTime)]
    pub last_received_at: Option<String>,
}

impl From<KycEvent> for KycEventView {
    fn from(e: KycEvent) -> Self {
        Self {
            id: e.id,
            provider: e.provider,
            scan_ref: e.scan_ref,
            client_id: e.client_id,
            is_final: e.is_final,
            status: e.status,
            outcome: e.outcome,
            detail: e.detail,
            issuance_id: e.issuance_id,
            received_at: rfc3339(e.received_at),
            repeats: e.repeats,
            last_received_at: e.last_received_at.map(rfc3339),
        }
    }
}

/// An authenticated, parsed iDenfy delivery.
#[derive(Debug, Clone)]
pub struct IdenfyDelivery {
    /// SHA-256 of the raw body: the same bytes again are a replay.
    pub body_sha256: [u8; 32],
    /// iDenfy's verification id.
    pub scan_ref: String,
    /// iDenfy's clientId (an email, or mapped to one).
    pub client_id: Option<String>,
    /// Whether iDenfy marked the result final.
    pub is_final: Option<bool>,
    /// `status.overall`.
    pub overall: Option<String>,
}

/// An authenticated, parsed kyc-complete delivery.
#[derive(Debug, Clone)]
pub struct KycCompleteDelivery {
    /// SHA-256 of the signed text (`<t>.<raw body>`): the same bytes again are a replay.
    pub signed_sha256: [u8; 32],
    /// The signed `eventId`, or the decoded signature when there is none: one delivery, one
    /// issuance.
    pub idempotency_key: String,
    /// The user.
    pub email: Email,
    /// `kycLevel` as sent.
    pub kyc_level: serde_json::Value,
}

/// What the iDenfy workflow did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdenfyAnswer {
    /// The same bytes arrived before: counted on the first row, nothing else.
    Replay {
        /// How many more times they arrived.
        repeats: u32,
        /// When they first arrived.
        first_received_at: UnixTime,
    },
    /// The verification already started an issuance (or another copy is starting it).
    Duplicate,
    /// Nothing to do, and why.
    Ignored(String),
    /// Approved, but no email is known for its clientId.
    Unmatched,
    /// An issuance was started.
    Queued {
        /// The issuance.
        issuance_id: String,
    },
}

/// KYC subjects and deliveries.
pub struct KycService {
    store: Arc<Store>,
    row_auth: Arc<RowAuth>,
    clock: Arc<dyn Clock>,
    issuance: Arc<IssuanceService>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KycService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KycService").finish_non_exhaustive()
    }
}

impl KycService {
    /// A service over `store`, starting issuances through `issuance`.
    pub fn new(
        store: Arc<Store>,
        row_auth: Arc<RowAuth>,
        clock: Arc<dyn Clock>,
        issuance: Arc<IssuanceService>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            row_auth,
            clock,
            issuance,
            metrics,
        }
    }

    /// Maps `client_id` to `email` (replacing an earlier mapping), audited as `actor`.
    pub async fn put_subject(
        &self,
        client_id: String,
        email: Email,
        actor: &str,
    ) -> Result<(), KycError> {
        let now = self.clock.now();
        let mac = self.row_auth.subject_mac(&client_id, email.as_str());
        let actor = actor.to_owned();
        // The trail names the clientId by a keyed hash: it holds no personal data, so that an
        // erasure never has to touch it.
        let subject = format!(
            "client-id-tag:{}",
            self.row_auth.tag("kyc-client-id", &client_id)
        );
        self.store
            .write(move |tx| {
                store::kyc::put_subject(tx, &client_id, email.as_str(), now, &mac)?;
                store::audit::record(tx, now, &actor, "kyc-subject.put", &subject, &json!({}))
            })
            .await?;
        Ok(())
    }

    /// Every mapping, each flagged if its row fails its integrity check.
    pub async fn subjects(&self) -> Result<Vec<SubjectView>, KycError> {
        let rows = self.store.read(store::kyc::subjects).await?;
        Ok(rows
            .into_iter()
            .map(|s| SubjectView {
                integrity: (!self
                    .row_auth
                    .subject_ok(&s.client_id, &s.email, s.mac.as_deref()))
                .then_some("failed"),
                created_at: rfc3339(s.created_at),
                client_id: s.client_id,
                email: s.email,
            })
            .collect())
    }

    /// Recorded deliveries, newest first, optionally with one outcome.
    pub async fn events(
        &self,
        outcome: Option<Outcome>,
        limit: u32,
    ) -> Result<Vec<KycEventView>, KycError> {
        let rows = self
            .store
            .read(move |tx| store::kyc::list(tx, outcome.map(Outcome::as_str), limit))
            .await?;
        Ok(rows.into_iter().map(KycEventView::from).collect())
    }

    /// Notes a delivery refused for its signature: counted always, audited at most once a minute
    /// per provider (so a flood of forgeries cannot fill the trail).
    pub async fn rejected(&self, provider: &str, why: &str) {
        static REJECTIONS: LogLimiter = LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = REJECTIONS.allow() {
            tracing::warn!(provider, why, suppressed, "webhook rejected");
        }
        let now = self.clock.now();
        if !self.metrics.webhook_rejected(provider, now) {
            return;
        }
        let (provider, why) = (provider.to_owned(), why.to_owned());
        let written = self
            .store
            .write(move |tx| {
                store::audit::record(
                    tx,
                    now,
                    "webhook",
                    "webhook.rejected",
                    &provider,
                    &json!({
                        "reason": why,
                        "note": "one row per provider and minute; \
                                 keyhost_webhook_rejected_total counts them all",
                    }),
                )
            })
            .await;
        if written.is_err() {
            tracing::error!("could not write the audit line of a rejected webhook delivery");
        }
    }

    /// The iDenfy workflow: acts only on a final, approved verification, once per scanRef; maps
    /// its clientId to an email (an email is used as is, anything else through the subjects);
    /// records every delivery. iDenfy signatures carry no timestamp, so a captured delivery can
    /// be replayed at will: identical bytes are counted on their first row and answered from it,
    /// never stored again; an unmatched one gets another try (its clientId may have been mapped
    /// since).
    pub async fn idenfy(&self, d: IdenfyDelivery) -> Result<IdenfyAnswer, KycError> {
        let now = self.clock.now();
        let delivery = hex::encode(d.body_sha256);
        let first = {
            let delivery = delivery.clone();
            self.store
                .write(move |tx| store::kyc::count_repeat(tx, IDENFY, &delivery, now))
                .await?
        };
        let retry_of = match first {
            Some(first) if first.outcome != Outcome::Unmatched.as_str() => {
                return Ok(IdenfyAnswer::Replay {
                    repeats: first.repeats,
                    first_received_at: first.received_at,
                });
            }
            Some(first) => Some(first.id),
            None => None,
        };
        let record = Record {
            store: &self.store,
            delivery: &d,
            delivery_hash: &delivery,
            retry_of,
            now,
        };
        if d.is_final != Some(true) {
            return Ok(record
                .outcome(Outcome::Ignored, Some("not final".into()), None)
                .await?
                .unwrap_or(IdenfyAnswer::Ignored("not final".into())));
        }
        if d.overall.as_deref() != Some("APPROVED") {
            let why = format!("status {}", d.overall.as_deref().unwrap_or("missing"));
            return Ok(record
                .outcome(Outcome::Ignored, Some(why.clone()), None)
                .await?
                .unwrap_or(IdenfyAnswer::Ignored(why)));
        }
        let seen = {
            let scan_ref = d.scan_ref.clone();
            self.store
                .read(move |tx| store::kyc::seen_scan_ref(tx, IDENFY, &scan_ref))
                .await?
        };
        if seen {
            record.outcome(Outcome::Duplicate, None, None).await?;
            return Ok(IdenfyAnswer::Duplicate);
        }
        let Some(email) = self.email_of(d.client_id.as_deref()).await? else {
            static UNMATCHED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
            if let Some(suppressed) = UNMATCHED.allow() {
                tracing::warn!(
                    scan_ref = %d.scan_ref,
                    suppressed,
                    "iDenfy verification approved for an unmapped clientId"
                );
            }
            let why = "no email for this clientId; add one with POST /admin/kyc-subjects";
            return Ok(record
                .outcome(Outcome::Unmatched, Some(why.into()), None)
                .await?
                .unwrap_or(IdenfyAnswer::Unmatched));
        };
        let (row, _) = self
            .issuance
            .submit(NewIssuance {
                source: IssuanceSource::Webhook(Webhook::Idenfy),
                idempotency_key: Some(d.scan_ref.clone()),
                email: email.into_string(),
                issuer_did: None,
                credential_id: None,
                credential_subject: json!({
                    "kycVerified": true,
                    "kycLevel": "idenfy",
                    "verifiedAt": rfc3339(now),
                }),
                on_duplicate: None,
            })
            .await?;
        Ok(record
            .outcome(Outcome::Queued, None, Some(row.id.clone()))
            .await?
            .unwrap_or(IdenfyAnswer::Queued {
                issuance_id: row.id,
            }))
    }

    /// The kyc-complete workflow: starts the issuance of the delivery's subject (once per
    /// `eventId`, or per signature when it has none), records the delivery beside iDenfy's
    /// (identical bytes again are counted on their first row), and waits up to `wait` for AIR
    /// Kit's answer.
    pub async fn kyc_complete(
        &self,
        d: KycCompleteDelivery,
        wait: Duration,
    ) -> Result<Issuance, KycError> {
        const PROVIDER: &str = "kyc-complete";
        let now = self.clock.now();
        let delivery = hex::encode(d.signed_sha256);
        let replayed = {
            let delivery = delivery.clone();
            self.store
                .write(move |tx| store::kyc::count_repeat(tx, PROVIDER, &delivery, now))
                .await?
        };
        let (issuance, created) = self
            .issuance
            .submit(NewIssuance {
                source: IssuanceSource::Webhook(Webhook::KycComplete),
                idempotency_key: Some(d.idempotency_key.clone()),
                email: d.email.into_string(),
                issuer_did: None,
                credential_id: None,
                credential_subject: json!({
                    "kycVerified": true,
                    "kycLevel": d.kyc_level,
                    "verifiedAt": rfc3339(now),
                }),
                on_duplicate: None,
            })
            .await?;
        if replayed.is_none() {
            let (key, issuance_id) = (d.idempotency_key, issuance.id.clone());
            self.store
                .write(move |tx| {
                    let outcome = if created {
                        Outcome::Queued
                    } else {
                        Outcome::Duplicate
                    };
                    let recorded = store::kyc::record(
                        tx,
                        &NewKycEvent {
                            provider: PROVIDER,
                            scan_ref: Some(&key),
                            client_id: None,
                            is_final: Some(true),
                            status: None,
                            outcome: outcome.as_str(),
                            detail: None,
                            issuance_id: Some(&issuance_id),
                            delivery_hash: Some(&delivery),
                        },
                        now,
                    );
                    match recorded {
                        // The same bytes, arriving twice at once: counted on the other's row.
                        Err(e) if e.is_constraint() => {
                            store::kyc::count_repeat(tx, PROVIDER, &delivery, now).map(|_| ())
                        }
                        other => other.map(|_| ()),
                    }
                })
                .await?;
        }
        Ok(self
            .issuance
            .wait(&issuance.id, WaitFor::Answer, wait)
            .await?)
    }

    /// The email of an iDenfy clientId: itself if it is one, else its mapping when that passes
    /// its integrity check.
    async fn email_of(&self, client_id: Option<&str>) -> Result<Option<Email>, KycError> {
        let Some(client_id) = client_id else {
            return Ok(None);
        };
        if let Ok(email) = Email::parse(client_id) {
            return Ok(Some(email));
        }
        let mapping = {
            let client_id = client_id.to_owned();
            self.store
                .read(move |tx| store::kyc::subject(tx, &client_id))
                .await?
        };
        Ok(match mapping {
            Some(m)
                if self
                    .row_auth
                    .subject_ok(&m.client_id, &m.email, m.mac.as_deref()) =>
            {
                Email::parse(&m.email).ok()
            }
            Some(m) => {
                tracing::error!(
                    client_id = %m.client_id,
                    "the KYC subject mapping fails its integrity check (not written by keyhost); \
                     treating the verification as unmatched"
                );
                None
            }
            None => None,
        })
    }
}

/// Records one iDenfy delivery with its outcome. A retried unmatched delivery already has its
/// row: only a new issuance changes it.
struct Record<'a> {
    store: &'a Arc<Store>,
    delivery: &'a IdenfyDelivery,
    delivery_hash: &'a str,
    retry_of: Option<i64>,
    now: UnixTime,
}

impl Record<'_> {
    /// Writes the outcome; `Some(Duplicate)` when another copy of the delivery, or another
    /// delivery of the verification, got there first (then nothing of this one is kept but the
    /// count of its repeats).
    async fn outcome(
        &self,
        outcome: Outcome,
        detail: Option<String>,
        issuance_id: Option<String>,
    ) -> Result<Option<IdenfyAnswer>, StoreError> {
        let (d, delivery, retry_of, now) = (
            self.delivery.clone(),
            self.delivery_hash.to_owned(),
            self.retry_of,
            self.now,
        );
        let kept = self
            .store
            .write(move |tx| match (retry_of, issuance_id.as_deref()) {
                (Some(id), Some(issuance)) => match store::kyc::mark_queued(tx, id, issuance) {
                    Err(e) if e.is_constraint() => Ok(false),
                    other => other,
                },
                (Some(_), None) => Ok(true),
                (None, issuance_id) => {
                    let recorded = store::kyc::record(
                        tx,
                        &NewKycEvent {
                            provider: IDENFY,
                            scan_ref: Some(&d.scan_ref),
                            client_id: d.client_id.as_deref(),
                            is_final: d.is_final,
                            status: d.overall.as_deref(),
                            outcome: outcome.as_str(),
                            detail: detail.as_deref(),
                            issuance_id,
                            delivery_hash: Some(&delivery),
                        },
                        now,
                    );
                    match recorded {
                        // The same delivery, arriving twice at once: the other copy has the
                        // row, this one is counted on it (only the failed insert was undone).
                        Err(e) if e.is_constraint() => {
                            store::kyc::count_repeat(tx, IDENFY, &delivery, now)?;
                            Ok(false)
                        }
                        other => other.map(|_| true),
                    }
                }
            })
            .await?;
        Ok((!kept).then_some(IdenfyAnswer::Duplicate))
    }
}
