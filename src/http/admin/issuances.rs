//! `/admin/issuances`: list, one, resume.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ACTOR, ListQuery, limit_of};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, QueryParams};
use crate::issuance::IssuanceView;
use crate::store;

pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(&q)?;
    if let Some(s) = &q.state
        && !crate::issuance::state::ALL.contains(&s.as_str())
    {
        return Err(ApiError::bad_value(format!(
            "state must be one of {}",
            crate::issuance::state::ALL.join(", ")
        )));
    }
    let rows = state
        .issuance
        .list(q.state, limit)
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
    match state.issuance.resume(&id).await {
        Ok(Some(row)) => {
            let (store, now) = (state.store.clone(), state.clock.now());
            let subject = row.id.clone();
            store
                .write(move |tx| {
                    store::audit::record(tx, now, ACTOR, "issuance.resume", &subject, &json!({}))
                })
                .await?;
            Ok(Json(IssuanceView::from(&row)))
        }
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(crate::issuance::IssuanceError::Invalid(m)) => Err(ApiError::conflict(m)),
        Err(e) => Err(e.into()),
    }
}
