//! KYC webhooks that trigger issuance.
//!
//! - `POST /webhooks/kyc-complete`: the Issue-on-Behalf reference's example (`{userEmail,
//!   kycLevel, eventId?}` → subject `{kycVerified: true, kycLevel, verifiedAt}`), signed with
//!   `X-Keyhost-Signature: t=<unix seconds>,sha256=<hex HMAC-SHA256 of "<t>.<raw body>">` under
//!   `KEYHOST_KYC_WEBHOOK_SECRET`. A delivery is accepted within [`SIGNATURE_TOLERANCE`] of its
//!   `t`, and a replay inside that window is the same issuance: the deduplication key is the
//!   signed `eventId` when there is one, else the signature itself. (An `Idempotency-Key`
//!   header is refused here: it is not signed, so a captured delivery with a new key would be a
//!   new issuance.)
//! - `POST /webhooks/idenfy`: iDenfy's verification webhook, signed with `Idenfy-Signature` (hex
//!   HMAC-SHA256 of the raw body) under `KEYHOST_IDENFY_SIGNING_KEY`. Acts only on `final: true`
//!   with `status.overall == "APPROVED"`, once per `scanRef`; maps `clientId` to an email (an
//!   email is used as is, anything else through `/admin/kyc-subjects`); answers at once and issues
//!   through the durable queue. Every delivery is recorded, except that a bad signature leaves only
//!   an audit line.
//!
//! Signatures are checked over the raw bytes, in constant time, before anything is parsed.

use aws_lc_rs::hmac;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::{RawBody, parse_json_object};
use super::issuance::issuance_response;
use super::openapi::{
    BadGateway, Conflict, Forbidden, InternalError, NotFound, RawBodyErrors, Routes,
    TooManyRequests, Unauthorized, Unavailable,
};
use crate::clock::rfc3339;
use crate::email::Email;
use crate::kyc::{IdenfyAnswer, IdenfyDelivery, KycCompleteDelivery};

/// Webhook routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(kyc_complete))
        .route(routes!(idenfy))
}

/// A decoded HMAC-SHA256 webhook signature.
pub type Mac = [u8; 32];

/// Decodes a hex HMAC-SHA256 (upper or lower case, surrounding spaces ignored), strictly: exactly
/// 64 hex digits and nothing else, so that one signature has exactly one accepted spelling
/// (`u8::from_str_radix` also took `+d` for `0d`, which let a replay pass as a new delivery).
pub fn decode_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut mac).ok()?;
    Some(mac)
}

/// Whether `signature_hex` is the HMAC-SHA256 of `body` under `secret` (constant time).
pub fn signature_matches(secret: &SecretString, body: &[u8], signature_hex: &str) -> bool {
    decode_mac(signature_hex).is_some_and(|mac| mac_matches(secret, None, body, &mac))
}

/// Whether `mac` is the HMAC-SHA256 of `"<t>.<body>"` (or of `body` alone when `t` is `None`)
/// under `secret`, compared in constant time.
fn mac_matches(secret: &SecretString, t: Option<&str>, body: &[u8], mac: &Mac) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    if let Some(t) = t {
        ctx.update(t.as_bytes());
        ctx.update(b".");
    }
    ctx.update(body);
    bool::from(ctx.sign().as_ref().ct_eq(mac.as_slice()))
}

/// SHA-256 of the text a kyc-complete signature covers, `<t>.<raw body>`.
fn signed_sha256(t: &str, body: &[u8]) -> [u8; 32] {
    let mut signed = Vec::with_capacity(t.len() + 1 + body.len());
    signed.extend_from_slice(t.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    crate::auth::sha256(&signed)
}

/// How far a kyc-complete delivery's `t` may be from keyhost's clock, either way, in seconds.
pub const SIGNATURE_TOLERANCE: i64 = 300;

/// `X-Keyhost-Signature: t=<unix seconds>,sha256=<hex>`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyhostSignature<'a> {
    /// The signed timestamp, as sent (it is part of the signed text).
    pub t: &'a str,
    /// The decoded MAC.
    pub mac: Mac,
}

/// Parses `X-Keyhost-Signature` (parts in any order, each once); `None` for anything else.
pub fn parse_keyhost_signature(header: &str) -> Option<KeyhostSignature<'_>> {
    let (mut t, mut mac) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=')? {
            ("t", v)
                if t.is_none()
                    && !v.is_empty()
                    && v.len() <= 12
                    && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                t = Some(v)
            }
            ("sha256", v) if mac.is_none() => mac = Some(decode_mac(v)?),
            _ => return None,
        }
    }
    Some(KeyhostSignature { t: t?, mac: mac? })
}

/// A webhook that is configured. An unconfigured one is answered 503 before its body is read:
/// a body read is a connection held, and nobody should be able to hold them for nothing.
struct Enabled;

impl axum::extract::FromRequestParts<AppState> for Enabled {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let (secret, setting) = if parts.uri.path().ends_with("/idenfy") {
            (
                &state.config.webhooks.idenfy_signing_key,
                "KEYHOST_IDENFY_SIGNING_KEY",
            )
        } else {
            (
                &state.config.webhooks.kyc_secret,
                "KEYHOST_KYC_WEBHOOK_SECRET",
            )
        };
        match secret {
            Some(_) => Ok(Enabled),
            None => Err(ApiError::unavailable(
                format!("this webhook is not configured: set {setting}"),
                3600,
            )),
        }
    }
}

/// Runs a delivery's signature `check` under `secret` (it answers why it refuses); a refusal is
/// audited (at most once a minute per provider) and answered 401. An unset secret means the
/// webhook is off (503).
async fn authenticate<T>(
    state: &AppState,
    provider: &str,
    secret: Option<&SecretString>,
    setting: &str,
    check: impl FnOnce(&SecretString) -> Result<T, &'static str>,
) -> Result<T, ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::unavailable(
            format!("this webhook is not configured: set {setting}"),
            3600,
        ));
    };
    match check(secret) {
        Ok(proof) => Ok(proof),
        Err(refusal) => {
            state.kyc.rejected(provider, refusal).await;
            Err(ApiError::unauthorized(refusal))
        }
    }
}

/// A KYC result (the Issue-on-Behalf reference's example); members it does not name are
/// ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KycComplete {
    /// The user to issue to.
    #[schema(schema_with = super::openapi::email, required = true)]
    user_email: Option<String>,
    /// Any value but `null`: it becomes the subject's `kycLevel`.
    #[schema(schema_with = super::openapi::json_not_null, required = true)]
    kyc_level: Option<Value>,
    /// The sender's event id: deliveries with the same id are one issuance (the same id for
    /// another request is 409).
    #[schema(min_length = 1, max_length = 200)]
    event_id: Option<String>,
}

/// What a kyc-complete delivery started.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct KycCompleteAnswer {
    /// Always `true`.
    success: bool,
    /// The issuance it started (or the one a replay already started).
    issuance_id: String,
    /// Its state.
    #[schema(value_type = super::openapi::IssuanceState)]
    state: crate::issuance::IssuanceState,
    /// AIR's issuance id, once AIR Kit has accepted it.
    core_claim_hash: Option<String>,
}

/// A KYC result that triggers issuance.
///
/// `{userEmail, kycLevel, eventId?}` issues the subject `{kycVerified: true, kycLevel,
/// verifiedAt}`. Signed with `X-Keyhost-Signature` under `KEYHOST_KYC_WEBHOOK_SECRET` and accepted
/// within 5 minutes of its `t`; a replay within that window is answered with the issuance it
/// already made. An `Idempotency-Key` header is refused (400): it is not covered by the
/// signature. AIR's refusals are answered as for `POST /v1/credentials/issue-on-behalf`.
#[utoipa::path(
    post,
    path = "/webhooks/kyc-complete",
    tag = "webhooks",
    params((
        "X-Keyhost-Signature" = String,
        Header,
        description = "t=<unix seconds>,sha256=<hex HMAC-SHA256 of \"<t>.<raw body>\">",
        pattern = "^t=[0-9]{1,12},sha256=[0-9a-fA-F]{64}$"
    )),
    request_body = KycComplete,
    responses(
        (status = 200, description = "issued", body = KycCompleteAnswer),
        (status = 202, description = "accepted; the issuance is still queued", body = KycCompleteAnswer),
        RawBodyErrors,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooManyRequests,
        InternalError,
        BadGateway,
        Unavailable,
    )
)]
async fn kyc_complete(
    State(state): State<AppState>,
    _: Enabled,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let header = headers
        .get("x-keyhost-signature")
        .map(|v| v.to_str().ok().and_then(parse_keyhost_signature));
    let now = state.clock.now();
    let signature = authenticate(
        &state,
        "kyc-complete",
        state.config.webhooks.kyc_secret.as_ref(),
        "KEYHOST_KYC_WEBHOOK_SECRET",
        |secret| match header {
            None => Err(
                "missing webhook signature (X-Keyhost-Signature: t=<unix seconds>,sha256=<hex>)",
            ),
            Some(None) => Err(
                "malformed X-Keyhost-Signature: expected t=<unix seconds>,sha256=<hex HMAC-SHA256 \
                 of \"<t>.<raw body>\">",
            ),
            Some(Some(sig)) if mac_matches(secret, Some(sig.t), &body, &sig.mac) => {
                let skew = sig.t.parse::<i64>().map_or(i64::MAX, |t| t - now);
                if skew.abs() <= SIGNATURE_TOLERANCE {
                    Ok(sig)
                } else {
                    Err(
                        "the signature's timestamp t is more than 5 minutes from keyhost's clock: \
                         a replayed delivery, or a sender whose clock is wrong",
                    )
                }
            }
            Some(Some(_)) => Err("invalid webhook signature"),
        },
    )
    .await?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_value(
            "Idempotency-Key is not covered by the webhook signature; put the event id in the \
             signed body as eventId",
        ));
    }
    let req: KycComplete = parse_json_object(&body)?;
    let email = req
        .user_email
        .ok_or_else(|| ApiError::missing_value("userEmail is required"))?;
    let email = Email::parse(&email)?;
    let level = req
        .kyc_level
        .ok_or_else(|| ApiError::missing_value("kycLevel is required"))?;
    let idempotency_key = match req.event_id {
        Some(id) if id.is_empty() || id.chars().count() > 200 => {
            return Err(ApiError::bad_value(
                "eventId must be between 1 and 200 characters",
            ));
        }
        Some(id) => format!("event:{id}"),
        // The decoded MAC, not its text: one delivery has one key however its hex is spelt.
        None => format!("sig:{}", hex::encode(signature.mac)),
    };
    let row = state
        .kyc
        .kyc_complete(
            KycCompleteDelivery {
                signed_sha256: signed_sha256(signature.t, &body),
                idempotency_key,
                email,
                kyc_level: level,
            },
            state.config.airkit.wait,
        )
        .await?;
    let mut res = issuance_response(&row);
    if res.status().is_success() {
        res = (
            res.status(),
            Json(KycCompleteAnswer {
                success: true,
                issuance_id: row.id,
                state: row.state,
                core_claim_hash: row.core_claim_hash,
            }),
        )
            .into_response();
    }
    Ok(res)
}

/// iDenfy's verdict.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct IdenfyStatus {
    /// `APPROVED` is acted on; anything else is recorded and ignored.
    overall: Option<String>,
}

/// iDenfy's verification result (the members keyhost reads; others are ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdenfyWebhook {
    /// Whether the result is final: only final results are acted on.
    #[serde(rename = "final")]
    is_final: Option<bool>,
    /// The verdict.
    status: Option<IdenfyStatus>,
    /// iDenfy's verification id: one issuance per scanRef.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 200)]
    scan_ref: Option<String>,
    /// Your id for the user: an email, or a clientId mapped with `POST /admin/kyc-subjects`.
    client_id: Option<String>,
}

/// What became of an iDenfy delivery.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum IdenfyAction {
    /// An issuance was started.
    Queued,
    /// Approved, but no email is known for its clientId: recorded, nothing issued.
    Unmatched,
    /// Not final, or not approved: nothing to do.
    Ignored,
    /// The scanRef already started an issuance, or the same bytes arrived before.
    Duplicate,
}

/// The answer to an iDenfy delivery.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct IdenfyReply {
    /// Always `true`.
    received: bool,
    /// The delivery's scanRef.
    scan_ref: String,
    /// What became of it.
    action: IdenfyAction,
    /// A delivery received again byte for byte: how many more times it arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    repeats: Option<u32>,
    /// A delivery received again byte for byte: when it first arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    first_received_at: Option<String>,
    /// Ignored: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Queued: the issuance it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    issuance_id: Option<String>,
}

/// iDenfy's verification webhook.
///
/// Verified by `Idenfy-Signature` under `KEYHOST_IDENFY_SIGNING_KEY`, answered at once; acts on
/// final `APPROVED` results once per `scanRef`, issuing through the durable queue to the email
/// its `clientId` maps to. Every delivery is recorded (`GET /admin/kyc-events`).
#[utoipa::path(
    post,
    path = "/webhooks/idenfy",
    tag = "webhooks",
    params((
        "Idenfy-Signature" = String,
        Header,
        description = "hex HMAC-SHA256 of the raw body",
        pattern = "^[0-9a-fA-F]{64}$"
    )),
    request_body = IdenfyWebhook,
    responses(
        (status = 200, description = "received: queued, unmatched, ignored or duplicate", body = IdenfyReply),
        RawBodyErrors,
        Unauthorized,
        InternalError,
        Unavailable,
    )
)]
async fn idenfy(
    State(state): State<AppState>,
    _: Enabled,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let header = headers
        .get("idenfy-signature")
        .and_then(|v| v.to_str().ok());
    authenticate(
        &state,
        "idenfy",
        state.config.webhooks.idenfy_signing_key.as_ref(),
        "KEYHOST_IDENFY_SIGNING_KEY",
        |secret| match header {
            Some(sig) if signature_matches(secret, &body, sig) => Ok(()),
            Some(_) => Err("invalid webhook signature"),
            None => Err("missing webhook signature"),
        },
    )
    .await?;
    let hook: IdenfyWebhook = parse_json_object(&body)?;
    let scan_ref = hook
        .scan_ref
        .filter(|s| !s.is_empty() && s.chars().count() <= 200)
        .ok_or_else(|| ApiError::missing_value("scanRef is required"))?;
    let answer = state
        .kyc
        .idenfy(IdenfyDelivery {
            body_sha256: crate::auth::sha256(&body),
            scan_ref: scan_ref.clone(),
            client_id: hook
                .client_id
                .filter(|c| !c.is_empty() && c.chars().count() <= 200),
            is_final: hook.is_final,
            overall: hook.status.and_then(|s| s.overall),
        })
        .await?;
    let mut reply = IdenfyReply {
        received: true,
        scan_ref,
        action: IdenfyAction::Duplicate,
        repeats: None,
        first_received_at: None,
        reason: None,
        issuance_id: None,
    };
    match answer {
        IdenfyAnswer::Replay {
            repeats,
            first_received_at,
        } => {
            reply.repeats = Some(repeats);
            reply.first_received_at = Some(rfc3339(first_received_at));
        }
        IdenfyAnswer::Duplicate => {}
        IdenfyAnswer::Ignored(reason) => {
            reply.action = IdenfyAction::Ignored;
            reply.reason = Some(reason);
        }
        IdenfyAnswer::Unmatched => reply.action = IdenfyAction::Unmatched,
        IdenfyAnswer::Queued { issuance_id } => {
            reply.action = IdenfyAction::Queued;
            reply.issuance_id = Some(issuance_id);
        }
    }
    Ok((StatusCode::OK, Json(reply)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_raw_body() {
        let secret = SecretString::from("s3cret".to_owned());
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let tag = hmac::sign(&key, b"{\"a\":1}");
        let hex = hex::encode(tag.as_ref());
        assert!(signature_matches(&secret, b"{\"a\":1}", &hex));
        assert!(signature_matches(
            &secret,
            b"{\"a\":1}",
            &hex.to_uppercase()
        ));
        assert!(!signature_matches(&secret, b"{\"a\":2}", &hex));
        assert!(!signature_matches(&secret, b"{\"a\":1}", "zz"));
        assert!(!signature_matches(&secret, b"{\"a\":1}", ""));
    }
}
