//! `/admin/audit`: the audit trail, newest first, paged with `before`.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, QueryParams};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_value("limit must be between 1 and 1000"));
    }
    let entries = state.audit.entries(limit, q.before).await?;
    Ok(Json(json!({ "entries": entries })))
}
