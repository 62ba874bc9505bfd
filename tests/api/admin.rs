use serde_json::{Value, json};

use std::sync::Arc;

use keyhost::clock::ManualClock;

use crate::helpers::{T0, assert_public_only, spawn_app, start, test_config};

const DAY: i64 = 24 * 3600;

#[tokio::test]
async fn every_admin_route_requires_the_admin_token() {
    // 30 wrong credentials from one address: more than the default failure budget.
    let app = crate::helpers::spawn_app_with(|c| c.http.auth_failure_limit = 100).await;
    let (client_id, client_key) = app.create_client(&["issue"]).await;
    // Every admin operation the server documents, so that a new one is covered the day it is
    // added (another test checks that every documented operation is routed).
    let doc = app.openapi().await;
    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/") {
            continue;
        }
        let path = path
            .replace("{kid}", "somekid")
            .replace("{id}", &client_id)
            .replace("{name}", "somebody");
        for method in ops.as_object().unwrap().keys() {
            if method != "servers" && method != "parameters" {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert_eq!(routes.len(), 19, "{routes:?}");
    for (method, path) in &routes {
        for token in [
            None,
            Some("wrong-admin-token-123456"),
            Some(client_key.as_str()),
        ] {
            let mut req = app
                .http
                .request(method.parse().unwrap(), format!("{}{path}", app.internal))
                .json(&json!({"alg": "ES256", "name": "x", "scopes": ["issue"]}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{method} {path} with {token:?}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["identifier"], "UNAUTHORIZED");
        }
    }
    // Nothing changed.
    assert_eq!(app.keys().await.len(), 2);
}

#[tokio::test]
async fn key_list_shows_states_and_rfc3339_timestamps() {
    let app = spawn_app().await;
    let keys = app.keys().await;
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert_eq!(k["state"], "active");
        for field in ["createdAt", "publishedAt", "signableAt", "activatedAt"] {
            assert_eq!(k[field], "2027-01-15T08:00:00Z", "{field}");
        }
        assert!(k.get("retiredAt").is_none() && k.get("revokedAt").is_none());
        for m in ["d", "p", "q", "privateKey", "private_key_enc"] {
            assert!(k["publicJwk"].get(m).is_none() && k.get(m).is_none());
        }
    }
}

#[tokio::test]
async fn normal_rotation_publishes_a_pending_key_that_takes_over_after_the_lead() {
    let app = spawn_app().await;
    let old = app.kids_in("active").await;
    let res = app
        .admin_post("/admin/keys/rotate", json!({"alg": "ES256"}))
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let new = body["key"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(body["key"]["state"], "pending");
    assert_eq!(body["key"]["signableAt"], "2027-01-16T08:00:00Z");
    assert!(
        app.jwks().await.to_string().contains(&new),
        "published before it signs"
    );

    let again = app
        .admin_post("/admin/keys/rotate", json!({"alg": "ES256"}))
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["identifier"],
        "CONFLICT"
    );

    let (_, key) = app.create_client(&["issue"]).await;
    app.advance(DAY - 1).await;
    let minted = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    assert_ne!(minted["kid"], new.as_str(), "not before signableAt");

    app.advance(1).await;
    let minted = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(minted["kid"], new.as_str());
    let retired = app.kids_in("retired").await;
    assert_eq!(retired.len(), 1);
    assert!(old.contains(&retired[0]));
}

#[tokio::test]
async fn emergency_rotation_activates_at_once_revokes_the_old_key_and_warns() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let before = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    let old = before["kid"].as_str().unwrap().to_owned();

    let res = app
        .admin_post(
            "/admin/keys/rotate",
            json!({"alg": "ES256", "emergency": true}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["key"]["state"], "active");
    assert_eq!(body["revoked"], json!([old]));
    assert!(body["warning"].as_str().unwrap().contains("cached JWKS"));

    let jwks = app.jwks().await;
    assert!(
        !jwks.to_string().contains(&old),
        "revoked key left the JWKS"
    );
    assert_public_only(&jwks);
    let after = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(after["kid"], body["key"]["kid"]);
}

#[tokio::test]
async fn the_active_key_cannot_be_retired_directly_but_a_pending_one_can() {
    let app = spawn_app().await;
    let active = app.kids_in("active").await;
    let res = app
        .admin_post(&format!("/admin/keys/{}/retire", active[0]), json!({}))
        .await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("rotate"));

    let res = app
        .admin_post("/admin/keys/rotate", json!({"alg": "RS256"}))
        .await;
    let pending: Value = res.json().await.unwrap();
    let kid = pending["key"]["kid"].as_str().unwrap();
    let res = app
        .admin_post(&format!("/admin/keys/{kid}/retire"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["key"]["state"], "retired");
    assert_eq!(body["key"]["expiresAt"], "2027-01-15T09:00:00Z");
    let res = app
        .admin_post(&format!("/admin/keys/{kid}/retire"), json!({}))
        .await;
    assert_eq!(res.status(), 409);
}

#[tokio::test]
async fn revoking_the_active_key_removes_it_now_and_warns_that_the_algorithm_cannot_sign() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let kid = app.mint_ok(&key, json!({"email": "a@example.com"})).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .admin_post(&format!("/admin/keys/{kid}/revoke"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["key"]["state"], "revoked");
    assert!(body["warning"].as_str().unwrap().contains("emergency"));
    assert!(!app.jwks().await.to_string().contains(&kid));

    let res = app.mint(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    // RS256 still works, and a successor for ES256 is already published.
    app.mint_ok(&key, json!({"email": "a@example.com", "alg": "RS256"}))
        .await;
    assert_eq!(app.kids_in("pending").await.len(), 1);

    let res = app
        .admin_post(&format!("/admin/keys/{kid}/revoke"), json!({}))
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .admin_post("/admin/keys/no-such-kid/revoke", json!({}))
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["identifier"],
        "NOT_FOUND"
    );
}

#[tokio::test]
async fn clients_are_created_with_a_key_shown_once_listed_without_secrets_and_disabled() {
    let app = spawn_app().await;
    let (id, key) = app.create_client(&["issue", "verify"]).await;
    assert!(key.starts_with("khc_"));
    let list: Value = app.admin_json("/admin/clients").await;
    let text = list.to_string();
    assert!(text.contains(&id));
    assert!(!text.contains(&key[20..]), "the secret is never listed");
    assert!(!text.contains("apiKey") && !text.contains("secret"));

    let res = app
        .admin_post(&format!("/admin/clients/{id}/disable"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["client"]["disabledAt"].is_string());
    let res = app
        .admin_post(&format!("/admin/clients/{id}/disable"), json!({}))
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .admin_post("/admin/clients/nope/disable", json!({}))
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn client_definitions_are_validated() {
    let app = spawn_app().await;
    for body in [
        json!({"name": "", "scopes": ["issue"]}),
        json!({"name": "a", "scopes": []}),
        json!({"name": "a", "scopes": [" issue"]}),
        json!({"name": "a", "scopes": ["is\nsue"]}),
        // More than 100 characters as sent, although trimming would leave one (found by the
        // schemathesis run: the description's maxLength counts what is sent).
        json!({"name": format!("{}a", "\u{85}".repeat(100)), "scopes": ["issue"]}),
    ] {
        let res = app.admin_post("/admin/clients", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["identifier"],
            "VALIDATION_ERROR"
        );
    }
    // White space around a name is trimmed.
    let res = app
        .admin_post(
            "/admin/clients",
            json!({"name": "  billing app ", "scopes": ["issue"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["name"], "billing app");
}

#[tokio::test]
async fn every_key_transition_and_client_change_is_audited_with_actor_and_time() {
    let app = spawn_app().await;
    let (id, _) = app.create_client(&["issue"]).await;
    app.admin_post("/admin/keys/rotate", json!({"alg": "ES256"}))
        .await;
    app.admin_post(&format!("/admin/clients/{id}/disable"), json!({}))
        .await;
    app.advance(DAY).await;
    let body: Value = app.admin_json("/admin/audit").await;
    let entries = body["entries"].as_array().unwrap();
    let has = |action: &str, actor: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["actor"] == actor && e["at"].is_string())
    };
    assert!(has("key.generate", "scheduler"));
    assert!(has("client.create", "admin:bootstrap"));
    assert!(has("key.rotate", "admin:bootstrap"));
    assert!(has("client.disable", "admin:bootstrap"));
    assert!(has("key.activate", "scheduler"));
    assert!(has("key.retire", "scheduler"));
    assert!(
        !body.to_string().contains("khc_"),
        "no secrets in the audit trail"
    );
    let limited: Value = app.admin_json("/admin/audit?limit=2").await;
    assert_eq!(limited["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn mints_are_accounted_per_client_and_key_in_the_audit_trail_without_touching_the_hot_path() {
    let app = spawn_app().await;
    let (id, key) = app.create_client(&["issue"]).await;
    for _ in 0..3 {
        app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    }
    let rs = app
        .mint_ok(&key, json!({"email": "a@example.com", "alg": "RS256"}))
        .await;
    let before: Value = app.admin_json("/admin/audit").await;
    assert!(
        !before.to_string().contains("token.mint"),
        "written later, in bulk"
    );
    // Stopping the server writes what the ledger holds.
    let (dir, clock) = app.stop().await;
    let config = crate::helpers::test_config(dir.path());
    let app = crate::helpers::start(dir, clock, config).await.unwrap();
    let body: Value = app.admin_json("/admin/audit").await;
    let mints: Vec<&Value> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.mint")
        .collect();
    assert_eq!(mints.len(), 2, "one row per client and key");
    assert!(
        mints
            .iter()
            .all(|e| e["actor"] == format!("client:{id}").as_str())
    );
    let total: u64 = mints
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);
    assert!(
        mints
            .iter()
            .any(|e| e["subject"] == rs["kid"] && e["detail"]["count"] == 1)
    );
}

#[tokio::test]
async fn an_emergency_rotation_also_revokes_the_pending_successor() {
    let app = spawn_app().await;
    let active = app.kids_in("active").await;
    let pending = app.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let es256_active = app
        .keys()
        .await
        .into_iter()
        .find(|k| k["state"] == "active" && k["alg"] == "ES256")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(active.contains(&es256_active));

    let body = app.rotate("ES256", true).await;
    let revoked: Vec<&str> = body["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(revoked.len(), 2, "{body}");
    assert!(revoked.contains(&es256_active.as_str()) && revoked.contains(&pending.as_str()));
    let jwks = app.jwks().await.to_string();
    assert!(!jwks.contains(&es256_active) && !jwks.contains(&pending));
    assert_eq!(app.kids_in("revoked").await.len(), 2);
}

#[tokio::test]
async fn the_audit_trail_pages_backwards_with_before() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_client(&["issue"]).await;
    }
    let page = |query: String| {
        let app = &app;
        async move {
            let body: Value = app.admin_json(&format!("/admin/audit?{query}")).await;
            body["entries"].as_array().unwrap().clone()
        }
    };
    let all = page("limit=1000".into()).await;
    assert!(all.len() >= 5, "key generation and three clients: {all:?}");
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let first = page("limit=2".into()).await;
    assert_eq!(first, all[..2]);
    let last_id = first[1]["id"].as_i64().unwrap();
    let second = page(format!("limit=2&before={last_id}")).await;
    assert_eq!(second, all[2..4]);
    let res = app.admin_get("/admin/audit?limit=0").await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_once_into_a_private_file() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    config.admin_token = None;
    let app = start(dir, ManualClock::new(T0), config.clone())
        .await
        .unwrap();
    let file = app.dir.path().join("keys/admin.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.starts_with("kha_") && token.len() > 40, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin_keys = |app: &crate::helpers::TestApp, token: String| {
        app.http
            .get(format!("{}/admin/keys", app.internal))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin_keys(&app, token.clone()).await.unwrap().status(), 200);
    let db = crate::helpers::stored_bytes(app.dir.path());
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));

    // A restart neither rewrites the file nor changes the token.
    let (dir, clock) = app.stop().await;
    let app = start(dir, clock, config).await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    assert_eq!(admin_keys(&app, token).await.unwrap().status(), 200);
}

#[tokio::test]
async fn readiness_fails_while_an_algorithm_has_no_key_that_may_sign() {
    let app = spawn_app().await;
    let ready = || app.http.get(format!("{}/readyz", app.internal)).send();
    let res = ready().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["kids"].as_array().unwrap().len(), 2);

    let es256 = app
        .keys()
        .await
        .into_iter()
        .find(|k| k["alg"] == "ES256")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    app.admin_post(&format!("/admin/keys/{es256}/revoke"), json!({}))
        .await;
    let res = ready().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("ES256"),
        "{body}"
    );
}
