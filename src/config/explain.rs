//! Rewrites figment's errors to name what the operator wrote: the environment variable and its
//! value (`KEYHOST_PUBLISH_LEAD=10`), or the key as the file wrote it and the file
//! (`publish_lead = 10 in file keyhost.toml`, or `keys.publish_lead = 10` for the nested form),
//! rather than figment's internal path (`default.keys.publish_lead`). A broken rule names the
//! variables, and also the keys the file wrote for those the file set.

use figment::Figment;
use figment::error::{Actual, Kind};

use super::ConfigError;
use super::file::FileLayer;
use super::names::{self, SETTINGS, env_name};

/// The error of extracting `figment` (whose file layer, if any, is `file`), explained.
pub(super) fn explain(
    figment: &Figment,
    file: Option<&FileLayer>,
    error: figment::Error,
) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| explain_one(figment, file, &e))
        .collect();
    ConfigError::Load(lines.join("; "))
}

/// A validation `error`, with the keys the file wrote for the settings it names (by their
/// variables) that the file set: an operator whose lead is in the file looks there, not in the
/// environment.
pub(super) fn locate(error: ConfigError, figment: &Figment, file: &FileLayer) -> ConfigError {
    let ConfigError::Invalid(message) = &error else {
        return error;
    };
    let mut written: Vec<(usize, &str)> = SETTINGS
        .iter()
        .filter(|s| {
            figment
                .find_metadata(s.path)
                .is_some_and(|m| file.provided(m))
        })
        .filter_map(|s| Some((mentioned_at(message, &s.var())?, file.written_as(s.path))))
        .collect();
    if written.is_empty() {
        return error;
    }
    written.sort();
    let written: Vec<&str> = written.into_iter().map(|(_, key)| key).collect();
    ConfigError::Invalid(format!(
        "{message} (set in {}: {})",
        file.source(),
        written.join(", ")
    ))
}

/// Where `message` first names the variable `var` (not merely one it begins:
/// `KEYHOST_AIRKIT_BACKOFF` is not in `KEYHOST_AIRKIT_BACKOFF_MAX`).
fn mentioned_at(message: &str, var: &str) -> Option<usize> {
    message.match_indices(var).map(|(at, _)| at).find(|at| {
        !message[at + var.len()..]
            .starts_with(|c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

fn explain_one(figment: &Figment, file: Option<&FileLayer>, e: &figment::Error) -> String {
    let key = e.path.join(".");
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let mut message = message(&e.kind, from_env);
    if matches!(e.kind, Kind::UnknownField(..)) && e.path.len() == 1 {
        message += " (or a flat name: an environment variable of the README's table in lower case \
                     without KEYHOST_, e.g. publish_lead)";
    }
    if from_env && !key.is_empty() {
        let var = names::by_path(&key)
            .map(|s| s.var())
            .unwrap_or_else(|| env_name(&e.path.join("_")));
        let value = std::env::var(&var).unwrap_or_default();
        return format!("{var}={value}: {message}");
    }
    let source = match (&e.metadata, file) {
        (Some(_), Some(file)) => file.source().to_owned(),
        (Some(m), None) => m.name.to_string(),
        (None, _) => String::new(),
    };
    // An unknown key has no value worth quoting (figment's path already ends with it).
    let quote = !matches!(e.kind, Kind::UnknownField(..));
    let written = file.map_or(key.as_str(), |f| f.written_as(&key));
    // Secrets never reach figment (refused in the file, read verbatim from the environment),
    // so quoting the value cannot leak one.
    let value = quote
        .then(|| figment.find_value(&key).ok())
        .flatten()
        .and_then(|v| serde_json::to_string(&v).ok());
    let at = match value {
        Some(value) if !key.is_empty() => format!("{written} = {value}"),
        _ => written.to_owned(),
    };
    let at = [at.as_str(), &source]
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

/// What is wrong, with the fix for a bare number where a duration belongs.
fn message(kind: &Kind, from_env: bool) -> String {
    let number = match kind {
        Kind::InvalidType(Actual::Unsigned(n), _) => Some(n.to_string()),
        Kind::InvalidType(Actual::Signed(n), _) => Some(n.to_string()),
        Kind::InvalidType(Actual::Float(n), _) => Some(n.to_string()),
        _ => None,
    };
    let expects_duration = matches!(
        kind,
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected)
            if expected == "a duration"
    );
    match (expects_duration, number) {
        (true, Some(n)) if from_env => format!("a duration needs a unit, e.g. {n}s"),
        (true, Some(n)) => format!("a duration needs a unit and quotes, e.g. \"{n}s\""),
        (true, None) => {
            "not a duration; write a number and a unit, e.g. 90s, 10m, 24h or 30d".into()
        }
        (false, _) => kind.to_string(),
    }
}
