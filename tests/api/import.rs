use serde_json::{Value, json};

use crate::helpers::spawn_app;

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_import_into_the_lifecycle_as_pending_keys() {
    for (file, alg, kty) in [
        ("rsa2048.pkcs8.pem", "RS256", "RSA"),
        ("rsa2048.pkcs1.pem", "RS256", "RSA"),
        ("p256.sec1.pem", "ES256", "EC"),
        ("p256.pkcs8.pem", "ES256", "EC"),
    ] {
        let app = spawn_app().await;
        let res = app
            .admin_post("/admin/keys/import", json!({"pem": fixture(file)}))
            .await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{file}: {body}");
        assert_eq!(body["key"]["alg"], alg);
        assert_eq!(body["key"]["origin"], "imported");
        assert_eq!(
            body["key"]["state"], "pending",
            "a running store gets a publish lead"
        );
        let kid = body["key"]["kid"].as_str().unwrap();
        let jwks = app.jwks().await;
        let entry = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .expect("published");
        assert_eq!(entry["kty"], kty);
        crate::helpers::assert_public_only(&jwks);
    }
}

#[tokio::test]
async fn pkcs1_and_pkcs8_forms_of_one_key_are_the_same_key() {
    let app = spawn_app().await;
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("rsa2048.pkcs8.pem")}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("rsa2048.pkcs1.pem")}),
        )
        .await;
    assert_eq!(res.status(), 409, "already held");
}

#[tokio::test]
async fn an_explicit_kid_such_as_the_partner_id_is_kept_and_cannot_name_two_live_keys() {
    let app = spawn_app().await;
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("p256.sec1.pem"), "kid": "partner-test-0001"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["key"]["kid"], "partner-test-0001");
    assert!(body["note"].is_string());
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("rsa2048.pkcs8.pem"), "kid": "partner-test-0001"}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("rsa2048.pkcs8.pem"), "kid": "bad kid\""}),
        )
        .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn unsupported_or_unusable_keys_are_refused_with_a_reason() {
    let app = spawn_app().await;
    let cases = [
        (fixture("rsa1024.pkcs8.pem"), "VALIDATION_ERROR", "2048"),
        (fixture("rsa2048-e3.pkcs8.pem"), "VALIDATION_ERROR", "65537"),
        (fixture("p384.sec1.pem"), "VALIDATION_ERROR", "P-256"),
        (fixture("ed25519.pkcs8.pem"), "VALIDATION_ERROR", "P-256"),
        (
            fixture("rsa2048.public.pem"),
            "VALIDATION_ERROR",
            "private key",
        ),
        (
            fixture("p256.encrypted.pem"),
            "VALIDATION_ERROR",
            "encrypted",
        ),
        ("hello".to_owned(), "BAD_VALUE", "PEM"),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
            "BAD_VALUE",
            "does not contain a valid key",
        ),
    ];
    for (pem, identifier, hint) in cases {
        let res = app
            .admin_post("/admin/keys/import", json!({"pem": pem}))
            .await;
        assert_eq!(res.status(), 400, "{pem}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["identifier"], identifier, "{pem}: {body}");
        assert!(body["message"].as_str().unwrap().contains(hint), "{body}");
        if let Some(line) = pem.lines().nth(1).filter(|l| l.len() > 8) {
            assert!(!body.to_string().contains(line), "no key material echoed");
        }
    }
    assert_eq!(app.keys().await.len(), 2, "nothing was added");
}

#[tokio::test]
async fn a_revoked_key_can_never_be_imported_again() {
    let app = spawn_app().await;
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("p256.pkcs8.pem")}),
        )
        .await;
    let body: Value = res.json().await.unwrap();
    let kid = body["key"]["kid"].as_str().unwrap().to_owned();
    let res = app
        .admin_post(&format!("/admin/keys/{kid}/revoke"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .admin_post(
            "/admin/keys/import",
            json!({"pem": fixture("p256.sec1.pem")}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
}
