//! `keyhost doctor` names every cause of AIR Kit's troubleshooting list it finds.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use keyhost::clock::ManualClock;
use keyhost::doctor::{self, DoctorArgs, Finding, Verdict};
use serde_json::{Value, json};

use crate::helpers::{PARTNER_ID, TestApp, start, test_config};

fn args(app: &TestApp, token: Option<String>) -> DoctorArgs {
    DoctorArgs {
        jwks_url: format!("{}/.well-known/jwks.json", app.public),
        token,
        partner_id: Some(PARTNER_ID.into()),
        scope: "issue".into(),
        ca_file: None,
        json: false,
    }
}

fn verdict(findings: &[Finding], check: &str) -> Verdict {
    findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no finding {check}: {findings:?}"))
        .verdict
}

/// A keyhost whose clock is real time, so that its tokens are valid now.
async fn realtime_app() -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(dir.path());
    start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap()
}

async fn token(app: &TestApp, alg: &str) -> String {
    let (_, key) = app.create_client(&["issue"]).await;
    app.mint_ok(&key, json!({"email": "u@example.com", "alg": alg}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_keyhost_jwks_and_its_tokens_pass_every_check() {
    let app = realtime_app().await;
    for alg in ["ES256", "RS256"] {
        let findings = doctor::run(&args(&app, Some(token(&app, alg).await)))
            .await
            .unwrap();
        let failed: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(verdict(&findings, "token.signature"), Verdict::Pass);
        assert_eq!(
            verdict(&findings, "jwks.https"),
            Verdict::Warn,
            "plain HTTP on loopback"
        );
    }
}

#[tokio::test]
async fn an_expired_token_and_an_unpublished_kid_are_named_with_their_fixes() {
    let app = realtime_app().await;
    // A keyhost whose clock is an hour behind mints tokens that have already expired.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let late = start(
        dir.clone(),
        ManualClock::new(keyhost::clock::Clock::now(&keyhost::clock::SystemClock) - 3600),
        test_config(dir.path()),
    )
    .await
    .unwrap();
    let stale = token(&late, "ES256").await;
    let findings = doctor::run(&args(&late, Some(stale))).await.unwrap();
    assert_eq!(verdict(&findings, "token.exp"), Verdict::Fail);
    let fix = findings
        .iter()
        .find(|f| f.check == "token.exp")
        .unwrap()
        .fix
        .unwrap();
    assert!(fix.contains("NTP"));

    // A token from another key set: its kid is not in this JWKS.
    let foreign = token(&late, "ES256").await;
    let findings = doctor::run(&args(&app, Some(foreign))).await.unwrap();
    assert_eq!(verdict(&findings, "token.kid"), Verdict::Fail);
    let fix = findings
        .iter()
        .find(|f| f.check == "token.kid")
        .unwrap()
        .fix
        .unwrap();
    assert!(fix.contains("publish the new key"));

    let findings = doctor::run(&args(&app, Some("not.a.jwt".into())))
        .await
        .unwrap();
    assert_eq!(verdict(&findings, "token.format"), Verdict::Fail);
}

#[tokio::test]
async fn a_jwks_that_publishes_private_key_material_fails_loudly() {
    let leaky = json!({"keys": [{
        "kid": "k1", "use": "sig", "alg": "ES256", "kty": "EC", "crv": "P-256",
        "x": "f3aAs-YbmnFrS16wbD-YbiU4h_SW6dZ1KNI1Q8C9JLo", "y": "7NUjH7-5ViK8tszCRv4ECSYwdw4UKLOzpKqkl_eQU4U",
        "d": "this-must-never-be-here"
    }]});
    let router = Router::new().route(
        "/jwks.json",
        get(move || {
            let body = leaky.clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let findings = doctor::run(&DoctorArgs {
        jwks_url: format!("http://{addr}/jwks.json"),
        token: None,
        partner_id: None,
        scope: "issue".into(),
        ca_file: None,
        json: false,
    })
    .await
    .unwrap();
    let f = findings.iter().find(|f| f.check == "jwks.key[k1]").unwrap();
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(f.detail.contains("d"));
    assert!(f.fix.unwrap().contains("rotate"));
    assert_eq!(verdict(&findings, "jwks.cache"), Verdict::Warn);
}

#[tokio::test]
async fn an_unreachable_jwks_is_reported_not_crashed_on() {
    let port = crate::issuance::free_port();
    let findings = doctor::run(&DoctorArgs {
        jwks_url: format!("https://127.0.0.1:{port}/.well-known/jwks.json"),
        token: Some("a.b.c".into()),
        partner_id: None,
        scope: "issue".into(),
        ca_file: None,
        json: false,
    })
    .await
    .unwrap();
    assert_eq!(verdict(&findings, "jwks.reachable"), Verdict::Fail);
    assert_eq!(verdict(&findings, "token"), Verdict::Warn);
}

#[tokio::test]
async fn the_doctor_command_exits_non_zero_when_air_kit_would_reject_the_setup() {
    let app = realtime_app().await;
    let good = token(&app, "ES256").await;
    let url = format!("{}/.well-known/jwks.json", app.public);
    let run = |token: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_keyhost"))
                .args([
                    "doctor",
                    "--jwks-url",
                    &url,
                    "--token",
                    &token,
                    "--partner-id",
                    PARTNER_ID,
                    "--json",
                ])
                .output()
                .unwrap()
        })
    };
    let out = run(good.clone()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["findings"].as_array().unwrap().len() > 8);
    let mut tampered = good;
    tampered.push('A');
    let out = run(tampered).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"fail\""));
}
