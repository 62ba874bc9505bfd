//! The shared engine: PostgreSQL (14 or newer), for several replicas on one database.
//!
//! - **Driver**: tokio-postgres with a deadpool pool, TLS by rustls (aws-lc-rs). Store operations
//!   are synchronous functions on blocking threads (as on SQLite), so the pool and the
//!   connections' tasks live on a small runtime of the store's own; an operation waits for its
//!   answer on its blocking thread. A request's async path never waits on this engine: the JWKS
//!   and the signers are served from memory.
//! - **Transactions**: writes take `pg_advisory_xact_lock(…, 1)` first, so writers on every
//!   replica are serialised as SQLite's `BEGIN IMMEDIATE` serialises them, and a service's
//!   read-decide-write means the same on both engines. Reads are `REPEATABLE READ` snapshots.
//!   Each statement that writes runs under a savepoint, so a constraint it violates undoes that
//!   statement only (SQLite's behaviour, which the webhook de-duplication relies on).
//! - **Changes**: a write transaction that changed keys, clients or settings sends
//!   `NOTIFY keyhost_changes, '<schema>:<topic>'` as it commits; every replica LISTENs on a
//!   connection of its own (reconnected when it drops; each reconnection counts as a change, so a
//!   notification lost meanwhile is made up by a full re-read).
//! - **Migrations** (`migrations/postgres/`) run at open in one transaction under an advisory
//!   lock, so replicas starting together migrate once; a schema newer than the binary is refused.
//! - Lock keys and notifications are scoped to the schema (`current_schema()`), so several
//!   keyhost stores can share one database in separate schemas (the tests do).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};
use tokio::sync::Notify;
use tokio_postgres_rustls::MakeRustlsConnect;

mod tls;

use self::tls::{Tls, parse_url, tls_config};
use super::sql::{Row, Value, dollar_placeholders};
use super::{StoreError, Topic};

/// The PostgreSQL migrations, in order; the schema's version is how many have been applied.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../../migrations/postgres/0001_initial.sql"),
    ),
    (
        "0002_admins",
        include_str!("../../../migrations/postgres/0002_admins.sql"),
    ),
    (
        "0003_audit_chain",
        include_str!("../../../migrations/postgres/0003_audit_chain.sql"),
    ),
    (
        "0004_personal_data",
        include_str!("../../../migrations/postgres/0004_personal_data.sql"),
    ),
    (
        "0005_verifiers",
        include_str!("../../../migrations/postgres/0005_verifiers.sql"),
    ),
];

/// The channel every replica listens on; payloads are `<schema>:<topic>`.
const CHANNEL: &str = "keyhost_changes";

/// Advisory lock numbers (the other half of each key is the schema's hash).
const LOCK_WRITE: i32 = 1;
const LOCK_MIGRATE: i32 = 7;

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://…` URL (or libpq key=value string), credentials included.
    pub url: String,
    /// PEM file of the certificate authorities to trust for the server's certificate
    /// (`sslmode=verify-ca`/`verify-full`; the URL's `sslrootcert` names one too).
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"[redacted]")
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Names a tokio-postgres error the way an operator can act on it.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(crate) fn is_constraint(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code().code().starts_with("23"))
}

/// An open PostgreSQL store.
pub(super) struct Postgres {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    location: String,
    changes: Arc<AtomicI64>,
    changed: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    instance: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// This process's id among the servers of a store: its pid, a random part and its host, within
/// the 63 bytes of a PostgreSQL application name.
fn instance_id() -> String {
    let mut r = [0u8; 6];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut r);
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let mut id = format!("{}/{}@{host}", std::process::id(), hex::encode(r));
    while id.len() > 63 {
        id.pop();
    }
    id
}

/// Waits on the current (blocking) thread for a future that needs no runtime of its own (a
/// pooled client's request: its connection's task runs on the store's runtime).
fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

impl Postgres {
    pub(super) fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let parsed = parse_url(&options.url)?;
        let ca = options.ca_file.clone().or(parsed.root_cert.clone());
        let tls = MakeRustlsConnect::new(tls_config(parsed.tls, ca.as_ref())?);
        let mut config = parsed.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A peer that vanishes (a cut network) is noticed within seconds, not hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        // Every connection carries this server's id as its application name: while any is
        // open, `pg_stat_activity` shows the server alive (see `store::replicas`).
        let instance = instance_id();
        config.application_name(&instance);
        // A session that holds the writers' lock and goes quiet (its server frozen or cut off
        // mid-transaction) must not stall every other replica's writes for long.
        let session = format!(
            "{} -c idle_in_transaction_session_timeout=10000",
            config.get_options().unwrap_or_default()
        );
        config.options(session.trim());
        let loopback = config.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => true,
        });
        if !loopback
            && matches!(parsed.tls, Tls::Disable | Tls::Prefer | Tls::Require)
            && ca.is_none()
        {
            tracing::warn!(
                sslmode = ?parsed.tls,
                "the database server is not authenticated (sslmode is not verify-full): anyone \
                 between keyhost and it could pose as it; use sslmode=verify-full"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyhost-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("starting the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _entered = handle.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(2))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(10)))
                .create_timeout(Some(Duration::from_secs(5)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        };
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let mut store = Self {
            pool,
            runtime: Some(runtime),
            handle,
            location: format!(
                "postgres://{host}:{port}/{}",
                config.get_dbname().unwrap_or("")
            ),
            changes: Arc::new(AtomicI64::new(0)),
            changed: Arc::new(Notify::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            instance,
        };
        let schema = store.migrate()?;
        store.location = format!("{} (schema {schema})", store.location);
        store.listen(config, tls, schema);
        Ok(store)
    }

    pub(super) fn location(&self) -> String {
        self.location.clone()
    }

    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    /// A pooled connection.
    fn client(&self) -> Result<Object, StoreError> {
        let pool = self.pool.clone();
        match wait(self.handle.spawn(async move { pool.get().await })) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(deadpool_postgres::PoolError::Backend(e))) => Err(e.into()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(e) => Err(StoreError::Interrupted(e.to_string())),
        }
    }

    /// Applies the migrations this schema lacks; its name.
    fn migrate(&self) -> Result<String, StoreError> {
        let client = self.client()?;
        let version: i32 = wait(client.query_one("SHOW server_version_num", &[]))?
            .get::<_, String>(0)
            .parse()
            .unwrap_or(0);
        if version < 140000 {
            return Err(StoreError::Migrate(format!(
                "PostgreSQL {} is too old; keyhost needs 14 or newer",
                version / 10000
            )));
        }
        let schema: Option<String> = wait(client.query_one("SELECT current_schema()", &[]))?.get(0);
        let Some(schema) = schema else {
            return Err(StoreError::Migrate(
                "the connection has no current schema (its search_path names none that exists); \
                 create the schema or fix the search_path"
                    .to_owned(),
            ));
        };
        wait(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext(current_schema()), {LOCK_MIGRATE});
             CREATE TABLE IF NOT EXISTS keyhost_schema (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        )))?;
        let result = (|| {
            let found: i32 = wait(
                client.query_one("SELECT COALESCE(MAX(version), 0) FROM keyhost_schema", &[]),
            )?
            .get(0);
            let found = usize::try_from(found).unwrap_or(0);
            if found > MIGRATIONS.len() {
                return Err(StoreError::TooNew {
                    location: format!("{} (schema {schema})", self.location),
                    found,
                    known: MIGRATIONS.len(),
                });
            }
            for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found) {
                wait(client.batch_execute(sql))
                    .map_err(|e| StoreError::Migrate(format!("{name}: {}", describe(&e))))?;
                wait(client.execute(
                    "INSERT INTO keyhost_schema (version, name) VALUES ($1, $2)",
                    &[&(i as i32 + 1), name],
                ))?;
                tracing::info!(migration = name, schema = %schema, "applied a database migration");
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                wait(client.batch_execute("COMMIT"))?;
                Ok(schema)
            }
            Err(e) => {
                let _ = wait(client.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }

    /// LISTENs for other replicas' changes on a connection of its own, for as long as the store
    /// is open.
    fn listen(&self, config: tokio_postgres::Config, tls: MakeRustlsConnect, schema: String) {
        let (changes, changed, stopping) = (
            self.changes.clone(),
            self.changed.clone(),
            self.stopping.clone(),
        );
        let prefix = format!("{schema}:");
        let mut first = true;
        let mut warned = false;
        self.handle.spawn(async move {
            while !stopping.load(Ordering::SeqCst) {
                match config.connect(tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            loop {
                                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                        let _ = tx.send(n.payload().to_owned());
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => break,
                                }
                            }
                        });
                        if client
                            .batch_execute(&format!("LISTEN {CHANNEL}"))
                            .await
                            .is_ok()
                        {
                            warned = false;
                            // Whatever was missed while not listening is re-read in full.
                            if !first {
                                changes.fetch_add(1, Ordering::SeqCst);
                                changed.notify_one();
                            }
                            while let Some(payload) = rx.recv().await {
                                if payload.starts_with(&prefix) {
                                    changes.fetch_add(1, Ordering::SeqCst);
                                    changed.notify_one();
                                }
                            }
                        }
                        driver.abort();
                        drop(client);
                        tracing::warn!("lost the database connection that listens for changes");
                    }
                    Err(e) => {
                        // Once per outage: the periodic re-read keeps the views current meanwhile.
                        if !first && !warned {
                            tracing::warn!(
                                error = %describe(&e),
                                "cannot listen for changes from other replicas; re-reading every \
                                 refresh interval until the connection is back"
                            );
                            warned = true;
                        }
                    }
                }
                first = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    pub(super) fn changes(&self) -> i64 {
        self.changes.load(Ordering::SeqCst)
    }

    pub(super) async fn changed(&self) {
        self.changed.notified().await
    }

    pub(super) fn ping(&self) -> bool {
        self.client()
            .and_then(|c| Ok(wait(c.simple_query("SELECT 1"))?))
            .is_ok()
    }

    #[cfg(test)]
    pub(super) fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(wait(self.client()?.batch_execute(sql))?)
    }

    /// Runs `f` in a transaction: committed (with its announcements) if it returns `Ok`,
    /// rolled back otherwise, or if it panics.
    pub(super) fn transact<R, E: From<StoreError>>(
        &self,
        write: bool,
        f: impl FnOnce(&PgTx) -> Result<(R, Vec<Topic>), E>,
    ) -> Result<R, E> {
        let begin = if write {
            format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '5s';
                 SELECT pg_advisory_xact_lock(hashtext(current_schema()), {LOCK_WRITE})"
            )
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ".to_owned()
        };
        // The transaction exists before BEGIN is sent: should BEGIN fail half-way (the writers'
        // lock not granted in time), dropping it rolls back what did start, so the connection
        // never returns to the pool inside a failed transaction.
        let mut tx = PgTx {
            client: Some(self.client()?),
            failed: std::cell::Cell::new(false),
        };
        wait(tx.client().batch_execute(&begin)).map_err(StoreError::from)?;
        let (value, topics) = f(&tx)?;
        if tx.failed.get() {
            // A statement failed and the operation carried on: PostgreSQL has aborted the
            // transaction, and its COMMIT would silently roll back. Say so instead.
            return Err(StoreError::Interrupted(
                "a statement of the transaction failed, so none of it was kept".to_owned(),
            )
            .into());
        }
        let client = tx.client.take().expect("open");
        let committed = (|| {
            for topic in topics {
                wait(client.execute(
                    "SELECT pg_notify($1, current_schema() || ':' || $2)",
                    &[&CHANNEL, &topic.as_str()],
                ))?;
            }
            wait(client.batch_execute("COMMIT"))
        })();
        if let Err(e) = committed {
            // The connection's state is unknown: it does not go back to the pool.
            drop(Object::take(client));
            return Err(StoreError::from(e).into());
        }
        Ok(value)
    }
}

/// An open PostgreSQL transaction; rolled back if dropped before its commit.
pub(crate) struct PgTx {
    client: Option<Object>,
    /// Set when a statement failed outside a savepoint (the transaction is aborted).
    failed: std::cell::Cell<bool>,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && wait(client.batch_execute("ROLLBACK")).is_err()
        {
            drop(Object::take(client));
        }
    }
}

fn row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let ty = column.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl PgTx {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("open until dropped")
    }

    fn run(&self, sql: &str, args: &[Value]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client();
        let sql = dollar_placeholders(sql);
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let reads_only = sql
            .trim_start()
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"));
        if reads_only {
            return wait(async {
                let stmt = client.prepare_cached(&sql).await?;
                client.query(&stmt, &params).await
            })
            .map_err(|e| {
                self.failed.set(true);
                e.into()
            });
        }
        // A statement that writes undoes only itself when it fails (SQLite's behaviour).
        self.undone_alone_on_failure(async {
            let stmt = client.prepare_cached(&sql).await?;
            client.query(&stmt, &params).await
        })
    }

    /// Runs `statement` (sent right after a savepoint, in one round trip) so that when it fails
    /// only it is undone and the transaction goes on, as a failed statement does on SQLite.
    fn undone_alone_on_failure<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let client = self.client();
        wait(async {
            let (saved, result) = futures_util::join!(
                client.batch_execute("SAVEPOINT keyhost_statement"),
                statement
            );
            saved?;
            match result {
                Ok(value) => {
                    client
                        .batch_execute("RELEASE SAVEPOINT keyhost_statement")
                        .await?;
                    Ok(value)
                }
                Err(e) => {
                    if client
                        .batch_execute("ROLLBACK TO SAVEPOINT keyhost_statement")
                        .await
                        .is_err()
                    {
                        self.failed.set(true);
                    }
                    Err(e)
                }
            }
        })
        .map_err(Into::into)
    }

    pub(super) fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.run(sql, args)?.iter().map(row).collect()
    }

    pub(super) fn execute(&self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        let client = self.client();
        let sql = dollar_placeholders(sql);
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let n = self.undone_alone_on_failure(async {
            let stmt = client.prepare_cached(&sql).await?;
            client.execute(&stmt, &params).await
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else {
                    i.to_string().as_str().to_sql(ty, out)
                }
            }
            Value::Text(t) => t.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
