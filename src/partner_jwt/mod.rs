//! Verification of a Partner JWT against a published JWKS, step by step, as AIR Kit does it.
//!
//! The AIR Kit emulator and `keyhost doctor` both judge tokens, and must agree: the emulator
//! refuses a token with AIR Kit's message for the first step that fails, the doctor names every
//! step with a fix. Both read the steps from here, so neither can drift from the other.
//!
//! This is deliberately independent of keyhost's signer: it checks tokens with jsonwebtoken
//! against keys taken from the published JWKS only, as a relying party would, so that a token
//! that passes proves the token and the JWKS agree, not that one piece of code agrees with
//! itself.
//!
//! The steps run in the order a partner would fix them: token shape, `typ`, `kid` (present, then
//! published), algorithm against the key type, signature, expiry, the lifetime and `iat` rules a
//! caller asks for, then the claims AIR Kit reads (`partnerId`, `email`, `scope`). A step whose
//! failure leaves nothing for later steps to read (no key, no trusted signature) ends the walk;
//! the others do not, so the doctor reports them all. Every failure is a [`TokenError`] whose
//! text is AIR Kit's wording.

mod key_set;
mod token;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::clock::UnixTime;

pub use key_set::{KeyError, KeySet, PublishedKey};
pub use token::{MAX_TOKEN_LEN, Malformed, UnverifiedToken};

/// Why a Partner JWT is refused; the text is AIR Kit's message for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS with a JSON header and payload.
    #[error("JWT verification failed: {0}")]
    Malformed(#[from] Malformed),
    /// `typ` is absent or not `JWT`.
    #[error("Missing typ header")]
    MissingTyp {
        /// The `typ` the header carries, if any.
        found: Option<String>,
    },
    /// No `kid` in the header.
    #[error("Missing kid header")]
    MissingKid,
    /// `kid` is not in the JWKS.
    #[error(
        "kid not found: {0}. If you recently rotated keys, publish the new key to your JWKS \
         endpoint before using it in JWTs."
    )]
    KidNotFound(String),
    /// `alg` is not RS256/ES256 or does not fit the published key.
    #[error("Invalid signature: algorithm does not match the key type in your JWKS")]
    AlgorithmMismatch {
        /// The token's `alg`.
        alg: Algorithm,
        /// The published key's `kty`.
        kty: String,
        /// The published key's `alg`, if it names one.
        published_alg: Option<String>,
    },
    /// The key published under `kid` cannot verify anything.
    #[error("Invalid signature: the JWKS key {kid} is unusable ({reason})")]
    UnusableKey {
        /// The key id.
        kid: String,
        /// Why.
        reason: KeyError,
    },
    /// The signature does not verify with the published key.
    #[error("Invalid signature")]
    BadSignature {
        /// Why it could not even be checked (an unreadable signature), if that is the reason.
        #[source]
        cause: Option<jsonwebtoken::errors::Error>,
    },
    /// `exp` has passed.
    #[error("Token expired")]
    Expired {
        /// How long ago, in seconds.
        seconds_ago: i128,
    },
    /// A claim is absent, null or empty.
    #[error("Missing claim: {0}")]
    MissingClaim(&'static str),
    /// A claim that must be a string is not one.
    #[error("Invalid claim: {0} must be a string")]
    ClaimNotString(&'static str),
    /// `exp` is not an integer number of seconds.
    #[error("Invalid claim: exp must be a NumericDate (seconds since the epoch)")]
    BadExp,
    /// Longer between `iat` and `exp` than the rules allow.
    #[error("Token lifetime too long: {seconds} s between iat and exp, at most {limit} s")]
    LifetimeTooLong {
        /// `exp - iat`.
        seconds: i128,
        /// The longest allowed.
        limit: i64,
    },
    /// `iat` further ahead than the rules tolerate.
    #[error("Token issued in the future: iat is {seconds} s ahead")]
    IssuedInFuture {
        /// `iat - now`.
        seconds: i128,
    },
    /// `partnerId` is someone else's.
    #[error("partnerId {got} does not match this partner ({expected})")]
    WrongPartner {
        /// The token's partnerId.
        got: String,
        /// The expected one.
        expected: String,
    },
    /// `scope` is not accepted.
    #[error("Scope not accepted: {got}. Accepted scopes: {}", .accepted.join(", "))]
    ScopeNotAccepted {
        /// The token's scope.
        got: String,
        /// The accepted ones.
        accepted: Vec<String>,
    },
}

/// What a caller requires of a token beyond a valid signature and `exp`.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The `partnerId` the token must carry (any, when `None`).
    pub partner_id: Option<&'a str>,
    /// The `scope` values accepted.
    pub scopes: &'a [String],
    /// The longest `exp - iat` allowed, in seconds, when the token has both (unchecked: `None`).
    pub max_lifetime: Option<i64>,
    /// How far `iat` may be ahead of now, in seconds (unchecked: `None`).
    pub max_iat_ahead: Option<i64>,
}

/// A step of the verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The header's `typ`.
    Typ,
    /// The header's `kid`, and a published key under it.
    Kid,
    /// The algorithm against the published key's type.
    Algorithm,
    /// The signature, with the published key.
    Signature,
    /// `exp`.
    Expiry,
    /// `exp - iat` ([`Rules::max_lifetime`]).
    Lifetime,
    /// `iat` ([`Rules::max_iat_ahead`]).
    IssuedAt,
    /// `partnerId`.
    PartnerId,
    /// `email`.
    Email,
    /// `scope`.
    Scope,
}

/// One step taken and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// The step.
    pub step: Step,
    /// Whether the token passed it.
    pub result: Result<(), TokenError>,
}

/// The claims AIR Kit reads, from a token that passed every step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `partnerId`.
    pub partner_id: String,
    /// `email`: the user the call is on behalf of.
    pub email: String,
    /// `scope`.
    pub scope: String,
}

/// The steps that need no key set (`typ`, a `kid` present): the first failure, if any. A
/// verifier that fetches its keys runs these first, so that a token that cannot pass costs no
/// fetch.
pub fn check_header(token: &UnverifiedToken) -> Result<(), TokenError> {
    check_typ(token)?;
    token.unverified_kid().ok_or(TokenError::MissingKid)?;
    Ok(())
}

/// Every step `token` reaches against `keys` at `now`, in order, each with its outcome.
pub fn inspect(
    token: &UnverifiedToken,
    keys: &KeySet,
    rules: &Rules<'_>,
    now: UnixTime,
) -> Vec<Check> {
    let mut checks = Vec::new();
    walk(token, keys, rules, now, &mut checks);
    checks
}

/// Records each step in `checks`, and stops (`None`) after a failure that leaves the later steps
/// nothing to read: no key, nothing to check the algorithm against; no trusted signature, no
/// claim worth reading.
fn walk(
    token: &UnverifiedToken,
    keys: &KeySet,
    rules: &Rules<'_>,
    now: UnixTime,
    checks: &mut Vec<Check>,
) -> Option<()> {
    let mut record = |step, result: Result<(), TokenError>| {
        let passed = result.is_ok();
        checks.push(Check { step, result });
        passed.then_some(())
    };
    record(Step::Typ, check_typ(token));
    record(Step::Kid, published_key(token, keys).map(|_| ()))?;
    let (kid, published) = published_key(token, keys).ok()?;
    record(Step::Algorithm, check_alg(token.alg(), published))?;
    record(Step::Signature, check_signature(token, kid, published))?;
    for (step, result) in claim_checks(token, rules, now) {
        record(step, result);
    }
    Some(())
}

/// The claims of `token` if it passes every step against `keys` at `now`; else the first
/// failure.
pub fn verify(
    token: &UnverifiedToken,
    keys: &KeySet,
    rules: &Rules<'_>,
    now: UnixTime,
) -> Result<Claims, TokenError> {
    for check in inspect(token, keys, rules, now) {
        check.result?;
    }
    Ok(Claims {
        partner_id: string_claim(token, "partnerId")?,
        email: string_claim(token, "email")?,
        scope: string_claim(token, "scope")?,
    })
}

fn check_typ(token: &UnverifiedToken) -> Result<(), TokenError> {
    match token.typ() {
        Some("JWT") => Ok(()),
        found => Err(TokenError::MissingTyp {
            found: found.map(str::to_owned),
        }),
    }
}

/// The token's `kid` and the key published under it.
fn published_key<'a>(
    token: &'a UnverifiedToken,
    keys: &'a KeySet,
) -> Result<(&'a str, &'a PublishedKey), TokenError> {
    let kid = token.unverified_kid().ok_or(TokenError::MissingKid)?;
    let published = keys
        .get(kid)
        .ok_or_else(|| TokenError::KidNotFound(kid.to_owned()))?;
    Ok((kid, published))
}

/// RS256 needs an RSA key, ES256 an EC key, and a key that names its `alg` that one only.
fn check_alg(alg: Algorithm, published: &PublishedKey) -> Result<(), TokenError> {
    let mismatch = || TokenError::AlgorithmMismatch {
        alg,
        kty: published.kty.clone(),
        published_alg: published.alg.clone(),
    };
    let (kty, name) = match alg {
        Algorithm::RS256 => ("RSA", "RS256"),
        Algorithm::ES256 => ("EC", "ES256"),
        _ => return Err(mismatch()),
    };
    if published.kty == kty && published.alg.as_deref().is_none_or(|a| a == name) {
        Ok(())
    } else {
        Err(mismatch())
    }
}

fn check_signature(
    token: &UnverifiedToken,
    kid: &str,
    published: &PublishedKey,
) -> Result<(), TokenError> {
    let key = published
        .key
        .as_ref()
        .map_err(|reason| TokenError::UnusableKey {
            kid: kid.to_owned(),
            reason: reason.clone(),
        })?;
    let (message, signature) = token.signing_input();
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, token.alg()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TokenError::BadSignature { cause: None }),
        Err(e) => Err(TokenError::BadSignature { cause: Some(e) }),
    }
}

/// The steps after the signature, each on its own: none stops the others.
fn claim_checks(
    token: &UnverifiedToken,
    rules: &Rules<'_>,
    now: UnixTime,
) -> Vec<(Step, Result<(), TokenError>)> {
    // In i128: the token chooses exp and iat, and any two i64 values differ by less than 2^64,
    // so the differences below are exact instead of overflowing.
    let now = i128::from(now);
    let exp = match token.unverified_claim("exp") {
        None | Some(Value::Null) => Err(TokenError::MissingClaim("exp")),
        Some(exp) => exp.as_i64().map(i128::from).ok_or(TokenError::BadExp),
    };
    let iat = token
        .unverified_claim("iat")
        .and_then(Value::as_i64)
        .map(i128::from);
    let mut checks = vec![(
        Step::Expiry,
        exp.clone().and_then(|exp| match now - exp {
            ago if ago >= 0 => Err(TokenError::Expired { seconds_ago: ago }),
            _ => Ok(()),
        }),
    )];
    if let (Some(limit), Ok(exp), Some(iat)) = (rules.max_lifetime, exp, iat) {
        let seconds = exp - iat;
        let result = if seconds > i128::from(limit) {
            Err(TokenError::LifetimeTooLong { seconds, limit })
        } else {
            Ok(())
        };
        checks.push((Step::Lifetime, result));
    }
    if let (Some(limit), Some(iat)) = (rules.max_iat_ahead, iat) {
        let seconds = iat - now;
        let result = if seconds > i128::from(limit) {
            Err(TokenError::IssuedInFuture { seconds })
        } else {
            Ok(())
        };
        checks.push((Step::IssuedAt, result));
    }
    let partner_id = string_claim(token, "partnerId").and_then(|got| match rules.partner_id {
        Some(expected) if expected != got => Err(TokenError::WrongPartner {
            got,
            expected: expected.to_owned(),
        }),
        _ => Ok(()),
    });
    let scope = string_claim(token, "scope").and_then(|got| {
        if rules.scopes.contains(&got) {
            Ok(())
        } else {
            Err(TokenError::ScopeNotAccepted {
                got,
                accepted: rules.scopes.to_vec(),
            })
        }
    });
    checks.extend([
        (Step::PartnerId, partner_id),
        (Step::Email, string_claim(token, "email").map(drop)),
        (Step::Scope, scope),
    ]);
    checks
}

/// The claim `name`, which must be a non-empty string.
fn string_claim(token: &UnverifiedToken, name: &'static str) -> Result<String, TokenError> {
    match token.unverified_claim(name) {
        None | Some(Value::Null) => Err(TokenError::MissingClaim(name)),
        Some(Value::String(s)) if s.is_empty() => Err(TokenError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(TokenError::ClaimNotString(name)),
    }
}

#[cfg(test)]
mod tests;
