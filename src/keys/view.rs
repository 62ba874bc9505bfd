//! How the admin API and the CLI show a key: state and timestamps, the public JWK, never
//! private parts.

use serde::Serialize;

use super::jwk::PublicJwk;
use super::{Alg, KeyRecord, KeyState};
use crate::clock::rfc3339;

/// A key as the admin API shows it: state and timestamps, the public JWK, never private parts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Key)]
pub struct KeyView {
    /// Key id: the RFC 7638 thumbprint, or the kid given at import.
    kid: String,
    alg: Alg,
    #[schema(value_type = KeyState)]
    state: &'static str,
    #[schema(value_type = super::Origin)]
    origin: &'static str,
    /// Key size: 256 for P-256, the modulus size for RSA.
    bits: u32,
    #[schema(format = DateTime)]
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    published_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    signable_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    activated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    retired_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
    /// Pending: seconds of its publish lead a running server has still to serve (it signs only
    /// once this is 0 and `signableAt` has passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_to_serve: Option<i64>,
    /// Retired: seconds of its grace a running server has still to serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_to_serve: Option<i64>,
    /// The latest expiry of a token it signed, as recorded (it stays published until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    last_token_expires_at: Option<String>,
    public_jwk: PublicJwk,
    /// `failed` when the row fails its integrity check: it was not written by keyhost, and is
    /// neither published nor used.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^failed$")]
    integrity: Option<&'static str>,
    /// Pending, lead served: why it does not sign yet (`KEYHOST_PUBLIC_JWKS_URL` does not list
    /// it), since when, and when keyhost looks again.
    #[serde(skip_serializing_if = "Option::is_none")]
    activation_blocked: Option<super::service::evidence::BlockedView>,
}

impl KeyView {
    /// The view of a key and whether its row passed its integrity check.
    pub fn checked(k: &KeyRecord, trusted: bool) -> Self {
        Self {
            integrity: (!trusted).then_some("failed"),
            ..Self::from(k)
        }
    }

    /// With why its activation waits, if it does.
    pub fn blocked(mut self, why: Option<super::service::evidence::BlockedView>) -> Self {
        self.activation_blocked = why;
        self
    }
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        Self {
            kid: k.kid.clone(),
            alg: k.alg,
            state: k.state.as_str(),
            origin: k.origin.as_str(),
            bits: k.bits,
            created_at: rfc3339(k.created_at),
            published_at: k.published_at.map(rfc3339),
            signable_at: k.signable_at.map(rfc3339),
            activated_at: k.activated_at.map(rfc3339),
            retired_at: k.retired_at.map(rfc3339),
            expires_at: k.expires_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            lead_to_serve: (k.state == KeyState::Pending && k.published_at.is_some())
                .then_some(k.lead_remaining),
            grace_to_serve: (k.state == KeyState::Retired).then_some(k.grace_remaining),
            last_token_expires_at: k.last_exp.map(rfc3339),
            public_jwk: k.public_jwk.clone(),
            integrity: None,
            activation_blocked: None,
        }
    }
}
