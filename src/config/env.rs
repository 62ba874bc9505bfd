//! The environment layer: every `KEYHOST_<NAME>` of [`SETTINGS`] under its documented name,
//! whatever section the setting now lives in. Parsed settings go through figment (so their
//! errors can be explained like the file's); the partner id and the secrets are read verbatim,
//! the secrets also from the file `KEYHOST_<NAME>_FILE` names.

use std::path::PathBuf;

use figment::providers::Env;

use super::names::{self, Read, SETTINGS, env_name};
use super::{CONFIG_FILE_VAR, Config, ConfigError};

/// The parsed settings' variables, each emitted at its path in the nested configuration
/// (`KEYHOST_PUBLISH_LEAD` sets `keys.publish_lead`); other variables are left out.
pub(super) fn parsed() -> Env {
    Env::prefixed("KEYHOST_").filter_map(|name| {
        let setting = names::by_name(&name.as_str().to_ascii_lowercase())?;
        matches!(setting.read, Read::Parsed).then(|| setting.path.into())
    })
}

/// Sets the settings read verbatim (the partner id, the secrets) from their variables.
pub(super) fn apply_verbatim(config: &mut Config) -> Result<(), ConfigError> {
    for setting in SETTINGS {
        match setting.read {
            Read::Parsed => {}
            Read::Verbatim(slot) => {
                if let Some(value) = verbatim(&setting.var())? {
                    *slot(config) = Some(value);
                }
            }
            Read::Secret(slot) | Read::Credential(slot) => {
                if let Some(secret) = secret(setting.name)? {
                    *slot(config) = Some(secret.into());
                }
            }
        }
    }
    Ok(())
}

/// `KEYHOST_*` environment variables that name no setting (for a start-up warning).
pub(super) fn unknown_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            k.strip_prefix("KEYHOST_").is_some_and(|name| {
                let name = name.to_ascii_lowercase();
                let secret = |n: &str| names::by_name(n).is_some_and(|s| s.has_file_form());
                !(k == CONFIG_FILE_VAR
                    || names::by_name(&name).is_some()
                    || name.strip_suffix("_file").is_some_and(secret))
            })
        })
        .collect()
}

/// The value of `var` as it is, if set.
fn verbatim(var: &str) -> Result<Option<String>, ConfigError> {
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
fn secret(name: &str) -> Result<Option<String>, ConfigError> {
    let var = env_name(name);
    let file_var = format!("{var}_FILE");
    let direct = verbatim(&var)?;
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
