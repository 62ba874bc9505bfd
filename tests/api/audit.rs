//! The audit trail as a hash chain: `keyhost audit verify` names the first row that is not as
//! keyhost wrote it (edited, deleted, moved, forged, or cut off the end), a signed head kept
//! elsewhere catches a rolled-back store, and `keyhost audit export` writes JSON lines.

use std::process::Output;

use keyhost::store::sql::Value as Sql;
use serde_json::{Value, json};

use crate::cli::keyhost;
use crate::helpers::{RawDb, TestApp, spawn_app};

/// `keyhost audit verify [args]` on the app's store: whether it passed, and its report.
fn verify(app: &TestApp, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out: Output = keyhost(app.dir.path(), &all);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON report: {}", String::from_utf8_lossy(&out.stderr)));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not as keyhost wrote it"), "{stderr}");
    }
    (out.status.success(), report)
}

fn problem(report: &Value) -> (i64, String) {
    let p = &report["problem"];
    (
        p["row"].as_i64().unwrap(),
        p["what"].as_str().unwrap().to_owned(),
    )
}

/// A trail with some history: clients, a rotation (a key transition: a signed head), admins.
async fn busy_app() -> TestApp {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_client(&["issue"]).await;
    }
    app.rotate("ES256", false).await;
    let res = app
        .admin_post("/admin/admins", json!({"name": "alice", "role": "reader"}))
        .await;
    assert_eq!(res.status(), 201);
    app.create_client(&["issue"]).await;
    app
}

fn ids(db: &RawDb) -> Vec<i64> {
    db.query_rows("SELECT id FROM audit ORDER BY id", &[])
        .into_iter()
        .map(|r| match &r[0] {
            Sql::Int(i) => *i,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn every_change_extends_the_chain_and_key_transitions_sign_its_head() {
    let app = busy_app().await;
    let (ok, report) = verify(&app, &[]);
    assert!(ok, "{report}");
    assert!(report["rows"].as_i64().unwrap() >= 8, "{report}");
    assert_eq!(report["fromBeforeTheChain"], 0);
    assert!(report["signedHeads"].as_i64().unwrap() >= 1, "{report}");
    // The signed head names the active ES256 key and the row before it.
    let rows = app.admin_json("/admin/audit?limit=1000").await;
    let head = rows["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "audit.head")
        .expect("a signed head")
        .clone();
    assert_eq!(head["actor"], "system");
    assert_eq!(
        head["detail"]["seq"].as_i64().unwrap(),
        head["id"].as_i64().unwrap() - 1
    );
    let kid = head["subject"].as_str().unwrap();
    assert!(app.kids_in("active").await.contains(&kid.to_owned()));
}

#[tokio::test]
async fn an_edited_row_is_named() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let target = ids(&db)[3];
    db.execute(
        "UPDATE audit SET actor = 'admin:somebody-else' WHERE id = ?1",
        &[Sql::Int(target)],
    );
    let (ok, report) = verify(&app, &[]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, target, "{what}");
    assert!(what.contains("edited"), "{what}");
}

#[tokio::test]
async fn a_deleted_row_is_named_by_the_row_after_it() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let all = ids(&db);
    db.execute("DELETE FROM audit WHERE id = ?1", &[Sql::Int(all[2])]);
    let (ok, report) = verify(&app, &[]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, all[3], "{what}");
    assert!(
        what.contains(&format!("does not follow row {}", all[1])),
        "{what}"
    );
}

#[tokio::test]
async fn rows_swapped_out_of_order_are_named() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let all = ids(&db);
    let (a, b) = (all[2], all[3]);
    // Every column moves with its row except the id: the rows trade places.
    db.execute("UPDATE audit SET id = -1 WHERE id = ?1", &[Sql::Int(a)]);
    db.execute(
        "UPDATE audit SET id = ?1 WHERE id = ?2",
        &[Sql::Int(a), Sql::Int(b)],
    );
    db.execute("UPDATE audit SET id = ?1 WHERE id = -1", &[Sql::Int(b)]);
    let (ok, report) = verify(&app, &[]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, a, "{what}");
}

#[tokio::test]
async fn a_row_forged_with_a_correct_hash_fails_its_mac() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let last = *ids(&db).last().unwrap();
    let prev = db.query_bytes("SELECT hash FROM audit WHERE id = ?1", &[Sql::Int(last)]);
    let (id, at, detail) = (last + 1, app.now(), "{}");
    // SHA-256 is public: anyone can extend the chain, but not with keyhost's MAC.
    let hash = keyhost::store::audit::link_hash(
        &prev,
        id,
        at,
        "admin:bootstrap",
        "key.revoke",
        "somekid",
        detail,
    );
    for mac in [Sql::Null, Sql::Blob(vec![7; 32])] {
        db.execute("DELETE FROM audit WHERE id = ?1", &[Sql::Int(id)]);
        db.execute(
            "INSERT INTO audit (id, at, actor, action, subject, detail, prev_hash, hash, mac)
             VALUES (?1, ?2, 'admin:bootstrap', 'key.revoke', 'somekid', ?3, ?4, ?5, ?6)",
            &[
                Sql::Int(id),
                Sql::Int(at),
                Sql::Text(detail.into()),
                Sql::Blob(prev.clone()),
                Sql::Blob(hash.to_vec()),
                mac,
            ],
        );
        let (ok, report) = verify(&app, &[]);
        assert!(!ok);
        let (row, what) = problem(&report);
        assert_eq!(row, id, "{what}");
        assert!(what.contains("MAC"), "{what}");
    }
}

#[tokio::test]
async fn rows_cut_off_the_end_are_caught_by_the_recorded_head() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let all = ids(&db);
    let keep = all[all.len() - 3];
    db.execute("DELETE FROM audit WHERE id > ?1", &[Sql::Int(keep)]);
    let (ok, report) = verify(&app, &[]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, keep, "{what}");
    assert!(what.contains("removed from the end"), "{what}");
}

#[tokio::test]
async fn a_trail_rolled_back_with_its_head_record_is_caught_by_a_signed_head_kept_elsewhere() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    // What a backup taken now would hold: the trail's length and its head record.
    let cut = *ids(&db).last().unwrap();
    let head_value = db.query_string("SELECT value FROM settings WHERE name = 'audit_head'", &[]);
    let head_mac = db.query_bytes("SELECT mac FROM settings WHERE name = 'audit_head'", &[]);
    // Later: the pending key activates (a transition: its head is signed and logged, and an
    // operator keeps it), more changes.
    app.advance(2 * 24 * 3600).await;
    app.create_client(&["issue"]).await;
    let entries = app.admin_json("/admin/audit?limit=1000").await;
    let kept = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "audit.head" && e["detail"]["seq"].as_i64().unwrap() > cut)
        .expect("the rotation's signed head")["detail"]["jws"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        verify(&app, &["--head", &kept]).0,
        "the whole trail holds it"
    );
    // The store is rolled back: the rows since, and the head record, as the backup had them.
    db.execute("DELETE FROM audit WHERE id > ?1", &[Sql::Int(cut)]);
    db.execute(
        "UPDATE settings SET value = ?1, mac = ?2 WHERE name = 'audit_head'",
        &[Sql::Text(head_value), Sql::Blob(head_mac)],
    );
    let (ok, report) = verify(&app, &[]);
    assert!(ok, "from inside, a consistent older trail: {report}");
    let head_file = app.dir.path().join("kept-head.jws");
    std::fs::write(&head_file, format!("{kept}\n")).unwrap();
    let (ok, report) = verify(&app, &["--head-file", head_file.to_str().unwrap()]);
    assert!(!ok);
    let (_, what) = problem(&report);
    assert!(
        what.contains("truncated") && what.contains("older backup"),
        "{what}"
    );
    // A head that is not keyhost's is refused as such.
    let mut forged = kept.clone();
    forged.push('A');
    let (ok, report) = verify(&app, &["--head", &forged]);
    assert!(!ok);
    assert!(problem(&report).1.contains("does not verify"), "{report}");
}

#[tokio::test]
async fn export_writes_json_lines_with_hashes_and_never_a_secret() {
    let app = busy_app().await;
    let since_now = app.now();
    app.advance(2 * 24 * 3600).await;
    let out = keyhost(app.dir.path(), &["audit", "export"]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 8);
    for pair in lines.windows(2) {
        assert_eq!(pair[1]["prevHash"], pair[0]["hash"], "{pair:?}");
    }
    assert!(lines[0]["at"].as_str().unwrap().ends_with('Z'));
    let text = serde_json::to_string(&lines).unwrap();
    assert!(!text.contains("khc_") && !text.contains(crate::helpers::ADMIN_TOKEN));
    let since = keyhost(
        app.dir.path(),
        &["audit", "export", "--since", &(since_now + 1).to_string()],
    );
    let later = String::from_utf8(since.stdout).unwrap().lines().count();
    assert!(
        later >= 2 && later < lines.len(),
        "{later} of {}",
        lines.len()
    );
    let file = app.dir.path().join("audit.jsonl");
    let out = keyhost(
        app.dir.path(),
        &["audit", "export", "--output", file.to_str().unwrap()],
    );
    assert!(out.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        lines.len()
    );
}

#[tokio::test]
async fn concurrent_changes_never_fork_the_chain() {
    let app = spawn_app().await;
    let creations = (0..24).map(|_| app.create_client(&["issue"]));
    futures_util::future::join_all(creations).await;
    let (ok, report) = verify(&app, &[]);
    assert!(ok, "{report}");
}

#[tokio::test]
async fn rows_cut_off_the_end_are_caught_even_with_the_head_record_rewritten_without_a_mac() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let all = ids(&db);
    let keep = all[all.len() - 3];
    db.execute("DELETE FROM audit WHERE id > ?1", &[Sql::Int(keep)]);
    // Anyone can compute the head of what is left; only keyhost can MAC it.
    let hash = db.query_bytes("SELECT hash FROM audit WHERE id = ?1", &[Sql::Int(keep)]);
    db.execute(
        "UPDATE settings SET value = ?1, mac = NULL WHERE name = 'audit_head'",
        &[Sql::Text(keyhost::store::audit::head_value(keep, &hash))],
    );
    let (ok, report) = verify(&app, &[]);
    assert!(!ok, "{report}");
    let (row, what) = problem(&report);
    assert_eq!(row, keep, "{what}");
    assert!(what.contains("head") && what.contains("MAC"), "{what}");
}

#[tokio::test]
async fn a_trail_whose_hashes_were_wiped_is_never_chained_again_as_from_before_the_chain() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let target = ids(&db)[3];
    // Edit a row, then make the whole trail look like one from before the chain: no hashes, no
    // MACs, no head record. Whatever opens the store next (a server, any CLI command, `audit
    // verify` itself) must not chain it again and vouch for it.
    db.execute(
        "UPDATE audit SET actor = 'admin:somebody-else' WHERE id = ?1",
        &[Sql::Int(target)],
    );
    db.execute(
        "UPDATE audit SET prev_hash = NULL, hash = NULL, mac = NULL",
        &[],
    );
    db.execute("DELETE FROM settings WHERE name = 'audit_head'", &[]);
    for _ in 0..2 {
        let (ok, report) = verify(&app, &[]);
        assert!(!ok, "{report}");
        assert_eq!(report["fromBeforeTheChain"], 0, "{report}");
        let (row, what) = problem(&report);
        assert_eq!(row, ids(&db)[0], "{what}");
        assert!(what.contains("no hash"), "{what}");
        // The server goes on recording changes meanwhile.
        app.create_client(&["issue"]).await;
    }
}

/// Recomputes every row's link from the first, as anyone can (SHA-256 is public), leaving the
/// MACs out; the hash of the last row.
fn rehash_without_macs(db: &RawDb) -> (i64, Vec<u8>) {
    let text = |v: &Sql| match v {
        Sql::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    let int = |v: &Sql| match v {
        Sql::Int(i) => *i,
        other => panic!("{other:?}"),
    };
    db.execute(
        "UPDATE audit SET prev_hash = NULL, hash = NULL, mac = NULL",
        &[],
    );
    let mut prev = keyhost::store::audit::GENESIS.to_vec();
    let mut last = 0;
    for row in db.query_rows(
        "SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id",
        &[],
    ) {
        let id = int(&row[0]);
        let hash = keyhost::store::audit::link_hash(
            &prev,
            id,
            int(&row[1]),
            &text(&row[2]),
            &text(&row[3]),
            &text(&row[4]),
            &text(&row[5]),
        );
        db.execute(
            "UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1",
            &[Sql::Int(id), Sql::Blob(prev), Sql::Blob(hash.to_vec())],
        );
        (prev, last) = (hash.to_vec(), id);
    }
    (last, prev)
}

#[tokio::test]
async fn a_trail_rehashed_without_macs_from_its_first_row_is_caught_by_the_head_record() {
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let target = ids(&db)[3];
    db.execute(
        "UPDATE audit SET actor = 'admin:somebody-else' WHERE id = ?1",
        &[Sql::Int(target)],
    );
    // Without MACs the rows pass for rows from before the chain; the signed heads would not.
    db.execute("DELETE FROM audit WHERE action = 'audit.head'", &[]);
    let (last, hash) = rehash_without_macs(&db);
    db.execute(
        "UPDATE settings SET value = ?1, mac = NULL WHERE name = 'audit_head'",
        &[Sql::Text(keyhost::store::audit::head_value(last, &hash))],
    );
    let (ok, report) = verify(&app, &[]);
    assert!(!ok, "{report}");
    let (row, what) = problem(&report);
    assert_eq!(row, last, "{what}");
    assert!(what.contains("carries no MAC"), "{what}");
    // Kept, the signed heads give the rewrite away before the end is reached.
    let app = busy_app().await;
    let db = RawDb::open(app.dir.path());
    let first_head = db.query_i64("SELECT MIN(id) FROM audit WHERE action = 'audit.head'", &[]);
    rehash_without_macs(&db);
    let (ok, report) = verify(&app, &[]);
    assert!(!ok, "{report}");
    let (row, what) = problem(&report);
    assert_eq!(row, first_head, "{what}");
    assert!(what.contains("signed head without a MAC"), "{what}");
}

#[tokio::test]
async fn a_trail_from_before_the_chain_is_chained_once_as_found_and_reported_as_such() {
    let app = spawn_app().await;
    app.create_client(&["issue"]).await;
    app.create_client(&["issue"]).await;
    // What an earlier keyhost left: rows without hashes, no signed heads, no head record.
    let db = RawDb::open(app.dir.path());
    db.execute("DELETE FROM audit WHERE action = 'audit.head'", &[]);
    db.execute(
        "UPDATE audit SET prev_hash = NULL, hash = NULL, mac = NULL",
        &[],
    );
    db.execute("DELETE FROM settings WHERE name = 'audit_head'", &[]);
    let legacy = ids(&db).len() as i64;
    assert!(legacy >= 2, "{legacy}");
    let (dir, clock) = app.stop().await;
    let app = crate::helpers::start(dir.clone(), clock, crate::helpers::test_config(dir.path()))
        .await
        .expect("restarts");
    app.create_client(&["issue"]).await;
    let (ok, report) = verify(&app, &[]);
    assert!(ok, "{report}");
    assert_eq!(report["fromBeforeTheChain"], legacy, "{report}");
    assert!(report["rows"].as_i64().unwrap() > legacy, "{report}");
    // Chained as found: from now on an edit of one of them shows.
    db.execute(
        "UPDATE audit SET subject = 'another' WHERE id = ?1",
        &[Sql::Int(ids(&db)[1])],
    );
    let (ok, report) = verify(&app, &[]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, ids(&db)[1], "{what}");
    assert!(what.contains("edited"), "{what}");
}

#[tokio::test]
async fn a_head_that_is_not_a_signed_audit_head_is_refused_and_one_beyond_the_end_is_named() {
    let app = busy_app().await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    // A Partner JWT, signed by the very key that signs heads, is not a head.
    let jwt = app
        .mint_ok(&api_key, json!({"email": "u@example.com"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for garbage in [jwt.as_str(), "", "a.b.c", "not a jws", "..", "a.b.c.d"] {
        let out = keyhost(app.dir.path(), &["audit", "verify", "--head", garbage]);
        assert!(!out.status.success(), "{garbage:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--head"), "{garbage:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = app.dir.path().join("no-such-head.jws");
    let out = keyhost(
        app.dir.path(),
        &["audit", "verify", "--head-file", missing.to_str().unwrap()],
    );
    assert!(!out.status.success());
    // A genuine head, and the trail cut back to before the row it covers.
    let entries = app.admin_json("/admin/audit?limit=1000").await;
    let head = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "audit.head")
        .unwrap()["detail"]
        .clone();
    let (seq, jws) = (head["seq"].as_i64().unwrap(), head["jws"].as_str().unwrap());
    assert!(verify(&app, &["--head", jws]).0);
    let db = RawDb::open(app.dir.path());
    db.execute("DELETE FROM audit WHERE id >= ?1", &[Sql::Int(seq)]);
    let (ok, report) = verify(&app, &["--head", jws]);
    assert!(!ok);
    let (row, what) = problem(&report);
    assert_eq!(row, seq - 1, "{what}");
    assert!(what.contains(&format!("has no row {seq}")), "{what}");
}

#[tokio::test]
async fn export_never_overwrites_a_file_and_refuses_a_time_it_cannot_read() {
    let app = busy_app().await;
    let file = app.dir.path().join("kept.jsonl");
    std::fs::write(&file, "evidence kept earlier\n").unwrap();
    let out = keyhost(
        app.dir.path(),
        &["audit", "export", "--output", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "evidence kept earlier\n"
    );
    for bad in ["yesterday", "2026-13-01T00:00:00Z", "1e9", ""] {
        let out = keyhost(app.dir.path(), &["audit", "export", "--since", bad]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
    let future = (app.now() + 3600).to_string();
    let out = keyhost(app.dir.path(), &["audit", "export", "--since", &future]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "nothing after the last row");
    let rfc = keyhost(
        app.dir.path(),
        &["audit", "export", "--since", "2000-01-01T00:00:00Z"],
    );
    let all = keyhost(app.dir.path(), &["audit", "export"]);
    assert!(rfc.status.success() && all.status.success());
    assert_eq!(rfc.stdout, all.stdout);
}

#[tokio::test]
async fn changes_through_two_servers_at_once_extend_one_chain_and_each_is_recorded_once() {
    let (a, b) = crate::admins::two_servers().await;
    let (_, api_key) = a.create_client(&["issue"]).await;
    let rounds = 12;
    let changes = (0..rounds).map(|i| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let app = if i % 2 == 0 { a } else { b };
            app.create_client(&["issue"]).await;
        }
    });
    let mints = (0..rounds).map(|i| {
        let (a, b, key) = (a.clone(), b.clone(), api_key.clone());
        async move {
            let app = if i % 2 == 0 { a } else { b };
            app.mint_ok(&key, json!({"email": "u@example.com"})).await;
        }
    });
    futures_util::future::join(
        futures_util::future::join_all(changes),
        futures_util::future::join_all(mints),
    )
    .await;
    // The minted tokens' minute is over: both servers' ledgers flush while an admin rotates.
    a.clock.advance(120);
    let flushes = [a.clone(), b.clone()].map(|app| {
        tokio::task::spawn_blocking(move || app.state.ledger.flush_all(&app.state.store))
    });
    let (rotated, flushed) = tokio::join!(
        a.rotate("ES256", false),
        futures_util::future::join_all(flushes)
    );
    assert!(rotated["key"]["kid"].is_string());
    for f in flushed {
        f.unwrap().unwrap();
    }
    let (ok, report) = verify(&a, &[]);
    assert!(ok, "{report}");
    let rows = a.admin_json("/admin/audit?limit=1000").await;
    let entries = rows["entries"].as_array().unwrap();
    let created = entries
        .iter()
        .filter(|e| e["action"] == "client.create")
        .count();
    assert_eq!(created, rounds + 1);
    let minted: i64 = entries
        .iter()
        .filter(|e| e["action"] == "token.mint")
        .map(|e| e["detail"]["count"].as_i64().unwrap())
        .sum();
    assert_eq!(minted, rounds as i64);
}
