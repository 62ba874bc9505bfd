use serde_json::{Value, json};

use crate::helpers::{PARTNER_ID, T0, spawn_app, spawn_app_with, start, test_config, verify};

#[tokio::test]
async fn minted_tokens_verify_against_the_served_jwks_with_an_independent_verifier() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let jwks = app.jwks().await;
    for alg in ["ES256", "RS256"] {
        let body = app
            .mint_ok(&key, json!({"email": "user@example.com", "alg": alg}))
            .await;
        assert_eq!(body["tokenType"], "JWT");
        assert_eq!(body["alg"], alg);
        assert_eq!(body["expiresIn"], 300);
        assert_eq!(body["expiresAt"], "2027-01-15T08:05:00Z");
        let token = body["token"].as_str().unwrap();

        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), body["kid"].as_str());
        assert_eq!(format!("{:?}", header.alg), alg);

        let claims = verify(token, &jwks, T0).expect("verifies");
        assert_eq!(claims["partnerId"], PARTNER_ID);
        assert_eq!(claims["scope"], "issue");
        assert_eq!(claims["email"], "user@example.com");
        assert_eq!(claims["iat"], T0);
        assert_eq!(claims["exp"], T0 + 300);
        assert!(claims["jti"].as_str().unwrap().len() >= 16);
    }
}

#[tokio::test]
async fn es256_is_the_default_and_ttl_and_scope_can_be_chosen() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue", "issue on-behalf"]).await;
    let body = app
        .mint_ok(
            &key,
            json!({"email": "a@example.com", "scope": "issue on-behalf", "ttlSeconds": 60}),
        )
        .await;
    assert_eq!(body["alg"], "ES256");
    assert_eq!(body["expiresIn"], 60);
    let claims = verify(body["token"].as_str().unwrap(), &app.jwks().await, T0).unwrap();
    assert_eq!(claims["scope"], "issue on-behalf");
    assert_eq!(claims["exp"], T0 + 60);
}

#[tokio::test]
async fn a_whole_ttl_written_as_a_float_is_that_many_seconds() {
    // JSON numbers are values: a client that holds 60 as a float sends `60.0` (found by
    // schemathesis, whose schema-valid `"ttlSeconds": 188.0` was refused).
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let body = app
        .mint_ok(&key, json!({"email": "a@example.com", "ttlSeconds": 60.0}))
        .await;
    assert_eq!(body["expiresIn"], 60);
    let res = app
        .mint(&key, json!({"email": "a@example.com", "ttlSeconds": 60.5}))
        .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn every_token_has_a_unique_jti() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let body = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
        let claims = verify(body["token"].as_str().unwrap(), &app.jwks().await, T0).unwrap();
        assert!(seen.insert(claims["jti"].as_str().unwrap().to_owned()));
    }
}

#[tokio::test]
async fn wrong_or_missing_client_keys_get_401_unauthorized() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let mut tampered = key.clone();
    tampered.replace_range(key.len() - 4.., "AAAA");
    for bad in [
        tampered.as_str(),
        "khc_0000000000000000_whatever",
        "not-a-key",
        crate::helpers::ADMIN_TOKEN,
    ] {
        let res = app.mint(bad, json!({"email": "a@example.com"})).await;
        assert_eq!(res.status(), 401, "{bad}");
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer realm=\"keyhost\""
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["identifier"], "UNAUTHORIZED");
    }
    let res = app
        .http
        .post(format!("{}/v1/tokens", app.internal))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .http
        .post(format!("{}/v1/tokens", app.internal))
        .header("authorization", format!("Basic {key}"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_disabled_client_is_refused_at_once() {
    let app = spawn_app().await;
    let (id, key) = app.create_client(&["issue"]).await;
    app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    let res = app
        .admin_post(&format!("/admin/clients/{id}/disable"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app.mint(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("disabled"));
}

#[tokio::test]
async fn a_scope_the_client_is_not_allowed_gets_403_permissions_error() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["verify"]).await;
    for body in [
        json!({"email": "a@example.com"}),
        json!({"email": "a@example.com", "scope": "issue"}),
    ] {
        let res = app.mint(&key, body).await;
        assert_eq!(res.status(), 403);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["identifier"], "PERMISSIONS_ERROR");
        assert!(body["message"].as_str().unwrap().contains("verify"));
    }
}

#[tokio::test]
async fn malformed_token_requests_get_400_with_the_right_identifier() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let cases: &[(&str, &str, &str)] = &[
        ("", "application/json", "JSON_ERROR"),
        ("{\"email\": ", "application/json", "JSON_ERROR"),
        ("null", "application/json", "MISSING_VALUE"),
        ("[]", "application/json", "BAD_VALUE"),
        ("{}", "application/json", "MISSING_VALUE"),
        ("{\"email\": 42}", "application/json", "BAD_VALUE"),
        (
            "{\"email\": \"not-an-email\"}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"ttlSeconds\": 301}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"ttlSeconds\": 0}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"ttlSeconds\": \"60\"}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"alg\": \"HS256\"}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"alg\": \"none\"}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"ttl\": 60}",
            "application/json",
            "BAD_VALUE",
        ),
        (
            "{\"email\": \"a@example.com\", \"scope\": \"\"}",
            "application/json",
            "BAD_VALUE",
        ),
        ("{\"email\": \"a@example.com\"}", "text/plain", "BAD_VALUE"),
    ];
    for (body, ct, identifier) in cases {
        let res = app
            .http
            .post(format!("{}/v1/tokens", app.internal))
            .bearer_auth(&key)
            .header("content-type", *ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let got: Value = res.json().await.unwrap();
        assert_eq!(got["identifier"], *identifier, "{body:?}: {got}");
        assert!(status == 400 || status == 415, "{body:?}: {status}");
        assert!(!got["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn credentials_are_checked_before_the_body() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(format!("{}/v1/tokens", app.internal))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn without_a_partner_id_the_server_serves_the_jwks_but_explains_why_it_cannot_mint() {
    let app = spawn_app_with(|c| c.tokens.partner_id = None).await;
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
    let (_, key) = app.create_client(&["issue"]).await;
    let res = app.mint(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("KEYHOST_PARTNER_ID")
    );
}

#[tokio::test]
async fn an_algorithm_that_is_not_enabled_cannot_be_requested() {
    let app = spawn_app_with(|c| c.keys.algorithms = vec![keyhost::keys::Alg::ES256]).await;
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 1);
    let (_, key) = app.create_client(&["issue"]).await;
    let res = app
        .mint(&key, json!({"email": "a@example.com", "alg": "RS256"}))
        .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn token_responses_are_not_cacheable() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let res = app.mint(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn a_client_over_its_hourly_quota_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = spawn_app_with(|c| c.tokens.client_rate_limit = 3).await;
    let (_, busy) = app.create_client(&["issue"]).await;
    let (_, other) = app.create_client(&["issue"]).await;
    for _ in 0..3 {
        app.mint_ok(&busy, json!({"email": "a@example.com"})).await;
    }
    let res = app.mint(&busy, json!({"email": "a@example.com"})).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1300).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["identifier"], "TOO_MANY_REQUESTS");
    app.mint_ok(&other, json!({"email": "a@example.com"})).await;
}

#[tokio::test]
async fn minted_tokens_are_audited_in_the_minute_they_were_minted_not_when_written() {
    let app = spawn_app().await;
    let (id, key) = app.create_client(&["issue"]).await;
    app.clock.advance(10);
    for _ in 0..2 {
        app.mint_ok(&key, json!({"email": "user@example.com"}))
            .await;
    }
    app.clock.advance(600);
    app.mint_ok(&key, json!({"email": "user@example.com"}))
        .await;
    // The counts are written when the server stops, ten minutes after the first mints.
    let (dir, clock) = app.stop().await;
    let config = test_config(dir.path());
    let app = start(dir, clock, config).await.unwrap();
    let audit = app.admin_json("/admin/audit?limit=1000").await;
    let mut mints: Vec<(String, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.mint")
        .map(|e| {
            assert_eq!(e["actor"], format!("client:{id}"));
            (
                e["at"].as_str().unwrap().to_owned(),
                e["detail"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    mints.sort();
    let minute = |t: i64| keyhost::clock::rfc3339(t / 60 * 60);
    assert_eq!(mints, [(minute(T0 + 10), 2), (minute(T0 + 610), 1)]);
}
