//! `/admin/issuances`: list, one, resume.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ACTOR, ListQuery, limit_of};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, QueryParams};
use crate::issuance::IssuanceView;

pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(&q)?;
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
    let views: Vec<IssuanceView> = rows.iter().map(IssuanceView::from).collect();
    Ok(Json(json!({ "issuances": views })))
}

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

pub(super) async fn resume(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.resume(&id, ACTOR).await {
        Ok(Some(issuance)) => Ok(Json(IssuanceView::from(&issuance))),
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(crate::issuance::IssuanceError::Invalid(m)) => Err(ApiError::conflict(m)),
        Err(e) => Err(e.into()),
    }
}
