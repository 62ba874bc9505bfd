//! `keyhost doctor` names every cause of AIR Kit's troubleshooting list it finds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::routing::get;
use keyhost::clock::ManualClock;
use keyhost::doctor::{self, DoctorArgs, Finding, Verdict};
use serde_json::{Value, json};

use crate::helpers::{PARTNER_ID, RssWatch, TestApp, endless_server, start, test_config};

fn args(app: &TestApp, token: Option<String>) -> DoctorArgs {
    DoctorArgs {
        jwks_url: format!("{}/.well-known/jwks.json", app.public),
        token,
        partner_id: Some(PARTNER_ID.into()),
        scope: "issue".into(),
        ca_file: None,
        json: false,
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
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
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
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
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
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

// ---------------------------------------------------------------------------------------------
// Bounded fetches: the doctor follows no redirect and reads at most 1 MiB of JWKS.

/// A valid one-key JWKS (the public half of a P-256 key).
fn one_key_jwks() -> Value {
    json!({"keys": [{
        "kid": "k1", "use": "sig", "alg": "ES256", "kty": "EC", "crv": "P-256",
        "x": "f3aAs-YbmnFrS16wbD-YbiU4h_SW6dZ1KNI1Q8C9JLo", "y": "7NUjH7-5ViK8tszCRv4ECSYwdw4UKLOzpKqkl_eQU4U"
    }]})
}

/// Serves `router` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn url_args(jwks_url: String) -> DoctorArgs {
    DoctorArgs {
        jwks_url,
        token: None,
        partner_id: None,
        scope: "issue".into(),
        ca_file: None,
        json: false,
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
    }
}

fn finding<'a>(findings: &'a [Finding], check: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no finding {check}: {findings:?}"))
}

/// A server whose `/jwks.json` serves a valid JWKS and counts the requests for it.
async fn counted_jwks() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let base = serve(Router::new().route(
        "/jwks.json",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { axum::Json(one_key_jwks()) }
        }),
    ))
    .await;
    (base, hits)
}

#[tokio::test]
async fn a_redirecting_jwks_url_fails_naming_each_hop_and_the_target_is_never_requested() {
    let (target, hits) = counted_jwks().await;
    let target_url = format!("{target}/jwks.json");
    let location = target_url.clone();
    let origin = serve(
        Router::new()
            .route(
                "/jwks.json",
                get(move || {
                    let location = location.clone();
                    async move { (StatusCode::FOUND, [(LOCATION, location)]) }
                }),
            )
            .route(
                "/relative.json",
                get(|| async { (StatusCode::MOVED_PERMANENTLY, [(LOCATION, "/jwks.json")]) }),
            ),
    )
    .await;

    let given = format!("{origin}/jwks.json");
    let findings = doctor::run(&url_args(given.clone())).await.unwrap();
    let redirect = finding(&findings, "jwks.redirect");
    assert_eq!(redirect.verdict, Verdict::Fail, "{redirect:?}");
    assert!(
        redirect.detail.contains(&given)
            && redirect.detail.contains("302")
            && redirect.detail.contains(&format!("Location: {target_url}"))
            && redirect.detail.contains("not fetched"),
        "{}",
        redirect.detail
    );
    assert!(redirect.fix.unwrap().contains("redirect"));
    // The verdict on HTTPS is about the URL given, the only one requested.
    assert!(finding(&findings, "jwks.https").detail.contains(&given));
    assert!(
        !findings.iter().any(|f| f.check == "jwks.json"),
        "nothing was read past the redirect: {findings:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the target was requested");

    // A relative Location is named as sent and resolved against the URL given.
    let findings = doctor::run(&url_args(format!("{origin}/relative.json")))
        .await
        .unwrap();
    let redirect = finding(&findings, "jwks.redirect");
    assert_eq!(redirect.verdict, Verdict::Fail);
    assert!(
        redirect.detail.contains("301")
            && redirect
                .detail
                .contains(&format!("Location: /jwks.json (= {origin}/jwks.json)")),
        "{}",
        redirect.detail
    );

    // A token given with a redirecting JWKS is not checked against anything.
    let mut args = url_args(given);
    args.token = Some("a.b.c".into());
    let findings = doctor::run(&args).await.unwrap();
    assert_eq!(verdict(&findings, "token"), Verdict::Warn);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_to_keyhosts_internal_listener_is_not_followed() {
    // The redirect the security review found: from a public URL to the admin port.
    let app = realtime_app().await;
    let internal = format!("{}/admin/keys", app.internal);
    let location = internal.clone();
    let origin = serve(Router::new().route(
        "/jwks.json",
        get(move || {
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]) }
        }),
    ))
    .await;
    let findings = doctor::run(&url_args(format!("{origin}/jwks.json")))
        .await
        .unwrap();
    let redirect = finding(&findings, "jwks.redirect");
    assert_eq!(redirect.verdict, Verdict::Fail);
    assert!(redirect.detail.contains(&internal), "{}", redirect.detail);
    assert!(!findings.iter().any(|f| f.check == "jwks.json"));
}

#[tokio::test]
async fn an_endless_jwks_body_ends_the_check_at_the_cap_quickly_and_memory_stays_bounded() {
    let server = endless_server(r#"{"keys":["#, r#"{"kty":"EC"},"#).await;
    let watch = RssWatch::start();
    let started = Instant::now();
    let findings = tokio::time::timeout(
        Duration::from_secs(5),
        doctor::run(&url_args(format!("{}/jwks.json", server.url))),
    )
    .await
    .expect("the doctor stops at the cap, not at its 10 s timeout")
    .unwrap();
    let elapsed = started.elapsed();
    let growth = watch.stop();
    let size = finding(&findings, "jwks.size");
    assert_eq!(size.verdict, Verdict::Fail, "{size:?}");
    assert!(
        size.detail
            .contains("exceeds the 1 MiB (1048576 bytes) cap"),
        "{}",
        size.detail
    );
    assert!(size.fix.unwrap().contains("a few"));
    assert!(!findings.iter().any(|f| f.check == "jwks.json"));
    // What the server managed to write: the capped read plus what the sockets buffer.
    let served = server.served.load(Ordering::SeqCst);
    assert!(served < 32 << 20, "{served} bytes served");
    if let Some(growth) = growth {
        assert!(growth < 64 << 20, "resident memory grew by {growth} bytes");
    }
    eprintln!(
        "endless JWKS: stopped after {elapsed:?}, {served} bytes served, RSS growth {growth:?} \
         bytes"
    );
}

#[tokio::test]
async fn a_jwks_announcing_more_than_the_cap_is_refused_unread() {
    // A valid JWKS padded with whitespace to 2 MiB: the size alone is what is refused.
    let mut body = one_key_jwks().to_string().into_bytes();
    body.resize(2 << 20, b' ');
    let base = serve(Router::new().route(
        "/jwks.json",
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    ))
    .await;
    let findings = doctor::run(&url_args(format!("{base}/jwks.json")))
        .await
        .unwrap();
    let size = finding(&findings, "jwks.size");
    assert_eq!(size.verdict, Verdict::Fail, "{size:?}");
    assert!(
        size.detail
            .contains("announces 2097152 bytes (Content-Length), over the 1 MiB"),
        "{}",
        size.detail
    );
    assert!(!findings.iter().any(|f| f.check == "jwks.json"));
}

#[tokio::test]
async fn a_jwks_of_exactly_the_cap_is_still_read() {
    let mut body = one_key_jwks().to_string().into_bytes();
    body.resize(1 << 20, b' ');
    let base = serve(Router::new().route(
        "/jwks.json",
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    ))
    .await;
    let findings = doctor::run(&url_args(format!("{base}/jwks.json")))
        .await
        .unwrap();
    assert_eq!(verdict(&findings, "jwks.json"), Verdict::Pass);
    assert_eq!(verdict(&findings, "jwks.key[k1]"), Verdict::Pass);
    assert!(!findings.iter().any(|f| f.check == "jwks.size"));
}

#[tokio::test]
async fn watch_passes_once_the_url_lists_the_kid_and_fails_naming_the_cache_when_it_does_not() {
    let app = realtime_app().await;
    let pending = app.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let findings = doctor::run(&DoctorArgs {
        watch: Some(pending.clone()),
        ..args(&app, None)
    })
    .await
    .unwrap();
    let watch = finding(&findings, "watch");
    assert_eq!(watch.verdict, Verdict::Pass, "{watch:?}");
    assert!(watch.detail.contains(&pending), "{watch:?}");

    let findings = doctor::run(&DoctorArgs {
        watch: Some("a-kid-nobody-published".into()),
        watch_timeout: Duration::from_secs(1),
        ..args(&app, None)
    })
    .await
    .unwrap();
    let watch = finding(&findings, "watch");
    assert_eq!(watch.verdict, Verdict::Fail, "{watch:?}");
    assert!(watch.fix.unwrap().contains("CDN"), "{watch:?}");
    assert!(!doctor::passed(&findings));
}
