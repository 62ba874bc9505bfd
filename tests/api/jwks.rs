use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::helpers::{TestApp, assert_public_only, spawn_app};

#[tokio::test]
async fn jwks_publishes_one_key_per_algorithm_with_cache_and_cors_headers() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        h["cache-control"],
        "public, max-age=300, stale-if-error=86100"
    );
    assert_eq!(h["access-control-allow-origin"], "*");
    let etag = h["etag"].to_str().unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    let jwks: Value = res.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert!(algs.contains(&"ES256") && algs.contains(&"RS256"));
    assert_public_only(&jwks);
}

#[tokio::test]
async fn jwks_answers_not_modified_for_a_matching_etag_and_changes_its_etag_with_the_key_set() {
    let app = spawn_app().await;
    let url = format!("{}/.well-known/jwks.json", app.public);
    let first = app.http.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let cached = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        cached.headers()["cache-control"],
        "public, max-age=300, stale-if-error=86100"
    );
    assert!(cached.bytes().await.unwrap().is_empty());

    let res = app
        .admin_post("/admin/keys/rotate", serde_json::json!({"alg": "ES256"}))
        .await;
    assert_eq!(res.status(), 201);
    let after = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "the key set changed");
    assert_ne!(after.headers()["etag"].to_str().unwrap(), etag);
    let jwks: Value = after.json().await.unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        3,
        "pending key published"
    );
}

#[tokio::test]
async fn head_requests_get_the_headers_without_the_body() {
    let app = spawn_app().await;
    let res = app
        .http
        .head(format!("{}/.well-known/jwks.json", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("etag"));
    assert!(res.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn kid_is_the_rfc7638_thumbprint_of_the_published_key() {
    let app = spawn_app().await;
    let keys = app.jwks().await["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "one ES256 and one RS256 key");
    for key in &keys {
        let canonical = match key["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                key["crv"].as_str().unwrap(),
                key["x"].as_str().unwrap(),
                key["y"].as_str().unwrap()
            ),
            _ => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                key["e"].as_str().unwrap(),
                key["n"].as_str().unwrap()
            ),
        };
        let expected = URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()));
        assert_eq!(key["kid"], expected.as_str());
    }
}

#[tokio::test]
async fn public_listener_serves_only_the_jwks_and_health() {
    let app = spawn_app().await;
    let health = app
        .http
        .get(format!("{}/healthz", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for path in ["/v1/tokens", "/admin/keys", "/readyz"] {
        let res = app
            .http
            .get(format!("{}{path}", app.public))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["identifier"], "NOT_FOUND");
    }
}

#[tokio::test]
async fn max_age_never_reaches_past_the_scheduled_publication_of_the_next_key() {
    let app = spawn_app().await;
    let cache_control = |app: &TestApp| {
        let (http, url) = (
            app.http.clone(),
            format!("{}/.well-known/jwks.json", app.public),
        );
        async move {
            http.get(url).send().await.unwrap().headers()[header_name()]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        cache_control(&app).await,
        "public, max-age=300, stale-if-error=86100"
    );
    // The successors are generated a lead (1 day) before the 30-day period ends.
    app.advance(29 * 24 * 3600 - 120).await;
    assert_eq!(
        cache_control(&app).await,
        "public, max-age=120, stale-if-error=86100",
        "a copy cached now expires when the next key appears"
    );
    app.advance(120).await;
    assert_eq!(app.kids_in("pending").await.len(), 2);
    assert_eq!(
        cache_control(&app).await,
        "public, max-age=300, stale-if-error=86100"
    );
}

fn header_name() -> reqwest::header::HeaderName {
    reqwest::header::CACHE_CONTROL
}
