//! Configuration: typed, layered (defaults → optional TOML file named by `KEYHOST_CONFIG` →
//! `KEYHOST_*` environment variables), and validated before anything starts.
//!
//! Validation refuses policies under which a verifier could meet a key it has not fetched yet
//! (`publish_lead` shorter than the JWKS `max-age`) or lose a key while tokens signed by it are
//! still valid (`retire_grace` shorter than the longest token lifetime plus `max-age`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::keys::{Alg, Policy};
use crate::signer::MAX_TOKEN_TTL;

/// Environment variable naming an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "KEYHOST_CONFIG";

/// Read from the environment verbatim, never through the typed parser: its errors would quote a
/// secret, and it turns an all-digit partner id into a number (losing leading zeros).
const VERBATIM_VARS: &[&str] = &[
    "KEYHOST_ADMIN_TOKEN",
    "KEYHOST_MASTER_KEY",
    "KEYHOST_PARTNER_ID",
    "KEYHOST_KYC_WEBHOOK_SECRET",
    "KEYHOST_IDENFY_SIGNING_KEY",
];

/// Shortest webhook secret accepted: anyone can forge an HMAC under an empty or guessable key,
/// and the webhook paths face the internet.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// Every non-secret setting, by its name without the `KEYHOST_` prefix. Environment variables outside this
/// list are ignored with a warning (orchestrators inject `KEYHOST_SERVICE_HOST` and the like);
/// unknown keys in the TOML file are errors, since there they can only be typos.
pub const SETTINGS: &[&str] = &[
    "data_dir",
    "keys_dir",
    "public_addr",
    "internal_addr",
    "tls_cert",
    "tls_key",
    "public_max_connections",
    "internal_max_connections",
    "http_first_byte_timeout",
    "http_header_timeout",
    "http_body_timeout",
    "tls_handshake_timeout",
    "trusted_proxies",
    "auth_failure_limit",
    "max_clock_skew",
    "algorithms",
    "default_alg",
    "rsa_bits",
    "publish_lead",
    "rotation_period",
    "auto_rotate",
    "retire_grace",
    "jwks_max_age",
    "client_rate_limit",
    "log_format",
    "airkit_env",
    "airkit_base_url",
    "issuer_did",
    "credential_id",
    "issue_scope",
    "airkit_max_attempts",
    "airkit_timeout",
    "airkit_backoff",
    "airkit_backoff_max",
    "airkit_wait",
    "airkit_poll_interval",
    "airkit_poll_deadline",
];

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

/// Every setting of the server; field names are the environment names without `KEYHOST_`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// Directory of the master key file and the first-start admin token file.
    pub keys_dir: PathBuf,
    /// Listener for the JWKS (the only one meant to face the internet).
    pub public_addr: SocketAddr,
    /// Listener for token minting and administration.
    pub internal_addr: SocketAddr,
    /// PEM certificate chain: when set (with `tls_key`), the public listener speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Connections the public listener holds at once (fitted under the open-files limit).
    pub public_max_connections: usize,
    /// Connections the internal listener holds at once (fitted under the open-files limit).
    pub internal_max_connections: usize,
    /// Time a new connection has to send its first byte (TLS handshake or request).
    #[serde(with = "humantime_serde")]
    pub http_first_byte_timeout: Duration,
    /// Time a client has to send a request's headers, from the connection's start or the end of
    /// the previous response (so also the keep-alive idle timeout).
    #[serde(with = "humantime_serde")]
    pub http_header_timeout: Duration,
    /// Time a client has to send a request's whole body.
    #[serde(with = "humantime_serde")]
    pub http_body_timeout: Duration,
    /// Time a client has to complete its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or CIDR blocks); from
    /// anyone else the header is ignored.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Failed authentications allowed per client address and minute (admin token, API keys);
    /// beyond it the address is answered 429 until it is under the limit again.
    pub auth_failure_limit: u32,
    /// Largest difference between keyhost's clock and AIR Kit's (seen in its answers' `Date`)
    /// before keyhost reports itself not ready.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// The `partnerId` claim of every minted token.
    #[serde(deserialize_with = "text")]
    pub partner_id: Option<String>,
    /// Admin bearer token; when absent one is generated on first start.
    pub admin_token: Option<SecretString>,
    /// Base64 of the 32-byte master key; when absent `keys_dir/master.key` is used.
    pub master_key: Option<SecretString>,
    /// Algorithms that each keep an active key.
    #[serde(deserialize_with = "algorithms")]
    pub algorithms: Vec<Alg>,
    /// Algorithm of tokens whose request names none.
    pub default_alg: Alg,
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
    /// Token requests each API client may make per hour (0: unlimited).
    pub client_rate_limit: u32,
    /// Log line format.
    pub log_format: LogFormat,
    /// AIR Kit preset: `sandbox` or `production`.
    pub airkit_env: Option<AirKitEnv>,
    /// AIR Kit base URL including `/v1`; overrides the preset (e.g. the emulator).
    pub airkit_base_url: Option<String>,
    /// Default `issuerDid` of issuances.
    pub issuer_did: Option<String>,
    /// Default `credentialId` (issuance program) of issuances.
    pub credential_id: Option<String>,
    /// `scope` claim of the Partner JWTs keyhost sends to AIR Kit; API clients need it to issue.
    pub issue_scope: String,
    /// Upstream attempts per issuance before it is parked as stalled.
    pub airkit_max_attempts: u32,
    /// Timeout of one AIR Kit request.
    #[serde(with = "humantime_serde")]
    pub airkit_timeout: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub airkit_backoff: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub airkit_backoff_max: Duration,
    /// How long the issuance endpoint holds a request before answering 202 with the issuance id.
    #[serde(with = "humantime_serde")]
    pub airkit_wait: Duration,
    /// First status poll delay; doubles up to 30 s.
    #[serde(with = "humantime_serde")]
    pub airkit_poll_interval: Duration,
    /// How long to follow a credential's status towards ONCHAIN.
    #[serde(with = "humantime_serde")]
    pub airkit_poll_deadline: Duration,
    /// Secret of the `X-Keyhost-Signature` HMAC on `/webhooks/kyc-complete`.
    pub kyc_webhook_secret: Option<SecretString>,
    /// iDenfy's webhook signing key (`Idenfy-Signature` HMAC).
    pub idenfy_signing_key: Option<SecretString>,
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

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            keys_dir: PathBuf::from("./keys"),
            public_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            tls_cert: None,
            tls_key: None,
            public_max_connections: 1024,
            internal_max_connections: 256,
            http_first_byte_timeout: Duration::from_secs(5),
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(15),
            tls_handshake_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            auth_failure_limit: 10,
            max_clock_skew: Duration::from_secs(60),
            partner_id: None,
            admin_token: None,
            master_key: None,
            algorithms: vec![Alg::ES256, Alg::RS256],
            default_alg: Alg::ES256,
            rsa_bits: 2048,
            publish_lead: Duration::from_secs(24 * 3600),
            rotation_period: Duration::from_secs(30 * 24 * 3600),
            auto_rotate: true,
            retire_grace: Duration::from_secs(3600),
            jwks_max_age: Duration::from_secs(300),
            client_rate_limit: 10_000,
            log_format: LogFormat::Text,
            airkit_env: None,
            airkit_base_url: None,
            issuer_did: None,
            credential_id: None,
            issue_scope: "issue".into(),
            airkit_max_attempts: 6,
            airkit_timeout: Duration::from_secs(10),
            airkit_backoff: Duration::from_secs(1),
            airkit_backoff_max: Duration::from_secs(30),
            airkit_wait: Duration::from_secs(20),
            airkit_poll_interval: Duration::from_secs(1),
            airkit_poll_deadline: Duration::from_secs(30 * 60),
            kyc_webhook_secret: None,
            idenfy_signing_key: None,
        }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or has the wrong type.
    #[error("cannot read the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values are readable but unsafe or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then the TOML file named by `KEYHOST_CONFIG` (if set), then `KEYHOST_*`
    /// variables, and validates the result.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = std::env::var_os(CONFIG_FILE_VAR) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "{CONFIG_FILE_VAR} names {}, which is not a readable file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("KEYHOST_").only(SETTINGS));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        for var in VERBATIM_VARS {
            if let Some(value) = std::env::var_os(var) {
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::Invalid(format!("{var} is not valid UTF-8")))?;
                match *var {
                    "KEYHOST_ADMIN_TOKEN" => config.admin_token = Some(value.into()),
                    "KEYHOST_MASTER_KEY" => config.master_key = Some(value.into()),
                    "KEYHOST_KYC_WEBHOOK_SECRET" => config.kyc_webhook_secret = Some(value.into()),
                    "KEYHOST_IDENFY_SIGNING_KEY" => config.idenfy_signing_key = Some(value.into()),
                    _ => config.partner_id = Some(value),
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration from the text of a TOML file over the defaults, with the same
    /// extraction and validation as [`Config::load`] but no environment variables (for tools and
    /// the fuzz targets: any text gives a configuration or an error, never a panic).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// A default configuration rooted in `dir` (data in `dir/data`, keys in `dir/keys`) with both
    /// listeners on ephemeral loopback ports; the base of tests and tools.
    pub fn rooted_at(dir: &Path) -> Self {
        Self {
            data_dir: dir.join("data"),
            keys_dir: dir.join("keys"),
            public_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// `KEYHOST_*` environment variables that name no setting (for a start-up warning).
    pub fn unknown_env_vars() -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| {
                k.strip_prefix("KEYHOST_").is_some_and(|name| {
                    let name = name.to_ascii_lowercase();
                    ![
                        "config",
                        "admin_token",
                        "master_key",
                        "partner_id",
                        "kyc_webhook_secret",
                        "idenfy_signing_key",
                    ]
                    .contains(&name.as_str())
                        && !SETTINGS.contains(&name.as_str())
                })
            })
            .collect()
    }

    /// Checks the rules that keep every minted token verifiable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.algorithms.is_empty() {
            return invalid(
                "KEYHOST_ALGORITHMS names no algorithm; use ES256, RS256 or both".into(),
            );
        }
        if !self.algorithms.contains(&self.default_alg) {
            return invalid(format!(
                "KEYHOST_DEFAULT_ALG is {} but KEYHOST_ALGORITHMS is {}; add it there or pick one of those",
                self.default_alg,
                self.algorithms
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if ![2048, 3072, 4096].contains(&self.rsa_bits) {
            return invalid(format!(
                "KEYHOST_RSA_BITS is {}; use 2048, 3072 or 4096",
                self.rsa_bits
            ));
        }
        if let Some(id) = &self.partner_id
            && (id.trim().is_empty() || id.len() > 256 || id.chars().any(char::is_control))
        {
            return invalid(
                "KEYHOST_PARTNER_ID must be 1 to 256 printable characters (your AIR Kit partner id)"
                    .into(),
            );
        }
        let (lead, max_age) = (self.publish_lead, self.jwks_max_age);
        if max_age.is_zero() {
            return invalid("KEYHOST_JWKS_MAX_AGE must be at least 1s".into());
        }
        if lead < max_age {
            return invalid(format!(
                "KEYHOST_PUBLISH_LEAD ({}) is shorter than KEYHOST_JWKS_MAX_AGE ({}): a verifier \
                 holding a cached JWKS would meet keys it has never seen; raise the lead or lower max-age",
                humantime::format_duration(lead),
                humantime::format_duration(max_age)
            ));
        }
        // Saturating: a max-age near u64::MAX seconds ("18446744073709551615s" parses) must be
        // refused, not overflow.
        let min_grace = Duration::from_secs(MAX_TOKEN_TTL as u64).saturating_add(max_age);
        if self.retire_grace < min_grace {
            return invalid(format!(
                "KEYHOST_RETIRE_GRACE ({}) is shorter than the longest token lifetime plus \
                 KEYHOST_JWKS_MAX_AGE ({}): tokens would outlive their key in the JWKS",
                humantime::format_duration(self.retire_grace),
                humantime::format_duration(min_grace)
            ));
        }
        for (name, value) in [
            (
                "KEYHOST_HTTP_FIRST_BYTE_TIMEOUT",
                self.http_first_byte_timeout,
            ),
            ("KEYHOST_HTTP_HEADER_TIMEOUT", self.http_header_timeout),
            ("KEYHOST_HTTP_BODY_TIMEOUT", self.http_body_timeout),
            ("KEYHOST_TLS_HANDSHAKE_TIMEOUT", self.tls_handshake_timeout),
        ] {
            if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&value) {
                return invalid(format!(
                    "{name} is {}; use between 100ms and 10m (tens of seconds at most: every \
                     second a silent client may hold a connection is a second an attacker may too)",
                    humantime::format_duration(value)
                ));
            }
        }
        for (name, value) in [
            (
                "KEYHOST_PUBLIC_MAX_CONNECTIONS",
                self.public_max_connections,
            ),
            (
                "KEYHOST_INTERNAL_MAX_CONNECTIONS",
                self.internal_max_connections,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return invalid(format!("{name} must be between 1 and 1000000"));
            }
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&self.max_clock_skew) {
            return invalid(
                "KEYHOST_MAX_CLOCK_SKEW must be between 5s and 1h (a Partner JWT lives 5 minutes)"
                    .into(),
            );
        }
        if self.auth_failure_limit == 0 || self.auth_failure_limit > 10_000 {
            return invalid(
                "KEYHOST_AUTH_FAILURE_LIMIT must be between 1 and 10000 failed attempts per address and minute"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid(
                "set both KEYHOST_TLS_CERT and KEYHOST_TLS_KEY (PEM files) to serve the JWKS over HTTPS, or neither"
                    .into(),
            );
        }
        if let Some(url) = &self.airkit_base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid(format!(
                "KEYHOST_AIRKIT_BASE_URL must be an http(s) URL including /v1, got {url:?}"
            ));
        }
        if !(1..=20).contains(&self.airkit_max_attempts) {
            return invalid("KEYHOST_AIRKIT_MAX_ATTEMPTS must be between 1 and 20".into());
        }
        if self.airkit_poll_interval < Duration::from_millis(50) {
            return invalid("KEYHOST_AIRKIT_POLL_INTERVAL must be at least 50ms".into());
        }
        if self.airkit_backoff < Duration::from_millis(10)
            || self.airkit_backoff > self.airkit_backoff_max
        {
            return invalid(
                "KEYHOST_AIRKIT_BACKOFF must be at least 10ms and at most KEYHOST_AIRKIT_BACKOFF_MAX".into(),
            );
        }
        crate::clients::validate_scope(&self.issue_scope)
            .map_err(|e| ConfigError::Invalid(format!("KEYHOST_ISSUE_SCOPE: {e}")))?;
        for (name, secret) in [
            ("KEYHOST_KYC_WEBHOOK_SECRET", &self.kyc_webhook_secret),
            ("KEYHOST_IDENFY_SIGNING_KEY", &self.idenfy_signing_key),
        ] {
            use secrecy::ExposeSecret;
            if let Some(secret) = secret
                && secret.expose_secret().trim().len() < MIN_WEBHOOK_SECRET_LEN
            {
                return invalid(format!(
                    "{name} is set but shorter than {MIN_WEBHOOK_SECRET_LEN} characters: anyone could \
                     forge deliveries under it; use a long random secret (e.g. `head -c 32 \
                     /dev/urandom | base64`) or unset it to turn the webhook off"
                ));
            }
        }
        if self.rotation_period <= lead {
            return invalid(format!(
                "KEYHOST_ROTATION_PERIOD ({}) must be longer than KEYHOST_PUBLISH_LEAD ({})",
                humantime::format_duration(self.rotation_period),
                humantime::format_duration(lead)
            ));
        }
        Ok(())
    }

    /// The lifecycle policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            algorithms: self.algorithms.clone(),
            publish_lead: secs(self.publish_lead),
            rotation_period: secs(self.rotation_period),
            auto_rotate: self.auto_rotate,
            retire_grace: secs(self.retire_grace),
            rsa_bits: self.rsa_bits,
        }
    }

    /// The AIR Kit base URL: the explicit one, else the preset's; `None` when issuance is off.
    pub fn airkit_base_url(&self) -> Option<String> {
        if let Some(url) = &self.airkit_base_url {
            return Some(url.clone());
        }
        Some(
            match self.airkit_env? {
                AirKitEnv::Sandbox => crate::airkit::SANDBOX_BASE_URL,
                AirKitEnv::Production => crate::airkit::PRODUCTION_BASE_URL,
            }
            .to_owned(),
        )
    }

    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keyhost.db")
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Accepts a string, or a number as its decimal text (the environment parser turns `12345` into a
/// number, and a partner id may well be all digits).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(Some(match Form::deserialize(d)? {
        Form::Text(s) => s,
        Form::Unsigned(n) => n.to_string(),
        Form::Signed(n) => n.to_string(),
    }))
}

/// Accepts `"10.0.0.0/8, 127.0.0.1"` (the environment form) or a list (the TOML form); a bare
/// address is a single-host network.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let items = match Form::deserialize(d)? {
        Form::List(v) => v,
        Form::Text(s) => s.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{item:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

/// Accepts `"ES256,RS256"` (the environment form) or `["ES256", "RS256"]` (the TOML form).
fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Alg>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let names = match Form::deserialize(d)? {
        Form::List(v) => v,
        Form::Text(s) => s.split(',').map(str::to_owned).collect(),
    };
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let alg = name.parse::<Alg>().map_err(serde::de::Error::custom)?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Config)) -> Result<(), ConfigError> {
        let mut c = Config::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn lead_shorter_than_max_age_is_refused() {
        let err = with(|c| {
            c.publish_lead = Duration::from_secs(60);
            c.jwks_max_age = Duration::from_secs(300);
        })
        .unwrap_err();
        assert!(err.to_string().contains("KEYHOST_PUBLISH_LEAD"), "{err}");
    }

    #[test]
    fn grace_shorter_than_ttl_plus_max_age_is_refused() {
        let err = with(|c| c.retire_grace = Duration::from_secs(599)).unwrap_err();
        assert!(err.to_string().contains("KEYHOST_RETIRE_GRACE"), "{err}");
        with(|c| c.retire_grace = Duration::from_secs(600)).unwrap();
    }

    #[test]
    fn default_alg_must_be_enabled() {
        let err = with(|c| c.algorithms = vec![Alg::RS256]).unwrap_err();
        assert!(err.to_string().contains("KEYHOST_DEFAULT_ALG"), "{err}");
    }

    #[test]
    fn rotation_period_must_exceed_lead() {
        assert!(with(|c| c.rotation_period = c.publish_lead).is_err());
    }

    #[test]
    fn unusual_rsa_sizes_are_refused() {
        assert!(with(|c| c.rsa_bits = 1024).is_err());
        with(|c| c.rsa_bits = 4096).unwrap();
    }

    #[test]
    fn environment_overrides_file_and_parses_lists_and_durations() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "k.toml",
                "publish_lead = \"2h\"\nalgorithms = [\"RS256\"]\ndefault_alg = \"RS256\"\n",
            )?;
            jail.set_env("KEYHOST_CONFIG", "k.toml");
            jail.set_env("KEYHOST_PUBLISH_LEAD", "90m");
            jail.set_env("KEYHOST_PARTNER_ID", "0012345");
            let c = Config::load().map_err(|e| e.to_string())?;
            assert_eq!(c.publish_lead, Duration::from_secs(90 * 60));
            assert_eq!(c.algorithms, vec![Alg::RS256]);
            assert_eq!(c.partner_id.as_deref(), Some("0012345"));
            jail.set_env("KEYHOST_ALGORITHMS", "ES256, RS256");
            jail.set_env("KEYHOST_DEFAULT_ALG", "ES256");
            let c = Config::load().map_err(|e| e.to_string())?;
            assert_eq!(c.algorithms, vec![Alg::ES256, Alg::RS256]);
            Ok(())
        });
    }

    #[test]
    fn unknown_environment_variables_are_ignored_but_unknown_file_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_SERVICE_HOST", "10.0.0.1");
            Config::load().map_err(|e| e.to_string())?;
            assert_eq!(
                Config::unknown_env_vars(),
                vec!["KEYHOST_SERVICE_HOST".to_owned()]
            );
            jail.create_file("k.toml", "publish_leed = \"2h\"\n")?;
            jail.set_env("KEYHOST_CONFIG", "k.toml");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("publish_leed"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_taken_verbatim_and_never_quoted_in_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_ADMIN_TOKEN", "12345678901234567890");
            jail.set_env("KEYHOST_MASTER_KEY", "0000");
            let c = Config::load().map_err(|e| e.to_string())?;
            use secrecy::ExposeSecret;
            assert_eq!(
                c.admin_token.unwrap().expose_secret(),
                "12345678901234567890"
            );
            assert_eq!(c.master_key.unwrap().expose_secret(), "0000");
            jail.set_env("KEYHOST_PUBLISH_LEAD", "soon");
            let err = Config::load().unwrap_err().to_string();
            assert!(!err.contains("12345678901234567890"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn webhook_secrets_come_from_the_environment_verbatim_and_must_be_long() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_KYC_WEBHOOK_SECRET", "0123456789012345678");
            jail.set_env("KEYHOST_IDENFY_SIGNING_KEY", "idenfy-signing-key-1234");
            let c = Config::load().map_err(|e| e.to_string())?;
            use secrecy::ExposeSecret;
            assert_eq!(
                c.kyc_webhook_secret.unwrap().expose_secret(),
                "0123456789012345678"
            );
            assert_eq!(
                c.idenfy_signing_key.unwrap().expose_secret(),
                "idenfy-signing-key-1234"
            );
            assert!(Config::unknown_env_vars().is_empty());
            for short in ["", "   ", "short-secret"] {
                jail.set_env("KEYHOST_KYC_WEBHOOK_SECRET", short);
                let err = Config::load().unwrap_err().to_string();
                assert!(err.contains("KEYHOST_KYC_WEBHOOK_SECRET"), "{err}");
                assert!(short.trim().is_empty() || !err.contains(short), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn air_kit_base_url_comes_from_the_override_or_the_preset() {
        let mut c = Config::default();
        assert_eq!(c.airkit_base_url(), None);
        c.airkit_env = Some(AirKitEnv::Sandbox);
        assert_eq!(
            c.airkit_base_url().as_deref(),
            Some(crate::airkit::SANDBOX_BASE_URL)
        );
        c.airkit_base_url = Some("http://127.0.0.1:9/v1".into());
        assert_eq!(
            c.airkit_base_url().as_deref(),
            Some("http://127.0.0.1:9/v1")
        );
        c.airkit_env = None;
        assert_eq!(
            c.airkit_base_url().as_deref(),
            Some("http://127.0.0.1:9/v1")
        );
    }

    #[test]
    fn the_example_configuration_file_loads_and_is_valid() {
        figment::Jail::expect_with(|jail| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/keyhost.example.toml");
            jail.set_env("KEYHOST_CONFIG", path);
            let c = Config::load().map_err(|e| e.to_string())?;
            assert_eq!(c.issue_scope, "issue");
            assert_eq!(c.airkit_max_attempts, 6);
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_and_connection_settings_are_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1");
            jail.set_env("KEYHOST_HTTP_HEADER_TIMEOUT", "20s");
            let c = Config::load().map_err(|e| e.to_string())?;
            let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
            assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
            assert_eq!(c.http_header_timeout, Duration::from_secs(20));
            jail.set_env("KEYHOST_TRUSTED_PROXIES", "10.0.0.0/8,proxy.local");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("proxy.local"), "{err}");
            jail.set_env("KEYHOST_TRUSTED_PROXIES", "");
            jail.set_env("KEYHOST_HTTP_HEADER_TIMEOUT", "1h");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("KEYHOST_HTTP_HEADER_TIMEOUT"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_algorithm_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_ALGORITHMS", "HS256");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("HS256"), "{err}");
            Ok(())
        });
    }
}
