//! What an issuance is: its state, who asked for it, what AIR Kit does with a duplicate, the
//! record the service works on, and the view the API shows.
//!
//! Each enum is stored by name, and the schema checks the names (migrations 0002 and 0005).
//! `as_str` and `FromStr` are exact inverses, so a record read and written back keeps the bytes
//! of its row, and with them the row's MAC.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::clock::{UnixTime, rfc3339};
use crate::store::issuances::IssuanceRow;

/// Where an issuance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuanceState {
    /// Recorded; AIR has not accepted it yet (first attempt or retrying).
    Queued,
    /// AIR accepted it; waiting for `ONCHAIN`.
    Submitted,
    /// The credential is on chain.
    Onchain,
    /// AIR refused it (400/401/403/404/409); not retried.
    Failed,
    /// Retrying stopped (the budget ran out, or retrying cannot help); an admin can resume it.
    Stalled,
    /// Accepted but not `ONCHAIN` by the deadline; an admin can resume it.
    Unconfirmed,
}

/// The name of every state, in the order of [`IssuanceState::ALL`].
pub const ALL: [&str; 6] = [
    IssuanceState::Queued.as_str(),
    IssuanceState::Submitted.as_str(),
    IssuanceState::Onchain.as_str(),
    IssuanceState::Failed.as_str(),
    IssuanceState::Stalled.as_str(),
    IssuanceState::Unconfirmed.as_str(),
];

impl IssuanceState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Submitted,
        Self::Onchain,
        Self::Failed,
        Self::Stalled,
        Self::Unconfirmed,
    ];

    /// The stored (and shown) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitted => "submitted",
            Self::Onchain => "onchain",
            Self::Failed => "failed",
            Self::Stalled => "stalled",
            Self::Unconfirmed => "unconfirmed",
        }
    }

    /// Whether a worker still drives it: it has a next attempt or poll.
    pub fn is_pending(self) -> bool {
        match self {
            Self::Queued | Self::Submitted => true,
            Self::Onchain | Self::Failed | Self::Stalled | Self::Unconfirmed => false,
        }
    }

    /// The state an admin's resume puts it back in, if it can be resumed.
    pub fn resumed(self) -> Option<Self> {
        match self {
            Self::Stalled => Some(Self::Queued),
            Self::Unconfirmed => Some(Self::Submitted),
            Self::Queued | Self::Submitted | Self::Onchain | Self::Failed => None,
        }
    }
}

/// A name that is none of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {expected}, not {found:?}")]
pub struct UnknownName {
    what: &'static str,
    expected: &'static str,
    found: String,
}

impl FromStr for IssuanceState {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "state",
                expected: "one of queued, submitted, onchain, failed, stalled, unconfirmed",
                found: s.to_owned(),
            })
    }
}

impl fmt::Display for IssuanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What AIR Kit does when the user already holds the credential (`onDuplicate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDuplicate {
    /// Revoke the existing credential and issue again (AIR's default).
    #[default]
    Revoke,
    /// Keep the existing credential and answer with it.
    Ignore,
}

impl OnDuplicate {
    /// The name AIR Kit reads (and keyhost stores).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Ignore => "ignore",
        }
    }
}

impl FromStr for OnDuplicate {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "revoke" => Ok(Self::Revoke),
            "ignore" => Ok(Self::Ignore),
            other => Err(UnknownName {
                what: "onDuplicate",
                expected: "\"ignore\" or \"revoke\"",
                found: other.to_owned(),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for OnDuplicate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        // The API names the member before this message.
        name.parse().map_err(|_| {
            D::Error::custom(format!("must be \"ignore\" or \"revoke\", not {name:?}"))
        })
    }
}

impl fmt::Display for OnDuplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A KYC webhook that issues credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    /// `POST /webhooks/kyc-complete`.
    KycComplete,
    /// `POST /webhooks/idenfy`.
    Idenfy,
}

/// Who asked for an issuance: an API client, or a webhook. Stored as the client id, or as
/// `webhook:kyc` / `webhook:idenfy`; idempotency keys are scoped to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IssuanceSource {
    /// An API client, by id (never empty, never starting with `webhook:`).
    Client(String),
    /// A KYC webhook.
    Webhook(Webhook),
}

const WEBHOOK_PREFIX: &str = "webhook:";

impl IssuanceSource {
    /// The stored (and shown) name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Client(id) => id,
            Self::Webhook(Webhook::KycComplete) => "webhook:kyc",
            Self::Webhook(Webhook::Idenfy) => "webhook:idenfy",
        }
    }
}

impl FromStr for IssuanceSource {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownName {
            what: "source",
            expected: "a client id, webhook:kyc or webhook:idenfy",
            found: s.to_owned(),
        };
        match s.strip_prefix(WEBHOOK_PREFIX) {
            Some("kyc") => Ok(Self::Webhook(Webhook::KycComplete)),
            Some("idenfy") => Ok(Self::Webhook(Webhook::Idenfy)),
            Some(_) => Err(unknown()),
            None if s.is_empty() => Err(unknown()),
            None => Ok(Self::Client(s.to_owned())),
        }
    }
}

impl fmt::Display for IssuanceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IssuanceSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An issuance as the service sees it: its row, with names read into their types.
#[derive(Debug, Clone, PartialEq)]
pub struct Issuance {
    /// keyhost's issuance id (`iss_…`).
    pub id: String,
    /// Who asked.
    pub source: IssuanceSource,
    /// The caller's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Hash of the request, to tell a replay from another request under the same key.
    pub request_hash: String,
    /// The user's email.
    pub email: String,
    /// Issuer DID.
    pub issuer_did: String,
    /// Issuance program id.
    pub credential_id: String,
    /// Credential data.
    pub credential_subject: Value,
    /// What AIR does with a duplicate.
    pub on_duplicate: OnDuplicate,
    /// Where it stands.
    pub state: IssuanceState,
    /// Upstream issue attempts so far.
    pub attempts: u32,
    /// When the next attempt or poll is due.
    pub next_attempt_at: Option<UnixTime>,
    /// AIR's issuance id.
    pub core_claim_hash: Option<String>,
    /// AIR's user id.
    pub user_uuid: Option<String>,
    /// AIR reported an existing credential (`onDuplicate: "ignore"`).
    pub duplicate: bool,
    /// Last `vcStatus` seen.
    pub vc_status: Option<String>,
    /// Verifiable credential id once ONCHAIN.
    pub vc_id: Option<String>,
    /// AIR's issuance date once ONCHAIN.
    pub issuance_date: Option<String>,
    /// Status polls so far.
    pub polls: u32,
    /// Last upstream HTTP status.
    pub last_status: Option<u16>,
    /// Last error, with its fix.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: UnixTime,
    /// Last changed.
    pub updated_at: UnixTime,
    /// Accepted by AIR.
    pub submitted_at: Option<UnixTime>,
    /// Reached a final state.
    pub completed_at: Option<UnixTime>,
    /// MAC over the request (see [`crate::integrity`]).
    pub mac: Option<Vec<u8>>,
    /// When its personal data was erased.
    pub erased_at: Option<UnixTime>,
}

impl TryFrom<IssuanceRow> for Issuance {
    type Error = UnknownName;

    fn try_from(r: IssuanceRow) -> Result<Self, Self::Error> {
        Ok(Self {
            source: r.source.parse()?,
            on_duplicate: r.on_duplicate.parse()?,
            state: r.state.parse()?,
            id: r.id,
            idempotency_key: r.idempotency_key,
            request_hash: r.request_hash,
            email: r.email,
            issuer_did: r.issuer_did,
            credential_id: r.credential_id,
            credential_subject: r.credential_subject,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            core_claim_hash: r.core_claim_hash,
            user_uuid: r.user_uuid,
            duplicate: r.duplicate,
            vc_status: r.vc_status,
            vc_id: r.vc_id,
            issuance_date: r.issuance_date,
            polls: r.polls,
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            submitted_at: r.submitted_at,
            completed_at: r.completed_at,
            mac: r.mac,
            erased_at: r.erased_at,
        })
    }
}

impl From<&Issuance> for IssuanceRow {
    fn from(i: &Issuance) -> Self {
        Self {
            id: i.id.clone(),
            source: i.source.as_str().to_owned(),
            idempotency_key: i.idempotency_key.clone(),
            request_hash: i.request_hash.clone(),
            email: i.email.clone(),
            issuer_did: i.issuer_did.clone(),
            credential_id: i.credential_id.clone(),
            credential_subject: i.credential_subject.clone(),
            on_duplicate: i.on_duplicate.as_str().to_owned(),
            state: i.state.as_str().to_owned(),
            attempts: i.attempts,
            next_attempt_at: i.next_attempt_at,
            core_claim_hash: i.core_claim_hash.clone(),
            user_uuid: i.user_uuid.clone(),
            duplicate: i.duplicate,
            vc_status: i.vc_status.clone(),
            vc_id: i.vc_id.clone(),
            issuance_date: i.issuance_date.clone(),
            polls: i.polls,
            last_status: i.last_status,
            last_error: i.last_error.clone(),
            created_at: i.created_at,
            updated_at: i.updated_at,
            submitted_at: i.submitted_at,
            completed_at: i.completed_at,
            mac: i.mac.clone(),
            erased_at: i.erased_at,
        }
    }
}

/// An issuance as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Issuance)]
pub struct IssuanceView {
    /// keyhost's issuance id.
    pub issuance_id: String,
    /// State.
    #[schema(value_type = String)]
    pub state: IssuanceState,
    /// Who asked: the client id, or `webhook:kyc` / `webhook:idenfy`.
    #[schema(value_type = String)]
    pub source: IssuanceSource,
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
    #[schema(value_type = String)]
    pub on_duplicate: OnDuplicate,
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
    /// When its personal data (email, credential data, idempotency key, AIR's user id, last
    /// error) was erased, after `KEYHOST_ISSUANCE_RETENTION` or on request.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub erased_at: Option<String>,
}

impl From<&Issuance> for IssuanceView {
    fn from(r: &Issuance) -> Self {
        Self {
            issuance_id: r.id.clone(),
            state: r.state,
            source: r.source.clone(),
            email: r.email.clone(),
            issuer_did: r.issuer_did.clone(),
            credential_id: r.credential_id.clone(),
            credential_subject: r.credential_subject.clone(),
            on_duplicate: r.on_duplicate,
            attempts: r.attempts,
            core_claim_hash: r.core_claim_hash.clone(),
            user_uuid: r.user_uuid.clone(),
            duplicate: r.duplicate,
            vc_status: r.vc_status.clone(),
            vc_id: r.vc_id.clone(),
            issuance_date: r.issuance_date.clone(),
            last_status: r.last_status,
            last_error: r.last_error.clone(),
            next_attempt_at: r
                .next_attempt_at
                .filter(|_| r.state.is_pending())
                .map(rfc3339),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            erased_at: r.erased_at.map(rfc3339),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_state_reads_back_from_its_name_and_serialises_as_it() {
        for (state, name) in IssuanceState::ALL.into_iter().zip(ALL) {
            assert_eq!(state.as_str(), name);
            assert_eq!(name.parse::<IssuanceState>(), Ok(state));
            assert_eq!(json!(state), json!(name));
            assert_eq!(
                serde_json::from_value::<IssuanceState>(json!(name)).unwrap(),
                state
            );
        }
        for bad in ["", "Queued", "QUEUED", "done", " queued"] {
            let err = bad.parse::<IssuanceState>().unwrap_err();
            assert!(err.to_string().contains("one of queued"), "{err}");
        }
    }

    #[test]
    fn only_stalled_and_unconfirmed_issuances_resume_and_only_queued_and_submitted_are_pending() {
        use IssuanceState::*;
        for state in IssuanceState::ALL {
            let expected = match state {
                Stalled => Some(Queued),
                Unconfirmed => Some(Submitted),
                _ => None,
            };
            assert_eq!(state.resumed(), expected, "{state}");
            assert_eq!(state.is_pending(), matches!(state, Queued | Submitted));
        }
    }

    #[test]
    fn on_duplicate_is_revoke_by_default_and_refuses_any_other_name() {
        assert_eq!(OnDuplicate::default(), OnDuplicate::Revoke);
        for d in [OnDuplicate::Revoke, OnDuplicate::Ignore] {
            assert_eq!(d.as_str().parse::<OnDuplicate>(), Ok(d));
            assert_eq!(json!(d), json!(d.as_str()));
            assert_eq!(
                serde_json::from_value::<OnDuplicate>(json!(d.as_str())).unwrap(),
                d
            );
        }
        let err = serde_json::from_value::<OnDuplicate>(json!("keep")).unwrap_err();
        assert!(
            err.to_string().contains(r#"must be "ignore" or "revoke""#),
            "{err}"
        );
        assert!("Ignore".parse::<OnDuplicate>().is_err());
    }

    #[test]
    fn sources_read_back_from_their_stored_names_and_unknown_webhooks_are_refused() {
        for (source, name) in [
            (IssuanceSource::Webhook(Webhook::KycComplete), "webhook:kyc"),
            (IssuanceSource::Webhook(Webhook::Idenfy), "webhook:idenfy"),
            (IssuanceSource::Client("0123abcd".into()), "0123abcd"),
        ] {
            assert_eq!(source.as_str(), name);
            assert_eq!(name.parse::<IssuanceSource>(), Ok(source.clone()));
            assert_eq!(json!(source), json!(name));
        }
        for bad in ["", "webhook:", "webhook:stripe", "webhook:KYC"] {
            assert!(bad.parse::<IssuanceSource>().is_err(), "{bad:?}");
        }
    }

    fn row() -> IssuanceRow {
        IssuanceRow {
            id: "iss_1".into(),
            source: "webhook:idenfy".into(),
            idempotency_key: Some("scan-1".into()),
            request_hash: "ab".repeat(32),
            email: "u@example.com".into(),
            issuer_did: "did:air:id:test:x".into(),
            credential_id: "program".into(),
            credential_subject: json!({"b": 1, "a": [true, null]}),
            on_duplicate: "ignore".into(),
            state: "unconfirmed".into(),
            attempts: 2,
            next_attempt_at: Some(12),
            core_claim_hash: Some("hash".into()),
            user_uuid: Some("uuid".into()),
            duplicate: true,
            vc_status: Some("WAIT_ONCHAIN".into()),
            vc_id: None,
            issuance_date: None,
            polls: 7,
            last_status: Some(200),
            last_error: Some("late".into()),
            created_at: 1,
            updated_at: 2,
            submitted_at: Some(3),
            completed_at: Some(4),
            mac: Some(vec![1, 2, 3]),
            erased_at: None,
        }
    }

    #[test]
    fn a_row_read_into_a_record_and_back_is_unchanged() {
        let record = Issuance::try_from(row()).unwrap();
        assert_eq!(record.state, IssuanceState::Unconfirmed);
        assert_eq!(record.on_duplicate, OnDuplicate::Ignore);
        assert_eq!(record.source, IssuanceSource::Webhook(Webhook::Idenfy));
        assert_eq!(IssuanceRow::from(&record), row());
    }

    #[test]
    fn a_row_with_an_unknown_name_is_not_a_record() {
        for broken in [
            IssuanceRow {
                state: "done".into(),
                ..row()
            },
            IssuanceRow {
                on_duplicate: "keep".into(),
                ..row()
            },
            IssuanceRow {
                source: "webhook:other".into(),
                ..row()
            },
        ] {
            assert!(Issuance::try_from(broken).is_err());
        }
    }

    #[test]
    fn the_view_shows_the_next_attempt_only_while_pending() {
        let mut record = Issuance::try_from(row()).unwrap();
        let view = serde_json::to_value(IssuanceView::from(&record)).unwrap();
        assert_eq!(view["state"], "unconfirmed");
        assert_eq!(view["source"], "webhook:idenfy");
        assert_eq!(view["onDuplicate"], "ignore");
        assert!(view.get("nextAttemptAt").is_none());
        record.state = IssuanceState::Submitted;
        let view = serde_json::to_value(IssuanceView::from(&record)).unwrap();
        assert_eq!(view["nextAttemptAt"], "1970-01-01T00:00:12Z");
    }
}
