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
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::{RawBody, parse_json_object};
use super::issuance::issuance_response;
use crate::clock::rfc3339;
use crate::email::Email;
use crate::kyc::{IdenfyAnswer, IdenfyDelivery, KycCompleteDelivery};

/// Webhook routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/kyc-complete", post(kyc_complete))
        .route("/webhooks/idenfy", post(idenfy))
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KycComplete {
    user_email: Option<String>,
    kyc_level: Option<Value>,
    event_id: Option<String>,
}

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
        Some(id) if id.is_empty() || id.len() > 200 => {
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
            Json(json!({
                "success": true,
                "issuanceId": row.id,
                "state": row.state,
                "coreClaimHash": row.core_claim_hash,
            })),
        )
            .into_response();
    }
    Ok(res)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdenfyStatus {
    overall: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdenfyWebhook {
    #[serde(rename = "final")]
    is_final: Option<bool>,
    status: Option<IdenfyStatus>,
    scan_ref: Option<String>,
    client_id: Option<String>,
}

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
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .ok_or_else(|| ApiError::missing_value("scanRef is required"))?;
    let answer = state
        .kyc
        .idenfy(IdenfyDelivery {
            body_sha256: crate::auth::sha256(&body),
            scan_ref: scan_ref.clone(),
            client_id: hook.client_id.filter(|c| !c.is_empty() && c.len() <= 200),
            is_final: hook.is_final,
            overall: hook.status.and_then(|s| s.overall),
        })
        .await?;
    let (action, extra) = match answer {
        IdenfyAnswer::Replay {
            repeats,
            first_received_at,
        } => (
            "duplicate",
            json!({"repeats": repeats, "firstReceivedAt": rfc3339(first_received_at)}),
        ),
        IdenfyAnswer::Duplicate => ("duplicate", json!({})),
        IdenfyAnswer::Ignored(reason) => ("ignored", json!({ "reason": reason })),
        IdenfyAnswer::Unmatched => ("unmatched", json!({})),
        IdenfyAnswer::Queued { issuance_id } => ("queued", json!({ "issuanceId": issuance_id })),
    };
    let mut body = json!({"received": true, "scanRef": scan_ref, "action": action});
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    Ok((StatusCode::OK, Json(body)).into_response())
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
