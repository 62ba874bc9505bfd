//! `/admin/kyc-subjects` (the clientId → email mapping of iDenfy verifications) and
//! `/admin/kyc-events` (every KYC webhook delivery).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ACTOR, ListQuery, limit_of};
use crate::email::Email;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody, QueryParams};
use crate::kyc::Outcome;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct KycSubject {
    pub(crate) client_id: Option<String>,
    pub(crate) email: Option<String>,
}

pub(super) async fn put_subject(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<KycSubject>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let client_id = req
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::missing_value("clientId is required"))?;
    if client_id.len() > 200 {
        return Err(ApiError::bad_value(
            "clientId must be at most 200 characters",
        ));
    }
    let email = req
        .email
        .ok_or_else(|| ApiError::missing_value("email is required"))?;
    let email = Email::parse(&email)?;
    state
        .kyc
        .put_subject(client_id.clone(), email.clone(), ACTOR)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"clientId": client_id, "email": email.as_str()})),
    ))
}

pub(super) async fn subjects(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let subjects = state.kyc.subjects().await?;
    Ok(Json(json!({ "subjects": subjects })))
}

pub(super) async fn events(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(&q)?;
    let outcome = q
        .outcome
        .as_deref()
        .map(str::parse::<Outcome>)
        .transpose()
        .map_err(ApiError::bad_value)?;
    let events = state.kyc.events(outcome, limit).await?;
    Ok(Json(json!({ "events": events })))
}
