//! Calling AIR Kit: a fresh Partner JWT for every call, and every answer counted (by endpoint
//! and outcome), its `Date` compared with keyhost's clock, and a 401 for a key keyhost holds
//! reported with its kid.

use crate::airkit::{Reply, TransportError};
use crate::clock::UnixTime;
use crate::email::Email;
use crate::keys::Alg;
use crate::metrics::{KidLabel, UpstreamLabels};
use crate::mint::{MintError, MintRequest};
use crate::signer::MAX_TOKEN_TTL;

use super::IssuanceService;

/// Why no Partner JWT could be minted for an upstream call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoToken {
    /// No key of the algorithm may sign now; one may from the given time, if known.
    #[error("no {0} key may sign yet")]
    NotYet(Alg, Option<UnixTime>),
    /// This server cannot reach its database (its view of the key set is past the signing
    /// lease): not the issuance's fault, and another server may do it meanwhile.
    #[error("{0}")]
    Stale(String),
    /// Something else (no partner id, a signing failure).
    #[error("{0}")]
    Unavailable(String),
}

impl IssuanceService {
    /// Counts an upstream answer, and compares keyhost's clock with the answer's `Date`.
    pub(super) fn count_upstream(&self, endpoint: &str, outcome: &Result<Reply, TransportError>) {
        if let Ok(Reply {
            date: Some(theirs), ..
        }) = outcome
        {
            self.skew.observe(self.clock.now(), *theirs);
        }
        let outcome = match outcome {
            Ok(r) => r.status.to_string(),
            Err(TransportError::Timeout(_)) => "timeout".into(),
            Err(TransportError::Connect(_)) => "connect".into(),
            Err(TransportError::Other(_)) => "error".into(),
            Err(TransportError::TooLarge { .. }) => "too_large".into(),
        };
        self.metrics
            .airkit_responses
            .get_or_create(&UpstreamLabels {
                endpoint: endpoint.into(),
                outcome,
            })
            .inc();
    }

    /// A fresh Partner JWT for `email`, and the kid that signed it.
    pub(super) fn token(&self, email: &str) -> Result<(String, String), NoToken> {
        let email = Email::parse(email)
            .map_err(|e| NoToken::Unavailable(format!("the recorded email: {e}")))?;
        let minted = self
            .minter
            .mint(MintRequest {
                alg: self.alg,
                scope: &self.settings.scope,
                email: &email,
                ttl: MAX_TOKEN_TTL,
            })
            .map_err(|e| match e {
                MintError::NotYet { alg, next } => NoToken::NotYet(alg, next),
                e @ MintError::Stale(_) => NoToken::Stale(e.to_string()),
                e @ (MintError::NoPartnerId | MintError::Ttl | MintError::Signing(_)) => {
                    NoToken::Unavailable(e.to_string())
                }
            })?;
        Ok((minted.token, minted.kid))
    }

    pub(super) fn note_unauthorized(&self, kid: &str, endpoint: &str, reply: &Reply) {
        self.metrics
            .airkit_unauthorized
            .get_or_create(&KidLabel { kid: kid.into() })
            .inc();
        tracing::warn!(
            kid,
            endpoint,
            message = %reply.message(),
            "AIR Kit rejected a Partner JWT signed by a key keyhost holds: has it fetched the JWKS?"
        );
    }
}
