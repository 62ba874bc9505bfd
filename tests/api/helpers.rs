//! Starting a real keyhost on random loopback ports with a temporary data directory and a manual
//! clock, and talking HTTP to it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyhost::clock::{Clock, ManualClock};
use keyhost::config::Config;
use keyhost::http::AppState;
use keyhost::startup::Application;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The store engine a test binary runs its servers on: `tests/api` on SQLite,
/// `tests/api_postgres` (the same tests) on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded SQLite file in the test's directory.
    Sqlite,
    /// A schema of its own in the test PostgreSQL database.
    Postgres,
}

/// Whether this binary's servers run on PostgreSQL.
pub fn on_postgres() -> bool {
    crate::ENGINE == Engine::Postgres
}

/// Ends a test that only means something on SQLite (its file, its lock, its migrations), saying
/// so, when the servers run on PostgreSQL.
#[macro_export]
macro_rules! sqlite_only {
    ($why:expr) => {
        if $crate::helpers::on_postgres() {
            eprintln!("not run on PostgreSQL: {}", $why);
            return;
        }
    };
}

/// Ends a test that only means something on PostgreSQL (several servers on one database),
/// saying so, when the servers run on SQLite.
#[macro_export]
macro_rules! postgres_only {
    ($why:expr) => {
        if !$crate::helpers::on_postgres() {
            eprintln!("not run on SQLite: {}", $why);
            return;
        }
    };
}

/// The environment a keyhost process needs, beside its directories, to reach the test's store.
pub fn store_env(dir: &Path) -> Vec<(String, String)> {
    if on_postgres() {
        vec![("KEYHOST_DATABASE_URL".to_owned(), crate::pg::url_for(dir))]
    } else {
        Vec::new()
    }
}

/// A connection of the test's own to a test store, to inspect it or tamper with it behind
/// keyhost's back, on either engine. Statements use `?N` placeholders.
pub enum RawDb {
    /// The SQLite file.
    Sqlite(rusqlite::Connection),
    /// The test's PostgreSQL schema.
    Postgres(crate::pg::Raw),
}

impl RawDb {
    /// Opens the store of the test directory `dir`.
    pub fn open(dir: &Path) -> Self {
        if on_postgres() {
            RawDb::Postgres(crate::pg::raw_for(dir))
        } else {
            RawDb::Sqlite(rusqlite::Connection::open(dir.join("data/keyhost.db")).unwrap())
        }
    }

    /// Runs statements without parameters.
    pub fn batch(&self, sql: &str) {
        match self {
            RawDb::Sqlite(c) => c.execute_batch(sql).unwrap(),
            RawDb::Postgres(c) => c.batch(sql).unwrap(),
        }
    }

    /// Runs one statement; the rows it changed, or its error as text.
    pub fn try_execute(
        &self,
        sql: &str,
        params: &[keyhost::store::sql::Value],
    ) -> Result<u64, String> {
        match self {
            RawDb::Sqlite(c) => c
                .execute(sql, rusqlite::params_from_iter(params))
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            RawDb::Postgres(c) => c.execute(sql, params).map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
            }),
        }
    }

    /// Runs one statement that must succeed; the rows it changed.
    pub fn execute(&self, sql: &str, params: &[keyhost::store::sql::Value]) -> u64 {
        self.try_execute(sql, params)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The integer in the first column of the first row.
    pub fn query_i64(&self, sql: &str, params: &[keyhost::store::sql::Value]) -> i64 {
        match self {
            RawDb::Sqlite(c) => c
                .query_row(sql, rusqlite::params_from_iter(params), |r| r.get(0))
                .unwrap(),
            RawDb::Postgres(c) => c.query(sql, params).unwrap()[0].get(0),
        }
    }

    /// The text in the first column of the first row, if there is a row.
    pub fn try_query_string(
        &self,
        sql: &str,
        params: &[keyhost::store::sql::Value],
    ) -> Option<String> {
        match self {
            RawDb::Sqlite(c) => c
                .query_row(sql, rusqlite::params_from_iter(params), |r| r.get(0))
                .ok(),
            RawDb::Postgres(c) => c.query(sql, params).ok()?.first().map(|r| r.get(0)),
        }
    }

    /// The text in the first column of the first row.
    pub fn query_string(&self, sql: &str, params: &[keyhost::store::sql::Value]) -> String {
        match self {
            RawDb::Sqlite(c) => c
                .query_row(sql, rusqlite::params_from_iter(params), |r| r.get(0))
                .unwrap(),
            RawDb::Postgres(c) => c.query(sql, params).unwrap()[0].get(0),
        }
    }

    /// The bytes in the first column of the first row.
    pub fn query_bytes(&self, sql: &str, params: &[keyhost::store::sql::Value]) -> Vec<u8> {
        match self.query_rows(sql, params).first().and_then(|r| r.first()) {
            Some(keyhost::store::sql::Value::Blob(b)) => b.clone(),
            other => panic!("{sql}: bytes expected, got {other:?}"),
        }
    }

    /// Every row of a query, each as its column values. Only integers, text and bytes (and
    /// NULL) are read: what keyhost stores.
    pub fn query_rows(
        &self,
        sql: &str,
        params: &[keyhost::store::sql::Value],
    ) -> Vec<Vec<keyhost::store::sql::Value>> {
        use keyhost::store::sql::Value;
        match self {
            RawDb::Sqlite(c) => {
                let mut stmt = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = stmt.column_count();
                stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    (0..columns)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Value::Null,
                                rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
                                // keyhost stores no REAL; a tampered one reads as its text.
                                rusqlite::types::ValueRef::Real(f) => Value::Text(f.to_string()),
                                rusqlite::types::ValueRef::Text(t) => {
                                    Value::Text(String::from_utf8_lossy(t).into_owned())
                                }
                                rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                            })
                        })
                        .collect()
                })
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            RawDb::Postgres(c) => {
                use tokio_postgres::types::Type;
                let rows = c
                    .query(sql, params)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter()
                    .map(|r| {
                        r.columns()
                            .iter()
                            .enumerate()
                            .map(|(i, column)| {
                                let ty = column.type_();
                                let v = if *ty == Type::INT8 {
                                    r.get::<_, Option<i64>>(i).map(Value::Int)
                                } else if *ty == Type::INT4 {
                                    r.get::<_, Option<i32>>(i).map(|v| Value::Int(v.into()))
                                } else if *ty == Type::INT2 {
                                    r.get::<_, Option<i16>>(i).map(|v| Value::Int(v.into()))
                                } else if *ty == Type::BOOL {
                                    r.get::<_, Option<bool>>(i).map(|v| Value::Int(v.into()))
                                } else if *ty == Type::BYTEA {
                                    r.get::<_, Option<Vec<u8>>>(i).map(Value::Blob)
                                } else {
                                    r.get::<_, Option<String>>(i).map(Value::Text)
                                };
                                v.unwrap_or(Value::Null)
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The store's tables (keyhost's, and on PostgreSQL its migration record).
    pub fn tables(&self) -> Vec<String> {
        let sql = match self {
            RawDb::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 ORDER BY name"
            }
            RawDb::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 ORDER BY table_name"
            }
        };
        self.query_rows(sql, &[])
            .into_iter()
            .map(|r| match &r[0] {
                keyhost::store::sql::Value::Text(t) => t.clone(),
                other => panic!("table name {other:?}"),
            })
            .collect()
    }

    /// Every row of every table, table by table, the rows of each in a fixed order (what a
    /// backup of the store holds, as values). Columns of other types than keyhost's (the
    /// migration record's time on PostgreSQL) read as their text.
    pub fn dump(&self) -> Vec<(String, Vec<Vec<keyhost::store::sql::Value>>)> {
        self.tables()
            .into_iter()
            .map(|table| {
                let columns = match self {
                    RawDb::Sqlite(_) => "*".to_owned(),
                    RawDb::Postgres(_) => self
                        .query_rows(
                            "SELECT CASE WHEN data_type IN ('bigint', 'integer', 'smallint', \
                             'boolean', 'bytea', 'text') THEN quote_ident(column_name) \
                             ELSE quote_ident(column_name) || '::text' END \
                             FROM information_schema.columns \
                             WHERE table_schema = current_schema() AND table_name::text = ?1 \
                             ORDER BY ordinal_position",
                            &[keyhost::store::sql::Value::Text(table.clone())],
                        )
                        .into_iter()
                        .map(|r| match &r[0] {
                            keyhost::store::sql::Value::Text(t) => t.clone(),
                            other => panic!("column {other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let mut rows = self.query_rows(&format!("SELECT {columns} FROM \"{table}\""), &[]);
                rows.sort_by_cached_key(|r| format!("{r:?}"));
                (table, rows)
            })
            .collect()
    }

    /// Runs one statement that writes `table` with the schema's CHECK constraints switched off
    /// for it alone (a row keyhost would never write); they hold again for every later write.
    /// SQLite: `PRAGMA ignore_check_constraints` around it. PostgreSQL, which cannot switch
    /// them off: in one transaction, the table's checks are dropped, the statement runs, and
    /// each check is added back `NOT VALID` (enforced from then on, not on the rows already
    /// there).
    pub fn execute_unchecked(
        &self,
        table: &str,
        sql: &str,
        params: &[keyhost::store::sql::Value],
    ) -> u64 {
        match self {
            RawDb::Sqlite(_) => {
                self.batch("PRAGMA ignore_check_constraints = 1");
                let changed = self.try_execute(sql, params);
                self.batch("PRAGMA ignore_check_constraints = 0");
                changed.unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            RawDb::Postgres(c) => {
                c.batch("BEGIN").unwrap();
                let checks: Vec<(String, String)> = c
                    .query(
                        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                         WHERE conrelid = ?1::text::regclass AND contype = 'c' ORDER BY conname",
                        &[keyhost::store::sql::Value::Text(table.to_owned())],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                assert!(!checks.is_empty(), "{table} has no CHECK constraint");
                for (name, _) in &checks {
                    c.batch(&format!(
                        "ALTER TABLE \"{table}\" DROP CONSTRAINT \"{name}\""
                    ))
                    .unwrap();
                }
                let changed = self.execute(sql, params);
                for (name, definition) in &checks {
                    c.batch(&format!(
                        "ALTER TABLE \"{table}\" ADD CONSTRAINT \"{name}\" {definition} NOT VALID"
                    ))
                    .unwrap();
                }
                c.batch("COMMIT").unwrap();
                changed
            }
        }
    }
}

/// Everything the test store of `dir` holds, as bytes, for looking for what must never be
/// stored and for telling whether anything changed. SQLite: the database file and its
/// write-ahead log (which may be absent after a checkpoint). PostgreSQL: every value of every
/// row of every table of the test's schema ([`RawDb::dump`]), integers in decimal. A store
/// that does not exist fails the test rather than making every "not in the database" check
/// vacuous.
pub fn stored_bytes(dir: &Path) -> Vec<u8> {
    if !on_postgres() {
        let db = dir.join("data/keyhost.db");
        let mut bytes = std::fs::read(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
        assert!(!bytes.is_empty(), "{} is empty", db.display());
        if let Ok(wal) = std::fs::read(dir.join("data/keyhost.db-wal")) {
            bytes.extend(wal);
        }
        return bytes;
    }
    let dump = RawDb::open(dir).dump();
    assert!(
        dump.iter()
            .any(|(table, rows)| table == "keys" && !rows.is_empty()),
        "the test schema holds no keys: {dump:?}"
    );
    let mut bytes = Vec::new();
    for (table, rows) in dump {
        bytes.extend_from_slice(table.as_bytes());
        for value in rows.into_iter().flatten() {
            bytes.push(0);
            match value {
                keyhost::store::sql::Value::Null => bytes.extend_from_slice(b"NULL"),
                keyhost::store::sql::Value::Int(i) => bytes.extend(i.to_string().into_bytes()),
                keyhost::store::sql::Value::Text(t) => bytes.extend(t.into_bytes()),
                keyhost::store::sql::Value::Blob(b) => bytes.extend(b),
            }
        }
        bytes.push(b'\n');
    }
    bytes
}

/// Drops the PostgreSQL schema of a test directory that no [`TestApp`] owns (one whose keyhost
/// runs as processes, or as CLI commands) when the test is done with it, panicking or not.
pub struct StoreCleanup<'a>(pub &'a Path);

impl Drop for StoreCleanup<'_> {
    fn drop(&mut self) {
        if on_postgres() {
            crate::pg::drop_schema(self.0);
        }
    }
}

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-not-for-production";
/// The partner id every test server uses.
pub const PARTNER_ID: &str = "partner-test-0001";
/// A fixed starting time, so that tests do not depend on the wall clock.
pub const T0: i64 = 1_800_000_000;

/// A running server.
pub struct TestApp {
    /// Base URL of the public listener.
    pub public: String,
    /// Base URL of the internal listener.
    pub internal: String,
    /// The clock the server reads.
    pub clock: Arc<ManualClock>,
    /// Shared state, to drive the lifecycle.
    pub state: AppState,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The temporary root (data and keys directories).
    pub dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests start from: everything under `dir`, ephemeral ports.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        admin_token: Some(ADMIN_TOKEN.to_owned().into()),
        ..Config::rooted_at(dir)
    };
    config.tokens.partner_id = Some(PARTNER_ID.into());
    if on_postgres() {
        config.database.url = Some(crate::pg::url_for(dir).into());
        config.database.pool_size = 4;
    }
    config
}

/// Connection bounds with the default timers and `max_connections`, for servers built by hand.
pub fn bounds(max_connections: usize) -> keyhost::http::serve::Bounds {
    let c = Config::default();
    keyhost::http::serve::Bounds {
        max_connections,
        first_byte_timeout: c.http.first_byte_timeout,
        header_timeout: c.http.header_timeout,
        tls_handshake: c.tls.handshake_timeout,
    }
}

/// Starts a server with the default test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after `tweak` has adjusted the configuration.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let clock = ManualClock::new(T0);
    let mut config = test_config(dir.path());
    tweak(&mut config);
    start(dir, clock, config).await.expect("server starts")
}

/// Starts a server whose manual clock starts at the real time, for tests whose other party (the
/// AIR Kit emulator) checks `exp` against the wall clock: a fixed past or future start would make
/// them fail once the real date passes it.
pub async fn spawn_app_at_wall_clock() -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let config = test_config(dir.path());
    start(dir, ManualClock::starting_now(), config)
        .await
        .expect("server starts")
}

/// Starts a server on an existing directory and clock.
pub async fn start(
    dir: Arc<TempDir>,
    clock: Arc<ManualClock>,
    config: Config,
) -> anyhow::Result<TestApp> {
    let app = Application::build_with_clock(config, clock.clone() as Arc<dyn Clock>).await?;
    let public = format!("http://{}", app.public_addr());
    let internal = format!("http://{}", app.internal_addr());
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    Ok(TestApp {
        public,
        internal,
        clock,
        state,
        http: reqwest::Client::new(),
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The last holder of the directory is done with its store.
        if on_postgres() && Arc::strong_count(&self.dir) == 1 {
            crate::pg::drop_schema(self.dir.path());
        }
    }
}

impl TestApp {
    /// Stops the server and hands back its directory and clock for a restart.
    pub async fn stop(mut self) -> (Arc<TempDir>, Arc<ManualClock>) {
        let _ = self.shutdown.take().expect("running").send(());
        self.handle
            .take()
            .expect("running")
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        (self.dir.clone(), self.clock.clone())
    }

    /// Applies every due lifecycle transition and refreshes the server's views.
    pub async fn settle(&self) {
        self.state
            .lifecycle
            .settle("scheduler")
            .await
            .expect("lifecycle round");
    }

    /// Moves the clock and lets the lifecycle catch up.
    pub async fn advance(&self, seconds: i64) {
        self.clock.advance(seconds);
        self.settle().await;
    }

    /// The current time of the server.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// `GET /.well-known/jwks.json` as JSON.
    pub async fn jwks(&self) -> Value {
        let res = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.public))
            .send()
            .await
            .expect("JWKS request");
        assert_eq!(res.status(), 200);
        res.json().await.expect("JWKS is JSON")
    }

    /// The OpenAPI document the internal listener serves.
    pub async fn openapi(&self) -> Value {
        let res = self
            .http
            .get(format!("{}/openapi.json", self.internal))
            .send()
            .await
            .expect("OpenAPI request");
        assert_eq!(res.status(), 200);
        res.json().await.expect("OpenAPI is JSON")
    }

    /// An admin GET that must succeed, as JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let res = self.admin_get(path).await;
        assert!(res.status().is_success(), "GET {path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// An authenticated admin GET.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.internal))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request")
    }

    /// An authenticated admin POST with a JSON body.
    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.internal))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin request")
    }

    /// Creates a client with `scopes`; returns (id, api key).
    pub async fn create_client(&self, scopes: &[&str]) -> (String, String) {
        let res = self
            .admin_post(
                "/admin/clients",
                json!({"name": "test app", "scopes": scopes}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["apiKey"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /v1/tokens` with `api_key` and `body`.
    pub async fn mint(&self, api_key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/tokens", self.internal))
            .bearer_auth(api_key)
            .json(&body)
            .send()
            .await
            .expect("token request")
    }

    /// Mints a token that must succeed; returns the response body.
    pub async fn mint_ok(&self, api_key: &str, body: Value) -> Value {
        let res = self.mint(api_key, body).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.internal))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    /// Every key as the admin API lists it.
    pub async fn keys(&self) -> Vec<Value> {
        let body: Value = self.admin_json("/admin/keys").await;
        body["keys"].as_array().unwrap().clone()
    }

    /// Rotates the `alg` key (an emergency rotation if `emergency`) and returns the answer.
    pub async fn rotate(&self, alg: &str, emergency: bool) -> Value {
        let res = self
            .admin_post(
                "/admin/keys/rotate",
                json!({"alg": alg, "emergency": emergency}),
            )
            .await;
        assert_eq!(res.status(), 201, "rotating {alg}");
        res.json().await.unwrap()
    }

    /// Kids of keys in `state`.
    pub async fn kids_in(&self, state: &str) -> Vec<String> {
        self.keys()
            .await
            .iter()
            .filter(|k| k["state"] == state)
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Members that must never appear in a published JWK (RFC 7517/7518 private and symmetric).
pub const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Fails if any JWKS entry carries a private member or lacks a public one.
pub fn assert_public_only(jwks: &Value) {
    for key in jwks["keys"].as_array().expect("keys array") {
        let obj = key.as_object().unwrap();
        for m in PRIVATE_MEMBERS {
            assert!(
                !obj.contains_key(*m),
                "JWKS entry carries private member {m}: {key}"
            );
        }
        assert_eq!(key["use"], "sig");
        match key["kty"].as_str().unwrap() {
            "EC" => {
                assert_eq!(key["alg"], "ES256");
                assert_eq!(key["crv"], "P-256");
                assert!(key["x"].is_string() && key["y"].is_string());
            }
            "RSA" => {
                assert_eq!(key["alg"], "RS256");
                assert!(key["n"].is_string() && key["e"].is_string());
            }
            other => panic!("unexpected kty {other}"),
        }
    }
}

/// Verifies `token` against `jwks` the way a relying party would, with jsonwebtoken and the
/// public JWK only (not keyhost's signer); `now` is the verifier's clock. Returns the claims.
pub fn verify(token: &str, jwks: &Value, now: i64) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    if header.typ.as_deref() != Some("JWT") {
        return Err("missing typ: JWT".into());
    }
    let kid = header.kid.ok_or("no kid")?;
    let entry = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid not found: {kid}"))?;
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("jwk: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("decoding key: {e}"))?;
    let alg = match entry["alg"].as_str() {
        Some("ES256") => Algorithm::ES256,
        Some("RS256") => Algorithm::RS256,
        other => return Err(format!("alg {other:?}")),
    };
    if header.alg != alg {
        return Err("alg does not match the key".into());
    }
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| format!("signature: {e}"))?;
    let claims = data.claims;
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if exp <= now {
        return Err(format!("expired at {exp}, now {now}"));
    }
    for c in ["partnerId", "scope", "email", "iat", "jti"] {
        if claims.get(c).is_none() {
            return Err(format!("missing claim {c}"));
        }
    }
    Ok(claims)
}

/// Polls `check` every 50 ms until it holds; fails with `what` after `limit`. For effects that a
/// background task or another process produces in real time.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A hostile server on loopback that answers every request `200 OK` with a body that never ends,
/// written as fast as the client reads it, and counts what it sent.
///
/// It speaks HTTP/1.1 over a raw socket: an axum streaming body would need a `Stream`
/// implementation, that is one more crate, and on the wire this is the same thing (a response
/// without `Content-Length`, delimited by the connection's close, which never comes).
pub struct EndlessServer {
    /// Base URL, `http://127.0.0.1:PORT`; every path gets the endless answer.
    pub url: String,
    /// Body bytes written so far, over all connections.
    pub served: Arc<AtomicU64>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

/// Starts an [`EndlessServer`] whose body opens with `prefix` and then repeats `filler`.
pub async fn endless_server(prefix: &'static str, filler: &'static str) -> EndlessServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (total, count) = (served.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let total = total.clone();
            tokio::spawn(async move {
                if read_head(&stream).await.is_err() {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: \
                            close\r\n\r\n";
                if write_all(&stream, head.as_bytes()).await.is_err()
                    || write_all(&stream, prefix.as_bytes()).await.is_err()
                {
                    return;
                }
                let chunk = filler.repeat((64 * 1024 / filler.len().max(1)).max(1));
                while write_all(&stream, chunk.as_bytes()).await.is_ok() {
                    total.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    EndlessServer {
        url,
        served,
        connections,
    }
}

/// Reads a request up to the end of its head (a body, if any, is left unread: the answer does
/// not depend on it). Answering before the request is read makes the client give up on the
/// exchange.
async fn read_head(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` (keyhost does not enable tokio's `io-util`, which has `write_all`).
async fn write_all(stream: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// This process's resident memory (`VmRSS`) in bytes; `None` where `/proc` is not Linux's.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples [`resident_bytes`] every 2 ms on its own thread (so that a busy runtime cannot hide
/// a peak) until stopped; reports the largest growth over the start.
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl RssWatch {
    /// Starts sampling.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = resident_bytes()?;
            let mut peak = start;
            while !flag.load(Ordering::SeqCst) {
                peak = peak.max(resident_bytes()?);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Some(peak.saturating_sub(start))
        });
        Self { stop, thread }
    }

    /// Stops sampling; the peak growth in bytes (`None` without Linux's `/proc`).
    pub fn stop(self) -> Option<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().ok().flatten()
    }
}
