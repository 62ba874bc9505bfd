//! The AIR Kit emulator against a real keyhost: tokens minted by keyhost's `POST /v1/tokens` (or
//! signed here with a key imported into keyhost) are verified by the emulator through keyhost's
//! published JWKS, and every answer is checked against AIR Kit's documented shapes and wording.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyhost::clock::ManualClock;
use keyhost::emulator::{Emulator, EmulatorArgs, EmulatorControl};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::helpers::{
    PARTNER_ID, TestApp, endless_server, spawn_app_at_wall_clock, start, test_config,
};
use crate::import::fixture;

const ISSUER_DID: &str = "did:air:id:test:5P44fsVUhPctDTWH2Nz26pZJFsg6CqyiAELTGeVQDB";
const PROGRAM: &str = "c21s70g0i54sn0023172Cv";
const KID_NOT_FOUND_HINT: &str = ". If you recently rotated keys, publish the new key to your JWKS endpoint before using it in JWTs.";

/// A running emulator; dropping it shuts the server down.
struct Emu {
    base: String,
    control: Arc<EmulatorControl>,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// An answer: status, headers and JSON body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    /// Asserts AIR's error shape with `status` and exactly `message`.
    fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["error"], status, "{}", self.body);
        assert_eq!(self.message(), message, "{}", self.body);
    }
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the emulator answered {status} with non-JSON ({e}): {text}"));
    Answer {
        status,
        headers,
        body,
    }
}

fn subject() -> Value {
    json!({"age": 25, "location": "United States", "isMember": true})
}

fn issue_body() -> Value {
    json!({
        "issuerDid": ISSUER_DID,
        "credentialId": PROGRAM,
        "credentialSubject": subject(),
    })
}

impl Emu {
    async fn start(args: EmulatorArgs) -> Self {
        Self::start_with_clock(args, Arc::new(keyhost::clock::SystemClock)).await
    }

    /// An emulator whose time (latency, JWKS cache age, on-chain delay) is read from `clock`.
    async fn start_with_clock(args: EmulatorArgs, clock: Arc<dyn keyhost::clock::Clock>) -> Self {
        let emulator = Emulator::bind_with_clock(args, clock)
            .await
            .expect("emulator binds");
        let base = emulator.base_url();
        assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"));
        assert_eq!(
            base,
            format!("http://{}/v1", emulator.local_addr()),
            "base_url is the bound address plus /v1"
        );
        let control = emulator.control();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(emulator.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            control,
            http: reqwest::Client::new(),
            _stop: tx,
        }
    }

    async fn issue(&self, token: &str, body: Value) -> Answer {
        let res = self
            .http
            .post(format!("{}/credentials/issue-on-behalf", self.base))
            .header("x-partner-auth", token)
            .json(&body)
            .send()
            .await
            .expect("issue request");
        answer(res).await
    }

    async fn status(&self, token: &str, hash: &str) -> Answer {
        let res = self
            .http
            .get(format!("{}/credentials/status", self.base))
            .header("x-partner-auth", token)
            .query(&[("coreClaimHash", hash)])
            .send()
            .await
            .expect("status request");
        answer(res).await
    }
}

/// A keyhost, an emulator verifying against its JWKS, and an API key allowed both scopes. The
/// emulator's time (on-chain delay, JWKS cache age, latency) moves only with `clock`.
struct Env {
    app: TestApp,
    emu: Emu,
    clock: Arc<ManualClock>,
    key: String,
}

fn jwks_url(app: &TestApp) -> String {
    format!("{}/.well-known/jwks.json", app.public)
}

fn args_for(app: &TestApp) -> EmulatorArgs {
    let mut args = EmulatorArgs::new(jwks_url(app), PARTNER_ID);
    args.onchain_delay = Duration::from_millis(200);
    args
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(tweak: impl FnOnce(&mut EmulatorArgs)) -> Env {
    let app = spawn_app_at_wall_clock().await;
    let mut args = args_for(&app);
    tweak(&mut args);
    let clock = ManualClock::starting_now();
    let emu = Emu::start_with_clock(args, clock.clone()).await;
    let (_, key) = app.create_client(&["issue", "issue on-behalf"]).await;
    Env {
        app,
        emu,
        clock,
        key,
    }
}

impl Env {
    /// A Partner JWT minted by keyhost.
    async fn token(&self, email: &str, alg: &str) -> String {
        self.token_with(json!({"email": email, "alg": alg})).await
    }

    async fn token_with(&self, body: Value) -> String {
        let minted = self.app.mint_ok(&self.key, body).await;
        minted["token"].as_str().expect("token").to_owned()
    }

    /// Imports the P-256 fixture into keyhost (published at once, as a pending key) and returns
    /// its kid and a signing key for hand-built tokens.
    async fn import_fixture(&self) -> (String, EncodingKey) {
        let res = self
            .app
            .admin_post(
                "/admin/keys/import",
                json!({"pem": fixture("p256.pkcs8.pem")}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        let kid = body["key"]["kid"].as_str().unwrap().to_owned();
        let pem = pem::parse(fixture("p256.pkcs8.pem")).unwrap();
        (kid, EncodingKey::from_ec_der(pem.contents()))
    }
}

fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as keyhost would mint them, valid against the wall clock.
fn claims(email: &str) -> Value {
    let now = wall_now();
    json!({
        "partnerId": PARTNER_ID,
        "scope": "issue",
        "email": email,
        "iat": now,
        "exp": now + 300,
        "jti": "hand-built",
    })
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("signs")
}

fn es256_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    header
}

/// A token with any header, payload and signature bytes, signed by nobody.
fn unsigned(header: Value, payload: Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// A JWKS server in front of keyhost's: relays its JWKS with a chosen `Cache-Control`, after
/// an optional delay, and counts the fetches.
struct Relay {
    url: String,
    fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct RelayState {
    upstream: String,
    cache_control: &'static str,
    delay: Duration,
    fetches: Arc<AtomicUsize>,
}

async fn relay_jwks(State(s): State<RelayState>) -> axum::response::Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(s.delay).await;
    let body = reqwest::get(&s.upstream)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (
        [
            (CACHE_CONTROL, s.cache_control),
            (axum::http::header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response()
}

async fn relay(app: &TestApp, cache_control: &'static str, delay: Duration) -> Relay {
    let fetches = Arc::new(AtomicUsize::new(0));
    let state = RelayState {
        upstream: jwks_url(app),
        cache_control,
        delay,
        fetches: fetches.clone(),
    };
    let router = axum::Router::new()
        .route("/jwks.json", axum::routing::get(relay_jwks))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Relay {
        url: format!("http://{addr}/jwks.json"),
        fetches,
    }
}

/// Rotates keyhost's ES256 key in an emergency: the new key signs at once.
async fn emergency_rotation(app: &TestApp) {
    app.rotate("ES256", true).await;
}

// ---------------------------------------------------------------------------------------------
// Issuance and status

#[tokio::test]
async fn an_issued_credential_waits_on_chain_and_then_is_onchain_with_the_seed_shapes() {
    let env = env().await;
    let token = env.token("user@example.com", "ES256").await;
    let issued = env.emu.issue(&token, issue_body()).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let fields: Vec<_> = issued.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields, ["coreClaimHash", "credentialId", "userUuid"]);
    let hash = issued.body["coreClaimHash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_eq!(issued.body["credentialId"], PROGRAM);
    let uuid = issued.body["userUuid"].as_str().unwrap();
    assert_eq!(
        uuid.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );

    let waiting = env.emu.status(&token, hash).await;
    assert_eq!(waiting.status, 200);
    assert_eq!(
        waiting.body,
        json!({"coreClaimHash": hash, "vcStatus": "WAIT_ONCHAIN"})
    );

    // The on-chain delay (200 ms) passes on the emulator's clock.
    env.clock.advance(1);
    let onchain = env.emu.status(&token, hash).await;
    assert_eq!(onchain.status, 200, "{}", onchain.body);
    let onchain = onchain.body;
    let fields: Vec<_> = onchain.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        fields,
        [
            "coreClaimHash",
            "issuanceDate",
            "issuerDid",
            "vcId",
            "vcStatus"
        ]
    );
    assert_eq!(onchain["coreClaimHash"], hash);
    assert_eq!(onchain["issuerDid"], ISSUER_DID);
    let date = onchain["issuanceDate"].as_str().unwrap();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let parsed = time::PrimitiveDateTime::parse(date, format).expect("YYYY-MM-DD HH:MM:SS");
    let age = time::OffsetDateTime::now_utc() - parsed.assume_utc();
    assert!(age.whole_seconds().abs() < 60, "UTC issuance time: {date}");
    let vc_id = onchain["vcId"].as_str().unwrap();
    assert!(vc_id.len() >= 16 && vc_id.chars().all(|c| c.is_ascii_alphanumeric()));

    assert_eq!(env.emu.control.credentials(), 1);
    assert_eq!(
        env.emu.control.issue_calls(),
        [(
            "user@example.com".to_owned(),
            PROGRAM.to_owned(),
            "revoke".to_owned()
        )]
    );
    let counts = env.emu.control.status_counts();
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), [(200, 3)]);
}

#[tokio::test]
async fn es256_and_rs256_tokens_from_keyhost_are_both_accepted_and_the_user_uuid_is_stable() {
    let env = env().await;
    let mut uuids = Vec::new();
    for alg in ["ES256", "RS256"] {
        let token = env.token("same@example.com", alg).await;
        let issued = env.emu.issue(&token, issue_body()).await;
        assert_eq!(issued.status, 200, "{alg}: {}", issued.body);
        uuids.push(issued.body["userUuid"].clone());
        let status = env
            .emu
            .status(&token, issued.body["coreClaimHash"].as_str().unwrap())
            .await;
        assert_eq!(status.status, 200, "{alg}: {}", status.body);
    }
    assert_eq!(uuids[0], uuids[1], "userUuid is stable per email");
    let other = env.token("other@example.com", "ES256").await;
    let issued = env.emu.issue(&other, issue_body()).await;
    assert_ne!(issued.body["userUuid"], uuids[0]);
}

#[tokio::test]
async fn a_duplicate_with_ignore_is_409_carrying_the_existing_hash() {
    let env = env().await;
    let token = env.token("dup@example.com", "ES256").await;
    let first = env.emu.issue(&token, issue_body()).await;
    assert_eq!(first.status, 200);
    let mut body = issue_body();
    body["onDuplicate"] = json!("ignore");
    let dup = env.emu.issue(&token, body).await;
    dup.assert_error(409, "Duplicate credential exists (onDuplicate: ignore)");
    assert_eq!(dup.body["coreClaimHash"], first.body["coreClaimHash"]);
    assert_eq!(env.emu.control.credentials(), 1);

    // Another program or another user is not a duplicate.
    let mut other_program = issue_body();
    other_program["credentialId"] = json!("another-program");
    other_program["onDuplicate"] = json!("ignore");
    assert_eq!(env.emu.issue(&token, other_program).await.status, 200);
    let other_user = env.token("someone@example.com", "ES256").await;
    let mut body = issue_body();
    body["onDuplicate"] = json!("ignore");
    assert_eq!(env.emu.issue(&other_user, body).await.status, 200);
}

#[tokio::test]
async fn a_duplicate_with_revoke_reissues_under_a_new_hash_and_the_old_one_keeps_its_status() {
    let env = env().await;
    let token = env.token("dup@example.com", "ES256").await;
    let first = env.emu.issue(&token, issue_body()).await;
    let mut body = issue_body();
    body["onDuplicate"] = json!("revoke");
    let second = env.emu.issue(&token, body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(second.body["coreClaimHash"], first.body["coreClaimHash"]);
    // The default is revoke too.
    let third = env.emu.issue(&token, issue_body()).await;
    assert_eq!(third.status, 200);
    assert_ne!(third.body["coreClaimHash"], second.body["coreClaimHash"]);
    assert_eq!(env.emu.control.credentials(), 1, "only the last is live");
    let old = env
        .emu
        .status(&token, first.body["coreClaimHash"].as_str().unwrap())
        .await;
    assert_eq!(old.status, 200, "a revoked credential still has a status");
    let calls: Vec<_> = env
        .emu
        .control
        .issue_calls()
        .into_iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(calls, ["revoke", "revoke", "revoke"]);
}

#[tokio::test]
async fn an_unknown_status_hash_is_404_with_airs_message_and_a_missing_one_is_400() {
    let env = env().await;
    let token = env.token("user@example.com", "ES256").await;
    env.emu
        .status(&token, &"0".repeat(64))
        .await
        .assert_error(404, "No credential found for the given hash.");
    let res = env
        .emu
        .http
        .get(format!("{}/credentials/status", env.emu.base))
        .header("x-partner-auth", &token)
        .send()
        .await
        .unwrap();
    let missing = answer(res).await;
    assert_eq!(missing.status, 400);
    assert!(missing.message().contains("coreClaimHash"));
    env.emu
        .status(&token, "")
        .await
        .assert_error(400, missing.message());
    // Without a token, the status endpoint is a 401 like the other one.
    let res = env
        .emu
        .http
        .get(format!(
            "{}/credentials/status?coreClaimHash=abc",
            env.emu.base
        ))
        .send()
        .await
        .unwrap();
    answer(res)
        .await
        .assert_error(401, "Missing x-partner-auth header");
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn a_token_without_typ_jwt_is_rejected_with_missing_typ_header() {
    let env = env().await;
    let (kid, key) = env.import_fixture().await;
    let good = sign(&es256_header(&kid), &claims("hand@example.com"), &key);
    assert_eq!(
        env.emu.issue(&good, issue_body()).await.status,
        200,
        "control: the same key with typ JWT is accepted"
    );
    let mut header = es256_header(&kid);
    header.typ = None;
    let token = sign(&header, &claims("hand@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing typ header");
    header.typ = Some("at+jwt".into());
    let token = sign(&header, &claims("hand@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing typ header");
}

#[tokio::test]
async fn an_algorithm_that_does_not_match_the_jwks_key_type_is_rejected() {
    let env = env().await;
    let (ec_kid, key) = env.import_fixture().await;
    let rsa_kid = kid_of(&env.token("u@example.com", "RS256").await);
    let mismatch = "Invalid signature: algorithm does not match the key type in your JWKS";
    let payload = claims("u@example.com");
    for (alg, kid) in [
        ("RS256", &ec_kid),
        ("ES256", &rsa_kid),
        ("PS256", &rsa_kid),
        ("ES384", &ec_kid),
    ] {
        let token = unsigned(
            json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            payload.clone(),
            &[7; 64],
        );
        env.emu
            .issue(&token, issue_body())
            .await
            .assert_error(401, mismatch);
    }
    // An HMAC token keyed with the public key's bytes: the classic confusion, refused before
    // any signature check.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(ec_kid.clone());
    let token = sign(&header, &payload, &EncodingKey::from_secret(b"public"));
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, mismatch);
    // The right algorithm still works.
    let token = sign(&es256_header(&ec_kid), &payload, &key);
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn a_bad_signature_is_rejected_as_invalid_signature() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig));
    env.emu
        .issue(&tampered, issue_body())
        .await
        .assert_error(401, "Invalid signature");

    // A payload swapped under a valid signature.
    let parts: Vec<_> = token.split('.').collect();
    let mut other = claims("attacker@example.com");
    other["exp"] = json!(wall_now() + 60);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(other.to_string()),
        parts[2]
    );
    env.emu
        .issue(&forged, issue_body())
        .await
        .assert_error(401, "Invalid signature");

    // Signed by a key that is not the one published under the kid.
    let rsa = env.token("u@example.com", "RS256").await;
    let (_, key) = env.import_fixture().await;
    let token = sign(
        &es256_header(&kid_of(&token)),
        &claims("u@example.com"),
        &key,
    );
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Invalid signature");
    assert_eq!(env.emu.issue(&rsa, issue_body()).await.status, 200);
}

#[tokio::test]
async fn unknown_kid_is_rejected_while_the_cached_jwks_is_fresh() {
    let env = env().await;
    let before = env.token("u@example.com", "ES256").await;
    assert_eq!(env.emu.issue(&before, issue_body()).await.status, 200);
    // keyhost now signs with a key the emulator's cached JWKS (max-age 300) has never seen.
    emergency_rotation(&env.app).await;
    let after = env.token("u@example.com", "ES256").await;
    let kid = kid_of(&after);
    assert_ne!(kid, kid_of(&before));
    assert!(
        env.app.jwks().await.to_string().contains(&kid),
        "keyhost publishes it"
    );
    env.emu
        .issue(&after, issue_body())
        .await
        .assert_error(401, &format!("kid not found: {kid}{KID_NOT_FOUND_HINT}"));
}

#[tokio::test]
async fn a_stale_jwks_is_refetched_on_the_next_request_and_the_new_kid_then_verifies() {
    let app = spawn_app_at_wall_clock().await;
    let relay = relay(&app, "public, max-age=1", Duration::ZERO).await;
    let mut args = args_for(&app);
    args.jwks_url = relay.url.clone();
    let emu_clock = ManualClock::starting_now();
    let emu = Emu::start_with_clock(args, emu_clock.clone()).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let mint = |email: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            app.mint_ok(&key, json!({"email": email})).await["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        emu.issue(&mint("a@example.com").await, issue_body())
            .await
            .status,
        200
    );
    emergency_rotation(&app).await;
    let token = mint("b@example.com").await;
    let refused = emu.issue(&token, issue_body()).await;
    assert_eq!(refused.status, 401);
    assert!(refused.message().starts_with("kid not found"));
    assert_eq!(
        relay.fetches.load(Ordering::SeqCst),
        1,
        "no refetch while fresh"
    );
    // The copy turns stale once a second has passed on the emulator's clock.
    emu_clock.advance(1);
    assert_eq!(emu.issue(&token, issue_body()).await.status, 200);
    assert_eq!(relay.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_no_store_jwks_is_fetched_for_every_request() {
    let app = spawn_app_at_wall_clock().await;
    let relay = relay(&app, "no-store", Duration::ZERO).await;
    let mut args = args_for(&app);
    args.jwks_url = relay.url.clone();
    let emu = Emu::start(args).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "a@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        assert_eq!(emu.issue(&token, issue_body()).await.status, 200);
    }
    assert_eq!(relay.fetches.load(Ordering::SeqCst), 3);
    // And a key rotated in keyhost is seen at once.
    emergency_rotation(&app).await;
    let token = app.mint_ok(&key, json!({"email": "a@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn concurrent_requests_share_one_jwks_fetch() {
    let app = spawn_app_at_wall_clock().await;
    let relay = relay(&app, "public, max-age=300", Duration::from_millis(150)).await;
    let mut args = args_for(&app);
    args.jwks_url = relay.url.clone();
    let emu = Arc::new(Emu::start(args).await);
    let (_, key) = app.create_client(&["issue"]).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let token = app
            .mint_ok(&key, json!({"email": format!("u{i}@example.com")}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let emu = emu.clone();
        tasks.push(tokio::spawn(async move {
            emu.issue(&token, issue_body()).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(relay.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_token_is_rejected_with_token_expired() {
    // A keyhost whose clock is an hour behind the wall clock mints tokens that the emulator,
    // which reads the wall clock, sees as expired.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(dir.path());
    let app = start(dir, ManualClock::new(wall_now() - 3600), config)
        .await
        .unwrap();
    let emu = Emu::start(args_for(&app)).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app
        .mint_ok(&key, json!({"email": "late@example.com"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.issue(&token, issue_body())
        .await
        .assert_error(401, "Token expired");
    assert!(emu.control.issue_calls().is_empty());
}

#[tokio::test]
async fn missing_claims_are_named_and_a_missing_exp_is_refused() {
    let env = env().await;
    let (kid, key) = env.import_fixture().await;
    for claim in ["partnerId", "email", "scope", "exp"] {
        let mut payload = claims("u@example.com");
        payload.as_object_mut().unwrap().remove(claim);
        let token = sign(&es256_header(&kid), &payload, &key);
        env.emu
            .issue(&token, issue_body())
            .await
            .assert_error(401, &format!("Missing claim: {claim}"));
    }
    let mut payload = claims("u@example.com");
    payload["email"] = json!(42);
    let token = sign(&es256_header(&kid), &payload, &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Invalid claim: email must be a string");
    let mut header = es256_header(&kid);
    header.kid = None;
    let token = sign(&header, &claims("u@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing kid header");
}

#[tokio::test]
async fn a_token_for_another_partner_is_rejected() {
    let app = spawn_app_at_wall_clock().await;
    let mut args = args_for(&app);
    args.partner_id = "partner-someone-else".into();
    let emu = Emu::start(args).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.issue(&token, issue_body()).await.assert_error(
        401,
        &format!("partnerId {PARTNER_ID} does not match this partner (partner-someone-else)"),
    );
}

#[tokio::test]
async fn a_scope_that_is_not_accepted_is_rejected_and_accepted_scopes_are_configurable() {
    let env = env().await;
    let token = env
        .token_with(json!({"email": "u@example.com", "scope": "issue on-behalf"}))
        .await;
    env.emu.issue(&token, issue_body()).await.assert_error(
        401,
        "Scope not accepted: issue on-behalf. Accepted scopes: issue",
    );

    let emu = Emu::start({
        let mut args = args_for(&env.app);
        args.accept_scopes = vec!["issue".into(), "issue on-behalf".into()];
        args
    })
    .await;
    assert_eq!(emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn a_missing_or_unreadable_partner_token_is_401() {
    let env = env().await;
    let res = env
        .emu
        .http
        .post(format!("{}/credentials/issue-on-behalf", env.emu.base))
        .json(&issue_body())
        .send()
        .await
        .unwrap();
    answer(res)
        .await
        .assert_error(401, "Missing x-partner-auth header");
    for bad in [
        "not-a-jwt",
        "a.b.c",
        "....",
        "Bearer x.y.z",
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        let a = env.emu.issue(bad, issue_body()).await;
        assert_eq!(a.status, 401, "{bad}: {}", a.body);
        assert!(
            a.message().starts_with("JWT verification failed"),
            "{bad}: {}",
            a.body
        );
    }
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_401_naming_the_cause() {
    let app = spawn_app_at_wall_clock().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Nothing listens on a port that was just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cases = [
        (format!("http://127.0.0.1:{port}/jwks.json"), "127.0.0.1"),
        (format!("{}/no/such/jwks.json", app.public), "HTTP 404 from"),
        (
            format!("{}/healthz", app.public),
            "did not return a valid JSON Web Key Set",
        ),
    ];
    for (url, hint) in cases {
        let mut args = args_for(&app);
        args.jwks_url = url.clone();
        let emu = Emu::start(args).await;
        let a = emu.issue(&token, issue_body()).await;
        assert_eq!(a.status, 401, "{url}: {}", a.body);
        assert!(
            a.message().starts_with("JWKS endpoint unreachable: ") && a.message().contains(hint),
            "{url}: {}",
            a.body
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Body validation and business rules

#[tokio::test]
async fn each_body_error_is_a_400_naming_the_field() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let with = |field: &str, value: Option<Value>| {
        let mut body = issue_body();
        match value {
            Some(v) => body[field] = v,
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
        }
        body
    };
    let cases = [
        (json!([1, 2]), "Request body must be a JSON object"),
        (json!("text"), "Request body must be a JSON object"),
        (json!(null), "Request body must be a JSON object"),
        (with("issuerDid", None), "issuerDid is required"),
        (
            with("issuerDid", Some(json!(""))),
            "issuerDid must be a non-empty string",
        ),
        (
            with("issuerDid", Some(json!(7))),
            "issuerDid must be a non-empty string",
        ),
        (with("credentialId", None), "credentialId is required"),
        (
            with("credentialId", Some(json!(["x"]))),
            "credentialId must be a string",
        ),
        (
            with("credentialSubject", None),
            "credentialSubject is required",
        ),
        (
            with("credentialSubject", Some(json!("age=25"))),
            "credentialSubject must be an object",
        ),
        (
            with("credentialSubject", Some(json!([1]))),
            "credentialSubject must be an object",
        ),
        (
            with("onDuplicate", Some(json!("replace"))),
            "onDuplicate must be \"ignore\" or \"revoke\"",
        ),
        (
            with("onDuplicate", Some(json!(true))),
            "onDuplicate must be \"ignore\" or \"revoke\"",
        ),
    ];
    for (body, message) in cases {
        env.emu
            .issue(&token, body.clone())
            .await
            .assert_error(400, message);
    }
    let raw = |content_type: &'static str, body: &'static str| {
        env.emu
            .http
            .post(format!("{}/credentials/issue-on-behalf", env.emu.base))
            .header("x-partner-auth", &token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    answer(raw("application/json", "{not json").await.unwrap())
        .await
        .assert_error(400, "Request body must be a JSON object");
    answer(raw("text/plain", "{}").await.unwrap())
        .await
        .assert_error(400, "Content-Type must be application/json");
    assert!(env.emu.control.issue_calls().is_empty());
    assert_eq!(env.emu.control.credentials(), 0);
}

#[tokio::test]
async fn body_errors_come_after_authentication() {
    let env = env().await;
    let a = env.emu.issue("x.y.z", json!([])).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with("JWT verification failed: "),
        "{}",
        a.body
    );
    assert!(env.emu.control.issue_calls().is_empty());
}

#[tokio::test]
async fn unknown_issuer_and_program_are_404_a_forbidden_schema_403_and_rejected_consent_409() {
    let env = env_with(|args| {
        args.issuer_dids = vec![ISSUER_DID.into()];
        args.credential_ids = vec![PROGRAM.into(), "kyc-basic".into()];
        args.forbidden_credential_ids = vec!["kyc-basic".into()];
        args.consent_rejected = vec!["No@Example.com".into()];
    })
    .await;
    let token = env.token("u@example.com", "ES256").await;
    let mut body = issue_body();
    body["issuerDid"] = json!("did:air:id:test:unknown");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(404, "Unknown issuer DID");
    let mut body = issue_body();
    body["credentialId"] = json!("no-such-program");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(404, "Unknown program ID");
    let mut body = issue_body();
    body["credentialId"] = json!("kyc-basic");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(403, "Schema not allowed for this issuer");
    let refused = env.token("no@example.com", "ES256").await;
    env.emu
        .issue(&refused, issue_body())
        .await
        .assert_error(409, "User consent rejected");
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
    assert_eq!(env.emu.control.issue_calls().len(), 5);
    assert_eq!(env.emu.control.credentials(), 1);
    let counts = env.emu.control.status_counts();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(200, 1), (403, 1), (404, 2), (409, 1)]
    );
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn injected_429s_carry_retry_after_and_injected_500s_follow_their_rate() {
    let env = env_with(|args| args.fail_rate_429 = 1.0).await;
    let token = env.token("u@example.com", "ES256").await;
    let a = env.emu.issue(&token, issue_body()).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body["error"], 429);
    assert_eq!(a.headers["retry-after"], "1");
    // Faults come before authentication.
    let a = env.emu.issue("garbage", issue_body()).await;
    assert_eq!(a.status, 429);
    let a = env.emu.status("garbage", "abc").await;
    assert_eq!(a.status, 429);

    env.emu.control.set_fail_rate_429(0.0);
    env.emu.control.set_fail_rate_500(1.0);
    let a = env.emu.issue(&token, issue_body()).await;
    a.assert_error(500, "Internal server error");
    assert!(env.emu.control.issue_calls().is_empty());

    env.emu.control.set_fail_rate_500(0.0);
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
    let counts = env.emu.control.status_counts();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(200, 1), (429, 3), (500, 1)]
    );

    // A rate in between fails some and not others (each of 40 draws).
    env.emu.control.set_fail_rate_500(0.5);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(env.emu.status(&token, "abc").await.status.as_u16());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [404, 500]);
}

#[tokio::test]
async fn the_rate_limit_is_per_partner_and_answers_429_with_retry_after() {
    let env = env_with(|args| args.rate_limit = Some(2)).await;
    let token = env.token("u@example.com", "ES256").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let a = env.emu.issue(&token, issue_body()).await;
        statuses.push(a.status.as_u16());
        if a.status == 429 {
            assert_eq!(a.body["error"], 429);
            assert!(a.message().contains("2 requests per second"));
            retry_after = Some(a.headers["retry-after"].to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds));
    // Requests that claim no partner are limited per address, apart from the partner's.
    let a = env.emu.issue("garbage", issue_body()).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn added_latency_delays_every_api_answer_on_the_emulators_clock() {
    let app = spawn_app_at_wall_clock().await;
    let clock = ManualClock::starting_now();
    let emu = Arc::new(Emu::start_with_clock(args_for(&app), clock.clone()).await);
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.control.set_latency(Duration::from_secs(3600));
    let issuing = {
        let (emu, token) = (emu.clone(), token.clone());
        tokio::spawn(async move { emu.issue(&token, issue_body()).await.status })
    };
    crate::helpers::eventually(Duration::from_secs(10), "the request waits", || async {
        clock.sleepers() == 1
    })
    .await;
    assert!(!issuing.is_finished());
    clock.advance(3599);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(clock.sleepers(), 1, "an hour has not passed");
    clock.advance(1);
    assert_eq!(issuing.await.unwrap(), 200);
    // Without latency nothing waits: the answer comes with the clock standing still.
    emu.control.set_latency(Duration::ZERO);
    assert_eq!(emu.status(&token, "abc").await.status, 404);
    assert_eq!(clock.sleepers(), 0);
}

// ---------------------------------------------------------------------------------------------
// Robustness and configuration

#[tokio::test]
async fn malformed_requests_never_crash_the_server_and_always_get_airs_error_body() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let base = env.emu.base.clone();
    let root = base.trim_end_matches("/v1").to_owned();
    let http = &env.emu.http;
    let issue = format!("{base}/credentials/issue-on-behalf");
    let long = "a".repeat(20_000);
    let requests = vec![
        http.get(format!("{root}/")),
        http.get(format!("{base}/credentials/unknown")),
        http.delete(&issue),
        http.get(&issue),
        http.post(format!("{base}/credentials/status")),
        http.get(format!("{base}/credentials/status?coreClaimHash=%ff%fe"))
            .header("x-partner-auth", &token),
        http.get(format!(
            "{base}/credentials/status?coreClaimHash=a&coreClaimHash=b"
        ))
        .header("x-partner-auth", &token),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", "application/json")
            .body(vec![0xff, 0xfe, 0x00, 0x7b]),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", "application/json")
            .body("[".repeat(10_000)),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", ";;;")
            .body("{}"),
        http.post(&issue).header("x-partner-auth", long.as_str()),
        http.post(&issue)
            .header("x-partner-auth", format!("{long}.{long}.{long}")),
        http.post(&issue).header("x-partner-auth", "..."),
        http.post(&issue).header("x-partner-auth", "e30.e30.e30"),
        http.post(&issue)
            .header("x-partner-auth", "eyJ0eXAiOiJKV1QifQ.e30.AA"),
        http.post(&issue).header(
            "x-partner-auth",
            unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": 5}),
                json!({}),
                b"x",
            ),
        ),
        http.post(&issue).header(
            "x-partner-auth",
            unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": "\u{0}\"'<>"}),
                json!([]),
                b"",
            ),
        ),
    ];
    for request in requests {
        let res = request.send().await.expect("answered");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status} with a non-JSON body ({e}): {text}"));
        assert_eq!(body["error"], status, "{body}");
        assert!(body["message"].is_string(), "{body}");
        assert!((400..500).contains(&status), "{status}: {body}");
    }
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn bind_refuses_invalid_arguments() {
    let base = || EmulatorArgs::new("http://127.0.0.1:1/jwks.json", PARTNER_ID);
    let cases: Vec<(EmulatorArgs, &str)> = vec![
        (
            EmulatorArgs {
                fail_rate_429: 1.5,
                ..base()
            },
            "--fail-rate-429",
        ),
        (
            EmulatorArgs {
                fail_rate_500: f64::NAN,
                ..base()
            },
            "--fail-rate-500",
        ),
        (
            EmulatorArgs {
                rate_limit: Some(0),
                ..base()
            },
            "--rate-limit",
        ),
        (
            EmulatorArgs {
                jwks_url: "ftp://example.com/jwks".into(),
                ..base()
            },
            "--jwks-url",
        ),
        (
            EmulatorArgs {
                jwks_url: "not a url".into(),
                ..base()
            },
            "--jwks-url",
        ),
        (
            EmulatorArgs {
                partner_id: " ".into(),
                ..base()
            },
            "--partner-id",
        ),
        (
            EmulatorArgs {
                accept_scopes: vec![],
                ..base()
            },
            "--accept-scope",
        ),
        (
            EmulatorArgs {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..base()
            },
            "--ca-file",
        ),
        (
            EmulatorArgs {
                ca_file: Some(
                    format!("{}/tests/fixtures/README.md", env!("CARGO_MANIFEST_DIR")).into(),
                ),
                ..base()
            },
            "--ca-file",
        ),
    ];
    for (args, flag) in cases {
        let err = Emulator::bind(args).await.err().expect("refused");
        assert!(err.to_string().contains(flag), "{flag}: {err:#}");
    }
}

#[tokio::test]
async fn an_https_jwks_is_fetched_with_the_ca_given_by_ca_file() {
    // keyhost itself serves the JWKS over HTTPS, with a certificate from a throw-away test CA.
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, tls_key) = crate::tls::test_pki(pki.path());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    config.tls.cert = Some(cert);
    config.tls.key = Some(tls_key);
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let port: u16 = app.public.rsplit(':').next().unwrap().parse().unwrap();

    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "tls@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("https://localhost:{port}/.well-known/jwks.json");

    // Without the CA the certificate is not trusted: the JWKS is unreachable.
    let mut args = args_for(&app);
    args.jwks_url = url.clone();
    let untrusted = Emu::start(args.clone()).await;
    let a = untrusted.issue(&token, issue_body()).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with("JWKS endpoint unreachable: ")
            && a.message().contains("certificate"),
        "{}",
        a.body
    );

    args.ca_file = Some(ca);
    let trusted = Emu::start(args).await;
    let a = trusted.issue(&token, issue_body()).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// Bounded JWKS fetches: like AIR Kit, the emulator follows no redirect and reads at most 1 MiB.

/// A token that passes the checks made before the JWKS is fetched (shape, `typ`, `kid`).
fn token_needing_the_jwks() -> String {
    unsigned(
        json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
        claims("u@example.com"),
        b"not a signature",
    )
}

#[tokio::test]
async fn a_redirecting_jwks_is_refused_and_its_target_never_fetched() {
    let app = spawn_app_at_wall_clock().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The target serves keyhost's genuine JWKS: following the redirect would have verified.
    let target = relay(&app, "max-age=60", Duration::ZERO).await;
    let location = target.url.clone();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::FOUND,
                    [(axum::http::header::LOCATION, location)],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut args = args_for(&app);
    args.jwks_url = format!("http://{addr}/jwks.json");
    let emu = Emu::start(args).await;
    let a = emu.issue(&token, issue_body()).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with(&format!(
            "JWKS endpoint unreachable: http://{addr}/jwks.json answered HTTP 302 redirecting to {}",
            target.url
        )) && a.message().contains("AIR Kit does not follow redirects"),
        "{}",
        a.body
    );
    assert_eq!(
        target.fetches.load(Ordering::SeqCst),
        0,
        "the target was fetched"
    );
}

#[tokio::test]
async fn an_endless_jwks_body_is_refused_at_the_cap_well_before_the_fetch_timeout() {
    let server = endless_server(r#"{"keys":["#, r#"{"kty":"EC"},"#).await;
    let emu = Emu::start(EmulatorArgs::new(
        format!("{}/jwks.json", server.url),
        PARTNER_ID,
    ))
    .await;
    let started = Instant::now();
    let a = emu.issue(&token_needing_the_jwks(), issue_body()).await;
    let elapsed = started.elapsed();
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with("JWKS endpoint unreachable: ")
            && a.message()
                .contains("exceeds the 1 MiB (1048576 bytes) cap"),
        "{}",
        a.body
    );
    // The fetch timeout is 5 s: stopping at the cap takes a fraction of it.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let served = server.served.load(Ordering::SeqCst);
    assert!(served < 32 << 20, "{served} bytes served");
}

#[tokio::test]
async fn a_jwks_announcing_more_than_the_cap_is_refused_unread() {
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(|| async {
            let mut body = br#"{"keys":[]}"#.to_vec();
            body.resize(2 << 20, b' ');
            body
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let emu = Emu::start(EmulatorArgs::new(
        format!("http://{addr}/jwks.json"),
        PARTNER_ID,
    ))
    .await;
    let a = emu.issue(&token_needing_the_jwks(), issue_body()).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with("JWKS endpoint unreachable: ")
            && a.message()
                .contains("announces 2097152 bytes (Content-Length)"),
        "{}",
        a.body
    );
}
