//! KYC webhooks that trigger issuance: iDenfy's verification webhook and the kyc-complete example.

use aws_lc_rs::hmac;
use keyhost::clock::Clock;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::issuance::{spawn_issuing, until_state};

const IDENFY_KEY: &str = "idenfy-test-signing-key";
const KYC_SECRET: &str = "kyc-webhook-test-secret";

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
    hex::encode(tag.as_ref())
}

pub(crate) fn idenfy_body(
    scan_ref: &str,
    client_id: &str,
    is_final: bool,
    overall: &str,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "final": is_final,
        "platform": "PC",
        "status": {"overall": overall, "suspicionReasons": [], "autoDocument": "DOC_VALIDATED"},
        "scanRef": scan_ref,
        "clientId": client_id,
        "data": {"docFirstName": "JOHN", "docLastName": "DOE"},
    }))
    .unwrap()
}

async fn post_idenfy(app: &TestApp, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/webhooks/idenfy", app.internal))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("Idenfy-Signature", sig);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `X-Keyhost-Signature` of `body` at time `t`.
fn kyc_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let signed = [format!("{t}.").as_bytes(), body].concat();
    format!("t={t},sha256={}", hex_hmac(secret, &signed))
}

/// Posts to kyc-complete with the given signature header (if any) and extra headers.
async fn post_kyc(
    app: &TestApp,
    body: &[u8],
    signature: Option<String>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/webhooks/kyc-complete", app.internal))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("X-Keyhost-Signature", sig);
    }
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn kyc_body(email: &str, event_id: Option<&str>) -> Vec<u8> {
    let mut body = json!({"userEmail": email, "kycLevel": "basic"});
    if let Some(id) = event_id {
        body["eventId"] = json!(id);
    }
    serde_json::to_vec(&body).unwrap()
}

pub(crate) async fn signed_idenfy(app: &TestApp, body: &[u8]) -> (u16, Value) {
    post_idenfy(app, body, Some(hex_hmac(IDENFY_KEY, body))).await
}

async fn events(app: &TestApp) -> Vec<Value> {
    let body: Value = app.admin_json("/admin/kyc-events").await;
    body["events"].as_array().unwrap().clone()
}

async fn issuances(app: &TestApp) -> Vec<Value> {
    let body: Value = app.admin_json("/admin/issuances").await;
    body["issuances"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_approved_final_idenfy_verification_issues_a_credential_asynchronously() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = idenfy_body("scan-001", "jane@example.com", true, "APPROVED");
    let (status, answer) = signed_idenfy(&app, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "queued");
    let id = answer["issuanceId"].as_str().unwrap().to_owned();
    let done = until_state(&app, &id, "onchain").await;
    assert_eq!(done["email"], "jane@example.com");
    assert_eq!(done["source"], "webhook:idenfy");
    let calls = upstream.control.issue_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "jane@example.com");
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_refused_and_only_audited() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = idenfy_body("scan-002", "jane@example.com", true, "APPROVED");
    for sig in [
        Some(hex_hmac("wrong-key", &body)),
        Some("not hex".to_owned()),
        Some(hex_hmac(IDENFY_KEY, b"another body")),
        None,
    ] {
        let (status, answer) = post_idenfy(&app, &body, sig).await;
        assert_eq!(status, 401, "{answer}");
        assert_eq!(answer["identifier"], "UNAUTHORIZED");
    }
    assert!(events(&app).await.is_empty(), "nothing recorded");
    assert!(issuances(&app).await.is_empty());
    assert!(upstream.control.issue_calls().is_empty());
    let audit: Value = app.admin_json("/admin/audit").await;
    let rejected = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "webhook.rejected")
        .count();
    assert_eq!(
        rejected, 1,
        "one audit row per minute, not one per forged delivery"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keyhost_webhook_rejected_total{provider=\"idenfy\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn non_final_and_denied_results_are_recorded_but_issue_nothing() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    for (scan, is_final, overall) in [
        ("scan-003", false, "APPROVED"),
        ("scan-004", true, "DENIED"),
        ("scan-005", true, "SUSPECTED"),
    ] {
        let body = idenfy_body(scan, "jane@example.com", is_final, overall);
        let (status, answer) = signed_idenfy(&app, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["action"], "ignored", "{answer}");
    }
    let recorded = events(&app).await;
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|e| e["outcome"] == "ignored"));
    assert!(issuances(&app).await.is_empty());
    assert!(upstream.control.issue_calls().is_empty());
}

#[tokio::test]
async fn a_repeated_scan_ref_issues_once() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = idenfy_body("scan-006", "jane@example.com", true, "APPROVED");
    let (_, first) = signed_idenfy(&app, &body).await;
    assert_eq!(first["action"], "queued");
    let (status, second) = signed_idenfy(&app, &body).await;
    assert_eq!(status, 200);
    assert_eq!(second["action"], "duplicate");
    until_state(&app, first["issuanceId"].as_str().unwrap(), "submitted").await;
    assert_eq!(issuances(&app).await.len(), 1);
    assert_eq!(upstream.control.issue_calls().len(), 1);
}

#[tokio::test]
async fn a_client_id_is_mapped_to_an_email_or_recorded_as_unmatched() {
    let (app, _upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = idenfy_body("scan-007", "user-8812", true, "APPROVED");
    let (status, answer) = signed_idenfy(&app, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["action"], "unmatched");
    let unmatched: Value = app.admin_json("/admin/kyc-events?outcome=unmatched").await;
    assert_eq!(unmatched["events"][0]["clientId"], "user-8812");
    assert!(issuances(&app).await.is_empty());

    let res = app
        .admin_post(
            "/admin/kyc-subjects",
            json!({"clientId": "user-9000", "email": "mapped@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body = idenfy_body("scan-008", "user-9000", true, "APPROVED");
    let (_, answer) = signed_idenfy(&app, &body).await;
    assert_eq!(answer["action"], "queued", "{answer}");
    let row = until_state(&app, answer["issuanceId"].as_str().unwrap(), "submitted").await;
    assert_eq!(row["email"], "mapped@example.com");

    // The unmatched verification, redelivered once its clientId is mapped, issues too.
    let res = app
        .admin_post(
            "/admin/kyc-subjects",
            json!({"clientId": "user-8812", "email": "late@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body = idenfy_body("scan-007", "user-8812", true, "APPROVED");
    let (_, answer) = signed_idenfy(&app, &body).await;
    assert_eq!(answer["action"], "queued", "{answer}");
    let row = until_state(&app, answer["issuanceId"].as_str().unwrap(), "submitted").await;
    assert_eq!(row["email"], "late@example.com");
}

#[tokio::test]
async fn malformed_idenfy_bodies_get_the_standard_errors() {
    let (app, _upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    for (body, identifier) in [
        (b"not json".to_vec(), "JSON_ERROR"),
        (b"[1,2]".to_vec(), "BAD_VALUE"),
        (
            br#"{"final": true, "status": {"overall": "APPROVED"}}"#.to_vec(),
            "MISSING_VALUE",
        ),
        (br#"{"final": "yes", "scanRef": "s"}"#.to_vec(), "BAD_VALUE"),
    ] {
        let (status, answer) = signed_idenfy(&app, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["identifier"], identifier, "{answer}");
    }
}

#[tokio::test]
async fn the_kyc_complete_webhook_issues_the_seed_subject_when_signed() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("kyc@example.com", None);
    let now = app.clock.now();
    let (status, answer) =
        post_kyc(&app, &body, Some(kyc_signature("wrong", now, &body)), &[]).await;
    assert_eq!(
        (status, &answer["identifier"]),
        (401, &json!("UNAUTHORIZED"))
    );
    assert!(upstream.control.issue_calls().is_empty());

    let (status, answer) = post_kyc(
        &app,
        &body,
        Some(kyc_signature(KYC_SECRET, now, &body)),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["coreClaimHash"].as_str().unwrap().len(), 64);
    let row = &issuances(&app).await[0];
    assert_eq!(row["source"], "webhook:kyc");
    let subject = &row["credentialSubject"];
    assert_eq!(subject["kycVerified"], true);
    assert_eq!(subject["kycLevel"], "basic");
    assert!(subject["verifiedAt"].as_str().unwrap().ends_with('Z'));
    let detail: Value = app
        .admin_json(&format!(
            "/admin/issuances/{}",
            row["issuanceId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(detail["email"], "kyc@example.com");
}

#[tokio::test]
async fn a_kyc_complete_signature_binds_the_time_and_is_refused_outside_five_minutes() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("kyc@example.com", None);
    let now = app.clock.now();
    let refused = [
        // No header, a body-only signature, garbage, and a signature made for another time.
        None,
        Some(format!("sha256={}", hex_hmac(KYC_SECRET, &body))),
        Some("t=abc,sha256=00".to_owned()),
        Some(kyc_signature(KYC_SECRET, now, &body).replacen(
            &format!("t={now}"),
            &format!("t={}", now + 1),
            1,
        )),
        // Correctly signed, but too old or too far ahead.
        Some(kyc_signature(KYC_SECRET, now - 301, &body)),
        Some(kyc_signature(KYC_SECRET, now + 301, &body)),
    ];
    for signature in refused {
        let (status, answer) = post_kyc(&app, &body, signature.clone(), &[]).await;
        assert_eq!(status, 401, "{signature:?}: {answer}");
        assert_eq!(answer["identifier"], "UNAUTHORIZED");
    }
    let (_, stale) = post_kyc(
        &app,
        &body,
        Some(kyc_signature(KYC_SECRET, now - 301, &body)),
        &[],
    )
    .await;
    assert!(
        stale["message"].as_str().unwrap().contains("5 minutes"),
        "{stale}"
    );
    assert!(upstream.control.issue_calls().is_empty());

    let (status, answer) = post_kyc(
        &app,
        &body,
        Some(kyc_signature(KYC_SECRET, now - 299, &body)),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_replayed_kyc_complete_delivery_is_the_same_issuance() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("kyc@example.com", None);
    let signature = kyc_signature(KYC_SECRET, app.clock.now(), &body);
    let (_, first) = post_kyc(&app, &body, Some(signature.clone()), &[]).await;
    app.clock.advance(60);
    let (status, second) = post_kyc(&app, &body, Some(signature), &[]).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["issuanceId"], second["issuanceId"]);
    assert_eq!(issuances(&app).await.len(), 1);
    assert_eq!(upstream.control.issue_calls().len(), 1);

    // An unsigned Idempotency-Key would let a captured delivery through as a new event.
    let fresh = kyc_signature(KYC_SECRET, app.clock.now(), &body);
    let (status, answer) =
        post_kyc(&app, &body, Some(fresh), &[("Idempotency-Key", "new-key")]).await;
    assert_eq!((status, &answer["identifier"]), (400, &json!("BAD_VALUE")));
    assert!(
        answer["message"].as_str().unwrap().contains("eventId"),
        "{answer}"
    );
    assert_eq!(issuances(&app).await.len(), 1);
}

/// Spellings of one signature's hex that `u8::from_str_radix` would read as the same bytes: a
/// byte `0x` written `+x`, and upper case.
fn respellings(hex: &str) -> Vec<String> {
    let plus: String = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [b'0', low] => format!("+{}", *low as char),
            _ => String::from_utf8(pair.to_vec()).unwrap(),
        })
        .collect();
    vec![plus, hex.to_uppercase(), format!(" {hex} ")]
}

#[tokio::test]
async fn a_replay_with_the_signature_respelt_is_refused_or_the_same_issuance() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("respelt@example.com", None);
    // A time whose signature has a byte below 0x10, so that the `+x` spelling differs.
    let (t, hex) = (0..64)
        .map(|back| {
            let t = app.clock.now() - back;
            let signed = [format!("{t}.").as_bytes(), body.as_slice()].concat();
            (t, hex_hmac(KYC_SECRET, &signed))
        })
        .find(|(_, hex)| hex.as_bytes().chunks(2).any(|p| p[0] == b'0'))
        .unwrap();
    let (status, first) = post_kyc(&app, &body, Some(format!("t={t},sha256={hex}")), &[]).await;
    assert_eq!(status, 200, "{first}");
    for spelt in respellings(&hex) {
        let (status, answer) =
            post_kyc(&app, &body, Some(format!("t={t},sha256={spelt}")), &[]).await;
        assert!(
            status == 401 || (status == 200 && answer["issuanceId"] == first["issuanceId"]),
            "{spelt}: {status} {answer}"
        );
    }
    let (status, _) = post_kyc(
        &app,
        &body,
        Some(format!("t={t},sha256={}", respellings(&hex)[0])),
        &[],
    )
    .await;
    assert_eq!(status, 401, "a sign in the hex is not hex");
    assert_eq!(issuances(&app).await.len(), 1);
    assert_eq!(upstream.control.issue_calls().len(), 1);
}

#[tokio::test]
async fn an_unconfigured_webhook_says_which_setting_enables_it() {
    let app = crate::helpers::spawn_app().await;
    let body = idenfy_body("scan-009", "jane@example.com", true, "APPROVED");
    let (status, answer) = post_idenfy(&app, &body, Some(hex_hmac(IDENFY_KEY, &body))).await;
    assert_eq!(status, 503);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("KEYHOST_IDENFY_SIGNING_KEY")
    );
}

#[tokio::test]
async fn a_non_final_result_then_the_final_approval_issues_once() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let (_, first) = signed_idenfy(
        &app,
        &idenfy_body("scan-010", "j@example.com", false, "APPROVED"),
    )
    .await;
    assert_eq!(first["action"], "ignored");
    let (_, second) = signed_idenfy(
        &app,
        &idenfy_body("scan-010", "j@example.com", true, "APPROVED"),
    )
    .await;
    assert_eq!(second["action"], "queued");
    until_state(&app, second["issuanceId"].as_str().unwrap(), "submitted").await;
    assert_eq!(upstream.control.issue_calls().len(), 1);
}

#[tokio::test]
async fn a_kyc_complete_redelivery_with_its_event_id_is_the_same_issuance_later_too() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("kyc@example.com", Some("kyc-event-77"));
    let sign = |app: &TestApp| kyc_signature(KYC_SECRET, app.clock.now(), &body);
    let (_, first) = post_kyc(&app, &body, Some(sign(&app)), &[]).await;
    // Re-signed later, and the subject's verifiedAt would differ; it is still the same event.
    app.clock.advance(600);
    let (status, second) = post_kyc(&app, &body, Some(sign(&app)), &[]).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["issuanceId"], second["issuanceId"]);
    assert_eq!(upstream.control.issue_calls().len(), 1);

    // The same event id for another user is a conflict, not the first user's issuance.
    let other = kyc_body("someone.else@example.com", Some("kyc-event-77"));
    let signature = kyc_signature(KYC_SECRET, app.clock.now(), &other);
    let (status, answer) = post_kyc(&app, &other, Some(signature), &[]).await;
    assert_eq!(
        (status, &answer["identifier"]),
        (409, &json!("CONFLICT")),
        "{answer}"
    );
    assert_eq!(upstream.control.issue_calls().len(), 1);
}

#[tokio::test]
async fn every_json_route_refuses_a_repeated_member_the_same_way() {
    let (app, upstream, key) = spawn_issuing(|_| {}, |_| {}).await;
    let admin = crate::helpers::ADMIN_TOKEN;
    let t = app.clock.now();
    // (path, bearer, body): each body is valid but for one repeated member, nested or not.
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "/v1/tokens",
            &key,
            r#"{"email": "a@example.com", "email": "b@example.com"}"#.into(),
        ),
        (
            "/v1/credentials/issue-on-behalf",
            &key,
            r#"{"email": "a@example.com", "credentialSubject": {"age": 30, "age": 17}}"#.into(),
        ),
        (
            "/admin/clients",
            admin,
            r#"{"name": "x", "scopes": ["issue"], "scopes": ["verify"]}"#.into(),
        ),
        ("/admin/keys/rotate", admin, r#"{"alg": "ES256", "alg": "RS256"}"#.into()),
        (
            "/admin/kyc-subjects",
            admin,
            r#"{"clientId": "c1", "email": "a@example.com", "email": "b@example.com"}"#.into(),
        ),
        (
            "/webhooks/kyc-complete",
            "",
            r#"{"userEmail": "a@example.com", "userEmail": "b@example.com", "kycLevel": 1}"#.into(),
        ),
        (
            "/webhooks/idenfy",
            "",
            r#"{"final": true, "status": {"overall": "DENIED", "overall": "APPROVED"}, "scanRef": "s", "clientId": "a@example.com"}"#.into(),
        ),
    ];
    for (path, bearer, body) in cases {
        let mut req = app
            .http
            .post(format!("{}{path}", app.internal))
            .header("content-type", "application/json")
            .body(body.clone());
        if !bearer.is_empty() {
            req = req.bearer_auth(bearer);
        }
        if path == "/webhooks/kyc-complete" {
            req = req.header(
                "X-Keyhost-Signature",
                kyc_signature(KYC_SECRET, t, body.as_bytes()),
            );
        }
        if path == "/webhooks/idenfy" {
            req = req.header("Idenfy-Signature", hex_hmac(IDENFY_KEY, body.as_bytes()));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let answer: Value = res.json().await.unwrap();
        assert_eq!(
            (status, answer["identifier"].as_str()),
            (400, Some("JSON_ERROR")),
            "{path}: {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains("twice"),
            "{answer}"
        );
    }
    assert!(issuances(&app).await.is_empty());
    assert!(events(&app).await.is_empty());
    assert!(upstream.control.issue_calls().is_empty());
}

#[tokio::test]
async fn replayed_idenfy_deliveries_are_counted_on_their_first_row_not_stored_again() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let approved = idenfy_body("scan-r1", "replay@example.com", true, "APPROVED");
    let pending = idenfy_body("scan-r2", "replay@example.com", false, "APPROVED");
    let unmatched = idenfy_body("scan-r3", "user-404", true, "APPROVED");
    let (_, first) = signed_idenfy(&app, &approved).await;
    assert_eq!(first["action"], "queued", "{first}");
    for _ in 0..40 {
        for body in [&approved, &pending, &unmatched] {
            let (status, answer) = signed_idenfy(&app, body).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    let (_, again) = signed_idenfy(&app, &approved).await;
    assert_eq!(again["action"], "duplicate", "{again}");
    assert_eq!(again["repeats"], 41, "{again}");
    let events = events(&app).await;
    assert_eq!(events.len(), 3, "one row per distinct delivery: {events:?}");
    let repeats = |scan: &str| {
        events
            .iter()
            .find(|e| e["scanRef"] == scan)
            .map(|e| e["repeats"].as_i64().unwrap())
            .unwrap()
    };
    assert_eq!(
        (repeats("scan-r1"), repeats("scan-r2"), repeats("scan-r3")),
        (41, 39, 39)
    );
    assert_eq!(issuances(&app).await.len(), 1);
    until_state(&app, first["issuanceId"].as_str().unwrap(), "onchain").await;
    assert_eq!(upstream.control.issue_calls().len(), 1);

    // Once its clientId is mapped, the unmatched delivery (the same bytes) still issues, once.
    let res = app
        .admin_post(
            "/admin/kyc-subjects",
            json!({"clientId": "user-404", "email": "found@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let (_, queued) = signed_idenfy(&app, &unmatched).await;
    assert_eq!(queued["action"], "queued", "{queued}");
    let (_, replay) = signed_idenfy(&app, &unmatched).await;
    assert_eq!(replay["action"], "duplicate", "{replay}");
    let events = crate::webhooks::events(&app).await;
    assert_eq!(events.len(), 3);
    assert_eq!(issuances(&app).await.len(), 2);
}

#[tokio::test]
async fn kyc_events_give_their_times_in_rfc_3339_and_refuse_an_unknown_outcome() {
    let (app, _upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = idenfy_body("scan-t01", "jane@example.com", false, "APPROVED");
    signed_idenfy(&app, &body).await;
    signed_idenfy(&app, &body).await;
    let recorded = events(&app).await;
    let now = keyhost::clock::rfc3339(app.now());
    assert_eq!(recorded[0]["receivedAt"], now.as_str(), "{recorded:?}");
    assert_eq!(recorded[0]["lastReceivedAt"], now.as_str(), "{recorded:?}");
    assert_eq!(recorded[0]["repeats"], 1, "{recorded:?}");

    let res = app.admin_get("/admin/kyc-events?outcome=bogus").await;
    assert_eq!(res.status(), 400);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["identifier"], "BAD_VALUE", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("queued, unmatched, ignored, duplicate"),
        "{error}"
    );
    for outcome in ["queued", "unmatched", "ignored", "duplicate"] {
        let listed = app
            .admin_json(&format!("/admin/kyc-events?outcome={outcome}"))
            .await;
        let expected = usize::from(outcome == "ignored");
        assert_eq!(listed["events"].as_array().unwrap().len(), expected);
    }
}

#[tokio::test]
async fn kyc_complete_deliveries_are_listed_with_the_issuance_they_started_or_joined() {
    let (app, upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let now = app.clock.now();
    let body = kyc_body("kyc@example.com", Some("evt-7"));
    let signed = kyc_signature(KYC_SECRET, now, &body);
    // The delivery, the same bytes again, then the same event signed a second later.
    for signature in [
        signed.clone(),
        signed,
        kyc_signature(KYC_SECRET, now + 1, &body),
    ] {
        let (status, answer) = post_kyc(&app, &body, Some(signature), &[]).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(
        upstream.control.issue_calls().len(),
        1,
        "one event, one issuance"
    );
    let events: Value = app.admin_json("/admin/kyc-events").await;
    let events = events["events"].as_array().unwrap();
    let kyc: Vec<&Value> = events
        .iter()
        .filter(|e| e["provider"] == "kyc-complete")
        .collect();
    assert_eq!(kyc.len(), 2, "{events:?}");
    let issuance = &issuances(&app).await[0]["issuanceId"];
    let first = kyc.iter().find(|e| e["outcome"] == "queued").unwrap();
    assert_eq!(
        first["repeats"], 1,
        "identical bytes are counted, not stored"
    );
    assert_eq!(&first["issuanceId"], issuance);
    assert!(first["receivedAt"].as_str().unwrap().ends_with('Z'));
    let again = kyc.iter().find(|e| e["outcome"] == "duplicate").unwrap();
    assert_eq!(&again["issuanceId"], issuance);
    let queued: Value = app.admin_json("/admin/kyc-events?outcome=queued").await;
    assert!(
        queued["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "queued")
    );
}

#[tokio::test]
async fn identifier_limits_count_characters_not_bytes() {
    // 200 characters of two bytes each: within the documented "1 to 200 characters", and
    // refused before, when the limits counted bytes.
    let long = "é".repeat(200);
    let (app, _upstream, _) = spawn_issuing(|_| {}, |_| {}).await;
    let body = kyc_body("kyc@example.com", Some(&long));
    let signature = kyc_signature(KYC_SECRET, app.clock.now(), &body);
    let (status, answer) = post_kyc(&app, &body, Some(signature), &[]).await;
    assert_eq!(status, 200, "{answer}");
    let body = idenfy_body(&long, &long, true, "APPROVED");
    let (status, answer) = signed_idenfy(&app, &body).await;
    assert_eq!(
        (status, &answer["action"]),
        (200, &json!("unmatched")),
        "{answer}"
    );
    let res = app
        .admin_post(
            "/admin/kyc-subjects",
            json!({"clientId": long, "email": "mapped@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let too_long = "é".repeat(201);
    let body = kyc_body("kyc@example.com", Some(&too_long));
    let signature = kyc_signature(KYC_SECRET, app.clock.now(), &body);
    let (status, answer) = post_kyc(&app, &body, Some(signature), &[]).await;
    assert_eq!((status, &answer["identifier"]), (400, &json!("BAD_VALUE")));
}
