//! Verifier sightings: who fetches the JWKS, from where (behind trusted proxies), and which key
//! set each received or revalidated; per pending key, whether a verifier has provably been
//! served it; and the activation policy that waits for one verifier's sighting, up to a cap.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{json_of, keyhost};
use crate::helpers::{TestApp, spawn_app_with};

const LEAD: i64 = 3600;
const AIR: &str = "AIR-Kit-JWKS-Fetcher/2.1";

/// Fetches the JWKS as `agent` (revalidating `etag` if given); status and ETag.
async fn fetch(
    app: &TestApp,
    agent: &str,
    etag: Option<&str>,
    forwarded: Option<&str>,
) -> (u16, String) {
    let mut req = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.public))
        .header("user-agent", agent);
    if let Some(etag) = etag {
        req = req.header("if-none-match", etag);
    }
    if let Some(ip) = forwarded {
        req = req.header("x-forwarded-for", ip);
    }
    let res = req.send().await.unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    (res.status().as_u16(), etag)
}

fn verifier<'a>(list: &'a Value, agent: &str) -> &'a Value {
    list["verifiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["userAgent"] == agent)
        .unwrap_or_else(|| panic!("no {agent} in {list}"))
}

async fn pending_kid(app: &TestApp) -> String {
    app.keys()
        .await
        .into_iter()
        .find(|k| k["state"] == "pending" && k["alg"] == "ES256")
        .expect("a pending key")["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn each_verifier_is_recorded_with_what_it_was_served_and_whether_it_saw_each_pending_key() {
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    // A monitor fetched the key set before the rotation; the verifier after it.
    fetch(&app, "uptime-monitor/1.0", None, None).await;
    app.rotate("ES256", false).await;
    let pending = pending_kid(&app).await;
    let (status, etag) = fetch(&app, AIR, None, Some("203.0.113.7")).await;
    assert_eq!(status, 200);
    let (status, _) = fetch(&app, AIR, Some(&etag), Some("203.0.113.7")).await;
    assert_eq!(status, 304);

    let list = app.admin_json("/admin/verifiers").await;
    let air = verifier(&list, AIR);
    assert_eq!(air["requests"], 2, "{air}");
    let recent = air["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0]["revalidated"], false);
    assert_eq!(recent[1]["revalidated"], true, "the 304 is a revalidation");
    assert_eq!(recent[1]["etag"], etag.as_str());
    assert_eq!(
        recent[1]["address"], "203.0.113.7",
        "behind a trusted proxy"
    );
    assert_eq!(air["pendingKeys"][0]["kid"], pending.as_str());
    assert_eq!(air["pendingKeys"][0]["seen"], true);
    let monitor = verifier(&list, "uptime-monitor/1.0");
    assert_eq!(
        monitor["pendingKeys"][0]["seen"], false,
        "it never saw the new set"
    );
    assert_eq!(monitor["recent"][0]["address"], "127.0.0.1");

    // The CLI reads the same record.
    let cli = json_of(&keyhost(app.dir.path(), &["verifiers"]));
    assert_eq!(verifier(&cli, AIR)["pendingKeys"][0]["seen"], true);
}

#[tokio::test]
async fn a_flood_of_made_up_user_agents_is_summarised_not_kept_one_by_one() {
    let app = spawn_app_with(|_| {}).await;
    for i in 0..300 {
        fetch(&app, &format!("made-up-agent-{i}"), None, None).await;
    }
    let list = app.admin_json("/admin/verifiers").await;
    let n = list["verifiers"].as_array().unwrap().len();
    assert!(n <= 257, "{n} verifiers kept");
    let others = verifier(&list, "(other user agents)");
    assert!(others["requests"].as_i64().unwrap() >= 44, "{others}");
}

#[tokio::test]
async fn activation_waits_for_the_required_verifiers_sighting_then_goes_at_once() {
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        c.keys.activation_requires_sighting = Some("AIR-Kit".into());
        c.keys.activation_sighting_cap = Duration::from_secs(2 * 3600);
    })
    .await;
    app.rotate("ES256", false).await;
    let pending = pending_kid(&app).await;
    // Someone else fetched it: not the verifier the policy names.
    fetch(&app, "curl/8.5", None, None).await;
    app.advance(LEAD + 1).await;
    let key = app
        .keys()
        .await
        .into_iter()
        .find(|k| k["kid"] == pending.as_str())
        .unwrap();
    assert_eq!(key["state"], "pending");
    let reason = key["activationBlocked"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("AIR-Kit") && reason.contains("activates anyway at"),
        "{reason}"
    );

    fetch(&app, AIR, None, None).await;
    app.advance(20).await;
    assert!(
        app.kids_in("active").await.contains(&pending),
        "{:?}",
        app.keys().await
    );
}

#[tokio::test]
async fn a_verifier_that_never_returns_cannot_block_rotation_past_the_cap() {
    let app = spawn_app_with(|c| {
        c.keys.publish_lead = Duration::from_secs(LEAD as u64);
        c.keys.activation_requires_sighting = Some("AIR-Kit".into());
        c.keys.activation_sighting_cap = Duration::from_secs(2 * 3600);
    })
    .await;
    app.rotate("ES256", false).await;
    let pending = pending_kid(&app).await;
    app.advance(LEAD + 2 * 3600 - 60).await;
    assert!(
        !app.kids_in("active").await.contains(&pending),
        "not before the cap"
    );
    app.advance(120).await;
    assert!(
        app.kids_in("active").await.contains(&pending),
        "the cap has passed"
    );
    let _ = json!({});
}
