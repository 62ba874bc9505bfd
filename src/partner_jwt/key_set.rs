//! A published JWKS as a verifier reads it: the keys by `kid`, each usable or not.
//!
//! Entries that are not usable JWKs are kept with the reason, so that a token naming one fails
//! on that reason rather than as an unknown `kid`; entries without `kid` or `kty` cannot be
//! selected and are skipped, as verifiers do, so that one odd entry does not hide the others.
//! The first entry wins when two share a `kid`.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;
use serde_json::Value;

/// Why a published entry cannot verify a signature.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// Not a JWK jsonwebtoken can read.
    #[error("the JWK is malformed: {0}")]
    Malformed(Arc<serde_json::Error>),
    /// A JWK, but not a key that can verify.
    #[error("the JWK is not a usable key: {0}")]
    Unusable(jsonwebtoken::errors::Error),
}

/// One published key.
pub struct PublishedKey {
    /// `kty` (`RSA`, `EC`, ...).
    pub kty: String,
    /// `alg`, when the JWK names one.
    pub alg: Option<String>,
    /// The verification key, or why the JWK cannot be one.
    pub key: Result<DecodingKey, KeyError>,
}

/// The keys of one JWKS document, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, PublishedKey>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Value>,
}

impl KeySet {
    /// The key set of a JWKS document: a JSON object with a `keys` array.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        let document: Document = serde_json::from_slice(body)?;
        Ok(Self::from_entries(document.keys))
    }

    /// The key set of the members of a `keys` array.
    pub fn from_entries(entries: impl IntoIterator<Item = Value>) -> Self {
        let mut keys = HashMap::new();
        for entry in entries {
            let Some(kid) = entry.get("kid").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let Some(kty) = entry.get("kty").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let alg = entry.get("alg").and_then(Value::as_str).map(str::to_owned);
            let key = serde_json::from_value::<Jwk>(entry)
                .map_err(|e| KeyError::Malformed(Arc::new(e)))
                .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(KeyError::Unusable));
            keys.entry(kid).or_insert(PublishedKey { kty, alg, key });
        }
        Self { keys }
    }

    /// The key published under `kid`.
    pub fn get(&self, kid: &str) -> Option<&PublishedKey> {
        self.keys.get(kid)
    }

    /// How many keys can be selected by `kid`.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key can be selected.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_entries_are_kept_with_their_reason_and_the_rest_usable() {
        let body = br#"{"keys":[
            {"kid":"a","kty":"EC","crv":"P-256","x":"!!","y":"!!"},
            {"kty":"EC"},
            {"kid":"b","kty":"weird"},
            {"kid":"c","kty":"RSA","alg":"RS256","n":"sXch","e":"AQAB"},
            {"kid":"c","kty":"EC"}
        ]}"#;
        let keys = KeySet::from_json(body).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.get("a").unwrap().key.is_err());
        assert!(keys.get("b").unwrap().key.is_err());
        let c = keys.get("c").unwrap();
        assert!(c.key.is_ok());
        assert_eq!((c.kty.as_str(), c.alg.as_deref()), ("RSA", Some("RS256")));
        assert!(KeySet::from_json(b"[]").is_err());
        assert!(KeySet::from_json(b"<html>").is_err());
    }
}
