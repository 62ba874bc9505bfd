use base64::Engine;
use keyhost::keys::master::MasterKey;
use keyhost::store::sql::Value;
use serde_json::json;

use crate::helpers::{RawDb, StoreCleanup, T0, spawn_app, start, stored_bytes, test_config};
use crate::{postgres_only, sqlite_only};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// What the test's store holds, as bytes (on SQLite its file, on PostgreSQL every value of its
/// schema): see [`stored_bytes`].
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    stored_bytes(dir)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_database_never_holds_a_private_key_in_the_clear() {
    let app = spawn_app().await;
    let pem = fixture("p256.pkcs8.pem");
    let res = app
        .admin_post("/admin/keys/import", json!({"pem": pem}))
        .await;
    assert_eq!(res.status(), 201);
    app.admin_post("/admin/keys/rotate", json!({"alg": "RS256"}))
        .await;
    app.advance(24 * 3600).await;

    let bytes = database_bytes(app.dir.path());
    assert!(!contains(&bytes, b"PRIVATE KEY"), "no PEM");
    assert!(!contains(&bytes, b"\"d\":"), "no JWK d");
    let der = pem::parse(pem.as_bytes()).unwrap().into_contents();
    assert!(!contains(&bytes, &der), "no DER of the imported key");
    // The imported P-256 scalar: PKCS#8 wraps SEC1, whose private key is 32 bytes after 04 20.
    let at = der.windows(2).position(|w| w == [0x04, 0x20]).unwrap();
    assert!(
        !contains(&bytes, &der[at + 2..at + 34]),
        "no raw private scalar"
    );
    assert!(!contains(
        &bytes,
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&der[at + 2..at + 34])
            .as_bytes()
    ));

    // Open every stored key with the master key, and look for its private parts in the files.
    let master = std::fs::read_to_string(app.dir.path().join("keys/master.key")).unwrap();
    let master = MasterKey::from_base64(&master, "test").unwrap();
    let sealed: Vec<(String, String, i64, Vec<u8>)> = RawDb::open(app.dir.path())
        .query_rows(
            "SELECT alg, kid, created_at, private_key_enc FROM keys WHERE private_key_enc IS NOT \
             NULL",
            &[],
        )
        .into_iter()
        .map(|r| match &r[..] {
            [
                Value::Text(alg),
                Value::Text(kid),
                Value::Int(created_at),
                Value::Blob(blob),
            ] => (alg.clone(), kid.clone(), *created_at, blob.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(sealed.len() >= 4, "generated, rotated and imported keys");
    for (alg, kid, created_at, blob) in sealed {
        let context = format!("keyhost/v1/{alg}/{kid}/{created_at}");
        assert!(
            contains(&bytes, kid.as_bytes()),
            "{kid} is in what was searched"
        );
        let der = master.open(context.as_bytes(), &blob).expect("opens");
        assert!(!contains(&bytes, &der), "{kid}: PKCS#8 in the clear");
        // The private half of the encoding (RSA d, p, q, … or the EC scalar) in 16-byte pieces.
        let private_part: &[u8] = if alg == "ES256" {
            let at = der.windows(2).position(|w| w == [0x04, 0x20]).unwrap();
            &der[at + 2..at + 34]
        } else {
            &der[der.len() / 2..]
        };
        for piece in private_part.chunks_exact(16) {
            assert!(
                !contains(&bytes, piece),
                "{kid}: private bytes in the clear"
            );
        }
    }
}

#[tokio::test]
async fn a_restart_keeps_keys_kids_clients_and_tokens_verifiable() {
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let jwks_before = app.jwks().await;
    let minted = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    let (dir, clock) = app.stop().await;

    let config = test_config(dir.path());
    let app = start(dir, clock, config).await.unwrap();
    assert_eq!(app.jwks().await, jwks_before, "same keys, same kids");
    let again = app.mint_ok(&key, json!({"email": "a@example.com"})).await;
    assert_eq!(again["kid"], minted["kid"]);
    crate::helpers::verify(again["token"].as_str().unwrap(), &jwks_before, T0).unwrap();
}

#[tokio::test]
async fn a_wrong_master_key_refuses_to_start_and_changes_nothing() {
    let app = spawn_app().await;
    let jwks = app.jwks().await;
    let (dir, clock) = app.stop().await;
    let master_file = dir.path().join("keys/master.key");
    let master_before = std::fs::read(&master_file).unwrap();
    let db_before = database_bytes(dir.path());

    let mut config = test_config(dir.path());
    config.master_key = Some(
        base64::engine::general_purpose::STANDARD
            .encode([7u8; 32])
            .into(),
    );
    let err = start(dir.clone(), clock.clone(), config)
        .await
        .err()
        .expect("refuses to start");
    let message = format!("{err:#}");
    assert!(message.contains("master key"), "{message}");

    std::fs::remove_file(&master_file).unwrap();
    let err = start(dir.clone(), clock.clone(), test_config(dir.path()))
        .await
        .err()
        .expect("refuses to start without the key file");
    assert!(format!("{err:#}").contains("master key"));
    assert!(
        !master_file.exists(),
        "no replacement master key was generated"
    );
    assert_eq!(
        database_bytes(dir.path()),
        db_before,
        "the store is untouched"
    );

    std::fs::write(&master_file, &master_before).unwrap();
    let config = test_config(dir.path());
    let app = start(dir, clock, config)
        .await
        .expect("starts with the right key");
    assert_eq!(app.jwks().await, jwks);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    sqlite_only!(
        "the lock beside the SQLite file; servers on PostgreSQL are replicas of one another (see \
         a_second_server_on_the_same_postgresql_schema_serves_beside_the_first)"
    );
    let app = spawn_app().await;
    let config = test_config(app.dir.path());
    let err = start(app.dir.clone(), app.clock.clone(), config)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("another keyhost server"),
        "{err:#}"
    );
    // The first one is unaffected.
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_second_server_reaching_the_same_database_by_another_path_refuses_to_start() {
    sqlite_only!(
        "a link to the SQLite file from another data directory; a PostgreSQL store is reached by \
         its URL, and replicas share it"
    );
    let app = spawn_app().await;
    let other = std::sync::Arc::new(tempfile::tempdir().unwrap());
    std::fs::create_dir_all(other.path().join("data")).unwrap();
    std::os::unix::fs::symlink(
        app.dir.path().join("data/keyhost.db"),
        other.path().join("data/keyhost.db"),
    )
    .unwrap();
    std::os::unix::fs::symlink(app.dir.path().join("keys"), other.path().join("keys")).unwrap();
    let config = crate::helpers::test_config(other.path());
    let err = crate::helpers::start(
        other,
        keyhost::clock::ManualClock::new(crate::helpers::T0),
        config,
    )
    .await
    .err()
    .expect("refused");
    assert!(
        format!("{err:#}").contains("another keyhost server"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_postgresql_schema_serves_beside_the_first() {
    postgres_only!("a second server on one SQLite file is refused (see above)");
    let app = spawn_app().await;
    let (_, key) = app.create_client(&["issue"]).await;
    let jwks = app.jwks().await;
    let config = test_config(app.dir.path());
    let replica = start(app.dir.clone(), app.clock.clone(), config)
        .await
        .expect("a replica starts on the same schema");
    assert_eq!(replica.jwks().await, jwks, "the same keys, none made anew");
    let minted = replica
        .mint_ok(&key, json!({"email": "a@example.com"}))
        .await;
    crate::helpers::verify(minted["token"].as_str().unwrap(), &jwks, T0).unwrap();
    // A client made through one is known to the other.
    let (_, other) = replica.create_client(&["issue"]).await;
    crate::helpers::eventually(
        std::time::Duration::from_secs(5),
        "the first server never saw the replica's client",
        || async {
            app.mint(&other, json!({"email": "a@example.com"}))
                .await
                .status()
                == 200
        },
    )
    .await;
}

/// The KYC deliveries, column by column as SQLite quotes them (so types show).
fn kyc_rows(db: &rusqlite::Connection) -> Vec<String> {
    quoted_rows(
        db,
        "kyc_events",
        "id, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id, \
         received_at, delivery_hash, repeats, last_received_at",
    )
}

/// The issuances with their rowids, column by column as SQLite quotes them.
fn issuance_rows(db: &rusqlite::Connection) -> Vec<String> {
    quoted_rows(
        db,
        "issuances",
        "rowid, id, source, idempotency_key, request_hash, email, issuer_did, credential_id, \
         credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash, \
         user_uuid, duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error, \
         created_at, updated_at, submitted_at, completed_at, mac",
    )
}

/// Every row of `table` as SQLite quotes its `columns` (so types show), in rowid order.
fn quoted_rows(db: &rusqlite::Connection, table: &str, columns: &str) -> Vec<String> {
    let quoted: Vec<String> = columns
        .split(", ")
        .map(|c| format!("quote({})", c.trim()))
        .collect();
    let mut stmt = db
        .prepare(&format!(
            "SELECT {} FROM {table} ORDER BY rowid",
            quoted.join(" || ' ' || ")
        ))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_issuance_checks_migration_keeps_every_row_byte_for_byte_and_refuses_unknown_sources() {
    sqlite_only!(
        "migrates a SQLite file written by schema v4 (the PostgreSQL schema starts from v7's \
         tables; a_new_store_refuses_what_keyhost_never_writes checks its constraints)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyhost.db");
    // A store as keyhost's schema v4 left it.
    let db = rusqlite::Connection::open(&path).unwrap();
    for file in [
        "0001_initial.sql",
        "0002_issuance.sql",
        "0003_kyc_repeats.sql",
        "0004_integrity_and_served_time.sql",
    ] {
        let sql =
            std::fs::read_to_string(format!("{}/migrations/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        db.execute_batch(&sql).unwrap();
    }
    db.pragma_update(None, "user_version", 4).unwrap();
    db.execute_batch(
        "INSERT INTO issuances (rowid, id, source, idempotency_key, request_hash, email, \
         issuer_did,
             credential_id, credential_subject, on_duplicate, state, attempts, next_attempt_at,
             core_claim_hash, user_uuid, duplicate, vc_status, vc_id, issuance_date, polls,
             last_status, last_error, created_at, updated_at, submitted_at, completed_at, mac)
         VALUES
         (7, 'iss_a', '0123456789abcdef', 'order-1', 'aa', 'u@example.com', 'did:x', 'p',
          '{\"name\":\"Zoë ✓\",\"age\":25}', 'revoke', 'onchain', 1, NULL, 'hash-a', 'uuid', 0,
          'ONCHAIN', 'vc', '2026-01-19 07:18:45', 3, 200, NULL, 1800000000, 1800000010,
          1800000001, 1800000010, X'00FF10'),
         (42, 'iss_b', 'webhook:idenfy', 'scan-1', 'bb', 'v@example.com', 'did:x', 'p',
          '{\"kycVerified\":true}', 'ignore', 'queued', 0, 1.5, NULL, NULL, 1, NULL, NULL, NULL,
          0, NULL, 'AIR Kit answered 503', 1800000100, 1800000100, NULL, NULL, NULL),
         (43, 'iss_c', 'webhook:kyc', NULL, 'cc', 'w@example.com', 'did:x', 'p', '{}',
          'revoke', 'stalled', 6, 'soon', NULL, NULL, 0, NULL, NULL, NULL, 0, 429, '', 0, 0, NULL,
          NULL, X'');
         INSERT INTO kyc_events (id, provider, scan_ref, outcome, issuance_id, received_at)
         VALUES (3, 'idenfy', 'scan-1', 'queued', 'iss_b', 1800000100);
         INSERT INTO kyc_events (id, provider, scan_ref, client_id, final, status, outcome,
             detail, received_at, delivery_hash, repeats, last_received_at)
         VALUES (9, 'idenfy', 'scan-2', 'cli ✓', 1, 'DENIED', 'ignored', 'status DENIED',
             1800000200, 'ab12', 4, 1800000300);",
    )
    .unwrap();
    let before = issuance_rows(&db);
    assert_eq!(before.len(), 3);
    let kyc_before = kyc_rows(&db);
    assert_eq!(kyc_before.len(), 2);
    drop(db);

    drop(keyhost::store::Store::open(&path).expect("migrates"));

    let db = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    // Upgraded to the latest schema: one version per SQLite migration file.
    let latest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count() as i64;
    assert_eq!(version, latest);
    assert_eq!(
        issuance_rows(&db),
        before,
        "values, types and rowids unchanged"
    );
    assert_eq!(kyc_rows(&db), kyc_before, "KYC deliveries unchanged (v6)");
    let issuance: String = db
        .query_row("SELECT issuance_id FROM kyc_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(issuance, "iss_b");
    refuses_what_keyhost_never_writes(&RawDb::Sqlite(db));
}

#[test]
fn a_new_store_refuses_what_keyhost_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    drop(keyhost::startup::open_store(&test_config(dir.path())).expect("creates the store"));
    refuses_what_keyhost_never_writes(&RawDb::open(dir.path()));
}

/// The schema's own guards, on a store of the latest version: KYC deliveries of an unknown
/// provider or outcome, and issuances of an unknown webhook or of no source, are refused; a
/// delivery references its issuance; the issuances have their indexes.
fn refuses_what_keyhost_never_writes(db: &RawDb) {
    let text = |t: &str| Value::Text(t.to_owned());
    for (provider, outcome) in [("stripe", "queued"), ("idenfy", "approved")] {
        let refused = db
            .try_execute(
                "INSERT INTO kyc_events (provider, outcome, received_at) VALUES (?1, ?2, 0)",
                &[text(provider), text(outcome)],
            )
            .expect_err(provider);
        assert!(
            refused.to_lowercase().contains("check constraint"),
            "{refused}"
        );
    }
    let referenced = match db {
        RawDb::Sqlite(_) => db.query_string(
            "SELECT \"table\" FROM pragma_foreign_key_list('kyc_events')",
            &[],
        ),
        RawDb::Postgres(_) => db.query_string(
            "SELECT confrelid::regclass::text FROM pg_constraint
             WHERE conrelid = 'kyc_events'::regclass AND contype = 'f'",
            &[],
        ),
    };
    assert_eq!(referenced, "issuances");
    let indexes: Vec<Vec<Value>> = match db {
        RawDb::Sqlite(_) => db.query_rows(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'issuances' AND \
             sql IS NOT NULL ORDER BY name",
            &[],
        ),
        // Those a statement of the schema made (not the primary key's).
        RawDb::Postgres(_) => db.query_rows(
            "SELECT indexname::text FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = 'issuances'
                 AND indexname <> 'issuances_pkey'
             ORDER BY indexname",
            &[],
        ),
    };
    assert_eq!(
        indexes,
        [
            "issuances_claim",
            "issuances_hash",
            "issuances_idempotency",
            "issuances_retention",
            "issuances_state"
        ]
        .map(|i| vec![text(i)])
    );
    let insert = |id: &str, source: &str| {
        db.try_execute(
            "INSERT INTO issuances (id, source, request_hash, email, issuer_did, credential_id,
                 credential_subject, on_duplicate, state, created_at, updated_at)
             VALUES (?1, ?2, 'h', 'e', 'd', 'c', '{}', 'revoke', 'queued', 0, 0)",
            &[text(id), text(source)],
        )
    };
    for source in ["webhook:stripe", "webhook:", "webhook:KYC", ""] {
        let refused = insert("iss_bad", source).expect_err(source);
        assert!(
            refused.to_lowercase().contains("check constraint"),
            "{source:?}: {refused}"
        );
    }
    insert("iss_ok", "fedcba9876543210").unwrap();
    insert("iss_kyc", "webhook:kyc").unwrap();
}
