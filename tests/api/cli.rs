use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    PARTNER_ID, RawDb, StoreCleanup, eventually, on_postgres, spawn_app, store_env, verify,
};
use crate::import::fixture;

/// The CLI on `dir`, with nothing of a server's configuration in its environment.
fn bare(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyhost"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYHOST_DATA_DIR", dir.join("data"))
        .env("KEYHOST_KEYS_DIR", dir.join("keys"))
        .envs(store_env(dir));
    cmd
}

pub(crate) fn keyhost(dir: &Path, args: &[&str]) -> Output {
    bare(dir, args)
        .env("KEYHOST_PARTNER_ID", PARTNER_ID)
        .env("KEYHOST_PUBLIC_ADDR", "127.0.0.1:0")
        .env("KEYHOST_INTERNAL_ADDR", "127.0.0.1:0")
        .output()
        .expect("runs the binary")
}

pub(crate) fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn importing_before_the_first_start_gives_an_active_key_under_the_chosen_kid() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let pem = dir.path().join("partner.pem");
    std::fs::write(&pem, fixture("p256.sec1.pem")).unwrap();
    let out = keyhost(
        dir.path(),
        &[
            "keys",
            "import",
            "--pem",
            pem.to_str().unwrap(),
            "--kid",
            PARTNER_ID,
        ],
    );
    let body = json_of(&out);
    assert_eq!(body["key"]["kid"], PARTNER_ID);
    assert_eq!(body["key"]["state"], "active");

    let list = json_of(&keyhost(dir.path(), &["keys", "list"]));
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);

    let client = json_of(&keyhost(
        dir.path(),
        &["clients", "create", "--name", "ops", "--scope", "issue"],
    ));
    let id = client["id"].as_str().unwrap();
    assert!(client["apiKey"].as_str().unwrap().starts_with("khc_"));
    let token = json_of(&keyhost(
        dir.path(),
        &[
            "token",
            "mint",
            "--client",
            id,
            "--email",
            "ops@example.com",
        ],
    ));
    assert_eq!(token["kid"], PARTNER_ID);
    let jwks = json!({"keys": [{
        "kid": PARTNER_ID, "use": "sig", "alg": "ES256",
        "kty": "EC", "crv": list["keys"][0]["publicJwk"]["crv"],
        "x": list["keys"][0]["publicJwk"]["x"], "y": list["keys"][0]["publicJwk"]["y"],
    }]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = verify(token["token"].as_str().unwrap(), &jwks, now).unwrap();
    assert_eq!(claims["email"], "ops@example.com");

    let out = keyhost(dir.path(), &["clients", "disable", id]);
    json_of(&out);
    let out = keyhost(
        dir.path(),
        &[
            "token",
            "mint",
            "--client",
            id,
            "--email",
            "ops@example.com",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
}

#[test]
fn cli_errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let out = keyhost(dir.path(), &["keys", "revoke", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key with kid"));
    let out = Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .args(["keys", "list"])
        .env("KEYHOST_DATA_DIR", dir.path().join("data"))
        .env("KEYHOST_KEYS_DIR", dir.path().join("keys"))
        .envs(store_env(dir.path()))
        .env("KEYHOST_PUBLISH_LEAD", "10s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYHOST_PUBLISH_LEAD"));
}

#[test]
fn output_into_a_pipe_whose_reader_has_gone_ends_quietly() {
    // `keyhost keys list | head -c 10`, with head gone before keyhost writes: the read end is
    // closed before the process starts, so every write meets a closed pipe.
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    json_of(&keyhost(dir.path(), &["keys", "rotate", "--alg", "ES256"]));
    for args in [&["keys", "list"][..], &["clients", "list"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_keyhost"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYHOST_DATA_DIR", dir.path().join("data"))
            .env("KEYHOST_KEYS_DIR", dir.path().join("keys"))
            .envs(store_env(dir.path()))
            .stdout(writer)
            .output()
            .expect("runs the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}: {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // The doctor's verdict is its exit status, read or not.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .args([
            "doctor",
            "--jwks-url",
            "http://127.0.0.1:1/.well-known/jwks.json",
        ])
        .env_clear()
        .stdout(writer)
        .output()
        .expect("runs the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("AIR Kit would reject"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn migrate_creates_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let body = json_of(&keyhost(dir.path(), &["migrate"]));
    assert_eq!(body["migrated"], true);
    assert_eq!(
        dir.path().join("data/keyhost.db").exists(),
        !on_postgres(),
        "the SQLite file, and only on SQLite"
    );
    // Every table is there, and empty: migrating makes no key.
    let db = RawDb::open(dir.path());
    let tables = db.tables();
    for table in [
        "keys",
        "clients",
        "settings",
        "audit",
        "issuances",
        "kyc_events",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table}: {tables:?}");
    }
    assert_eq!(db.query_i64("SELECT COUNT(*) FROM keys", &[]), 0);
}

#[test]
fn serve_refuses_to_start_with_a_wrong_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    json_of(&keyhost(dir.path(), &["keys", "rotate", "--alg", "ES256"]));
    let out = Command::new(env!("CARGO_BIN_EXE_keyhost"))
        .arg("serve")
        .env("KEYHOST_DATA_DIR", dir.path().join("data"))
        .env("KEYHOST_KEYS_DIR", dir.path().join("keys"))
        .envs(store_env(dir.path()))
        .env(
            "KEYHOST_MASTER_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .env("KEYHOST_PUBLIC_ADDR", "127.0.0.1:0")
        .env("KEYHOST_INTERNAL_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("master key") && stderr.contains("refusing to start"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_running_server_picks_up_clients_created_with_the_cli() {
    let app = spawn_app().await;
    let out = keyhost(
        app.dir.path(),
        &[
            "clients", "create", "--name", "cli-made", "--scope", "issue",
        ],
    );
    let key = json_of(&out)["apiKey"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(5),
        "the server never saw the client",
        || async {
            app.mint(&key, json!({"email": "a@example.com"}))
                .await
                .status()
                == 200
        },
    )
    .await;
}

#[tokio::test]
async fn the_running_server_refuses_a_client_disabled_with_the_cli() {
    let app = spawn_app().await;
    let (id, key) = app.create_client(&["issue"]).await;
    app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    json_of(&keyhost(app.dir.path(), &["clients", "disable", &id]));
    eventually(
        Duration::from_secs(5),
        "the disabled client still mints",
        || async {
            app.mint(&key, json!({"email": "a@example.com"}))
                .await
                .status()
                == 401
        },
    )
    .await;
}

/// Runs the CLI on `dir` with nothing of the server's configuration in its environment: no
/// partner id, no lifecycle settings.
fn bare_keyhost(dir: &Path, args: &[&str]) -> Output {
    bare(dir, args).output().expect("runs the binary")
}

#[tokio::test]
async fn the_cli_follows_the_running_servers_policy_and_partner_id_not_its_own_defaults() {
    // The CLI runs on the system clock: so does this server.
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut config = crate::helpers::test_config(dir.path());
    config.keys.jwks_max_age = Duration::from_secs(2);
    config.keys.retire_grace = Duration::from_secs(302);
    let app = crate::helpers::start(dir, keyhost::clock::ManualClock::new(now), config)
        .await
        .unwrap();
    let (client, _) = app.create_client(&["issue"]).await;
    // A pending successor: the key an operator may retire.
    let kid = app.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    // Minting needs a partner id: the server's, since this shell has none.
    let minted = bare_keyhost(
        app.dir.path(),
        &[
            "token",
            "mint",
            "--client",
            &client,
            "--email",
            "ops@example.com",
        ],
    );
    let token = json_of(&minted);
    let payload = token["token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["partnerId"], PARTNER_ID);

    // Retiring from the CLI gives the server's grace (302 s), not the 1 h default.
    let retired = json_of(&bare_keyhost(app.dir.path(), &["keys", "retire", &kid]));
    let at = |name: &str| {
        let text = retired["key"][name].as_str().unwrap_or_else(|| {
            panic!("{name} in {retired}");
        });
        humantime::parse_rfc3339(text)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert_eq!(at("expiresAt") - at("retiredAt"), 302, "{retired}");
    assert!(
        String::from_utf8_lossy(&bare_keyhost(app.dir.path(), &["keys", "list"]).stderr)
            .contains("following the lifecycle policy the server last started with"),
        "the CLI says whose policy it follows when its own differs"
    );
}
