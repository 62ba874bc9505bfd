//! Hostile clients on the wire: silent connections, half-sent headers, bodies that never end, a
//! handshake flood, a process short of file descriptors. Each case asserts what the attacker
//! gets, and that a normal client is served meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyhost::clock::ManualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::helpers::{ADMIN_TOKEN, spawn_app_with, start, test_config};
use crate::process::{Process, base_env};
use crate::tls::test_pki;

fn addr(base: &str) -> SocketAddr {
    base.rsplit("//")
        .next()
        .unwrap()
        .parse()
        .expect("a socket address")
}

/// Keeps `n` TCP connections to `to` open without sending a byte, opening a new one whenever the
/// server closes one, until `stop` turns true. Counts the connections opened.
fn silent_flood(to: SocketAddr, n: usize, stop: watch::Receiver<bool>) -> Arc<AtomicUsize> {
    let opened = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let (opened, mut stop) = (opened.clone(), stop.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                let Ok(mut conn) = TcpStream::connect(to).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 64];
                tokio::select! {
                    _ = conn.read(&mut buf) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    opened
}

/// Whether the server closes `conn` within `limit` (a read sees the end or an error).
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Reads what the server sends until it closes `conn` (at most `limit`).
async fn read_to_close(conn: &mut TcpStream, limit: Duration) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(limit, conn.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

async fn jwks_ok(http: &reqwest::Client, public: &str) -> bool {
    match http
        .get(format!("{public}/.well-known/jwks.json"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(res) => res.status() == 200,
        Err(_) => false,
    }
}

/// The value of the metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_of_silent_connections_cannot_keep_a_verifier_from_the_https_jwks() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    config.http.public_max_connections = 256;
    let app = start(dir, ManualClock::starting_now(), config)
        .await
        .unwrap();
    let public = addr(&app.public);
    let https_base = format!("https://localhost:{}", public.port());
    let roots = reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap();
    // A new connection (and handshake) per request, as a verifier fetching now and then has.
    let verifier = reqwest::Client::builder()
        .tls_certs_merge(roots)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(jwks_ok(&verifier, &https_base).await);

    // More silent connections than the old 1,024 handshake slots, re-opened as they are closed.
    let (stop, stopped) = watch::channel(false);
    let opened = silent_flood(public, 1100, stopped);
    crate::helpers::eventually(Duration::from_secs(20), "the flood got going", || async {
        opened.load(Ordering::Relaxed) > 1300
    })
    .await;
    let started = Instant::now();
    let mut served = 0;
    for _ in 0..20 {
        if jwks_ok(&verifier, &https_base).await {
            served += 1;
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let metrics = app.metrics().await;
    eprintln!(
        "opened {} shed {} served {served} in {elapsed:?}",
        opened.load(Ordering::Relaxed),
        metric(
            &metrics,
            "keyhost_connections_shed_total{listener=\"public\"}"
        )
    );
    assert!(
        metric(
            &metrics,
            "keyhost_connections_shed_total{listener=\"public\"}"
        ) > 0.0,
        "silent connections were shed to make room: {metrics}"
    );
    assert_eq!(served, 20, "every fetch during the flood was served");
    eprintln!(
        "JWKS over HTTPS during a flood of 1,100 silent connections: {served}/20 in {elapsed:?}"
    );
}

#[tokio::test]
async fn idle_connections_and_half_sent_headers_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| {
        c.http.first_byte_timeout = Duration::from_millis(500);
        c.http.header_timeout = Duration::from_secs(1);
    })
    .await;
    let mut victims = Vec::new();
    for base in [&app.public, &app.internal] {
        for half in [
            &b""[..],
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            b"GET /.well-known/jwks.json HTT",
        ] {
            for _ in 0..10 {
                let mut conn = TcpStream::connect(addr(base)).await.unwrap();
                conn.write_all(half).await.unwrap();
                victims.push(conn);
            }
        }
    }
    // A keep-alive connection that made one request and then went quiet.
    let mut kept = TcpStream::connect(addr(&app.public)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Meanwhile a normal client is served.
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);

    let started = Instant::now();
    for conn in victims.iter_mut().chain([&mut kept]) {
        assert!(
            closed_within(conn, Duration::from_secs(4)).await,
            "a connection was still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_body_that_never_ends_is_answered_408_and_its_connection_closed() {
    let app = spawn_app_with(|c| c.http.body_timeout = Duration::from_secs(1)).await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    let mut stalled = Vec::new();
    for (path, bearer) in [
        ("/v1/tokens", api_key.as_str()),
        ("/admin/clients", ADMIN_TOKEN),
        ("/webhooks/idenfy", ""),
    ] {
        for _ in 0..5 {
            let mut conn = TcpStream::connect(addr(&app.internal)).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \
                 {bearer}\r\nContent-Type: application/json\r\nContent-Length: \
                 1000\r\n\r\n{{\"email\": "
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            stalled.push((path, conn));
        }
    }
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
    let started = Instant::now();
    for (path, conn) in &mut stalled {
        let answer = read_to_close(conn, Duration::from_secs(4)).await;
        if *path == "/webhooks/idenfy" {
            // Not configured here: refused before its body is read.
            assert!(answer.starts_with("HTTP/1.1 503"), "{path}: {answer}");
            continue;
        }
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("\"identifier\":\"BAD_VALUE\""), "{answer}");
        assert!(answer.contains("KEYHOST_HTTP_BODY_TIMEOUT"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // A normal request still works, on a fresh connection.
    let minted = app
        .mint(&api_key, serde_json::json!({"email": "u@example.com"}))
        .await;
    assert_eq!(minted.status(), 200);
}

/// Runs keyhost under a 128-file limit.
fn starved_keyhost(dir: &std::path::Path) -> Process {
    let mut env = base_env(dir);
    env.push(("KEYHOST_HTTP_FIRST_BYTE_TIMEOUT".into(), "30s".into()));
    env.push(("KEYHOST_HTTP_HEADER_TIMEOUT".into(), "30s".into()));
    Process::start(&env, &["bash", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
}

async fn all_served(http: &reqwest::Client, p: &Process) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for url in [
        format!("{}/.well-known/jwks.json", p.public),
        format!("{}/healthz", p.public),
        format!("{}/healthz", p.internal),
        format!("{}/admin/keys", p.internal),
    ] {
        let status = http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        out.push((url, status));
    }
    out
}

#[tokio::test]
async fn under_a_128_file_limit_idle_connections_on_one_listener_take_neither_listener_down() {
    let dir = tempfile::tempdir().unwrap();
    let process = starved_keyhost(dir.path());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let lowered = process.log().iter().any(|l| {
        l["message"]
            .as_str()
            .unwrap_or("")
            .contains("open-files limit")
    });
    assert!(
        lowered,
        "the lowered limits are logged: {:?}",
        process.log()
    );
    for target in [&process.public, &process.internal] {
        let mut idle = Vec::new();
        for _ in 0..150 {
            if let Ok(conn) = TcpStream::connect(addr(target)).await {
                idle.push(conn);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (url, status) in all_served(&http, &process).await {
            assert_eq!(status, 200, "{url} with 150 idle connections on {target}");
        }
        assert!(process.open_files() <= 128);
    }
}

#[tokio::test]
async fn stalled_bodies_cost_bounded_memory_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(dir.path());
    env.push(("KEYHOST_HTTP_BODY_TIMEOUT".into(), "2s".into()));
    env.push(("KEYHOST_INTERNAL_MAX_CONNECTIONS".into(), "200".into()));
    let process = Process::start(&env, &[]);
    let before = process.rss_kb();
    let mut stalled = Vec::new();
    for _ in 0..150 {
        let mut conn = TcpStream::connect(addr(&process.internal)).await.unwrap();
        let head = format!(
            "POST /admin/clients HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \
             {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&vec![b' '; 60_000]).await.unwrap();
        stalled.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = process.rss_kb();
    let http = reqwest::Client::new();
    for (url, status) in all_served(&http, &process).await {
        assert_eq!(status, 200, "{url} while 150 bodies stall");
    }
    for conn in &mut stalled {
        let answer = read_to_close(conn, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    eprintln!("RSS with 150 bodies stalled at 60 kB each: {before} kB before, {during} kB during");
    assert!(
        during < before + 64 * 1024,
        "memory stays bounded: {before} kB → {during} kB"
    );
}

async fn admin_keys_as(
    app: &crate::helpers::TestApp,
    token: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .http
        .get(format!("{}/admin/keys", app.internal))
        .bearer_auth(token);
    if let Some(xff) = forwarded_for {
        req = req.header("X-Forwarded-For", xff);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn guessing_the_admin_token_is_throttled_per_address_and_a_throttled_address_learns_nothing()
{
    let app = spawn_app_with(|c| c.http.auth_failure_limit = 5).await;
    let (_, api_key) = app.create_client(&["issue"]).await;
    for _ in 0..5 {
        let res = admin_keys_as(&app, "kha_guess", None).await;
        assert_eq!(res.status(), 401);
    }
    for token in ["kha_guess", ADMIN_TOKEN] {
        let res = admin_keys_as(&app, token, None).await;
        assert_eq!(res.status(), 429, "even the right token, while throttled");
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=13).contains(&retry), "{retry}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["identifier"], "TOO_MANY_REQUESTS");
    }
    // X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    let res = admin_keys_as(&app, ADMIN_TOKEN, Some("203.0.113.77")).await;
    assert_eq!(res.status(), 429);
    // API keys share the address's budget: a guesser cannot switch to guessing those...
    let res = app
        .mint(
            "khc_0123456789abcdef_guess",
            serde_json::json!({"email": "u@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 429);
    // ... but an app with a valid key on the same address is not locked out by its neighbour.
    let res = app
        .mint(&api_key, serde_json::json!({"email": "u@example.com"}))
        .await;
    assert_eq!(res.status(), 200);
    // The public listener (no credentials) is untouched.
    assert_eq!(app.jwks().await["keys"].as_array().unwrap().len(), 2);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "keyhost_auth_failures_total{kind=\"admin\"}"),
        5.0
    );
    assert!(
        metric(&metrics, "keyhost_auth_throttled_total") >= 4.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = spawn_app_with(|c| {
        c.http.auth_failure_limit = 3;
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for _ in 0..3 {
        // A client-written first hop is ignored: the proxy appended the real address.
        let res = admin_keys_as(&app, "wrong", Some("198.51.100.1, 203.0.113.9")).await;
        assert_eq!(res.status(), 401);
    }
    let res = admin_keys_as(&app, ADMIN_TOKEN, Some("10.9.9.9, 203.0.113.9")).await;
    assert_eq!(res.status(), 429, "203.0.113.9 spent its budget");
    let res = admin_keys_as(&app, ADMIN_TOKEN, Some("203.0.113.10")).await;
    assert_eq!(res.status(), 200, "another client behind the same proxy");
    let res = admin_keys_as(&app, ADMIN_TOKEN, None).await;
    assert_eq!(res.status(), 200, "the proxy itself");
}

#[tokio::test]
async fn a_flood_of_bad_credentials_writes_a_few_log_lines_not_one_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(dir.path());
    env.push(("KEYHOST_AUTH_FAILURE_LIMIT".into(), "10000".into()));
    let process = Process::start(&env, &[]);
    let http = reqwest::Client::new();
    for i in 0..300 {
        let res = http
            .get(format!("{}/admin/keys", process.internal))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    let metrics = http
        .get(format!("{}/metrics", process.internal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "keyhost_auth_failures_total{kind=\"admin\"}"),
        300.0
    );
    let lines = process
        .log()
        .iter()
        .filter(|l| l["message"] == "request with invalid credentials")
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines for 300 failures"
    );
}

/// The attacker's own address (any 127/8 address reaches loopback): a verifier does not share
/// an address with whoever floods it, and the server sheds per source.
const ATTACKER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// Keeps `n` connections from [`ATTACKER`] to `to` sending `head` and then nothing more (a
/// request whose headers or body never end), opening a new one whenever the server closes one,
/// until `stop`.
fn stalled_flood(
    to: SocketAddr,
    n: usize,
    head: &'static [u8],
    stop: watch::Receiver<bool>,
) -> Arc<AtomicUsize> {
    let opened = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let (opened, mut stop) = (opened.clone(), stop.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                let connected = async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::from((ATTACKER, 0)))?;
                    socket.connect(to).await
                };
                let Ok(mut conn) = connected.await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if conn.write_all(head).await.is_err() {
                    continue;
                }
                opened.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 256];
                tokio::select! {
                    _ = conn.read(&mut buf) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    opened
}

async fn served_during(http: &reqwest::Client, url: &str, bearer: &str, tries: usize) -> usize {
    let mut served = 0;
    for _ in 0..tries {
        let ok = http
            .get(url)
            .bearer_auth(bearer)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        served += usize::from(ok);
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bodies_that_never_end_cannot_keep_admins_from_the_internal_listener() {
    let app = spawn_app_with(|c| {
        c.http.internal_max_connections = 64;
        c.webhooks.idenfy_signing_key = Some("idenfy-test-signing-key".to_owned().into());
    })
    .await;
    let (stop, stopped) = watch::channel(false);
    // The webhook reads its body before it can check the signature: each of these holds a
    // request open until the body deadline.
    let opened = stalled_flood(
        addr(&app.internal),
        300,
        b"POST /webhooks/idenfy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 60000\r\n\r\n{\"final\": ",
        stopped,
    );
    crate::helpers::eventually(Duration::from_secs(20), "the flood got going", || async {
        opened.load(Ordering::Relaxed) > 400
    })
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let served = served_during(
        &http,
        &format!("{}/admin/keys", app.internal),
        ADMIN_TOKEN,
        20,
    )
    .await;
    let _ = stop.send(true);
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "keyhost_connections_shed_total{listener=\"internal\"}"
        ) > 0.0
    );
    assert_eq!(
        served, 20,
        "admin requests served while webhook bodies stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_connecting_during_a_churn_of_half_sent_requests_is_served() {
    let app = spawn_app_with(|c| c.http.public_max_connections = 64).await;
    let (stop, stopped) = watch::channel(false);
    let opened = stalled_flood(addr(&app.public), 300, b"G", stopped);
    crate::helpers::eventually(Duration::from_secs(20), "the flood got going", || async {
        opened.load(Ordering::Relaxed) > 400
    })
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let served = served_during(
        &http,
        &format!("{}/.well-known/jwks.json", app.public),
        "",
        20,
    )
    .await;
    let _ = stop.send(true);
    assert_eq!(served, 20, "JWKS fetches served during the churn");
}
