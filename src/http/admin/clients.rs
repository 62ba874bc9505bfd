//! `/admin/clients`: create (the API key is shown once), list, disable.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clients::{ClientError, ClientView};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody};
use crate::http::openapi::{
    AdminChangeErrors, AuthErrors, Conflict, InternalError, JsonBodyErrors, NotFound,
};

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

/// A new API client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateClientRequest {
    /// What the client is for.
    #[schema(schema_with = crate::http::openapi::name, required = true)]
    name: Option<String>,
    /// The scopes it may request, e.g. `["issue"]` (repeats are dropped).
    #[schema(
        schema_with = crate::http::openapi::scopes,
        required = true
    )]
    scopes: Option<Vec<String>>,
}

/// A new client and its API key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedClient {
    #[serde(flatten)]
    client: ClientView,
    /// khc_<id>_<secret>: keyhost keeps only its hash.
    api_key: String,
}

/// Create an API client; its key is shown once.
#[utoipa::path(
    post,
    path = "/admin/clients",
    tag = "admin",
    security(("adminToken" = [])),
    request_body = CreateClientRequest,
    responses(
        (status = 201, description = "the client with its apiKey", body = CreatedClient),
        JsonBodyErrors,
        AdminChangeErrors,
        InternalError,
    )
)]
pub(super) async fn create(
    admin: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateClientRequest>,
) -> Result<(StatusCode, Json<CreatedClient>), ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::missing_value("name is required"))?;
    let scopes = req
        .scopes
        .ok_or_else(|| ApiError::missing_value("scopes is required, e.g. [\"issue\"]"))?;
    let (client, api_key) = state
        .client_admin
        .create(&name, &scopes, &admin.actor())
        .await?;
    let api_key = secrecy::ExposeSecret::expose_secret(&api_key).to_owned();
    Ok((StatusCode::CREATED, Json(CreatedClient { client, api_key })))
}

/// Every API client.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClientList {
    /// In order of creation.
    clients: Vec<ClientView>,
}

/// API clients (never their keys).
#[utoipa::path(
    get,
    path = "/admin/clients",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "clients", body = ClientList),
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<ClientList>, ApiError> {
    let clients = state.client_admin.list().await?;
    Ok(Json(ClientList { clients }))
}

/// A client as it is now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClientAnswer {
    /// The client.
    client: ClientView,
}

/// Disable a client: its key stops working at once.
#[utoipa::path(
    post,
    path = "/admin/clients/{id}/disable",
    tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "client id")),
    responses(
        (status = 200, description = "disabled", body = ClientAnswer),
        AdminChangeErrors,
        NotFound,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn disable(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientAnswer>, ApiError> {
    let client = state.client_admin.disable(&id, &admin.actor()).await?;
    Ok(Json(ClientAnswer { client }))
}
