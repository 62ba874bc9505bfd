//! The alert rules and the Grafana dashboard of `deploy/prometheus/`, held to the server: every
//! metric they read is one that keyhost exports, each alert carries its severity, its text and
//! its runbook, and the gauges they watch follow the key set and the issuances.
//!
//! promtool checks the rules' syntax and their behaviour on made-up series
//! (`deploy/prometheus/keyhost.rules.test.yml`, run by `.ci/run`); these tests check what
//! promtool cannot know: the names of keyhost's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keyhost::config::Config;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::helpers::{TestApp, on_postgres, spawn_app, spawn_app_with};
use crate::issuance::{issuance, issue_for, spawn_issuing};

const RULES: &str = include_str!("../../deploy/prometheus/keyhost.rules.yml");
const DASHBOARD: &str = include_str!("../../deploy/prometheus/grafana-dashboard.json");
const RUNBOOKS: &str = include_str!("../../deploy/prometheus/README.md");

/// Metrics only a server sharing its store with other replicas (PostgreSQL) exports.
const SHARED_STORE_ONLY: &[&str] = &["keyhost_key_view_age_seconds"];

/// A rules file, as far as these tests read it.
#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Rule {
    fn name(&self) -> &str {
        self.alert
            .as_deref()
            .or(self.record.as_deref())
            .unwrap_or("(unnamed)")
    }
}

fn rules(text: &str) -> RuleFile {
    serde_norway::from_str(text).expect("the rules file is YAML of Prometheus' rule format")
}

/// Every expression of the rules, each with the name of its rule.
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    rules(text)
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .map(|r| (r.name().to_owned(), r.expr.clone()))
        .collect()
}

/// Every query of the dashboard, each with the title of its panel (panels inside collapsed rows
/// too).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                out.push((title.to_owned(), expr.to_owned()));
            }
            if let Some(inner) = panel["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// The keyhost metrics a PromQL expression reads: every `keyhost_…` name outside string literals
/// (label values, regular expressions). Recording rules (`keyhost:…`) are not metrics of the
/// server and are left out.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut code = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                code.push(' ');
            }
            None => code.push(c),
        }
    }
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("keyhost_") {
        let starts_a_name = rest[..at].chars().next_back().is_none_or(|c| !is_name(c));
        let len = rest[at..]
            .find(|c: char| !is_name(c))
            .unwrap_or(rest.len() - at);
        let name = &rest[at..at + len];
        if starts_a_name && !name.contains(':') {
            names.insert(name.to_owned());
        }
        rest = &rest[at + len..];
    }
    names
}

/// The names of the samples of an exposition (`keyhost_tokens_minted_total`, not the family's
/// `keyhost_tokens_minted`: a counter is queried by its samples' name).
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// What the `sources` (each a name and an expression) read that `exported` lacks, as
/// `metric (in name)`.
fn unknown_metrics(sources: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    sources
        .iter()
        .flat_map(|(name, expr)| {
            referenced_metrics(expr)
                .into_iter()
                .filter(|m| !exported.contains(m))
                .map(move |m| format!("{m} (in {name})"))
        })
        .collect()
}

/// The value of the sample `sample` (name and labels, as exposed), if any.
fn sample(exposition: &str, sample: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_metric_names_of_an_expression_are_found_and_a_wrong_one_is_caught() {
    assert_eq!(
        referenced_metrics(
            r#"max by (job, alg) (keyhost_key_rotation_timestamp_seconds{job="keyhost_x"}) - time()
               < on (job) group_left () keyhost:verifier_silence_limit_seconds
               unless keyhost_keys_published{state=~"pending|\"keyhost_y\""} > 0
               or absent(up{job='keyhost_z'})"#
        ),
        BTreeSet::from([
            "keyhost_key_rotation_timestamp_seconds".to_owned(),
            "keyhost_keys_published".to_owned(),
        ])
    );
    let exported = exported_metrics(
        "# HELP keyhost_tokens_minted Partner JWTs minted.\n\
         # TYPE keyhost_tokens_minted counter\n\
         keyhost_tokens_minted_total{alg=\"ES256\"} 0\n\
         keyhost_signing_fresh 1\n\
         # EOF\n",
    );
    let sources = |expr: &str| vec![("Rule".to_owned(), expr.to_owned())];
    assert!(unknown_metrics(&sources("keyhost_signing_fresh == 0"), &exported).is_empty());
    assert_eq!(
        unknown_metrics(&sources("keyhost_signng_fresh == 0"), &exported),
        ["keyhost_signng_fresh (in Rule)"],
        "a typo"
    );
    assert_eq!(
        unknown_metrics(&sources("rate(keyhost_tokens_minted[5m])"), &exported),
        ["keyhost_tokens_minted (in Rule)"],
        "a counter without its _total"
    );
    // The real rules, against a server that lost one metric.
    let mut fewer = exported_metrics("keyhost_signing_fresh 1\n");
    fewer.insert("keyhost_keys_published".to_owned());
    let missing = unknown_metrics(&rule_exprs(RULES), &fewer);
    assert!(
        missing
            .iter()
            .any(|m| m == "keyhost_signing_key (in KeyhostNoSigningKey)"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn every_metric_the_alert_rules_and_the_dashboard_read_is_one_keyhost_exports() {
    // A server that issues through AIR Kit, and AIR Kit rejecting its tokens (another scope).
    let (app, _upstream, key) =
        spawn_issuing(|e| e.accept_scopes = vec!["issue on-behalf".into()], |_| {}).await;
    // Families with labels have samples only once something happened: make it happen.
    let (status, body) = issue_for(&app, &key, "alerts@example.com").await;
    assert_eq!(status, 502, "AIR Kit answered 401: {body}");
    let forged = app
        .http
        .post(format!("{}/webhooks/idenfy", app.internal))
        .header("Idenfy-Signature", "00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let wrong = app
        .http
        .get(format!("{}/admin/keys", app.internal))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    app.jwks().await;
    // The JWKS fetch above is a verifier sighting: recorded (and its gauge set) by the round.
    app.settle().await;
    // What this server has no occasion for: a TLS listener counts its looks at the certificate
    // files from the start.
    let _ = app.state.metrics.tls_reload();

    let exposition = app.metrics().await;
    let mut exported = exported_metrics(&exposition);
    assert!(
        exported.contains("keyhost_airkit_unauthorized_total"),
        "{exposition}"
    );
    for name in SHARED_STORE_ONLY {
        assert_eq!(
            exported.contains(*name),
            on_postgres(),
            "{name} is exported on a shared store only: {exposition}"
        );
        exported.insert((*name).to_owned());
    }

    let missing = unknown_metrics(&rule_exprs(RULES), &exported);
    assert!(
        missing.is_empty(),
        "the rules read metrics keyhost does not export: {missing:?}\n{exposition}"
    );
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let missing = unknown_metrics(&dashboard_exprs(&dashboard), &exported);
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics keyhost does not export: {missing:?}\n{exposition}"
    );
}

/// The anchors GitHub gives the headings of a Markdown text.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_says_how_severe_it_is_what_happened_and_where_its_runbook_is() {
    let file = rules(RULES);
    let runbooks = anchors(RUNBOOKS);
    let mut names = BTreeSet::new();
    let mut alerts = 0;
    for group in &file.groups {
        assert!(!group.rules.is_empty(), "group {} is empty", group.name);
        for rule in &group.rules {
            assert!(
                rule.alert.is_some() != rule.record.is_some(),
                "{}: a rule is an alert or a recording",
                rule.name()
            );
            assert!(
                names.insert(rule.name().to_owned()),
                "{} twice",
                rule.name()
            );
            let Some(alert) = &rule.alert else {
                continue;
            };
            alerts += 1;
            assert!(alert.starts_with("Keyhost"), "{alert}");
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning")),
                "{alert}: severity {severity:?}"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule.annotations
                        .get(annotation)
                        .is_some_and(|t| t.trim().len() > 10),
                    "{alert}: no {annotation}"
                );
            }
            let runbook = rule.annotations.get("runbook_url").map(String::as_str);
            let anchor = runbook
                .and_then(|r| r.strip_prefix("deploy/prometheus/README.md#"))
                .unwrap_or_else(|| panic!("{alert}: runbook_url {runbook:?}"));
            assert_eq!(anchor, alert.to_lowercase(), "{alert}: its own section");
            assert!(
                runbooks.contains(anchor),
                "{alert}: deploy/prometheus/README.md has no section #{anchor}"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_prometheus_input() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    assert!(
        dashboard["__inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the Prometheus data source is an input, chosen at import"
    );
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "id twice: {title}"
        );
        let pos = &panel["gridPos"];
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{title} overflows the grid"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                !target["expr"].as_str().unwrap().trim().is_empty(),
                "{title}"
            );
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // Every metric an alert reads is on the dashboard too.
    let on_dashboard: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|(_, expr)| referenced_metrics(expr))
        .collect();
    let alerted: BTreeSet<String> = rule_exprs(RULES)
        .iter()
        .flat_map(|(_, expr)| referenced_metrics(expr))
        .collect();
    let absent: Vec<&String> = alerted.difference(&on_dashboard).collect();
    assert!(absent.is_empty(), "alerted on, not shown: {absent:?}");
}

async fn metric_value(app: &TestApp, name: &str) -> f64 {
    let exposition = app.metrics().await;
    sample(&exposition, name).unwrap_or_else(|| panic!("no {name}:\n{exposition}"))
}

#[tokio::test]
async fn the_key_gauges_follow_rotation_and_revocation() {
    let app = spawn_app().await;
    let defaults = Config::default();
    let period = defaults.keys.rotation_period.as_secs() as f64;
    let es256 = |m: &str| format!("{m}{{alg=\"ES256\"}}");
    let published =
        |state: &str| format!("keyhost_keys_published{{alg=\"ES256\",state=\"{state}\"}}");

    assert_eq!(metric_value(&app, &published("active")).await, 1.0);
    assert_eq!(metric_value(&app, &published("pending")).await, 0.0);
    // Keys of a new store sign at once: the rotation is due one period after the start.
    assert_eq!(
        metric_value(&app, &es256("keyhost_key_rotation_timestamp_seconds")).await,
        app.now() as f64 + period
    );
    assert_eq!(
        metric_value(&app, "keyhost_key_publish_lead_seconds").await,
        defaults.keys.publish_lead.as_secs() as f64
    );
    assert_eq!(
        metric_value(&app, "keyhost_jwks_max_age_seconds").await,
        defaults.keys.jwks_max_age.as_secs() as f64
    );
    assert_eq!(metric_value(&app, &es256("keyhost_signing_key")).await, 1.0);
    assert_eq!(metric_value(&app, "keyhost_signing_fresh").await, 1.0);
    assert_eq!(
        metric_value(&app, &es256("keyhost_activation_blocked")).await,
        0.0,
        "declared, not driven yet"
    );

    // A successor is published.
    app.rotate("ES256", false).await;
    assert_eq!(metric_value(&app, &published("pending")).await, 1.0);
    // The active key is revoked: nothing signs ES256 until the successor has had its lead.
    let active = app
        .keys()
        .await
        .into_iter()
        .find(|k| k["alg"] == "ES256" && k["state"] == "active")
        .unwrap();
    let kid = active["kid"].as_str().unwrap();
    let res = app
        .admin_post(&format!("/admin/keys/{kid}/revoke"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(metric_value(&app, &es256("keyhost_signing_key")).await, 0.0);
    assert_eq!(metric_value(&app, &published("active")).await, 0.0);
    let exposition = app.metrics().await;
    assert_eq!(
        sample(
            &exposition,
            &es256("keyhost_key_rotation_timestamp_seconds")
        ),
        None,
        "no active key, no rotation: {exposition}"
    );
    assert_eq!(
        sample(&exposition, "keyhost_signing_key{alg=\"RS256\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn without_automatic_rotation_no_rotation_is_due() {
    let app = spawn_app_with(|c| c.keys.auto_rotate = false).await;
    let exposition = app.metrics().await;
    assert!(
        !exposition.contains("keyhost_key_rotation_timestamp_seconds{"),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, "keyhost_signing_key{alg=\"ES256\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn jwks_requests_are_counted_by_outcome() {
    let app = spawn_app().await;
    let ok = "keyhost_jwks_requests_total{outcome=\"ok\"}";
    let not_modified = "keyhost_jwks_requests_total{outcome=\"not_modified\"}";
    assert_eq!(metric_value(&app, ok).await, 0.0);
    let res = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.public))
        .send()
        .await
        .unwrap();
    let etag = res.headers()["etag"].clone();
    let res = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.public))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(metric_value(&app, ok).await, 1.0);
    assert_eq!(metric_value(&app, not_modified).await, 1.0);
    assert_eq!(
        metric_value(&app, "keyhost_jwks_requests_total{outcome=\"stale\"}").await,
        0.0
    );
}

#[tokio::test]
async fn the_backlog_gauges_show_an_issuance_whose_retry_is_overdue() {
    // AIR Kit fails every request; the retry comes an hour later at the earliest.
    let (app, _upstream, key) = spawn_issuing(
        |e| e.fail_rate_500 = 1.0,
        |c| {
            c.airkit.backoff = Duration::from_secs(3600);
            c.airkit.backoff_max = Duration::from_secs(3600);
            c.airkit.wait = Duration::from_millis(100);
        },
    )
    .await;
    let (status, body) = issue_for(&app, &key, "backlog@example.com").await;
    assert_eq!(status, 202, "{body}");
    let id = body["issuanceId"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while issuance(&app, &id).await["attempts"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The attempt is recorded before its retry is slept for: the record is the truth.
    let backlog = app.state.issuance.measure_backlog().await.unwrap();
    assert_eq!((backlog.queued, backlog.submitted), (1, 0), "{backlog:?}");
    assert_eq!(backlog.overdue, 0, "the retry is not due yet");

    // The wall clock moves two hours on while the worker sleeps (on the monotonic clock, which
    // did not move): the retry is overdue by one to one and a half hours (the jitter).
    app.clock.jump(7200);
    let backlog = app.state.issuance.measure_backlog().await.unwrap();
    assert!((3600..=5400).contains(&backlog.overdue), "{backlog:?}");
    let exposition = app.metrics().await;
    assert_eq!(
        sample(&exposition, "keyhost_issuance_overdue_seconds"),
        Some(backlog.overdue as f64),
        "{exposition}"
    );
    assert_eq!(
        sample(
            &exposition,
            "keyhost_issuances_unfinished{state=\"queued\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&exposition, "keyhost_issuances_total{state=\"stalled\"}"),
        Some(0.0),
        "every state's counter exists from the start"
    );
}
