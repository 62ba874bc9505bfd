//! The issuance proxy's routes: `POST /v1/credentials/issue-on-behalf`,
//! `GET /v1/credentials/status` and `GET /v1/issuances/{id}`, for API clients allowed the issue
//! scope (`KEYHOST_ISSUE_SCOPE`).
//!
//! An issuance is answered once AIR Kit has answered (200 with the upstream fields and keyhost's
//! `issuanceId`), or with 202 and the issuance id if retries are still running after
//! `KEYHOST_AIRKIT_WAIT`; AIR's refusals come back as errors that carry AIR's status, message and
//! the fix.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientAuth, JsonBody, QueryParams};
use super::openapi::{
    AuthErrors, BadGateway, BadRequest, Conflict, Forbidden, InternalError, JsonBodyErrors,
    NotFound, Routes, Unavailable,
};
use crate::airkit::TransportError;
use crate::auth::Client;
use crate::email::Email;
use crate::issuance::policy::{AirFault, fault_for};
use crate::issuance::{
    Issuance, IssuanceError, IssuanceSource, IssuanceState, IssuanceView, NewIssuance, OnDuplicate,
    StatusError, WaitFor,
};

/// The proxy's routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(issue))
        .route(routes!(status))
        .route(routes!(one))
}

impl From<IssuanceError> for ApiError {
    fn from(e: IssuanceError) -> Self {
        match e {
            IssuanceError::NotConfigured(m) => ApiError::unavailable(m, 60),
            IssuanceError::Missing(m) => ApiError::missing_value(m),
            IssuanceError::Invalid(m) => ApiError::bad_value(m),
            e @ IssuanceError::IdempotencyConflict(_) => ApiError::conflict(e.to_string()),
            IssuanceError::Store(e) => ApiError::internal(&e),
        }
    }
}

fn require_issue_scope(state: &AppState, client: &Client) -> Result<(), ApiError> {
    let scope = &state.issuance.settings().scope;
    if client.scopes.iter().any(|s| s == scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "client {} may not issue: it lacks the scope {scope:?} (KEYHOST_ISSUE_SCOPE)",
            client.id
        )))
    }
}

/// A credential to issue on a user's behalf.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IssueRequest {
    /// The user's email.
    #[schema(schema_with = crate::http::openapi::email, required = true)]
    email: Option<String>,
    /// The credential data, as the program's schema wants it.
    #[schema(schema_with = crate::http::openapi::json_object, required = true)]
    credential_subject: Option<Value>,
    /// Issuer DID (default `KEYHOST_ISSUER_DID`).
    #[schema(schema_with = crate::http::openapi::not_blank_or_null)]
    issuer_did: Option<String>,
    /// Program id (default `KEYHOST_CREDENTIAL_ID`).
    #[schema(schema_with = crate::http::openapi::not_blank_or_null)]
    credential_id: Option<String>,
    /// What AIR Kit does when the user already holds the credential: `revoke` (the default)
    /// revokes it and issues again, `ignore` keeps it (the answer is the existing issuance,
    /// `"duplicate": true`).
    #[schema(schema_with = crate::http::openapi::on_duplicate_or_null)]
    on_duplicate: Option<OnDuplicate>,
    /// `true`: answer only once the credential is `ONCHAIN`, waiting up to `KEYHOST_AIRKIT_WAIT`
    /// or a minute, whichever is longer.
    wait: Option<bool>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k)
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::bad_value(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// keyhost's error for an AIR Kit answer that was not a success (`fault_for` its status),
/// with `message`; `retry_after` (seconds) goes with a 429.
fn air_error(fault: AirFault, message: String, retry_after: u64) -> ApiError {
    match fault {
        AirFault::Validation => ApiError::validation(message),
        // keyhost's token was refused, not the caller's credentials.
        AirFault::TokenRejected => {
            ApiError::with_status(StatusCode::BAD_GATEWAY, "UNAUTHORIZED", message)
        }
        AirFault::Forbidden => ApiError::forbidden(message),
        AirFault::NotFound => ApiError::not_found(message),
        AirFault::Conflict => ApiError::conflict(message),
        AirFault::RateLimited => ApiError::too_many_requests(message, retry_after),
        AirFault::BadGateway => {
            ApiError::with_status(StatusCode::BAD_GATEWAY, "INTERNAL_ERROR", message)
        }
    }
}

/// The answer for an issuance in its current state.
pub fn issuance_response(issuance: &Issuance) -> Response {
    let view = IssuanceView::from(issuance);
    let location = HeaderValue::from_str(&format!("/v1/issuances/{}", issuance.id)).ok();
    let with_location = |status: StatusCode| {
        let mut res = (status, Json(&view)).into_response();
        if let Some(l) = location.clone() {
            res.headers_mut().insert(header::LOCATION, l);
        }
        res
    };
    let message = || {
        format!(
            "{} (issuance {})",
            issuance.last_error.as_deref().unwrap_or("failed"),
            issuance.id
        )
    };
    match issuance.state {
        IssuanceState::Queued => with_location(StatusCode::ACCEPTED),
        IssuanceState::Submitted | IssuanceState::Onchain | IssuanceState::Unconfirmed => {
            with_location(StatusCode::OK)
        }
        // The retry budget ran out: AIR's rate limit, or an outage.
        IssuanceState::Stalled => match fault_for(issuance.last_status) {
            AirFault::RateLimited => ApiError::too_many_requests(message(), 60).into_response(),
            AirFault::Validation
            | AirFault::TokenRejected
            | AirFault::Forbidden
            | AirFault::NotFound
            | AirFault::Conflict
            | AirFault::BadGateway => ApiError::unavailable(message(), 60).into_response(),
        },
        IssuanceState::Failed => {
            air_error(fault_for(issuance.last_status), message(), 60).into_response()
        }
    }
}

/// Issue an AIR credential on a user's behalf.
///
/// Durable (written before the first upstream call, resumed after a restart), retried (429, 5xx,
/// timeouts, with backoff, a fresh Partner JWT each time, up to `KEYHOST_AIRKIT_MAX_ATTEMPTS`;
/// then `stalled`), idempotent with `Idempotency-Key` (the same key with another request is 409).
/// AIR's refusals (400, 403, 404, 409) are never retried: the answer carries AIR's status, its
/// message and the fix; AIR refusing keyhost's Partner JWT is 502 `UNAUTHORIZED`.
#[utoipa::path(
    post,
    path = "/v1/credentials/issue-on-behalf",
    tag = "issuance",
    security(("clientKey" = [])),
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "Replaying a request with the same key returns the earlier issuance",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )),
    request_body = IssueRequest,
    responses(
        (
            status = 200,
            description = "AIR Kit accepted it (`submitted`, or `onchain` with `wait`)",
            body = crate::issuance::IssuanceView,
            headers(("Location" = String, description = "/v1/issuances/{issuanceId}"))
        ),
        (
            status = 202,
            description = "still retrying after `KEYHOST_AIRKIT_WAIT`; follow `Location`",
            body = crate::issuance::IssuanceView,
            headers(("Location" = String, description = "/v1/issuances/{issuanceId}"))
        ),
        JsonBodyErrors,
        AuthErrors,
        Forbidden,
        NotFound,
        Conflict,
        InternalError,
        BadGateway,
        Unavailable,
    )
)]
async fn issue(
    State(state): State<AppState>,
    ClientAuth(client): ClientAuth,
    headers: HeaderMap,
    JsonBody(req): JsonBody<IssueRequest>,
) -> Result<Response, ApiError> {
    require_issue_scope(&state, &client)?;
    super::check_client_rate(&state, &client)?;
    let key = idempotency_key(&headers)?;
    let email = req
        .email
        .ok_or_else(|| ApiError::missing_value("email is required"))?;
    Email::parse(&email)?;
    let subject = req
        .credential_subject
        .ok_or_else(|| ApiError::missing_value("credentialSubject is required"))?;
    let (row, _) = state
        .issuance
        .submit(NewIssuance {
            source: IssuanceSource::Client(client.id.clone()),
            idempotency_key: key,
            email,
            issuer_did: req.issuer_did,
            credential_id: req.credential_id,
            credential_subject: subject,
            on_duplicate: req.on_duplicate,
        })
        .await?;
    let (until, timeout) = if req.wait.unwrap_or(false) {
        (
            WaitFor::Onchain,
            state
                .config
                .airkit
                .wait
                .max(std::time::Duration::from_secs(60)),
        )
    } else {
        (WaitFor::Answer, state.config.airkit.wait)
    };
    let row = state
        .issuance
        .wait(&row.id, until, timeout)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(issuance_response(&row))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// AIR's issuance id.
    #[param(required = true, value_type = String, min_length = 1, max_length = 256)]
    core_claim_hash: Option<String>,
    /// The user's email, for a hash this client did not issue through keyhost (keyhost never
    /// lends one client the email of another's issuance).
    #[param(schema_with = crate::http::openapi::email)]
    email: Option<String>,
}

/// AIR Kit's status of a credential.
#[utoipa::path(
    get,
    path = "/v1/credentials/status",
    tag = "issuance",
    security(("clientKey" = [])),
    params(StatusQuery),
    responses(
        (status = 200, description = "AIR's status body", body = Object),
        BadRequest,
        AuthErrors,
        Forbidden,
        NotFound,
        InternalError,
        BadGateway,
        Unavailable,
    )
)]
async fn status(
    State(state): State<AppState>,
    ClientAuth(client): ClientAuth,
    QueryParams(q): QueryParams<StatusQuery>,
) -> Result<Response, ApiError> {
    require_issue_scope(&state, &client)?;
    let hash = q
        .core_claim_hash
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ApiError::missing_value("coreClaimHash is required"))?;
    if hash.len() > 256 {
        return Err(ApiError::bad_value("coreClaimHash is too long"));
    }
    if let Some(e) = &q.email {
        Email::parse(e)?;
    }
    super::check_client_rate(&state, &client)?;
    let reply = state
        .issuance
        .status(
            &hash,
            q.email.as_deref(),
            &IssuanceSource::Client(client.id.clone()),
        )
        .await
        .map_err(|e| match e {
            StatusError::NotConfigured(m) => ApiError::unavailable(m, 60),
            StatusError::UnknownHash => ApiError::not_found(e.to_string()),
            StatusError::NoToken(_) => ApiError::unavailable(e.to_string(), 5),
            // An oversized answer is a bad answer from upstream, not an outage: 502, and no
            // Retry-After, since asking again soon gets the same answer.
            StatusError::Transport(TransportError::TooLarge { .. }) => {
                ApiError::with_status(StatusCode::BAD_GATEWAY, "INTERNAL_ERROR", e.to_string())
            }
            StatusError::Transport(_) => ApiError::unavailable(e.to_string(), 5),
            StatusError::Store(e) => ApiError::internal(&e),
        })?;
    if reply.status == 200 {
        return Ok((StatusCode::OK, Json(reply.body)).into_response());
    }
    let fault = fault_for(Some(reply.status));
    let message = match fault {
        // AIR's own words say which hash it does not know; its issue-time fix would mislead.
        AirFault::NotFound => reply.message(),
        AirFault::Validation
        | AirFault::TokenRejected
        | AirFault::Forbidden
        | AirFault::Conflict
        | AirFault::RateLimited
        | AirFault::BadGateway => format!(
            "AIR Kit answered {}: {}. Fix: {}",
            reply.status,
            reply.message(),
            crate::airkit::hint::for_status(reply.status)
        ),
    };
    let retry_after = reply.retry_after.map_or(1, |d| d.as_secs());
    Err(air_error(fault, message, retry_after))
}

/// One of the calling client's issuances.
#[utoipa::path(
    get,
    path = "/v1/issuances/{id}",
    tag = "issuance",
    security(("clientKey" = [])),
    params(("id" = String, Path, description = "issuance id")),
    responses(
        (status = 200, description = "the issuance", body = crate::issuance::IssuanceView),
        AuthErrors,
        NotFound,
        InternalError,
    )
)]
async fn one(
    State(state): State<AppState>,
    ClientAuth(client): ClientAuth,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.get(&id).await {
        Ok(Some(issuance)) if issuance.source == IssuanceSource::Client(client.id.clone()) => {
            Ok(Json(IssuanceView::from(&issuance)))
        }
        Ok(_) => Err(ApiError::not_found(format!(
            "no issuance {id:?} of this client"
        ))),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::policy::fault_for;

    #[test]
    fn each_air_kit_status_has_one_keyhost_answer() {
        let cases = [
            (400, 400, "VALIDATION_ERROR"),
            (401, 502, "UNAUTHORIZED"),
            (403, 403, "PERMISSIONS_ERROR"),
            (404, 404, "NOT_FOUND"),
            (409, 409, "CONFLICT"),
            (429, 429, "TOO_MANY_REQUESTS"),
            (408, 502, "INTERNAL_ERROR"),
            (422, 502, "INTERNAL_ERROR"),
            (500, 502, "INTERNAL_ERROR"),
            (503, 502, "INTERNAL_ERROR"),
        ];
        for (air, status, identifier) in cases {
            let e = air_error(fault_for(Some(air)), "m".into(), 7);
            assert_eq!(
                (e.status().as_u16(), e.identifier()),
                (status, identifier),
                "{air}"
            );
        }
        let e = air_error(fault_for(None), "m".into(), 7);
        assert_eq!(
            (e.status().as_u16(), e.identifier()),
            (502, "INTERNAL_ERROR")
        );
        let limited = air_error(fault_for(Some(429)), "m".into(), 7).into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "7");
    }
}
