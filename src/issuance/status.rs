//! The status proxy: AIR Kit's status of a credential, asked with a Partner JWT keyhost mints.
//!
//! A client learns nothing through keyhost about another source's issuances that AIR would not
//! tell it: the JWT is minted for the email of the caller's own issuance of that hash, or for
//! the email the caller names.

use super::{IssuanceService, IssuanceSource, NoToken, records};
use crate::airkit::{Reply, TransportError};
use crate::store::StoreError;

/// Why a status could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Issuance is not configured.
    #[error("{0}")]
    NotConfigured(String),
    /// keyhost did not issue this hash and no email was given.
    #[error(
        "this client has no issuance with this coreClaimHash through keyhost; pass email= to \
         check it anyway"
    )]
    UnknownHash,
    /// No token could be minted.
    #[error("cannot mint a Partner JWT: {0}")]
    NoToken(NoToken),
    /// AIR Kit could not be reached, or its answer could not be used.
    #[error(
        "{what}: {0}",
        what = if .0.is_transient() { "AIR Kit unreachable" } else { "AIR Kit's answer could not be used" }
    )]
    Transport(TransportError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl IssuanceService {
    /// AIR Kit's status of the credential `hash`, asked with a Partner JWT for the issuance's
    /// email when `caller` issued it through keyhost, else for `email` (required then).
    pub async fn status(
        &self,
        hash: &str,
        email: Option<&str>,
        caller: &IssuanceSource,
    ) -> Result<Reply, StatusError> {
        let airkit = self
            .airkit()
            .map_err(|e| StatusError::NotConfigured(e.to_string()))?
            .clone();
        let known = records::by_core_claim_hash(&self.store, hash)
            .await
            .map_err(StatusError::Store)?
            .filter(|issuance| self.authentic(issuance));
        let own = known.filter(|issuance| issuance.source == *caller);
        let email = match (own, email) {
            (Some(issuance), _) => issuance.email,
            (None, Some(e)) => e.to_owned(),
            (None, None) => return Err(StatusError::UnknownHash),
        };
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let (token, kid) = self.token(&email).map_err(StatusError::NoToken)?;
        let result = airkit.status(&token, hash).await;
        self.count_upstream("status", &result);
        let reply = result.map_err(StatusError::Transport)?;
        if reply.status == 401 {
            self.note_unauthorized(&kid, "status", &reply);
        }
        Ok(reply)
    }
}
