//! Named admin credentials: roles, the audit trail's actor, disabling, the bootstrap token.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{json_of, keyhost};
use crate::helpers::{ADMIN_TOKEN, TestApp, eventually, spawn_app};

impl TestApp {
    /// Creates a named admin credential with the bootstrap token; returns its token.
    async fn create_admin(&self, name: &str, role: &str) -> String {
        let res = self
            .admin_post("/admin/admins", json!({"name": name, "role": role}))
            .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["name"], name);
        assert_eq!(body["role"], role);
        let token = body["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("kha_"), "{token}");
        token
    }

    async fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.internal))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("admin request")
    }

    async fn audit_rows(&self) -> Vec<Value> {
        self.admin_json("/admin/audit?limit=1000").await["entries"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[tokio::test]
async fn a_reader_may_read_but_any_change_is_refused_with_permissions_error() {
    let app = spawn_app().await;
    let reader = app.create_admin("rita", "reader").await;
    for path in [
        "/admin/keys",
        "/admin/clients",
        "/admin/audit",
        "/admin/admins",
    ] {
        let res = app
            .request_as(&reader, reqwest::Method::GET, path, None)
            .await;
        assert_eq!(res.status(), 200, "GET {path}");
    }
    let before = app.keys().await;
    for (path, body) in [
        ("/admin/keys/rotate", json!({"alg": "ES256"})),
        ("/admin/clients", json!({"name": "x", "scopes": ["issue"]})),
        (
            "/admin/admins",
            json!({"name": "mallory", "role": "operator"}),
        ),
        ("/admin/admins/bootstrap/disable", json!({})),
    ] {
        let res = app
            .request_as(&reader, reqwest::Method::POST, path, Some(body))
            .await;
        assert_eq!(res.status(), 403, "POST {path}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["identifier"], "PERMISSIONS_ERROR");
        assert!(err["message"].as_str().unwrap().contains("reader"), "{err}");
    }
    // Every change the server documents, so that a new one is covered the day it is added.
    let doc = app.openapi().await;
    let mut changes = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            if ["get", "servers", "parameters"].contains(&method.as_str()) {
                continue;
            }
            let path = path
                .replace("{kid}", "somekid")
                .replace("{id}", "someid")
                .replace("{name}", "somebody");
            let res = app
                .request_as(
                    &reader,
                    method.to_uppercase().parse().unwrap(),
                    &path,
                    Some(json!({})),
                )
                .await;
            assert_eq!(res.status(), 403, "{method} {path}");
            changes += 1;
        }
    }
    assert!(changes >= 10, "{changes}");
    assert_eq!(app.keys().await, before, "nothing changed");
    let admins = app.admin_json("/admin/admins").await;
    assert_eq!(admins["admins"].as_array().unwrap().len(), 1, "{admins}");
    assert_eq!(admins["bootstrap"]["enabled"], true);
}

#[tokio::test]
async fn an_operators_rotation_is_audited_under_its_name_and_the_bootstrap_as_bootstrap() {
    let app = spawn_app().await;
    let alice = app.create_admin("alice", "operator").await;
    let res = app
        .request_as(
            &alice,
            reqwest::Method::POST,
            "/admin/keys/rotate",
            Some(json!({"alg": "ES256"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let rows = app.audit_rows().await;
    let by = |action: &str| -> Vec<String> {
        rows.iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(by("key.rotate"), ["admin:alice"]);
    assert_eq!(by("admin.create"), ["admin:bootstrap"]);
    let created = rows.iter().find(|e| e["action"] == "admin.create").unwrap();
    assert_eq!(created["subject"], "admin:alice");
    let trail = serde_json::to_string(&rows).unwrap();
    assert!(!trail.contains(&alice), "no token in the audit trail");
    assert!(!trail.contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn names_are_unique_forever_and_requests_are_checked() {
    let app = spawn_app().await;
    app.create_admin("bob", "reader").await;
    let res = app
        .admin_post("/admin/admins", json!({"name": "bob", "role": "operator"}))
        .await;
    assert_eq!(res.status(), 409);
    app.admin_post("/admin/admins/bob/disable", json!({})).await;
    let res = app
        .admin_post("/admin/admins", json!({"name": "bob", "role": "reader"}))
        .await;
    assert_eq!(res.status(), 409, "a disabled name is not reused either");
    for (body, identifier) in [
        (json!({"name": "Bob", "role": "reader"}), "VALIDATION_ERROR"),
        (
            json!({"name": "bootstrap", "role": "reader"}),
            "VALIDATION_ERROR",
        ),
        (json!({"name": "carol", "role": "root"}), "BAD_VALUE"),
        (json!({"name": "carol"}), "MISSING_VALUE"),
        (json!({"role": "reader"}), "MISSING_VALUE"),
        (
            json!({"name": "carol", "role": "reader", "x": 1}),
            "BAD_VALUE",
        ),
    ] {
        let res = app.admin_post("/admin/admins", body.clone()).await;
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["identifier"],
            identifier,
            "{body}"
        );
    }
    let res = app
        .admin_post("/admin/admins/nobody/disable", json!({}))
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_disabled_credential_stops_at_once_and_the_bootstrap_can_go_once_an_operator_exists() {
    let app = spawn_app().await;
    // No named operator yet: the bootstrap token is the only way in and cannot go.
    let res = app
        .admin_post("/admin/admins/bootstrap/disable", json!({}))
        .await;
    assert_eq!(res.status(), 409);
    let ops = app.create_admin("ops", "operator").await;
    let reader = app.create_admin("viewer", "reader").await;
    let res = app
        .request_as(
            &ops,
            reqwest::Method::POST,
            "/admin/admins/viewer/disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .request_as(&reader, reqwest::Method::GET, "/admin/keys", None)
        .await;
    assert_eq!(res.status(), 401, "disabled at once");
    // The operator disables the bootstrap token; it stops working, the operator goes on.
    let res = app
        .request_as(
            &ops,
            reqwest::Method::POST,
            "/admin/admins/bootstrap/disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let listing: Value = res.json().await.unwrap();
    assert_eq!(listing["bootstrap"]["enabled"], false);
    assert_eq!(app.admin_get("/admin/keys").await.status(), 401);
    let res = app
        .request_as(&ops, reqwest::Method::GET, "/admin/keys", None)
        .await;
    assert_eq!(res.status(), 200);
    // The last operator cannot lock everyone out.
    let res = app
        .request_as(
            &ops,
            reqwest::Method::POST,
            "/admin/admins/ops/disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 409);
    let rows = app
        .request_as(&ops, reqwest::Method::GET, "/admin/audit", None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let disabled: Vec<&Value> = rows["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "admin.disable")
        .collect();
    assert_eq!(disabled.len(), 2);
    assert!(disabled.iter().all(|e| e["actor"] == "admin:ops"));
}

#[tokio::test]
async fn admins_made_with_the_cli_work_on_the_running_server_and_forged_rows_do_not() {
    let app = spawn_app().await;
    let out = keyhost(
        app.dir.path(),
        &["admins", "create", "--name", "dora", "--role", "operator"],
    );
    let token = json_of(&out)["token"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(5),
        "the server never saw the admin",
        || async {
            app.request_as(&token, reqwest::Method::GET, "/admin/keys", None)
                .await
                .status()
                == 200
        },
    )
    .await;
    let listed = json_of(&keyhost(app.dir.path(), &["admins", "list"]));
    assert_eq!(listed["admins"][0]["name"], "dora");
    assert!(!listed.to_string().contains(&token));
    // A row written without the master key (here: a role raised in the database) is refused.
    let reader = app.create_admin("eve", "reader").await;
    crate::helpers::RawDb::open(app.dir.path()).execute(
        "UPDATE admins SET role = 'operator' WHERE name = 'eve'",
        &[],
    );
    app.settle().await;
    let res = app
        .request_as(&reader, reqwest::Method::GET, "/admin/keys", None)
        .await;
    assert_eq!(res.status(), 401);
    let listing = app.admin_json("/admin/admins").await;
    let eve = listing["admins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "eve")
        .unwrap()
        .clone();
    assert_eq!(eve["integrity"], "failed");
}
