//! The PostgreSQL half of the suite: every server a test starts gets a schema of its own in the
//! database `TEST_POSTGRES_URL` names (default `postgres://postgres@127.0.0.1:5432/test`),
//! created for the test's directory and dropped when the test is done with it.
//!
//! Without a reachable PostgreSQL the half is skipped with a banner saying so, unless
//! `TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes that a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use keyhost::store::sql::Value;
use tokio_postgres::NoTls;

/// The server the PostgreSQL half runs against.
pub fn server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection of the tests' own (not keyhost's), waited on from any thread.
pub struct Raw {
    client: tokio_postgres::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // Dropped from async tests too, where a runtime may not block to shut down.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Raw {
    /// Connects to `url`; the error says why not.
    pub fn connect(url: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let url = url.to_owned();
        let connected = futures_executor::block_on(runtime.spawn(async move {
            let (client, connection) =
                tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Ok::<_, String>(client)
        }))
        .map_err(|e| e.to_string())??;
        Ok(Self {
            client: connected,
            runtime: Some(runtime),
        })
    }

    /// Runs statements (no parameters).
    pub fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        futures_executor::block_on(self.client.batch_execute(sql))
    }

    /// Runs one statement with `?N` placeholders; the rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, tokio_postgres::Error> {
        let sql = dollars(sql);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        futures_executor::block_on(self.client.execute(&sql, &params))
    }

    /// The rows of a query with `?N` placeholders.
    pub fn query(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let sql = dollars(sql);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        futures_executor::block_on(self.client.query(&sql, &params))
    }
}

fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// The tests' administrative connection: it creates and drops the schemas. On first use it
/// checks that PostgreSQL answers, skipping the whole half (or failing, where it is required)
/// when it does not.
fn admin() -> &'static Mutex<Raw> {
    static ADMIN: OnceLock<Mutex<Raw>> = OnceLock::new();
    ADMIN.get_or_init(|| match Raw::connect(&server_url()) {
        Ok(raw) => {
            sweep(&raw);
            Mutex::new(raw)
        }
        Err(why) => {
            let required = std::env::var("TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            let banner = format!(
                "\n==========\nPostgreSQL half of the API suite SKIPPED: cannot reach {} ({why}).\n\
                 Start PostgreSQL 14+ there, or point TEST_POSTGRES_URL at one, to run it.\n\
                 ==========\n",
                redact(&server_url())
            );
            if required {
                panic!("{banner}TEST_REQUIRE_POSTGRES=1: failing instead of skipping");
            }
            eprintln!("{banner}");
            // Every test of this half needs the database: none of them can run.
            std::process::exit(0);
        }
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Drops the schemas of earlier runs whose test directory is gone (a test that panicked, a run
/// that was killed).
fn sweep(raw: &Raw) {
    let Ok(rows) = raw.query(
        "SELECT n.nspname, obj_description(n.oid, 'pg_namespace') FROM pg_namespace n
         WHERE n.nspname LIKE 'keyhost_test_%'",
        &[],
    ) else {
        return;
    };
    for row in rows {
        let (schema, dir): (String, Option<String>) = (row.get(0), row.get(1));
        if dir.is_none_or(|d| !Path::new(&d).exists()) {
            let _ = raw.batch(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
        }
    }
}

fn schemas() -> &'static Mutex<HashMap<PathBuf, String>> {
    static SCHEMAS: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    SCHEMAS.get_or_init(Default::default)
}

/// The schema of the test directory `dir`, created on first use.
pub fn schema_for(dir: &Path) -> String {
    let admin = admin();
    let mut schemas = schemas().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(schema) = schemas.get(dir) {
        return schema.clone();
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let schema = format!(
        "keyhost_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let raw = admin.lock().unwrap_or_else(|p| p.into_inner());
    raw.batch(&format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";
         COMMENT ON SCHEMA \"{schema}\" IS '{}'",
        dir.display().to_string().replace('\'', "''")
    ))
    .unwrap_or_else(|e| panic!("creating the test schema {schema}: {e}"));
    schemas.insert(dir.to_owned(), schema.clone());
    schema
}

/// The URL of `dir`'s schema (its search path).
pub fn url_for(dir: &Path) -> String {
    let schema = schema_for(dir);
    let base = server_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Drops `dir`'s schema, if it has one.
pub fn drop_schema(dir: &Path) {
    let Some(schema) = schemas()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(dir)
    else {
        return;
    };
    let raw = admin().lock().unwrap_or_else(|p| p.into_inner());
    // A server still stopping may hold a lock for a moment; a schema left behind is swept by a
    // later run.
    let _ = raw.batch(&format!(
        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; RESET lock_timeout"
    ));
}

/// A connection to `dir`'s schema, for tests that inspect or tamper with the store.
pub fn raw_for(dir: &Path) -> Raw {
    Raw::connect(&url_for(dir)).expect("connects to the test schema")
}
