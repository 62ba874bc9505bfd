use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keyhost::clock::rfc3339;
use serde_json::{Value, json};

use crate::helpers::{T0, TestApp, assert_public_only, spawn_app, spawn_app_with, verify};

const MAX_AGE: i64 = 300;

/// A relying party that caches the JWKS for up to `max-age` and refreshes only when it must.
struct CachingVerifier {
    jwks: Value,
    fetched_at: i64,
}

impl CachingVerifier {
    async fn new(app: &TestApp) -> Self {
        Self {
            jwks: app.jwks().await,
            fetched_at: app.now(),
        }
    }

    async fn refresh_if_stale(&mut self, app: &TestApp) {
        if app.now() - self.fetched_at >= MAX_AGE {
            self.jwks = app.jwks().await;
            self.fetched_at = app.now();
        }
    }
}

async fn short_policy_app() -> TestApp {
    spawn_app_with(|c| {
        // A tight policy: the lead exceeds max-age by a minute.
        c.keys.publish_lead = Duration::from_secs(MAX_AGE as u64 + 60);
        c.keys.jwks_max_age = Duration::from_secs(MAX_AGE as u64);
        c.keys.rotation_period = Duration::from_secs(3600);
        c.keys.retire_grace = Duration::from_secs(900);
    })
    .await
}

#[tokio::test]
async fn rotation_keeps_every_minted_token_verifiable_by_verifiers_caching_the_jwks_up_to_max_age()
{
    let app = short_policy_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    // Verifiers whose caches are out of phase with each other by a minute.
    let mut verifiers = Vec::new();
    for _ in 0..5 {
        verifiers.push(CachingVerifier::new(&app).await);
        app.advance(60).await;
    }
    let mut outstanding: Vec<(String, i64)> = Vec::new();
    let mut signing_kids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut states_seen: HashSet<String> = HashSet::new();

    // Five hours in one-minute steps: five scheduled rotations per algorithm.
    for _ in 0..300 {
        app.advance(60).await;
        let now = app.now();
        let served = app.jwks().await;
        assert_public_only(&served);
        for k in app.keys().await {
            let published = served.to_string().contains(k["kid"].as_str().unwrap());
            let state = k["state"].as_str().unwrap().to_owned();
            match state.as_str() {
                "pending" | "active" | "retired" => {
                    assert!(published, "{state} key must be published")
                }
                _ => assert!(!published, "{state} key must not be published"),
            }
            states_seen.insert(state);
        }
        for alg in ["ES256", "RS256"] {
            let minted = app
                .mint_ok(&key, json!({"email": "u@example.com", "alg": alg}))
                .await;
            signing_kids
                .entry(alg.to_owned())
                .or_default()
                .insert(minted["kid"].as_str().unwrap().to_owned());
            outstanding.push((minted["token"].as_str().unwrap().to_owned(), now + 300));
        }
        outstanding.retain(|(_, exp)| *exp > now);
        for v in &mut verifiers {
            v.refresh_if_stale(&app).await;
            for (token, _) in &outstanding {
                if let Err(e) = verify(token, &v.jwks, now) {
                    panic!(
                        "a verifier with a {}s-old JWKS rejected a live token: {e}",
                        now - v.fetched_at
                    );
                }
            }
        }
    }
    for alg in ["ES256", "RS256"] {
        assert!(
            signing_kids[alg].len() >= 5,
            "{alg} rotated only {:?}",
            signing_kids[alg]
        );
    }
    for state in ["pending", "active", "retired", "expired"] {
        assert!(states_seen.contains(state), "never saw a {state} key");
    }
}

#[tokio::test]
async fn the_caching_verifier_does_catch_a_key_used_before_it_was_published() {
    // Control for the test above: an emergency rotation signs at once, which is exactly what
    // publish-before-use prevents, and the same verifier notices.
    let app = short_policy_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let verifier = CachingVerifier::new(&app).await;
    app.admin_post(
        "/admin/keys/rotate",
        json!({"alg": "ES256", "emergency": true}),
    )
    .await;
    let minted = app.mint_ok(&key, json!({"email": "u@example.com"})).await;
    let err = verify(minted["token"].as_str().unwrap(), &verifier.jwks, app.now()).unwrap_err();
    assert!(err.contains("kid not found"), "{err}");
}

#[tokio::test]
async fn retired_key_stays_published_until_grace_ends_then_its_private_key_is_destroyed() {
    let app = short_policy_app().await;
    let first = app.kids_in("active").await;
    // The successor is generated at 54 min and takes over at 60 min.
    app.advance(3240).await;
    assert_eq!(app.kids_in("pending").await.len(), 2);
    app.advance(360).await;
    let retired = app.kids_in("retired").await;
    assert_eq!(retired.len(), 2);
    assert!(retired.iter().all(|k| first.contains(k)));

    app.advance(899).await;
    let jwks = app.jwks().await.to_string();
    assert!(retired.iter().all(|k| jwks.contains(k.as_str())));
    app.advance(1).await;
    let jwks = app.jwks().await.to_string();
    assert!(retired.iter().all(|k| !jwks.contains(k.as_str())));
    assert_eq!(app.kids_in("expired").await.len(), 2);

    let held = crate::helpers::RawDb::open(app.dir.path()).query_i64(
        "SELECT COUNT(*) FROM keys WHERE state = 'expired' AND private_key_enc IS NOT NULL",
        &[],
    );
    assert_eq!(held, 0, "expired keys keep no private key");
}

#[tokio::test]
async fn a_key_never_signs_before_its_signable_time_even_when_the_clock_runs_backwards() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let rotated = app.rotate("ES256", true).await;
    assert_eq!(rotated["key"]["state"], "active");
    assert_eq!(rotated["key"]["signableAt"], rfc3339(T0));
    app.clock.set(T0 - 10);
    app.settle().await;
    let res = app.mint(&key, json!({"email": "u@example.com"})).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    app.clock.set(T0);
    app.settle().await;
    app.mint_ok(&key, json!({"email": "u@example.com"})).await;
}

#[tokio::test]
async fn the_background_task_applies_a_due_transition_on_its_own() {
    let app = spawn_app().await;
    let res = app
        .admin_post("/admin/keys/rotate", json!({"alg": "ES256"}))
        .await;
    let new: Value = res.json().await.unwrap();
    let new = new["key"]["kid"].as_str().unwrap().to_owned();
    // Move the clock without running the lifecycle ourselves.
    app.clock.advance(24 * 3600);
    let (_, key) = app.create_client(&["issue"]).await;
    crate::helpers::eventually(
        Duration::from_secs(5),
        "the new key never took over",
        || async {
            app.mint_ok(&key, json!({"email": "u@example.com"})).await["kid"] == new.as_str()
        },
    )
    .await;
    assert_eq!(app.kids_in("retired").await.len(), 1);
}

#[tokio::test]
async fn a_forward_clock_jump_reschedules_a_pending_key_and_shortens_no_grace() {
    let app = spawn_app().await;
    let lead = 24 * 3600;
    let grace = 3600;
    // A retired key (its successor took over at T0 + lead) and a new pending key.
    app.rotate("ES256", false).await;
    app.advance(lead).await;
    let retired = app.kids_in("retired").await;
    assert_eq!(retired.len(), 1);
    let pending = app.rotate("ES256", false).await;
    let pending = pending["key"]["kid"].as_str().unwrap().to_owned();

    // The wall clock jumps an hour ahead; no real time passes.
    app.clock.jump(3600);
    app.settle().await;
    let keys = app.keys().await;
    let find = |kid: &str| keys.iter().find(|k| k["kid"] == kid).unwrap().clone();
    let p = find(&pending);
    assert_eq!(p["signableAt"], rfc3339(T0 + 2 * lead + 3600), "{p}");
    assert_eq!(p["leadToServe"], lead);
    // By the wall clock the retired key's grace is over; it was served none of it.
    let r = find(&retired[0]);
    assert_eq!(r["state"], "retired");
    assert_eq!(r["expiresAt"], rfc3339(T0 + lead + grace));
    assert_eq!(r["graceToServe"], grace);
    assert!(app.jwks().await.to_string().contains(&retired[0]));
    let audit: Value = app.admin_json("/admin/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key.reschedule" && e["subject"] == pending.as_str()),
        "{audit}"
    );
}

#[tokio::test]
async fn a_key_that_signs_keeps_signing_when_the_clock_goes_back_far() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let first = app.mint_ok(&key, json!({"email": "u@example.com"})).await["kid"].clone();
    // A day back: the active key's signableAt would be a day ahead; it is rescheduled to now.
    app.clock.jump(-24 * 3600);
    app.settle().await;
    let minted = app.mint_ok(&key, json!({"email": "u@example.com"})).await;
    assert_eq!(minted["kid"], first);
    let keys = app.keys().await;
    let k = keys.iter().find(|k| k["kid"] == first).unwrap();
    assert_eq!(k["signableAt"], rfc3339(T0 - 24 * 3600));
}

#[tokio::test]
async fn a_restart_with_the_wall_clock_a_day_ahead_never_shortens_a_lead_or_a_grace() {
    let app = spawn_app().await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let first = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await["kid"]
        .clone();
    let successor = app.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance(5).await;
    // The host reboots before NTP has set its clock: a day ahead.
    let (dir, clock) = app.stop().await;
    clock.jump(24 * 3600);
    let config = crate::helpers::test_config(dir.path());
    let app = crate::helpers::start(dir, clock, config).await.unwrap();
    let minted = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    assert_eq!(
        minted["kid"], first,
        "by the wall clock the lead is over; it was served 5 s"
    );
    let keys = app.keys().await;
    let pending = keys
        .iter()
        .find(|k| k["kid"] == successor.as_str())
        .unwrap();
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["leadToServe"], 24 * 3600 - 5);
    // NTP corrects the clock back a day; the lead still counts only served time.
    app.clock.jump(-24 * 3600);
    app.advance(24 * 3600 - 6).await;
    assert_eq!(app.kids_in("pending").await, vec![successor.clone()]);
    app.advance(1).await;
    let minted = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    assert_eq!(minted["kid"], successor.as_str());

    // The retired key's grace: a restart an hour ahead (the whole grace) does not end it.
    let retired = first.as_str().unwrap().to_owned();
    app.advance(10).await;
    let (dir, clock) = app.stop().await;
    clock.jump(3600);
    let config = crate::helpers::test_config(dir.path());
    let app = crate::helpers::start(dir, clock, config).await.unwrap();
    assert!(app.jwks().await.to_string().contains(&retired));
    let keys = app.keys().await;
    let old = keys.iter().find(|k| k["kid"] == retired.as_str()).unwrap();
    assert_eq!(old["state"], "retired");
    assert_eq!(old["graceToServe"], 3600 - 10);
    app.advance(3600 - 11).await;
    assert!(app.jwks().await.to_string().contains(&retired));
    app.advance(1).await;
    assert!(!app.jwks().await.to_string().contains(&retired));
}

/// A manual clock whose moves nobody is told about, as with the system clock.
struct Unannounced(std::sync::Arc<keyhost::clock::ManualClock>);

impl keyhost::clock::Clock for Unannounced {
    fn now(&self) -> i64 {
        self.0.now()
    }
    fn monotonic(&self) -> std::time::Duration {
        // Real time passes for the lifecycle's naps; the manual part adds what tests advance.
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed() + self.0.monotonic()
    }
}

#[tokio::test]
async fn a_wall_clock_set_back_an_hour_unannounced_keeps_the_active_key_signing_within_seconds() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let manual = keyhost::clock::ManualClock::new(T0);
    let clock = std::sync::Arc::new(Unannounced(manual.clone()));
    let config = crate::helpers::test_config(dir.path());
    let app = keyhost::startup::Application::build_with_clock(config, clock)
        .await
        .unwrap();
    let internal = format!("http://{}", app.internal_addr());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let client: Value = http
        .post(format!("{internal}/admin/clients"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&json!({"name": "app", "scopes": ["issue"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = client["apiKey"].as_str().unwrap().to_owned();
    let mint = || {
        let (http, internal, key) = (http.clone(), internal.clone(), key.clone());
        async move {
            http.post(format!("{internal}/v1/tokens"))
                .bearer_auth(key)
                .json(&json!({"email": "u@example.com"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(mint().await, 200);
    manual.jump(-3600);
    // Within seconds (a nap of the background task, then a round), not the hour the clock went
    // back; the margin is for a loaded test machine.
    crate::helpers::eventually(
        Duration::from_secs(20),
        "the active key did not sign again after the clock went back",
        || async { mint().await == 200 },
    )
    .await;
}

#[tokio::test]
async fn a_key_stays_published_until_the_last_token_it_signed_has_expired() {
    let app = spawn_app().await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    // A token signed while the clock was two days ahead expires two days from the real now.
    app.clock.jump(2 * 24 * 3600);
    app.settle().await;
    let token = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    let kid = token["kid"].as_str().unwrap().to_owned();
    app.clock.jump(-2 * 24 * 3600);
    app.settle().await;
    // The key is replaced and retires; its grace ends long before that token does.
    app.rotate("ES256", false).await;
    app.advance(24 * 3600).await;
    assert_eq!(app.kids_in("retired").await, vec![kid.clone()]);
    app.advance(2 * 3600).await;
    assert!(
        app.jwks().await.to_string().contains(&kid),
        "the token still verifies"
    );
    let keys = app.keys().await;
    let old = keys.iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    assert_eq!(old["lastTokenExpiresAt"], token["expiresAt"]);
    app.advance(22 * 3600 + 300).await;
    assert!(!app.jwks().await.to_string().contains(&kid));
}
