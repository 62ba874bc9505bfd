//! The JWKS over HTTPS: keyhost's public listener with a certificate from a test CA, fetched by
//! a client and by the AIR Kit emulator that trust that CA.

use std::sync::Arc;

use keyhost::clock::ManualClock;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};

use crate::helpers::start;
use crate::issuance::{free_port, issue, issuing_config, start_emulator};

/// A CA and a certificate for localhost signed by it, written as PEM files in `dir`; generated
/// per test and never used outside it.
pub fn test_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca, cert, key)
}

#[tokio::test]
async fn the_jwks_is_served_over_https_and_the_emulator_verifies_through_it() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let port = free_port();
    let ca_for_emulator = ca.clone();
    let upstream = start_emulator(port, move |e| {
        e.jwks_url = format!("https://localhost:{port}/.well-known/jwks.json");
        e.ca_file = Some(ca_for_emulator);
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = issuing_config(dir.path(), port, &upstream.base_url);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();

    let roots = reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_merge(roots)
        .build()
        .unwrap();
    let res = https
        .get(format!("https://localhost:{port}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = res.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(
        app.http
            .get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
            .send()
            .await
            .is_err(),
        "no plain HTTP on the TLS port"
    );

    let (_, api_key) = app.create_client(&["issue"]).await;
    let (status, body) = issue(
        &app,
        &api_key,
        json!({"email": "u@example.com", "credentialSubject": {"age": 30}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_certificate_without_its_key_is_refused_at_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let pki = tempfile::tempdir().unwrap();
    let (_, cert, _) = test_pki(pki.path());
    let mut config = crate::helpers::test_config(dir.path());
    config.tls_cert = Some(cert.clone());
    let err = start(dir.clone(), ManualClock::starting_now(), config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("KEYHOST_TLS_KEY"));
    let mut config = crate::helpers::test_config(dir.path());
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(cert);
    let err = start(dir, ManualClock::starting_now(), config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("private key"), "{err:#}");
}
