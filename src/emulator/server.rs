//! The emulator's HTTP surface: routes, the fault and rate-limit gate, and AIR Kit's error body.
//!
//! Every request goes through the same stages, in the order AIR Kit's own infrastructure would
//! apply them: added latency, then the per-partner rate limit and injected faults, then
//! authentication, then body validation, then the business rules. Every answer, including
//! framework rejections and unknown paths, carries AIR's `{"error", "message"}` body and is
//! counted by status.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower_http::catch_panic::CatchPanicLayer;

use super::EmulatorArgs;
use super::control::EmulatorControl;
use super::credentials::{Credentials, Issued, OnDuplicate, Status, normalise_email};
use super::jwks::JwksCache;
use super::verify::{AuthError, Verifier};
use crate::clock::Clock;
use crate::partner_jwt::UnverifiedToken;

/// The header AIR Kit reads the Partner JWT from.
const PARTNER_AUTH: &str = "x-partner-auth";

type PartnerLimiter = governor::DefaultKeyedRateLimiter<String>;

/// An answer in AIR Kit's error shape: `{"error": <status>, "message": "..."}`, plus the
/// existing `coreClaimHash` for a duplicate refused under `onDuplicate: "ignore"`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub(super) struct AirError {
    status: StatusCode,
    message: String,
    core_claim_hash: Option<String>,
    retry_after: Option<u64>,
}

impl AirError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            core_claim_hash: None,
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }
}

impl From<AuthError> for AirError {
    fn from(e: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl IntoResponse for AirError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.status.as_u16()));
        body.insert("message".into(), json!(self.message));
        if let Some(hash) = self.core_claim_hash {
            body.insert("coreClaimHash".into(), json!(hash));
        }
        let mut res = (self.status, Json(Value::Object(body))).into_response();
        if let Some(seconds) = self.retry_after {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        res
    }
}

/// Everything the handlers share.
pub(super) struct AppState {
    pub(super) control: Arc<EmulatorControl>,
    verifier: Verifier,
    credentials: Arc<Credentials>,
    issuer_dids: HashSet<String>,
    credential_ids: HashSet<String>,
    forbidden_credential_ids: HashSet<String>,
    consent_rejected: HashSet<String>,
    limiter: Option<(PartnerLimiter, u32)>,
    rng: SystemRandom,
    clock: Arc<dyn Clock>,
}

impl AppState {
    /// State for validated `args`, fetching the JWKS with `http`; latency, the JWKS cache's
    /// age and the on-chain delay are measured on `clock`.
    pub(super) fn new(args: &EmulatorArgs, http: reqwest::Client, clock: Arc<dyn Clock>) -> Self {
        let credentials = Arc::new(Credentials::new(args.onchain_delay, clock.clone()));
        let control = Arc::new(EmulatorControl::new(
            args.fail_rate_429,
            args.fail_rate_500,
            args.latency,
            credentials.clone(),
        ));
        let limiter = args.rate_limit.and_then(NonZeroU32::new).map(|n| {
            (
                governor::RateLimiter::keyed(governor::Quota::per_second(n)),
                n.get(),
            )
        });
        Self {
            control,
            verifier: Verifier::new(
                JwksCache::new(args.jwks_url.clone(), http, clock.clone()),
                args.partner_id.clone(),
                args.accept_scopes.clone(),
            ),
            credentials,
            issuer_dids: args.issuer_dids.iter().cloned().collect(),
            credential_ids: args.credential_ids.iter().cloned().collect(),
            forbidden_credential_ids: args.forbidden_credential_ids.iter().cloned().collect(),
            consent_rejected: args
                .consent_rejected
                .iter()
                .map(|e| normalise_email(e))
                .collect(),
            limiter,
            rng: SystemRandom::new(),
            clock,
        }
    }

    /// The JWKS URL.
    pub(super) fn jwks_url(&self) -> &str {
        self.verifier.jwks_url()
    }

    /// A uniform draw from [0, 1).
    fn draw(&self) -> Result<f64, AirError> {
        let mut bytes = [0u8; 8];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| AirError::internal())?;
        // 53 random bits: exactly representable, uniform over [0, 1).
        Ok((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The emulator's routes and layers.
pub(super) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/credentials/issue-on-behalf", post(issue_on_behalf))
        .route("/v1/credentials/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("the AIR Kit emulator panicked while handling a request");
    AirError::internal().into_response()
}

async fn not_found() -> AirError {
    AirError::new(StatusCode::NOT_FOUND, "Not found")
}

async fn method_not_allowed() -> AirError {
    AirError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

/// Counts and logs every answer. The token is never logged: only method, path and status.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    state.control.record_status(status);
    tracing::debug!(
        %method,
        path,
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "AIR Kit emulator request"
    );
    res
}

/// The partnerId an unverified token claims, to key the rate limit on before authentication
/// (AIR Kit limits per partner, and rejects over-limit requests without verifying them).
fn claimed_partner_id(headers: &HeaderMap) -> Option<String> {
    let token = UnverifiedToken::parse(headers.get(PARTNER_AUTH)?.to_str().ok()?).ok()?;
    let partner_id = token.unverified_claim("partnerId")?.as_str()?;
    Some(partner_id.to_owned())
}

/// Latency, then the per-partner rate limit, then injected 429 and 500 faults.
async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let latency = state.control.latency();
    if !latency.is_zero() {
        state.clock.sleep(latency).await;
    }
    if let Some((limiter, per_second)) = &state.limiter {
        let key = match claimed_partner_id(req.headers()) {
            Some(partner) => format!("partner:{partner}"),
            None => match req.extensions().get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(addr)) => format!("addr:{}", addr.ip()),
                None => "addr:unknown".to_owned(),
            },
        };
        // Keys of callers long gone would otherwise accumulate for the life of the process.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::debug!(key, "AIR Kit emulator rate limit exceeded");
            return AirError {
                retry_after: Some(seconds.max(1)),
                ..AirError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many requests: the limit is {per_second} requests per second per \
                         partner. Back off and retry with exponential delays."
                    ),
                )
            }
            .into_response();
        }
    }
    let fault = match state.draw() {
        Ok(draw) if draw < state.control.fail_rate_429() => Some(AirError {
            retry_after: Some(1),
            ..AirError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests. Back off and retry with exponential delays.",
            )
        }),
        Ok(_) => match state.draw() {
            Ok(draw) if draw < state.control.fail_rate_500() => Some(AirError::internal()),
            Ok(_) => None,
            Err(e) => Some(e),
        },
        Err(e) => Some(e),
    };
    if let Some(fault) = fault {
        tracing::debug!(
            status = fault.status.as_u16(),
            "AIR Kit emulator injected fault"
        );
        return fault.into_response();
    }
    next.run(req).await
}

/// The validated body of an issue-on-behalf request.
struct IssueRequest {
    issuer_did: String,
    credential_id: String,
    on_duplicate: OnDuplicate,
}

/// Checks the body field by field, naming the first field that is wrong.
fn parse_issue_body(headers: &HeaderMap, body: &[u8]) -> Result<IssueRequest, AirError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(AirError::bad_request(
            "Content-Type must be application/json",
        ));
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(AirError::bad_request("Request body must be a JSON object"));
    };
    let issuer_did = match body.get("issuerDid") {
        None => return Err(AirError::bad_request("issuerDid is required")),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(AirError::bad_request(
                "issuerDid must be a non-empty string",
            ));
        }
    };
    let credential_id = match body.get("credentialId") {
        None => return Err(AirError::bad_request("credentialId is required")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(AirError::bad_request("credentialId must be a string")),
    };
    match body.get("credentialSubject") {
        None => return Err(AirError::bad_request("credentialSubject is required")),
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(AirError::bad_request("credentialSubject must be an object"));
        }
    }
    let on_duplicate = match body.get("onDuplicate") {
        None => OnDuplicate::Revoke,
        Some(Value::String(s)) if s == "ignore" => OnDuplicate::Ignore,
        Some(Value::String(s)) if s == "revoke" => OnDuplicate::Revoke,
        Some(_) => {
            return Err(AirError::bad_request(
                "onDuplicate must be \"ignore\" or \"revoke\"",
            ));
        }
    };
    Ok(IssueRequest {
        issuer_did,
        credential_id,
        on_duplicate,
    })
}

/// `POST /v1/credentials/issue-on-behalf`.
async fn issue_on_behalf(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AirError> {
    let caller = state.verifier.verify(headers.get(PARTNER_AUTH)).await?;
    // A body the framework refused (too large, unreadable) is reported after authentication,
    // like any other body problem.
    let body = body.map_err(|r| AirError::new(r.status(), r.body_text()))?;
    let req = parse_issue_body(&headers, &body)?;
    state
        .control
        .record_issue_call(&caller.email, &req.credential_id, req.on_duplicate.as_str());

    if !state.issuer_dids.is_empty() && !state.issuer_dids.contains(&req.issuer_did) {
        return Err(AirError::new(StatusCode::NOT_FOUND, "Unknown issuer DID"));
    }
    if !state.credential_ids.is_empty() && !state.credential_ids.contains(&req.credential_id) {
        return Err(AirError::new(StatusCode::NOT_FOUND, "Unknown program ID"));
    }
    if state.forbidden_credential_ids.contains(&req.credential_id) {
        return Err(AirError::new(
            StatusCode::FORBIDDEN,
            "Schema not allowed for this issuer",
        ));
    }
    if state
        .consent_rejected
        .contains(&normalise_email(&caller.email))
    {
        return Err(AirError::new(StatusCode::CONFLICT, "User consent rejected"));
    }

    let issued = state
        .credentials
        .issue(
            &state.rng,
            &caller.email,
            &req.issuer_did,
            &req.credential_id,
            req.on_duplicate,
        )
        .map_err(|_| AirError::internal())?;
    match issued {
        Issued::New {
            core_claim_hash,
            user_uuid,
        } => {
            tracing::debug!(core_claim_hash, "AIR Kit emulator issued a credential");
            Ok(Json(json!({
                "coreClaimHash": core_claim_hash,
                "credentialId": req.credential_id,
                "userUuid": user_uuid,
            })))
        }
        Issued::Duplicate { core_claim_hash } => Err(AirError {
            core_claim_hash: Some(core_claim_hash),
            ..AirError::new(
                StatusCode::CONFLICT,
                "Duplicate credential exists (onDuplicate: ignore)",
            )
        }),
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(rename = "coreClaimHash")]
    core_claim_hash: Option<String>,
}

/// `GET /v1/credentials/status?coreClaimHash=`.
async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<Value>, AirError> {
    state.verifier.verify(headers.get(PARTNER_AUTH)).await?;
    let hash = query
        .ok()
        .and_then(|Query(q)| q.core_claim_hash)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AirError::bad_request("coreClaimHash query parameter is required"))?;
    match state.credentials.status(&hash) {
        None => Err(AirError::new(
            StatusCode::NOT_FOUND,
            "No credential found for the given hash.",
        )),
        Some(Status::WaitOnchain) => Ok(Json(json!({
            "coreClaimHash": hash,
            "vcStatus": "WAIT_ONCHAIN",
        }))),
        Some(Status::Onchain {
            issuance_date,
            issuer_did,
            vc_id,
        }) => Ok(Json(json!({
            "coreClaimHash": hash,
            "issuanceDate": issuance_date,
            "issuerDid": issuer_did,
            "vcId": vc_id,
            "vcStatus": "ONCHAIN",
        }))),
    }
}
