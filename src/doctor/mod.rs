//! `keyhost doctor`: checks a JWKS URL, and optionally a Partner JWT, against every cause in AIR
//! Kit's troubleshooting lists, and names the fix for each failure.
//!
//! It works on any partner's setup, keyhost or not: it only fetches the public JWKS and reads the
//! token, verifying with jsonwebtoken (never keyhost's signer), as a relying party would.
//!
//! The fetch is bounded, because the URL may point anywhere: it follows no redirect (a 3xx is a
//! failing finding naming the hop and its `Location`, and the target is never requested, so the
//! verdicts describe the URL given and a redirect cannot steer the doctor to another host or
//! port), and it reads at most 1 MiB of body, so an endless or huge answer ends the check at
//! once instead of filling memory until the timeout.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::clock::{Clock, SystemClock, UnixTime};
use crate::http_client::{self, describe};
use crate::keys::PublicJwk;
use crate::partner_jwt::{self, KeySet, Rules, Step, TokenError, UnverifiedToken};

/// Longest token lifetime AIR Kit's own tools accept.
const AIR_MAX_TTL: i64 = 15 * 60;
/// Clock difference tolerated for `iat`.
const SKEW: i64 = 60;
/// Largest JWKS body read; a real JWKS is a few kilobytes.
const MAX_JWKS_BYTES: usize = http_client::MIB;
/// Longest `Location` quoted in a finding; the rest is cut.
const MAX_LOCATION_CHARS: usize = 256;

/// Flags of `keyhost doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The JWKS URL registered in the AIR Kit dashboard.
    #[arg(long)]
    pub jwks_url: String,
    /// A Partner JWT to check against it.
    #[arg(long)]
    pub token: Option<String>,
    /// The partner id the token must carry.
    #[arg(long)]
    pub partner_id: Option<String>,
    /// The scope the token must carry.
    #[arg(long, default_value = "issue")]
    pub scope: String,
    /// An extra trusted root CA (PEM) for an HTTPS JWKS with a private CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Wait until the URL lists this kid (a key just rotated in, seen through a CDN), looking
    /// every 5 s; fails after --watch-timeout.
    #[arg(long, value_name = "KID")]
    pub watch: Option<String>,
    /// How long --watch waits, e.g. `10m`.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub watch_timeout: Duration,
}

/// How often `--watch` looks.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, but deserves attention.
    Warn,
    /// AIR Kit will reject this.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// How to fix it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<&'static str>,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn push(&mut self, check: &str, verdict: Verdict, detail: String, fix: Option<&'static str>) {
        self.0.push(Finding {
            check: check.to_owned(),
            verdict,
            detail,
            fix: if verdict == Verdict::Pass { None } else { fix },
        });
    }
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Verdict::Pass, detail.into(), None);
    }
    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: &'static str) {
        self.push(check, Verdict::Warn, detail.into(), Some(fix));
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: &'static str) {
        self.push(check, Verdict::Fail, detail.into(), Some(fix));
    }
}

const FIX_UNREACHABLE: &str = "your JWKS URL must be publicly accessible over HTTPS; test it with \
    curl https://your-domain/.well-known/jwks.json (it should return a valid JSON document) and \
    make sure no firewall or IP allowlist blocks AIR Kit's servers";
const FIX_KID: &str = "the kid in your JWT header must match a key in the JWKS; if you recently \
    rotated keys, publish the new key to your JWKS endpoint before using it in JWTs";
const FIX_ALG: &str = "the algorithm (RS256 or ES256) must match the key type in your JWKS (RSA \
    keys sign RS256, EC P-256 keys sign ES256)";
const FIX_SIGNATURE: &str =
    "sign with the private key whose public key the JWKS lists under this kid";
const FIX_EXPIRED: &str = "generate a new JWT with a fresh exp (recommended: 5 minutes from now) \
    and keep the server clock synchronised (NTP)";
const FIX_TYP: &str = "for Issue on Behalf the JWT header must include typ: \"JWT\"";
const FIX_CLAIMS: &str = "the JWT must contain partnerId, scope (\"issue\") and email";
const FIX_REDIRECT: &str = "register the URL that serves the JWKS itself (answering 200 with the \
    JSON) in the AIR Kit dashboard, or serve the JWKS at the registered URL without a redirect: \
    AIR Kit may not follow redirects";
const FIX_SIZE: &str = "serve only the public keys at the JWKS URL (a JWKS of a few keys is a few \
    kilobytes); check that the URL points at the JWKS and not at a large file or a stream";
const FIX_PRIVATE: &str = "your JWKS publishes private key material: anyone can sign as you. \
    Build the JWKS from the public key only, then rotate: revoke these keys and publish new ones";

const FIX_CERTIFICATE: &str = "AIR Kit trusts certificates from public CAs only: serve the JWKS \
    with one valid for this host name (e.g. Let's Encrypt, as the Caddy setup in deploy/ does). \
    If this is a test setup with your own CA, pass its certificate with --ca-file ca.pem to check \
    the rest";

/// Whether a request failed because the server's certificate was refused (unknown issuer,
/// expired, another name). rustls's error sits inside `io::Error`s, whose `source` skips the
/// error they wrap, so an I/O error is opened rather than asked for its source.
fn untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
            return true;
        }
        cause = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// Runs every check; returns the findings. With `--watch KID`, first waits (looking every few
/// seconds, at most `--watch-timeout`) until the URL lists the kid: the findings are those of the
/// last look, with a `watch` finding that says whether and after how long it appeared.
pub async fn run(args: &DoctorArgs) -> anyhow::Result<Vec<Finding>> {
    let Some(kid) = &args.watch else {
        return run_once(args).await;
    };
    let started = tokio::time::Instant::now();
    loop {
        let mut report = Report::default();
        let jwks = check_jwks(args, &mut report).await?;
        let waited = started.elapsed();
        if jwks.as_ref().is_some_and(|k| k.get(kid).is_some()) {
            report.pass(
                "watch",
                format!("{kid} is listed (after {} s)", waited.as_secs()),
            );
            if let (Some(token), Some(jwks)) = (&args.token, &jwks) {
                check_token(args, token.trim(), jwks, &mut report);
            }
            return Ok(report.0);
        }
        if waited + WATCH_INTERVAL > args.watch_timeout {
            report.fail(
                "watch",
                format!(
                    "{kid} is still not listed after {} s",
                    args.watch_timeout.as_secs()
                ),
                FIX_WATCH,
            );
            return Ok(report.0);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

const FIX_WATCH: &str = "something between keyhost and AIR Kit serves an old key set: a CDN or \
    proxy caching the JWKS longer than its Cache-Control max-age, a route to another server, or \
    DNS pointing elsewhere; keyhost's own JWKS (its public listener) should list the kid already \
    (GET /admin/keys), and with KEYHOST_PUBLIC_JWKS_URL set keyhost postpones the activation \
    until this URL lists it";

async fn run_once(args: &DoctorArgs) -> anyhow::Result<Vec<Finding>> {
    let mut report = Report::default();
    let jwks = check_jwks(args, &mut report).await?;
    if let (Some(token), Some(jwks)) = (&args.token, &jwks) {
        check_token(args, token.trim(), jwks, &mut report);
    } else if args.token.is_some() {
        report.warn(
            "token",
            "not checked: the JWKS could not be read",
            FIX_UNREACHABLE,
        );
    }
    Ok(report.0)
}

async fn check_jwks(args: &DoctorArgs, report: &mut Report) -> anyhow::Result<Option<KeySet>> {
    let url = reqwest::Url::parse(&args.jwks_url)
        .map_err(|e| anyhow::anyhow!("--jwks-url is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    // Redirects are not followed (below), so the URL given is the only URL ever requested and
    // this verdict is about the URL that actually answers.
    match url.scheme() {
        "https" => report.pass("jwks.https", format!("{url} is served over HTTPS")),
        _ if loopback => report.warn(
            "jwks.https",
            format!("{url}: plain HTTP on loopback, fine for local tests, not for AIR Kit"),
            FIX_UNREACHABLE,
        ),
        _ => report.fail(
            "jwks.https",
            format!("{url} is not served over HTTPS"),
            FIX_UNREACHABLE,
        ),
    }
    // No redirects: following one would check (and report as HTTPS) a URL other than the one
    // given, could take the doctor to a plain-HTTP or internal address, and AIR Kit may not
    // follow it anyway.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    if let Some(path) = &args.ca_file {
        builder = http_client::trusting_ca_file(builder, path, "--ca-file")?;
    }
    let client = builder.build()?;
    let res = match client.get(url.clone()).send().await {
        Ok(res) => res,
        Err(e) if untrusted_certificate(&e) => {
            report.fail(
                "jwks.certificate",
                format!("the server's certificate is not trusted: {}", describe(&e)),
                FIX_CERTIFICATE,
            );
            return Ok(None);
        }
        Err(e) => {
            report.fail(
                "jwks.reachable",
                format!("request failed: {}", describe(&e)),
                FIX_UNREACHABLE,
            );
            return Ok(None);
        }
    };
    if res.status().is_redirection() {
        let chain = redirect_chain(&url, res.status(), res.headers());
        report.fail("jwks.redirect", chain, FIX_REDIRECT);
        return Ok(None);
    }
    if !res.status().is_success() {
        report.fail(
            "jwks.reachable",
            format!("answered HTTP {}", res.status()),
            FIX_UNREACHABLE,
        );
        return Ok(None);
    }
    report.pass("jwks.reachable", format!("answered HTTP {}", res.status()));
    let headers = res.headers().clone();
    check_clock(&headers, report);
    match headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        Some(cc) if cc.contains("max-age") => {
            report.pass("jwks.cache", format!("Cache-Control: {cc}"))
        }
        other => report.warn(
            "jwks.cache",
            format!("Cache-Control: {}", other.unwrap_or("absent")),
            "send Cache-Control: public, max-age=<seconds> and publish new keys longer than that \
             before they sign",
        ),
    }
    let bytes = match http_client::read_capped(res, MAX_JWKS_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_too_large() => {
            report.fail(
                "jwks.size",
                format!("{e} (a JWKS is a few kilobytes)"),
                FIX_SIZE,
            );
            return Ok(None);
        }
        Err(e) => {
            report.fail("jwks.json", describe(&e), FIX_UNREACHABLE);
            return Ok(None);
        }
    };
    Ok(check_jwks_document(&bytes, report))
}

/// The checks of a JWKS document (the body the URL answered): JSON with a `keys` array, and
/// each key public, named once, and of an algorithm that fits its type. Its keys, if it has a
/// `keys` array.
fn check_jwks_document(bytes: &[u8], report: &mut Report) -> Option<KeySet> {
    let body: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            report.fail("jwks.json", format!("not JSON: {e}"), FIX_UNREACHABLE);
            return None;
        }
    };
    let Some(keys) = body.get("keys").and_then(Value::as_array) else {
        report.fail("jwks.json", "no \"keys\" array", FIX_UNREACHABLE);
        return None;
    };
    report.pass("jwks.json", format!("{} key(s)", keys.len()));
    if keys.is_empty() {
        report.fail("jwks.keys", "the key set is empty", FIX_KID);
    }
    let mut kids = HashSet::new();
    for key in keys {
        let kid = key.get("kid").and_then(Value::as_str).unwrap_or("");
        let label = format!("jwks.key[{}]", if kid.is_empty() { "?" } else { kid });
        let private: Vec<&str> = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
            .into_iter()
            .filter(|m| key.get(*m).is_some())
            .collect();
        if !private.is_empty() {
            report.fail(
                &label,
                format!("publishes private members {}", private.join(", ")),
                FIX_PRIVATE,
            );
            continue;
        }
        if kid.is_empty() {
            report.fail(&label, "has no kid", FIX_KID);
            continue;
        }
        if !kids.insert(kid.to_owned()) {
            report.fail(&label, "kid appears twice", FIX_KID);
        }
        let public = serde_json::from_value::<PublicJwk>(strip(key));
        let alg = key.get("alg").and_then(Value::as_str);
        match public {
            Err(e) => report.fail(&label, format!("not an RSA or EC public key: {e}"), FIX_ALG),
            Ok(jwk) => match alg {
                Some(a) if a == jwk.alg().as_str() => report.pass(
                    &label,
                    format!("{a}, use {}", key["use"].as_str().unwrap_or("absent")),
                ),
                Some(a) => report.fail(
                    &label,
                    format!("alg {a} does not fit the key type"),
                    FIX_ALG,
                ),
                None => report.warn(&label, "no alg member", FIX_ALG),
            },
        }
    }
    Some(KeySet::from_entries(keys.iter().cloned()))
}

/// The checks of [`run`] that need no network: the JWKS document `jwks_body` as if the URL had
/// answered it, then `args.token` (if any) against it; `args.jwks_url` and `args.ca_file` are
/// not used. Only the fuzz targets use it ([`crate::fuzzing`]).
pub(crate) fn check_offline(args: &DoctorArgs, jwks_body: &[u8]) -> Vec<Finding> {
    let mut report = Report::default();
    let jwks = check_jwks_document(jwks_body, &mut report);
    if let (Some(token), Some(jwks)) = (&args.token, &jwks) {
        check_token(args, token.trim(), jwks, &mut report);
    }
    report.0
}

/// The redirect `url` answered (`status`, `headers`), hop by hop: the one hop requested, its
/// status and `Location` (resolved against `url` when relative), and whether it leaves HTTPS.
/// The target is named, never requested.
fn redirect_chain(
    url: &reqwest::Url,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> String {
    let hop = format!("{url} answered HTTP {status}");
    let location = match headers.get(reqwest::header::LOCATION).map(|v| v.to_str()) {
        None => return format!("{hop} without a Location header"),
        Some(Err(_)) => return format!("{hop} with an unreadable Location header"),
        Some(Ok(location)) => location,
    };
    let mut text = format!("redirect chain: {hop}, Location: {}", cut(location));
    match url.join(location) {
        Ok(target) => {
            if target.as_str() != location {
                text.push_str(&format!(" (= {})", cut(target.as_str())));
            }
            if url.scheme() == "https" && target.scheme() != "https" {
                text.push_str("; the redirect leaves HTTPS");
            }
        }
        Err(e) => text.push_str(&format!(" (not a usable URL: {e})")),
    }
    text.push_str(
        ". The target was not fetched: AIR Kit may not follow redirects, so it may never see \
         the keys",
    );
    text
}

/// `text` cut to [`MAX_LOCATION_CHARS`]: the server chooses it, and a finding is one line.
fn cut(text: &str) -> String {
    if text.chars().count() > MAX_LOCATION_CHARS {
        let head: String = text.chars().take(MAX_LOCATION_CHARS).collect();
        format!("{head}...")
    } else {
        text.to_owned()
    }
}

/// Clock difference beyond which this machine's clock is called wrong.
const CLOCK_LIMIT: i64 = 60;

/// Compares this machine's clock with the JWKS server's `Date`: a signer whose clock is minutes
/// off mints tokens that AIR Kit finds expired or not yet valid (a cause of 401 in its
/// troubleshooting list). Run on the signing host, this checks the signer's clock.
fn check_clock(headers: &reqwest::header::HeaderMap, report: &mut Report) {
    let Some(theirs) = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::airkit::httpdate_to_unix)
    else {
        return;
    };
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let skew = ours - theirs;
    if skew.abs() <= CLOCK_LIMIT {
        report.pass(
            "clock",
            format!("this machine's clock is within {CLOCK_LIMIT} s of the JWKS server's"),
        );
    } else {
        report.warn(
            "clock",
            format!(
                "this machine's clock is {} s {} the JWKS server's (its Date header)",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "synchronise the clocks (NTP): a signer whose clock is off mints tokens that AIR Kit \
             finds expired or not yet valid",
        );
    }
}

/// The JWK members that describe the public key (`kty` and its parameters).
fn strip(key: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for m in ["kty", "crv", "x", "y", "n", "e"] {
        if let Some(v) = key.get(m) {
            out.insert(m.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// The token checks: [`partner_jwt::inspect`], each step a finding named `token.<step>`.
fn check_token(args: &DoctorArgs, token: &str, keys: &KeySet, report: &mut Report) {
    let token = match UnverifiedToken::parse(token) {
        Ok(token) => token,
        Err(e) => {
            report.fail("token.format", e.to_string(), FIX_SIGNATURE);
            return;
        }
    };
    let scopes = [args.scope.clone()];
    let rules = Rules {
        partner_id: args.partner_id.as_deref(),
        scopes: &scopes,
        max_lifetime: Some(AIR_MAX_TTL),
        max_iat_ahead: Some(SKEW),
    };
    let now = SystemClock.now();
    for check in partner_jwt::inspect(&token, keys, &rules, now) {
        let name = check_name(check.step);
        match check.result {
            Ok(()) => report.pass(name, pass_detail(check.step, &token, now)),
            Err(e) => {
                let (verdict, detail, fix) = failure(e);
                report.push(name, verdict, detail, Some(fix));
            }
        }
    }
}

/// The finding a step is reported under.
fn check_name(step: Step) -> &'static str {
    match step {
        Step::Typ => "token.typ",
        Step::Kid => "token.kid",
        Step::Algorithm => "token.alg",
        Step::Signature => "token.signature",
        Step::Expiry => "token.exp",
        Step::Lifetime => "token.lifetime",
        Step::IssuedAt => "token.iat",
        Step::PartnerId => "token.partnerId",
        Step::Email => "token.email",
        Step::Scope => "token.scope",
    }
}

/// What a step that passed found, read from the token (whose signature verified before any
/// claim step runs).
fn pass_detail(step: Step, token: &UnverifiedToken, now: UnixTime) -> String {
    let claim = |name| token.unverified_claim(name).and_then(Value::as_str);
    // In i128, as the verifier does: the token chooses exp and iat.
    let number = |name| {
        token
            .unverified_claim(name)
            .and_then(Value::as_i64)
            .map_or(0, i128::from)
    };
    match step {
        Step::Typ => "typ: JWT".to_owned(),
        Step::Kid => format!("kid {} is published", token.unverified_kid().unwrap_or("")),
        Step::Algorithm => format!("{:?} matches the key type", token.alg()),
        Step::Signature => "the signature verifies".to_owned(),
        Step::Expiry => format!("valid for {} s more", number("exp") - i128::from(now)),
        Step::Lifetime => format!("{} s", number("exp") - number("iat")),
        Step::IssuedAt => "iat is not in the future".to_owned(),
        Step::PartnerId => claim("partnerId").unwrap_or("").to_owned(),
        Step::Email => claim("email").unwrap_or("").to_owned(),
        Step::Scope => claim("scope").unwrap_or("").to_owned(),
    }
}

/// The verdict, detail and fix of a failed step.
fn failure(error: TokenError) -> (Verdict, String, &'static str) {
    use Verdict::{Fail, Warn};
    match error {
        TokenError::Malformed(e) => (Fail, e.to_string(), FIX_SIGNATURE),
        TokenError::MissingTyp { found: None } => (Fail, "typ is absent".into(), FIX_TYP),
        TokenError::MissingTyp { found: Some(typ) } => (Fail, format!("typ is {typ:?}"), FIX_TYP),
        TokenError::MissingKid => (Fail, "no kid in the header".into(), FIX_KID),
        TokenError::KidNotFound(kid) => (Fail, format!("kid {kid} is not in the JWKS"), FIX_KID),
        TokenError::AlgorithmMismatch {
            alg,
            kty,
            published_alg,
        } => {
            let published = published_alg.map_or(String::new(), |a| format!(" published for {a}"));
            (
                Fail,
                format!("alg {alg:?} with a {kty} key{published}"),
                FIX_ALG,
            )
        }
        TokenError::UnusableKey { kid, reason } => (
            Fail,
            format!("the JWKS key {kid} cannot verify: {reason}"),
            FIX_SIGNATURE,
        ),
        TokenError::BadSignature { cause: None } => (Fail, "does not verify".into(), FIX_SIGNATURE),
        TokenError::BadSignature { cause: Some(e) } => {
            (Fail, format!("does not verify: {e}"), FIX_SIGNATURE)
        }
        TokenError::Expired { seconds_ago } => {
            (Fail, format!("expired {seconds_ago} s ago"), FIX_EXPIRED)
        }
        TokenError::MissingClaim("exp") => (Fail, "no exp claim".into(), FIX_EXPIRED),
        TokenError::BadExp => (
            Fail,
            "exp is not a whole number of seconds since the epoch".into(),
            FIX_EXPIRED,
        ),
        TokenError::MissingClaim(_) => (Fail, "missing".into(), FIX_CLAIMS),
        TokenError::ClaimNotString(name) => (Fail, format!("{name} is not a string"), FIX_CLAIMS),
        TokenError::LifetimeTooLong { seconds, .. } => (
            Fail,
            format!("{seconds} s between iat and exp"),
            "AIR Kit's tools refuse lifetimes above 15 minutes; use 5 minutes",
        ),
        TokenError::IssuedInFuture { seconds } => (
            Warn,
            format!("issued {seconds} s in the future"),
            "synchronise the signing server's clock (NTP)",
        ),
        TokenError::WrongPartner { got, expected } => (
            Fail,
            format!("{got}, expected {expected}"),
            "partnerId must be your AIR Kit partner id (KEYHOST_PARTNER_ID)",
        ),
        TokenError::ScopeNotAccepted { got, accepted } => (
            Warn,
            format!("{got:?}, expected {:?}", accepted.join(" or ")),
            "Issue on Behalf expects scope \"issue\" (some AIR docs show \"issue on-behalf\")",
        ),
    }
}

/// Writes the findings to `out`.
pub fn print(
    findings: &[Finding],
    json: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "findings": findings }))
            .expect("serialises");
        writeln!(out, "{text}")?;
    } else {
        for f in findings {
            let mark = match f.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            writeln!(out, "{mark}  {:<22} {}", f.check, f.detail)?;
            if let Some(fix) = f.fix {
                writeln!(out, "      {:<22} fix: {fix}", "")?;
            }
        }
    }
    out.flush()
}

/// Whether AIR Kit would accept the setup: nothing failed.
pub fn passed(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.verdict != Verdict::Fail)
}

#[cfg(test)]
mod tests;
