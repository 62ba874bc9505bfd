//! keyhost's AIR Kit client against hostile "AIR Kit" servers: it reads at most 1 MiB of an
//! answer, streaming it, follows no redirect, and an issuance that met an oversized answer is
//! parked, not retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::routing::{get, post};
use keyhost::airkit::{AirKit, HttpAirKit, TransportError};
use keyhost::clock::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{RssWatch, endless_server, start};
use crate::issuance::{free_port, issue_for, issuing_config};

/// Serves `router` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_endless_answer_is_refused_at_the_cap_long_before_the_timeout() {
    let server = endless_server(r#"{"coreClaimHash":""#, "0123456789abcdef").await;
    let client = HttpAirKit::new(&format!("{}/v1", server.url), Duration::from_secs(10)).unwrap();
    let watch = RssWatch::start();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        client.issue_on_behalf("a.partner.jwt", &json!({"credentialSubject": {}})),
    )
    .await
    .expect("the client stops at the cap, not at its 10 s timeout");
    let elapsed = started.elapsed();
    let growth = watch.stop();
    let err = outcome.unwrap_err();
    assert!(
        matches!(err, TransportError::TooLarge { status: 200, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("exceeds the 1 MiB (1048576 bytes) cap")
            && message.contains("KEYHOST_AIRKIT_BASE_URL"),
        "{message}"
    );
    let served = server.served.load(Ordering::SeqCst);
    assert!(served < 32 << 20, "{served} bytes served");
    if let Some(growth) = growth {
        assert!(growth < 64 << 20, "resident memory grew by {growth} bytes");
    }
    eprintln!(
        "endless AIR Kit answer: refused after {elapsed:?}, {served} bytes served, RSS growth \
         {growth:?} bytes"
    );
}

#[tokio::test]
async fn an_answer_announcing_more_than_the_cap_is_refused_unread() {
    let base = serve(Router::new().route(
        "/v1/credentials/status",
        get(|| async {
            let mut body = br#"{"vcStatus":"ONCHAIN"}"#.to_vec();
            body.resize(2 << 20, b' ');
            ([(CONTENT_TYPE, "application/json")], body)
        }),
    ))
    .await;
    let client = HttpAirKit::new(&format!("{base}/v1"), Duration::from_secs(10)).unwrap();
    let err = client.status("a.partner.jwt", "0xhash").await.unwrap_err();
    assert!(
        matches!(err, TransportError::TooLarge { status: 200, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("announces 2097152 bytes (Content-Length)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_answer_of_exactly_the_cap_is_read() {
    let base = serve(Router::new().route(
        "/v1/credentials/status",
        get(|| async {
            let mut body = br#"{"vcStatus":"ONCHAIN"}"#.to_vec();
            body.resize(1 << 20, b' ');
            ([(CONTENT_TYPE, "application/json")], body)
        }),
    ))
    .await;
    let client = HttpAirKit::new(&format!("{base}/v1"), Duration::from_secs(10)).unwrap();
    let reply = client.status("a.partner.jwt", "0xhash").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["vcStatus"], "ONCHAIN");
}

#[tokio::test]
async fn a_redirect_is_reported_as_is_and_never_followed() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let target = serve(Router::new().route(
        "/v1/credentials/issue-on-behalf",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { axum::Json(json!({"coreClaimHash": "0xfollowed"})) }
        }),
    ))
    .await;
    let location = format!("{target}/v1/credentials/issue-on-behalf");
    let origin = serve(Router::new().route(
        "/v1/credentials/issue-on-behalf",
        post(move || {
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]) }
        }),
    ))
    .await;
    let client = HttpAirKit::new(&format!("{origin}/v1"), Duration::from_secs(10)).unwrap();
    let reply = client
        .issue_on_behalf("a.partner.jwt", &json!({}))
        .await
        .unwrap();
    assert_eq!(reply.status, 307);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the Partner JWT was forwarded"
    );
}

#[tokio::test]
async fn an_issuance_that_meets_an_oversized_answer_is_parked_at_once_not_retried() {
    let server = endless_server(r#"{"coreClaimHash":""#, "0123456789abcdef").await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = issuing_config(dir.path(), free_port(), &format!("{}/v1", server.url));
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let (_, key) = app.create_client(&["issue"]).await;
    let started = Instant::now();
    let (status, body) = issue_for(&app, &key, "u@example.com").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("not retried")
            && message.contains("1 MiB")
            && message.contains("resume"),
        "{message}"
    );
    let stalled: Value = app.admin_json("/admin/issuances?state=stalled").await;
    let row = &stalled["issuances"][0];
    assert_eq!(row["attempts"], 1, "{row}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "retried");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keyhost_airkit_responses_total")
                && l.contains("outcome=\"too_large\"")),
        "{metrics}"
    );
}
