//! The documentation against the code: every variable the README lists is a setting, is read
//! under its name and is placed in its table; the example file shows the defaults and names every
//! variable; a nested file and a flat one with the same values give the same configuration.

use std::time::Duration;

use crate::config::{Config, SETTINGS, names};

#[test]
fn the_example_configuration_file_loads_shows_the_defaults_and_names_every_variable() {
    figment::Jail::expect_with(|jail| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/keyhost.example.toml");
        jail.set_env("KEYHOST_CONFIG", path);
        let c = Config::load().map_err(|e| e.to_string())?;
        let mut expected = Config::default();
        expected.tokens.partner_id = Some("your-partner-id".into());
        assert_eq!(format!("{c:?}"), format!("{expected:?}"));
        let text = std::fs::read_to_string(path).unwrap();
        for setting in SETTINGS {
            assert!(
                text.contains(&setting.var()),
                "{} is not explained",
                setting.var()
            );
        }
        Ok(())
    });
}

/// A valid value, other than the default, for every setting (by flat name), as the environment
/// writes it.
const SAMPLES: &[(&str, &str)] = &[
    ("data_dir", "/srv/keyhost/data"),
    ("keys_dir", "/srv/keyhost/keys"),
    ("log_format", "json"),
    ("admin_token", "admin-token-0123456789"),
    ("master_key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
    ("public_addr", "0.0.0.0:8443"),
    ("internal_addr", "127.0.0.1:9081"),
    ("public_max_connections", "2048"),
    ("internal_max_connections", "128"),
    ("http_first_byte_timeout", "3s"),
    ("http_header_timeout", "20s"),
    ("http_body_timeout", "30s"),
    ("trusted_proxies", "10.0.0.0/8,127.0.0.1"),
    ("auth_failure_limit", "20"),
    ("tls_cert", "/etc/keyhost/tls/fullchain.pem"),
    ("tls_key", "/etc/keyhost/tls/privkey.pem"),
    ("tls_handshake_timeout", "5s"),
    ("algorithms", "RS256,ES256"),
    ("rsa_bits", "3072"),
    ("publish_lead", "12h"),
    ("rotation_period", "7d"),
    ("auto_rotate", "false"),
    ("retire_grace", "2h"),
    ("jwks_max_age", "600s"),
    (
        "public_jwks_url",
        "https://partner.example.com/.well-known/jwks.json",
    ),
    ("public_jwks_ca_file", "/etc/keyhost/cdn-ca.pem"),
    ("activation_requires_sighting", "AIR-Kit-JWKS-Fetcher"),
    ("activation_sighting_cap", "6h"),
    ("partner_id", "partner-1"),
    ("default_alg", "RS256"),
    ("client_rate_limit", "0"),
    ("airkit_env", "sandbox"),
    ("airkit_base_url", "http://127.0.0.1:8090/v1"),
    ("airkit_timeout", "5s"),
    ("max_clock_skew", "30s"),
    ("issuer_did", "did:air:id:test:demo"),
    ("credential_id", "demo-program"),
    ("issue_scope", "issue on-behalf"),
    ("airkit_max_attempts", "3"),
    ("airkit_backoff", "2s"),
    ("airkit_backoff_max", "40s"),
    ("airkit_wait", "5s"),
    ("airkit_poll_interval", "2s"),
    ("airkit_poll_deadline", "1h"),
    (
        "database_url",
        "postgres://keyhost@db.internal:5432/keyhost?sslmode=verify-full",
    ),
    ("database_ca_file", "/etc/keyhost/db-ca.pem"),
    ("database_pool_size", "4"),
    ("refresh_interval", "1s"),
    ("signing_lease", "6s"),
    ("jwks_stale_limit", "30m"),
    ("issuance_retention", "30d"),
    ("kyc_webhook_secret", "kyc-webhook-secret-0123456789"),
    ("idenfy_signing_key", "idenfy-signing-key-0123456789"),
];

fn sample(name: &str) -> &'static str {
    SAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no sample for {name}"))
        .1
}

/// The sample of `name` as a TOML value.
fn toml_sample(name: &str) -> String {
    let value = sample(name);
    if value.parse::<u64>().is_ok() || value == "false" {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// The variables in the first column of the README's configuration table, row by row.
fn documented_rows() -> Vec<Vec<String>> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("the README has a Configuration section");
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| line.strip_prefix("| `KEYHOST_"))
        .map(|row| {
            let first = row.split(" | ").next().unwrap_or_default();
            format!("`KEYHOST_{first}")
                .split('`')
                .filter(|s| s.starts_with("KEYHOST_"))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn every_setting_is_documented_in_the_readme_and_every_documented_variable_is_a_setting() {
    let mut documented: Vec<String> = documented_rows().into_iter().flatten().collect();
    let mut settings: Vec<String> = SETTINGS.iter().map(|s| s.var()).collect();
    documented.sort();
    settings.sort();
    assert_eq!(documented, settings);
}

#[test]
fn every_variable_the_readme_documents_is_read_under_its_name_and_loads() {
    let default = format!("{:?}", Config::default());
    figment::Jail::expect_with(|jail| {
        for row in documented_rows() {
            for var in &row {
                jail.clear_env();
                let name = var["KEYHOST_".len()..].to_ascii_lowercase();
                jail.set_env(var, sample(&name));
                let (read, _) = Config::read().map_err(|e| format!("{var}: {e}"))?;
                assert_ne!(format!("{read:?}"), default, "{var} changed nothing");
            }
            // Together, a row's variables make a valid configuration.
            jail.clear_env();
            for var in &row {
                jail.set_env(var, sample(&var["KEYHOST_".len()..].to_ascii_lowercase()));
            }
            Config::load().map_err(|e| format!("{row:?}: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn a_nested_file_and_a_flat_one_give_the_same_configuration() {
    let settings = || SETTINGS.iter().filter(|s| !s.is_secret());
    let flat: String = settings()
        .map(|s| format!("{} = {}\n", s.name, toml_sample(s.name)))
        .collect();
    let mut nested = String::new();
    for s in settings().filter(|s| !s.path.contains('.')) {
        nested += &format!("{} = {}\n", s.path, toml_sample(s.name));
    }
    for section in names::SECTIONS {
        nested += &format!("\n[{section}]\n");
        for s in settings() {
            if let Some((_, field)) = s.path.split_once('.').filter(|(t, _)| t == section) {
                nested += &format!("{field} = {}\n", toml_sample(s.name));
            }
        }
    }
    let flat = Config::from_toml_str(&flat).unwrap();
    let nested = Config::from_toml_str(&nested).unwrap();
    assert_eq!(format!("{flat:?}"), format!("{nested:?}"));
    assert_eq!(nested.keys.publish_lead, Duration::from_secs(12 * 3600));
    assert_eq!(nested.airkit.scope, "issue on-behalf");
    assert_eq!(nested.tokens.partner_id.as_deref(), Some("partner-1"));
    assert_eq!(nested.tls.handshake_timeout, Duration::from_secs(5));
}

#[test]
fn the_readme_places_every_setting_in_its_table() {
    let readme = include_str!("../../../README.md");
    let mut placed = Vec::new();
    for line in readme.lines() {
        let Some((table, names)) = line
            .strip_prefix("| ")
            .and_then(|row| row.split_once(" | "))
            .filter(|(t, _)| *t == "top level" || t.starts_with("`["))
        else {
            continue;
        };
        let section = table.trim_matches(['`', '[', ']']);
        for name in names.split('`').skip(1).step_by(2) {
            let Some(setting) = names::by_name(&name.to_ascii_lowercase()) else {
                continue;
            };
            let in_section = match setting.path.split_once('.') {
                Some((s, _)) => s == section,
                None => section == "top level",
            };
            assert!(in_section, "the README puts {name} in {table}");
            placed.push(setting.name);
        }
    }
    for setting in SETTINGS.iter().filter(|s| !s.is_secret()) {
        assert!(
            placed.contains(&setting.name),
            "{} has no table",
            setting.name
        );
    }
}

#[test]
fn the_flat_example_of_earlier_versions_loads_to_the_same_configuration_as_the_nested_one() {
    let flat = Config::from_toml_str(include_str!("flat.toml")).unwrap();
    let nested =
        Config::from_toml_str(include_str!("../../../deploy/keyhost.example.toml")).unwrap();
    assert_eq!(format!("{flat:?}"), format!("{nested:?}"));
}
