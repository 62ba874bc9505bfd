//! The request hash behind `Idempotency-Key`: a replay under the same key is answered with the
//! earlier issuance, another request under it is a conflict, and the hash tells them apart.
//!
//! The hash is taken over a canonical form of the request: the members of every object sorted
//! by name, at any depth, arrays in their order, no whitespace. JSON objects are unordered (RFC
//! 8259), so a client that writes the same request with its members in another order sends the
//! same request. (The API refuses objects that name a member twice, so sorting is unambiguous.)
//!
//! Rows written before the hash was canonical hold the hash of the request as it was written
//! ([`RequestHashes::legacy`]); a replay matches either, so that a client retrying a request
//! recorded before the upgrade, byte for byte, is still answered with its issuance.

use serde_json::{Map, Value, json};

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

/// The hashes of one request (SHA-256, hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHashes {
    /// Over the canonical form; what new rows store.
    pub canonical: String,
    /// Over the request with its members in the order they were written, as rows recorded
    /// before the canonical hash hold it.
    pub legacy: String,
}

impl RequestHashes {
    /// Whether a row holding `stored` recorded this request.
    pub fn matches(&self, stored: &str) -> bool {
        stored == self.canonical || stored == self.legacy
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

    /// Both hashes.
    pub fn hashes(&self) -> RequestHashes {
        let as_written = self.as_written();
        RequestHashes {
            canonical: sha256_hex(&canonical(&as_written).to_string()),
            legacy: sha256_hex(&as_written.to_string()),
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(crate::auth::sha256(text.as_bytes()))
}

/// `value` with the members of every object in sorted order. (serde_json keeps insertion order
/// when its `preserve_order` feature is on, and sorts otherwise: either way the result
/// serialises sorted.)
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(name, v)| (name.clone(), canonical(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::state::Webhook;

    fn hashes(source: &IssuanceSource, subject: &str, on_duplicate: OnDuplicate) -> RequestHashes {
        let subject: Value = serde_json::from_str(subject).unwrap();
        HashedRequest {
            source,
            email: "u@example.com",
            issuer_did: "did:air:id:test:x",
            credential_id: "program",
            credential_subject: &subject,
            on_duplicate,
        }
        .hashes()
    }

    fn client() -> IssuanceSource {
        IssuanceSource::Client("c0ffee".into())
    }

    #[test]
    fn the_canonical_hash_ignores_member_order_at_every_depth() {
        let a = hashes(
            &client(),
            r#"{"age": 25, "isMember": true, "address": {"city": "Paris", "zip": "75001"},
                "badges": [{"name": "a", "level": 1}, {"name": "b", "level": 2}]}"#,
            OnDuplicate::Revoke,
        );
        let b = hashes(
            &client(),
            r#"{"badges": [{"level": 1, "name": "a"}, {"level": 2, "name": "b"}],
                "address": {"zip": "75001", "city": "Paris"}, "isMember": true, "age": 25}"#,
            OnDuplicate::Revoke,
        );
        assert_eq!(a.canonical, b.canonical);
        assert_ne!(a.legacy, b.legacy, "the legacy hash saw the order");
        assert!(b.matches(&a.canonical) && !b.matches(&a.legacy));
    }

    #[test]
    fn the_canonical_hash_still_tells_other_requests_apart() {
        let base = hashes(
            &client(),
            r#"{"list": [1, 2], "n": 1}"#,
            OnDuplicate::Revoke,
        );
        for (subject, on_duplicate) in [
            (r#"{"list": [2, 1], "n": 1}"#, OnDuplicate::Revoke),
            (r#"{"list": [1, 2], "n": 2}"#, OnDuplicate::Revoke),
            (r#"{"list": [1, 2], "n": "1"}"#, OnDuplicate::Revoke),
            (r#"{"list": [1, 2], "n": 1.0}"#, OnDuplicate::Revoke),
            (
                r#"{"list": [1, 2], "n": 1, "m": null}"#,
                OnDuplicate::Revoke,
            ),
            (r#"{"list": [1, 2], "n": 1}"#, OnDuplicate::Ignore),
        ] {
            let other = hashes(&client(), subject, on_duplicate);
            assert!(!other.matches(&base.canonical), "{subject} {on_duplicate}");
            assert!(!other.matches(&base.legacy), "{subject} {on_duplicate}");
        }
    }

    #[test]
    fn the_legacy_hash_is_the_one_rows_were_recorded_with() {
        // The hash keyhost stored before it was canonical, for this exact request.
        let subject = serde_json::json!({"age": 25, "location": "United States", "isMember": true});
        let written = serde_json::json!({
            "email": "u@example.com", "issuerDid": "did:air:id:test:x", "credentialId": "program",
            "credentialSubject": subject, "onDuplicate": "revoke",
        });
        let stored = hex::encode(crate::auth::sha256(written.to_string().as_bytes()));
        let replay = hashes(
            &client(),
            r#"{"age": 25, "location": "United States", "isMember": true}"#,
            OnDuplicate::Revoke,
        );
        assert_eq!(replay.legacy, stored);
        assert!(replay.matches(&stored));
    }

    #[test]
    fn a_webhooks_receipt_time_is_not_part_of_the_request() {
        let kyc = IssuanceSource::Webhook(Webhook::KycComplete);
        let first = hashes(
            &kyc,
            r#"{"kycVerified": true, "kycLevel": "basic", "verifiedAt": "2026-01-01T00:00:00Z"}"#,
            OnDuplicate::Revoke,
        );
        let redelivered = hashes(
            &kyc,
            r#"{"kycVerified": true, "kycLevel": "basic", "verifiedAt": "2026-01-01T00:04:00Z"}"#,
            OnDuplicate::Revoke,
        );
        assert_eq!(first, redelivered);
        // A client's `verifiedAt` is its data.
        let a = hashes(&client(), r#"{"verifiedAt": "a"}"#, OnDuplicate::Revoke);
        let b = hashes(&client(), r#"{"verifiedAt": "b"}"#, OnDuplicate::Revoke);
        assert_ne!(a.canonical, b.canonical);
    }

    #[test]
    fn canonical_sorts_nested_members_and_keeps_array_order() {
        let v: Value =
            serde_json::from_str(r#"{"b": [{"y": 1, "x": 2}, 3], "a": {"d": null, "c": "s"}}"#)
                .unwrap();
        assert_eq!(
            canonical(&v).to_string(),
            r#"{"a":{"c":"s","d":null},"b":[{"x":2,"y":1},3]}"#
        );
    }
}
