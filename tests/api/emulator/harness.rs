//! The emulator tests' harness: a running emulator ([`Emu`]) and its answers, a keyhost with
//! an emulator verifying against its JWKS ([`Env`]), hand-built tokens, and a JWKS relay that
//! counts fetches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

use crate::helpers::{PARTNER_ID, TestApp, spawn_app_at_wall_clock};
use crate::import::fixture;

pub(super) const ISSUER_DID: &str = "did:air:id:test:5P44fsVUhPctDTWH2Nz26pZJFsg6CqyiAELTGeVQDB";
pub(super) const PROGRAM: &str = "c21s70g0i54sn0023172Cv";
pub(super) const KID_NOT_FOUND_HINT: &str = ". If you recently rotated keys, publish the new \
                                             key to your JWKS endpoint before using it in JWTs.";

/// A running emulator; dropping it shuts the server down.
pub(super) struct Emu {
    pub(super) base: String,
    pub(super) control: Arc<EmulatorControl>,
    pub(super) http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// An answer: status, headers and JSON body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    /// Asserts AIR's error shape with `status` and exactly `message`.
    pub(super) fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["error"], status, "{}", self.body);
        assert_eq!(self.message(), message, "{}", self.body);
    }
}

pub(super) async fn answer(res: reqwest::Response) -> Answer {
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

pub(super) fn issue_body() -> Value {
    json!({
        "issuerDid": ISSUER_DID,
        "credentialId": PROGRAM,
        "credentialSubject": subject(),
    })
}

impl Emu {
    pub(super) async fn start(args: EmulatorArgs) -> Self {
        Self::start_with_clock(args, Arc::new(keyhost::clock::SystemClock)).await
    }

    /// An emulator whose time (latency, JWKS cache age, on-chain delay) is read from `clock`.
    pub(super) async fn start_with_clock(
        args: EmulatorArgs,
        clock: Arc<dyn keyhost::clock::Clock>,
    ) -> Self {
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

    pub(super) async fn issue(&self, token: &str, body: Value) -> Answer {
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

    pub(super) async fn status(&self, token: &str, hash: &str) -> Answer {
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
pub(super) struct Env {
    pub(super) app: TestApp,
    pub(super) emu: Emu,
    pub(super) clock: Arc<ManualClock>,
    pub(super) key: String,
}

pub(super) fn jwks_url(app: &TestApp) -> String {
    format!("{}/.well-known/jwks.json", app.public)
}

pub(super) fn args_for(app: &TestApp) -> EmulatorArgs {
    let mut args = EmulatorArgs::new(jwks_url(app), PARTNER_ID);
    args.onchain_delay = Duration::from_millis(200);
    args
}

pub(super) async fn env() -> Env {
    env_with(|_| {}).await
}

pub(super) async fn env_with(tweak: impl FnOnce(&mut EmulatorArgs)) -> Env {
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
    pub(super) async fn token(&self, email: &str, alg: &str) -> String {
        self.token_with(json!({"email": email, "alg": alg})).await
    }

    pub(super) async fn token_with(&self, body: Value) -> String {
        let minted = self.app.mint_ok(&self.key, body).await;
        minted["token"].as_str().expect("token").to_owned()
    }

    /// Imports the P-256 fixture into keyhost (published at once, as a pending key) and returns
    /// its kid and a signing key for hand-built tokens.
    pub(super) async fn import_fixture(&self) -> (String, EncodingKey) {
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

pub(super) fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as keyhost would mint them, valid against the wall clock.
pub(super) fn claims(email: &str) -> Value {
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

pub(super) fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("signs")
}

pub(super) fn es256_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    header
}

/// A token with any header, payload and signature bytes, signed by nobody.
pub(super) fn unsigned(header: Value, payload: Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

pub(super) fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// A JWKS server in front of keyhost's: relays its JWKS with a chosen `Cache-Control`, after
/// an optional delay, and counts the fetches.
pub(super) struct Relay {
    pub(super) url: String,
    pub(super) fetches: Arc<AtomicUsize>,
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

pub(super) async fn relay(app: &TestApp, cache_control: &'static str, delay: Duration) -> Relay {
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
pub(super) async fn emergency_rotation(app: &TestApp) {
    app.rotate("ES256", true).await;
}
