//! JOSE: the algorithms AIR Kit accepts, and the public part of a key as a JWK (RFC 7517), a
//! type with no field for private parameters, so no code path can publish `d`, `p`, `q` and the
//! like; deserialisation rejects unknown members, so a tampered store cannot smuggle them in
//! either.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A JWS algorithm AIR Kit accepts.
#[allow(clippy::upper_case_acronyms)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum Alg {
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 2] = [Alg::ES256, Alg::RS256];

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an algorithm AIR Kit accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported algorithm {0:?}: AIR Kit accepts ES256 and RS256")]
pub struct UnsupportedAlg(pub String);

impl FromStr for Alg {
    type Err = UnsupportedAlg;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Alg::ES256),
            "RS256" => Ok(Alg::RS256),
            other => Err(UnsupportedAlg(other.to_owned())),
        }
    }
}

/// The public parameters of a key, as JWK members (RFC 7518 §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kty", deny_unknown_fields)]
pub enum PublicJwk {
    /// An elliptic-curve public key.
    #[serde(rename = "EC")]
    Ec {
        /// Curve name (`P-256`).
        crv: String,
        /// base64url x coordinate.
        x: String,
        /// base64url y coordinate.
        y: String,
    },
    /// An RSA public key.
    #[serde(rename = "RSA")]
    Rsa {
        /// base64url modulus.
        n: String,
        /// base64url public exponent.
        e: String,
    },
}

impl PublicJwk {
    /// The P-256 key whose uncompressed point is `point` (`0x04 || x || y`).
    pub fn from_p256_point(point: &[u8]) -> Option<Self> {
        if point.len() != 65 || point[0] != 0x04 {
            return None;
        }
        Some(PublicJwk::Ec {
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    /// The RSA key with big-endian modulus `n` and exponent `e`.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Self {
        let trim = |b: &[u8]| {
            let start = b
                .iter()
                .position(|&x| x != 0)
                .unwrap_or(b.len().saturating_sub(1));
            URL_SAFE_NO_PAD.encode(&b[start..])
        };
        PublicJwk::Rsa {
            n: trim(n),
            e: trim(e),
        }
    }

    /// The RFC 7638 thumbprint: base64url SHA-256 of the required members in lexical order.
    pub fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicJwk::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicJwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
    }

    /// The algorithm this key type signs with.
    pub fn alg(&self) -> Alg {
        match self {
            PublicJwk::Ec { .. } => Alg::ES256,
            PublicJwk::Rsa { .. } => Alg::RS256,
        }
    }
}
