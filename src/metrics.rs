//! Prometheus metrics, served at `GET /metrics` on the internal listener.
//!
//! Counters only see what happened, never secrets: algorithms, kids (public), HTTP statuses and
//! issuance states. A 401 from AIR Kit for a kid keyhost holds is counted per kid: it is the sign
//! of a verifier that has not fetched the JWKS.
//!
//! Gauges show the state the alert rules of `deploy/prometheus/` watch: the key set as this
//! server sees it ([`KeyViewMetrics`], read at every scrape), the backlog of unfinished issuances
//! (measured every 30 s), row integrity, clock skew, `keyhost_activation_blocked{alg}` (set by
//! the planning server's rounds when `KEYHOST_PUBLIC_JWKS_URL` is set),
//! `keyhost_verifier_last_seen_seconds{verifier}` (each verifier's last JWKS fetch this server
//! saw, by user agent, set when its sightings are recorded).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::keys::{Alg, KeyState};
use crate::live::LiveKeys;

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

/// Labels: algorithm and key state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStateLabels {
    /// `ES256` or `RS256`.
    pub alg: String,
    /// `pending`, `active` or `retired`.
    pub state: String,
}

/// Label: a verifier of keyhost's tokens (a JWKS consumer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifierLabel {
    /// The verifier's name.
    pub verifier: String,
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

/// The JWKS requests answered, by outcome, resolved at start (no lock on the hot path).
#[derive(Clone, Debug, Default)]
pub struct JwksCounters {
    /// Answered 200 with the key set.
    pub ok: Counter,
    /// Answered 304: the caller's copy is current.
    pub not_modified: Counter,
    /// Answered 503: this server's copy is past `KEYHOST_JWKS_STALE_LIMIT`.
    pub stale: Counter,
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
    /// JWKS requests by outcome.
    pub jwks: JwksCounters,
    /// 1 while a pending key's activation is postponed because the public JWKS URL does not
    /// list it yet, per algorithm (0 otherwise). Nothing drives it yet: it stays 0.
    pub activation_blocked: Family<AlgLabel, Gauge>,
    /// Unix time of each known verifier's last JWKS fetch. Nothing feeds it yet: no series.
    pub verifier_last_seen: Family<VerifierLabel, Gauge>,
    /// Unfinished issuances (`queued`, `submitted`) in the store, at the last look.
    pub issuances_unfinished: Family<StateLabel, Gauge>,
    /// How long the next attempt or status poll of the most overdue unfinished issuance has been
    /// due, in seconds, at the last look (0: none is overdue).
    pub issuance_overdue: Gauge,
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
        let jwks_requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "jwks_requests",
            "JWKS requests by outcome (ok: 200, not_modified: 304, stale: 503 from a server cut \
             off from its shared database for too long)",
            jwks_requests.clone(),
        );
        let jwks_outcome = |outcome: &str| {
            jwks_requests
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        let jwks = JwksCounters {
            ok: jwks_outcome("ok"),
            not_modified: jwks_outcome("not_modified"),
            stale: jwks_outcome("stale"),
        };
        let activation_blocked = Family::<AlgLabel, Gauge>::default();
        registry.register(
            "activation_blocked",
            "1 while a pending key's activation is postponed because the public JWKS URL does not \
             list it yet",
            activation_blocked.clone(),
        );
        let verifier_last_seen = Family::<VerifierLabel, Gauge>::default();
        registry.register(
            "verifier_last_seen_seconds",
            "Unix time of each known verifier's last fetch of the JWKS",
            verifier_last_seen.clone(),
        );
        let issuances_unfinished = Family::<StateLabel, Gauge>::default();
        registry.register(
            "issuances_unfinished",
            "Issuances still being worked (queued: not yet accepted by AIR Kit; submitted: \
             accepted, not yet ONCHAIN), at the last look at the store",
            issuances_unfinished.clone(),
        );
        let issuance_overdue = Gauge::default();
        registry.register(
            "issuance_overdue_seconds",
            "How long the next attempt or status poll of the most overdue unfinished issuance has \
             been due, at the last look at the store (0: none is overdue; growing: nothing works \
             it)",
            issuance_overdue.clone(),
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
            jwks,
            activation_blocked,
            verifier_last_seen,
            issuances_unfinished,
            issuance_overdue,
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

    /// Exports this server's view of the key set, read at every scrape (see [`KeyViewMetrics`]),
    /// and starts `keyhost_activation_blocked` at 0 for each enabled algorithm.
    pub fn register_key_view(&mut self, view: KeyViewMetrics) {
        for alg in &view.algorithms {
            let _ = self.activation_blocked.get_or_create(&alg_label(*alg));
        }
        self.registry.register_collector(Box::new(view));
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

/// This server's view of the key set, as gauges computed at every scrape:
///
/// - `keyhost_keys_published{alg,state}`: keys the JWKS publishes, per algorithm (each enabled one,
///   and any other with a published key) and state (`pending`, `active`, `retired`);
/// - `keyhost_key_rotation_timestamp_seconds{alg}`: when the active key is due to be replaced
///   under automatic rotation (its successor is generated `publish_lead` before); absent without
///   automatic rotation or an active key;
/// - `keyhost_key_publish_lead_seconds`, `keyhost_jwks_max_age_seconds`: the policy, for rules
///   to compare with;
/// - `keyhost_signing_key{alg}`: 1 when this server holds an active key of the enabled algorithm
///   (what `/readyz` asks), else 0;
/// - `keyhost_signing_fresh`: 1 when this server's view of the key set is recent enough to sign
///   with (within the signing lease; always on a store of its own), else 0;
/// - `keyhost_key_view_age_seconds`: how old that view is, on a store shared with other servers
///   only (on a store of its own the view cannot fall behind).
#[derive(Debug)]
pub struct KeyViewMetrics {
    live: Arc<LiveKeys>,
    algorithms: Vec<Alg>,
    publish_lead: i64,
    jwks_max_age: i64,
}

impl KeyViewMetrics {
    /// The gauges of `live`, for the enabled `algorithms`, under the given policy (seconds).
    pub fn new(
        live: Arc<LiveKeys>,
        algorithms: Vec<Alg>,
        publish_lead: i64,
        jwks_max_age: i64,
    ) -> Self {
        Self {
            live,
            algorithms,
            publish_lead,
            jwks_max_age,
        }
    }
}

/// The key states the JWKS publishes.
const PUBLISHED_STATES: [KeyState; 3] = [KeyState::Pending, KeyState::Active, KeyState::Retired];

fn alg_label(alg: Alg) -> AlgLabel {
    AlgLabel {
        alg: alg.as_str().to_owned(),
    }
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for KeyViewMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let summary = self.live.summary();
        let mut algs: Vec<Alg> = self.algorithms.clone();
        algs.extend(summary.published.keys().map(|(alg, _)| *alg));
        algs.sort();
        algs.dedup();

        let mut family = encoder.encode_descriptor(
            "keys_published",
            "Keys the JWKS publishes, by algorithm and state (pending: published, not yet signing)",
            None,
            MetricType::Gauge,
        )?;
        for &alg in &algs {
            for state in PUBLISHED_STATES {
                let count = summary.published.get(&(alg, state)).copied().unwrap_or(0);
                let labels = KeyStateLabels {
                    alg: alg.as_str().to_owned(),
                    state: state.as_str().to_owned(),
                };
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "key_rotation_timestamp_seconds",
            "Unix time at which the active key is due to be replaced under automatic rotation (its \
             successor is published publish_lead before)",
            None,
            MetricType::Gauge,
        )?;
        for (&alg, &due) in &summary.rotation_due {
            ConstGauge::new(due).encode(family.encode_family(&alg_label(alg))?)?;
        }

        gauge(
            &mut encoder,
            "key_publish_lead_seconds",
            "How long a new key is published before it may sign (KEYHOST_PUBLISH_LEAD)",
            self.publish_lead,
        )?;
        gauge(
            &mut encoder,
            "jwks_max_age_seconds",
            "How long verifiers may cache the JWKS (KEYHOST_JWKS_MAX_AGE)",
            self.jwks_max_age,
        )?;

        let signers = self.live.signers();
        let mut family = encoder.encode_descriptor(
            "signing_key",
            "1 when this server holds an active key of the enabled algorithm, else 0",
            None,
            MetricType::Gauge,
        )?;
        for &alg in &self.algorithms {
            let held = i64::from(signers.active.contains_key(&alg));
            ConstGauge::new(held).encode(family.encode_family(&alg_label(alg))?)?;
        }

        gauge(
            &mut encoder,
            "signing_fresh",
            "1 when this server's view of the key set is recent enough to sign with (read within \
             KEYHOST_SIGNING_LEASE), else 0: it signs nothing and is not ready",
            i64::from(self.live.may_sign().is_ok()),
        )?;
        if self.live.signing_lease().is_some() {
            gauge(
                &mut encoder,
                "key_view_age_seconds",
                "Seconds since this server last read the key set from the shared store",
                self.live.age().as_secs_f64(),
            )?;
        }
        Ok(())
    }
}
