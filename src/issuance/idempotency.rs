//! The request hash behind `Idempotency-Key`: a replay under the same key is answered with the
//! earlier issuance, another request under it is a conflict, and the hash tells them apart.

use serde_json::{Value, json};

use super::state::{IssuanceSource, OnDuplicate};

/// What the hash covers: the request after the configured defaults were applied.
#[derive(Debug, Clone, Copy)]
pub(super) struct HashedRequest<'a> {
    /// Who asked.
    pub source: &'a IssuanceSource,
    /// The user's email.
    pub email: &'a str,
    /// Issuer DID.
    pub issuer_did: &'a str,
    /// Program id.
    pub credential_id: &'a str,
    /// Credential data.
    pub credential_subject: &'a Value,
    /// What AIR does with a duplicate.
    pub on_duplicate: OnDuplicate,
}

/// The hash of one request (SHA-256, hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHashes {
    /// Over the request as written.
    pub canonical: String,
}

impl RequestHashes {
    /// Whether a row holding `stored` recorded this request.
    pub fn matches(&self, stored: &str) -> bool {
        stored == self.canonical
    }
}

impl HashedRequest<'_> {
    /// The subject as hashed: a webhook's subject carries the time keyhost received the event
    /// (`verifiedAt`), so a redelivery of the same event is the same request although that time
    /// differs.
    fn subject(&self) -> Value {
        let mut subject = self.credential_subject.clone();
        match self.source {
            IssuanceSource::Webhook(_) => {
                if let Some(members) = subject.as_object_mut() {
                    members.remove("verifiedAt");
                }
            }
            IssuanceSource::Client(_) => {}
        }
        subject
    }

    fn as_written(&self) -> Value {
        json!({
            "email": self.email, "issuerDid": self.issuer_did, "credentialId": self.credential_id,
            "credentialSubject": self.subject(), "onDuplicate": self.on_duplicate.as_str(),
        })
    }

    /// The hash.
    pub fn hashes(&self) -> RequestHashes {
        RequestHashes {
            canonical: sha256_hex(&self.as_written().to_string()),
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(crate::auth::sha256(text.as_bytes()))
}
