//! `/admin/...`: keys (list, rotate, retire, revoke, import), clients (create, list, disable),
//! issuances, KYC subjects and deliveries, and the audit trail, one file per resource. Every
//! route requires the admin token; every change is audited with the actor `admin-api`. Handlers
//! parse, call one service method and shape the answer.

mod audit;
mod clients;
mod issuances;
mod keys;
mod kyc;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;

pub(crate) use clients::CreateClientRequest;
pub(crate) use keys::{ImportRequest, RotateRequest};
pub(crate) use kyc::KycSubject;

use super::AppState;
use super::error::ApiError;

/// The actor of every change made through the admin API.
const ACTOR: &str = "admin-api";

/// Admin routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(keys::list))
        .route("/admin/keys/rotate", post(keys::rotate))
        .route("/admin/keys/import", post(keys::import))
        .route("/admin/keys/{kid}/retire", post(keys::retire))
        .route("/admin/keys/{kid}/revoke", post(keys::revoke))
        .route("/admin/clients", get(clients::list).post(clients::create))
        .route("/admin/clients/{id}/disable", post(clients::disable))
        .route("/admin/audit", get(audit::list))
        .route("/admin/issuances", get(issuances::list))
        .route("/admin/issuances/{id}", get(issuances::one))
        .route("/admin/issuances/{id}/resume", post(issuances::resume))
        .route(
            "/admin/kyc-subjects",
            get(kyc::subjects).post(kyc::put_subject),
        )
        .route("/admin/kyc-events", get(kyc::events))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    outcome: Option<String>,
    limit: Option<u32>,
}

pub(super) fn limit_of(q: &ListQuery) -> Result<u32, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_value("limit must be between 1 and 1000"))
    }
}
