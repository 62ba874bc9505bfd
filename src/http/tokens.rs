//! `POST /v1/tokens`: mints a Partner JWT for an authenticated client.
//!
//! The hot path reads only memory: the client registry, the active signing key of the
//! algorithm, the clock. The key must be past its `signable_at` even if the lifecycle task is
//! late, so no token is ever signed by a key a verifier may not have fetched.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientAuth, JsonBody};
use super::openapi::{AuthErrors, Forbidden, InternalError, JsonBodyErrors, Routes, Unavailable};
use crate::clock::rfc3339;
use crate::email::Email;
use crate::keys::Alg;
use crate::mint::{MintError, MintRequest};
use crate::scope::DEFAULT_SCOPE;
use crate::signer::MAX_TOKEN_TTL;

/// The token route.
pub fn routes() -> Routes {
    Routes::new().route(routes!(mint))
}

/// What to mint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TokenRequest {
    /// The user's email: the token's `email` claim.
    #[schema(schema_with = crate::http::openapi::email, required = true)]
    email: Option<String>,
    /// The `scope` claim (default `issue`); the client must be allowed it.
    #[schema(schema_with = crate::http::openapi::scope_or_null)]
    scope: Option<String>,
    /// Lifetime in seconds (default and most 300: AIR Kit recommends 5-minute tokens).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 1, maximum = 300)]
    ttl_seconds: Option<i64>,
    /// The signing algorithm (default `KEYHOST_DEFAULT_ALG`); it must be enabled
    /// (`KEYHOST_ALGORITHMS`).
    #[schema(value_type = Option<Alg>)]
    alg: Option<String>,
}

/// A minted Partner JWT.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    /// The JWT, for AIR Kit's `x-partner-auth`.
    token: String,
    /// Always `JWT`.
    #[schema(value_type = String, pattern = "^JWT$")]
    token_type: &'static str,
    /// The algorithm that signed it.
    alg: Alg,
    /// The key that signed it.
    kid: String,
    /// Its `exp`, RFC 3339.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Seconds from `iat` to `exp`.
    expires_in: i64,
}

/// Mint a Partner JWT.
///
/// Signed by the active key of the algorithm, never before that key has been in the JWKS for
/// the publish lead. Counts against `KEYHOST_CLIENT_RATE_LIMIT`.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    security(("clientKey" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "the token", body = TokenResponse),
        JsonBodyErrors,
        AuthErrors,
        Forbidden,
        Unavailable,
        InternalError,
    )
)]
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
        MintError::Stale(_) => ApiError::unavailable(e.to_string(), 2),
        MintError::Ttl => ApiError::bad_value(e.to_string()),
        MintError::NotYet { next, .. } => {
            let now = state.clock.now();
            let retry = next.map_or(5, |t| (t - now).clamp(1, 3600) as u64);
            ApiError::unavailable(e.to_string(), retry)
        }
        MintError::Signing(e) => ApiError::internal(&e),
    }
}
