//! Private key material: generation, parsing and import.
//!
//! Every private-key operation goes through aws-lc-rs (constant-time, the library rustls uses).
//! The `rsa` crate is not used at all: its RSA private-key operations leak timing
//! (RUSTSEC-2023-0071, "Marvin"), and aws-lc-rs also parses every PEM flavour we accept
//! (PKCS#8, PKCS#1, SEC1), so it would buy nothing here.
//!
//! Key material is held in [`KeyPair`] (redacting `Debug`) and its PKCS#8 encoding in
//! [`Zeroizing`] buffers, wiped on drop.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use zeroize::Zeroizing;

use crate::keys::Alg;
use crate::keys::PublicJwk;

/// A parsed private key, ready to sign.
pub enum KeyPair {
    /// P-256.
    Ec(EcdsaKeyPair),
    /// RSA.
    Rsa(RsaKeyPair),
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPair::Ec(_) => f.write_str("KeyPair::Ec(<redacted>)"),
            KeyPair::Rsa(_) => f.write_str("KeyPair::Rsa(<redacted>)"),
        }
    }
}

impl KeyPair {
    /// Signs `message` as a JWS of this key's algorithm (raw `r || s` for ES256).
    pub fn sign(
        &self,
        rng: &dyn SecureRandom,
        message: &[u8],
    ) -> Result<Vec<u8>, KeyMaterialError> {
        match self {
            KeyPair::Ec(k) => Ok(k
                .sign(rng, message)
                .map_err(|_| KeyMaterialError::Sign)?
                .as_ref()
                .to_vec()),
            KeyPair::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, rng, message, &mut sig)
                    .map_err(|_| KeyMaterialError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        match self {
            KeyPair::Ec(_) => Alg::ES256,
            KeyPair::Rsa(_) => Alg::RS256,
        }
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> PublicJwk {
        match self {
            KeyPair::Ec(k) => PublicJwk::from_p256_point(k.public_key().as_ref())
                .expect("aws-lc-rs P-256 public keys are uncompressed points"),
            KeyPair::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                PublicJwk::from_rsa_components(&c.n, &c.e)
            }
        }
    }

    /// Modulus bits (RSA) or field bits (EC).
    pub fn bits(&self) -> u32 {
        match self {
            KeyPair::Ec(_) => 256,
            KeyPair::Rsa(k) => (k.public_modulus_len() * 8) as u32,
        }
    }
}

/// A key pair with its PKCS#8 encoding, as generated or imported.
pub struct KeyMaterial {
    /// The parsed key.
    pub pair: KeyPair,
    /// PKCS#8 v1 DER of the private key; wiped on drop.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("pair", &self.pair)
            .field("pkcs8", &"<redacted>")
            .finish()
    }
}

/// Why key material could not be produced or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyMaterialError {
    /// The crypto library failed to generate a key.
    #[error("key generation failed")]
    Generate,
    /// Stored PKCS#8 did not parse (corruption or a wrong master key).
    #[error("stored private key does not parse: {0}")]
    Stored(&'static str),
    /// A signature could not be produced.
    #[error("signing failed")]
    Sign,
    /// An RSA size other than 2048, 3072 or 4096 bits was asked for.
    #[error("unsupported RSA size {0}; use 2048, 3072 or 4096")]
    RsaSize(u32),
}

/// Why a PEM could not be imported; each message says what to do instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// Not PEM at all.
    #[error(
        "no PEM block found; expected -----BEGIN PRIVATE KEY----- (PKCS#8), -----BEGIN RSA \
         PRIVATE KEY----- (PKCS#1) or -----BEGIN EC PRIVATE KEY----- (SEC1)"
    )]
    NotPem,
    /// A passphrase-protected key.
    #[error(
        "the key is encrypted; decrypt it first (openssl pkcs8 -in key.pem -out plain.pem) and \
         import the plain key over a secure channel"
    )]
    Encrypted,
    /// A public key or certificate instead of a private key.
    #[error(
        "found a {0} block; import needs the private key, from which keyhost derives the public \
         one"
    )]
    NotPrivate(String),
    /// Several private keys in one file.
    #[error("the PEM holds {0} private keys; import one at a time")]
    Several(usize),
    /// A label we do not handle.
    #[error("unsupported PEM block {0:?}; expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY")]
    UnknownLabel(String),
    /// An RSA key below 2048 bits.
    #[error("RSA key is smaller than 2048 bits; AIR Kit partners need at least 2048")]
    RsaTooSmall,
    /// An RSA key above 8192 bits.
    #[error("RSA key is larger than 8192 bits")]
    RsaTooLarge,
    /// An RSA key whose public exponent is not 65537.
    #[error(
        "RSA key has the public exponent {0}; only 65537 is accepted (the exponent key generators \
         use and verifiers expect; small exponents such as 3 are fragile)"
    )]
    RsaExponent(String),
    /// An EC key on another curve, or another key type.
    #[error("{0}: only RSA (2048 bits or more) and EC P-256 keys can sign RS256 or ES256")]
    Unsupported(&'static str),
    /// The DER inside the PEM is malformed.
    #[error("the {0} block does not contain a valid key ({1})")]
    Malformed(String, &'static str),
}

/// Generates a key for `alg` (RSA with `rsa_bits`).
pub fn generate(alg: Alg, rsa_bits: u32) -> Result<KeyMaterial, KeyMaterialError> {
    match alg {
        Alg::ES256 => {
            let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|_| KeyMaterialError::Generate)?;
            let pkcs8 = Zeroizing::new(
                k.to_pkcs8v1()
                    .map_err(|_| KeyMaterialError::Generate)?
                    .as_ref()
                    .to_vec(),
            );
            Ok(KeyMaterial {
                pair: KeyPair::Ec(k),
                pkcs8,
            })
        }
        Alg::RS256 => {
            let size = match rsa_bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => return Err(KeyMaterialError::RsaSize(other)),
            };
            let k = RsaKeyPair::generate(size).map_err(|_| KeyMaterialError::Generate)?;
            let pkcs8 = Zeroizing::new(
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&k)
                    .map_err(|_| KeyMaterialError::Generate)?
                    .as_ref()
                    .to_vec(),
            );
            Ok(KeyMaterial {
                pair: KeyPair::Rsa(k),
                pkcs8,
            })
        }
    }
}

/// Parses a stored PKCS#8 key of `alg`.
pub fn from_pkcs8(alg: Alg, pkcs8: &[u8]) -> Result<KeyPair, KeyMaterialError> {
    match alg {
        Alg::ES256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map(KeyPair::Ec)
            .map_err(|e| KeyMaterialError::Stored(e.description_())),
        Alg::RS256 => RsaKeyPair::from_pkcs8(pkcs8)
            .map(KeyPair::Rsa)
            .map_err(|e| KeyMaterialError::Stored(e.description_())),
    }
}

/// Imports one private key from PEM text: PKCS#8, PKCS#1 (RSA) or SEC1 (EC); `EC PARAMETERS`
/// blocks, as `openssl ecparam -genkey` writes them, are skipped.
pub fn import_pem(text: &str) -> Result<KeyMaterial, ImportError> {
    let blocks = pem::parse_many(text.as_bytes()).map_err(|_| ImportError::NotPem)?;
    let mut private = Vec::new();
    for block in &blocks {
        match block.tag() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => private.push(block),
            "EC PARAMETERS" => {}
            "ENCRYPTED PRIVATE KEY" => return Err(ImportError::Encrypted),
            t if t.contains("PUBLIC KEY") || t.contains("CERTIFICATE") => {
                if blocks.len() == 1 {
                    return Err(ImportError::NotPrivate(t.to_owned()));
                }
            }
            t => return Err(ImportError::UnknownLabel(t.to_owned())),
        }
    }
    let block = match private.as_slice() {
        [] if blocks.is_empty() => return Err(ImportError::NotPem),
        [] => return Err(ImportError::NotPrivate(blocks[0].tag().to_owned())),
        [one] => *one,
        many => return Err(ImportError::Several(many.len())),
    };
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(ImportError::Encrypted);
    }
    let der = Zeroizing::new(block.contents().to_vec());
    let tag = block.tag().to_owned();
    let pair = match tag.as_str() {
        "RSA PRIVATE KEY" => KeyPair::Rsa(rsa_checked(RsaKeyPair::from_der(&der), &tag)?),
        "EC PRIVATE KEY" => KeyPair::Ec(ec_checked(
            EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der),
            &tag,
        )?),
        _ => match RsaKeyPair::from_pkcs8(&der) {
            Ok(k) => KeyPair::Rsa(rsa_checked(Ok(k), &tag)?),
            Err(rsa_err) => {
                match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der) {
                    Ok(k) => KeyPair::Ec(k),
                    Err(ec_err) => {
                        return Err(match (rsa_err.description_(), ec_err.description_()) {
                            ("TooSmall", _) => ImportError::RsaTooSmall,
                            ("TooLarge", _) => ImportError::RsaTooLarge,
                            ("InvalidEncoding", "InvalidEncoding") => {
                                ImportError::Malformed(tag, "invalid encoding")
                            }
                            (_, "WrongAlgorithm") | ("WrongAlgorithm", _) => {
                                ImportError::Unsupported(
                                    "the key is neither RSA nor EC P-256 (Ed25519, P-384, DSA … \
                                     are not accepted)",
                                )
                            }
                            (_, other) => ImportError::Malformed(tag, other),
                        });
                    }
                }
            }
        },
    };
    if let KeyPair::Rsa(k) = &pair {
        let bits = (k.public_modulus_len() * 8) as u32;
        if bits < 2048 {
            return Err(ImportError::RsaTooSmall);
        }
        let e = PublicKeyComponents::<Vec<u8>>::from(k.public_key()).e;
        let significant = &e[e.iter().position(|&b| b != 0).unwrap_or(e.len())..];
        if significant != [0x01, 0x00, 0x01] {
            let value = significant.iter().fold(0u128, |acc, &b| {
                acc.saturating_mul(256).saturating_add(u128::from(b))
            });
            return Err(ImportError::RsaExponent(value.to_string()));
        }
    }
    let pkcs8 = match &pair {
        KeyPair::Ec(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
        KeyPair::Rsa(k) => {
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k).map(|d| d.as_ref().to_vec())
        }
    }
    .map_err(|_| ImportError::Malformed(tag, "cannot re-encode as PKCS#8"))?;
    Ok(KeyMaterial {
        pair,
        pkcs8: Zeroizing::new(pkcs8),
    })
}

fn rsa_checked(
    r: Result<RsaKeyPair, aws_lc_rs::error::KeyRejected>,
    tag: &str,
) -> Result<RsaKeyPair, ImportError> {
    r.map_err(|e| match e.description_() {
        "TooSmall" => ImportError::RsaTooSmall,
        "TooLarge" => ImportError::RsaTooLarge,
        other => ImportError::Malformed(tag.to_owned(), other),
    })
}

fn ec_checked(
    r: Result<EcdsaKeyPair, aws_lc_rs::error::KeyRejected>,
    tag: &str,
) -> Result<EcdsaKeyPair, ImportError> {
    r.map_err(|e| match e.description_() {
        "WrongAlgorithm" | "UnexpectedError" | "Unspecified" => {
            ImportError::Unsupported("the EC key is not on curve P-256")
        }
        other => ImportError::Malformed(tag.to_owned(), other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;

    fn pem_of(tag: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(tag, der.to_vec()))
    }

    #[test]
    fn generated_keys_round_trip_through_pkcs8() {
        for alg in Alg::ALL {
            let m = generate(alg, 2048).unwrap();
            let again = from_pkcs8(alg, &m.pkcs8).unwrap();
            assert_eq!(again.public_jwk(), m.pair.public_jwk());
            assert_eq!(m.pair.alg(), alg);
        }
    }

    #[test]
    fn es256_signatures_are_64_raw_bytes_and_rs256_are_modulus_sized() {
        let rng = SystemRandom::new();
        let ec = generate(Alg::ES256, 2048).unwrap();
        assert_eq!(ec.pair.sign(&rng, b"x").unwrap().len(), 64);
        let rsa = generate(Alg::RS256, 2048).unwrap();
        assert_eq!(rsa.pair.sign(&rng, b"x").unwrap().len(), 256);
        assert_eq!(rsa.pair.bits(), 2048);
    }

    #[test]
    fn pkcs8_pem_of_both_types_imports_with_the_same_public_key() {
        for alg in Alg::ALL {
            let m = generate(alg, 2048).unwrap();
            let imported = import_pem(&pem_of("PRIVATE KEY", &m.pkcs8)).unwrap();
            assert_eq!(imported.pair.public_jwk(), m.pair.public_jwk());
        }
    }

    #[test]
    fn garbage_and_public_keys_are_refused_with_a_reason() {
        assert_eq!(import_pem("hello").unwrap_err(), ImportError::NotPem);
        assert!(matches!(
            import_pem(&pem_of("PUBLIC KEY", b"abc")).unwrap_err(),
            ImportError::NotPrivate(_)
        ));
        assert_eq!(
            import_pem(&pem_of("ENCRYPTED PRIVATE KEY", b"abc")).unwrap_err(),
            ImportError::Encrypted
        );
        assert!(matches!(
            import_pem(&pem_of("PRIVATE KEY", b"not der")).unwrap_err(),
            ImportError::Malformed(..) | ImportError::Unsupported(_)
        ));
        let m = generate(Alg::ES256, 2048).unwrap();
        let two = pem_of("PRIVATE KEY", &m.pkcs8).repeat(2);
        assert_eq!(import_pem(&two).unwrap_err(), ImportError::Several(2));
    }
}
