//! Minting throughput: keyhost's signer (key pair parsed once, header encoded once) against
//! jsonwebtoken's `encode`, which parses the key on every call.
//!
//! Run with `cargo bench --bench signing`; figures are in the README.

use std::hint::black_box;

use aws_lc_rs::rand::SystemRandom;
use criterion::{Criterion, criterion_group, criterion_main};
use keyhost::keys::material::{self, KeyMaterial};
use keyhost::keys::{Alg, KeyRecord, KeyState, Origin};
use keyhost::signer::{SigningKey, TokenClaims};

const NOW: i64 = 1_800_000_000;

fn record(alg: Alg, m: &KeyMaterial) -> KeyRecord {
    let public_jwk = m.pair.public_jwk();
    KeyRecord {
        id: 1,
        kid: public_jwk.thumbprint(),
        alg,
        state: KeyState::Active,
        origin: Origin::Generated,
        bits: m.pair.bits(),
        public_jwk,
        created_at: NOW,
        published_at: Some(NOW),
        signable_at: Some(NOW),
        activated_at: Some(NOW),
        retired_at: None,
        expires_at: None,
        revoked_at: None,
        lead_remaining: 0,
        grace_remaining: 0,
        last_exp: None,
    }
}

fn claims() -> TokenClaims<'static> {
    TokenClaims {
        partner_id: "partner-0001",
        scope: "issue",
        email: "user@example.com",
        ttl: 300,
    }
}

fn bench_mint(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let mut group = c.benchmark_group("mint");
    for alg in Alg::ALL {
        // The test keys (public, never for production), in the DER form jsonwebtoken expects:
        // PKCS#8 for EC, PKCS#1 for RSA.
        let file = match alg {
            Alg::ES256 => "p256.pkcs8.pem",
            Alg::RS256 => "rsa2048.pkcs1.pem",
        };
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let der = pem::parse(text.as_bytes()).expect("PEM").into_contents();
        let m = material::import_pem(&text).expect("key");
        let rec = record(alg, &m);
        let key = SigningKey::new(&rec, m.pair);
        group.bench_function(format!("keyhost/{alg}"), |b| {
            b.iter(|| black_box(key.mint(&rng, NOW, claims()).expect("mint")))
        });

        let (jwt_alg, encoding_key) = match alg {
            Alg::ES256 => (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_der(&der),
            ),
            Alg::RS256 => (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_der(&der),
            ),
        };
        let mut header = jsonwebtoken::Header::new(jwt_alg);
        header.kid = Some(rec.kid.clone());
        let payload = serde_json::json!({
            "partnerId": "partner-0001", "scope": "issue", "email": "user@example.com",
            "iat": NOW, "exp": NOW + 300, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        });
        group.bench_function(format!("jsonwebtoken-encode/{alg}"), |b| {
            b.iter(|| black_box(jsonwebtoken::encode(&header, &payload, &encoding_key)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_mint);
criterion_main!(benches);
