//! The crash harness: keyhost is SIGKILLed at random moments while it mints, rotates (normally
//! and in emergencies), issues through AIR Kit (the emulator) and starts from nothing (master key,
//! admin token, first keys), then restarted; where libfaketime is installed (`.ci/run` installs
//! it), restarts also move the wall clock forward a day or an hour, or back 90 s.
//!
//! After every restart, what users and verifiers depend on is checked:
//! - it starts, and every enabled algorithm has exactly one active key;
//! - every token handed out verifies against the JWKS it serves now, unless its key was revoked
//!   (an emergency rotation) or has expired;
//! - no token was signed before its key's `signableAt`, nor, for a normal rotation, before a
//!   running server had served the key for the whole publish lead (measured here in real time
//!   from the moment the rotation was asked for, so a wall clock moved across a restart cannot
//!   hide an early switch);
//! - every issuance keyhost answered for is still there, one row per idempotency key, and the
//!   same request sent again is the same issuance; at the end every one of them is on chain.
//!
//! `KEYHOST_CRASH_ITERATIONS` sets the number of kills (default 10, about 20 s); the figures of a
//! run are printed (`cargo test --test api crash -- --nocapture`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{ADMIN_TOKEN, RawDb, StoreCleanup, verify};
use crate::issuance::{ISSUER, PROGRAM, free_port, start_emulator};
use crate::process::{Process, base_env};

/// The publish lead of the harness's keyhost.
const LEAD: Duration = Duration::from_secs(3);

/// A token handed out, and when its answer arrived.
struct Minted {
    token: String,
    kid: String,
    received: Instant,
    /// The JWKS entry its signature was verified against, once it was: the signature is
    /// checked again only if the entry served for its kid changes.
    verified_with: Option<Value>,
}

/// What the clients saw, across every run of the process.
#[derive(Default)]
struct Ledger {
    tokens: Vec<Minted>,
    /// Normal rotations answered: the new kid and when the rotation was asked for.
    rotations: HashMap<String, Instant>,
    /// Every idempotency key sent, with the issuance id if an answer came back.
    issued: HashMap<String, Option<String>>,
    emergencies: usize,
}

/// Figures of a run.
#[derive(Debug, Default)]
struct Figures {
    kills: usize,
    kills_while_starting: usize,
    clock_moves: usize,
    tokens_checked: usize,
    tokens_of_revoked_or_expired_keys: usize,
    /// Tokens of keys made by a normal rotation, whose publish lead was checked.
    tokens_of_successors: usize,
    rotations: usize,
    emergencies: usize,
    issuances: usize,
    issuances_refused_after_an_emergency: usize,
    slowest_start: Duration,
}

/// libfaketime's thread-safe library, if installed. It is preloaded into keyhost itself (not
/// through the `faketime` wrapper, which forks: killing the wrapper would leave keyhost running).
fn libfaketime() -> Option<std::path::PathBuf> {
    let lib_dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([std::path::PathBuf::from("/usr/lib")]);
    lib_dirs
        .map(|d| d.join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
}

fn unix_of(rfc3339: &Value) -> Option<i64> {
    let text = rfc3339.as_str()?;
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

struct Harness {
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
    api_key: Option<String>,
}

impl Harness {
    async fn admin(&self, p: &Process, path: &str) -> Value {
        let res = self
            .http
            .get(format!("{}{path}", p.internal))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "GET {path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// Waits until the process is ready; a process whose wall clock was moved on purpose may
    /// instead say that its clock is off AIR Kit's (it is right to).
    async fn until_ready(&self, p: &Process) {
        crate::helpers::eventually(Duration::from_secs(30), "never ready", || async {
            let Ok(res) = self.http.get(format!("{}/readyz", p.internal)).send().await else {
                return false;
            };
            let status = res.status();
            let body: Value = res.json().await.unwrap_or_default();
            status == 200
                || body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("clock"))
        })
        .await;
    }

    /// Every invariant of the module documentation, against the process as it serves now.
    async fn check(&self, p: &Process, dir: &std::path::Path, figures: &mut Figures) {
        let keys = self.admin(p, "/admin/keys").await["keys"]
            .as_array()
            .unwrap()
            .clone();
        for alg in ["ES256", "RS256"] {
            let active = keys
                .iter()
                .filter(|k| k["alg"] == alg && k["state"] == "active")
                .count();
            assert_eq!(active, 1, "{alg}: {keys:?}");
        }
        assert!(keys.iter().all(|k| k["integrity"].is_null()), "{keys:?}");
        let jwks: Value = self
            .http
            .get(format!("{}/.well-known/jwks.json", p.public))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issued: Vec<String> = {
            let mut ledger = self.ledger.lock().unwrap();
            Self::check_tokens(&mut ledger, &keys, &jwks, figures);
            ledger.issued.values().flatten().cloned().collect()
        };
        let db = RawDb::open(dir);
        let twice = db.query_i64(
            "SELECT COUNT(*) FROM (SELECT idempotency_key FROM issuances
             WHERE idempotency_key IS NOT NULL GROUP BY source, idempotency_key
             HAVING COUNT(*) > 1) AS repeated",
            &[],
        );
        assert_eq!(twice, 0, "an idempotency key has two issuances");
        let stored: std::collections::HashSet<String> = db
            .query_rows("SELECT id FROM issuances", &[])
            .into_iter()
            .map(|r| match &r[0] {
                keyhost::store::sql::Value::Text(id) => id.clone(),
                other => panic!("issuance id {other:?}"),
            })
            .collect();
        for id in issued {
            assert!(stored.contains(&id), "issuance {id} was lost");
        }
    }

    /// Every token handed out verifies (unless its key is gone for a reason) and was signed
    /// neither before its key's signableAt nor before its publish lead was served.
    fn check_tokens(ledger: &mut Ledger, keys: &[Value], jwks: &Value, figures: &mut Figures) {
        let rotations = &ledger.rotations;
        for minted in &mut ledger.tokens {
            let key = keys
                .iter()
                .find(|k| k["kid"] == minted.kid.as_str())
                .unwrap_or_else(|| panic!("a token's key {} is unknown", minted.kid));
            if key["state"] == "revoked" || key["state"] == "expired" {
                figures.tokens_of_revoked_or_expired_keys += 1;
                continue;
            }
            let iat = claims_of(&minted.token)["iat"].as_i64().unwrap();
            let entry = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == minted.kid.as_str())
                .unwrap_or_else(|| {
                    panic!("{} is not in the JWKS while its tokens live", minted.kid)
                });
            if minted.verified_with.as_ref() != Some(entry) {
                verify(&minted.token, jwks, iat)
                    .unwrap_or_else(|e| panic!("a token of {} does not verify: {e}", minted.kid));
                minted.verified_with = Some(entry.clone());
            }
            let signable = unix_of(&key["signableAt"]).unwrap();
            assert!(
                iat >= signable,
                "{} signed at {iat}, before {signable}",
                minted.kid
            );
            if let Some(asked) = rotations.get(&minted.kid) {
                figures.tokens_of_successors += 1;
                assert!(
                    minted.received.duration_since(*asked) >= LEAD,
                    "{} signed {:?} after it was created: less than the publish lead",
                    minted.kid,
                    minted.received.duration_since(*asked)
                );
            }
            figures.tokens_checked += 1;
        }
    }

    /// Mints, rotates and issues against `p` until `stop`.
    fn load(&self, p: &Process, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let api_key = self.api_key.clone().unwrap();
        let mut tasks = Vec::new();
        {
            let (http, ledger, base, key, stop) = (
                self.http.clone(),
                self.ledger.clone(),
                p.internal.clone(),
                api_key.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !*stop.borrow() {
                    n += 1;
                    let alg = if n.is_multiple_of(3) {
                        "RS256"
                    } else {
                        "ES256"
                    };
                    let res = http
                        .post(format!("{base}/v1/tokens"))
                        .bearer_auth(&key)
                        .json(&json!({"email": "u@example.com", "alg": alg}))
                        .send()
                        .await;
                    if let Ok(res) = res
                        && res.status() == 200
                        && let Ok(body) = res.json::<Value>().await
                    {
                        ledger.lock().unwrap().tokens.push(Minted {
                            token: body["token"].as_str().unwrap().to_owned(),
                            kid: body["kid"].as_str().unwrap().to_owned(),
                            received: Instant::now(),
                            verified_with: None,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }));
        }
        {
            let (http, ledger, base, stop) = (
                self.http.clone(),
                self.ledger.clone(),
                p.internal.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !*stop.borrow() {
                    tokio::time::sleep(Duration::from_millis(120 + (n * 37) % 250)).await;
                    n += 1;
                    // Emergencies (which revoke the pending key too) only for RS256, so that
                    // ES256 successors live to sign and their lead is checked.
                    let alg = if n.is_multiple_of(2) {
                        "ES256"
                    } else {
                        "RS256"
                    };
                    let emergency = alg == "RS256" && n.is_multiple_of(3);
                    let asked = Instant::now();
                    let res = http
                        .post(format!("{base}/admin/keys/rotate"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"alg": alg, "emergency": emergency}))
                        .send()
                        .await;
                    if let Ok(res) = res
                        && res.status() == 201
                        && let Ok(body) = res.json::<Value>().await
                    {
                        let kid = body["key"]["kid"].as_str().unwrap().to_owned();
                        let mut ledger = ledger.lock().unwrap();
                        if emergency {
                            ledger.emergencies += 1;
                        } else {
                            ledger.rotations.insert(kid, asked);
                        }
                    }
                }
            }));
        }
        {
            let (http, ledger, base, key, stop) = (
                self.http.clone(),
                self.ledger.clone(),
                p.internal.clone(),
                api_key,
                stop,
            );
            tasks.push(tokio::spawn(async move {
                let mut sent = 0usize;
                while !*stop.borrow() {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    sent += 1;
                    // Mostly new requests; now and then one sent before, which must be the same
                    // issuance.
                    let (idem, known) = {
                        let mut ledger = ledger.lock().unwrap();
                        let n = ledger.issued.len();
                        if sent % 4 == 3 && n > 0 {
                            let idem = format!("req-{}", n / 2);
                            let known = ledger.issued.get(&idem).cloned().flatten();
                            (idem, known)
                        } else {
                            let idem = format!("req-{n}");
                            ledger.issued.insert(idem.clone(), None);
                            (idem, None)
                        }
                    };
                    let res = http
                        .post(format!("{base}/v1/credentials/issue-on-behalf"))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", &idem)
                        .json(&json!({
                            "email": format!("{idem}@example.com"),
                            "credentialSubject": {"n": idem},
                        }))
                        .send()
                        .await;
                    let Ok(res) = res else { continue };
                    let status = res.status().as_u16();
                    let Ok(body) = res.json::<Value>().await else {
                        continue;
                    };
                    if status == 200 || status == 202 {
                        let id = body["issuanceId"].as_str().unwrap().to_owned();
                        if let Some(known) = known {
                            assert_eq!(known, id, "{idem} sent again is another issuance");
                        }
                        ledger.lock().unwrap().issued.insert(idem, Some(id));
                    }
                }
            }));
        }
        tasks
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_keyhost_restarts_consistent() {
    let iterations: usize = std::env::var("KEYHOST_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let faketime = libfaketime();
    if faketime.is_none() {
        eprintln!(
            "crash harness: libfaketime is not installed (apt-get install faketime), so restarts \
             keep the real wall clock"
        );
    }
    let (public, internal) = (free_port(), free_port());
    let upstream = start_emulator(public, |e| e.onchain_delay = Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StoreCleanup(dir.path());
    let mut env = base_env(dir.path());
    env.retain(|(k, _)| !k.ends_with("_ADDR"));
    for (k, v) in [
        ("KEYHOST_PUBLIC_ADDR", format!("127.0.0.1:{public}")),
        ("KEYHOST_INTERNAL_ADDR", format!("127.0.0.1:{internal}")),
        ("KEYHOST_PUBLISH_LEAD", format!("{}s", LEAD.as_secs())),
        ("KEYHOST_JWKS_MAX_AGE", "1s".into()),
        ("KEYHOST_RETIRE_GRACE", "301s".into()),
        ("KEYHOST_AUTO_ROTATE", "false".into()),
        ("KEYHOST_AIRKIT_BASE_URL", upstream.base_url.clone()),
        ("KEYHOST_ISSUER_DID", ISSUER.into()),
        ("KEYHOST_CREDENTIAL_ID", PROGRAM.into()),
        ("KEYHOST_AIRKIT_WAIT", "300ms".into()),
        ("KEYHOST_AIRKIT_BACKOFF", "50ms".into()),
        ("KEYHOST_AIRKIT_BACKOFF_MAX", "500ms".into()),
        ("KEYHOST_AIRKIT_POLL_INTERVAL", "100ms".into()),
        ("KEYHOST_AUTH_FAILURE_LIMIT", "1000".into()),
    ] {
        env.push((k.to_owned(), v));
    }
    if crate::helpers::on_postgres() {
        // A killed server's planner lease is taken over once it has been silent for two refresh
        // intervals and a second: at the default interval, restarts a second apart would leave
        // the store without a planner most of the time.
        env.push(("KEYHOST_REFRESH_INTERVAL".to_owned(), "250ms".to_owned()));
    }
    let mut harness = Harness {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        ledger: Arc::default(),
        api_key: None,
    };
    let mut figures = Figures::default();
    let offsets = ["+0", "+86400", "+86400", "+0", "-90", "+3600", "+0"];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for i in 0..=iterations {
        let offset = offsets[i % offsets.len()];
        let mut env = env.clone();
        if let Some(lib) = &faketime
            && offset != "+0"
            && i < iterations
        {
            figures.clock_moves += 1;
            env.push(("LD_PRELOAD".into(), lib.display().to_string()));
            env.push(("FAKETIME".into(), offset.into()));
        }
        let prefix: [&str; 0] = [];
        // Now and then (and first, on an empty directory) the kill comes while it starts:
        // migrations, master key, admin token, first keys.
        if i < iterations && (i == 0 || i % 7 == 3) {
            let mut p = Process::spawn(&env, &prefix);
            std::thread::sleep(Duration::from_millis(random(150)));
            p.kill();
            figures.kills += 1;
            figures.kills_while_starting += 1;
        }
        let started = Instant::now();
        let mut p = Process::spawn(&env, &prefix);
        p.wait_serving(Duration::from_secs(60)).unwrap();
        harness.until_ready(&p).await;
        figures.slowest_start = figures.slowest_start.max(started.elapsed());
        if harness.api_key.is_none() {
            let res = harness
                .http
                .post(format!("{}/admin/clients", p.internal))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"name": "harness", "scopes": ["issue"]}))
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            harness.api_key = Some(body["apiKey"].as_str().unwrap().to_owned());
        }
        harness.check(&p, dir.path(), &mut figures).await;
        if i == iterations {
            break;
        }
        let (stop, stopped) = watch::channel(false);
        let tasks = harness.load(&p, stopped);
        // Mostly short runs; every third is longer than the lead, so that successors sign (on
        // PostgreSQL, plus the time the killed server's planner lease takes to be free: two
        // refresh intervals and a second, see the environment above).
        let takeover = if crate::helpers::on_postgres() {
            2500
        } else {
            0
        };
        let run = if i % 3 == 1 {
            LEAD.as_millis() as u64 + 1000 + takeover
        } else {
            150 + random(1500)
        };
        tokio::time::sleep(Duration::from_millis(run)).await;
        p.kill();
        figures.kills += 1;
        let _ = stop.send(true);
        for t in tasks {
            t.await.unwrap();
        }
    }

    // Last run, on the real clock: every issuance answered for gets on chain.
    let p = Process::start(&env, &[]);
    harness.until_ready(&p).await;
    let ids: Vec<String> = {
        let ledger = harness.ledger.lock().unwrap();
        figures.rotations = ledger.rotations.len();
        figures.emergencies = ledger.emergencies;
        ledger.issued.values().flatten().cloned().collect()
    };
    figures.issuances = ids.len();
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = harness.admin(&p, &format!("/admin/issuances/{id}")).await;
            match row["state"].as_str().unwrap() {
                "onchain" => break,
                // An emergency rotation signs at once with a key AIR Kit's cached JWKS lacks:
                // that answer is a 401, final and recorded (the price of an emergency).
                "failed" if row["lastStatus"] == 401 => {
                    figures.issuances_refused_after_an_emergency += 1;
                    break;
                }
                state => assert!(
                    Instant::now() < deadline,
                    "issuance {id} is still {state} after 60 s: {row}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("crash harness: {figures:?}");
    assert!(figures.tokens_checked > 0 && figures.issuances > 0 && figures.rotations > 0);
    assert!(
        figures.tokens_of_successors > 0,
        "no successor ever signed: {figures:?}"
    );
}
