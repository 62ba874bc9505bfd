//! The API description is the routes: the document served at `/openapi.json` is the one built
//! from the route tables, every operation it lists is routed on the listeners it names, and
//! every method a listener routes on a path is one it lists (another test, in `errors.rs`,
//! checks the first half against the running server on its own).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::spawn_app;

/// The methods a route may be registered for (`HEAD` follows `GET`; `CONNECT` is not routed).
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"];

/// (method, path) of every operation in `doc` whose `servers` (or the document's) include `url`.
fn operations_on(doc: &Value, url: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let servers = item.get("servers").unwrap_or(&doc["servers"]);
        if !servers.as_array().unwrap().iter().any(|s| s["url"] == url) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            if method != "servers" && method != "parameters" {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// (method, path) of every operation of a route table.
fn operations_of(routes: keyhost::http::openapi::Routes) -> BTreeSet<(String, String)> {
    let description = serde_json::to_value(routes.description()).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in description["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_served_document_is_the_one_built_from_the_routes() {
    let app = spawn_app().await;
    let served = app.openapi().await;
    let built: Value = serde_json::from_str(keyhost::http::openapi::json()).unwrap();
    assert_eq!(served, built);
    let public = operations_of(keyhost::http::public_routes());
    let internal = operations_of(keyhost::http::internal_routes());
    assert_eq!(
        operations_on(&served, keyhost::http::openapi::PUBLIC_SERVER),
        public
    );
    assert_eq!(
        operations_on(&served, keyhost::http::openapi::INTERNAL_SERVER),
        internal
    );
    assert!(public.contains(&("GET".into(), "/.well-known/jwks.json".into())));
    assert!(!internal.contains(&("GET".into(), "/.well-known/jwks.json".into())));
    assert!(!public.contains(&("POST".into(), "/v1/tokens".into())));
}

#[tokio::test]
async fn every_method_a_listener_routes_on_a_documented_path_is_documented_for_it() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let listeners = [
        (keyhost::http::openapi::PUBLIC_SERVER, app.public.clone()),
        (
            keyhost::http::openapi::INTERNAL_SERVER,
            app.internal.clone(),
        ),
    ];
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    let mut probed = 0;
    for (server, base) in &listeners {
        let documented = operations_on(&doc, server);
        for path in &paths {
            let on_listener = documented.iter().any(|(_, p)| p == *path);
            let concrete = path.replace("{kid}", "x").replace("{id}", "x");
            for method in METHODS {
                let res = app
                    .http
                    .request(method.parse().unwrap(), format!("{base}{concrete}"))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let allow = res
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: Value = res.json().await.unwrap_or(Value::Null);
                let unknown_path = status == 404 && body["message"] == "no such endpoint";
                let routed = !unknown_path && status != 405;
                let expected = documented.contains(&(method.to_owned(), (*path).clone()));
                assert_eq!(
                    routed, expected,
                    "{method} {path} on {server}: {status} {body}"
                );
                if !on_listener {
                    assert!(unknown_path, "{method} {path} on {server}: {status} {body}");
                } else if !expected {
                    assert_eq!(body["identifier"], "METHOD_NOT_ALLOWED");
                    assert!(allow.is_some(), "{method} {path}: 405 without Allow");
                }
                probed += 1;
            }
        }
    }
    assert!(probed > 300, "{probed}");
}
