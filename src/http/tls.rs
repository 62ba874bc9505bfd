//! HTTPS for the public listener, with rustls (aws-lc-rs provider, HTTP/1.1 only).
//!
//! Handshakes are run by [`super::serve`], in each connection's own task and within its limits
//! and timers. HTTP/2 is not offered: the JWKS is one small document, and HTTP/1.1 keeps h2 out
//! of the dependency tree.
//!
//! The certificate is reloaded when its files change (checked every [`RELOAD_CHECK`]), so a
//! renewed certificate (certbot, cert-manager) takes effect without a restart; a renewal that
//! does not parse is logged and the current certificate stays in use. Every look at the files
//! is counted by outcome (`keyhost_tls_certificate_checks_total`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::TlsReloadCounters;

/// How often the certificate files are checked for a renewal.
pub const RELOAD_CHECK: Duration = Duration::from_secs(30);

fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS private key {}", key.display()))?;
    CertifiedKey::from_der(
        chain,
        key_der,
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
    .context("the TLS certificate and private key do not match or are unsupported")
}

fn modified(paths: &[&Path]) -> Vec<Option<std::time::SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The current certificate, swapped when its files change.
#[derive(Debug)]
struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads a certificate chain and its private key (PEM files) into a server configuration that
/// picks up renewals of those files, counting its looks at them in `counters`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    counters: TlsReloadCounters,
) -> anyhow::Result<Arc<ServerConfig>> {
    reloading_server_config(cert, key, RELOAD_CHECK, counters)
}

/// [`server_config`], checking the files every `every`.
pub fn reloading_server_config(
    cert: &Path,
    key: &Path,
    every: Duration,
    counters: TlsReloadCounters,
) -> anyhow::Result<Arc<ServerConfig>> {
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(load_certified_key(cert, key)?),
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("configuring TLS")?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (cert, key) = (cert.to_owned(), key.to_owned());
    let weak = Arc::downgrade(&resolver);
    tokio::spawn(async move {
        let mut seen = modified(&[&cert, &key]);
        loop {
            tokio::time::sleep(every).await;
            let Some(resolver) = weak.upgrade() else {
                return;
            };
            let now = modified(&[&cert, &key]);
            if now == seen {
                counters.unchanged.inc();
                continue;
            }
            seen = now;
            match load_certified_key(&cert, &key) {
                Ok(k) => {
                    resolver.current.store(Arc::new(k));
                    counters.reloaded.inc();
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    counters.failed.inc();
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "TLS certificate not reloaded; keeping the current one"
                    )
                }
            }
        }
    });
    Ok(Arc::new(config))
}
