//! `/admin/clients`: create (the API key is shown once), list, disable.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ACTOR;
use crate::clients::ClientError;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody};

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(m) => ApiError::validation(m),
            ClientError::NotFound(id) => ApiError::not_found(format!("no client with id {id:?}")),
            e @ ClientError::AlreadyDisabled(_) => ApiError::conflict(e.to_string()),
            ClientError::Store(e) => ApiError::internal(&e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateClientRequest {
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

pub(super) async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateClientRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::missing_value("name is required"))?;
    let scopes = req
        .scopes
        .ok_or_else(|| ApiError::missing_value("scopes is required, e.g. [\"issue\"]"))?;
    let (view, api_key) = state.client_admin.create(&name, &scopes, ACTOR).await?;
    let mut body = serde_json::to_value(&view).map_err(|e| ApiError::internal(&e))?;
    body["apiKey"] = json!(secrecy::ExposeSecret::expose_secret(&api_key));
    Ok((StatusCode::CREATED, Json(body)))
}

pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let list = state.client_admin.list().await?;
    Ok(Json(json!({ "clients": list })))
}

pub(super) async fn disable(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = state.client_admin.disable(&id, ACTOR).await?;
    Ok(Json(json!({ "client": view })))
}
