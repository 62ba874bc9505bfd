//! Verification of `x-partner-auth`: the header read, the JWKS fetched (only for a token that
//! can pass), then the token judged by [`crate::partner_jwt`], the verifier `keyhost doctor`
//! shares, with AIR Kit's wording for the first step that fails.
//!
//! Expiry is judged on the system's wall clock, as AIR Kit judges it on its own: the emulator's
//! [`Clock`](crate::clock::Clock) measures durations (the JWKS cache's age, latency, the on-chain
//! delay), which tests move without changing which tokens are valid.

use axum::http::HeaderValue;

use super::jwks::{JwksCache, JwksError, Snapshot};
use crate::clock::{Clock, SystemClock};
use crate::partner_jwt::{self, Rules, TokenError, UnverifiedToken};

/// Why a request's Partner JWT is refused; the `Display` text is the message of the 401.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `x-partner-auth` header, or an empty one.
    #[error("Missing x-partner-auth header")]
    MissingHeader,
    /// A header value that is not text.
    #[error("JWT verification failed: the token is not ASCII")]
    NotAscii,
    /// The JWKS could not be fetched.
    #[error("JWKS endpoint unreachable: {0}")]
    JwksUnreachable(#[from] JwksError),
    /// The token fails a step of the verification.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The verified caller.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The user the call is on behalf of.
    pub(super) email: String,
}

/// Checks Partner JWTs against one partner's JWKS and rules.
pub(super) struct Verifier {
    jwks: JwksCache,
    partner_id: String,
    accept_scopes: Vec<String>,
}

/// AIR Kit's rules for `partner_id` accepting `accept_scopes`: no lifetime or `iat` limit.
fn rules<'a>(partner_id: &'a str, accept_scopes: &'a [String]) -> Rules<'a> {
    Rules {
        partner_id: Some(partner_id),
        scopes: accept_scopes,
        max_lifetime: None,
        max_iat_ahead: None,
    }
}

impl Verifier {
    /// A verifier for `partner_id` accepting `accept_scopes`, with keys from `jwks`.
    pub(super) fn new(jwks: JwksCache, partner_id: String, accept_scopes: Vec<String>) -> Self {
        Self {
            jwks,
            partner_id,
            accept_scopes,
        }
    }

    /// The JWKS URL.
    pub(super) fn jwks_url(&self) -> &str {
        self.jwks.url()
    }

    /// Verifies the `x-partner-auth` header value.
    pub(super) async fn verify(&self, header: Option<&HeaderValue>) -> Result<Caller, AuthError> {
        let token = read_token(header)?;
        let jwks = self.jwks.current().await?;
        let rules = rules(&self.partner_id, &self.accept_scopes);
        let claims = partner_jwt::verify(&token, jwks.keys(), &rules, SystemClock.now())?;
        Ok(Caller {
            email: claims.email,
        })
    }
}

/// The token of the header, if it passes the steps that need no JWKS.
fn read_token(header: Option<&HeaderValue>) -> Result<UnverifiedToken, AuthError> {
    let text = header.ok_or(AuthError::MissingHeader)?;
    let text = text.to_str().map_err(|_| AuthError::NotAscii)?.trim();
    if text.is_empty() {
        return Err(AuthError::MissingHeader);
    }
    let token = UnverifiedToken::parse(text).map_err(TokenError::from)?;
    partner_jwt::check_header(&token)?;
    Ok(token)
}

/// [`Verifier::verify`] without the fetch: `header` checked against the JWKS document
/// `jwks_body` as if it had just been fetched. The verified caller's email, or why not.
/// Only the fuzz targets use it ([`crate::fuzzing`]); the server always fetches.
pub(crate) fn verify_offline(
    header: Option<&HeaderValue>,
    jwks_body: &[u8],
    partner_id: &str,
    accept_scopes: &[String],
) -> Result<String, AuthError> {
    let token = read_token(header)?;
    let jwks = Snapshot::from_body("(fuzz input)", jwks_body)?;
    let rules = rules(partner_id, accept_scopes);
    let claims = partner_jwt::verify(&token, jwks.keys(), &rules, SystemClock.now())?;
    Ok(claims.email)
}
