//! Entry points for the fuzz targets and their seed-corpus regression test; each takes arbitrary
//! bytes and must never panic.
//!
//! The parsers worth fuzzing sit behind HTTP handlers, the AIR Kit emulator and the doctor, whose
//! request types and helpers are private; the fuzz crate (`fuzz/`, built by cargo-fuzz outside
//! the workspace) can call only public items. These functions reach the parsers through
//! crate-visible items, with no server, database or network, so that one function serves both the
//! fuzzer (`fuzz/fuzz_targets/<name>.rs`) and `tests/fuzz_corpus.rs`, which runs every seed in
//! `fuzz/corpus/<name>/` and every past crash in `fuzz/regressions/<name>/` on each `cargo test`.
//! A panic here is a bug in keyhost, never a property of the input. `fuzz/README.md` says how to
//! run the fuzzer and what each target covers.
//!
//! Inputs with two parts split at the first `\n`. The JWT targets ([`emulator_jwt`],
//! [`doctor_jwt`]) read their first byte as a mode, so that the fuzzer can reach every stage:
//!
//! - `j` + a JWKS document: the document is parsed and checked, then two valid tokens (ES256 and
//!   RS256, kids `fuzz-es256` and `fuzz-rs256`) are verified against it;
//! - `c` + `<JOSE header JSON>\n<claims JSON>`: both are encoded and signed here with the key the
//!   header's `alg` names (ES256 unless it says RS256), so that the checks after the signature,
//!   which a fuzzer cannot otherwise reach, read arbitrary headers and claims;
//! - anything else: the whole input is the token, verified against the fixed JWKS of those two
//!   keys.
//!
//! The fixed keys are generated once per process and never leave it.

use std::sync::OnceLock;

use axum::http::HeaderValue;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::config::Config;
use crate::doctor::DoctorArgs;
use crate::http::error::ApiError;
use crate::http::extract::parse_json_object;
use crate::http::webhooks::{decode_mac, parse_keyhost_signature, signature_matches};
use crate::jwks::JwkEntry;
use crate::keys::Alg;
use crate::keys::material::{self, KeyPair};

/// The partner id the emulator expects and the doctor is told; the claims of the fixed tokens.
const PARTNER_ID: &str = "fuzz-partner";
/// The scope both verifiers accept.
const SCOPE: &str = "issue";
/// Kid of the fixed ES256 key.
const KID_ES256: &str = "fuzz-es256";
/// Kid of the fixed RS256 key.
const KID_RS256: &str = "fuzz-rs256";
/// The webhook secret signatures are checked under.
const WEBHOOK_SECRET: &str = "fuzz-webhook-secret-0123456789";

/// `(first line, rest)`: the input split at its first `\n` (all of it and nothing without one).
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Renders an error the way the server answers it, so that the error path is exercised too.
fn answer(result: Result<impl Sized, ApiError>) {
    if let Err(e) = result {
        drop(e.into_response());
    }
}

/// PEM import (`keyhost import`, `POST /admin/keys/import`): [`material::import_pem`] on the
/// input as text (invalid UTF-8 replaced: every result is text a PEM file or a JSON string could
/// hold). A key it accepts must yield its public JWK and re-parse from the PKCS#8 keyhost stores.
pub fn pem_import(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = material::import_pem(&text) {
        let alg = m.pair.alg();
        let jwk = m.pair.public_jwk();
        let _ = jwk.thumbprint();
        let stored = material::from_pkcs8(alg, &m.pkcs8)
            .map(|pair| pair.public_jwk() == jwk)
            .unwrap_or(false);
        assert!(
            stored,
            "an imported {alg} key does not re-parse from its PKCS#8"
        );
    }
}

/// JSON request bodies: [`parse_json_object`] into `serde_json::Value` and into the request type
/// of every route that takes a JSON body (`/v1/tokens`, `/v1/issuances`, `/admin/keys/rotate`,
/// `/admin/keys/import`, `/admin/clients`, `/admin/kyc-subjects`), each error rendered as the
/// server would answer it; then the email check the handlers apply, on the string members that
/// carry an email.
pub fn json_body(data: &[u8]) {
    use crate::http::{admin, issuance, tokens};
    let value = parse_json_object::<Value>(data);
    answer(parse_json_object::<tokens::TokenRequest>(data));
    answer(parse_json_object::<issuance::IssueRequest>(data));
    answer(parse_json_object::<admin::RotateRequest>(data));
    answer(parse_json_object::<admin::ImportRequest>(data));
    answer(parse_json_object::<admin::CreateClientRequest>(data));
    answer(parse_json_object::<admin::KycSubject>(data));
    if let Ok(Value::Object(members)) = &value {
        for name in ["email", "userEmail", "clientId"] {
            if let Some(Value::String(s)) = members.get(name) {
                answer(crate::email::Email::parse(s).map_err(ApiError::from));
            }
        }
    }
    answer(value);
}

/// Webhook deliveries: the first line is a signature header, the rest the body. The header goes
/// through [`parse_keyhost_signature`] (`X-Keyhost-Signature`), [`decode_mac`] and
/// [`signature_matches`] (`Idenfy-Signature`); the body is parsed as a kyc-complete and as an
/// iDenfy delivery. Checks that a signature has one accepted spelling: a MAC decodes only from
/// its own 64 hex digits, a timestamp only from 1 to 12 ASCII digits.
pub fn webhook_signature(data: &[u8]) {
    use crate::http::webhooks::{IdenfyWebhook, KycComplete};
    let (header, body) = split_line(data);
    let header = String::from_utf8_lossy(header);
    if let Some(sig) = parse_keyhost_signature(&header) {
        assert!(
            (1..=12).contains(&sig.t.len()) && sig.t.bytes().all(|b| b.is_ascii_digit()),
            "accepted the timestamp {:?}",
            sig.t
        );
    }
    if let Some(mac) = decode_mac(&header) {
        assert!(
            hex::encode(mac).eq_ignore_ascii_case(header.trim()),
            "decoded a MAC from {header:?}"
        );
    }
    let secret = SecretString::from(WEBHOOK_SECRET.to_owned());
    let _ = signature_matches(&secret, body, &header);
    answer(parse_json_object::<KycComplete>(body));
    answer(parse_json_object::<IdenfyWebhook>(body));
}

/// The fixed keys of the JWT targets, their JWKS and one valid token each.
struct Fixture {
    ec: KeyPair,
    rsa: KeyPair,
    /// The JWKS document publishing both.
    jwks: Vec<u8>,
    /// A valid token signed by each key, expiring a day after the process started.
    tokens: [String; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Key generation takes no input: a failure is the crypto library's, not the fuzzer's.
        let ec = material::generate(Alg::ES256, 2048).expect("P-256 key generation");
        let rsa = material::generate(Alg::RS256, 2048).expect("RSA key generation");
        let (ec_jwk, rsa_jwk) = (ec.pair.public_jwk(), rsa.pair.public_jwk());
        let entries = [
            JwkEntry {
                kid: KID_ES256,
                use_: "sig",
                alg: Alg::ES256,
                key: &ec_jwk,
            },
            JwkEntry {
                kid: KID_RS256,
                use_: "sig",
                alg: Alg::RS256,
                key: &rsa_jwk,
            },
        ];
        let jwks = serde_json::to_vec(&json!({ "keys": entries })).expect("a JWKS serialises");
        let now = crate::clock::SystemClock.now();
        let claims = json!({
            "partnerId": PARTNER_ID,
            "scope": SCOPE,
            "email": "user@example.com",
            "iat": now,
            "exp": now + 86_400,
        })
        .to_string();
        let token = |pair: &KeyPair, kid: &str| {
            let header = json!({"alg": pair.alg(), "kid": kid, "typ": "JWT"}).to_string();
            sign(pair, header.as_bytes(), claims.as_bytes())
        };
        let tokens = [token(&ec.pair, KID_ES256), token(&rsa.pair, KID_RS256)];
        Fixture {
            ec: ec.pair,
            rsa: rsa.pair,
            jwks,
            tokens,
        }
    })
}

/// A compact JWS of `header` and `claims` (any bytes) signed by `pair`.
fn sign(pair: &KeyPair, header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = pair
        .sign(&rng, input.as_bytes())
        .expect("signing with a generated key");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// What a JWT target's input asks for (see the module documentation).
enum JwtInput<'a> {
    /// A JWKS document to check the fixed tokens against.
    Jwks(&'a [u8]),
    /// A token to check against the fixed JWKS.
    Token(String),
}

fn jwt_input(data: &[u8]) -> JwtInput<'_> {
    match data.split_first() {
        Some((b'j', jwks)) => JwtInput::Jwks(jwks),
        Some((b'c', rest)) => {
            let (header, claims) = split_line(rest);
            let f = fixture();
            let alg = serde_json::from_slice::<Value>(header)
                .ok()
                .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
            let pair = if alg.as_deref() == Some("RS256") {
                &f.rsa
            } else {
                &f.ec
            };
            JwtInput::Token(sign(pair, header, claims))
        }
        _ => JwtInput::Token(String::from_utf8_lossy(data).into_owned()),
    }
}

/// The AIR Kit emulator's verification of `x-partner-auth` (token shape, JOSE header, JWKS
/// parsing, kid and algorithm, signature, expiry, claims), with the JWKS given instead of
/// fetched. A token that is not a valid header value is dropped: the HTTP server refuses it before
/// the emulator sees it.
pub fn emulator_jwt(data: &[u8]) {
    let scopes = [SCOPE.to_owned()];
    let verify = |token: &[u8], jwks: &[u8]| {
        if let Ok(header) = HeaderValue::from_bytes(token) {
            let _ = crate::emulator::verify_offline(Some(&header), jwks, PARTNER_ID, &scopes);
        }
    };
    match jwt_input(data) {
        JwtInput::Jwks(jwks) => {
            for token in &fixture().tokens {
                verify(token.as_bytes(), jwks);
            }
        }
        JwtInput::Token(token) => verify(token.as_bytes(), &fixture().jwks),
    }
}

/// `keyhost doctor`'s checks of a JWKS document and of a token against it, without the fetch.
pub fn doctor_jwt(data: &[u8]) {
    let check = |token: &str, jwks: &[u8]| {
        let args = DoctorArgs {
            jwks_url: "https://fuzz.invalid/.well-known/jwks.json".into(),
            token: Some(token.to_owned()),
            partner_id: Some(PARTNER_ID.into()),
            scope: SCOPE.into(),
            ca_file: None,
            json: true,
            watch: None,
            watch_timeout: std::time::Duration::from_secs(600),
        };
        let findings = crate::doctor::check_offline(&args, jwks);
        let _ = serde_json::to_string(&findings);
    };
    match jwt_input(data) {
        JwtInput::Jwks(jwks) => {
            for token in &fixture().tokens {
                check(token, jwks);
            }
        }
        JwtInput::Token(token) => check(&token, &fixture().jwks),
    }
}

/// The TOML configuration file: [`Config::from_toml_str`] (extraction over the defaults, then
/// validation) on the input as text, and the values derived from an accepted configuration.
pub fn config_toml(data: &[u8]) {
    if let Ok(config) = Config::from_toml_str(&String::from_utf8_lossy(data)) {
        let _ = config.policy();
        let _ = config.airkit.url();
        let _ = config.database_path();
    }
}
