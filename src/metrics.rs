//! Prometheus metrics, served at `GET /metrics` on the internal listener.
//!
//! Counters only see what happened, never secrets: algorithms, kids (public), HTTP statuses and
//! issuance states. A 401 from AIR Kit for a kid keyhost holds is counted per kid: it is the sign
//! of a verifier that has not fetched the JWKS.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: algorithm.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlgLabel {
    /// `ES256` or `RS256`.
    pub alg: String,
}

/// Labels: AIR Kit endpoint and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `issue` or `status`.
    pub endpoint: String,
    /// HTTP status, or `timeout` / `connect` / `error`.
    pub outcome: String,
}

/// Label: key id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KidLabel {
    /// The kid AIR Kit rejected.
    pub kid: String,
}

/// Label: issuance state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// State entered.
    pub state: String,
}

/// Label: webhook provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// `idenfy` or `kyc-complete`.
    pub provider: String,
}

/// Label: credential kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `admin` or `client`.
    pub kind: String,
}

/// Label: listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `public` or `internal`.
    pub listener: String,
}

/// Label: outcome of a check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What the check found.
    pub outcome: String,
}

/// The TLS certificate reloader's counters, one per outcome of a look at the certificate files:
/// they show that it looks, and what it found.
#[derive(Clone, Debug, Default)]
pub struct TlsReloadCounters {
    /// The files had not changed.
    pub unchanged: Counter,
    /// The files had changed and the new certificate is served.
    pub reloaded: Counter,
    /// The files had changed but could not be used; the current certificate stays.
    pub failed: Counter,
}

/// The connection counters of one listener.
#[derive(Clone, Debug)]
pub struct ConnectionCounters {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed to make room for a new one.
    pub shed: Counter,
    /// Connections refused because every open one was busy.
    pub refused: Counter,
}

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    /// Tokens minted through `POST /v1/tokens` and for AIR Kit calls.
    pub tokens_minted: Family<AlgLabel, Counter>,
    minted_es256: Counter,
    minted_rs256: Counter,
    /// AIR Kit answers by endpoint and status.
    pub airkit_responses: Family<UpstreamLabels, Counter>,
    /// AIR Kit 401s by the kid of the rejected token.
    pub airkit_unauthorized: Family<KidLabel, Counter>,
    /// Issuances entering each state.
    pub issuances: Family<StateLabel, Counter>,
    /// Webhook deliveries refused for their signature.
    pub webhook_rejected: Family<ProviderLabel, Counter>,
    /// Failed authentications by kind (`admin`, `client`).
    pub auth_failures: Family<KindLabel, Counter>,
    /// Requests answered 429 because their address spent its failed-authentication budget.
    pub auth_throttled: Counter,
    /// Open connections per listener.
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// Connections shed per listener.
    pub connections_shed: Family<ListenerLabel, Counter>,
    /// Connections refused per listener.
    pub connections_refused: Family<ListenerLabel, Counter>,
    /// Looks at the TLS certificate files, by outcome.
    pub tls_certificate_checks: Family<OutcomeLabel, Counter>,
    /// Minute of the last rejection written to the audit trail, per provider.
    rejection_audited: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyhost");
        let tokens_minted = Family::<AlgLabel, Counter>::default();
        registry.register(
            "tokens_minted",
            "Partner JWTs minted",
            tokens_minted.clone(),
        );
        let airkit_responses = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "airkit_responses",
            "AIR Kit answers by endpoint and outcome",
            airkit_responses.clone(),
        );
        let airkit_unauthorized = Family::<KidLabel, Counter>::default();
        registry.register(
            "airkit_unauthorized",
            "AIR Kit 401 answers by the kid of the rejected token (a JWKS the verifier has not \
             fetched?)",
            airkit_unauthorized.clone(),
        );
        let issuances = Family::<StateLabel, Counter>::default();
        registry.register(
            "issuances",
            "Issuances entering each state",
            issuances.clone(),
        );
        let webhook_rejected = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "webhook_rejected",
            "Webhook deliveries refused for a missing or wrong signature",
            webhook_rejected.clone(),
        );
        let auth_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests with a wrong admin token or API key",
            auth_failures.clone(),
        );
        let auth_throttled = Counter::default();
        registry.register(
            "auth_throttled",
            "Requests refused because their address failed to authenticate too often",
            auth_throttled.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, per listener",
            connections_open.clone(),
        );
        let connections_shed = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_shed",
            "Connections closed to make room for a new one on a full listener (silent or idle \
             ones)",
            connections_shed.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused because every open one was in the middle of a request",
            connections_refused.clone(),
        );
        let tls_certificate_checks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "tls_certificate_checks",
            "Looks at the TLS certificate files for a renewal, by outcome (unchanged, reloaded, \
             failed: the current certificate stays)",
            tls_certificate_checks.clone(),
        );
        let label = |alg: &str| AlgLabel {
            alg: alg.to_owned(),
        };
        let minted_es256 = tokens_minted.get_or_create(&label("ES256")).clone();
        let minted_rs256 = tokens_minted.get_or_create(&label("RS256")).clone();
        Self {
            auth_failures,
            auth_throttled,
            connections_open,
            connections_shed,
            connections_refused,
            tls_certificate_checks,
            minted_es256,
            minted_rs256,
            webhook_rejected,
            rejection_audited: Default::default(),
            registry,
            tokens_minted,
            airkit_responses,
            airkit_unauthorized,
            issuances,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts a refused webhook; true for the first refusal of `provider` in the minute `now`
    /// falls in, which alone gets an audit row (so a flood of forged deliveries cannot flood the
    /// database).
    pub fn webhook_rejected(&self, provider: &str, now: i64) -> bool {
        self.webhook_rejected
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .inc();
        let minute = now.div_euclid(60);
        let mut audited = self
            .rejection_audited
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        audited.insert(provider.to_owned(), minute) != Some(minute)
    }

    /// Counts a failed authentication of `kind`.
    pub fn auth_failed(&self, kind: &str) {
        self.auth_failures
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Exports the integrity gauges as `keyhost_integrity_failures{table}`.
    pub fn register_integrity(&mut self, gauges: &crate::integrity::IntegrityGauges) {
        self.registry.register(
            "integrity_failures",
            "Rows failing their integrity check (written by something without the master key), \
             per table",
            gauges.family().clone(),
        );
    }

    /// Exports keyhost's clock minus AIR Kit's as `keyhost_clock_skew_seconds`.
    pub fn register_clock_skew(&mut self, gauge: &Gauge) {
        self.registry.register(
            "clock_skew_seconds",
            "keyhost's clock minus AIR Kit's (from the Date of its answers); positive: keyhost is \
             ahead",
            gauge.clone(),
        );
    }

    /// The connection counters of the listener `name`.
    pub fn connections(&self, name: &str) -> ConnectionCounters {
        let label = ListenerLabel {
            listener: name.to_owned(),
        };
        ConnectionCounters {
            open: self.connections_open.get_or_create(&label).clone(),
            shed: self.connections_shed.get_or_create(&label).clone(),
            refused: self.connections_refused.get_or_create(&label).clone(),
        }
    }

    /// The counters of the TLS certificate reloader (created at once, so that `/metrics` shows
    /// them from the start).
    pub fn tls_reload(&self) -> TlsReloadCounters {
        let counter = |outcome: &str| {
            self.tls_certificate_checks
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        TlsReloadCounters {
            unchanged: counter("unchanged"),
            reloaded: counter("reloaded"),
            failed: counter("failed"),
        }
    }

    /// Counts a minted token: an atomic increment of a counter resolved at start (no lock, no
    /// allocation on the signing path).
    pub fn minted(&self, alg: crate::keys::types::Alg) {
        match alg {
            crate::keys::types::Alg::ES256 => self.minted_es256.inc(),
            crate::keys::types::Alg::RS256 => self.minted_rs256.inc(),
        };
    }
}
