//! The sections of the configuration, one type per concern, each with its defaults: the listeners
//! (`[http]`), HTTPS (`[tls]`), the key lifecycle (`[keys]`), minting (`[tokens]`), AIR Kit and
//! the issuance proxy (`[airkit]`, which is the proxy's settings as they are) and the webhook
//! secrets (`[webhooks]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::parse;
use crate::keys::types::Alg;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[http]`: the two listeners and what bounds their clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listener for the JWKS (the only one meant to face the internet).
    #[serde(deserialize_with = "parse::listen_addr")]
    pub public_addr: SocketAddr,
    /// Listener for token minting and administration.
    #[serde(deserialize_with = "parse::listen_addr")]
    pub internal_addr: SocketAddr,
    /// Connections the public listener holds at once (fitted under the open-files limit).
    pub public_max_connections: usize,
    /// Connections the internal listener holds at once (fitted under the open-files limit).
    pub internal_max_connections: usize,
    /// Time a new connection has to send its first byte (TLS handshake or request).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time a client has to send a request's headers, from the connection's start or the end of
    /// the previous response (so also the keep-alive idle timeout).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or CIDR blocks); from
    /// anyone else the header is ignored.
    #[serde(deserialize_with = "parse::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Failed authentications allowed per client address and minute (admin token, API keys);
    /// beyond it the address is answered 429 until it is under the limit again.
    pub auth_failure_limit: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            public_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_max_connections: 1024,
            internal_max_connections: 256,
            first_byte_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            trusted_proxies: Vec::new(),
            auth_failure_limit: 10,
        }
    }
}

/// `[tls]`: HTTPS on the public listener, when both files are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Time a client has to complete its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// `[keys]`: the signing keys' lifecycle and the JWKS that publishes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Algorithms that each keep an active key.
    #[serde(deserialize_with = "parse::algorithms")]
    pub algorithms: Vec<Alg>,
    /// Modulus size of generated RSA keys.
    pub rsa_bits: u32,
    /// How long a key is published before it may sign.
    #[serde(with = "humantime_serde")]
    pub publish_lead: Duration,
    /// How long a key signs before its successor takes over.
    #[serde(with = "humantime_serde")]
    pub rotation_period: Duration,
    /// Whether keys rotate on schedule.
    pub auto_rotate: bool,
    /// How long a key stays published after it stops signing.
    #[serde(with = "humantime_serde")]
    pub retire_grace: Duration,
    /// `Cache-Control: max-age` of the JWKS.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// The JWKS URL registered with AIR Kit (through any CDN or proxy): when set, a pending key
    /// activates only once this URL lists it, besides having served its publish lead.
    pub public_jwks_url: Option<String>,
    /// PEM file of extra certificate authorities for `public_jwks_url` (a private CA).
    pub public_jwks_ca_file: Option<PathBuf>,
    /// A user-agent substring (e.g. AIR Kit's fetcher): a pending key activates only once a
    /// verifier whose user agent contains it has been served a key set listing the key, or
    /// `activation_sighting_cap` after it could have.
    pub activation_requires_sighting: Option<String>,
    /// How long an activation waits for that sighting at most (then it goes ahead, with a
    /// warning).
    #[serde(with = "humantime_serde")]
    pub activation_sighting_cap: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            algorithms: vec![Alg::ES256, Alg::RS256],
            rsa_bits: 2048,
            publish_lead: Duration::from_secs(24 * 3600),
            rotation_period: Duration::from_secs(30 * 24 * 3600),
            auto_rotate: true,
            retire_grace: Duration::from_secs(3600),
            jwks_max_age: Duration::from_secs(300),
            public_jwks_url: None,
            public_jwks_ca_file: None,
            activation_requires_sighting: None,
            activation_sighting_cap: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[tokens]`: what minted Partner JWTs carry, and how many a client may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// The `partnerId` claim of every minted token.
    #[serde(deserialize_with = "parse::text")]
    pub partner_id: Option<String>,
    /// Algorithm of tokens whose request names none, and of those sent to AIR Kit.
    pub default_alg: Alg,
    /// Token requests each API client may make per hour (0: unlimited).
    pub client_rate_limit: u32,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            partner_id: None,
            default_alg: Alg::ES256,
            client_rate_limit: 10_000,
        }
    }
}

/// AIR Kit environments with a known base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AirKitEnv {
    /// `https://api.sandbox.mocachain.org/v1`.
    Sandbox,
    /// `https://api.mocachain.org/v1`.
    Production,
}

/// `[airkit]`: reaching AIR Kit, and the issuance proxy's defaults, retries and polls (the
/// proxy takes this section as its settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AirKitSettings {
    /// AIR Kit preset: `sandbox` or `production`.
    pub env: Option<AirKitEnv>,
    /// AIR Kit base URL including `/v1`; overrides the preset (e.g. the emulator).
    pub base_url: Option<String>,
    /// Timeout of one AIR Kit request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest difference between keyhost's clock and AIR Kit's (seen in its answers' `Date`)
    /// before keyhost reports itself not ready.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Default `issuerDid` of issuances.
    pub issuer_did: Option<String>,
    /// Default `credentialId` (issuance program) of issuances.
    pub credential_id: Option<String>,
    /// `scope` claim of the Partner JWTs keyhost sends to AIR Kit; API clients need it to issue.
    pub scope: String,
    /// Upstream attempts per issuance before it is parked as stalled.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long the issuance endpoint holds a request before answering 202 with the issuance id.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// First status poll delay; doubles up to 30 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long to follow a credential's status towards ONCHAIN.
    #[serde(with = "humantime_serde")]
    pub poll_deadline: Duration,
}

impl Default for AirKitSettings {
    fn default() -> Self {
        Self {
            env: None,
            base_url: None,
            timeout: Duration::from_secs(10),
            max_clock_skew: Duration::from_secs(60),
            issuer_did: None,
            credential_id: None,
            scope: "issue".into(),
            max_attempts: 6,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            wait: Duration::from_secs(20),
            poll_interval: Duration::from_secs(1),
            poll_deadline: Duration::from_secs(30 * 60),
        }
    }
}

impl AirKitSettings {
    /// The AIR Kit base URL: the explicit one, else the preset's; `None` when issuance is off.
    pub fn url(&self) -> Option<String> {
        if let Some(url) = &self.base_url {
            return Some(url.clone());
        }
        Some(
            match self.env? {
                AirKitEnv::Sandbox => crate::airkit::SANDBOX_BASE_URL,
                AirKitEnv::Production => crate::airkit::PRODUCTION_BASE_URL,
            }
            .to_owned(),
        )
    }
}

/// `[database]`: where the store lives, and how replicas sharing a PostgreSQL database keep
/// their in-memory views current.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` selects PostgreSQL (several replicas may share it); unset, the store is
    /// the SQLite file in `data_dir`. It may hold a password: prefer
    /// `KEYHOST_DATABASE_URL_FILE` to the configuration file.
    pub url: Option<SecretString>,
    /// PEM file of the certificate authorities that sign the PostgreSQL server's certificate
    /// (`sslmode=verify-ca` or `verify-full`).
    pub ca_file: Option<PathBuf>,
    /// Connections to PostgreSQL each server keeps at most.
    pub pool_size: usize,
    /// How often a server re-reads the key set and clients even without a change announced
    /// (changes normally arrive within a second by LISTEN/NOTIFY).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How old a server's view of the key set may grow (the database unreachable) before it
    /// stops signing and reports itself not ready (PostgreSQL only).
    #[serde(with = "humantime_serde")]
    pub signing_lease: Duration,
    /// How long a server cut off from the database keeps serving its last JWKS.
    #[serde(with = "humantime_serde")]
    pub jwks_stale_limit: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            ca_file: None,
            pool_size: 8,
            refresh_interval: Duration::from_secs(2),
            signing_lease: Duration::from_secs(10),
            jwks_stale_limit: Duration::from_secs(5 * 60),
        }
    }
}

/// `[privacy]`: how long personal data is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    /// How long the personal data of a finished issuance, and of a KYC delivery, is kept (then
    /// erased, keeping ids, states, times and hashes).
    #[serde(with = "humantime_serde")]
    pub issuance_retention: Duration,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            issuance_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `[webhooks]`: the secrets that authenticate deliveries, from the environment only (a webhook
/// whose secret is unset is off). The table exists in the file only to be refused there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Secret of the `X-Keyhost-Signature` HMAC on `/webhooks/kyc-complete`.
    #[serde(skip)]
    pub kyc_secret: Option<SecretString>,
    /// iDenfy's webhook signing key (`Idenfy-Signature` HMAC).
    #[serde(skip)]
    pub idenfy_signing_key: Option<SecretString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn air_kit_base_url_comes_from_the_override_or_the_preset() {
        let mut c = AirKitSettings::default();
        assert_eq!(c.url(), None);
        c.env = Some(AirKitEnv::Sandbox);
        assert_eq!(c.url().as_deref(), Some(crate::airkit::SANDBOX_BASE_URL));
        c.base_url = Some("http://127.0.0.1:9/v1".into());
        assert_eq!(c.url().as_deref(), Some("http://127.0.0.1:9/v1"));
        c.env = None;
        assert_eq!(c.url().as_deref(), Some("http://127.0.0.1:9/v1"));
    }
}
