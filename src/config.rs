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

use crate::keys::planner::Policy;
use crate::keys::types::Alg;
use crate::signer::MAX_TOKEN_TTL;

/// Environment variable naming an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "KEYHOST_CONFIG";

/// Where a secret goes in the configuration.
type SecretSlot = for<'a> fn(&'a mut Config) -> &'a mut Option<SecretString>;

/// The secrets, by name without the `KEYHOST_` prefix: the one list of them. Each is read
/// verbatim from `KEYHOST_<NAME>` or from the file named by `KEYHOST_<NAME>_FILE` (the Docker and
/// Kubernetes secrets convention), never through the typed parser (its errors would quote the
/// value), and never from the TOML file, which is meant to be shared and is refused if it holds
/// one.
const SECRETS: &[(&str, SecretSlot)] = &[
    ("admin_token", |c| &mut c.admin_token),
    ("master_key", |c| &mut c.master_key),
    ("kyc_webhook_secret", |c| &mut c.kyc_webhook_secret),
    ("idenfy_signing_key", |c| &mut c.idenfy_signing_key),
];

/// Read from the environment verbatim, like the secrets: the typed parser would turn an
/// all-digit partner id into a number (losing leading zeros). The TOML file may set it.
const PARTNER_ID: &str = "partner_id";

/// Shortest webhook secret accepted: anyone can forge an HMAC under an empty or guessable key,
/// and the webhook paths face the internet.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// Every non-secret setting, by its name without the `KEYHOST_` prefix. Environment variables
/// outside this list, [`SECRETS`] and `partner_id` are ignored with a warning (orchestrators inject
/// `KEYHOST_SERVICE_HOST` and the like); unknown keys in the TOML file are errors, since there
/// they can only be typos.
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
    #[serde(deserialize_with = "listen_addr")]
    pub public_addr: SocketAddr,
    /// Listener for token minting and administration.
    #[serde(deserialize_with = "listen_addr")]
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
    #[serde(skip)]
    pub admin_token: Option<SecretString>,
    /// Base64 of the 32-byte master key; when absent `keys_dir/master.key` is used.
    #[serde(skip)]
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
    #[serde(skip)]
    pub kyc_webhook_secret: Option<SecretString>,
    /// iDenfy's webhook signing key (`Idenfy-Signature` HMAC).
    #[serde(skip)]
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
    /// The file or an environment variable could not be read or has the wrong type; the message
    /// names the variable (`KEYHOST_PUBLISH_LEAD=10`) or the key and file (`publish_lead in file
    /// keyhost.toml`).
    #[error("cannot read the configuration: {0}")]
    Load(String),
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
            let file = Figment::from(Toml::file(&path));
            refuse_secrets_in(&file, &format!("file {}", path.display()))?;
            figment = figment.merge(file);
        }
        figment = figment.merge(Env::prefixed("KEYHOST_").only(SETTINGS));
        let mut config: Config = figment.extract().map_err(|e| explain(&figment, e))?;
        if let Some(id) = env_verbatim(&env_name(PARTNER_ID))? {
            config.partner_id = Some(id);
        }
        for (name, slot) in SECRETS {
            if let Some(secret) = secret_from_env(name)? {
                *slot(&mut config) = Some(secret.into());
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration from the text of a TOML file over the defaults, with the same
    /// extraction and validation as [`Config::load`] but no environment variables (for tools and
    /// the fuzz targets: any text gives a configuration or an error, never a panic).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment = Figment::from(Toml::string(text));
        refuse_secrets_in(&figment, "the TOML text")?;
        let config: Config = figment.extract().map_err(|e| explain(&figment, e))?;
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
                    let secret = |n: &str| SECRETS.iter().any(|(s, _)| *s == n);
                    !(name == "config"
                        || name == PARTNER_ID
                        || SETTINGS.contains(&name.as_str())
                        || secret(&name)
                        || name.strip_suffix("_file").is_some_and(secret))
                })
            })
            .collect()
    }

    /// Checks every rule an operator's configuration must meet (and the bounds of every
    /// setting).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.algorithms.is_empty() {
            return invalid(
                "KEYHOST_ALGORITHMS names no algorithm; use ES256, RS256 or both".into(),
            );
        }
        if !self.algorithms.contains(&self.default_alg) {
            return invalid(format!(
                "KEYHOST_DEFAULT_ALG is {} but KEYHOST_ALGORITHMS is {}; add it there or pick one \
                 of those",
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
                 holding a cached JWKS would meet keys it has never seen; raise the lead or lower \
                 max-age",
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
                "KEYHOST_AUTH_FAILURE_LIMIT must be between 1 and 10000 failed attempts per \
                 address and minute"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid(
                "set both KEYHOST_TLS_CERT and KEYHOST_TLS_KEY (PEM files) to serve the JWKS over \
                 HTTPS, or neither"
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
                "KEYHOST_AIRKIT_BACKOFF must be at least 10ms and at most \
                 KEYHOST_AIRKIT_BACKOFF_MAX"
                    .into(),
            );
        }
        crate::scope::validate_scope(&self.issue_scope)
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
                    "{name} is set but shorter than {MIN_WEBHOOK_SECRET_LEN} characters: anyone \
                     could forge deliveries under it; use a long random secret (e.g. `head -c 32 \
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
        // A verifier's cache runs from when the JWKS reached it, a little after keyhost served
        // it; with a lead of exactly max-age that little is all that separates a fresh cache
        // from a token signed by a key it has not seen.
        if lead == max_age {
            return invalid(format!(
                "KEYHOST_PUBLISH_LEAD ({}) equals KEYHOST_JWKS_MAX_AGE: the lead must exceed \
                 max-age, since a verifier's cached JWKS expires only max-age after it arrived; \
                 raise the lead (hours are usual) or lower max-age",
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

/// The environment variable of the setting `name` (`publish_lead` → `KEYHOST_PUBLISH_LEAD`).
fn env_name(name: &str) -> String {
    format!("KEYHOST_{}", name.to_ascii_uppercase())
}

/// The value of `var` as it is, if set.
fn env_verbatim(var: &str) -> Result<Option<String>, ConfigError> {
    std::env::var_os(var)
        .map(|value| {
            value
                .into_string()
                .map_err(|_| ConfigError::Invalid(format!("{var} is not valid UTF-8")))
        })
        .transpose()
}

/// The secret `name` from `KEYHOST_<NAME>`, or from the file `KEYHOST_<NAME>_FILE` names (its
/// trailing line break removed: `echo secret > file` writes one); never both.
fn secret_from_env(name: &str) -> Result<Option<String>, ConfigError> {
    let var = env_name(name);
    let file_var = format!("{var}_FILE");
    let direct = env_verbatim(&var)?;
    let Some(path) = std::env::var_os(&file_var) else {
        return Ok(direct);
    };
    if direct.is_some() {
        return Err(ConfigError::Invalid(format!(
            "both {var} and {file_var} are set; keep one (the file, for a secret mounted by \
             Docker or Kubernetes)"
        )));
    }
    let path = PathBuf::from(path);
    let text = std::fs::read(&path).map_err(|e| {
        ConfigError::Invalid(format!(
            "{file_var} names {}, which cannot be read: {e}",
            path.display()
        ))
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        ConfigError::Invalid(format!(
            "{file_var} names {}, which is not UTF-8 text",
            path.display()
        ))
    })?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Refuses a TOML source (`where`) that sets a secret: the file is meant to be shared (checked
/// into a repository, mounted from a ConfigMap), and a secret read from it would keep working,
/// so a warning would only be ignored.
fn refuse_secrets_in(toml: &Figment, source: &str) -> Result<(), ConfigError> {
    for (name, _) in SECRETS {
        if toml.contains(name) {
            let var = env_name(name);
            return Err(ConfigError::Invalid(format!(
                "{name} in {source}: secrets do not belong in the configuration file; remove it \
                 there and give it as {var}, or as {var}_FILE naming a file only keyhost can read"
            )));
        }
    }
    Ok(())
}

/// Rewrites figment's errors to name what the operator wrote: the environment variable and its
/// value (`KEYHOST_PUBLISH_LEAD=10`), or the key and the file (`publish_lead in file
/// keyhost.toml`), rather than figment's internal path (`default.publish_lead`).
fn explain(figment: &Figment, error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| explain_one(figment, &e))
        .collect();
    ConfigError::Load(lines.join("; "))
}

fn explain_one(figment: &Figment, e: &figment::Error) -> String {
    use figment::Source;
    use figment::error::{Actual, Kind};
    let key = e.path.join(".");
    let (source, from_env) = match &e.metadata {
        Some(m) => match &m.source {
            Some(Source::File(path)) => (format!("file {}", path.display()), false),
            _ if m.name.contains("environment") => (String::new(), true),
            _ => (m.name.to_string(), false),
        },
        None => (String::new(), false),
    };
    let number = match &e.kind {
        Kind::InvalidType(Actual::Unsigned(n), _) => Some(n.to_string()),
        Kind::InvalidType(Actual::Signed(n), _) => Some(n.to_string()),
        Kind::InvalidType(Actual::Float(n), _) => Some(n.to_string()),
        _ => None,
    };
    let expects_duration = matches!(
        &e.kind,
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected)
            if expected == "a duration"
    );
    let message = match (expects_duration, number) {
        (true, Some(n)) if from_env => format!("a duration needs a unit, e.g. {n}s"),
        (true, Some(n)) => format!("a duration needs a unit and quotes, e.g. \"{n}s\""),
        (true, None) => {
            "not a duration; write a number and a unit, e.g. 90s, 10m, 24h or 30d".into()
        }
        (false, _) => e.kind.to_string(),
    };
    if from_env && !key.is_empty() {
        let var = env_name(&e.path.join("_"));
        let value = std::env::var(&var).unwrap_or_default();
        format!("{var}={value}: {message}")
    } else {
        // Secrets never reach figment (refused in the file, read verbatim from the environment),
        // so quoting the value cannot leak one.
        let written = figment
            .find_value(&key)
            .ok()
            .and_then(|v| serde_json::to_string(&v).ok())
            .map(|v| format!("{key} = {v}"));
        let at = [written.as_deref().unwrap_or(&key), &source]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" in ");
        if at.is_empty() {
            message
        } else {
            format!("{at}: {message}")
        }
    }
}

/// Accepts an IP address and a port. A host name is refused with what to write instead: it
/// could resolve to several addresses (which one to bind?) or to another one later.
fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Port(u64),
        Other(serde::de::IgnoredAny),
    }
    let text = match Form::deserialize(d)? {
        Form::Text(text) => text,
        Form::Other(_) => String::new(),
        Form::Port(port) => {
            return Err(serde::de::Error::custom(format!(
                "a port alone is not an address; write the IP address too, e.g. 127.0.0.1:{port}"
            )));
        }
    };
    if let Ok(addr) = text.trim().parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = text
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let message = match (text.rsplit_once(':').map(|(h, _)| h), port) {
        (Some("localhost"), Some(port)) => format!(
            "host names are not accepted, only an IP address and a port; use 127.0.0.1:{port} \
             (or [::1]:{port})"
        ),
        (Some(_), Some(port)) => format!(
            "host names are not accepted, only an IP address and a port, e.g. 127.0.0.1:{port}, \
             or 0.0.0.0:{port} for every interface"
        ),
        _ => "not an IP address and a port, e.g. 127.0.0.1:8080".to_owned(),
    };
    Err(serde::de::Error::custom(message))
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
    fn a_lead_equal_to_max_age_is_refused() {
        let err = with(|c| {
            c.publish_lead = Duration::from_secs(300);
            c.jwks_max_age = Duration::from_secs(300);
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("KEYHOST_PUBLISH_LEAD (5m) equals"), "{err}");
        with(|c| c.publish_lead = c.jwks_max_age + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_bare_number_for_a_duration_names_the_variable_and_suggests_a_unit() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_PUBLISH_LEAD", "10");
            let err = Config::load().unwrap_err().to_string();
            assert!(
                err.ends_with("KEYHOST_PUBLISH_LEAD=10: a duration needs a unit, e.g. 10s"),
                "{err}"
            );
            assert!(
                !err.contains("\"PUBLISH_LEAD\"") && !err.contains("default."),
                "{err}"
            );
            jail.set_env("KEYHOST_PUBLISH_LEAD", "soon");
            let err = Config::load().unwrap_err().to_string();
            assert!(
                err.contains("KEYHOST_PUBLISH_LEAD=soon: not a duration"),
                "{err}"
            );
            jail.set_env("KEYHOST_PUBLISH_LEAD", "2h");
            jail.set_env("KEYHOST_RSA_BITS", "many");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("KEYHOST_RSA_BITS=many: "), "{err}");
            Ok(())
        });
    }

    #[test]
    fn errors_in_the_file_name_the_key_its_value_and_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("keyhost.toml", "jwks_max_age = 10\n")?;
            jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
            let err = Config::load().unwrap_err().to_string();
            assert!(err.contains("jwks_max_age = 10 in file /"), "{err}");
            assert!(
                err.contains("keyhost.toml: a duration needs a unit and quotes, e.g. \"10s\""),
                "{err}"
            );
            assert!(!err.contains("default."), "{err}");
            let err = Config::from_toml_str("rsa_bits = \"many\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("rsa_bits = \"many\" in TOML"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_host_name_for_a_listener_is_refused_with_the_address_to_use() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_PUBLIC_ADDR", "localhost:8080");
            let err = Config::load().unwrap_err().to_string();
            assert!(
                err.contains("KEYHOST_PUBLIC_ADDR=localhost:8080: host names are not accepted"),
                "{err}"
            );
            assert!(err.contains("use 127.0.0.1:8080"), "{err}");
            jail.set_env("KEYHOST_PUBLIC_ADDR", "[::1]:8080");
            assert_eq!(
                Config::load().map_err(|e| e.to_string())?.public_addr,
                "[::1]:8080".parse().unwrap()
            );
            jail.set_env("KEYHOST_PUBLIC_ADDR", "8080");
            let err = Config::load().unwrap_err().to_string();
            assert!(
                err.contains("KEYHOST_PUBLIC_ADDR=8080: a port alone is not an address"),
                "{err}"
            );
            assert!(err.contains("e.g. 127.0.0.1:8080"), "{err}");
            jail.set_env("KEYHOST_PUBLIC_ADDR", "[::1]");
            let err = Config::load().unwrap_err().to_string();
            assert!(
                err.contains("KEYHOST_PUBLIC_ADDR=[::1]: not an IP address and a port"),
                "{err}"
            );
            let err = Config::from_toml_str("internal_addr = \"keyhost.internal:9000\"\n")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("internal_addr = \"keyhost.internal:9000\" in TOML"),
                "{err}"
            );
            assert!(err.contains("0.0.0.0:9000"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn every_secret_comes_from_its_variable_or_from_the_file_its_file_variable_names() {
        figment::Jail::expect_with(|jail| {
            use secrecy::ExposeSecret;
            for (i, (name, slot)) in SECRETS.iter().enumerate() {
                let var = env_name(name);
                let file_var = format!("{var}_FILE");
                jail.clear_env();
                let value = format!("secret-number-{i}-from-the-environment");
                jail.set_env(&var, &value);
                let mut c = Config::load().map_err(|e| e.to_string())?;
                assert_eq!(slot(&mut c).as_ref().unwrap().expose_secret(), value);

                jail.clear_env();
                let file = format!("{name}.secret");
                let value = format!("secret-number-{i}-from-a-file");
                jail.create_file(&file, &format!("{value}\n"))?;
                jail.set_env(&file_var, &file);
                let mut c = Config::load().map_err(|e| e.to_string())?;
                assert_eq!(slot(&mut c).as_ref().unwrap().expose_secret(), value);
                assert!(Config::unknown_env_vars().is_empty());

                jail.set_env(&var, "also-set-directly-0123456789");
                let err = Config::load().unwrap_err().to_string();
                assert!(err.contains(&format!("both {var} and {file_var}")), "{err}");
                assert!(
                    !err.contains("0123456789") && !err.contains(&value),
                    "{err}"
                );

                jail.clear_env();
                jail.set_env(&file_var, "missing.secret");
                let err = Config::load().unwrap_err().to_string();
                let expected = format!("{file_var} names missing.secret, which cannot be read");
                assert!(err.contains(&expected), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_secret_in_the_configuration_file_is_refused_without_quoting_it() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
            for (name, _) in SECRETS {
                let text = format!("{name} = \"do-not-quote-me-0123456789\"\n");
                jail.create_file("keyhost.toml", &text)?;
                for err in [Config::load(), Config::from_toml_str(&text)] {
                    let err = err.unwrap_err().to_string();
                    assert!(err.contains(&format!("{name} in ")), "{err}");
                    assert!(err.contains(&env_name(name)), "{err}");
                    assert!(!err.contains("do-not-quote-me"), "{err}");
                }
            }
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
