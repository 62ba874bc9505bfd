//! The public projection of keys: JWK entries and the JWKS document.
//!
//! Entries are built from [`PublicJwk`], a type that has no field for private parameters, so no
//! code path can publish `d`, `p`, `q` and the like (a public JWKS template in the wild serves its
//! JWKS from the private key and does exactly that). Deserialisation rejects unknown members, so a
//! tampered store cannot smuggle them in either.
//!
//! The document is serialised once per key-set change; requests are answered from those bytes.

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use crate::keys::jwk::PublicJwk;
use crate::keys::types::{Alg, KeyRecord, KeyState};

/// One entry of the JWKS.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(as = Jwk)]
pub struct JwkEntry<'a> {
    /// Key id.
    pub kid: &'a str,
    /// Always `sig`.
    #[serde(rename = "use")]
    #[schema(value_type = String, pattern = "^sig$")]
    pub use_: &'static str,
    /// Signing algorithm.
    pub alg: Alg,
    /// The public parameters, with `kty`.
    #[serde(flatten)]
    pub key: &'a PublicJwk,
}

/// The JWKS document: every published key, active keys first.
#[derive(Serialize, ToSchema)]
#[schema(as = Jwks)]
pub struct JwksBody<'a> {
    /// The published keys.
    keys: Vec<JwkEntry<'a>>,
}

/// The serialised JWKS and its validator.
#[derive(Clone, Debug)]
pub struct JwksDocument {
    /// The exact bytes served.
    pub body: Bytes,
    /// A strong ETag (quoted) derived from the bytes.
    pub etag: String,
    /// The same ETag, ready to send.
    pub etag_header: axum::http::HeaderValue,
    /// Key ids in the document, in order.
    pub kids: Vec<String>,
}

impl JwksDocument {
    /// Builds the document from every published key; active keys come first.
    pub fn build<'a>(keys: impl IntoIterator<Item = &'a KeyRecord>) -> Self {
        let mut published: Vec<&KeyRecord> =
            keys.into_iter().filter(|k| k.is_published()).collect();
        let rank = |s: KeyState| match s {
            KeyState::Active => 0,
            KeyState::Pending => 1,
            _ => 2,
        };
        published.sort_by_key(|k| (rank(k.state), k.alg, k.created_at, k.id));
        let body = JwksBody {
            keys: published
                .iter()
                .map(|k| JwkEntry {
                    kid: &k.kid,
                    use_: "sig",
                    alg: k.alg,
                    key: &k.public_jwk,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&body).expect("a JWKS always serialises");
        let hash = digest(&SHA256, &body);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..18]));
        Self {
            body: Bytes::from(body),
            etag_header: axum::http::HeaderValue::from_str(&etag).expect("base64url is ASCII"),
            etag,
            kids: published.iter().map(|k| k.kid.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint_matches() {
        // RFC 7638 §3.1.
        let jwk = PublicJwk::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn private_members_cannot_be_represented() {
        let with_d = r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"}"#;
        assert!(serde_json::from_str::<PublicJwk>(with_d).is_err());
        let with_p = r#"{"kty":"RSA","n":"a","e":"AQAB","p":"secret"}"#;
        assert!(serde_json::from_str::<PublicJwk>(with_p).is_err());
    }

    #[test]
    fn rsa_components_drop_leading_zeros() {
        let jwk = PublicJwk::from_rsa_components(&[0, 0, 1, 2], &[0, 1, 0, 1]);
        assert_eq!(
            jwk,
            PublicJwk::Rsa {
                n: "AQI".into(),
                e: "AQAB".into()
            }
        );
    }
}
