//! Liveness (`/healthz`, both listeners), readiness (`/readyz`), metrics (`/metrics`) and the API
//! description (`/openapi.json`), the last three on the internal listener.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// Public health route.
pub fn public_routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// Internal health and readiness routes.
pub fn internal_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The API description, maintained beside the routes (a test checks that every documented
/// operation is routed).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Prometheus text exposition.
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers, every enabled algorithm has a signing key, and keyhost's clock
/// agrees with AIR Kit's (when it has been compared lately).
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let db_ok = tokio::task::spawn_blocking(move || store.ping())
        .await
        .unwrap_or(false);
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
    Json(json!({"status": "ready", "kids": state.live.jwks().kids})).into_response()
}
