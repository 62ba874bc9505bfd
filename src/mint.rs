//! Minting a Partner JWT: the one place that finds the active key of an algorithm, checks that it
//! may sign now, and signs. The token route, the issuance proxy and `keyhost token mint` all
//! mint through a [`Minter`]; it reads only memory (the live signing keys and the clock).

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;

use crate::clock::{Clock, UnixTime, rfc3339};
use crate::email::Email;
use crate::keys::material::KeyMaterialError;
use crate::keys::types::Alg;
use crate::live::LiveKeys;
use crate::metrics::Metrics;
use crate::signer::{MAX_TOKEN_TTL, TokenClaims};

/// What a caller asks for.
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// Signing algorithm.
    pub alg: Alg,
    /// `scope` claim.
    pub scope: &'a str,
    /// `email` claim.
    pub email: &'a Email,
    /// Lifetime in seconds, 1 to [`MAX_TOKEN_TTL`].
    pub ttl: i64,
}

/// A minted Partner JWT.
#[derive(Debug, Clone)]
pub struct Token {
    /// The compact JWS.
    pub token: String,
    /// Algorithm.
    pub alg: Alg,
    /// Key id of the key that signed it.
    pub kid: String,
    /// Row id of that key.
    pub key_id: i64,
    /// Issued at.
    pub iat: UnixTime,
    /// Expires at.
    pub exp: UnixTime,
    /// Unique token id.
    pub jti: String,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No partner id is configured.
    #[error("KEYHOST_PARTNER_ID is not set on this server, so it cannot mint Partner JWTs")]
    NoPartnerId,
    /// The lifetime is out of range.
    #[error(
        "ttlSeconds must be between 1 and {MAX_TOKEN_TTL} (AIR Kit recommends 5-minute tokens)"
    )]
    Ttl,
    /// No key of the algorithm may sign now.
    #[error("{}", not_yet_message(*.alg, *.next))]
    NotYet {
        /// The algorithm asked for.
        alg: Alg,
        /// When one becomes signable, if known.
        next: Option<UnixTime>,
    },
    /// This server has not been able to read the key set lately (its store is shared and
    /// unreachable): a key revoked elsewhere might still be used.
    #[error(
        "this server cannot reach the database and its view of the key set is {} s old (over \
         the {} s signing lease), so it signs nothing until it reconnects; another replica can",
        .0.age.as_secs(),
        .0.bound.as_secs()
    )]
    Stale(crate::live::Stale),
    /// Signing failed.
    #[error(transparent)]
    Signing(#[from] KeyMaterialError),
}

fn not_yet_message(alg: Alg, next: Option<UnixTime>) -> String {
    match next {
        Some(t) => format!(
            "no {alg} key may sign yet; the next one becomes signable at {}",
            rfc3339(t)
        ),
        None => format!("no {alg} key may sign yet; one is being prepared"),
    }
}

/// Mints Partner JWTs with the live signing keys.
pub struct Minter {
    live: Arc<LiveKeys>,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    metrics: Option<Arc<Metrics>>,
    partner_id: Option<String>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("partner_id", &self.partner_id)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter over `live`, putting `partner_id` in every token and counting mints in
    /// `metrics` (none in the CLI).
    pub fn new(
        live: Arc<LiveKeys>,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
        partner_id: Option<String>,
    ) -> Self {
        Self {
            live,
            clock,
            rng: SystemRandom::new(),
            metrics,
            partner_id,
        }
    }

    /// The partner id tokens carry, if configured.
    pub fn partner_id(&self) -> Option<&str> {
        self.partner_id.as_deref()
    }

    /// Mints a token with the active key of `req.alg`, which must be past its signing time
    /// (even if the lifecycle task is late, no token is ever signed by a key a verifier may not
    /// have fetched).
    pub fn mint(&self, req: MintRequest<'_>) -> Result<Token, MintError> {
        let partner_id = self.partner_id.as_deref().ok_or(MintError::NoPartnerId)?;
        if !(1..=MAX_TOKEN_TTL).contains(&req.ttl) {
            return Err(MintError::Ttl);
        }
        self.live.may_sign().map_err(MintError::Stale)?;
        let now = self.clock.now();
        let signers = self.live.signers_now();
        let key = match signers.active.get(&req.alg) {
            Some(k) if k.signable_at <= now => k,
            Some(k) => {
                return Err(MintError::NotYet {
                    alg: req.alg,
                    next: Some(k.signable_at),
                });
            }
            None => {
                return Err(MintError::NotYet {
                    alg: req.alg,
                    next: signers.next_signable.get(&req.alg).copied(),
                });
            }
        };
        let minted = key.mint(
            &self.rng,
            now,
            TokenClaims {
                partner_id,
                scope: req.scope,
                email: req.email.as_str(),
                ttl: req.ttl,
            },
        )?;
        if let Some(metrics) = &self.metrics {
            metrics.minted(req.alg);
        }
        Ok(Token {
            token: minted.token,
            alg: req.alg,
            kid: key.kid.clone(),
            key_id: key.id,
            iat: minted.iat,
            exp: minted.exp,
            jti: minted.jti,
        })
    }
}
