//! The JWKS over HTTPS: keyhost's public listener with a certificate from a test CA, fetched by
//! a client and by the AIR Kit emulator that trust that CA.

use std::sync::Arc;

use keyhost::clock::ManualClock;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};

use crate::helpers::{eventually, start};
use crate::issuance::{free_port, issue, issuing_config, start_emulator};

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

fn write_leaf(
    dir: &std::path::Path,
    issuer: &Issuer<'_, KeyPair>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, issuer)
        .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A CA and a certificate for localhost signed by it, written as PEM files in `dir` (with the CA
/// key, for renewals); generated per test and never used outside it.
pub fn test_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params().self_signed(&ca_key).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
    let (cert, key) = write_leaf(dir, &Issuer::new(ca_params(), ca_key));
    (ca, cert, key)
}

/// A new localhost certificate in `dir`, signed by the CA that [`test_pki`] left in `ca_dir`.
fn test_pki_signed_by(
    dir: &std::path::Path,
    ca_dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let (cert, key) = write_leaf(dir, &Issuer::new(ca_params(), ca_key));
    (ca_dir.join("ca.pem"), cert, key)
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
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
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
    assert_eq!(
        res.headers()["cache-control"],
        "public, max-age=300, stale-if-error=86100"
    );
    let jwks: Value = res.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let metrics = app.metrics().await;
    for line in [
        "keyhost_tls_certificate_checks_total{outcome=\"unchanged\"} ",
        "keyhost_tls_certificate_checks_total{outcome=\"reloaded\"} 0",
        "keyhost_tls_certificate_checks_total{outcome=\"failed\"} 0",
    ] {
        assert!(metrics.contains(line), "{metrics}");
    }
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
    config.tls.cert = Some(cert.clone());
    let err = start(dir.clone(), ManualClock::starting_now(), config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("KEYHOST_TLS_KEY"));
    let mut config = crate::helpers::test_config(dir.path());
    config.tls.cert = Some(cert.clone());
    config.tls.key = Some(cert);
    let err = start(dir, ManualClock::starting_now(), config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("private key"), "{err:#}");
}

/// The leaf certificate a TLS client is shown on `port`.
async fn served_leaf(port: u16, ca: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_ignored() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let metrics = keyhost::metrics::Metrics::default();
    let checks = metrics.tls_reload();
    let config = keyhost::http::tls::reloading_server_config(
        &cert,
        &key,
        std::time::Duration::from_millis(50),
        checks.clone(),
    )
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let server = keyhost::http::serve::Server::new(
        "public",
        tcp,
        Some(config),
        crate::helpers::bounds(64),
        Default::default(),
    );
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(server.run(axum::Router::new(), stopped));
    let first = pem_der(&cert);
    assert_eq!(served_leaf(port, &ca).await, first);
    let limit = std::time::Duration::from_secs(10);
    eventually(limit, "the reloader never looked at the files", || async {
        checks.unchanged.get() > 0
    })
    .await;
    assert_eq!((checks.reloaded.get(), checks.failed.get()), (0, 0));

    // A renewal from the same CA: new files in place (a look between the two copies may see a
    // certificate without its key, and fail; the next one reloads).
    let renewal = tempfile::tempdir().unwrap();
    let (_, cert2, key2) = test_pki_signed_by(renewal.path(), pki.path());
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    let renewed = pem_der(&cert);
    assert_ne!(renewed, first);
    eventually(limit, "the renewal was not picked up", || async {
        checks.reloaded.get() == 1
    })
    .await;
    assert_eq!(served_leaf(port, &ca).await, renewed);

    // A broken renewal is ignored: once the reloader has tried it, the last good certificate
    // is still served.
    let failed = checks.failed.get();
    std::fs::write(&cert, "not a certificate").unwrap();
    eventually(limit, "the broken renewal was never tried", || async {
        checks.failed.get() > failed
    })
    .await;
    assert_eq!(served_leaf(port, &ca).await, renewed);
    assert_eq!(checks.reloaded.get(), 1);
    let text = metrics.render();
    assert!(
        text.contains("keyhost_tls_certificate_checks_total{outcome=\"reloaded\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_doctor_names_an_untrusted_certificate_and_points_to_ca_file() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = crate::helpers::test_config(dir.path());
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let port = app.public.rsplit(':').next().unwrap();
    let mut args = keyhost::doctor::DoctorArgs {
        jwks_url: format!("https://localhost:{port}/.well-known/jwks.json"),
        token: None,
        partner_id: None,
        scope: "issue".into(),
        ca_file: None,
        json: false,
        watch: None,
        watch_timeout: std::time::Duration::from_secs(600),
    };
    let findings = keyhost::doctor::run(&args).await.unwrap();
    let finding = findings
        .iter()
        .find(|f| f.check == "jwks.certificate")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(finding.verdict, keyhost::doctor::Verdict::Fail);
    assert!(finding.detail.contains("not trusted"), "{finding:?}");
    assert!(finding.fix.unwrap().contains("--ca-file"), "{finding:?}");
    assert!(findings.iter().all(|f| f.check != "jwks.reachable"));

    args.ca_file = Some(ca);
    let findings = keyhost::doctor::run(&args).await.unwrap();
    assert!(
        findings
            .iter()
            .all(|f| f.verdict != keyhost::doctor::Verdict::Fail),
        "{findings:?}"
    );
}
