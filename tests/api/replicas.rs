//! Several keyhost servers on one PostgreSQL store: changes reach every replica within a second,
//! one planner at a time (another takes over when it dies), a replica cut off from the database
//! stops signing and recovers by itself, issuances survive the replica that accepted them, and
//! a crash loop leaves every token verifiable and none signed early.
//!
//! Only on PostgreSQL (`tests/api_postgres`): SQLite has one server per store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyhost::clock::ManualClock;
use keyhost::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::helpers::{ADMIN_TOKEN, RawDb, T0, TestApp, eventually, start, test_config, verify};
use crate::process::{Process, base_env};

/// `n` in-process replicas on one store (the directory's schema, its master key), sharing
/// `clock`, each configured by `tweak`.
async fn replicas(
    n: usize,
    clock: Arc<ManualClock>,
    tweak: impl Fn(&mut Config),
) -> (Arc<tempfile::TempDir>, Vec<TestApp>) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut apps = Vec::new();
    for _ in 0..n {
        let mut config = test_config(dir.path());
        tweak(&mut config);
        apps.push(
            start(dir.clone(), clock.clone(), config)
                .await
                .expect("replica starts"),
        );
    }
    (dir, apps)
}

async fn kids(app: &TestApp) -> Vec<String> {
    app.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn active_per_alg(keys: &[Value]) -> Vec<(String, usize)> {
    ["ES256", "RS256"]
        .iter()
        .map(|alg| {
            (
                (*alg).to_owned(),
                keys.iter()
                    .filter(|k| k["alg"] == *alg && k["state"] == "active")
                    .count(),
            )
        })
        .collect()
}

/// How long until `check` holds, polling every 10 ms, failing after `limit`.
async fn time_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "{what} (after {:?})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn changes_through_one_replica_reach_the_others_within_a_second_and_tokens_verify_everywhere()
{
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    // The periodic re-read is far slower than the bound: what arrives within a second arrived
    // by notification.
    let (_dir, apps) = replicas(3, ManualClock::new(T0), |c| {
        c.database.refresh_interval = Duration::from_secs(30);
        c.database.signing_lease = Duration::from_secs(60);
    })
    .await;
    let (a, b, c) = (&apps[0], &apps[1], &apps[2]);
    let kids_a = kids(a).await;
    assert_eq!(kids_a.len(), 2, "one key per algorithm, generated once");
    assert_eq!(kids(b).await, kids_a);
    assert_eq!(kids(c).await, kids_a);

    // A client created through A mints through B and C within a second.
    let (_, key) = a.create_client(&["issue"]).await;
    for other in [b, c] {
        time_until(
            Duration::from_secs(1),
            "the client reached the replica",
            || async {
                other
                    .mint(&key, json!({"email": "u@example.com"}))
                    .await
                    .status()
                    == 200
            },
        )
        .await;
    }

    // Rotations through any replica: every replica's JWKS and signer follow within a second.
    let mut delays = Vec::new();
    for round in 0..8 {
        let through = &apps[round % 3];
        let rotated = through.rotate("ES256", true).await;
        let new_kid = rotated["key"]["kid"].as_str().unwrap().to_owned();
        let revoked: Vec<String> = rotated["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        assert!(!revoked.is_empty());
        for other in &apps {
            delays.push(
                time_until(
                    Duration::from_secs(1),
                    "the rotation reached a replica",
                    || async {
                        let listed = kids(other).await;
                        listed.contains(&new_kid) && !revoked.iter().any(|r| listed.contains(r))
                    },
                )
                .await,
            );
        }
        for other in &apps {
            // Its signer follows its JWKS: the new key signs, the revoked one never again.
            let minted = other.mint_ok(&key, json!({"email": "u@example.com"})).await;
            let token = minted["token"].as_str().unwrap();
            let header = jsonwebtoken::decode_header(token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
            // What one replica signs, every other's JWKS verifies.
            for verifier in &apps {
                verify(token, &verifier.jwks().await, other.now()).unwrap();
            }
        }
        for app in &apps {
            assert_eq!(
                active_per_alg(&app.keys().await),
                [("ES256".to_owned(), 1), ("RS256".to_owned(), 1)],
                "one active key per algorithm"
            );
        }
    }
    delays.sort();
    eprintln!(
        "key-change propagation over {} observations: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );
}

/// A TCP relay to PostgreSQL that can be cut (every connection through it dropped, new ones
/// refused) and reopened.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let (o, l) = (open.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Self {
            port,
            open,
            links,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn through(url: &str, port: u16) -> (String, String) {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    (
        format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..]),
        url[start..end].to_owned(),
    )
}

#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_signing_keeps_its_jwks_and_recovers_alone() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let clock = ManualClock::new(T0);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = start(dir.clone(), clock.clone(), test_config(dir.path()))
        .await
        .unwrap();
    let direct = crate::pg::url_for(dir.path());
    let (_, upstream) = through(&direct, 0);
    let relay = Relay::to(upstream).await;
    let mut config = test_config(dir.path());
    config.database.url = Some(through(&direct, relay.port).0.into());
    config.database.refresh_interval = Duration::from_millis(200);
    config.database.signing_lease = Duration::from_secs(1);
    let x = start(dir.clone(), clock.clone(), config).await.unwrap();

    let (_, key) = a.create_client(&["issue"]).await;
    eventually(Duration::from_secs(5), "the client reached X", || async {
        x.mint(&key, json!({"email": "u@example.com"}))
            .await
            .status()
            == 200
    })
    .await;
    let revoked_kid = x.mint_ok(&key, json!({"email": "u@example.com"})).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    relay.cut();
    // Within the signing lease (and a refresh or two), X stops signing and says why.
    let cut_at = Instant::now();
    let res = loop {
        let res = x.mint(&key, json!({"email": "u@example.com"})).await;
        if res.status() == 503 {
            break res;
        }
        assert_eq!(res.status(), 200);
        assert!(
            cut_at.elapsed() < Duration::from_secs(3),
            "X went on signing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        cut_at.elapsed() >= Duration::from_millis(500),
        "not before the lease ran out"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["identifier"], "INTERNAL_ERROR");
    assert!(
        body["message"].as_str().unwrap().contains("database"),
        "{body}"
    );
    let ready = x
        .http
        .get(format!("{}/readyz", x.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        kids(&x).await.contains(&revoked_kid),
        "the JWKS is still served"
    );

    // Meanwhile the key X signed with is revoked through A.
    let rotated = a.rotate("ES256", true).await;
    let new_kid = rotated["key"]["kid"].as_str().unwrap().to_owned();
    assert!(
        rotated["revoked"]
            .as_array()
            .unwrap()
            .contains(&json!(revoked_kid))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        x.mint(&key, json!({"email": "u@example.com"}))
            .await
            .status(),
        503,
        "still cut off: nothing signed"
    );

    relay.reopen();
    // X recovers without a restart, and never signs with the key revoked during the cut.
    let reopened = Instant::now();
    let answer = loop {
        let res = x.mint(&key, json!({"email": "u@example.com"})).await;
        if res.status() == 200 {
            break res.json::<Value>().await.unwrap();
        }
        assert_eq!(res.status(), 503);
        assert!(
            reopened.elapsed() < Duration::from_secs(20),
            "X never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer["kid"], new_kid.as_str(), "{answer}");
    eprintln!(
        "X signed again {:?} after the database came back",
        reopened.elapsed()
    );
    let ready = x
        .http
        .get(format!("{}/readyz", x.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    eventually(
        Duration::from_secs(5),
        "X's JWKS dropped the revoked key",
        || async { !kids(&x).await.contains(&revoked_kid) },
    )
    .await;
}

/// A replica as a process of its own on the store of `dir`, with `extra` settings.
fn replica_process(dir: &std::path::Path, extra: &[(&str, &str)]) -> Process {
    let mut env = base_env(dir);
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Process::start(&env, &[])
}

/// Creates an API client through the admin API at `internal`; its API key.
async fn create_client(http: &reqwest::Client, internal: &str) -> String {
    let client: Value = http
        .post(format!("{internal}/admin/clients"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "app", "scopes": ["issue"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client["apiKey"].as_str().unwrap().to_owned()
}

/// `POST /v1/tokens` at `internal` with `api_key`.
async fn mint(
    http: &reqwest::Client,
    internal: &str,
    api_key: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{internal}/v1/tokens"))
        .bearer_auth(api_key)
        .json(&json!({"email": "u@example.com"}))
        .send()
        .await
}

/// The pid of the replica holding the planner's lease.
fn planner_pid(db: &RawDb) -> Option<u32> {
    let holder = db.try_query_string("SELECT holder FROM leases WHERE name = 'planner'", &[])?;
    holder.split('/').next()?.parse().ok()
}

async fn admin_keys(http: &reqwest::Client, internal: &str) -> Vec<Value> {
    let body: Value = http
        .get(format!("{internal}/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["keys"].as_array().unwrap().clone()
}

/// Checks every token against the final key list: signed by a known key, never before that
/// key's signing time, and verifiable with its public JWK unless the key was revoked.
fn check_tokens(tokens: &[String], keys: &[Value]) {
    for token in tokens {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let kid = header.kid.unwrap();
        let key = keys
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap_or_else(|| panic!("token signed by unknown kid {kid}"));
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let signable = time::OffsetDateTime::parse(
            key["signableAt"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        assert!(
            claims["iat"].as_i64().unwrap() >= signable,
            "a token of {kid} was signed before its signing time"
        );
        if key["state"] == "revoked" {
            continue;
        }
        let jwks = json!({"keys": [key["publicJwk"].clone()
            .as_object().unwrap().clone().into_iter()
            .chain([("kid".to_owned(), json!(kid)), ("alg".to_owned(), key["alg"].clone()),
                    ("use".to_owned(), json!("sig"))])
            .collect::<serde_json::Map<_, _>>()]});
        verify(token, &jwks, claims["iat"].as_i64().unwrap()).unwrap();
    }
}

/// A lifecycle fast enough to watch: ES256 only, a key signs 4 s after it is published and
/// rotates every 8 s; replicas re-read every 300 ms.
const FAST: &[(&str, &str)] = &[
    ("KEYHOST_ALGORITHMS", "ES256"),
    ("KEYHOST_PUBLISH_LEAD", "4s"),
    ("KEYHOST_ROTATION_PERIOD", "8s"),
    ("KEYHOST_JWKS_MAX_AGE", "1s"),
    ("KEYHOST_RETIRE_GRACE", "302s"),
    ("KEYHOST_REFRESH_INTERVAL", "300ms"),
    ("KEYHOST_SIGNING_LEASE", "3s"),
];

#[tokio::test]
async fn when_the_planner_is_killed_another_takes_over_and_one_successor_is_generated() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Process> = (0..3).map(|_| replica_process(dir.path(), FAST)).collect();
    let db = RawDb::open(dir.path());
    let http = reqwest::Client::new();
    let first = admin_keys(&http, &servers[0].internal).await;
    assert_eq!(first.len(), 1);
    let api_key = create_client(&http, &servers[0].internal).await;

    // Kill the planner just before the successor falls due (4 s after the first key).
    let planner = planner_pid(&db).expect("a planner holds the lease");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let at = servers.iter().position(|s| s.pid() == planner).unwrap();
    servers[at].kill();
    servers.remove(at);

    // The others mint throughout; another takes the lease and generates the successor.
    let mut tokens = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        for s in &servers {
            let res = mint(&http, &s.internal, &api_key).await.unwrap();
            if res.status() == 200 {
                tokens.push(
                    res.json::<Value>().await.unwrap()["token"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        let keys = admin_keys(&http, &servers[0].internal).await;
        if keys.len() >= 2
            && keys
                .iter()
                .any(|k| k["state"] == "active" && k["kid"] != first[0]["kid"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successor became active: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_planner = planner_pid(&db).expect("another replica plans");
    assert!(servers.iter().any(|s| s.pid() == new_planner));
    let keys = admin_keys(&http, &servers[0].internal).await;
    assert_eq!(
        keys.len(),
        2,
        "exactly one successor for the due time: {keys:?}"
    );
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM keys", &[]),
        2,
        "no key generated twice"
    );
    // Every surviving replica signs with the successor now (within a second of its activation).
    let successor = keys[1]["kid"].as_str().unwrap().to_owned();
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let res = mint(&http, &s.internal, &api_key).await.unwrap();
            assert_eq!(res.status(), 200);
            let token = res.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned();
            let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
            tokens.push(token);
            if kid == successor {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never signed with the successor"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    check_tokens(&tokens, &keys);
}

#[tokio::test]
async fn an_issuance_whose_replica_dies_before_air_kit_answers_is_completed_by_another_once() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let port = crate::issuance::free_port();
    let upstream =
        crate::issuance::start_emulator(port, |e| e.latency = Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let public = format!("127.0.0.1:{port}");
    let issuing: Vec<(&str, &str)> = vec![
        ("KEYHOST_AIRKIT_BASE_URL", upstream.base_url.as_str()),
        ("KEYHOST_ISSUER_DID", crate::issuance::ISSUER),
        ("KEYHOST_CREDENTIAL_ID", crate::issuance::PROGRAM),
        ("KEYHOST_AIRKIT_WAIT", "1s"),
        ("KEYHOST_AIRKIT_TIMEOUT", "30s"),
        ("KEYHOST_AIRKIT_POLL_INTERVAL", "100ms"),
        ("KEYHOST_REFRESH_INTERVAL", "300ms"),
        ("KEYHOST_SIGNING_LEASE", "3s"),
    ];
    // The emulator fetches the JWKS from the first replica's public port.
    let mut first_env = issuing.clone();
    first_env.push(("KEYHOST_PUBLIC_ADDR", public.as_str()));
    let mut a = replica_process(dir.path(), &first_env);
    let others: Vec<Process> = (0..2)
        .map(|_| replica_process(dir.path(), &issuing))
        .collect();
    let http = reqwest::Client::new();
    let key = create_client(&http, &a.internal).await;
    let res = http
        .post(format!("{}/v1/credentials/issue-on-behalf", a.internal))
        .bearer_auth(key)
        .json(&json!({"email": "u@example.com", "credentialSubject": {"isMember": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "still waiting for AIR Kit");
    let id = res.json::<Value>().await.unwrap()["issuanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A's call is in flight (AIR Kit takes 5 s; the 202 came after 1 s): A dies before it is
    // answered, and its request dies with its connection, inside AIR Kit's latency.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        upstream.control.issue_calls().is_empty(),
        "not answered yet"
    );
    a.kill();
    upstream.control.set_latency(Duration::ZERO);

    // The JWKS AIR Kit fetches must stay up: a second replica takes the public port.
    let mut b_env = issuing.clone();
    b_env.push(("KEYHOST_PUBLIC_ADDR", public.as_str()));
    let _b = replica_process(dir.path(), &b_env);

    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row: Value = http
            .get(format!("{}/admin/issuances/{id}", others[0].internal))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if row["state"] == "onchain" {
            break row;
        }
        assert!(Instant::now() < deadline, "never completed: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["coreClaimHash"].as_str().unwrap().len(), 64);
    // Exactly one call reached AIR Kit: the one replica that took the issuance over made it
    // (two servers working it would have made two), and one attempt is on the record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(upstream.control.issue_calls().len(), 1);
    assert_eq!(upstream.control.credentials(), 1);
    assert_eq!(row["attempts"], 1, "{row}");
}

#[tokio::test]
async fn a_crash_loop_leaves_every_token_verifiable_and_none_signed_early() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Process> = (0..3).map(|_| replica_process(dir.path(), FAST)).collect();
    let http = reqwest::Client::new();
    let api_key = create_client(&http, &servers[0].internal).await;
    let kills: usize = std::env::var("KEYHOST_REPLICA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut tokens = Vec::new();
    let mut seed = std::process::id() as u64;
    let mut rand = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    for round in 0..kills {
        let until = Instant::now() + Duration::from_millis(500 + rand(1500) as u64);
        while Instant::now() < until {
            for s in &servers {
                if let Ok(res) = mint(&http, &s.internal, &api_key).await
                    && res.status() == 200
                {
                    tokens.push(
                        res.json::<Value>().await.unwrap()["token"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
            }
            if round % 3 == 1 && rand(20) == 0 {
                let _ = http
                    .post(format!(
                        "{}/admin/keys/rotate",
                        servers[rand(servers.len())].internal
                    ))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"alg": "ES256", "emergency": rand(2) == 0}))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = rand(servers.len());
        servers[victim].kill();
        servers[victim] = replica_process(dir.path(), FAST);
    }
    let keys = admin_keys(&http, &servers[0].internal).await;
    assert!(tokens.len() > 50, "minted {}", tokens.len());
    check_tokens(&tokens, &keys);
    for state in ["active", "pending"] {
        assert!(
            keys.iter().filter(|k| k["state"] == state).count() <= 1,
            "at most one {state} key: {keys:?}"
        );
    }
    eprintln!(
        "crash loop: {kills} kills, {} keys, {} tokens checked",
        keys.len(),
        tokens.len()
    );
}

#[tokio::test]
async fn only_the_planner_counts_served_time_so_a_lead_is_never_credited_twice() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let clock = ManualClock::new(T0);
    let (_dir, apps) = replicas(2, clock.clone(), |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    assert!(
        a.state.lifecycle.replicas().plans(),
        "the first replica plans"
    );
    assert!(!b.state.lifecycle.replicas().plans());
    let lead = a.state.config.keys.publish_lead.as_secs() as i64;

    // A successor published through B, the replica that does not plan.
    let pending = b.rotate("ES256", false).await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Half the lead passes; the planner counts it.
    clock.advance(lead / 2);
    a.settle().await;
    b.settle().await;
    // Another change through B, which counts served time before it starts a lead: B must not
    // count the same half again.
    b.rotate("RS256", false).await;
    a.settle().await;
    let keys = a.keys().await;
    let key = keys.iter().find(|k| k["kid"] == pending.as_str()).unwrap();
    assert_eq!(key["state"], "pending", "{key}");
    // Just before the whole lead has passed it still may not sign; once it has, it does.
    clock.advance(lead / 2 - 5);
    a.settle().await;
    assert!(a.kids_in("pending").await.contains(&pending));
    clock.advance(10);
    a.settle().await;
    b.settle().await;
    eventually(
        Duration::from_secs(5),
        "the successor activated",
        || async { b.kids_in("active").await.contains(&pending) },
    )
    .await;
}

#[tokio::test]
async fn a_clients_rate_limit_holds_for_the_whole_deployment_not_per_replica() {
    crate::postgres_only!("several servers on one store; SQLite has one server per store");
    let (_dir, apps) = replicas(2, ManualClock::new(T0), |c| {
        c.tokens.client_rate_limit = 10;
    })
    .await;
    // Each replica learns of the other at its next round.
    for app in &apps {
        app.settle().await;
    }
    let (_, key) = apps[0].create_client(&["issue"]).await;
    eventually(Duration::from_secs(5), "the client reached B", || async {
        apps[1]
            .mint(&key, json!({"email": "u@example.com"}))
            .await
            .status()
            != 401
    })
    .await;
    // B admitted one already; a round robin over both from here.
    let mut admitted = 1;
    let mut refused = 0;
    for i in 0..20 {
        let status = apps[i % 2]
            .mint(&key, json!({"email": "u@example.com"}))
            .await
            .status();
        match status.as_u16() {
            200 => admitted += 1,
            429 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, 10,
        "the limit is the client's across both replicas"
    );
    assert_eq!(refused, 11);
}
