//! Named admin credentials: roles, the audit trail's actor, disabling, the bootstrap token.

use std::sync::Arc;
use std::time::Duration;

use keyhost::clock::ManualClock;
use serde_json::{Value, json};

use crate::cli::{json_of, keyhost};
use crate::helpers::{
    ADMIN_TOKEN, T0, TestApp, eventually, on_postgres, spawn_app, start, test_config,
};

/// Two servers on one store: two replicas on PostgreSQL; on SQLite, which has one server per
/// store, the same server twice. The periodic re-read is slow: what a replica learns, it learns
/// from a notification or from the store itself.
pub(crate) async fn two_servers() -> (Arc<TestApp>, Arc<TestApp>) {
    if !on_postgres() {
        let app = Arc::new(spawn_app().await);
        return (app.clone(), app);
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = test_config(dir.path());
        config.database.refresh_interval = Duration::from_secs(30);
        config.database.signing_lease = Duration::from_secs(60);
        apps.push(Arc::new(
            start(dir.clone(), clock.clone(), config)
                .await
                .expect("replica starts"),
        ));
    }
    let b = apps.pop().unwrap();
    (apps.pop().unwrap(), b)
}

impl TestApp {
    /// Creates a named admin credential with the bootstrap token; returns its token.
    pub(crate) async fn create_admin(&self, name: &str, role: &str) -> String {
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

    pub(crate) async fn request_as(
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

/// `POST /admin/clients` as `token`: the status.
async fn create_client_as(app: &TestApp, token: &str) -> u16 {
    app.request_as(
        token,
        reqwest::Method::POST,
        "/admin/clients",
        Some(json!({"name": "x", "scopes": ["issue"]})),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test]
async fn a_credential_disabled_through_one_replica_changes_nothing_through_another_at_once() {
    let (a, b) = two_servers().await;
    let ops = a.create_admin("ops", "operator").await;
    let temp = a.create_admin("temp", "operator").await;
    for token in [&ops, &temp] {
        eventually(
            Duration::from_secs(5),
            "the replica never saw the admin",
            || {
                let b = b.clone();
                async move { create_client_as(&b, token).await == 201 }
            },
        )
        .await;
    }
    let clients = || async {
        let res = a
            .request_as(&ops, reqwest::Method::GET, "/admin/clients", None)
            .await;
        res.json::<Value>().await.unwrap()["clients"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = clients().await;
    // Disabled through A: the very next change through B is refused.
    let res = a
        .request_as(
            &ops,
            reqwest::Method::POST,
            "/admin/admins/temp/disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(create_client_as(&b, &temp).await, 401, "temp through B");
    // The bootstrap token too.
    let res = a
        .request_as(
            &ops,
            reqwest::Method::POST,
            "/admin/admins/bootstrap/disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        create_client_as(&b, ADMIN_TOKEN).await,
        401,
        "bootstrap through B"
    );
    assert_eq!(clients().await, before, "no client created");
    // Both stop reading too, once B has heard of it.
    for token in [&temp, &ADMIN_TOKEN.to_owned()] {
        eventually(Duration::from_secs(5), "still reads through B", || {
            let b = b.clone();
            async move {
                b.request_as(token, reqwest::Method::GET, "/admin/keys", None)
                    .await
                    .status()
                    == 401
            }
        })
        .await;
    }
}

#[tokio::test]
async fn two_operators_disabling_each_other_at_once_never_leave_no_operator() {
    let (a, b) = two_servers().await;
    let (mut survivor, mut token) = ("bootstrap".to_owned(), ADMIN_TOKEN.to_owned());
    for round in 0..4 {
        let names = [format!("x{round}"), format!("y{round}")];
        let mut tokens = Vec::new();
        for name in &names {
            let res = a
                .request_as(
                    &token,
                    reqwest::Method::POST,
                    "/admin/admins",
                    Some(json!({"name": name, "role": "operator"})),
                )
                .await;
            assert_eq!(res.status(), 201);
            let body: Value = res.json().await.unwrap();
            tokens.push(body["token"].as_str().unwrap().to_owned());
        }
        // The one who made them goes: the two new ones are the only operators left.
        let path = format!("/admin/admins/{survivor}/disable");
        let res = a
            .request_as(&tokens[0], reqwest::Method::POST, &path, Some(json!({})))
            .await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        for token in &tokens {
            eventually(
                Duration::from_secs(5),
                "the replica never saw the admin",
                || {
                    let b = b.clone();
                    async move {
                        b.request_as(token, reqwest::Method::GET, "/admin/keys", None)
                            .await
                            .status()
                            == 200
                    }
                },
            )
            .await;
        }
        // Each disables the other, through a different server, at the same moment.
        let paths = [1, 0].map(|other| format!("/admin/admins/{}/disable", names[other]));
        let (first, second) = tokio::join!(
            a.request_as(
                &tokens[0],
                reqwest::Method::POST,
                &paths[0],
                Some(json!({}))
            ),
            b.request_as(
                &tokens[1],
                reqwest::Method::POST,
                &paths[1],
                Some(json!({}))
            ),
        );
        let statuses = [first.status().as_u16(), second.status().as_u16()];
        let won: Vec<usize> = (0..2).filter(|i| statuses[*i] == 200).collect();
        assert_eq!(won.len(), 1, "round {round}: {statuses:?}");
        (survivor, token) = (names[won[0]].clone(), tokens[won[0]].clone());
        let res = a
            .request_as(&token, reqwest::Method::GET, "/admin/admins", None)
            .await;
        let listing: Value = res.json().await.unwrap();
        let operators: Vec<&Value> = listing["admins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["role"] == "operator" && a.get("disabledAt").is_none())
            .map(|a| &a["name"])
            .collect();
        assert_eq!(operators, [&json!(survivor)], "round {round}: {listing}");
        assert_eq!(create_client_as(&b, &token).await, 201);
    }
}

#[tokio::test]
async fn one_name_created_at_once_through_two_servers_is_created_once() {
    let (a, b) = two_servers().await;
    for round in 0..5 {
        let body = json!({"name": format!("twin{round}"), "role": "reader"});
        let (first, second) = tokio::join!(
            a.admin_post("/admin/admins", body.clone()),
            b.admin_post("/admin/admins", body.clone()),
        );
        let mut statuses = [first.status().as_u16(), second.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}");
    }
    let listing = a.admin_json("/admin/admins").await;
    assert_eq!(listing["admins"].as_array().unwrap().len(), 5, "{listing}");
    let created = a
        .audit_rows()
        .await
        .into_iter()
        .filter(|e| e["action"] == "admin.create")
        .count();
    assert_eq!(created, 5, "one audit row per credential created");
}

#[tokio::test]
async fn a_reader_changes_nothing_with_head_options_or_a_method_override() {
    let app = spawn_app().await;
    let reader = app.create_admin("rita", "reader").await;
    let before = (app.keys().await, app.admin_json("/admin/clients").await);
    for path in [
        "/admin/keys/rotate",
        "/admin/clients",
        "/admin/admins/bootstrap/disable",
    ] {
        for method in ["HEAD", "OPTIONS", "PATCH", "PUT", "DELETE", "TRACE", "FOO"] {
            let res = app
                .request_as(
                    &reader,
                    method.parse().unwrap(),
                    path,
                    Some(json!({"alg": "ES256"})),
                )
                .await;
            assert!(
                [403, 405, 200].contains(&res.status().as_u16()),
                "{method} {path}: {}",
                res.status()
            );
        }
        for header in [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
        ] {
            let res = app
                .http
                .get(format!("{}{path}", app.internal))
                .bearer_auth(&reader)
                .header(header, "POST")
                .json(&json!({"alg": "ES256", "name": "x", "scopes": ["issue"]}))
                .send()
                .await
                .unwrap();
            assert!(
                [200, 405].contains(&res.status().as_u16()),
                "{header} {path}"
            );
        }
    }
    assert_eq!(
        (app.keys().await, app.admin_json("/admin/clients").await),
        before
    );
    assert_eq!(
        app.admin_json("/admin/admins").await["bootstrap"]["enabled"],
        true
    );
    let changes = app
        .audit_rows()
        .await
        .into_iter()
        .filter(|e| e["actor"] == "admin:rita")
        .count();
    assert_eq!(changes, 0);
}
