//! Personal data: kept for `KEYHOST_ISSUANCE_RETENTION`, erased on request, and then gone from
//! the database file (WAL included), not only from query results; never in the audit trail.

use serde_json::{Value, json};

use crate::cli::{json_of, keyhost};
use crate::helpers::{TestApp, on_postgres, stored_bytes};
use crate::issuance::{issue_for, issue_with, spawn_issuing, until_state};
use crate::webhooks::{idenfy_body, signed_idenfy};

const HOUR: i64 = 3600;

fn holds(app: &TestApp, needle: &str) -> bool {
    let bytes = stored_bytes(app.dir.path());
    let needle = needle.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

async fn audit_text(app: &TestApp) -> String {
    app.admin_json("/admin/audit?limit=1000").await.to_string()
}

async fn map_subject(app: &TestApp, client_id: &str, email: &str) {
    let res = app
        .admin_post(
            "/admin/kyc-subjects",
            json!({"clientId": client_id, "email": email}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn finished_issuances_lose_their_personal_data_after_the_retention_and_the_file_holds_none() {
    let (app, _upstream, key) = spawn_issuing(
        |_| {},
        |c| c.privacy.issuance_retention = std::time::Duration::from_secs(24 * HOUR as u64),
    )
    .await;
    let (status, body) = issue_with(
        &app,
        &key,
        json!({"email": "alice.retained@example.com", "credentialSubject": {"nickname": "alice-the-member"}}),
        Some("order-for-alice.retained"),
    )
    .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let id = body["issuanceId"].as_str().unwrap().to_owned();
    until_state(&app, &id, "onchain").await;
    // A mapping is not an issuance: it stays until erased on request.
    map_subject(&app, "client-bob", "bob.mapped@example.com").await;
    assert!(holds(&app, "alice.retained@example.com"));

    app.advance(23 * HOUR).await;
    let kept = crate::issuance::issuance(&app, &id).await;
    assert_eq!(
        kept["email"], "alice.retained@example.com",
        "not before its time"
    );

    app.advance(2 * HOUR).await;
    let erased = crate::issuance::issuance(&app, &id).await;
    assert_eq!(erased["email"], "", "{erased}");
    assert_eq!(erased["credentialSubject"], json!({}));
    assert_eq!(
        erased["state"], "onchain",
        "the record stays, with its state"
    );
    assert!(erased["erasedAt"].is_string(), "{erased}");
    assert!(erased["coreClaimHash"].is_string(), "hashes stay");
    for gone in [
        "alice.retained@example.com",
        "alice-the-member",
        "order-for-alice.retained",
    ] {
        assert!(!holds(&app, gone), "{gone} is still in the database");
    }
    assert!(
        holds(&app, "bob.mapped@example.com"),
        "the scan finds what is there"
    );
    let audit = audit_text(&app).await;
    assert!(audit.contains("privacy.purge"), "{audit}");
    assert!(!audit.contains("alice"), "{audit}");
    // The erased row is still keyhost's: the trail and the row checks agree.
    let report = json_of(&keyhost(app.dir.path(), &["audit", "verify"]));
    assert!(report["problem"].is_null(), "{report}");
    let listed = app.admin_json("/admin/issuances").await;
    assert!(
        !listed.to_string().contains("\"integrity\":\"failed\""),
        "{listed}"
    );
}

#[tokio::test]
async fn erasing_one_person_removes_their_issuances_deliveries_and_mappings_and_audits_no_address()
{
    let (app, _upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, carol) = issue_for(&app, &key, "carol.erased@example.com").await;
    let carol_id = carol["issuanceId"].as_str().unwrap().to_owned();
    until_state(&app, &carol_id, "onchain").await;
    let (_, dave) = issue_for(&app, &key, "dave.kept@example.com").await;
    until_state(&app, dave["issuanceId"].as_str().unwrap(), "onchain").await;
    // Carol verified with iDenfy too: her clientId's delivery, and its mapping.
    map_subject(&app, "carol-idenfy-id", "carol.erased@example.com").await;
    let (_, answer) = signed_idenfy(
        &app,
        &idenfy_body("scan-carol-1", "carol-idenfy-id", true, "APPROVED"),
    )
    .await;
    let kyc_issuance = answer["issuanceId"].as_str().unwrap().to_owned();
    until_state(&app, &kyc_issuance, "onchain").await;
    assert!(holds(&app, "carol.erased@example.com"));

    let erased = json_of(&keyhost(
        app.dir.path(),
        &["issuances", "erase", "--email", "Carol.Erased@Example.com"],
    ));
    assert_eq!(erased["issuances"], 2, "{erased}");
    assert_eq!(erased["kycSubjects"], 1, "{erased}");
    assert!(erased["kycEvents"].as_u64().unwrap() >= 1, "{erased}");
    assert_eq!(erased["scrubbed"], !on_postgres(), "{erased}");

    for gone in [
        "carol.erased@example.com",
        "carol-idenfy-id",
        "scan-carol-1",
    ] {
        assert!(!holds(&app, gone), "{gone} is still in the database");
    }
    assert!(holds(&app, "dave.kept@example.com"));
    let row = crate::issuance::issuance(&app, &carol_id).await;
    assert!(row["erasedAt"].is_string(), "{row}");
    // The trail says that it happened and by whom, not whose address it was.
    let audit = audit_text(&app).await;
    assert!(
        audit.contains("privacy.erase") && audit.contains("email-tag:"),
        "{audit}"
    );
    assert!(!audit.to_lowercase().contains("carol"), "{audit}");
    let report = json_of(&keyhost(app.dir.path(), &["audit", "verify"]));
    assert!(report["problem"].is_null(), "{report}");
    // An erased issuance is never sent again.
    let res = app
        .admin_post(&format!("/admin/issuances/{carol_id}/resume"), json!({}))
        .await;
    assert_eq!(res.status(), 409);
    let err: Value = res.json().await.unwrap();
    assert!(err["message"].as_str().unwrap().contains("erased"), "{err}");
}

#[tokio::test]
async fn an_issuance_still_in_progress_is_stopped_by_an_erasure_and_never_brought_back() {
    let (app, _upstream, key) = spawn_issuing(
        |e| e.onchain_delay = std::time::Duration::from_secs(3600),
        |_| {},
    )
    .await;
    let (_, body) = issue_for(&app, &key, "erin.pending@example.com").await;
    let id = body["issuanceId"].as_str().unwrap().to_owned();
    until_state(&app, &id, "submitted").await;
    let erased = json_of(&keyhost(
        app.dir.path(),
        &["issuances", "erase", "--email", "erin.pending@example.com"],
    ));
    assert_eq!(erased["issuances"], 1, "{erased}");
    let row = crate::issuance::issuance(&app, &id).await;
    assert_eq!(row["state"], "failed", "{row}");
    // The worker that held it in memory polls again: nothing of it comes back.
    app.advance(120).await;
    let row = crate::issuance::issuance(&app, &id).await;
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(row["email"], "", "{row}");
    assert!(!holds(&app, "erin.pending@example.com"));
}
