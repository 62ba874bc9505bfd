//! A Partner JWT as received: split and decoded, nothing verified.
//!
//! [`UnverifiedToken::parse`] is the one function in keyhost that reads a token without checking
//! its signature. Everything it yields is named for what it is (`unverified_kid`,
//! `unverified_claim`): the verifier reads it to find the key and the claims to check, and the
//! AIR Kit emulator keys its rate limit on the partner a token claims to be, as AIR Kit does,
//! before verifying anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

/// The longest token read; a Partner JWT is well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a text is not a compact JWS with a JSON header and a JSON object payload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Malformed {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the token is too long")]
    TooLong,
    /// Not three dot-separated parts.
    #[error("a JWT has three base64url parts separated by dots")]
    NotThreeParts,
    /// The JOSE header is not base64url JSON naming a known JWS algorithm.
    #[error("the header cannot be read ({0})")]
    Header(jsonwebtoken::errors::Error),
    /// The payload is not base64url.
    #[error("the payload is not base64url")]
    PayloadEncoding,
    /// The payload is not a JSON object.
    #[error("the payload is not a JSON object")]
    PayloadJson,
}

/// A compact JWS whose parts decode, with its signature not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedToken {
    text: String,
    alg: Algorithm,
    typ: Option<String>,
    kid: Option<String>,
    claims: Map<String, Value>,
}

impl UnverifiedToken {
    /// Splits `text` (surrounding whitespace ignored) into its header and payload and decodes
    /// both, verifying nothing.
    pub fn parse(text: &str) -> Result<Self, Malformed> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(Malformed::TooLong);
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [_, payload, _] = parts[..] else {
            return Err(Malformed::NotThreeParts);
        };
        let header = jsonwebtoken::decode_header(text).map_err(Malformed::Header)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Malformed::PayloadEncoding)?;
        let Ok(Value::Object(claims)) = serde_json::from_slice(&payload) else {
            return Err(Malformed::PayloadJson);
        };
        Ok(Self {
            text: text.to_owned(),
            alg: header.alg,
            typ: header.typ,
            kid: header.kid,
            claims,
        })
    }

    /// The algorithm the header names.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The header's `typ`, if any.
    pub fn typ(&self) -> Option<&str> {
        self.typ.as_deref()
    }

    /// The header's `kid`, if any: which published key the token says it was signed with.
    pub fn unverified_kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The claim `name` as the payload carries it.
    pub fn unverified_claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// `(header.payload, signature)`: the signed message and the signature, both as sent.
    pub(super) fn signing_input(&self) -> (&str, &str) {
        self.text.rsplit_once('.').unwrap_or((&self.text, ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_that_are_not_a_compact_jws_are_named() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT","kid":"k"}"#);
        let object = URL_SAFE_NO_PAD.encode(r#"{"a":1}"#);
        let array = URL_SAFE_NO_PAD.encode("[1]");
        let cases = [
            ("a.b", "three base64url parts"),
            ("a.b.c.d", "three base64url parts"),
            ("eyJhbGciOiJub25lIn0.e30.", "the header cannot be read"),
            (&format!("{header}.!!.sig"), "not base64url"),
            (&format!("{header}.{array}.sig"), "not a JSON object"),
        ];
        for (text, reason) in cases {
            let e = UnverifiedToken::parse(text).unwrap_err();
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
        let long = format!("{header}.{}.sig", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(
            UnverifiedToken::parse(&long),
            Err(Malformed::TooLong)
        ));
        let token = UnverifiedToken::parse(&format!(" {header}.{object}.sig\n")).unwrap();
        assert_eq!(token.unverified_kid(), Some("k"));
        assert_eq!(token.typ(), Some("JWT"));
        assert_eq!(token.unverified_claim("a"), Some(&Value::from(1)));
        assert_eq!(
            token.signing_input(),
            (&*format!("{header}.{object}"), "sig")
        );
    }
}
