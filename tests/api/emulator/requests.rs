//! Body validation and business rules: each field error is a 400 naming the field, after
//! authentication; unknown issuers and programs, forbidden schemas and rejected consent answer as
//! AIR Kit does.

use serde_json::{Value, json};

use super::harness::{ISSUER_DID, PROGRAM, answer, env, env_with, issue_body};

#[tokio::test]
async fn each_body_error_is_a_400_naming_the_field() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let with = |field: &str, value: Option<Value>| {
        let mut body = issue_body();
        match value {
            Some(v) => body[field] = v,
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
        }
        body
    };
    let cases = [
        (json!([1, 2]), "Request body must be a JSON object"),
        (json!("text"), "Request body must be a JSON object"),
        (json!(null), "Request body must be a JSON object"),
        (with("issuerDid", None), "issuerDid is required"),
        (
            with("issuerDid", Some(json!(""))),
            "issuerDid must be a non-empty string",
        ),
        (
            with("issuerDid", Some(json!(7))),
            "issuerDid must be a non-empty string",
        ),
        (with("credentialId", None), "credentialId is required"),
        (
            with("credentialId", Some(json!(["x"]))),
            "credentialId must be a string",
        ),
        (
            with("credentialSubject", None),
            "credentialSubject is required",
        ),
        (
            with("credentialSubject", Some(json!("age=25"))),
            "credentialSubject must be an object",
        ),
        (
            with("credentialSubject", Some(json!([1]))),
            "credentialSubject must be an object",
        ),
        (
            with("onDuplicate", Some(json!("replace"))),
            "onDuplicate must be \"ignore\" or \"revoke\"",
        ),
        (
            with("onDuplicate", Some(json!(true))),
            "onDuplicate must be \"ignore\" or \"revoke\"",
        ),
    ];
    for (body, message) in cases {
        env.emu
            .issue(&token, body.clone())
            .await
            .assert_error(400, message);
    }
    let raw = |content_type: &'static str, body: &'static str| {
        env.emu
            .http
            .post(format!("{}/credentials/issue-on-behalf", env.emu.base))
            .header("x-partner-auth", &token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    answer(raw("application/json", "{not json").await.unwrap())
        .await
        .assert_error(400, "Request body must be a JSON object");
    answer(raw("text/plain", "{}").await.unwrap())
        .await
        .assert_error(400, "Content-Type must be application/json");
    assert!(env.emu.control.issue_calls().is_empty());
    assert_eq!(env.emu.control.credentials(), 0);
}

#[tokio::test]
async fn body_errors_come_after_authentication() {
    let env = env().await;
    let a = env.emu.issue("x.y.z", json!([])).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.message().starts_with("JWT verification failed: "),
        "{}",
        a.body
    );
    assert!(env.emu.control.issue_calls().is_empty());
}

#[tokio::test]
async fn unknown_issuer_and_program_are_404_a_forbidden_schema_403_and_rejected_consent_409() {
    let env = env_with(|args| {
        args.issuer_dids = vec![ISSUER_DID.into()];
        args.credential_ids = vec![PROGRAM.into(), "kyc-basic".into()];
        args.forbidden_credential_ids = vec!["kyc-basic".into()];
        args.consent_rejected = vec!["No@Example.com".into()];
    })
    .await;
    let token = env.token("u@example.com", "ES256").await;
    let mut body = issue_body();
    body["issuerDid"] = json!("did:air:id:test:unknown");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(404, "Unknown issuer DID");
    let mut body = issue_body();
    body["credentialId"] = json!("no-such-program");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(404, "Unknown program ID");
    let mut body = issue_body();
    body["credentialId"] = json!("kyc-basic");
    env.emu
        .issue(&token, body)
        .await
        .assert_error(403, "Schema not allowed for this issuer");
    let refused = env.token("no@example.com", "ES256").await;
    env.emu
        .issue(&refused, issue_body())
        .await
        .assert_error(409, "User consent rejected");
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
    assert_eq!(env.emu.control.issue_calls().len(), 5);
    assert_eq!(env.emu.control.credentials(), 1);
    let counts = env.emu.control.status_counts();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(200, 1), (403, 1), (404, 2), (409, 1)]
    );
}
