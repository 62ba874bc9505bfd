//! The rules a configuration must meet before anything starts. Each message names the
//! documented environment variable (the TOML key is its lower-case form) and says what to do.
//!
//! The lifecycle rules refuse policies under which a verifier could meet a key it has not
//! fetched yet (`publish_lead` not longer than the JWKS `max-age`) or lose a key while tokens
//! signed by it are still valid (`retire_grace` shorter than the longest token lifetime plus
//! `max-age`).

use std::ops::RangeInclusive;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Config, ConfigError, MIN_WEBHOOK_SECRET_LEN};
use crate::signer::MAX_TOKEN_TTL;

type Checked = Result<(), ConfigError>;

fn invalid(message: impl Into<String>) -> Checked {
    Err(ConfigError::Invalid(message.into()))
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Config {
    /// Checks every rule: each section's bounds, and the rules that tie sections together.
    pub fn validate(&self) -> Checked {
        self.check_keys()?;
        self.check_tokens()?;
        self.check_http()?;
        self.check_airkit()?;
        self.check_database()?;
        if self.privacy.issuance_retention < Duration::from_secs(3600) {
            return invalid(format!(
                "KEYHOST_ISSUANCE_RETENTION is {}; keep personal data at least 1h (e.g. 90d)",
                human(self.privacy.issuance_retention)
            ));
        }
        self.check_webhooks()
    }

    fn check_database(&self) -> Checked {
        let db = &self.database;
        if let Some(url) = &db.url {
            use secrecy::ExposeSecret;
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return invalid(
                    "KEYHOST_DATABASE_URL must be a postgres:// (or postgresql://) URL; unset it \
                     to keep the store in the SQLite file of KEYHOST_DATA_DIR",
                );
            }
        }
        if !(2..=1000).contains(&db.pool_size) {
            return invalid(format!(
                "KEYHOST_DATABASE_POOL_SIZE is {}; use 2 to 1000 connections",
                db.pool_size
            ));
        }
        let refresh = db.refresh_interval;
        if refresh < Duration::from_millis(100) || refresh > Duration::from_secs(60) {
            return invalid(format!(
                "KEYHOST_REFRESH_INTERVAL is {}; use 100ms to 60s",
                human(refresh)
            ));
        }
        if db.signing_lease <= refresh {
            return invalid(format!(
                "KEYHOST_SIGNING_LEASE ({}) must be longer than KEYHOST_REFRESH_INTERVAL ({}): a \
                 server renews its view of the key set once per interval, so a shorter lease \
                 would stop it signing between two refreshes",
                human(db.signing_lease),
                human(refresh)
            ));
        }
        if db.jwks_stale_limit < db.signing_lease {
            return invalid(format!(
                "KEYHOST_JWKS_STALE_LIMIT ({}) is shorter than KEYHOST_SIGNING_LEASE ({}): a \
                 server would stop publishing keys it still signs with",
                human(db.jwks_stale_limit),
                human(db.signing_lease),
            ));
        }
        Ok(())
    }

    fn check_keys(&self) -> Checked {
        let keys = &self.keys;
        if let Some(url) = &keys.public_jwks_url {
            let parsed = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
            if parsed.is_none() {
                return invalid(format!(
                    "KEYHOST_PUBLIC_JWKS_URL {url:?} is not an http(s) URL; give the JWKS URL \
                     registered in the AIR Kit dashboard, e.g. \
                     https://partner.example.com/.well-known/jwks.json"
                ));
            }
        }
        if keys.algorithms.is_empty() {
            return invalid("KEYHOST_ALGORITHMS names no algorithm; use ES256, RS256 or both");
        }
        if ![2048, 3072, 4096].contains(&keys.rsa_bits) {
            return invalid(format!(
                "KEYHOST_RSA_BITS is {}; use 2048, 3072 or 4096",
                keys.rsa_bits
            ));
        }
        let (lead, max_age) = (keys.publish_lead, keys.jwks_max_age);
        if max_age.is_zero() {
            return invalid("KEYHOST_JWKS_MAX_AGE must be at least 1s");
        }
        if lead < max_age {
            return invalid(format!(
                "KEYHOST_PUBLISH_LEAD ({}) is shorter than KEYHOST_JWKS_MAX_AGE ({}): a verifier \
                 holding a cached JWKS would meet keys it has never seen; raise the lead or lower \
                 max-age",
                human(lead),
                human(max_age)
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
                human(lead)
            ));
        }
        // Saturating: a max-age near u64::MAX seconds ("18446744073709551615s" parses) must be
        // refused, not overflow.
        let min_grace = Duration::from_secs(MAX_TOKEN_TTL as u64).saturating_add(max_age);
        if keys.retire_grace < min_grace {
            return invalid(format!(
                "KEYHOST_RETIRE_GRACE ({}) is shorter than the longest token lifetime plus \
                 KEYHOST_JWKS_MAX_AGE ({}): tokens would outlive their key in the JWKS",
                human(keys.retire_grace),
                human(min_grace)
            ));
        }
        if keys.rotation_period <= lead {
            return invalid(format!(
                "KEYHOST_ROTATION_PERIOD ({}) must be longer than KEYHOST_PUBLISH_LEAD ({})",
                human(keys.rotation_period),
                human(lead)
            ));
        }
        Ok(())
    }

    fn check_tokens(&self) -> Checked {
        let tokens = &self.tokens;
        if !self.keys.algorithms.contains(&tokens.default_alg) {
            return invalid(format!(
                "KEYHOST_DEFAULT_ALG is {} but KEYHOST_ALGORITHMS is {}; add it there or pick one \
                 of those",
                tokens.default_alg,
                self.keys
                    .algorithms
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(id) = &tokens.partner_id
            && (id.trim().is_empty() || id.len() > 256 || id.chars().any(char::is_control))
        {
            return invalid(
                "KEYHOST_PARTNER_ID must be 1 to 256 printable characters (your AIR Kit partner id)",
            );
        }
        Ok(())
    }

    fn check_http(&self) -> Checked {
        let (http, tls) = (&self.http, &self.tls);
        for (name, value) in [
            ("KEYHOST_HTTP_FIRST_BYTE_TIMEOUT", http.first_byte_timeout),
            ("KEYHOST_HTTP_HEADER_TIMEOUT", http.header_timeout),
            ("KEYHOST_HTTP_BODY_TIMEOUT", http.body_timeout),
            ("KEYHOST_TLS_HANDSHAKE_TIMEOUT", tls.handshake_timeout),
        ] {
            if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&value) {
                return invalid(format!(
                    "{name} is {}; use between 100ms and 10m (tens of seconds at most: every \
                     second a silent client may hold a connection is a second an attacker may too)",
                    human(value)
                ));
            }
        }
        for (name, value) in [
            (
                "KEYHOST_PUBLIC_MAX_CONNECTIONS",
                http.public_max_connections,
            ),
            (
                "KEYHOST_INTERNAL_MAX_CONNECTIONS",
                http.internal_max_connections,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return invalid(format!("{name} must be between 1 and 1000000"));
            }
        }
        if !(1..=10_000).contains(&http.auth_failure_limit) {
            return invalid(
                "KEYHOST_AUTH_FAILURE_LIMIT must be between 1 and 10000 failed attempts per \
                 address and minute",
            );
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return invalid(
                "set both KEYHOST_TLS_CERT and KEYHOST_TLS_KEY (PEM files) to serve the JWKS over \
                 HTTPS, or neither",
            );
        }
        Ok(())
    }

    fn check_airkit(&self) -> Checked {
        let airkit = &self.airkit;
        const SKEW: RangeInclusive<Duration> = Duration::from_secs(5)..=Duration::from_secs(3600);
        if !SKEW.contains(&airkit.max_clock_skew) {
            return invalid(
                "KEYHOST_MAX_CLOCK_SKEW must be between 5s and 1h (a Partner JWT lives 5 minutes)",
            );
        }
        if let Some(url) = &airkit.base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid(format!(
                "KEYHOST_AIRKIT_BASE_URL must be an http(s) URL including /v1, got {url:?}"
            ));
        }
        if !(1..=20).contains(&airkit.max_attempts) {
            return invalid("KEYHOST_AIRKIT_MAX_ATTEMPTS must be between 1 and 20");
        }
        if airkit.poll_interval < Duration::from_millis(50) {
            return invalid("KEYHOST_AIRKIT_POLL_INTERVAL must be at least 50ms");
        }
        if airkit.backoff < Duration::from_millis(10) || airkit.backoff > airkit.backoff_max {
            return invalid(
                "KEYHOST_AIRKIT_BACKOFF must be at least 10ms and at most \
                 KEYHOST_AIRKIT_BACKOFF_MAX",
            );
        }
        crate::scope::validate_scope(&airkit.scope)
            .map_err(|e| ConfigError::Invalid(format!("KEYHOST_ISSUE_SCOPE: {e}")))
    }

    fn check_webhooks(&self) -> Checked {
        for (name, secret) in [
            ("KEYHOST_KYC_WEBHOOK_SECRET", &self.webhooks.kyc_secret),
            (
                "KEYHOST_IDENFY_SIGNING_KEY",
                &self.webhooks.idenfy_signing_key,
            ),
        ] {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::types::Alg;

    fn with(f: impl FnOnce(&mut Config)) -> Checked {
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
            c.keys.publish_lead = Duration::from_secs(60);
            c.keys.jwks_max_age = Duration::from_secs(300);
        })
        .unwrap_err();
        assert!(err.to_string().contains("KEYHOST_PUBLISH_LEAD"), "{err}");
    }

    #[test]
    fn a_lead_equal_to_max_age_is_refused() {
        let err = with(|c| {
            c.keys.publish_lead = Duration::from_secs(300);
            c.keys.jwks_max_age = Duration::from_secs(300);
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("KEYHOST_PUBLISH_LEAD (5m) equals"), "{err}");
        with(|c| c.keys.publish_lead = c.keys.jwks_max_age + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn grace_shorter_than_ttl_plus_max_age_is_refused() {
        let err = with(|c| c.keys.retire_grace = Duration::from_secs(599)).unwrap_err();
        assert!(err.to_string().contains("KEYHOST_RETIRE_GRACE"), "{err}");
        with(|c| c.keys.retire_grace = Duration::from_secs(600)).unwrap();
    }

    #[test]
    fn default_alg_must_be_enabled() {
        let err = with(|c| c.keys.algorithms = vec![Alg::RS256]).unwrap_err();
        assert!(err.to_string().contains("KEYHOST_DEFAULT_ALG"), "{err}");
    }

    #[test]
    fn rotation_period_must_exceed_lead() {
        assert!(with(|c| c.keys.rotation_period = c.keys.publish_lead).is_err());
    }

    #[test]
    fn unusual_rsa_sizes_are_refused() {
        assert!(with(|c| c.keys.rsa_bits = 1024).is_err());
        with(|c| c.keys.rsa_bits = 4096).unwrap();
    }

    #[test]
    fn out_of_range_values_name_their_variable() {
        type Tweak = fn(&mut Config);
        let cases: &[(Tweak, &str)] = &[
            (|c| c.keys.algorithms.clear(), "KEYHOST_ALGORITHMS"),
            (
                |c| c.keys.jwks_max_age = Duration::ZERO,
                "KEYHOST_JWKS_MAX_AGE",
            ),
            (
                |c| c.tokens.partner_id = Some(" ".into()),
                "KEYHOST_PARTNER_ID",
            ),
            (
                |c| c.http.body_timeout = Duration::from_secs(3600),
                "KEYHOST_HTTP_BODY_TIMEOUT",
            ),
            (
                |c| c.tls.handshake_timeout = Duration::ZERO,
                "KEYHOST_TLS_HANDSHAKE_TIMEOUT",
            ),
            (
                |c| c.http.internal_max_connections = 0,
                "KEYHOST_INTERNAL_MAX_CONNECTIONS",
            ),
            (
                |c| c.http.auth_failure_limit = 0,
                "KEYHOST_AUTH_FAILURE_LIMIT",
            ),
            (|c| c.tls.cert = Some("cert.pem".into()), "KEYHOST_TLS_KEY"),
            (
                |c| c.airkit.max_clock_skew = Duration::from_secs(1),
                "KEYHOST_MAX_CLOCK_SKEW",
            ),
            (
                |c| c.airkit.base_url = Some("ftp://x".into()),
                "KEYHOST_AIRKIT_BASE_URL",
            ),
            (|c| c.airkit.max_attempts = 0, "KEYHOST_AIRKIT_MAX_ATTEMPTS"),
            (
                |c| c.airkit.poll_interval = Duration::ZERO,
                "KEYHOST_AIRKIT_POLL_INTERVAL",
            ),
            (
                |c| c.airkit.backoff = Duration::from_secs(60),
                "KEYHOST_AIRKIT_BACKOFF",
            ),
            (|c| c.airkit.scope = String::new(), "KEYHOST_ISSUE_SCOPE"),
            (
                |c| c.webhooks.idenfy_signing_key = Some("short".to_owned().into()),
                "KEYHOST_IDENFY_SIGNING_KEY",
            ),
        ];
        for (tweak, name) in cases {
            let err = with(tweak).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }
}
