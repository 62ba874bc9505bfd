//! `/admin/issuances`: list, one, resume.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ListQuery, limit_of};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, QueryParams};
use crate::http::openapi::{
    AdminChangeErrors, AuthErrors, BadRequest, Conflict, InternalError, NotFound, Unavailable,
};
use crate::issuance::IssuanceView;

/// Issuance records.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuanceList {
    /// Newest first.
    issuances: Vec<IssuanceView>,
}

/// Issuance records, newest first.
#[utoipa::path(
    get,
    path = "/admin/issuances",
    tag = "admin",
    security(("adminToken" = [])),
    params(
        (
            "state" = Option<crate::http::openapi::IssuanceState>,
            Query,
            description = "only issuances in this state"
        ),
        (
            "limit" = Option<u32>,
            Query,
            description = "how many (default 100)",
            minimum = 1,
            maximum = 1000
        ),
    ),
    responses(
        (status = 200, description = "issuances", body = IssuanceList),
        BadRequest,
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<IssuanceList>, ApiError> {
    let limit = limit_of(q.limit)?;
    let wanted = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| {
            ApiError::bad_value(format!(
                "state must be one of {}",
                crate::issuance::state::ALL.join(", ")
            ))
        })?;
    let rows = state
        .issuance
        .list(wanted, limit)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let issuances = rows.iter().map(IssuanceView::from).collect();
    Ok(Json(IssuanceList { issuances }))
}

/// One issuance.
#[utoipa::path(
    get,
    path = "/admin/issuances/{id}",
    tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "issuance id")),
    responses(
        (status = 200, description = "the issuance", body = IssuanceView),
        AuthErrors,
        NotFound,
        InternalError,
    )
)]
pub(super) async fn one(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.get(&id).await {
        Ok(Some(row)) => Ok(Json(IssuanceView::from(&row))),
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

/// Resume a stalled or unconfirmed issuance: it goes back to work.
#[utoipa::path(
    post,
    path = "/admin/issuances/{id}/resume",
    tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "issuance id")),
    responses(
        (status = 200, description = "resumed", body = IssuanceView),
        AdminChangeErrors,
        NotFound,
        Conflict,
        InternalError,
        Unavailable,
    )
)]
pub(super) async fn resume(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.resume(&id, &admin.actor()).await {
        Ok(Some(issuance)) => Ok(Json(IssuanceView::from(&issuance))),
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(crate::issuance::IssuanceError::Invalid(m)) => Err(ApiError::conflict(m)),
        Err(e) => Err(e.into()),
    }
}
