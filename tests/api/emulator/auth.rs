//! Authentication: each step of `x-partner-auth` verification refuses with AIR Kit's message.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyhost::clock::ManualClock;
use serde_json::json;

use super::harness::{
    Emu, answer, args_for, claims, env, es256_header, issue_body, kid_of, sign, unsigned, wall_now,
};
use crate::helpers::{PARTNER_ID, spawn_app_at_wall_clock, start, test_config};

#[tokio::test]
async fn a_token_without_typ_jwt_is_rejected_with_missing_typ_header() {
    let env = env().await;
    let (kid, key) = env.import_fixture().await;
    let good = sign(&es256_header(&kid), &claims("hand@example.com"), &key);
    assert_eq!(
        env.emu.issue(&good, issue_body()).await.status,
        200,
        "control: the same key with typ JWT is accepted"
    );
    let mut header = es256_header(&kid);
    header.typ = None;
    let token = sign(&header, &claims("hand@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing typ header");
    header.typ = Some("at+jwt".into());
    let token = sign(&header, &claims("hand@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing typ header");
}

#[tokio::test]
async fn an_algorithm_that_does_not_match_the_jwks_key_type_is_rejected() {
    let env = env().await;
    let (ec_kid, key) = env.import_fixture().await;
    let rsa_kid = kid_of(&env.token("u@example.com", "RS256").await);
    let mismatch = "Invalid signature: algorithm does not match the key type in your JWKS";
    let payload = claims("u@example.com");
    for (alg, kid) in [
        ("RS256", &ec_kid),
        ("ES256", &rsa_kid),
        ("PS256", &rsa_kid),
        ("ES384", &ec_kid),
    ] {
        let token = unsigned(
            json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            payload.clone(),
            &[7; 64],
        );
        env.emu
            .issue(&token, issue_body())
            .await
            .assert_error(401, mismatch);
    }
    // An HMAC token keyed with the public key's bytes: the classic confusion, refused before
    // any signature check.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(ec_kid.clone());
    let token = sign(&header, &payload, &EncodingKey::from_secret(b"public"));
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, mismatch);
    // The right algorithm still works.
    let token = sign(&es256_header(&ec_kid), &payload, &key);
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn a_bad_signature_is_rejected_as_invalid_signature() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig));
    env.emu
        .issue(&tampered, issue_body())
        .await
        .assert_error(401, "Invalid signature");

    // A payload swapped under a valid signature.
    let parts: Vec<_> = token.split('.').collect();
    let mut other = claims("attacker@example.com");
    other["exp"] = json!(wall_now() + 60);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(other.to_string()),
        parts[2]
    );
    env.emu
        .issue(&forged, issue_body())
        .await
        .assert_error(401, "Invalid signature");

    // Signed by a key that is not the one published under the kid.
    let rsa = env.token("u@example.com", "RS256").await;
    let (_, key) = env.import_fixture().await;
    let token = sign(
        &es256_header(&kid_of(&token)),
        &claims("u@example.com"),
        &key,
    );
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Invalid signature");
    assert_eq!(env.emu.issue(&rsa, issue_body()).await.status, 200);
}

#[tokio::test]
async fn an_expired_token_is_rejected_with_token_expired() {
    // A keyhost whose clock is an hour behind the wall clock mints tokens that the emulator,
    // which reads the wall clock, sees as expired.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(dir.path());
    let app = start(dir, ManualClock::new(wall_now() - 3600), config)
        .await
        .unwrap();
    let emu = Emu::start(args_for(&app)).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app
        .mint_ok(&key, json!({"email": "late@example.com"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.issue(&token, issue_body())
        .await
        .assert_error(401, "Token expired");
    assert!(emu.control.issue_calls().is_empty());
}

#[tokio::test]
async fn missing_claims_are_named_and_a_missing_exp_is_refused() {
    let env = env().await;
    let (kid, key) = env.import_fixture().await;
    for claim in ["partnerId", "email", "scope", "exp"] {
        let mut payload = claims("u@example.com");
        payload.as_object_mut().unwrap().remove(claim);
        let token = sign(&es256_header(&kid), &payload, &key);
        env.emu
            .issue(&token, issue_body())
            .await
            .assert_error(401, &format!("Missing claim: {claim}"));
    }
    let mut payload = claims("u@example.com");
    payload["email"] = json!(42);
    let token = sign(&es256_header(&kid), &payload, &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Invalid claim: email must be a string");
    let mut header = es256_header(&kid);
    header.kid = None;
    let token = sign(&header, &claims("u@example.com"), &key);
    env.emu
        .issue(&token, issue_body())
        .await
        .assert_error(401, "Missing kid header");
}

#[tokio::test]
async fn a_token_for_another_partner_is_rejected() {
    let app = spawn_app_at_wall_clock().await;
    let mut args = args_for(&app);
    args.partner_id = "partner-someone-else".into();
    let emu = Emu::start(args).await;
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.issue(&token, issue_body()).await.assert_error(
        401,
        &format!("partnerId {PARTNER_ID} does not match this partner (partner-someone-else)"),
    );
}

#[tokio::test]
async fn a_scope_that_is_not_accepted_is_rejected_and_accepted_scopes_are_configurable() {
    let env = env().await;
    let token = env
        .token_with(json!({"email": "u@example.com", "scope": "issue on-behalf"}))
        .await;
    env.emu.issue(&token, issue_body()).await.assert_error(
        401,
        "Scope not accepted: issue on-behalf. Accepted scopes: issue",
    );

    let emu = Emu::start({
        let mut args = args_for(&env.app);
        args.accept_scopes = vec!["issue".into(), "issue on-behalf".into()];
        args
    })
    .await;
    assert_eq!(emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn a_missing_or_unreadable_partner_token_is_401() {
    let env = env().await;
    let res = env
        .emu
        .http
        .post(format!("{}/credentials/issue-on-behalf", env.emu.base))
        .json(&issue_body())
        .send()
        .await
        .unwrap();
    answer(res)
        .await
        .assert_error(401, "Missing x-partner-auth header");
    for bad in [
        "not-a-jwt",
        "a.b.c",
        "....",
        "Bearer x.y.z",
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        let a = env.emu.issue(bad, issue_body()).await;
        assert_eq!(a.status, 401, "{bad}: {}", a.body);
        assert!(
            a.message().starts_with("JWT verification failed"),
            "{bad}: {}",
            a.body
        );
    }
}
