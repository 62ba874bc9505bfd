//! Issuance and status: AIR Kit's answer shapes, duplicates under `onDuplicate`, the on-chain
//! status.

use serde_json::json;

use super::harness::{ISSUER_DID, PROGRAM, answer, env, issue_body};

#[tokio::test]
async fn an_issued_credential_waits_on_chain_and_then_is_onchain_with_the_seed_shapes() {
    let env = env().await;
    let token = env.token("user@example.com", "ES256").await;
    let issued = env.emu.issue(&token, issue_body()).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let fields: Vec<_> = issued.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields, ["coreClaimHash", "credentialId", "userUuid"]);
    let hash = issued.body["coreClaimHash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_eq!(issued.body["credentialId"], PROGRAM);
    let uuid = issued.body["userUuid"].as_str().unwrap();
    assert_eq!(
        uuid.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );

    let waiting = env.emu.status(&token, hash).await;
    assert_eq!(waiting.status, 200);
    assert_eq!(
        waiting.body,
        json!({"coreClaimHash": hash, "vcStatus": "WAIT_ONCHAIN"})
    );

    // The on-chain delay (200 ms) passes on the emulator's clock.
    env.clock.advance(1);
    let onchain = env.emu.status(&token, hash).await;
    assert_eq!(onchain.status, 200, "{}", onchain.body);
    let onchain = onchain.body;
    let fields: Vec<_> = onchain.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        fields,
        [
            "coreClaimHash",
            "issuanceDate",
            "issuerDid",
            "vcId",
            "vcStatus"
        ]
    );
    assert_eq!(onchain["coreClaimHash"], hash);
    assert_eq!(onchain["issuerDid"], ISSUER_DID);
    let date = onchain["issuanceDate"].as_str().unwrap();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let parsed = time::PrimitiveDateTime::parse(date, format).expect("YYYY-MM-DD HH:MM:SS");
    let age = time::OffsetDateTime::now_utc() - parsed.assume_utc();
    assert!(age.whole_seconds().abs() < 60, "UTC issuance time: {date}");
    let vc_id = onchain["vcId"].as_str().unwrap();
    assert!(vc_id.len() >= 16 && vc_id.chars().all(|c| c.is_ascii_alphanumeric()));

    assert_eq!(env.emu.control.credentials(), 1);
    assert_eq!(
        env.emu.control.issue_calls(),
        [(
            "user@example.com".to_owned(),
            PROGRAM.to_owned(),
            "revoke".to_owned()
        )]
    );
    let counts = env.emu.control.status_counts();
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), [(200, 3)]);
}

#[tokio::test]
async fn es256_and_rs256_tokens_from_keyhost_are_both_accepted_and_the_user_uuid_is_stable() {
    let env = env().await;
    let mut uuids = Vec::new();
    for alg in ["ES256", "RS256"] {
        let token = env.token("same@example.com", alg).await;
        let issued = env.emu.issue(&token, issue_body()).await;
        assert_eq!(issued.status, 200, "{alg}: {}", issued.body);
        uuids.push(issued.body["userUuid"].clone());
        let status = env
            .emu
            .status(&token, issued.body["coreClaimHash"].as_str().unwrap())
            .await;
        assert_eq!(status.status, 200, "{alg}: {}", status.body);
    }
    assert_eq!(uuids[0], uuids[1], "userUuid is stable per email");
    let other = env.token("other@example.com", "ES256").await;
    let issued = env.emu.issue(&other, issue_body()).await;
    assert_ne!(issued.body["userUuid"], uuids[0]);
}

#[tokio::test]
async fn a_duplicate_with_ignore_is_409_carrying_the_existing_hash() {
    let env = env().await;
    let token = env.token("dup@example.com", "ES256").await;
    let first = env.emu.issue(&token, issue_body()).await;
    assert_eq!(first.status, 200);
    let mut body = issue_body();
    body["onDuplicate"] = json!("ignore");
    let dup = env.emu.issue(&token, body).await;
    dup.assert_error(409, "Duplicate credential exists (onDuplicate: ignore)");
    assert_eq!(dup.body["coreClaimHash"], first.body["coreClaimHash"]);
    assert_eq!(env.emu.control.credentials(), 1);

    // Another program or another user is not a duplicate.
    let mut other_program = issue_body();
    other_program["credentialId"] = json!("another-program");
    other_program["onDuplicate"] = json!("ignore");
    assert_eq!(env.emu.issue(&token, other_program).await.status, 200);
    let other_user = env.token("someone@example.com", "ES256").await;
    let mut body = issue_body();
    body["onDuplicate"] = json!("ignore");
    assert_eq!(env.emu.issue(&other_user, body).await.status, 200);
}

#[tokio::test]
async fn a_duplicate_with_revoke_reissues_under_a_new_hash_and_the_old_one_keeps_its_status() {
    let env = env().await;
    let token = env.token("dup@example.com", "ES256").await;
    let first = env.emu.issue(&token, issue_body()).await;
    let mut body = issue_body();
    body["onDuplicate"] = json!("revoke");
    let second = env.emu.issue(&token, body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(second.body["coreClaimHash"], first.body["coreClaimHash"]);
    // The default is revoke too.
    let third = env.emu.issue(&token, issue_body()).await;
    assert_eq!(third.status, 200);
    assert_ne!(third.body["coreClaimHash"], second.body["coreClaimHash"]);
    assert_eq!(env.emu.control.credentials(), 1, "only the last is live");
    let old = env
        .emu
        .status(&token, first.body["coreClaimHash"].as_str().unwrap())
        .await;
    assert_eq!(old.status, 200, "a revoked credential still has a status");
    let calls: Vec<_> = env
        .emu
        .control
        .issue_calls()
        .into_iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(calls, ["revoke", "revoke", "revoke"]);
}

#[tokio::test]
async fn an_unknown_status_hash_is_404_with_airs_message_and_a_missing_one_is_400() {
    let env = env().await;
    let token = env.token("user@example.com", "ES256").await;
    env.emu
        .status(&token, &"0".repeat(64))
        .await
        .assert_error(404, "No credential found for the given hash.");
    let res = env
        .emu
        .http
        .get(format!("{}/credentials/status", env.emu.base))
        .header("x-partner-auth", &token)
        .send()
        .await
        .unwrap();
    let missing = answer(res).await;
    assert_eq!(missing.status, 400);
    assert!(missing.message().contains("coreClaimHash"));
    env.emu
        .status(&token, "")
        .await
        .assert_error(400, missing.message());
    // Without a token, the status endpoint is a 401 like the other one.
    let res = env
        .emu
        .http
        .get(format!(
            "{}/credentials/status?coreClaimHash=abc",
            env.emu.base
        ))
        .send()
        .await
        .unwrap();
    answer(res)
        .await
        .assert_error(401, "Missing x-partner-auth header");
}
