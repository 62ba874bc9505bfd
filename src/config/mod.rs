//! Configuration: typed, nested by concern, layered (defaults → optional TOML file named by
//! `KEYHOST_CONFIG` → `KEYHOST_*` environment variables), and validated before anything starts.
//!
//! Each concern has its section ([`HttpSettings`] is `[http]`, [`AirKitSettings`] is `[airkit]`,
//! …), and the code that uses one takes that section (the issuance proxy takes `[airkit]` as
//! its settings). The documented names are unchanged: every setting keeps its environment
//! variable (`KEYHOST_PUBLISH_LEAD` sets `keys.publish_lead`), and a TOML file may still give it
//! by that flat name (`publish_lead` at the top) instead of in its table, but not both ways.
//! [`names`] lists them all, with how each is read.
//!
//! Layout: [`sections`] holds the section types and their defaults, [`names`] the table of
//! settings, `file` and `env` the two layers, `parse` the readers of addresses, networks and
//! algorithm lists, `explain` the error messages and `validate` the rules.

mod env;
mod explain;
mod file;
pub mod names;
mod parse;
pub mod sections;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

use crate::keys::planner::Policy;

pub use self::names::{SETTINGS, Setting};
pub use self::sections::{
    AirKitEnv, AirKitSettings, DatabaseSettings, HttpSettings, KeySettings, LogFormat,
    PrivacySettings, TlsSettings, TokenSettings, WebhookSettings,
};

/// Environment variable naming an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "KEYHOST_CONFIG";

/// Shortest webhook secret accepted: anyone can forge an HMAC under an empty or guessable key,
/// and the webhook paths face the internet.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// Every setting of the server, by section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// Directory of the master key file and the first-start admin token file.
    pub keys_dir: PathBuf,
    /// Log line format.
    pub log_format: LogFormat,
    /// Admin bearer token; when absent one is generated on first start.
    #[serde(skip)]
    pub admin_token: Option<SecretString>,
    /// Base64 of the 32-byte master key; when absent `keys_dir/master.key` is used.
    #[serde(skip)]
    pub master_key: Option<SecretString>,
    /// `[http]`: listeners and the bounds of their clients.
    pub http: HttpSettings,
    /// `[tls]`: HTTPS on the public listener.
    pub tls: TlsSettings,
    /// `[keys]`: the key lifecycle and the JWKS.
    pub keys: KeySettings,
    /// `[tokens]`: what minted tokens carry, and how many a client may ask for.
    pub tokens: TokenSettings,
    /// `[airkit]`: AIR Kit and the issuance proxy.
    pub airkit: AirKitSettings,
    /// `[database]`: the store's engine, and how replicas keep current.
    pub database: DatabaseSettings,
    /// `[privacy]`: how long personal data is kept.
    pub privacy: PrivacySettings,
    /// `[webhooks]`: the webhook secrets.
    pub webhooks: WebhookSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            keys_dir: PathBuf::from("./keys"),
            log_format: LogFormat::Text,
            admin_token: None,
            master_key: None,
            http: HttpSettings::default(),
            tls: TlsSettings::default(),
            keys: KeySettings::default(),
            tokens: TokenSettings::default(),
            airkit: AirKitSettings::default(),
            database: DatabaseSettings::default(),
            privacy: PrivacySettings::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or has the wrong type; the message
    /// names the variable (`KEYHOST_PUBLISH_LEAD=10`) or the key as written and the file
    /// (`publish_lead = 10 in file keyhost.toml`).
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
        let (config, layers) = Self::read()?;
        config.validate().map_err(|e| layers.locate(e))?;
        Ok(config)
    }

    /// The layers, read but not validated.
    fn read() -> Result<(Self, Layers), ConfigError> {
        let file = match std::env::var_os(CONFIG_FILE_VAR) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(ConfigError::Invalid(format!(
                        "{CONFIG_FILE_VAR} names {}, which is not a readable file",
                        path.display()
                    )));
                }
                Some(file::FileLayer::read(&path)?)
            }
            None => None,
        };
        let mut figment = Figment::new();
        if let Some(file) = &file {
            figment = figment.merge(file);
        }
        let layers = Layers {
            figment: figment.merge(env::parsed()),
            file,
        };
        let mut config = layers.extract()?;
        env::apply_verbatim(&mut config)?;
        Ok((config, layers))
    }

    /// Reads a configuration from the text of a TOML file over the defaults, with the same
    /// extraction and validation as [`Config::load`] but no environment variables (for tools and
    /// the fuzz targets: any text gives a configuration or an error, never a panic).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let file = file::FileLayer::parse(text)?;
        let layers = Layers {
            figment: Figment::from(&file),
            file: Some(file),
        };
        let config = layers.extract()?;
        config.validate().map_err(|e| layers.locate(e))?;
        Ok(config)
    }

    /// A default configuration rooted in `dir` (data in `dir/data`, keys in `dir/keys`) with both
    /// listeners on ephemeral loopback ports; the base of tests and tools.
    pub fn rooted_at(dir: &Path) -> Self {
        let mut config = Self {
            data_dir: dir.join("data"),
            keys_dir: dir.join("keys"),
            ..Self::default()
        };
        config.http.public_addr = ([127, 0, 0, 1], 0).into();
        config.http.internal_addr = ([127, 0, 0, 1], 0).into();
        config
    }

    /// `KEYHOST_*` environment variables that name no setting (for a start-up warning).
    pub fn unknown_env_vars() -> Vec<String> {
        env::unknown_vars()
    }

    /// The lifecycle policy these settings describe.
    pub fn policy(&self) -> Policy {
        let keys = &self.keys;
        Policy {
            algorithms: keys.algorithms.clone(),
            publish_lead: secs(keys.publish_lead),
            rotation_period: secs(keys.rotation_period),
            auto_rotate: keys.auto_rotate,
            retire_grace: secs(keys.retire_grace),
            rsa_bits: keys.rsa_bits,
        }
    }

    /// How long a server cut off from the database serves its last JWKS: the configured limit,
    /// but never so long that the copy could lack a key already signing elsewhere (a key signs
    /// `publish_lead` after it appears, and verifiers may cache the copy for `jwks_max_age`).
    pub fn jwks_stale_limit(&self) -> Duration {
        self.database.jwks_stale_limit.min(
            self.keys
                .publish_lead
                .saturating_sub(self.keys.jwks_max_age),
        )
    }

    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keyhost.db")
    }
}

/// The layers a configuration was read from, to say where a setting came from.
struct Layers {
    figment: Figment,
    file: Option<file::FileLayer>,
}

impl Layers {
    fn extract(&self) -> Result<Config, ConfigError> {
        self.figment
            .extract()
            .map_err(|e| explain::explain(&self.figment, self.file.as_ref(), e))
    }

    /// `error`, naming the file's keys for the settings it names that the file set.
    fn locate(&self, error: ConfigError) -> ConfigError {
        match &self.file {
            Some(file) => explain::locate(error, &self.figment, file),
            None => error,
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}
