//! The issuance proxy end to end: keyhost on loopback, talking to the AIR Kit emulator on
//! loopback, which verifies keyhost's tokens against keyhost's JWKS with its own code.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhost::airkit::{AirKit, BoxFuture, Reply, TransportError};
use keyhost::clock::{Clock, ManualClock, SystemClock};
use keyhost::config::Config;
use keyhost::emulator::{Emulator, EmulatorArgs, EmulatorControl};
use keyhost::issuance::{
    IssuanceService, IssuanceSettings, IssuanceSource, IssuanceState, NewIssuance, WaitFor,
};
use keyhost::store::sql::Value as SqlValue;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::helpers::{PARTNER_ID, RawDb, StoreCleanup, TestApp, start, test_config};

pub const ISSUER: &str = "did:air:id:test:5P44fsVUhPctDTWH2Nz26pZJFsg6CqyiAELTGeVQDB";
pub const PROGRAM: &str = "c21s70g0i54sn0023172Cv";

/// An emulator running in this process.
pub struct Upstream {
    pub control: Arc<EmulatorControl>,
    pub base_url: String,
    _stop: oneshot::Sender<()>,
}

/// A free loopback port (reserved by binding, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_emulator(jwks_port: u16, tweak: impl FnOnce(&mut EmulatorArgs)) -> Upstream {
    start_emulator_on(jwks_port, Arc::new(SystemClock), tweak).await
}

/// An emulator whose time (latency, JWKS cache age, on-chain delay) is read from `clock`.
pub async fn start_emulator_on(
    jwks_port: u16,
    clock: Arc<dyn Clock>,
    tweak: impl FnOnce(&mut EmulatorArgs),
) -> Upstream {
    let mut args = EmulatorArgs::new(
        format!("http://127.0.0.1:{jwks_port}/.well-known/jwks.json"),
        PARTNER_ID,
    );
    args.onchain_delay = Duration::from_millis(200);
    args.issuer_dids = vec![ISSUER.into()];
    args.credential_ids = vec![PROGRAM.into(), "forbidden-program".into()];
    args.forbidden_credential_ids = vec!["forbidden-program".into()];
    args.consent_rejected = vec!["refuser@example.com".into()];
    tweak(&mut args);
    let emulator = Emulator::bind_with_clock(args, clock)
        .await
        .expect("emulator binds");
    let (control, base_url) = (emulator.control(), emulator.base_url());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(emulator.run_until(async move {
        let _ = rx.await;
    }));
    Upstream {
        control,
        base_url,
        _stop: tx,
    }
}

/// The configuration of a keyhost that issues through `base_url`, with quick retries and polls.
pub fn issuing_config(dir: &std::path::Path, public_port: u16, base_url: &str) -> Config {
    let mut c = test_config(dir);
    c.http.public_addr = ([127, 0, 0, 1], public_port).into();
    c.airkit.base_url = Some(base_url.to_owned());
    c.airkit.issuer_did = Some(ISSUER.into());
    c.airkit.credential_id = Some(PROGRAM.into());
    c.airkit.backoff = Duration::from_millis(20);
    c.airkit.backoff_max = Duration::from_millis(200);
    c.airkit.poll_interval = Duration::from_millis(100);
    c.airkit.wait = Duration::from_secs(10);
    c.webhooks.kyc_secret = Some("kyc-webhook-test-secret".to_owned().into());
    c.webhooks.idenfy_signing_key = Some("idenfy-test-signing-key".to_owned().into());
    c
}

/// keyhost (on a manual clock set to now, so tokens are valid in real time) and an emulator.
pub async fn spawn_issuing(
    tweak_emulator: impl FnOnce(&mut EmulatorArgs),
    tweak_config: impl FnOnce(&mut Config),
) -> (TestApp, Upstream, String) {
    spawn_issuing_on(Arc::new(SystemClock), tweak_emulator, tweak_config).await
}

/// [`spawn_issuing`], with the emulator's time read from `emulator_clock`.
pub async fn spawn_issuing_on(
    emulator_clock: Arc<dyn Clock>,
    tweak_emulator: impl FnOnce(&mut EmulatorArgs),
    tweak_config: impl FnOnce(&mut Config),
) -> (TestApp, Upstream, String) {
    let port = free_port();
    let upstream = start_emulator_on(port, emulator_clock, tweak_emulator).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = issuing_config(dir.path(), port, &upstream.base_url);
    tweak_config(&mut config);
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let (_, key) = app.create_client(&["issue"]).await;
    (app, upstream, key)
}

pub async fn issue(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    issue_with(app, key, body, None).await
}

pub async fn issue_with(
    app: &TestApp,
    key: &str,
    body: Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/v1/credentials/issue-on-behalf", app.internal))
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// Issues the usual subject for `email` as the client `key`.
pub async fn issue_for(app: &TestApp, key: &str, email: &str) -> (u16, Value) {
    issue(
        app,
        key,
        json!({"email": email, "credentialSubject": subject()}),
    )
    .await
}

fn subject() -> Value {
    json!({"age": 25, "location": "United States", "isMember": true})
}

pub async fn issuance(app: &TestApp, id: &str) -> Value {
    app.admin_json(&format!("/admin/issuances/{id}")).await
}

/// Polls an issuance until it is in `state` (at most 10 s).
pub async fn until_state(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = issuance(app, id).await;
        if row["state"] == state {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "issuance never reached {state}: {row}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_issuance_goes_from_wait_onchain_to_onchain_and_its_status_is_proxied() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (status, body) = issue_for(&app, &key, "user@example.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "submitted");
    assert_eq!(body["vcStatus"], "WAIT_ONCHAIN");
    assert_eq!(body["credentialId"], PROGRAM);
    assert_eq!(body["attempts"], 1);
    let hash = body["coreClaimHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    assert!(body["userUuid"].is_string());
    let id = body["issuanceId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("iss_"));

    let done = until_state(&app, &id, "onchain").await;
    assert_eq!(done["vcStatus"], "ONCHAIN");
    assert!(done["vcId"].is_string() && done["issuanceDate"].is_string());

    let res = app
        .http
        .get(format!("{}/v1/credentials/status", app.internal))
        .query(&[("coreClaimHash", hash.as_str())])
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let status: Value = res.json().await.unwrap();
    assert_eq!(status["vcStatus"], "ONCHAIN");
    assert_eq!(status["coreClaimHash"], hash.as_str());

    let mine: Value = app
        .http
        .get(format!("{}/v1/issuances/{id}", app.internal))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["state"], "onchain");
    assert_eq!(upstream.control.issue_calls().len(), 1);
    assert_eq!(
        upstream.control.issue_calls()[0],
        ("user@example.com".into(), PROGRAM.into(), "revoke".into())
    );
}

#[tokio::test]
async fn wait_true_answers_once_the_credential_is_onchain() {
    let (app, _upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (status, body) = issue(
        &app,
        &key,
        json!({"email": "user@example.com", "credentialSubject": subject(), "wait": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "onchain");
    assert_eq!(body["vcStatus"], "ONCHAIN");
}

#[tokio::test]
async fn each_air_kit_refusal_surfaces_with_air_status_message_and_fix_and_is_not_retried() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let cases = [
        (
            json!({"email": "u@example.com", "credentialSubject": subject(), "credentialId": "forbidden-program"}),
            403,
            "PERMISSIONS_ERROR",
            "issuerDid owns the schema",
        ),
        (
            json!({"email": "u@example.com", "credentialSubject": subject(), "issuerDid": "did:air:id:test:unknown"}),
            404,
            "NOT_FOUND",
            "Developer Dashboard",
        ),
        (
            json!({"email": "refuser@example.com", "credentialSubject": subject()}),
            409,
            "CONFLICT",
            "consent",
        ),
    ];
    for (body, status, identifier, fix) in cases {
        let before = upstream.control.issue_calls().len();
        let (got, answer) = issue(&app, &key, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["identifier"], identifier);
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("AIR Kit answered {status}")),
            "{message}"
        );
        assert!(message.contains(fix), "{message}");
        assert!(message.contains("iss_"), "names the issuance: {message}");
        assert_eq!(
            upstream.control.issue_calls().len(),
            before + 1,
            "not retried"
        );
    }
    let failed: Value = app.admin_json("/admin/issuances?state=failed").await;
    assert_eq!(failed["issuances"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_401_from_air_kit_is_explained_and_counted_per_kid() {
    // AIR Kit accepts another scope than the one keyhost is configured to send.
    let (app, upstream, key) =
        spawn_issuing(|e| e.accept_scopes = vec!["issue on-behalf".into()], |_| {}).await;
    let (status, body) = issue_for(&app, &key, "u@example.com").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["identifier"], "UNAUTHORIZED");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("AIR Kit answered 401"), "{message}");
    assert!(message.contains("KEYHOST_ISSUE_SCOPE"), "{message}");
    assert_eq!(upstream.control.issue_calls().len(), 0, "rejected at auth");
    let metrics = app.metrics().await;
    let kid = app.kids_in("active").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keyhost_airkit_unauthorized_total")
                && kid.iter().any(|k| l.contains(k.as_str()))),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_duplicate_with_on_duplicate_ignore_is_the_existing_issuance_not_a_failure() {
    let (app, _upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, first) = issue_for(&app, &key, "dup@example.com").await;
    let (status, second) = issue(
        &app,
        &key,
        json!({"email": "dup@example.com", "credentialSubject": subject(), "onDuplicate": "ignore"}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["coreClaimHash"], first["coreClaimHash"]);
    let (_, third) = issue(
        &app,
        &key,
        json!({"email": "dup@example.com", "credentialSubject": subject(), "onDuplicate": "revoke"}),
    )
    .await;
    assert_eq!(third["duplicate"], false);
    assert_ne!(third["coreClaimHash"], first["coreClaimHash"], "reissued");
}

#[tokio::test]
async fn bursts_of_429_and_500_are_retried_until_the_issuance_succeeds() {
    for code in [429u16, 500] {
        let (app, upstream, key) = spawn_issuing(
            |e| {
                if code == 429 {
                    e.fail_rate_429 = 1.0;
                } else {
                    e.fail_rate_500 = 1.0;
                }
            },
            |_| {},
        )
        .await;
        let (control, clock) = (upstream.control.clone(), app.clock.clone());
        // The burst ends after three refusals. The emulator sends Retry-After: 1 with each 429:
        // once keyhost waits for it (beside the request waiting for the answer), a second
        // passes on keyhost's clock.
        let driver = tokio::spawn(async move {
            let mut advanced_for = 0;
            loop {
                let refused = control.status_counts().get(&code).copied().unwrap_or(0);
                if refused >= 3 {
                    control.set_fail_rate_429(0.0);
                    control.set_fail_rate_500(0.0);
                }
                if code == 429 && refused > advanced_for && clock.sleepers() >= 2 {
                    advanced_for = refused;
                    clock.advance(1);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (status, body) = issue_for(&app, &key, "u@example.com").await;
        driver.abort();
        assert_eq!(status, 200, "{code}: {body}");
        assert_eq!(body["state"], "submitted");
        assert!(body["attempts"].as_u64().unwrap() >= 4, "{body}");
        assert_eq!(upstream.control.issue_calls().len(), 1, "issued once");
    }
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_budget_parks_the_issuance_and_loses_nothing() {
    let (app, upstream, key) =
        spawn_issuing(|e| e.fail_rate_500 = 1.0, |c| c.airkit.max_attempts = 3).await;
    let (status, body) = issue_for(&app, &key, "u@example.com").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["identifier"], "INTERNAL_ERROR");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("after 3 attempts") && message.contains("resume"),
        "{message}"
    );
    let stalled: Value = app.admin_json("/admin/issuances?state=stalled").await;
    let row = &stalled["issuances"][0];
    assert_eq!(row["attempts"], 3);
    assert_eq!(row["email"], "u@example.com");
    assert!(row["lastError"].as_str().unwrap().contains("500"));
    let id = row["issuanceId"].as_str().unwrap().to_owned();

    // AIR Kit is back; an admin resumes the issuance.
    upstream.control.set_fail_rate_500(0.0);
    let res = app
        .admin_post(&format!("/admin/issuances/{id}/resume"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    until_state(&app, &id, "onchain").await;
    let audit: Value = app.admin_json("/admin/audit").await;
    let resumes: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "issuance.resume" && e["subject"] == id.as_str())
        .collect();
    assert_eq!(resumes.len(), 1, "{audit}");
    let res = app
        .admin_post(&format!("/admin/issuances/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        res.status(),
        409,
        "only stalled or unconfirmed issuances resume"
    );
}

#[tokio::test]
async fn an_idempotency_key_returns_the_earlier_issuance_instead_of_issuing_twice() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let body = json!({"email": "u@example.com", "credentialSubject": subject()});
    let (s1, first) = issue_with(&app, &key, body.clone(), Some("order-42")).await;
    let (s2, second) = issue_with(&app, &key, body.clone(), Some("order-42")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["issuanceId"], second["issuanceId"]);
    assert_eq!(first["coreClaimHash"], second["coreClaimHash"]);
    assert_eq!(upstream.control.issue_calls().len(), 1);

    let other = json!({"email": "other@example.com", "credentialSubject": subject()});
    let (s3, conflict) = issue_with(&app, &key, other, Some("order-42")).await;
    assert_eq!(s3, 409, "{conflict}");
    assert_eq!(conflict["identifier"], "CONFLICT");
    let (s4, fresh) = issue_with(&app, &key, body, Some("order-43")).await;
    assert_eq!(s4, 200);
    assert_ne!(fresh["issuanceId"], first["issuanceId"]);
}

#[tokio::test]
async fn issuing_requires_the_issue_scope_and_valid_input() {
    let (app, _upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, verifier) = app.create_client(&["verify"]).await;
    let (status, body) = issue_for(&app, &verifier, "u@example.com").await;
    assert_eq!(status, 403, "{body}");
    let (_, key) = app.create_client(&["issue"]).await;
    for (body, identifier) in [
        (json!({"credentialSubject": subject()}), "MISSING_VALUE"),
        (json!({"email": "u@example.com"}), "MISSING_VALUE"),
        (
            json!({"email": "nope", "credentialSubject": subject()}),
            "BAD_VALUE",
        ),
        (
            json!({"email": "u@example.com", "credentialSubject": [1]}),
            "BAD_VALUE",
        ),
        (
            json!({"email": "u@example.com", "credentialSubject": {}, "onDuplicate": "keep"}),
            "BAD_VALUE",
        ),
    ] {
        let (status, answer) = issue(&app, &key, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["identifier"], identifier, "{body}: {answer}");
    }
    let none: Value = app.admin_json("/admin/issuances").await;
    assert!(
        none["issuances"].as_array().unwrap().is_empty(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn without_an_air_kit_url_the_proxy_explains_how_to_configure_it() {
    let app = crate::helpers::spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let (status, body) = issue(
        &app,
        &key,
        json!({"email": "u@example.com", "credentialSubject": subject(), "issuerDid": ISSUER, "credentialId": PROGRAM}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("KEYHOST_AIRKIT_BASE_URL")
    );
}

#[tokio::test]
async fn a_key_used_before_air_kit_refetched_the_jwks_gets_401_and_the_publish_lead_prevents_it() {
    // The emulator caches keyhost's JWKS for its max-age (2 s here), as AIR Kit does; keyhost
    // publishes each key longer than that (3 s) before it signs. Each has its own clock.
    let emulator_clock = ManualClock::starting_now();
    let (app, upstream, key) = spawn_issuing_on(
        emulator_clock.clone(),
        |_| {},
        |c| {
            c.keys.jwks_max_age = Duration::from_secs(2);
            c.keys.publish_lead = Duration::from_secs(3);
        },
    )
    .await;
    let ok = json!({"email": "u@example.com", "credentialSubject": subject()});
    let (status, _) = issue(&app, &key, ok.clone()).await;
    assert_eq!(status, 200, "the emulator has now cached the JWKS");

    // A normal rotation publishes the successor at once; it signs only after the lead.
    let res = app
        .admin_post("/admin/keys/rotate", json!({"alg": "ES256"}))
        .await;
    let successor = res.json::<Value>().await.unwrap()["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Past max-age the emulator refetches the JWKS during the lead: it now holds the successor.
    emulator_clock.advance(3);
    let (status, _) = issue(&app, &key, ok.clone()).await;
    assert_eq!(status, 200, "still signed by the old key");
    // The lead ends (keyhost's clock) while the emulator's fresh cache has not expired: the
    // successor signs at once, and the emulator already knows it.
    app.advance(3).await;
    assert!(app.kids_in("active").await.contains(&successor));
    let (status, body) = issue(&app, &key, ok.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.control.status_counts().get(&401), None);
    // Let the status polls of those issuances end, so that the only call below is the issue (the
    // emulator's copy of the JWKS stays fresh).
    emulator_clock.advance(1);
    let listed: Value = app.admin_json("/admin/issuances").await;
    for row in listed["issuances"].as_array().unwrap() {
        until_state(&app, row["issuanceId"].as_str().unwrap(), "onchain").await;
    }

    // An emergency rotation skips the lead: the JWKS the emulator just cached lacks the new kid.
    let res = app
        .admin_post(
            "/admin/keys/rotate",
            json!({"alg": "ES256", "emergency": true}),
        )
        .await;
    let new_kid = res.json::<Value>().await.unwrap()["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = issue(&app, &key, ok).await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("kid not found"), "{message}");
    assert!(message.contains("publish"), "{message}");
    assert_eq!(upstream.control.status_counts().get(&401), Some(&1));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&new_kid),
        "401 counted for {new_kid}: {metrics}"
    );
}

/// AIR Kit answering 400 (the emulator never does for a request keyhost validated first).
struct RefusesWith400;

impl keyhost::airkit::AirKit for RefusesWith400 {
    fn issue_on_behalf<'a>(
        &'a self,
        _token: &'a str,
        _body: &'a Value,
    ) -> keyhost::airkit::BoxFuture<
        'a,
        Result<keyhost::airkit::Reply, keyhost::airkit::TransportError>,
    > {
        Box::pin(async {
            Ok(keyhost::airkit::Reply {
                status: 400,
                body: json!({"error": 400, "message": "credentialSubject.age must be a number"}),
                retry_after: None,
                date: None,
            })
        })
    }

    fn status<'a>(
        &'a self,
        _token: &'a str,
        _hash: &'a str,
    ) -> keyhost::airkit::BoxFuture<
        'a,
        Result<keyhost::airkit::Reply, keyhost::airkit::TransportError>,
    > {
        Box::pin(async { Err(keyhost::airkit::TransportError::Other("unused".into())) })
    }
}

#[tokio::test]
async fn a_400_from_air_kit_is_a_validation_error_with_the_schema_fix() {
    let app = crate::helpers::spawn_app().await;
    let mut settings = app.state.issuance.settings().clone();
    settings.issuer_did = Some(ISSUER.into());
    settings.credential_id = Some(PROGRAM.into());
    let service = keyhost::issuance::IssuanceService::new(
        app.state.store.clone(),
        app.state.row_auth.clone(),
        keyhost::issuance::Upstream {
            airkit: Some(Arc::new(RefusesWith400)),
            skew: app.state.clock_skew.clone(),
            alg: app.state.config.tokens.default_alg,
        },
        app.state.minter.clone(),
        app.state.clock.clone(),
        Arc::new(keyhost::metrics::Metrics::default()),
        settings,
    );
    let (row, created) = service
        .submit(keyhost::issuance::NewIssuance {
            source: keyhost::issuance::IssuanceSource::Client("test".into()),
            idempotency_key: None,
            email: "u@example.com".into(),
            issuer_did: None,
            credential_id: None,
            credential_subject: json!({"age": "old"}),
            on_duplicate: None,
        })
        .await
        .unwrap();
    assert!(created);
    let row = service
        .wait(
            &row.id,
            keyhost::issuance::WaitFor::Answer,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(row.state, keyhost::issuance::IssuanceState::Failed);
    assert_eq!(row.attempts, 1, "never retried");
    let message = row.last_error.clone().unwrap();
    assert!(
        message.contains("credentialSubject.age must be a number"),
        "{message}"
    );
    assert!(message.contains("match your schema"), "{message}");
    let res = keyhost::http::issuance::issuance_response(&row);
    assert_eq!(res.status(), 400);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["identifier"], "VALIDATION_ERROR");
}

/// Runs the keyhost binary as its own process.
fn keyhost_process(
    dir: &std::path::Path,
    public: u16,
    internal: u16,
    upstream: &str,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYHOST_DATA_DIR", dir.join("data"))
        .env("KEYHOST_KEYS_DIR", dir.join("keys"))
        .envs(crate::helpers::store_env(dir))
        .env("KEYHOST_PUBLIC_ADDR", format!("127.0.0.1:{public}"))
        .env("KEYHOST_INTERNAL_ADDR", format!("127.0.0.1:{internal}"))
        .env("KEYHOST_PARTNER_ID", PARTNER_ID)
        .env("KEYHOST_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN)
        .env("KEYHOST_AIRKIT_BASE_URL", upstream)
        .env("KEYHOST_ISSUER_DID", ISSUER)
        .env("KEYHOST_CREDENTIAL_ID", PROGRAM)
        .env("KEYHOST_AIRKIT_WAIT", "1s")
        .env("KEYHOST_AIRKIT_TIMEOUT", "30s")
        .env("KEYHOST_AIRKIT_POLL_INTERVAL", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts keyhost")
}

async fn until_healthy(http: &reqwest::Client, internal: u16) {
    crate::helpers::eventually(Duration::from_secs(30), "keyhost did not start", || async {
        http.get(format!("http://127.0.0.1:{internal}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn an_issuance_cut_off_by_a_killed_process_resumes_after_restart() {
    let (public, internal) = (free_port(), free_port());
    // AIR Kit is slow: the first request is still in flight when the process dies.
    let upstream = start_emulator(public, |e| e.latency = Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{internal}");

    let mut child = keyhost_process(dir.path(), public, internal, &upstream.base_url);
    until_healthy(&http, internal).await;
    let client: Value = http
        .post(format!("{base}/admin/clients"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&json!({"name": "app", "scopes": ["issue"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = client["apiKey"].as_str().unwrap();
    let res = http
        .post(format!("{base}/v1/credentials/issue-on-behalf"))
        .bearer_auth(key)
        .json(&json!({"email": "u@example.com", "credentialSubject": subject()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "still waiting for AIR Kit");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let id = res.json::<Value>().await.unwrap()["issuanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(location, format!("/v1/issuances/{id}"));

    child.kill().unwrap();
    child.wait().unwrap();
    let state = RawDb::open(dir.path()).query_string(
        "SELECT state FROM issuances WHERE id = ?1",
        &[SqlValue::Text(id.clone())],
    );
    assert_eq!(state, "queued", "recorded before the upstream call");

    upstream.control.set_latency(Duration::ZERO);
    let mut child = keyhost_process(dir.path(), public, internal, &upstream.base_url);
    until_healthy(&http, internal).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let row = loop {
        let row: Value = http
            .get(format!("{base}/admin/issuances/{id}"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if row["state"] == "onchain" {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resumed: {row}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["coreClaimHash"].as_str().unwrap().len(), 64);
    // At least once: the cut-off request may or may not have reached AIR Kit.
    assert!((1..=2).contains(&upstream.control.issue_calls().len()));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_issue_once() {
    let (app, upstream, key) =
        spawn_issuing(|e| e.latency = Duration::from_millis(200), |_| {}).await;
    let body = json!({"email": "u@example.com", "credentialSubject": subject()});
    let (a, b) = tokio::join!(
        issue_with(&app, &key, body.clone(), Some("same-key")),
        issue_with(&app, &key, body.clone(), Some("same-key")),
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["issuanceId"], b.1["issuanceId"]);
    assert_eq!(upstream.control.issue_calls().len(), 1);
}

/// Issues a credential for `email` as the client `key` and returns its coreClaimHash.
async fn issued_hash(app: &TestApp, key: &str, email: &str) -> String {
    let (status, body) = issue_for(app, key, email).await;
    assert_eq!(status, 200, "{body}");
    body["coreClaimHash"].as_str().unwrap().to_owned()
}

async fn status_query(app: &TestApp, key: &str, hash: &str, email: Option<&str>) -> (u16, Value) {
    let mut query = vec![("coreClaimHash", hash)];
    if let Some(email) = email {
        query.push(("email", email));
    }
    let res = app
        .http
        .get(format!("{}/v1/credentials/status", app.internal))
        .query(&query)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn a_client_gets_the_status_of_its_own_issuances_and_must_name_the_email_for_others() {
    let (app, _upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, other_key) = app.create_client(&["issue"]).await;
    let hash = issued_hash(&app, &key, "owner@example.com").await;

    let (status, answer) = status_query(&app, &key, &hash, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["coreClaimHash"], hash.as_str());

    // keyhost does not lend another client the issuance's email...
    let (status, answer) = status_query(&app, &other_key, &hash, None).await;
    assert_eq!((status, &answer["identifier"]), (404, &json!("NOT_FOUND")));
    assert!(
        answer["message"].as_str().unwrap().contains("email="),
        "{answer}"
    );
    // ...but with the email it asks AIR Kit, which answers any Partner JWT of the partner.
    let (status, answer) = status_query(&app, &other_key, &hash, Some("owner@example.com")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn issuances_and_status_calls_count_against_the_client_rate_limit() {
    let (app, _upstream, key) = spawn_issuing(|_| {}, |c| c.tokens.client_rate_limit = 2).await;
    let (_, other_key) = app.create_client(&["issue"]).await;
    let hash = issued_hash(&app, &key, "user@example.com").await;
    assert_eq!(status_query(&app, &key, &hash, None).await.0, 200);

    let (status, answer) = status_query(&app, &key, &hash, None).await;
    assert_eq!(
        (status, &answer["identifier"]),
        (429, &json!("TOO_MANY_REQUESTS"))
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("KEYHOST_CLIENT_RATE_LIMIT"),
        "{answer}"
    );
    let (status, _) = issue_for(&app, &key, "second@example.com").await;
    assert_eq!(status, 429);
    // The quota is per client.
    let (status, answer) = status_query(&app, &other_key, &hash, Some("user@example.com")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_client_cannot_read_another_clients_issuance() {
    let (app, _upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, other_key) = app.create_client(&["issue"]).await;
    let (status, body) = issue_for(&app, &key, "u@example.com").await;
    assert_eq!(status, 200, "{body}");
    let id = body["issuanceId"].as_str().unwrap();
    let get = |key: &str| {
        app.http
            .get(format!("{}/v1/issuances/{id}", app.internal))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(get(&key).await.unwrap().status(), 200);
    let res = get(&other_key).await.unwrap();
    assert_eq!(res.status(), 404);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["identifier"], "NOT_FOUND");
}

/// Waits until `n` sleeps wait on `clock`.
pub async fn until_sleeping(clock: &ManualClock, n: usize) {
    crate::helpers::eventually(
        Duration::from_secs(10),
        "nothing waits on the clock",
        || async { clock.sleepers() >= n },
    )
    .await;
}

#[tokio::test]
async fn a_credential_not_onchain_by_the_poll_deadline_is_unconfirmed_and_can_be_resumed() {
    // One poll fits in the deadline: 10 s after AIR accepted it.
    let (app, _upstream, key) = spawn_issuing(
        |e| e.onchain_delay = Duration::from_secs(3600),
        |c| {
            c.airkit.poll_interval = Duration::from_secs(10);
            c.airkit.poll_deadline = Duration::from_secs(5);
        },
    )
    .await;
    let (status, body) = issue_for(&app, &key, "u@example.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "submitted");
    let id = body["issuanceId"].as_str().unwrap().to_owned();

    until_sleeping(&app.clock, 1).await;
    app.clock.advance(10);
    let row = until_state(&app, &id, "unconfirmed").await;
    let error = row["lastError"].as_str().unwrap();
    assert!(error.contains("resume"), "{row}");
    let res = app
        .admin_post(&format!("/admin/issuances/{id}/resume"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    until_state(&app, &id, "submitted").await;
}

#[tokio::test]
async fn an_integer_beyond_64_bits_in_the_subject_is_refused_rather_than_rounded() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let res = app
        .http
        .post(format!("{}/v1/credentials/issue-on-behalf", app.internal))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"email": "big@example.com", "credentialSubject": {"balance": 123456789012345678901234}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["identifier"], "BAD_VALUE", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("exactly"),
        "{body}"
    );
    assert!(upstream.control.issue_calls().is_empty());
    let listed: Value = app.admin_json("/admin/issuances").await;
    assert!(listed["issuances"].as_array().unwrap().is_empty());
}

/// Posts `body`, written exactly as given, with `Idempotency-Key: key`.
async fn issue_raw(app: &TestApp, key: &str, idempotency_key: &str, body: &str) -> (u16, Value) {
    let res = app
        .http
        .post(format!("{}/v1/credentials/issue-on-behalf", app.internal))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("Idempotency-Key", idempotency_key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn a_replay_with_members_in_another_order_is_the_same_request() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let first = r#"{"email": "u@example.com", "credentialSubject": {"age": 25, "isMember": true,
        "address": {"city": "Paris", "country": "FR"}, "badges": [{"name": "a", "level": 1}]}}"#;
    let (status, original) = issue_raw(&app, &key, "reordered", first).await;
    assert_eq!(status, 200, "{original}");
    // The same request: members reordered at the top, in the subject, in a nested object and
    // in an object inside an array.
    for replay in [
        r#"{"credentialSubject": {"age": 25, "isMember": true, "address": {"city": "Paris",
            "country": "FR"}, "badges": [{"name": "a", "level": 1}]}, "email": "u@example.com"}"#,
        r#"{"email": "u@example.com", "credentialSubject": {"isMember": true, "age": 25,
            "address": {"city": "Paris", "country": "FR"}, "badges": [{"name": "a", "level": 1}]}}"#,
        r#"{"email": "u@example.com", "credentialSubject": {"badges": [{"level": 1, "name": "a"}],
            "address": {"country": "FR", "city": "Paris"}, "isMember": true, "age": 25}}"#,
    ] {
        let (status, again) = issue_raw(&app, &key, "reordered", replay).await;
        assert_eq!(status, 200, "{replay}: {again}");
        assert_eq!(again["issuanceId"], original["issuanceId"], "{replay}");
    }
    // Arrays are ordered, and values count: those are other requests.
    for other in [
        r#"{"email": "u@example.com", "credentialSubject": {"age": 25, "isMember": true,
            "address": {"city": "Paris", "country": "FR"}, "badges": [{"name": "a", "level": 2}]}}"#,
        r#"{"email": "u@example.com", "credentialSubject": {"age": 25, "isMember": true,
            "address": {"city": "Lyon", "country": "FR"}, "badges": [{"name": "a", "level": 1}]}}"#,
    ] {
        let (status, conflict) = issue_raw(&app, &key, "reordered", other).await;
        assert_eq!(status, 409, "{other}: {conflict}");
        assert_eq!(conflict["identifier"], "CONFLICT");
    }
    assert_eq!(upstream.control.issue_calls().len(), 1, "issued once");
}

#[tokio::test]
async fn a_replay_of_a_request_recorded_before_the_hash_was_canonical_still_matches() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let body = r#"{"email": "u@example.com", "credentialSubject": {"isMember": true, "age": 25}}"#;
    let (status, original) = issue_raw(&app, &key, "before-upgrade", body).await;
    assert_eq!(status, 200, "{original}");
    let id = original["issuanceId"].as_str().unwrap().to_owned();
    // The row as an earlier keyhost wrote it: the hash of the request as written, and a MAC
    // over that.
    let written = json!({
        "email": "u@example.com", "issuerDid": ISSUER, "credentialId": PROGRAM,
        "credentialSubject": {"isMember": true, "age": 25}, "onDuplicate": "revoke",
    });
    let legacy = hex::encode(keyhost::auth::sha256(written.to_string().as_bytes()));
    let auth = app.state.row_auth.clone();
    let mut row = app
        .state
        .store
        .blocking_read(|tx| keyhost::store::issuances::get(tx, &id))
        .unwrap()
        .unwrap();
    assert_ne!(row.request_hash, legacy, "new rows hold the canonical hash");
    row.request_hash = legacy.clone();
    let mac = auth.issuance_mac(&row);
    let changed = RawDb::open(app.dir.path()).execute(
        "UPDATE issuances SET request_hash = ?2, mac = ?3 WHERE id = ?1",
        &[
            SqlValue::Text(id.clone()),
            SqlValue::Text(legacy),
            SqlValue::Blob(mac),
        ],
    );
    assert_eq!(changed, 1);

    let (status, again) = issue_raw(&app, &key, "before-upgrade", body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["issuanceId"], id.as_str());
    let (status, _) = issue_raw(
        &app,
        &key,
        "before-upgrade",
        r#"{"email": "u@example.com", "credentialSubject": {"isMember": false, "age": 25}}"#,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(upstream.control.issue_calls().len(), 1, "issued once");
}

/// AIR Kit answering from a script: each issue request takes the next scripted answer (then
/// accepts), each status poll answers `WAIT_ONCHAIN`; every call is logged with the time on
/// keyhost's clock.
struct Scripted {
    clock: Arc<ManualClock>,
    answers: Mutex<VecDeque<Reply>>,
    issues: Mutex<Vec<i64>>,
    polls: Mutex<Vec<i64>>,
}

impl Scripted {
    fn new(clock: Arc<ManualClock>, answers: impl IntoIterator<Item = Reply>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            answers: Mutex::new(answers.into_iter().collect()),
            issues: Mutex::new(Vec::new()),
            polls: Mutex::new(Vec::new()),
        })
    }

    /// When keyhost asked to issue.
    fn issues(&self) -> Vec<i64> {
        self.issues.lock().unwrap().clone()
    }

    /// When keyhost polled the status.
    fn polls(&self) -> Vec<i64> {
        self.polls.lock().unwrap().clone()
    }
}

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Reply {
    Reply {
        status,
        body,
        retry_after: retry_after.map(Duration::from_secs),
        date: None,
    }
}

impl AirKit for Scripted {
    fn issue_on_behalf<'a>(
        &'a self,
        _token: &'a str,
        _body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, TransportError>> {
        self.issues.lock().unwrap().push(self.clock.now());
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or_else(|| {
            reply(
                200,
                json!({"coreClaimHash": "c0ffee", "userUuid": "u", "credentialId": PROGRAM}),
                None,
            )
        });
        Box::pin(async move { Ok(answer) })
    }

    fn status<'a>(
        &'a self,
        _token: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Reply, TransportError>> {
        self.polls.lock().unwrap().push(self.clock.now());
        let answer = reply(
            200,
            json!({"coreClaimHash": hash, "vcStatus": "WAIT_ONCHAIN"}),
            None,
        );
        Box::pin(async move { Ok(answer) })
    }
}

/// An issuance service of `app` (its store, keys and clock) sending to `airkit`.
fn service_of(
    app: &TestApp,
    airkit: Arc<Scripted>,
    tweak: impl FnOnce(&mut IssuanceSettings),
) -> Arc<IssuanceService> {
    let mut settings = app.state.issuance.settings().clone();
    settings.issuer_did = Some(ISSUER.into());
    settings.credential_id = Some(PROGRAM.into());
    settings.poll_interval = Duration::from_secs(3600);
    settings.poll_deadline = Duration::from_secs(3600);
    tweak(&mut settings);
    IssuanceService::new(
        app.state.store.clone(),
        app.state.row_auth.clone(),
        keyhost::issuance::Upstream {
            airkit: Some(airkit),
            skew: app.state.clock_skew.clone(),
            alg: app.state.config.tokens.default_alg,
        },
        app.state.minter.clone(),
        app.state.clock.clone(),
        Arc::new(keyhost::metrics::Metrics::default()),
        settings,
    )
}

fn new_issuance() -> NewIssuance {
    NewIssuance {
        source: IssuanceSource::Client("scripted".into()),
        idempotency_key: None,
        email: "u@example.com".into(),
        issuer_did: None,
        credential_id: None,
        credential_subject: subject(),
        on_duplicate: None,
    }
}

/// Lets the tasks that an advance of the clock woke run (the test runtime has one thread).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits until `airkit` was asked to issue `n` times and the worker waits again.
async fn until_issued(app: &TestApp, airkit: &Scripted, n: usize) {
    crate::helpers::eventually(Duration::from_secs(10), "no further attempt", || async {
        airkit.issues().len() >= n && app.clock.sleepers() >= 1
    })
    .await;
    assert_eq!(airkit.issues().len(), n);
}

#[tokio::test]
async fn a_retry_after_from_air_kit_is_waited_for_on_keyhosts_clock() {
    let app = crate::helpers::spawn_app().await;
    let airkit = Scripted::new(
        app.clock.clone(),
        [reply(429, json!({"error": 429}), Some(120))],
    );
    let service = service_of(&app, airkit.clone(), |s| {
        s.backoff = Duration::from_secs(1);
        s.backoff_max = Duration::from_secs(2);
    });
    let t0 = app.now();
    let (issuance, _) = service.submit(new_issuance()).await.unwrap();
    until_issued(&app, &airkit, 1).await;
    let waiting = service.get(&issuance.id).await.unwrap().unwrap();
    assert_eq!(waiting.state, IssuanceState::Queued);
    assert_eq!(waiting.last_status, Some(429));
    assert_eq!(
        waiting.next_attempt_at,
        Some(t0 + 120),
        "Retry-After, not the backoff"
    );

    app.clock.advance(119);
    settle().await;
    assert_eq!(airkit.issues(), [t0], "not retried before Retry-After");
    app.clock.advance(1);
    let done = service
        .wait(&issuance.id, WaitFor::Answer, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, IssuanceState::Submitted);
    assert_eq!(done.attempts, 2);
    assert_eq!(airkit.issues(), [t0, t0 + 120]);
}

#[tokio::test]
async fn retries_back_off_exponentially_with_jitter_on_keyhosts_clock() {
    let app = crate::helpers::spawn_app().await;
    let failure = || reply(500, json!({"error": 500}), None);
    let airkit = Scripted::new(app.clock.clone(), [failure(), failure(), failure()]);
    let service = service_of(&app, airkit.clone(), |s| {
        s.backoff = Duration::from_secs(10);
        s.backoff_max = Duration::from_secs(15);
        s.max_attempts = 6;
    });
    let t0 = app.now();
    let (issuance, _) = service.submit(new_issuance()).await.unwrap();
    // After each failure: 10 s doubling, capped at 15 s, half of it jittered.
    let mut at = t0;
    for (attempt, (low, high)) in [(5, 10), (7, 15), (7, 15)].into_iter().enumerate() {
        until_issued(&app, &airkit, attempt + 1).await;
        let waiting = service.get(&issuance.id).await.unwrap().unwrap();
        let delay = waiting.next_attempt_at.unwrap() - at;
        assert!(
            (low..=high).contains(&delay),
            "attempt {attempt}: {delay} s"
        );
        app.clock.advance(low - 1);
        settle().await;
        assert_eq!(airkit.issues().len(), attempt + 1, "retried too early");
        app.clock.advance(high - low + 1);
        at += high;
    }
    let done = service
        .wait(&issuance.id, WaitFor::Answer, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, IssuanceState::Submitted);
    assert_eq!(done.attempts, 4);
    assert_eq!(airkit.issues(), [t0, t0 + 10, t0 + 25, t0 + 40]);
}

#[tokio::test]
async fn status_polls_follow_the_schedule_on_keyhosts_clock_and_stop_at_the_deadline() {
    let app = crate::helpers::spawn_app().await;
    let airkit = Scripted::new(app.clock.clone(), []);
    // Polls 10 s, 20 s and 30 s (capped) apart: three fit in a minute.
    let service = service_of(&app, airkit.clone(), |s| {
        s.poll_interval = Duration::from_secs(10);
        s.poll_deadline = Duration::from_secs(60);
    });
    let t0 = app.now();
    let (issuance, _) = service.submit(new_issuance()).await.unwrap();
    for (n, gap) in [10, 20, 30].into_iter().enumerate() {
        crate::helpers::eventually(Duration::from_secs(10), "no poll scheduled", || async {
            airkit.polls().len() == n && app.clock.sleepers() >= 1
        })
        .await;
        app.clock.advance(gap - 1);
        settle().await;
        assert_eq!(airkit.polls().len(), n, "polled too early");
        app.clock.advance(1);
    }
    let done = service
        .wait(&issuance.id, WaitFor::Onchain, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, IssuanceState::Unconfirmed);
    assert_eq!(done.vc_status.as_deref(), Some("WAIT_ONCHAIN"));
    assert_eq!(airkit.polls(), [t0 + 10, t0 + 30, t0 + 60]);
    assert_eq!(app.clock.sleepers(), 0, "no further poll");

    // Resumed, it is followed again from the first interval, and the resume is audited.
    let resumed = service.resume(&issuance.id, "test-admin").await.unwrap();
    assert_eq!(resumed.unwrap().state, IssuanceState::Submitted);
    until_sleeping(&app.clock, 1).await;
    app.clock.advance(10);
    crate::helpers::eventually(Duration::from_secs(10), "not polled again", || async {
        airkit.polls().len() == 4
    })
    .await;
    let audit: Value = app.admin_json("/admin/audit").await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "issuance.resume")
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["subject"], issuance.id.as_str(), "{audit}");
    assert_eq!(entry["actor"], "test-admin");
}

#[tokio::test]
async fn an_issuance_still_retrying_when_the_wait_ends_is_answered_202_on_keyhosts_clock() {
    let (app, upstream, key) = spawn_issuing(
        |e| e.fail_rate_500 = 1.0,
        |c| {
            c.airkit.wait = Duration::from_secs(30);
            c.airkit.backoff = Duration::from_secs(3600);
            c.airkit.backoff_max = Duration::from_secs(3600);
        },
    )
    .await;
    let request = {
        let (http, url) = (app.http.clone(), app.internal.clone());
        tokio::spawn(async move {
            let res = http
                .post(format!("{url}/v1/credentials/issue-on-behalf"))
                .bearer_auth(key)
                .json(&json!({"email": "u@example.com", "credentialSubject": subject()}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        })
    };
    // The request waits for an answer while the issuance waits for its next attempt.
    until_sleeping(&app.clock, 2).await;
    assert_eq!(upstream.control.status_counts().get(&500), Some(&1));
    app.clock.advance(29);
    settle().await;
    assert!(
        !request.is_finished(),
        "answered before KEYHOST_AIRKIT_WAIT"
    );
    app.clock.advance(1);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the wait ended on keyhost's clock")
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "queued");
    assert_eq!(body["attempts"], 1);
}
