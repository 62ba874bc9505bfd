//! keyhost's clock checked against independent ones: the `Date` of AIR Kit's answers (metric,
//! log, readiness) and of the JWKS server's (`keyhost doctor`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::header::DATE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use keyhost::clock::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{start, test_config};

/// An HTTP server on loopback whose answers carry a `Date` `offset` seconds from the real time.
async fn skewed_server(offset: i64, body: Value) -> String {
    let answer = move || {
        let body = body.clone();
        async move {
            let date = SystemTime::now()
                .checked_add(Duration::from_secs(offset.max(0) as u64))
                .and_then(|t| t.checked_sub(Duration::from_secs((-offset).max(0) as u64)))
                .unwrap();
            ([(DATE, httpdate::fmt_http_date(date))], axum::Json(body)).into_response()
        }
    };
    let router = Router::new()
        .route("/v1/credentials/issue-on-behalf", post(answer.clone()))
        .route("/.well-known/jwks.json", get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test]
async fn a_clock_ten_minutes_off_air_kits_is_measured_reported_and_makes_keyhost_not_ready() {
    let air = skewed_server(
        600,
        json!({"coreClaimHash": "0xabc", "userUuid": "u", "isDuplicate": false}),
    )
    .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    config.airkit.base_url = Some(format!("{air}/v1"));
    config.airkit.issuer_did = Some("did:air:id:test:x".into());
    config.airkit.credential_id = Some("program".into());
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let ready = app
        .http
        .get(format!("{}/readyz", app.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "no independent clock seen yet");
    let (_, key) = app.create_client(&["issue"]).await;
    let res = app
        .http
        .post(format!("{}/v1/credentials/issue-on-behalf", app.internal))
        .bearer_auth(&key)
        .json(&json!({"email": "u@example.com", "credentialSubject": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let metrics = app.metrics().await;
    let skew: i64 = metrics
        .lines()
        .find(|l| l.starts_with("keyhost_clock_skew_seconds"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    // keyhost's (manual) clock stood still since the start: a few more seconds behind.
    let behind = keyhost::clock::Clock::now(&keyhost::clock::SystemClock) - app.now();
    assert!(
        (-602 - behind..=-598).contains(&skew),
        "{skew} ({behind} s)"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("behind") && message.contains("NTP"),
        "{message}"
    );
}

#[tokio::test]
async fn doctor_says_when_this_machines_clock_differs_from_the_jwks_servers() {
    let keys = json!({"keys": [{"kid": "k", "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    for (offset, verdict) in [(0, "Pass"), (-900, "Warn")] {
        let base = skewed_server(offset, keys.clone()).await;
        let findings = keyhost::doctor::run(&keyhost::doctor::DoctorArgs {
            jwks_url: format!("{base}/.well-known/jwks.json"),
            token: None,
            partner_id: None,
            scope: "issue".into(),
            ca_file: None,
            json: false,
            watch: None,
            watch_timeout: std::time::Duration::from_secs(600),
        })
        .await
        .unwrap();
        let clock = findings.iter().find(|f| f.check == "clock").unwrap();
        assert_eq!(format!("{:?}", clock.verdict), verdict, "{clock:?}");
        if offset != 0 {
            assert!(clock.detail.contains("ahead of"), "{clock:?}");
        }
    }
}
