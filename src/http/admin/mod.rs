//! `/admin/...`: keys (list, rotate, retire, revoke, import), clients (create, list, disable),
//! issuances, KYC subjects and deliveries, named admins, and the audit trail, one file per
//! resource. Every route requires an admin credential (a `reader` one only reads); every change
//! is audited with the credential's name as actor (`admin:<name>`, `admin:bootstrap`). Handlers
//! parse, call one service method and shape the answer.

mod admins;
mod audit;
mod clients;
mod issuances;
mod keys;
mod kyc;
mod verifiers;

use serde::Deserialize;
use utoipa_axum::routes;

pub(crate) use clients::CreateClientRequest;
pub(crate) use keys::{ImportRequest, RotateRequest};
pub(crate) use kyc::KycSubject;

use super::error::ApiError;
use super::openapi::Routes;

/// Admin routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(keys::list))
        .route(routes!(keys::rotate))
        .route(routes!(keys::import))
        .route(routes!(keys::retire))
        .route(routes!(keys::revoke))
        .route(routes!(clients::list, clients::create))
        .route(routes!(clients::disable))
        .route(routes!(admins::list, admins::create))
        .route(routes!(admins::disable))
        .route(routes!(audit::list))
        .route(routes!(issuances::list))
        .route(routes!(issuances::one))
        .route(routes!(issuances::resume))
        .route(routes!(kyc::subjects, kyc::put_subject))
        .route(routes!(kyc::events))
        .route(routes!(verifiers::list))
}

/// The query of the issuance and KYC-event listings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    outcome: Option<String>,
    limit: Option<u32>,
}

/// A listing's `limit`: 1 to 1000, 100 when absent.
pub(super) fn limit_of(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_value("limit must be between 1 and 1000"))
    }
}
