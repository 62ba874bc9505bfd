//! The one table of settings: where each lives in the nested configuration (`keys.publish_lead`,
//! the `[keys]` table of the TOML file), its flat name (`publish_lead`: the environment variable
//! `KEYHOST_PUBLISH_LEAD` without its prefix, and the key of flat TOML files, which are still
//! read), and how its environment variable is read.
//!
//! Every environment variable, alias and secret the loader knows comes from [`SETTINGS`], so a
//! setting added here is documented, aliased and refused in the file (if secret) in one place.

use secrecy::SecretString;

use super::Config;

/// Where a secret goes in the configuration.
pub(super) type SecretSlot = for<'a> fn(&'a mut Config) -> &'a mut Option<SecretString>;

/// Where a setting read verbatim goes in the configuration.
pub(super) type TextSlot = for<'a> fn(&'a mut Config) -> &'a mut Option<String>;

/// How a setting's environment variable is read.
#[derive(Clone, Copy)]
pub(super) enum Read {
    /// Through the typed parser, like the file (`10s`, `ES256,RS256`, `true`).
    Parsed,
    /// As it is: the parser would turn an all-digit partner id into a number, losing leading
    /// zeros. The file may set it.
    Verbatim(TextSlot),
    /// As it is, from `KEYHOST_<NAME>` or the file `KEYHOST_<NAME>_FILE` names (the Docker and
    /// Kubernetes secrets convention), never through the parser (its errors would quote the
    /// value), and never from the TOML file, which is meant to be shared and is refused if it
    /// holds one.
    Secret(SecretSlot),
    /// As a secret from the environment (`KEYHOST_<NAME>` or `KEYHOST_<NAME>_FILE`), but also
    /// accepted in the TOML file: a setting that holds a secret only sometimes (a database URL
    /// with a password in it).
    Credential(SecretSlot),
}

/// One setting.
#[derive(Clone, Copy)]
pub struct Setting {
    /// Flat name: the environment variable without `KEYHOST_`, and the flat TOML key.
    pub name: &'static str,
    /// Dotted path in the nested configuration: `section.field`, or the name for the few
    /// settings outside any section.
    pub path: &'static str,
    pub(super) read: Read,
}

impl Setting {
    /// Its environment variable (`KEYHOST_PUBLISH_LEAD`).
    pub fn var(&self) -> String {
        env_name(self.name)
    }

    /// Whether it is a secret (environment only).
    pub fn is_secret(&self) -> bool {
        matches!(self.read, Read::Secret(_))
    }

    /// Whether it may also be read from the file `KEYHOST_<NAME>_FILE` names.
    pub fn has_file_form(&self) -> bool {
        matches!(self.read, Read::Secret(_) | Read::Credential(_))
    }

    /// Whether its flat name differs from its path (so the flat TOML key is an alias).
    pub(super) fn is_alias(&self) -> bool {
        self.name != self.path
    }
}

const fn parsed(name: &'static str, path: &'static str) -> Setting {
    Setting {
        name,
        path,
        read: Read::Parsed,
    }
}

const fn secret(name: &'static str, path: &'static str, slot: SecretSlot) -> Setting {
    Setting {
        name,
        path,
        read: Read::Secret(slot),
    }
}

/// Every setting, grouped by section in the order of `deploy/keyhost.example.toml`.
/// Environment variables outside this list are ignored with a warning (orchestrators inject
/// `KEYHOST_SERVICE_HOST` and the like); unknown keys in the TOML file are errors, since there
/// they can only be typos.
pub const SETTINGS: &[Setting] = &[
    parsed("data_dir", "data_dir"),
    parsed("keys_dir", "keys_dir"),
    parsed("log_format", "log_format"),
    secret("admin_token", "admin_token", |c| &mut c.admin_token),
    secret("master_key", "master_key", |c| &mut c.master_key),
    // [http]
    parsed("public_addr", "http.public_addr"),
    parsed("internal_addr", "http.internal_addr"),
    parsed("public_max_connections", "http.public_max_connections"),
    parsed("internal_max_connections", "http.internal_max_connections"),
    parsed("http_first_byte_timeout", "http.first_byte_timeout"),
    parsed("http_header_timeout", "http.header_timeout"),
    parsed("http_body_timeout", "http.body_timeout"),
    parsed("trusted_proxies", "http.trusted_proxies"),
    parsed("auth_failure_limit", "http.auth_failure_limit"),
    // [tls]
    parsed("tls_cert", "tls.cert"),
    parsed("tls_key", "tls.key"),
    parsed("tls_handshake_timeout", "tls.handshake_timeout"),
    // [keys]
    parsed("algorithms", "keys.algorithms"),
    parsed("rsa_bits", "keys.rsa_bits"),
    parsed("publish_lead", "keys.publish_lead"),
    parsed("rotation_period", "keys.rotation_period"),
    parsed("auto_rotate", "keys.auto_rotate"),
    parsed("retire_grace", "keys.retire_grace"),
    parsed("jwks_max_age", "keys.jwks_max_age"),
    parsed("public_jwks_url", "keys.public_jwks_url"),
    parsed("public_jwks_ca_file", "keys.public_jwks_ca_file"),
    parsed(
        "activation_requires_sighting",
        "keys.activation_requires_sighting",
    ),
    parsed("activation_sighting_cap", "keys.activation_sighting_cap"),
    // [tokens]
    Setting {
        name: "partner_id",
        path: "tokens.partner_id",
        read: Read::Verbatim(|c| &mut c.tokens.partner_id),
    },
    parsed("default_alg", "tokens.default_alg"),
    parsed("client_rate_limit", "tokens.client_rate_limit"),
    // [airkit]
    parsed("airkit_env", "airkit.env"),
    parsed("airkit_base_url", "airkit.base_url"),
    parsed("airkit_timeout", "airkit.timeout"),
    parsed("max_clock_skew", "airkit.max_clock_skew"),
    parsed("issuer_did", "airkit.issuer_did"),
    parsed("credential_id", "airkit.credential_id"),
    parsed("issue_scope", "airkit.scope"),
    parsed("airkit_max_attempts", "airkit.max_attempts"),
    parsed("airkit_backoff", "airkit.backoff"),
    parsed("airkit_backoff_max", "airkit.backoff_max"),
    parsed("airkit_wait", "airkit.wait"),
    parsed("airkit_poll_interval", "airkit.poll_interval"),
    parsed("airkit_poll_deadline", "airkit.poll_deadline"),
    // [database]
    Setting {
        name: "database_url",
        path: "database.url",
        read: Read::Credential(|c| &mut c.database.url),
    },
    parsed("database_ca_file", "database.ca_file"),
    parsed("database_pool_size", "database.pool_size"),
    parsed("refresh_interval", "database.refresh_interval"),
    parsed("signing_lease", "database.signing_lease"),
    parsed("jwks_stale_limit", "database.jwks_stale_limit"),
    // [privacy]
    parsed("issuance_retention", "privacy.issuance_retention"),
    // [webhooks]
    secret("kyc_webhook_secret", "webhooks.kyc_secret", |c| {
        &mut c.webhooks.kyc_secret
    }),
    secret("idenfy_signing_key", "webhooks.idenfy_signing_key", |c| {
        &mut c.webhooks.idenfy_signing_key
    }),
];

/// The sections of the nested form, as TOML tables.
pub const SECTIONS: &[&str] = &[
    "http", "tls", "keys", "tokens", "airkit", "database", "privacy", "webhooks",
];

/// The setting whose flat name is `name` (lower case).
pub(super) fn by_name(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The setting at the dotted `path`.
pub(super) fn by_path(path: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.path == path)
}

/// The secrets.
pub(super) fn secrets() -> impl Iterator<Item = (&'static Setting, SecretSlot)> {
    SETTINGS.iter().filter_map(|s| match s.read {
        Read::Secret(slot) => Some((s, slot)),
        Read::Parsed | Read::Verbatim(_) | Read::Credential(_) => None,
    })
}

/// The environment variable of the flat name `name` (`publish_lead` → `KEYHOST_PUBLISH_LEAD`).
pub(super) fn env_name(name: &str) -> String {
    format!("KEYHOST_{}", name.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique_and_every_path_is_in_a_known_section() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[i + 1..]
                    .iter()
                    .all(|t| t.name != s.name && t.path != s.path && t.name != s.path),
                "{} is listed twice",
                s.name
            );
            if let Some((section, _)) = s.path.split_once('.') {
                assert!(SECTIONS.contains(&section), "{}", s.path);
            }
            assert!(!SECTIONS.contains(&s.name), "{} names a section", s.name);
        }
    }
}
