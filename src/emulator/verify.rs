//! Verification of `x-partner-auth`, step by step as AIR Kit documents it, with AIR Kit's
//! wording for each failure.
//!
//! This is deliberately independent of keyhost's signer: it parses and checks tokens with
//! jsonwebtoken against keys taken from the published JWKS only. The order of the checks is
//! the order in which a partner would fix them: token shape, `typ`, `kid`, algorithm against the
//! key type, signature, expiry, then the claims AIR Kit reads.

use std::collections::HashSet;

use axum::http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::jwks::{JwksCache, JwksError, Snapshot};

/// Why a Partner JWT is refused; the `Display` text is the message of the 401.
#[derive(Debug, thiserror::Error)]
pub(super) enum AuthError {
    /// No `x-partner-auth` header.
    #[error("Missing x-partner-auth header")]
    MissingHeader,
    /// Not a compact JWS with a JSON header.
    #[error("JWT verification failed: {0}")]
    Malformed(String),
    /// `typ` is absent or not `JWT`.
    #[error("Missing typ header")]
    MissingTyp,
    /// No `kid` in the header.
    #[error("Missing kid header")]
    MissingKid,
    /// The JWKS could not be fetched.
    #[error("JWKS endpoint unreachable: {0}")]
    JwksUnreachable(#[from] JwksError),
    /// `kid` is not in the (cached) JWKS.
    #[error(
        "kid not found: {0}. If you recently rotated keys, publish the new key to your JWKS \
         endpoint before using it in JWTs."
    )]
    KidNotFound(String),
    /// `alg` is not RS256/ES256 or does not fit the JWK.
    #[error("Invalid signature: algorithm does not match the key type in your JWKS")]
    AlgorithmMismatch,
    /// The JWK under `kid` cannot verify anything.
    #[error("Invalid signature: the JWKS key {kid} is unusable ({reason})")]
    UnusableKey {
        /// The key id.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The signature does not verify.
    #[error("Invalid signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("Token expired")]
    Expired,
    /// A claim is absent (or empty).
    #[error("Missing claim: {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong type.
    #[error("Invalid claim: {0} must be a string")]
    ClaimNotString(&'static str),
    /// `exp` is not a number of seconds.
    #[error("Invalid claim: exp must be a NumericDate (seconds since the epoch)")]
    BadExp,
    /// `partnerId` is someone else's.
    #[error("partnerId {got} does not match this partner ({expected})")]
    WrongPartner {
        /// The token's partnerId.
        got: String,
        /// The configured one.
        expected: String,
    },
    /// `scope` is not accepted.
    #[error("Scope not accepted: {got}. Accepted scopes: {accepted}")]
    ScopeNotAccepted {
        /// The token's scope.
        got: String,
        /// The accepted ones, comma-separated.
        accepted: String,
    },
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

/// The longest header value looked at; a Partner JWT is well under 2 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The key types each supported algorithm needs.
fn expected_kty(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::RS256 => Some("RSA"),
        Algorithm::ES256 => Some("EC"),
        _ => None,
    }
}

fn string_claim(claims: &Value, name: &'static str) -> Result<String, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(AuthError::MissingClaim(name)),
        Some(Value::String(s)) if s.is_empty() => Err(AuthError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(AuthError::ClaimNotString(name)),
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
        let (token, alg, kid) = read_token(header)?;
        let jwks = self.jwks.current().await?;
        check_token(
            token,
            alg,
            kid,
            &jwks,
            &self.partner_id,
            &self.accept_scopes,
        )
    }
}

/// The checks that need no JWKS: the token's shape, `typ` and `kid`. Returns the token text, its
/// `alg` and its `kid`.
fn read_token(header: Option<&HeaderValue>) -> Result<(&str, Algorithm, String), AuthError> {
    let token = header.ok_or(AuthError::MissingHeader)?;
    let token = token
        .to_str()
        .map_err(|_| AuthError::Malformed("the token is not ASCII".into()))?
        .trim();
    if token.is_empty() {
        return Err(AuthError::MissingHeader);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("the token is too long".into()));
    }
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed(
            "a JWT has three base64url parts separated by dots".into(),
        ));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| AuthError::Malformed(format!("the header cannot be read ({e})")))?;
    if header.typ.as_deref() != Some("JWT") {
        return Err(AuthError::MissingTyp);
    }
    let kid = header.kid.ok_or(AuthError::MissingKid)?;
    Ok((token, header.alg, kid))
}

/// The checks against the JWKS: `kid` published, algorithm fitting the key, signature, expiry,
/// then the claims AIR Kit reads.
fn check_token(
    token: &str,
    alg: Algorithm,
    kid: String,
    jwks: &Snapshot,
    partner_id: &str,
    accept_scopes: &[String],
) -> Result<Caller, AuthError> {
    let published = jwks
        .get(&kid)
        .ok_or_else(|| AuthError::KidNotFound(kid.clone()))?;
    let kty = expected_kty(alg).ok_or(AuthError::AlgorithmMismatch)?;
    let alg_name = match alg {
        Algorithm::RS256 => "RS256",
        _ => "ES256",
    };
    if published.kty != kty || published.alg.as_deref().is_some_and(|a| a != alg_name) {
        return Err(AuthError::AlgorithmMismatch);
    }
    let key = published
        .key
        .as_ref()
        .map_err(|reason| AuthError::UnusableKey {
            kid: kid.clone(),
            reason: reason.clone(),
        })?;

    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
    let data =
        jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim("exp"),
            ErrorKind::InvalidClaimFormat(_) => AuthError::BadExp,
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                AuthError::Malformed("the payload is not a JSON object".into())
            }
            _ => AuthError::BadSignature,
        })?;
    let claims = data.claims;
    if !claims.is_object() {
        return Err(AuthError::Malformed(
            "the payload is not a JSON object".into(),
        ));
    }

    let partner_id_claim = string_claim(&claims, "partnerId")?;
    let email = string_claim(&claims, "email")?;
    let scope = string_claim(&claims, "scope")?;
    if partner_id_claim != partner_id {
        return Err(AuthError::WrongPartner {
            got: partner_id_claim,
            expected: partner_id.to_owned(),
        });
    }
    if !accept_scopes.contains(&scope) {
        return Err(AuthError::ScopeNotAccepted {
            got: scope,
            accepted: accept_scopes.join(", "),
        });
    }
    Ok(Caller { email })
}

/// [`Verifier::verify`] without the fetch: `header` checked against the JWKS document
/// `jwks_body` as if it had just been fetched. The verified caller's email, or the 401 message.
/// Only the fuzz targets use it ([`crate::fuzzing`]); the server always fetches.
pub(crate) fn verify_offline(
    header: Option<&HeaderValue>,
    jwks_body: &[u8],
    partner_id: &str,
    accept_scopes: &[String],
) -> Result<String, String> {
    let (token, alg, kid) = read_token(header).map_err(|e| e.to_string())?;
    let jwks = Snapshot::from_body("(fuzz input)", jwks_body).map_err(|e| e.to_string())?;
    check_token(token, alg, kid, &jwks, partner_id, accept_scopes)
        .map(|caller| caller.email)
        .map_err(|e| e.to_string())
}
