//! Someone who can write the database but does not hold the master key (a stolen backup, a
//! shared database with too-wide grants, an operator's mistake) cannot make keyhost publish a
//! key, accept a client, use an admin token, send an issuance or follow a KYC mapping: every row
//! keyhost trusts carries a MAC it checks on every load. What fails is reported, never used, and
//! the rest keeps serving.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use keyhost::clock::ManualClock;
use keyhost::keys::Alg;
use keyhost::store::sql::Value as SqlValue;
use serde_json::{Value, json};

use crate::helpers::{PARTNER_ID, RawDb, TestApp, on_postgres, spawn_app, start, test_config};
use crate::issuance::spawn_issuing;

fn db(app: &TestApp) -> RawDb {
    RawDb::open(app.dir.path())
}

fn text(t: impl Into<String>) -> SqlValue {
    SqlValue::Text(t.into())
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

/// Inserts a key row the way an attacker with write access would: a real P-256 key of their
/// own, published and `state`, with a dummy sealed blob (they cannot seal without the master
/// key) and no MAC (or `mac`). Returns the attacker's key material and the kid.
fn forge_key(
    app: &TestApp,
    state: &str,
    mac: Option<Vec<u8>>,
) -> (keyhost::keys::material::KeyMaterial, String) {
    let m = keyhost::keys::material::generate(Alg::ES256, 2048).unwrap();
    let jwk = m.pair.public_jwk();
    let kid = format!("forged-{state}");
    let now = app.now();
    let sealed: Option<Vec<u8>> = (state != "revoked").then(|| vec![1u8; 64]);
    db(app).execute(
        "INSERT INTO keys (kid, alg, state, origin, bits, public_jwk, private_key_enc,
                           master_key_id, created_at, published_at, signable_at,
                           activated_at, retired_at, expires_at, mac)
         VALUES (?1, 'ES256', CAST(?2 AS TEXT), 'imported', 256, ?3, ?4,
                 (SELECT value FROM settings WHERE name = 'master_key_id'),
                 CAST(?5 AS BIGINT), ?5, ?5, CASE WHEN ?2 = 'active' THEN ?5 END,
                 CASE WHEN ?2 = 'retired' THEN ?5 END,
                 CASE WHEN ?2 = 'retired' THEN ?5 + 86400 END, ?6)",
        &[
            text(kid.clone()),
            text(state),
            text(serde_json::to_string(&jwk).unwrap()),
            sealed.map_or(SqlValue::Null, SqlValue::Blob),
            SqlValue::Int(now),
            mac.map_or(SqlValue::Null, SqlValue::Blob),
        ],
    );
    (m, kid)
}

#[tokio::test]
async fn a_key_row_inserted_behind_keyhosts_back_is_never_published_and_is_reported() {
    let app = spawn_app().await;
    let genuine = app.jwks().await["keys"].as_array().unwrap().len();
    // Retired rows are published without being opened: the case the review reproduced. A copy
    // of a genuine row's MAC does not help either.
    let copied = db(&app).query_bytes("SELECT mac FROM keys ORDER BY id LIMIT 1", &[]);
    let (attacker, retired) = forge_key(&app, "retired", None);
    forge_key(&app, "pending", Some(copied));
    app.advance(1).await;

    let jwks = app.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), genuine, "{jwks}");
    assert!(!jwks.to_string().contains("forged"), "{jwks}");
    let listed = app.keys().await;
    let flagged: Vec<&Value> = listed
        .iter()
        .filter(|k| k["integrity"] == "failed")
        .collect();
    assert_eq!(flagged.len(), 2, "{listed:?}");
    assert!(listed.iter().filter(|k| k["integrity"].is_null()).count() >= genuine);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "keyhost_integrity_failures{table=\"keys\"}"),
        2.0,
        "{metrics}"
    );

    // A token signed by the inserted key does not pass keyhost doctor (its kid is not served).
    let record = keyhost::keys::KeyRecord {
        id: 0,
        kid: retired.clone(),
        alg: Alg::ES256,
        state: keyhost::keys::KeyState::Active,
        origin: keyhost::keys::Origin::Imported,
        bits: 256,
        public_jwk: attacker.pair.public_jwk(),
        created_at: app.now(),
        published_at: Some(app.now()),
        signable_at: Some(app.now()),
        activated_at: Some(app.now()),
        retired_at: None,
        expires_at: None,
        revoked_at: None,
        lead_remaining: 0,
        grace_remaining: 0,
        last_exp: None,
    };
    let now = keyhost::clock::Clock::now(&keyhost::clock::SystemClock);
    let token = keyhost::signer::SigningKey::new(&record, attacker.pair)
        .mint(
            &aws_lc_rs::rand::SystemRandom::new(),
            now,
            keyhost::signer::TokenClaims {
                partner_id: PARTNER_ID,
                scope: "issue",
                email: "victim@example.com",
                ttl: 300,
            },
        )
        .unwrap()
        .token;
    let findings = keyhost::doctor::run(&keyhost::doctor::DoctorArgs {
        jwks_url: format!("{}/.well-known/jwks.json", app.public),
        token: Some(token),
        partner_id: Some(PARTNER_ID.into()),
        scope: "issue".into(),
        ca_file: None,
        json: false,
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
    })
    .await
    .unwrap();
    let kid = findings.iter().find(|f| f.check == "token.kid").unwrap();
    assert_eq!(kid.verdict, keyhost::doctor::Verdict::Fail, "{findings:?}");

    // The forged rows stop nothing: a restart serves the genuine keys, and revoking a forged
    // row (the remedy) clears the report.
    let (dir, clock) = app.stop().await;
    let config = test_config(dir.path());
    let app = start(dir, clock, config).await.unwrap();
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), genuine);
    let res = app
        .admin_post(&format!("/admin/keys/{retired}/revoke"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .admin_post("/admin/keys/forged-pending/retire", json!({}))
        .await;
    assert_eq!(
        res.status(),
        409,
        "a forged row is never retired into the JWKS"
    );
    app.advance(1).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "keyhost_integrity_failures{table=\"keys\"}"),
        1.0
    );
    assert!(!app.jwks().await.to_string().contains("forged"));
}

#[tokio::test]
async fn a_tampered_schedule_fails_the_check_and_the_key_never_signs_early() {
    let app = spawn_app().await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let before = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await["kid"]
        .clone();
    let pending = app.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Pull the successor's signing time and lead into the past, so it would take over at once.
    let changed = db(&app).execute(
        "UPDATE keys SET signable_at = published_at, lead_remaining = 0 WHERE kid = ?1",
        &[text(pending.clone())],
    );
    assert_eq!(changed, 1);
    app.advance(60).await;
    let minted = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    assert_eq!(
        minted["kid"], before,
        "the tampered successor did not take over"
    );
    assert!(!app.jwks().await.to_string().contains(&pending));
    let keys = app.keys().await;
    let row = keys.iter().find(|k| k["kid"] == pending.as_str()).unwrap();
    assert_eq!(row["integrity"], "failed");
}

#[tokio::test]
async fn a_client_inserted_with_a_chosen_secret_cannot_mint() {
    let app = spawn_app().await;
    let secret = "chosen-secret-chosen-secret-chosen-secret";
    let hash = digest(&SHA256, secret.as_bytes()).as_ref().to_vec();
    db(&app).execute(
        "INSERT INTO clients (id, name, scopes, secret_hash, created_at)
         VALUES ('0123456789abcdef', 'forged', '[\"issue\"]', ?1, 0)",
        &[SqlValue::Blob(hash)],
    );
    // A genuine client change makes every replica reload its clients.
    app.create_client(&["issue"]).await;
    app.settle().await;
    let res = app
        .mint(
            &format!("khc_0123456789abcdef_{secret}"),
            json!({"email": "u@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 401);
    let listed: Value = app.admin_json("/admin/clients").await;
    let forged = listed["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "0123456789abcdef")
        .unwrap();
    assert_eq!(forged["integrity"], "failed");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "keyhost_integrity_failures{table=\"clients\"}"),
        1.0
    );
    // Disabling it is allowed (the remedy), and it still cannot mint.
    let res = app
        .admin_post("/admin/clients/0123456789abcdef/disable", json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .mint(
            &format!("khc_0123456789abcdef_{secret}"),
            json!({"email": "u@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn an_admin_token_hash_replaced_in_the_database_is_ignored() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    config.admin_token = None;
    let app = start(dir, ManualClock::new(crate::helpers::T0), config.clone())
        .await
        .unwrap();
    let generated = std::fs::read_to_string(app.dir.path().join("keys/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let chosen = "chosen-admin-token-chosen-admin-token";
    let changed = db(&app).execute(
        "UPDATE settings SET value = ?1 WHERE name = 'admin_token_sha256'",
        &[text(hex::encode(digest(&SHA256, chosen.as_bytes())))],
    );
    assert_eq!(changed, 1);
    let (dir, clock) = app.stop().await;
    let app = start(dir, clock, config).await.unwrap();
    let as_admin = |token: String| {
        let (http, url) = (app.http.clone(), format!("{}/admin/keys", app.internal));
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(as_admin(chosen.to_owned()).await, 401);
    assert_eq!(
        as_admin(generated).await,
        200,
        "the token in the file still works"
    );
}

#[tokio::test]
async fn an_issuance_or_a_kyc_mapping_inserted_behind_keyhosts_back_is_never_acted_on() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    db(&app).execute(
        "INSERT INTO issuances (id, source, request_hash, email, issuer_did, credential_id,
                                credential_subject, on_duplicate, state, next_attempt_at,
                                created_at, updated_at)
         VALUES ('iss_forged', 'webhook:kyc', 'x', 'attacker@example.com', 'did:x', 'p',
                 '{\"kycVerified\": true}', 'revoke', 'queued', 0, 0, 0)",
        &[],
    );
    db(&app).execute(
        "INSERT INTO kyc_subjects (client_id, email, created_at)
         VALUES ('user-77', 'attacker@example.com', 0)",
        &[],
    );
    // A restart resumes unfinished issuances: the forged one is not sent.
    let port: u16 = app.public.rsplit(':').next().unwrap().parse().unwrap();
    let (dir, clock) = app.stop().await;
    let config = crate::issuance::issuing_config(dir.path(), port, &upstream.base_url);
    let app = start(dir, clock, config).await.unwrap();
    let res = app
        .admin_post("/admin/issuances/iss_forged/resume", json!({}))
        .await;
    assert_eq!(res.status(), 409);
    // An approved verification for the forged mapping's clientId is unmatched, not issued.
    let body = serde_json::to_vec(&json!({
        "final": true, "status": {"overall": "APPROVED"}, "scanRef": "scan-77", "clientId": "user-77",
    }))
    .unwrap();
    let sig = hex::encode(
        aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"idenfy-test-signing-key"),
            &body,
        )
        .as_ref(),
    );
    let res = app
        .http
        .post(format!("{}/webhooks/idenfy", app.internal))
        .header("content-type", "application/json")
        .header("Idenfy-Signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["action"], "unmatched", "{answer}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        upstream.control.issue_calls().is_empty(),
        "nothing was sent to AIR Kit"
    );
    let subjects: Value = app.admin_json("/admin/kyc-subjects").await;
    assert_eq!(subjects["subjects"][0]["integrity"], "failed");
}

/// Runs the keyhost CLI on `app`'s directories.
fn cli(app_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYHOST_DATA_DIR", app_dir.join("data"))
        .env("KEYHOST_KEYS_DIR", app_dir.join("keys"))
        .envs(crate::helpers::store_env(app_dir))
        .env("KEYHOST_PARTNER_ID", PARTNER_ID)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_store_from_before_row_macs_is_refused_until_an_operator_accepts_its_rows() {
    let app = spawn_app().await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let kids = app.jwks().await["keys"].clone();
    // What a store written by the previous version looks like after the migration, made while
    // no server runs (a running one would meet keys it no longer trusts and make new ones).
    let (dir, clock) = app.stop().await;
    let old = RawDb::open(dir.path());
    for sql in [
        "UPDATE keys SET mac = NULL",
        "UPDATE clients SET mac = NULL",
        "UPDATE settings SET mac = NULL",
        "DELETE FROM settings WHERE name = 'row_macs_since'",
    ] {
        assert!(old.execute(sql, &[]) > 0, "{sql}");
    }
    drop(old);
    let config = test_config(dir.path());
    let refused = start(dir.clone(), clock.clone(), config.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("keyhost integrity accept-legacy-rows"),
        "{refused:#}"
    );
    // Without --yes the command only lists the rows.
    let listed = cli(dir.path(), &["integrity", "accept-legacy-rows"]);
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["rowsWithoutMac"].as_array().unwrap().len(),
        3,
        "{listed}"
    );
    assert!(
        start(dir.clone(), clock.clone(), config.clone())
            .await
            .is_err()
    );
    let accepted = cli(dir.path(), &["integrity", "accept-legacy-rows", "--yes"]);
    assert!(accepted.status.success(), "{:?}", accepted);
    let app = start(dir, clock, config.clone()).await.unwrap();
    assert_eq!(app.jwks().await["keys"], kids);
    app.mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    let audit: Value = app.admin_json("/admin/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "integrity.accept-legacy-rows"),
        "{audit}"
    );
    // Once: a row without a MAC written later is not trusted, even across a restart.
    assert_eq!(db(&app).execute("UPDATE clients SET mac = NULL", &[]), 1);
    let (dir, clock) = app.stop().await;
    let app = start(dir, clock, config).await.unwrap();
    let res = app.mint(&api_key, json!({"email": "u@example.com"})).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn deleting_the_marker_never_authenticates_forged_rows_not_even_through_the_cli() {
    let app = spawn_app().await;
    let secret = "chosen-secret-chosen-secret-chosen-secret";
    let conn = db(&app);
    conn.execute(
        "INSERT INTO clients (id, name, scopes, secret_hash, created_at)
         VALUES ('0123456789abcdef', 'forged', '[\"issue\"]', ?1, 0)",
        &[SqlValue::Blob(
            digest(&SHA256, secret.as_bytes()).as_ref().to_vec(),
        )],
    );
    // A retired row with the attacker's key and no private key at all, which the schema's
    // checks refuse, written with them switched off.
    let m = keyhost::keys::material::generate(Alg::ES256, 2048).unwrap();
    let insert = "INSERT INTO keys (kid, alg, state, origin, bits, public_jwk, created_at,
                                    published_at, signable_at, retired_at, expires_at)
                  VALUES ('evil-kid', 'ES256', 'retired', 'imported', 256, ?1, 0, 0, 0, 0,
                          4000000000)";
    let jwk = [text(serde_json::to_string(&m.pair.public_jwk()).unwrap())];
    let refused = conn
        .try_execute(insert, &jwk)
        .expect_err("the checks refuse it");
    assert!(
        refused.to_lowercase().contains("check constraint"),
        "{refused}"
    );
    conn.execute_unchecked("keys", insert, &jwk);
    assert_eq!(
        conn.execute("DELETE FROM settings WHERE name = 'row_macs_since'", &[]),
        1
    );
    drop(conn);
    // A CLI command run meanwhile authenticates nothing.
    let listed = cli(app.dir.path(), &["clients", "list"]);
    assert!(listed.status.success());
    let refused = cli(
        app.dir.path(),
        &["integrity", "accept-legacy-rows", "--yes"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("authenticated already"));
    // Nor does a restart: the store's other rows carry MACs, so it is no old store.
    let (dir, clock) = app.stop().await;
    let config = test_config(dir.path());
    let app = start(dir, clock, config).await.unwrap();
    let res = app
        .mint(
            &format!("khc_0123456789abcdef_{secret}"),
            json!({"email": "u@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 401);
    assert!(!app.jwks().await.to_string().contains("evil-kid"));
    let keys = app.keys().await;
    let evil = keys.iter().find(|k| k["kid"] == "evil-kid").unwrap();
    assert_eq!(evil["integrity"], "failed");
}

#[tokio::test]
async fn an_unreadable_row_is_reported_and_the_rest_keeps_serving() {
    let (app, _upstream, api_key) = spawn_issuing(|_| {}, |_| {}).await;
    let genuine = app.jwks().await;
    let conn = db(&app);
    conn.execute(
        "INSERT INTO keys (kid, alg, state, origin, bits, public_jwk, private_key_enc,
                           master_key_id, created_at, published_at, signable_at, retired_at,
                           expires_at)
         VALUES ('garbled', 'ES256', 'retired', 'generated', 256, 'not json', ?1, 'x', 0, 0, 0,
                 0, 4000000000)",
        &[SqlValue::Blob(vec![1])],
    );
    conn.execute(
        "INSERT INTO clients (id, name, scopes, secret_hash, created_at)
         VALUES ('fedcba9876543210', 'garbled', 'not json', ?1, 0)",
        &[SqlValue::Blob(vec![0])],
    );
    // A count of attempts keyhost cannot read: text where the integer belongs (which SQLite
    // stores as it is), or on PostgreSQL, whose column holds integers only, one below zero.
    let attempts = if on_postgres() {
        SqlValue::Int(-1)
    } else {
        text("many")
    };
    conn.execute(
        "INSERT INTO issuances (id, source, request_hash, email, issuer_did, credential_id,
                                credential_subject, on_duplicate, state, attempts, created_at,
                                updated_at)
         VALUES ('iss_garbled', 'x', 'x', 'a@example.com', 'd', 'c', '{}', 'revoke', 'queued',
                 ?1, 0, 0)",
        &[attempts],
    );
    drop(conn);
    // A change that makes every view reload.
    let (_, other_key) = app.create_client(&["issue"]).await;
    app.advance(1).await;
    assert_eq!(app.jwks().await, genuine);
    app.mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    let keys = app.admin_get("/admin/keys").await;
    assert_eq!(keys.status(), 200);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "keyhost_integrity_failures{table=\"keys\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "keyhost_integrity_failures{table=\"clients\"}"),
        1.0
    );
    // Disabling a client next to the unreadable one stops it at once.
    let id = api_key.split('_').nth(1).unwrap().to_owned();
    let res = app
        .admin_post(&format!("/admin/clients/{id}/disable"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app.mint(&api_key, json!({"email": "u@example.com"})).await;
    assert_eq!(res.status(), 401);
    // And a restart (which resumes unfinished issuances) serves the rest.
    let port: u16 = app.public.rsplit(':').next().unwrap().parse().unwrap();
    let base_url = app.state.config.airkit.url().unwrap();
    let (dir, clock) = app.stop().await;
    let config = crate::issuance::issuing_config(dir.path(), port, &base_url);
    let app = start(dir, clock, config).await.unwrap();
    assert_eq!(app.jwks().await, genuine);
    app.mint_ok(&other_key, json!({"email": "u@example.com"}))
        .await;
}

#[tokio::test]
async fn deleting_first_served_at_never_makes_a_new_key_sign_at_once() {
    let app = spawn_app().await;
    let es256 = app
        .keys()
        .await
        .into_iter()
        .find(|k| k["alg"] == "ES256")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Take the active ES256 key out of play (its row fails its check now) and erase the record
    // that a server ever served this store.
    let conn = db(&app);
    assert_eq!(
        conn.execute(
            "UPDATE keys SET bits = 255 WHERE kid = ?1",
            &[text(es256.clone())]
        ),
        1
    );
    assert_eq!(
        conn.execute("DELETE FROM settings WHERE name = 'first_served_at'", &[]),
        1
    );
    drop(conn);
    app.advance(1).await;
    let keys = app.keys().await;
    let fresh: Vec<&Value> = keys
        .iter()
        .filter(|k| k["alg"] == "ES256" && k["kid"] != es256.as_str())
        .collect();
    assert_eq!(fresh.len(), 1, "{keys:?}");
    assert_eq!(fresh[0]["state"], "pending", "publish before use, always");
}
