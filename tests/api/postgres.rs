//! What only the PostgreSQL engine has: TLS to the database, migrations shared by replicas that
//! start together, the schema's own guards, and `keyhost migrate --to` from SQLite.
//!
//! Only on PostgreSQL (`tests/api_postgres`).

use std::process::Command;
use std::sync::Arc;

use keyhost::clock::ManualClock;
use keyhost::config::Config;
use keyhost::startup::Application;
use keyhost::store::sql::Value;
use serde_json::{Value as Json, json};

use crate::helpers::{ADMIN_TOKEN, PARTNER_ID, RawDb, T0, start, test_config};

/// `url` with `key=value` added to its query.
fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// `url` with its host replaced by `host` (the port kept).
fn with_host(url: &str, host: &str) -> String {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = start + url[start..].find([':', '/', '?']).unwrap();
    format!("{}{host}{}", &url[..start], &url[end..])
}

async fn kids(app: &crate::helpers::TestApp) -> Vec<String> {
    app.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn starts(config: Config) -> anyhow::Result<Application> {
    Application::build_with_clock(config, ManualClock::new(T0)).await
}

/// The certificate the test PostgreSQL server presents, if it speaks TLS and the file is
/// readable here (Debian's `ssl-cert-snakeoil`, for `localhost`).
fn server_certificate(db: &RawDb) -> Option<std::path::PathBuf> {
    let ssl = db.try_query_string("SHOW ssl", &[])?;
    let path = db.try_query_string("SHOW ssl_cert_file", &[])?;
    let path = std::path::PathBuf::from(path);
    (ssl == "on" && std::fs::read(&path).is_ok()).then_some(path)
}

#[tokio::test]
async fn tls_to_the_database_verifies_the_server_as_sslmode_asks() {
    crate::postgres_only!("what only the PostgreSQL engine has");
    let dir = tempfile::tempdir().unwrap();
    let db = RawDb::open(dir.path());
    let Some(cert) = server_certificate(&db) else {
        eprintln!(
            "NOT RUN: the test PostgreSQL server does not speak TLS with a readable certificate"
        );
        return;
    };
    let url = crate::pg::url_for(dir.path());
    let config_for = |url: String, ca: Option<&std::path::Path>| {
        let mut c = test_config(dir.path());
        c.database.url = Some(url.into());
        c.database.ca_file = ca.map(Into::into);
        c
    };

    // verify-full: the chain and the name.
    let localhost = with_param(&with_host(&url, "localhost"), "sslmode=verify-full");
    let app = starts(config_for(localhost.clone(), Some(&cert)))
        .await
        .expect("verify-full with the server's CA and its name");
    let instance = app.state().store.instance().unwrap().to_owned();
    let encrypted = db.query_i64(
        "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE application_name = ?1 AND ssl",
        &[Value::Text(instance)],
    );
    assert!(encrypted >= 1, "the connections are encrypted");
    drop(app);

    // The name must match: the certificate names localhost, not 127.0.0.1.
    let by_address = with_param(&with_host(&url, "127.0.0.1"), "sslmode=verify-full");
    let err = starts(config_for(by_address.clone(), Some(&cert)))
        .await
        .err()
        .expect("a name the certificate does not carry is refused");
    assert!(format!("{err:#}").contains("not valid for name"), "{err:#}");
    // verify-ca checks the chain only, so it needs the authority named: any publicly trusted
    // certificate would pass otherwise.
    let chain_only = with_param(&with_host(&url, "127.0.0.1"), "sslmode=verify-ca");
    drop(
        starts(config_for(chain_only.clone(), Some(&cert)))
            .await
            .expect("verify-ca"),
    );
    let err = starts(config_for(chain_only, None)).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("KEYHOST_DATABASE_CA_FILE"),
        "{err:#}"
    );

    // Another authority: refused, whatever the name.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let err = starts(config_for(localhost, Some(&other_ca)))
        .await
        .err()
        .expect("a server certificate from another authority is refused");
    assert!(
        format!("{err:#}").contains("invalid peer certificate"),
        "{err:#}"
    );

    // A CA file that cannot be read says which.
    let err = starts(config_for(
        by_address,
        Some(std::path::Path::new("/nonexistent/ca.pem")),
    ))
    .await
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("/nonexistent/ca.pem"),
        "{err:#}"
    );
}

#[tokio::test]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    crate::postgres_only!("what only the PostgreSQL engine has");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let builds = (0..3).map(|_| starts(test_config(dir.path())));
    let apps: Vec<Application> = futures_util::future::join_all(builds)
        .await
        .into_iter()
        .map(|r| r.expect("every replica starts"))
        .collect();
    let db = RawDb::open(dir.path());
    // Each migration applied once, however many replicas started together.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM keyhost_schema", &[]),
        migrations
    );
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM keys WHERE state = 'active'", &[]),
        2,
        "one first key per algorithm, however many replicas started"
    );
    drop(apps);

    db.execute(
        "INSERT INTO keyhost_schema (version, name) VALUES (99, 'from a newer keyhost')",
        &[],
    );
    let err = starts(test_config(dir.path())).await.err().unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("schema version 99") && text.contains("newer"),
        "{text}"
    );
}

#[tokio::test]
async fn the_schema_keeps_the_invariants_whoever_writes() {
    crate::postgres_only!("what only the PostgreSQL engine has");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = start(dir.clone(), ManualClock::new(T0), test_config(dir.path()))
        .await
        .unwrap();
    let db = RawDb::open(dir.path());
    let copy_of_active = |kid: &str, state: &str, sealed: bool| {
        format!(
            "INSERT INTO keys (kid, alg, state, origin, bits, public_jwk, private_key_enc,
                 master_key_id, created_at, published_at, signable_at, activated_at)
             SELECT '{kid}', alg, '{state}', origin, bits, public_jwk, {}, master_key_id,
                 created_at, published_at, signable_at, activated_at
             FROM keys WHERE alg = 'ES256' AND state = 'active'",
            if sealed { "private_key_enc" } else { "NULL" }
        )
    };
    // A second active key of one algorithm, a second pending one, a live kid twice.
    let refused = db
        .try_execute(&copy_of_active("second-active", "active", true), &[])
        .unwrap_err();
    assert!(refused.contains("keys_one_active_per_alg"), "{refused}");
    db.execute(&copy_of_active("pending-1", "pending", true), &[]);
    let refused = db
        .try_execute(&copy_of_active("pending-2", "pending", true), &[])
        .unwrap_err();
    assert!(refused.contains("keys_one_pending_per_alg"), "{refused}");
    let kid = app.kids_in("active").await[0].clone();
    let refused = db
        .try_execute(
            &copy_of_active(&kid, "retired", true).replace("alg = 'ES256'", "kid = ?1"),
            &[Value::Text(kid.clone())],
        )
        .unwrap_err();
    assert!(refused.contains("keys_live_kid"), "{refused}");
    // A live key without its private key, an expired one with it.
    let refused = db
        .try_execute(&copy_of_active("no-private", "retired", false), &[])
        .unwrap_err();
    assert!(refused.contains("check constraint"), "{refused}");
    let refused = db
        .try_execute(&copy_of_active("kept-private", "expired", true), &[])
        .unwrap_err();
    assert!(refused.contains("check constraint"), "{refused}");
    // An issuance from a webhook keyhost does not know.
    let refused = db
        .try_execute(
            "INSERT INTO issuances (id, source, request_hash, email, issuer_did, credential_id,
                 credential_subject, on_duplicate, state, created_at, updated_at)
             VALUES ('iss_x', 'webhook:stripe', 'h', 'e', 'd', 'c', '{}', 'revoke', 'queued', 0, 0)",
            &[],
        )
        .unwrap_err();
    assert!(refused.contains("check constraint"), "{refused}");
    // The pending key inserted behind keyhost's back carries no MAC: never published.
    app.settle().await;
    assert!(!kids(&app).await.contains(&"pending-1".to_owned()));
}

fn keyhost(dir: &std::path::Path, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYHOST_DATA_DIR", dir.join("data"))
        .env("KEYHOST_KEYS_DIR", dir.join("keys"))
        .env("KEYHOST_PARTNER_ID", PARTNER_ID)
        .env("KEYHOST_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(extra.iter().copied())
        .output()
        .expect("runs keyhost")
}

#[tokio::test]
async fn migrate_to_copies_an_sqlite_store_into_postgres_and_serves_the_same_kids() {
    crate::postgres_only!("what only the PostgreSQL engine has");
    // An SQLite store with keys in every state, a client, audit rows.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = ManualClock::new(T0);
    let mut sqlite = test_config(dir.path());
    sqlite.database.url = None;
    let app = start(dir.clone(), clock.clone(), sqlite.clone())
        .await
        .unwrap();
    app.rotate("ES256", false).await;
    app.rotate("RS256", true).await;
    let (client_id, api_key) = app.create_client(&["issue"]).await;
    let served: Vec<String> = kids(&app).await;
    let token = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;

    // While the server runs, the copy is refused (it would miss what the server writes).
    let target = crate::pg::url_for(dir.path());
    let out = keyhost(dir.path(), &["migrate", "--to", &target], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dir, clock) = app.stop().await;

    // The URL from a file (its password then stays out of the process list).
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{target}\n")).unwrap();
    let out = keyhost(
        dir.path(),
        &["migrate", "--to-file", url_file.to_str().unwrap()],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["servedKids"], json!(served));
    assert_eq!(report["copied"]["clients"], 1);
    assert!(report["copied"]["audit"].as_u64().unwrap() > 0);
    // What it prints names the database, never the URL's parameters (nor a password).
    assert!(!String::from_utf8_lossy(&out.stdout).contains("options="));

    // A second copy into the same (now filled) database is refused.
    let out = keyhost(dir.path(), &["migrate", "--to", &target], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // A server on the copy serves the same kids, knows the client, and its tokens verify with
    // what the old store published.
    let on_postgres = start(dir.clone(), clock, test_config(dir.path()))
        .await
        .unwrap();
    assert_eq!(kids(&on_postgres).await, served);
    let again = on_postgres
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    assert_eq!(again["kid"], token["kid"]);
    let clients = on_postgres.admin_json("/admin/clients").await;
    assert!(clients.to_string().contains(&client_id));
    // New rows take new ids after the copied ones.
    on_postgres.rotate("ES256", true).await;
}
