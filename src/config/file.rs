//! The TOML layer. The file may use the nested form (`[keys]` with `publish_lead`) or the flat
//! keys of earlier versions (`publish_lead` at the top), which are the environment names in
//! lower case; flat keys are moved to their place before extraction, and a file that gives one
//! setting both ways is refused (which one should win would be a guess). Secrets are refused
//! in either form, without quoting them.

use std::collections::HashMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::ConfigError;
use super::names;

/// A TOML file (or text) in the nested form, as figment reads it.
pub(super) struct FileLayer {
    dict: Dict,
    metadata: Metadata,
    /// How it is named in messages: `file /etc/keyhost/keyhost.toml`, `TOML text`.
    source: String,
    /// Paths of the settings the file gave by their flat name, with that name.
    flat: HashMap<&'static str, &'static str>,
}

impl FileLayer {
    /// Reads the file at `path`.
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        // Named by its absolute path: the server's working directory is not always obvious.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let source = format!("file {}", path.display());
        let raw = Toml::file_exact(&path).data();
        Self::new(raw, Metadata::from("TOML file", path.as_path()), source)
    }

    /// Reads TOML `text`.
    pub(super) fn parse(text: &str) -> Result<Self, ConfigError> {
        let source = "TOML text".to_owned();
        let raw = Toml::string(text).data();
        Self::new(raw, Metadata::named("TOML text"), source)
    }

    fn new(
        raw: figment::Result<Map<Profile, Dict>>,
        metadata: Metadata,
        source: String,
    ) -> Result<Self, ConfigError> {
        let mut raw = raw.map_err(|e| {
            let kinds: Vec<String> = e.into_iter().map(|e| e.kind.to_string()).collect();
            ConfigError::Load(format!("{source}: {}", kinds.join("; ")))
        })?;
        let raw = raw.remove(&Profile::Default).unwrap_or_default();
        refuse_secrets(&raw, &source)?;
        let (dict, flat) = nest(raw, &source)?;
        Ok(Self {
            dict,
            metadata,
            source,
            flat,
        })
    }

    /// The key at `path` as the file wrote it: its flat name, or the path itself.
    pub(super) fn written_as<'a>(&self, path: &'a str) -> &'a str {
        self.flat.get(path).copied().unwrap_or(path)
    }

    /// How the file is named in messages.
    pub(super) fn source(&self) -> &str {
        &self.source
    }

    /// Whether a value whose provider is described by `metadata` came from this file.
    pub(super) fn provided(&self, metadata: &Metadata) -> bool {
        *metadata == self.metadata
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Moves every flat key to its place in its section; returns the nested dictionary and where
/// each flat key went.
fn nest(
    raw: Dict,
    source: &str,
) -> Result<(Dict, HashMap<&'static str, &'static str>), ConfigError> {
    let mut dict = Dict::new();
    let mut moved = Vec::new();
    for (key, value) in raw {
        match names::by_name(&key).filter(|s| s.is_alias()) {
            Some(setting) => moved.push((setting, value)),
            None => {
                dict.insert(key, value);
            }
        }
    }
    let mut flat = HashMap::new();
    for (setting, value) in moved {
        let (section, field) = setting
            .path
            .split_once('.')
            .expect("an alias has a section");
        let table = dict
            .entry(section.to_owned())
            .or_insert_with(|| Value::from(Dict::new()));
        let Value::Dict(_, table) = table else {
            return Err(ConfigError::Load(format!(
                "{section} in {source}: must be a table ([{section}]), since {} is given too",
                setting.name
            )));
        };
        if table.contains_key(field) {
            return Err(ConfigError::Load(format!(
                "{source} sets both {} and {} (in [{section}]); keep one, preferably the [{section}] \
                 form",
                setting.name, setting.path
            )));
        }
        table.insert(field.to_owned(), value);
        flat.insert(setting.path, setting.name);
    }
    Ok((dict, flat))
}

/// Refuses a file that sets a secret, under its flat name or in its section: the file is meant to
/// be shared (checked into a repository, mounted from a ConfigMap), and a secret read from it
/// would keep working, so a warning would only be ignored.
fn refuse_secrets(raw: &Dict, source: &str) -> Result<(), ConfigError> {
    let is_set = |path: &str| {
        let (first, rest) = path.split_once('.').unwrap_or((path, ""));
        raw.get(first).is_some_and(|v| {
            rest.is_empty() || matches!(v, Value::Dict(_, d) if d.contains_key(rest))
        })
    };
    for (setting, _) in names::secrets() {
        let Some(written) = [setting.name, setting.path].into_iter().find(|p| is_set(p)) else {
            continue;
        };
        let var = setting.var();
        return Err(ConfigError::Invalid(format!(
            "{written} in {source}: secrets do not belong in the configuration file; remove it \
             there and give it as {var}, or as {var}_FILE naming a file only keyhost can read"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keys_move_into_their_sections_and_nested_keys_stay() {
        let layer = FileLayer::parse(
            "data_dir = \"/d\"\npublish_lead = \"2h\"\nissue_scope = \"x\"\n\
             [keys]\nrsa_bits = 4096\n",
        )
        .unwrap();
        let keys = layer.dict["keys"].as_dict().unwrap();
        assert!(keys.contains_key("publish_lead") && keys.contains_key("rsa_bits"));
        assert!(
            layer.dict["airkit"]
                .as_dict()
                .unwrap()
                .contains_key("scope")
        );
        assert!(layer.dict.contains_key("data_dir"));
        assert_eq!(layer.written_as("keys.publish_lead"), "publish_lead");
        assert_eq!(layer.written_as("airkit.scope"), "issue_scope");
        assert_eq!(layer.written_as("keys.rsa_bits"), "keys.rsa_bits");
    }

    #[test]
    fn one_setting_given_flat_and_nested_is_refused_naming_both() {
        let err = FileLayer::parse("publish_lead = \"2h\"\n[keys]\npublish_lead = \"3h\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("TOML text sets both publish_lead and keys.publish_lead"),
            "{err}"
        );
        let err = FileLayer::parse("airkit = 3\nairkit_timeout = \"5s\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("airkit in TOML text: must be a table"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_refused_in_either_form() {
        for text in [
            "kyc_webhook_secret = \"do-not-quote-me-0123456789\"\n",
            "[webhooks]\nkyc_secret = \"do-not-quote-me-0123456789\"\n",
        ] {
            let err = FileLayer::parse(text).err().unwrap().to_string();
            assert!(err.contains("KEYHOST_KYC_WEBHOOK_SECRET_FILE"), "{err}");
            assert!(!err.contains("do-not-quote-me"), "{err}");
        }
        let err = FileLayer::parse("[webhooks]\nkyc_secret = 1\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("invalid configuration: webhooks.kyc_secret in "),
            "{err}"
        );
    }
}
