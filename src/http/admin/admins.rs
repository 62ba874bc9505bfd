//! `/admin/admins`: named admin credentials: create (the token is shown once), list, disable
//! (`bootstrap` names the bootstrap token).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admins::{AdminError, AdminListing, AdminView, Role};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody};
use crate::http::openapi::{
    AdminChangeErrors, AuthErrors, Conflict, InternalError, JsonBodyErrors, NotFound,
};

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => ApiError::validation(m),
            e @ AdminError::NotFound(_) => ApiError::not_found(e.to_string()),
            e @ (AdminError::NameTaken(_)
            | AdminError::AlreadyDisabled(_)
            | AdminError::LastOperator(_)) => ApiError::conflict(e.to_string()),
            AdminError::Store(e) => ApiError::internal(&e),
        }
    }
}

/// A new named admin credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAdminRequest {
    /// Who holds it, e.g. `alice`: 1 to 64 characters of a-z, 0-9, `.`, `_`, `-`. The audit
    /// trail names its changes `admin:<name>`; a name is never reused.
    #[schema(
        required = true,
        pattern = "^[a-z0-9][a-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    name: Option<String>,
    /// `reader` (may only read) or `operator` (may do everything).
    #[schema(required = true, value_type = Role)]
    role: Option<String>,
}

/// A new admin credential and its token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CreatedAdmin {
    #[serde(flatten)]
    admin: AdminView,
    /// `kha_<id>_<secret>`: keyhost keeps only its hash.
    token: String,
}

/// Create a named admin credential; its token is shown once.
#[utoipa::path(
    post,
    path = "/admin/admins",
    tag = "admin",
    security(("adminToken" = [])),
    request_body = CreateAdminRequest,
    responses(
        (status = 201, description = "the credential with its token", body = CreatedAdmin),
        JsonBodyErrors,
        AdminChangeErrors,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn create(
    admin: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateAdminRequest>,
) -> Result<(StatusCode, Json<CreatedAdmin>), ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::missing_value("name is required"))?;
    let role: Role = req
        .role
        .ok_or_else(|| ApiError::missing_value("role is required (reader or operator)"))?
        .parse()
        .map_err(ApiError::bad_value)?;
    let (view, token) = state
        .admin_service
        .create(&name, role, &admin.actor())
        .await?;
    let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
    Ok((
        StatusCode::CREATED,
        Json(CreatedAdmin { admin: view, token }),
    ))
}

/// Named admin credentials (never their tokens) and the bootstrap token's state.
#[utoipa::path(
    get,
    path = "/admin/admins",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "admin credentials", body = AdminListing),
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<AdminListing>, ApiError> {
    Ok(Json(state.admin_service.list().await?))
}

/// Disable a named admin credential, or the bootstrap token (`bootstrap`), at once. Refused
/// when it would leave no enabled operator.
#[utoipa::path(
    post,
    path = "/admin/admins/{name}/disable",
    tag = "admin",
    security(("adminToken" = [])),
    params(("name" = String, Path, description = "admin name, or `bootstrap`")),
    responses(
        (status = 200, description = "disabled; the listing as it is now", body = AdminListing),
        AdminChangeErrors,
        NotFound,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn disable(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AdminListing>, ApiError> {
    Ok(Json(
        state.admin_service.disable(&name, &admin.actor()).await?,
    ))
}
