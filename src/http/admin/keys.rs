//! `/admin/keys`: list, rotate, retire, revoke, import. Each change is followed by a lifecycle
//! round, so the JWKS and signers reflect it at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ACTOR;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody};
use crate::keys::{Alg, KeyView};

pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let list = state.lifecycle.inventory().await?;
    let views: Vec<KeyView> = list
        .iter()
        .map(|(k, ok)| KeyView::checked(k, *ok))
        .collect();
    Ok(Json(json!({ "keys": views })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    alg: Option<String>,
    emergency: Option<bool>,
}

pub(super) async fn rotate(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RotateRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let alg = match req.alg.as_deref() {
        None => return Err(ApiError::missing_value("alg is required (ES256 or RS256)")),
        Some(a) => a.parse::<Alg>().map_err(ApiError::bad_value)?,
    };
    let emergency = req.emergency.unwrap_or(false);
    let rotated = state.lifecycle.rotate(alg, emergency, ACTOR).await?;
    let mut body = json!({ "key": KeyView::from(&rotated.key) });
    if emergency {
        body["revoked"] = json!(rotated.revoked);
    }
    if let Some(w) = rotated.warning {
        body["warning"] = json!(w);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

pub(super) async fn retire(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = state.lifecycle.retire(kid, ACTOR).await?;
    Ok(Json(json!({ "key": KeyView::from(&key) })))
}

pub(super) async fn revoke(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (key, warning) = state.lifecycle.revoke(kid, ACTOR).await?;
    let mut body = json!({ "key": KeyView::from(&key) });
    if let Some(w) = warning {
        body["warning"] = json!(w);
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRequest {
    /// The private key; held in a redacting, zeroising type.
    pem: Option<secrecy::SecretString>,
    kid: Option<String>,
}

pub(super) async fn import(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let pem = req
        .pem
        .ok_or_else(|| ApiError::missing_value("pem is required (the private key in PEM form)"))?;
    let key = state.lifecycle.import(pem, req.kid, ACTOR).await?;
    let mut body = json!({ "key": KeyView::from(&key) });
    if key.kid != key.public_jwk.thumbprint() {
        body["note"] = json!(
            "an explicit kid can name only one published key at a time: a successor needs \
             another kid"
        );
    }
    Ok((StatusCode::CREATED, Json(body)))
}
