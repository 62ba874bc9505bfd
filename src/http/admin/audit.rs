//! `/admin/audit`: the audit trail, newest first, paged with `before`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::audit::AuditView;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, QueryParams};
use crate::http::openapi::{AuthErrors, BadRequest, InternalError};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// How many entries (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only entries with a smaller id (the last `id` of the previous page).
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    before: Option<i64>,
}

/// A page of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditPage {
    /// Newest first.
    entries: Vec<AuditView>,
}

/// The audit trail, newest first.
///
/// Who (`admin:<name>`, `admin:bootstrap`, `cli:<user>`, `scheduler`, `webhook`, `client:<id>`), what, when; minted
/// tokens appear as one `token.mint` row per client, key and minute, with the count, dated at the
/// start of that minute and written once it is over.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    security(("adminToken" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "entries", body = AuditPage),
        BadRequest,
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = super::limit_of(q.limit)?;
    let entries = state.audit.entries(limit, q.before).await?;
    Ok(Json(AuditPage { entries }))
}
