//! `POST /v1/tokens`: mints a Partner JWT for an authenticated client.
//!
//! The hot path reads only memory: the client registry, the active signing key of the
//! algorithm, the clock. The key must be past its `signable_at` even if the lifecycle task is
//! late, so no token is ever signed by a key a verifier may not have fetched.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientAuth, JsonBody};
use crate::clock::rfc3339;
use crate::email::Email;
use crate::keys::Alg;
use crate::mint::{MintError, MintRequest};
use crate::scope::DEFAULT_SCOPE;
use crate::signer::MAX_TOKEN_TTL;

/// The token route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/tokens", post(mint))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TokenRequest {
    email: Option<String>,
    scope: Option<String>,
    ttl_seconds: Option<i64>,
    alg: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    token_type: &'static str,
    alg: Alg,
    kid: String,
    expires_at: String,
    expires_in: i64,
}

async fn mint(
    State(state): State<AppState>,
    ClientAuth(client): ClientAuth,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    super::check_client_rate(&state, &client)?;
    let email = req
        .email
        .ok_or_else(|| ApiError::missing_value("email is required"))?;
    let email = Email::parse(&email)?;
    let scope = req.scope.as_deref().unwrap_or(DEFAULT_SCOPE);
    crate::scope::validate_scope(scope).map_err(ApiError::bad_value)?;
    let ttl = req.ttl_seconds.unwrap_or(MAX_TOKEN_TTL);
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::bad_value(format!(
            "ttlSeconds must be between 1 and {MAX_TOKEN_TTL} (AIR Kit recommends 5-minute tokens)"
        )));
    }
    let alg = match req.alg.as_deref() {
        None => state.config.tokens.default_alg,
        Some(name) => name.parse::<Alg>().map_err(ApiError::bad_value)?,
    };
    if !state.config.keys.algorithms.contains(&alg) {
        return Err(ApiError::bad_value(format!(
            "alg {alg} is not enabled on this server (KEYHOST_ALGORITHMS)"
        )));
    }
    if !client.scopes.iter().any(|s| s == scope) {
        return Err(ApiError::forbidden(format!(
            "client {} may not request scope {scope:?}; allowed: {}",
            client.id,
            client.scopes.join(", ")
        )));
    }
    let minted = state
        .minter
        .mint(MintRequest {
            alg,
            scope,
            email: &email,
            ttl,
        })
        .map_err(|e| mint_error(&state, e))?;
    state
        .ledger
        .record(&client.id, &minted.kid, alg.as_str(), minted.iat);
    tracing::debug!(client = %client.id, kid = %minted.kid, jti = %minted.jti, "token minted");
    Ok((
        StatusCode::OK,
        Json(TokenResponse {
            token: minted.token,
            token_type: "JWT",
            alg,
            kid: minted.kid,
            expires_at: rfc3339(minted.exp),
            expires_in: minted.exp - minted.iat,
        }),
    ))
}

/// The answer to a token that could not be minted: 503 with when to try again while no key may
/// sign (or no partner id is set), 400 for a lifetime out of range.
pub(crate) fn mint_error(state: &AppState, e: MintError) -> ApiError {
    match e {
        MintError::NoPartnerId => ApiError::unavailable(e.to_string(), 60),
        MintError::Ttl => ApiError::bad_value(e.to_string()),
        MintError::NotYet { next, .. } => {
            let now = state.clock.now();
            let retry = next.map_or(5, |t| (t - now).clamp(1, 3600) as u64);
            ApiError::unavailable(e.to_string(), retry)
        }
        MintError::Signing(e) => ApiError::internal(&e),
    }
}
