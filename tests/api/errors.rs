use std::time::Duration;

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, RawDb, StoreCleanup, eventually, spawn_app};
use crate::process::{Process, base_env};

async fn expect_error(res: reqwest::Response, status: u16, identifier: &str) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["identifier"], identifier, "{body}");
    assert!(body["message"].is_string());
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only identifier and message: {body}"
    );
    body
}

#[tokio::test]
async fn unknown_routes_get_404_not_found_on_both_listeners() {
    let app = spawn_app().await;
    for base in [&app.public, &app.internal] {
        let res = app.http.get(format!("{base}/nope")).send().await.unwrap();
        expect_error(res, 404, "NOT_FOUND").await;
    }
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!("{}/v1/tokens", app.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["allow"], "POST");
    expect_error(res, 405, "METHOD_NOT_ALLOWED").await;
    let res = app
        .http
        .delete(format!("{}/.well-known/jwks.json", app.public))
        .send()
        .await
        .unwrap();
    expect_error(res, 405, "METHOD_NOT_ALLOWED").await;
}

#[tokio::test]
async fn answers_the_internal_listener_makes_outside_its_routes_are_not_stored_either() {
    let app = spawn_app().await;
    let nope = app
        .http
        .get(format!("{}/nope", app.internal))
        .send()
        .await
        .unwrap();
    let wrong_method = app
        .http
        .get(format!("{}/v1/tokens", app.internal))
        .send()
        .await
        .unwrap();
    for (res, status) in [(nope, 404), (wrong_method, 405)] {
        assert_eq!(res.status(), status);
        assert_eq!(res.headers()["cache-control"], "no-store", "{status}");
    }
}

#[tokio::test]
async fn an_expected_503_is_logged_as_a_warning_and_a_500_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let process = Process::start(&base_env(dir.path()), &[]);
    let http = reqwest::Client::new();
    // No KEYHOST_KYC_WEBHOOK_SECRET: the webhook answers 503, as it means to.
    let res = http
        .post(format!("{}/webhooks/kyc-complete", process.internal))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    RawDb::open(dir.path()).batch("DROP TABLE audit;");
    let res = http
        .get(format!("{}/admin/audit", process.internal))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    let failures = || {
        process
            .log()
            .into_iter()
            .filter(|l| l["message"] == "response failed")
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(10), "both answers logged", || async {
        failures().len() == 2
    })
    .await;
    let failures = failures();
    assert_eq!(failures[0]["level"], "WARN", "{failures:?}");
    assert_eq!(failures[0]["status"], 503, "{failures:?}");
    assert_eq!(failures[1]["level"], "ERROR", "{failures:?}");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let big = format!(
        "{{\"name\": \"{}\", \"scopes\": [\"issue\"]}}",
        "x".repeat(200_000)
    );
    let res = app
        .http
        .post(format!("{}/admin/clients", app.internal))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(res, 413, "BAD_VALUE").await;
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_utf8_gets_encoding_error() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(format!("{}/admin/clients", app.internal))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(b"{\"name\": \"\xff\xfe\", \"scopes\": [\"issue\"]}".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(res, 400, "ENCODING_ERROR").await;
}

#[tokio::test]
async fn invalid_json_and_wrong_content_type_are_named_as_such() {
    let app = spawn_app().await;
    let send = |body: &'static str, ct: &'static str| {
        app.http
            .post(format!("{}/admin/clients", app.internal))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    expect_error(
        send("{,}", "application/json").await.unwrap(),
        400,
        "JSON_ERROR",
    )
    .await;
    expect_error(
        send("{}", "application/xml").await.unwrap(),
        415,
        "BAD_VALUE",
    )
    .await;
    let body = expect_error(
        send("{\"scopes\": [\"issue\"]}", "application/json")
            .await
            .unwrap(),
        400,
        "MISSING_VALUE",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("name"));
    let body = expect_error(
        send(
            "{\"name\": \"a\", \"scopes\": \"issue\"}",
            "application/json",
        )
        .await
        .unwrap(),
        400,
        "BAD_VALUE",
    )
    .await;
    assert!(body["message"].as_str().unwrap().starts_with("scopes"));
}

#[tokio::test]
async fn bad_query_parameters_get_bad_value() {
    let app = spawn_app().await;
    let res = app.admin_get("/admin/audit?limit=lots").await;
    expect_error(res, 400, "BAD_VALUE").await;
    let res = app.admin_get("/admin/audit?limit=0").await;
    expect_error(res, 400, "BAD_VALUE").await;
}

#[tokio::test]
async fn a_broken_database_gives_500_internal_error_without_details() {
    let app = spawn_app().await;
    RawDb::open(app.dir.path()).batch("DROP TABLE audit;");
    let res = app.admin_get("/admin/audit").await;
    let body = expect_error(res, 500, "INTERNAL_ERROR").await;
    let message = body["message"].as_str().unwrap();
    assert!(
        !message.contains("audit") && !message.to_lowercase().contains("sql"),
        "{message}"
    );
    // The hot paths do not depend on the database.
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_is_routed() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    let listener = |server: &Value| match server["url"].as_str().unwrap() {
        u if u.ends_with(":8080") => app.public.clone(),
        u if u.ends_with(":8081") => app.internal.clone(),
        other => panic!("unknown server {other}"),
    };
    for (path, item) in paths {
        // The listeners a path is on: its own `servers`, else the document's.
        let servers = item.get("servers").unwrap_or(&doc["servers"]);
        let bases: Vec<String> = servers.as_array().unwrap().iter().map(listener).collect();
        assert!(!bases.is_empty(), "{path} names no listener");
        let concrete = path.replace("{kid}", "x").replace("{id}", "x");
        let methods = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "servers" && *k != "parameters");
        for (method, base) in methods.flat_map(|m| bases.iter().map(move |b| (m, b))) {
            let res = app
                .http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{base}{concrete}"),
                )
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["message"] != "no such endpoint",
                "{method} {path} is documented on {base} but not routed there ({status} {body})"
            );
        }
    }
}
