//! The partner's JWKS as the emulator fetches it: cached for its `max-age`, shared between
//! concurrent requests, over HTTPS with `--ca-file`, and bounded like AIR Kit's (no redirect
//! followed, at most 1 MiB read).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keyhost::clock::ManualClock;
use keyhost::emulator::EmulatorArgs;
use reqwest::StatusCode;
use serde_json::json;

use super::harness::{
    Emu, KID_NOT_FOUND_HINT, args_for, claims, emergency_rotation, env, issue_body, kid_of, relay,
    unsigned,
};
use crate::helpers::{PARTNER_ID, endless_server, spawn_app_at_wall_clock, start, test_config};

/// A token that passes the checks made before the JWKS is fetched (shape, `typ`, `kid`).
fn token_needing_the_jwks() -> String {
    unsigned(
        json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
        claims("u@example.com"),
        b"not a signature",
    )
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
            "JWKS endpoint unreachable: http://{addr}/jwks.json answered HTTP 302 redirecting \
             to {}",
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
