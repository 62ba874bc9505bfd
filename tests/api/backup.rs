//! `keyhost backup` and `keyhost restore`: a snapshot taken while the server mints goes back
//! into an empty store, which then serves the same kids, signs, and keeps an audit trail that
//! verifies; a backup is refused under another master key, once changed, into a store that is
//! not empty, and never overwrites a file. On PostgreSQL too, and from one engine to the other.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keyhost::clock::ManualClock;
use serde_json::{Value, json};

use crate::cli::{json_of, keyhost};
use crate::helpers::{
    PARTNER_ID, RawDb, StoreCleanup, T0, TestApp, on_postgres, spawn_app, start, test_config,
    verify,
};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(out)
}

fn path(file: &Path) -> &str {
    file.to_str().unwrap()
}

async fn kids(app: &TestApp) -> Vec<String> {
    app.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn audit_actions(app: &TestApp) -> Vec<Value> {
    app.admin_json("/admin/audit?limit=1000").await["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Destroys the store of `dir`: SQLite, its data directory; PostgreSQL, its schema (an empty
/// one takes its place at the next use).
fn destroy_store(dir: &Path) {
    if on_postgres() {
        crate::pg::drop_schema(dir);
    } else {
        std::fs::remove_dir_all(dir.join("data")).unwrap();
    }
}

/// Whether the store of `dir` holds no row at all (an SQLite store never created holds none).
fn store_is_empty(dir: &Path) -> bool {
    if !on_postgres() && !dir.join("data/keyhost.db").exists() {
        return true;
    }
    let db = RawDb::open(dir);
    db.tables()
        .iter()
        .filter(|t| *t != "keyhost_schema")
        .all(|t| db.query_i64(&format!("SELECT COUNT(*) FROM \"{t}\""), &[]) == 0)
}

/// A directory with the master key of `from` and no store.
fn fresh_dir_with_the_master_key_of(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        from.join("keys/master.key"),
        dir.path().join("keys/master.key"),
    )
    .unwrap();
    dir
}

/// A server with two algorithms' keys, a pending successor, a client, and a token minted.
async fn busy_app() -> (TestApp, String, Value) {
    let app = spawn_app().await;
    app.rotate("ES256", false).await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let token = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    (app, api_key, token)
}

/// Backs up the store of `dir` to `file`; the report.
fn backup(dir: &Path, file: &Path) -> Value {
    json_of(&keyhost(dir, &["backup", path(file)]))
}

#[tokio::test]
async fn a_backup_taken_while_the_server_mints_restores_into_an_empty_store_that_serves_and_signs()
{
    let (app, api_key, token) = busy_app().await;
    let served = kids(&app).await;
    assert_eq!(served.len(), 3, "ES256 active and pending, RS256 active");

    // A task mints without pause while the backup is taken.
    let minted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let minter = tokio::spawn({
        let (http, url, key) = (
            app.http.clone(),
            format!("{}/v1/tokens", app.internal),
            api_key.clone(),
        );
        let (minted, stop) = (minted.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let res = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"email": "u@example.com"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                minted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    while minted.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    let file = app.dir.path().join("keyhost.backup");
    let before = minted.load(Ordering::SeqCst);
    let report = tokio::task::spawn_blocking({
        let (dir, file) = (app.dir.path().to_owned(), file.clone());
        move || backup(&dir, &file)
    })
    .await
    .unwrap();
    let during = minted.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    minter.await.unwrap();
    assert!(
        during > 0,
        "the server went on minting while the backup was taken"
    );

    assert_eq!(report["servedKids"], json!(served));
    assert_eq!(report["tables"]["keys"], 3);
    assert_eq!(report["tables"]["clients"], 1);
    assert!(report["tables"]["audit"].as_u64().unwrap() > 0);
    assert_eq!(
        report["engine"],
        if on_postgres() { "postgres" } else { "sqlite" }
    );
    let master_key_id = report["masterKeyId"].as_str().unwrap().to_owned();
    // The file: the header in the clear, the rows not; only its owner may read it.
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"KEYHOSTBACKUP1\n"));
    assert!(String::from_utf8_lossy(&bytes).contains(&master_key_id));
    assert!(!String::from_utf8_lossy(&bytes).contains(&served[0]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The backup is in the trail, with its counts.
    let entries = audit_actions(&app).await;
    let audited = entries
        .iter()
        .find(|e| e["action"] == "store.backup")
        .expect("a store.backup row");
    assert_eq!(audited["detail"]["tables"], report["tables"]);
    assert_eq!(audited["subject"], path(&file));

    // The store is lost.
    let (dir, clock) = app.stop().await;
    destroy_store(dir.path());
    let _cleanup = StoreCleanup(dir.path());
    assert!(store_is_empty(dir.path()));

    let restored = json_of(&keyhost(dir.path(), &["restore", path(&file)]));
    assert_eq!(restored["servedKids"], json!(served));
    assert_eq!(restored["tables"], report["tables"]);
    assert_eq!(restored["backup"]["masterKeyId"], master_key_id.as_str());

    // A server on the restored store serves the same kids and signs; tokens from before the
    // loss verify against its JWKS.
    let app = start(dir.clone(), clock, test_config(dir.path()))
        .await
        .expect("a server starts on the restored store");
    assert_eq!(kids(&app).await, served);
    let jwks = app.jwks().await;
    verify(token["token"].as_str().unwrap(), &jwks, app.now()).unwrap();
    let again = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    let claims = verify(again["token"].as_str().unwrap(), &jwks, app.now()).unwrap();
    assert_eq!(claims["partnerId"], PARTNER_ID);
    assert_eq!(again["kid"], token["kid"]);

    // The restored trail verifies, and says it was restored. Its backup row came after the
    // snapshot, so it is not in it.
    let verified = json_of(&keyhost(dir.path(), &["audit", "verify"]));
    assert!(verified["problem"].is_null(), "{verified}");
    let entries = audit_actions(&app).await;
    let restore_row = entries
        .iter()
        .find(|e| e["action"] == "store.restore")
        .expect("a store.restore row");
    assert_eq!(restore_row["detail"]["tables"], report["tables"]);
    assert!(!entries.iter().any(|e| e["action"] == "store.backup"));
    // New rows take ids after the restored ones.
    app.rotate("RS256", true).await;
}

#[tokio::test]
async fn a_backup_is_refused_without_its_master_key_and_nothing_is_written() {
    let (app, _, _) = busy_app().await;
    let file = app.dir.path().join("keyhost.backup");
    let needed = backup(app.dir.path(), &file)["masterKeyId"]
        .as_str()
        .unwrap()
        .to_owned();

    // No master key at all: refused, and none is made up.
    let elsewhere = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(elsewhere.path());
    let err = refused(&keyhost(elsewhere.path(), &["restore", path(&file)]));
    assert!(
        err.contains(&format!("made under master key {needed}")),
        "{err}"
    );
    assert!(err.contains("Nothing was written"), "{err}");
    assert!(!elsewhere.path().join("keys/master.key").exists());
    assert!(store_is_empty(elsewhere.path()));

    // Another master key: refused, naming the one it needs.
    let (other, text) = keyhost::keys::master::MasterKey::generate();
    std::fs::create_dir_all(elsewhere.path().join("keys")).unwrap();
    std::fs::write(elsewhere.path().join("keys/master.key"), text.as_bytes()).unwrap();
    let err = refused(&keyhost(elsewhere.path(), &["restore", path(&file)]));
    assert!(
        err.contains(&format!("made under master key {needed}")),
        "{err}"
    );
    assert!(err.contains(other.id()), "{err}");
    assert!(store_is_empty(elsewhere.path()));
    drop(app);
}

#[tokio::test]
async fn a_changed_backup_is_refused_and_nothing_is_written() {
    let (app, _, _) = busy_app().await;
    let file = app.dir.path().join("keyhost.backup");
    backup(app.dir.path(), &file);
    let original = std::fs::read(&file).unwrap();
    let header_end = original.iter().skip(15).position(|b| *b == b'\n').unwrap() + 15;

    // One bit of the rows, one of the creation time in the clear header.
    let created_at = original
        .windows(13)
        .position(|w| w == b"\"createdAt\":\"")
        .unwrap()
        + 13;
    for (what, at) in [
        ("ciphertext", (header_end + original.len()) / 2),
        ("header", created_at + 3),
    ] {
        let dir = fresh_dir_with_the_master_key_of(app.dir.path());
        let _cleanup = StoreCleanup(dir.path());
        let mut changed = original.clone();
        changed[at] ^= 0x01;
        let file = dir.path().join("changed.backup");
        std::fs::write(&file, &changed).unwrap();
        let err = refused(&keyhost(dir.path(), &["restore", path(&file)]));
        assert!(
            err.contains("it was changed or damaged after it was made"),
            "{what}: {err}"
        );
        assert!(store_is_empty(dir.path()), "{what}");
    }

    // Not a backup at all.
    let dir = fresh_dir_with_the_master_key_of(app.dir.path());
    let _cleanup = StoreCleanup(dir.path());
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"hello").unwrap();
    let err = refused(&keyhost(dir.path(), &["restore", path(&other)]));
    assert!(err.contains("is not a keyhost backup"), "{err}");
}

#[tokio::test]
async fn a_restore_into_a_store_that_holds_rows_is_refused_and_changes_nothing() {
    let (app, _, _) = busy_app().await;
    let file = app.dir.path().join("keyhost.backup");
    backup(app.dir.path(), &file);
    if !on_postgres() {
        // The SQLite server holds its data directory: the restore says to stop it.
        let err = refused(&keyhost(app.dir.path(), &["restore", path(&file)]));
        assert!(err.contains("stop the server"), "{err}");
    }
    let (dir, _) = app.stop().await;
    let _cleanup = StoreCleanup(dir.path());
    let before = RawDb::open(dir.path()).dump();
    let err = refused(&keyhost(dir.path(), &["restore", path(&file)]));
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(RawDb::open(dir.path()).dump(), before);
}

#[tokio::test]
async fn a_backup_never_replaces_a_file() {
    let (app, _, _) = busy_app().await;
    let file = app.dir.path().join("keyhost.backup");
    std::fs::write(&file, b"precious").unwrap();
    let err = refused(&keyhost(app.dir.path(), &["backup", path(&file)]));
    assert!(err.contains("never replaces a file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // Nor one it wrote itself.
    let second = app.dir.path().join("second.backup");
    backup(app.dir.path(), &second);
    let written = std::fs::read(&second).unwrap();
    refused(&keyhost(app.dir.path(), &["backup", path(&second)]));
    assert_eq!(std::fs::read(&second).unwrap(), written);
}

/// The CLI on `dir`, on PostgreSQL at `url` or on the SQLite file of `dir`.
fn keyhost_on(dir: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyhost"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYHOST_DATA_DIR", dir.join("data"))
        .env("KEYHOST_KEYS_DIR", dir.join("keys"))
        .env("KEYHOST_PARTNER_ID", PARTNER_ID);
    if let Some(url) = url {
        cmd.env("KEYHOST_DATABASE_URL", url);
    }
    cmd.output().expect("runs keyhost")
}

/// A server on `dir`, on PostgreSQL or on SQLite.
async fn start_on(dir: &Arc<tempfile::TempDir>, postgres: bool) -> TestApp {
    let mut config = test_config(dir.path());
    if !postgres {
        config.database.url = None;
    }
    start(dir.clone(), ManualClock::new(T0), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backup_moves_a_store_from_sqlite_to_postgresql_and_back() {
    crate::postgres_only!("it needs both engines");
    let sqlite = Arc::new(tempfile::tempdir().unwrap());
    let app = start_on(&sqlite, false).await;
    app.rotate("ES256", false).await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let served = kids(&app).await;
    let first: PathBuf = sqlite.path().join("from-sqlite.backup");
    let report = json_of(&keyhost_on(sqlite.path(), None, &["backup", path(&first)]));
    assert_eq!(report["engine"], "sqlite");
    drop(app);

    // Into PostgreSQL.
    let pg = Arc::new(fresh_dir_with_the_master_key_of(sqlite.path()));
    let _cleanup = StoreCleanup(pg.path());
    let url = crate::pg::url_for(pg.path());
    json_of(&keyhost_on(
        pg.path(),
        Some(&url),
        &["restore", path(&first)],
    ));
    let app = start_on(&pg, true).await;
    assert_eq!(kids(&app).await, served);
    let token = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    verify(
        token["token"].as_str().unwrap(),
        &app.jwks().await,
        app.now(),
    )
    .unwrap();
    let second = pg.path().join("from-postgres.backup");
    let report = json_of(&keyhost_on(
        pg.path(),
        Some(&url),
        &["backup", path(&second)],
    ));
    assert_eq!(report["engine"], "postgres");
    app.stop().await;

    // And back into SQLite.
    let back = Arc::new(fresh_dir_with_the_master_key_of(pg.path()));
    json_of(&keyhost_on(back.path(), None, &["restore", path(&second)]));
    let app = start_on(&back, false).await;
    assert_eq!(kids(&app).await, served);
    let token = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await;
    verify(
        token["token"].as_str().unwrap(),
        &app.jwks().await,
        app.now(),
    )
    .unwrap();
    let verified = json_of(&keyhost_on(back.path(), None, &["audit", "verify"]));
    assert!(verified["problem"].is_null(), "{verified}");
    let restores = audit_actions(&app)
        .await
        .iter()
        .filter(|e| e["action"] == "store.restore")
        .count();
    assert_eq!(restores, 2, "each restore is in the trail it carried on");
}
