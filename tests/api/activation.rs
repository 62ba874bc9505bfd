//! Activation on evidence (`KEYHOST_PUBLIC_JWKS_URL`): a pending key that has served its lead
//! signs only once the public URL, as verifiers reach it, lists it. A cache in front that holds
//! an old copy postpones the rotation (the current key keeps signing, the admin API says why,
//! the metric and the log say so) instead of breaking it; the lead stays a floor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

const LEAD: i64 = 3600;

/// What the stand-in CDN serves: a copy it cached, or the origin's JWKS as it is now.
#[derive(Clone)]
enum Cdn {
    Stale(String),
    Live(String),
}

type CdnState = Arc<Mutex<Cdn>>;

async fn serve(State(cdn): State<CdnState>) -> axum::response::Response {
    let mode = cdn.lock().unwrap().clone();
    let body = match mode {
        Cdn::Stale(body) => body,
        Cdn::Live(origin) => reqwest::get(origin).await.unwrap().text().await.unwrap(),
    };
    ([("content-type", "application/json")], body).into_response()
}

use axum::response::IntoResponse;

/// A stand-in CDN on loopback; its URL.
async fn cdn(state: CdnState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", get(serve))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn pending(app: &TestApp) -> Value {
    app.keys()
        .await
        .into_iter()
        .find(|k| k["state"] == "pending" && k["alg"] == "ES256")
        .expect("a pending ES256 key")
}

async fn blocked_metric(app: &TestApp) -> String {
    app.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("keyhost_activation_blocked{alg=\"ES256\"}"))
        .unwrap_or_default()
        .to_owned()
}

async fn signing_kid(app: &TestApp, key: &str) -> String {
    let token = app
        .mint_ok(key, json!({"email": "a@example.com", "alg": "ES256"}))
        .await;
    let header = token["token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_cdn_serving_a_stale_jwks_postpones_activation_until_it_lists_the_new_key() {
    let state: CdnState = Arc::new(Mutex::new(Cdn::Stale(String::new())));
    let url = cdn(state.clone()).await;
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        c.keys.public_jwks_url = Some(url.clone());
    })
    .await;
    // The CDN cached the key set before the rotation, and keeps serving it.
    let before = app.jwks().await.to_string();
    *state.lock().unwrap() = Cdn::Stale(before);
    let (_, key) = app.create_client(&["issue"]).await;
    let old = signing_kid(&app, &key).await;
    app.rotate("ES256", false).await;
    let new = pending(&app).await["kid"].as_str().unwrap().to_owned();

    // The lead has been served, but the public URL does not list the key: it does not sign.
    app.advance(LEAD + 1).await;
    let waiting = pending(&app).await;
    assert_eq!(waiting["kid"], new.as_str());
    let why = &waiting["activationBlocked"];
    assert!(
        why["reason"].as_str().unwrap().contains("does not list it"),
        "{waiting}"
    );
    assert!(why["reason"].as_str().unwrap().contains(&url), "{why}");
    assert!(
        why["since"].is_string() && why["retryAt"].is_string(),
        "{why}"
    );
    assert_eq!(
        signing_kid(&app, &key).await,
        old,
        "the current key keeps signing"
    );
    assert!(
        blocked_metric(&app).await.ends_with(" 1"),
        "{}",
        blocked_metric(&app).await
    );
    let audit = app.admin_json("/admin/audit?limit=1000").await.to_string();
    assert!(audit.contains("key.activation_blocked"), "{audit}");

    // Still blocked a while later: a stale cache never lets it through.
    app.advance(120).await;
    assert!(pending(&app).await["activationBlocked"].is_object());

    // The CDN catches up: the key activates at the next look, and the block is cleared.
    *state.lock().unwrap() = Cdn::Live(format!("{}/.well-known/jwks.json", app.public));
    app.advance(30).await;
    assert!(
        app.kids_in("active").await.contains(&new),
        "{:?}",
        app.keys().await
    );
    assert_eq!(signing_kid(&app, &key).await, new);
    assert!(
        blocked_metric(&app).await.ends_with(" 0"),
        "{}",
        blocked_metric(&app).await
    );
    let listed = app.keys().await;
    assert!(
        listed.iter().all(|k| k["activationBlocked"].is_null()),
        "{listed:?}"
    );
}

#[tokio::test]
async fn evidence_never_activates_a_key_before_its_lead_has_been_served() {
    let state: CdnState = Arc::new(Mutex::new(Cdn::Stale(String::new())));
    let url = cdn(state.clone()).await;
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        c.keys.public_jwks_url = Some(url);
    })
    .await;
    *state.lock().unwrap() = Cdn::Live(format!("{}/.well-known/jwks.json", app.public));
    app.rotate("ES256", false).await;
    let new = pending(&app).await["kid"].as_str().unwrap().to_owned();
    // Listed at once, but the lead is a floor.
    app.advance(LEAD - 60).await;
    let still = pending(&app).await;
    assert_eq!(still["kid"], new.as_str());
    assert!(still["activationBlocked"].is_null(), "{still}");
    app.advance(61).await;
    assert!(app.kids_in("active").await.contains(&new));
}

#[tokio::test]
async fn an_unreachable_public_url_postpones_activation_and_says_why() {
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        // Nothing listens on port 9 of loopback.
        c.keys.public_jwks_url = Some("http://127.0.0.1:9/.well-known/jwks.json".into());
    })
    .await;
    app.rotate("ES256", false).await;
    app.advance(LEAD + 1).await;
    let waiting = pending(&app).await;
    let reason = waiting["activationBlocked"]["reason"].as_str().unwrap();
    assert!(reason.contains("could not be read"), "{reason}");
}
