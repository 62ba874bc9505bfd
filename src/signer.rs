//! Minting Partner JWTs.
//!
//! A [`SigningKey`] holds an aws-lc-rs key pair parsed once and the base64url JOSE header
//! (`alg`, `kid`, `typ: "JWT"`) encoded once, so minting is: serialise the claims, base64url,
//! one signature. Nothing on this path touches the database or re-parses a key.

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::clock::UnixTime;
use crate::keys::material::{KeyMaterialError, KeyPair};
use crate::keys::types::{Alg, KeyRecord};

/// Longest token lifetime, in seconds (AIR Kit recommends 5 minutes).
pub const MAX_TOKEN_TTL: i64 = 300;

/// A key ready to sign, with its encoded header.
pub struct SigningKey {
    /// Row id.
    pub id: i64,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    /// Earliest time it may sign.
    pub signable_at: UnixTime,
    header_b64: String,
    pair: KeyPair,
    /// The latest `exp` it has signed (0: none yet); the lifecycle records it, so that the key
    /// stays published until that token has expired.
    last_exp: std::sync::atomic::AtomicI64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("signable_at", &self.signable_at)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: Alg,
    kid: &'a str,
    typ: &'static str,
}

/// The claims AIR Kit reads, plus `jti`.
#[derive(Serialize)]
struct Claims<'a> {
    #[serde(rename = "partnerId")]
    partner_id: &'a str,
    scope: &'a str,
    email: &'a str,
    iat: UnixTime,
    exp: UnixTime,
    jti: &'a str,
}

/// What to put in a token.
#[derive(Debug, Clone, Copy)]
pub struct TokenClaims<'a> {
    /// The partner id (configuration).
    pub partner_id: &'a str,
    /// Scope.
    pub scope: &'a str,
    /// The user's email.
    pub email: &'a str,
    /// Lifetime in seconds, at most [`MAX_TOKEN_TTL`].
    pub ttl: i64,
}

/// A minted token.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The compact JWS.
    pub token: String,
    /// Issued at.
    pub iat: UnixTime,
    /// Expires at.
    pub exp: UnixTime,
    /// Unique token id.
    pub jti: String,
}

impl SigningKey {
    /// Wraps a parsed key pair for the key `record`.
    pub fn new(record: &KeyRecord, pair: KeyPair) -> Self {
        let header = serde_json::to_vec(&Header {
            alg: record.alg,
            kid: &record.kid,
            typ: "JWT",
        })
        .expect("a header serialises");
        Self {
            id: record.id,
            kid: record.kid.clone(),
            alg: record.alg,
            signable_at: record.signable_at.unwrap_or(UnixTime::MAX),
            header_b64: URL_SAFE_NO_PAD.encode(header),
            pair,
            last_exp: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Signs `payload` (JSON) as a compact JWS whose header names this key and `typ`: for
    /// statements keyhost makes about itself (the audit chain's head), never a Partner JWT.
    pub fn sign_statement(
        &self,
        rng: &SystemRandom,
        typ: &str,
        payload: &serde_json::Value,
    ) -> Result<String, KeyMaterialError> {
        let header = serde_json::json!({"alg": self.alg, "kid": self.kid, "typ": typ});
        let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload.to_string(), &mut jws);
        let signature = self.pair.sign(rng, jws.as_bytes())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jws);
        Ok(jws)
    }

    /// The latest `exp` this key has signed in this process, if any.
    pub fn last_exp(&self) -> Option<UnixTime> {
        let exp = self.last_exp.load(std::sync::atomic::Ordering::Relaxed);
        (exp > 0).then_some(exp)
    }

    /// Mints a token issued at `now`.
    pub fn mint(
        &self,
        rng: &SystemRandom,
        now: UnixTime,
        claims: TokenClaims<'_>,
    ) -> Result<Minted, KeyMaterialError> {
        let mut jti = [0u8; 16];
        rng.fill(&mut jti).map_err(|_| KeyMaterialError::Sign)?;
        let jti = URL_SAFE_NO_PAD.encode(jti);
        let exp = now + claims.ttl.clamp(1, MAX_TOKEN_TTL);
        let payload = serde_json::to_vec(&Claims {
            partner_id: claims.partner_id,
            scope: claims.scope,
            email: claims.email,
            iat: now,
            exp,
            jti: &jti,
        })
        .expect("claims serialise");
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 360);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.pair.sign(rng, token.as_bytes())?;
        self.last_exp
            .fetch_max(exp, std::sync::atomic::Ordering::Relaxed);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(Minted {
            token,
            iat: now,
            exp,
            jti,
        })
    }
}
