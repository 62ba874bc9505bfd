//! The layers together: defaults, the file (nested or flat), the environment, and the errors
//! an operator sees. `documented` checks the README and the example file against the settings.

#![allow(clippy::result_large_err)] // figment::Jail's closure signature

mod documented;

use std::time::Duration;

use super::*;
use crate::keys::types::Alg;

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
        assert_eq!(c.keys.publish_lead, Duration::from_secs(90 * 60));
        assert_eq!(c.keys.algorithms, vec![Alg::RS256]);
        assert_eq!(c.tokens.partner_id.as_deref(), Some("0012345"));
        jail.set_env("KEYHOST_ALGORITHMS", "ES256, RS256");
        jail.set_env("KEYHOST_DEFAULT_ALG", "ES256");
        let c = Config::load().map_err(|e| e.to_string())?;
        assert_eq!(c.keys.algorithms, vec![Alg::ES256, Alg::RS256]);
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
            c.webhooks.kyc_secret.unwrap().expose_secret(),
            "0123456789012345678"
        );
        assert_eq!(
            c.webhooks.idenfy_signing_key.unwrap().expose_secret(),
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
fn trusted_proxies_and_connection_settings_are_read_and_checked() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("KEYHOST_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1");
        jail.set_env("KEYHOST_HTTP_HEADER_TIMEOUT", "20s");
        let c = Config::load().map_err(|e| e.to_string())?;
        let nets: Vec<String> = c
            .http
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        assert_eq!(c.http.header_timeout, Duration::from_secs(20));
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
            Config::load().map_err(|e| e.to_string())?.http.public_addr,
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
        for (i, (setting, slot)) in names::secrets().enumerate() {
            let (name, var) = (setting.name, setting.var());
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
        for (setting, _) in names::secrets() {
            let nested = match setting.path.split_once('.') {
                Some((section, field)) => format!("[{section}]\n{field}"),
                None => setting.path.to_owned(),
            };
            for (written, key) in [(setting.name, setting.name), (setting.path, &nested)] {
                let text = format!("{key} = \"do-not-quote-me-0123456789\"\n");
                jail.create_file("keyhost.toml", &text)?;
                for err in [Config::load(), Config::from_toml_str(&text)] {
                    let err = err.unwrap_err().to_string();
                    assert!(err.contains(&format!("{written} in ")), "{err}");
                    assert!(err.contains(&setting.var()), "{err}");
                    assert!(!err.contains("do-not-quote-me"), "{err}");
                }
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

#[test]
fn flat_and_nested_keys_mix_and_the_environment_overrides_either() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "keyhost.toml",
            "airkit_timeout = \"3s\"\n[keys]\npublish_lead = \"2h\"\n[airkit]\nwait = \"4s\"\n",
        )?;
        jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
        let c = Config::load().map_err(|e| e.to_string())?;
        assert_eq!(c.keys.publish_lead, Duration::from_secs(7200));
        assert_eq!(c.airkit.timeout, Duration::from_secs(3));
        assert_eq!(c.airkit.wait, Duration::from_secs(4));
        jail.set_env("KEYHOST_PUBLISH_LEAD", "3h");
        jail.set_env("KEYHOST_AIRKIT_TIMEOUT", "6s");
        let c = Config::load().map_err(|e| e.to_string())?;
        assert_eq!(c.keys.publish_lead, Duration::from_secs(3 * 3600));
        assert_eq!(c.airkit.timeout, Duration::from_secs(6));
        Ok(())
    });
}

#[test]
fn a_file_giving_one_setting_flat_and_nested_is_refused_naming_both_and_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "keyhost.toml",
            "issue_scope = \"issue\"\n\n[airkit]\nscope = \"issue on-behalf\"\n",
        )?;
        jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
        let err = Config::load().unwrap_err().to_string();
        assert!(
            err.contains("keyhost.toml sets both issue_scope and airkit.scope"),
            "{err}"
        );
        assert!(err.contains("file /"), "{err}");
        Ok(())
    });
}

#[test]
fn errors_in_a_nested_file_name_the_key_by_its_table() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
        jail.create_file("keyhost.toml", "[keys]\njwks_max_age = 10\n")?;
        let err = Config::load().unwrap_err().to_string();
        assert!(err.contains("keys.jwks_max_age = 10 in file /"), "{err}");
        assert!(err.contains("e.g. \"10s\""), "{err}");
        jail.create_file("keyhost.toml", "[airkit]\ntimout = \"5s\"\n")?;
        let err = Config::load().unwrap_err().to_string();
        assert!(err.contains("airkit.timout in file /"), "{err}");
        assert!(err.contains("unknown field: found `timout`"), "{err}");
        jail.create_file("keyhost.toml", "[http]\npublic_addr = \"localhost:80\"\n")?;
        let err = Config::load().unwrap_err().to_string();
        assert!(
            err.contains("http.public_addr = \"localhost:80\" in file /"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn a_rule_broken_by_the_file_names_the_keys_the_file_wrote() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("KEYHOST_CONFIG", "keyhost.toml");
        jail.create_file(
            "keyhost.toml",
            "rotation_period = \"2h\"\n[keys]\npublish_lead = \"3h\"\n",
        )?;
        let err = Config::load().unwrap_err().to_string();
        assert!(
            err.contains("KEYHOST_ROTATION_PERIOD (2h) must be longer"),
            "{err}"
        );
        assert!(
            err.ends_with("keyhost.toml: rotation_period, keys.publish_lead)"),
            "{err}"
        );
        assert!(err.contains("(set in file /"), "{err}");
        // A value the environment overrides is not the file's.
        jail.set_env("KEYHOST_PUBLISH_LEAD", "3h");
        let err = Config::load().unwrap_err().to_string();
        assert!(err.ends_with("keyhost.toml: rotation_period)"), "{err}");
        jail.set_env("KEYHOST_ROTATION_PERIOD", "2h");
        let err = Config::load().unwrap_err().to_string();
        assert!(!err.contains("set in"), "{err}");
        Ok(())
    });
}
