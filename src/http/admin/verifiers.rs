//! `/admin/verifiers`: who fetches the JWKS, and whether each has been served the pending keys.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::AdminAuth;
use crate::http::openapi::{AuthErrors, InternalError};
use crate::sightings::VerifierView;

/// Every verifier seen.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct VerifierList {
    /// Most recently seen first.
    verifiers: Vec<VerifierView>,
}

/// Verifiers seen fetching the JWKS (by user agent, across every server sharing the store):
/// when they last fetched it, their last few fetches, and for each pending key whether they
/// have provably been served a key set listing it.
#[utoipa::path(
    get,
    path = "/admin/verifiers",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "verifiers", body = VerifierList),
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<VerifierList>, ApiError> {
    let verifiers = state.lifecycle.verifiers().await?;
    Ok(Json(VerifierList { verifiers }))
}
