//! Liveness (`/healthz`, both listeners), readiness (`/readyz`), metrics (`/metrics`) and the API
//! description (`/openapi.json`), the last three on the internal listener.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::openapi::{Routes, Unavailable};

/// Public health route.
pub fn public_routes() -> Routes {
    Routes::new().route(routes!(healthz))
}

/// Internal health and readiness routes.
pub fn internal_routes() -> Routes {
    Routes::new()
        .route(routes!(healthz))
        .route(routes!(readyz))
        .route(routes!(metrics))
        .route(routes!(openapi))
}

/// This document.
///
/// OpenAPI 3.1, generated from the handlers: every route of both listeners, the paths of the
/// public listener with `servers` of their own.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::json(),
    )
        .into_response()
}

/// Prometheus counters.
///
/// Tokens minted, AIR Kit answers, 401s per kid, issuance states, rejected webhooks, failed and
/// throttled authentications, connections open/shed/refused per listener, rows failing their
/// integrity check, clock skew, looks at the TLS certificate files, JWKS requests by outcome,
/// the key set as this server sees it, the issuance backlog.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "OpenMetrics text",
        body = String,
        content_type = "application/openmetrics-text"
    ))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
struct Alive {
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    status: &'static str,
}

/// Liveness (both listeners).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "public",
    responses((status = 200, description = "alive", body = Alive))
)]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// The answer of `/readyz` when ready.
#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    status: &'static str,
    /// The key ids in the JWKS, in its order.
    kids: Vec<String>,
}

/// Readiness.
///
/// Ready when the database answers, every enabled algorithm has a signing key, and keyhost's
/// clock agrees with AIR Kit's (when it has been compared lately).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "ready", body = Ready), Unavailable)
)]
async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(stale) = state.live.may_sign() {
        return ApiError::unavailable(
            format!(
                "the view of the key set is {} s old (over the {} s signing lease): the database \
                 has not answered lately, and this server signs nothing until it does",
                stale.age.as_secs(),
                stale.bound.as_secs()
            ),
            2,
        )
        .into_response();
    }
    let store = state.store.clone();
    // A database that does not answer within a few seconds is as good as down (a PostgreSQL
    // behind a cut network would hold the probe for the pool's whole timeout).
    let db_ok = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::task::spawn_blocking(move || store.ping()),
    )
    .await
    .is_ok_and(|answered| answered.unwrap_or(false));
    if !db_ok {
        return ApiError::unavailable("the database does not answer", 5).into_response();
    }
    let signers = state.live.signers();
    let missing: Vec<&str> = state
        .config
        .keys
        .algorithms
        .iter()
        .filter(|a| !signers.active.contains_key(a))
        .map(|a| a.as_str())
        .collect();
    if !missing.is_empty() {
        return ApiError::unavailable(format!("no signing key yet for {}", missing.join(", ")), 5)
            .into_response();
    }
    if let Some(skew) = state.clock_skew.out_of_bounds() {
        return ApiError::unavailable(
            format!(
                "keyhost's clock is {} s {} AIR Kit's (beyond KEYHOST_MAX_CLOCK_SKEW): its tokens \
                 arrive {} at AIR Kit; synchronise this host's clock (NTP)",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" },
                if skew > 0 { "not yet valid" } else { "expired" },
            ),
            60,
        )
        .into_response();
    }
    Json(Ready {
        status: "ready",
        kids: state.live.jwks().kids.clone(),
    })
    .into_response()
}
