//! The store: the only place SQL lives.
//!
//! Everything outside this module reaches the database through a [`Tx`], a transaction the store
//! opens, commits and rolls back itself: [`Store::read`] and [`Store::write`] from async code
//! (on a blocking thread, in the caller's tracing span), [`Store::blocking_read`] and
//! [`Store::blocking_write`] from code already on one. The operations in the submodules take a
//! `&Tx` and are named for what they do; they are written once, against the engine-neutral
//! vocabulary of [`sql`], and nothing outside `store` sees an engine's types.
//!
//! Two engines:
//! - **SQLite** (the embedded default, [`sqlite`]): one connection, guarded by a mutex and used
//!   from blocking threads; WAL journaling so readers (the CLI, backups) never block the server;
//!   `secure_delete` so destroyed private keys are overwritten on disk. Migrations in
//!   `migrations/`.
//! - **PostgreSQL** (several replicas, [`postgres`]): a connection pool; migrations in
//!   `migrations/postgres/`, applied under an advisory lock; writes serialised across replicas
//!   by a transaction-scoped advisory lock, as SQLite's `BEGIN IMMEDIATE` serialises them, so a
//!   service's read-decide-write is one transaction on either engine with the same meaning.
//!
//! Both refuse a schema newer than the binary; neither ever downgrades.

pub mod admins;
pub mod audit;
pub mod clients;
pub mod copy;
pub mod issuances;
pub mod keys;
pub mod kyc;
pub mod postgres;
pub mod replicas;
pub mod settings;
pub mod sql;
mod sqlite;
pub mod verifiers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sql::{ReadError, Row, Value};

use crate::canonical::Field;

pub use postgres::PgOptions;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (or the connection to it failed).
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to PostgreSQL could be had.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// A migration could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// The database file or its directory is unusable.
    #[error("cannot open the database at {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A row holds a value this version cannot read.
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
    /// A query that must find a row found none.
    #[error("no such row")]
    NotFound,
    /// The operation panicked or its thread was cancelled; its transaction was rolled back.
    #[error("a store operation was interrupted: {0}")]
    Interrupted(String),
    /// The database was written by a newer keyhost.
    #[error(
        "the database at {location} has schema version {found}, newer than this keyhost knows \
         ({known}); run a newer keyhost"
    )]
    TooNew {
        /// Database file, or PostgreSQL database and schema.
        location: String,
        /// Version found.
        found: usize,
        /// Latest version known here.
        known: usize,
    },
}

impl From<rusqlite_migration::Error> for StoreError {
    fn from(e: rusqlite_migration::Error) -> Self {
        StoreError::Migrate(e.to_string())
    }
}

impl From<ReadError> for StoreError {
    fn from(e: ReadError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl StoreError {
    /// Whether this is a uniqueness or check constraint violation.
    pub fn is_constraint(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            StoreError::Postgres(e) => postgres::is_constraint(e),
            _ => false,
        }
    }

    /// Whether the database could not be reached (as opposed to refusing what was asked).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// A row that cannot be read as its type: a value this version cannot read (text where a number
/// belongs, JSON that is not), so written by something else. Listings return such rows apart
/// instead of failing whole: one bad row must not stop the rest from serving.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// The row's key, as far as it could be read.
    pub id: String,
    /// What could not be read.
    pub why: String,
}

/// The rows of a listing: those that could be read, and the others.
#[derive(Debug)]
pub struct Rows<T> {
    /// Readable rows, in the listing's order.
    pub rows: Vec<T>,
    /// Rows that could not be read.
    pub unreadable: Vec<Unreadable>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The embedded SQLite file.
    Sqlite,
    /// A shared PostgreSQL database.
    Postgres,
}

/// What changed in a write transaction, announced to the other replicas when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// The key set.
    Keys,
    /// Credentials: API clients and named admins.
    Clients,
    /// Server settings (the recorded policy, the admin token).
    Settings,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Topic::Keys => "keys",
            Topic::Clients => "clients",
            Topic::Settings => "settings",
        }
    }
}

/// Makes and checks MACs under the master key, for what the store writes on its own behalf (the
/// audit chain's rows and head): implemented by [`crate::integrity::RowAuth`].
pub trait Sealer: Send + Sync {
    /// The MAC of `fields` under `domain`.
    fn mac(&self, domain: &str, fields: &[Field<'_>]) -> Vec<u8>;
    /// Whether `mac` is the MAC of `fields` under `domain`.
    fn verify(&self, domain: &str, fields: &[Field<'_>], mac: Option<&[u8]>) -> bool;
}

/// The key store database.
pub struct Store {
    engine: Engine,
    sealer: std::sync::OnceLock<Arc<dyn Sealer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Engine {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it to the latest
    /// schema.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            engine: Engine::Sqlite(sqlite::Sqlite::open(path)?),
            sealer: Default::default(),
        }))
    }

    /// Connects to PostgreSQL and migrates its schema to the latest (once, whoever else starts
    /// at the same time).
    pub fn open_postgres(options: &PgOptions) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            engine: Engine::Postgres(postgres::Postgres::open(options)?),
            sealer: Default::default(),
        }))
    }

    /// From now on, audit rows and the chain's head carry MACs by `sealer` (once the master key
    /// has been checked against the store); a second call changes nothing.
    pub fn seal_with(&self, sealer: Arc<dyn Sealer>) {
        let _ = self.sealer.set(sealer);
    }

    /// Which engine this store runs on.
    pub fn engine(&self) -> EngineKind {
        match &self.engine {
            Engine::Sqlite(_) => EngineKind::Sqlite,
            Engine::Postgres(_) => EngineKind::Postgres,
        }
    }

    /// Where the store is, for messages (the file, or the PostgreSQL server, database and
    /// schema, without credentials).
    pub fn location(&self) -> String {
        match &self.engine {
            Engine::Sqlite(s) => s.path().display().to_string(),
            Engine::Postgres(p) => p.location(),
        }
    }

    /// This process's id among the servers sharing the store (`None` on SQLite, which has one):
    /// the application name of its listening connection, by which the others see it alive.
    pub fn instance(&self) -> Option<&str> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(p) => Some(p.instance()),
        }
    }

    /// The SQLite database file (`None` on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match &self.engine {
            Engine::Sqlite(s) => Some(s.path()),
            Engine::Postgres(_) => None,
        }
    }

    fn transact<R, E: From<StoreError>>(
        &self,
        write: bool,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        match &self.engine {
            Engine::Sqlite(s) => s.transact(write, |t| {
                let tx = Tx {
                    engine: TxEngine::Sqlite(t),
                    topics: Default::default(),
                    sealer: self.sealer.get().map(|s| &**s),
                };
                f(&tx)
            }),
            Engine::Postgres(p) => p.transact(write, |t| {
                let tx = Tx {
                    engine: TxEngine::Postgres(t),
                    topics: Default::default(),
                    sealer: self.sealer.get().map(|s| &**s),
                };
                let value = f(&tx)?;
                Ok((value, tx.topics()))
            }),
        }
    }

    /// Runs `f` in a read transaction (one consistent snapshot), on the calling thread: for
    /// code already on a blocking thread. Whatever `f` writes is committed if it returns `Ok`.
    pub fn blocking_read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        self.transact(false, f)
    }

    /// Runs `f` in a write transaction, taken before the first read, so that what `f` reads
    /// cannot change before it writes (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction
    /// advisory lock every writer takes, on every replica): committed if `f` returns `Ok`,
    /// rolled back otherwise. On the calling thread, like [`Store::blocking_read`].
    pub fn blocking_write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        self.transact(true, f)
    }

    /// [`Store::blocking_read`] on a blocking thread, in the caller's tracing span.
    pub async fn read<R, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        off_thread(move || store.blocking_read(f)).await
    }

    /// [`Store::blocking_write`] on a blocking thread, in the caller's tracing span.
    pub async fn write<R, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        off_thread(move || store.blocking_write(f)).await
    }

    /// Changes whenever another connection (another process, another replica) commits a change
    /// to keys, clients or settings; cheap to poll.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        match &self.engine {
            Engine::Sqlite(s) => s.data_version(),
            Engine::Postgres(p) => Ok(p.changes()),
        }
    }

    /// Resolves when another replica announces a change (never on SQLite, whose other writers
    /// are found by polling [`Store::data_version`]).
    pub async fn changed(&self) {
        match &self.engine {
            Engine::Sqlite(_) => std::future::pending().await,
            Engine::Postgres(p) => p.changed().await,
        }
    }

    /// Moves SQLite's write-ahead log into the database file and truncates it, so that bytes
    /// overwritten since (destroyed private keys, erased personal data) do not linger in old
    /// WAL frames; whether it completed (a reader holding an old snapshot holds it back). Nothing
    /// to do on PostgreSQL, whose files keyhost does not manage.
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        match &self.engine {
            Engine::Sqlite(s) => s.checkpoint(),
            Engine::Postgres(_) => Ok(true),
        }
    }

    /// Whether the database answers a trivial query (readiness).
    pub fn ping(&self) -> bool {
        match &self.engine {
            Engine::Sqlite(s) => s.ping(),
            Engine::Postgres(p) => p.ping(),
        }
    }

    /// Runs raw SQL outside any transaction (tests that break the schema on purpose).
    #[cfg(test)]
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(s) => s.execute_batch(sql),
            Engine::Postgres(p) => p.execute_batch(sql),
        }
    }
}

/// Runs `f` on a blocking thread in the current tracing span; a panic there is an
/// [`StoreError::Interrupted`] (a transaction it had open rolled back), never a value. For the
/// store's own calls and for services whose blocking work holds transactions (the key lifecycle).
pub(crate) async fn off_thread<R, E>(
    f: impl FnOnce() -> Result<R, E> + Send + 'static,
) -> Result<R, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Interrupted(if e.is_panic() {
            "it panicked".to_owned()
        } else {
            "it was cancelled".to_owned()
        })
        .into()),
    }
}

/// A transaction on the store, opened by [`Store::read`] or [`Store::write`] (and their
/// blocking forms) and committed or rolled back by them. Every store operation takes one.
///
/// Operations speak through [`Tx::execute`] and the query methods, with `?N` placeholders and
/// [`Value`]s; where the dialects differ, [`Tx::dialect`] picks the statement of the engine.
/// The operations stay synchronous functions run on a blocking thread, so that a service's
/// read-decide-write sequence is one transaction whatever the engine.
pub struct Tx<'c> {
    engine: TxEngine<'c>,
    topics: std::cell::Cell<u8>,
    sealer: Option<&'c dyn Sealer>,
}

/// The engine-specific transaction inside a [`Tx`].
enum TxEngine<'c> {
    Sqlite(&'c rusqlite::Transaction<'c>),
    Postgres(&'c postgres::PgTx),
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The store's sealer, once the master key has been checked.
    pub(crate) fn sealer(&self) -> Option<&dyn Sealer> {
        self.sealer
    }

    /// `sqlite` or `postgres`, whichever this transaction's engine speaks.
    pub(crate) fn dialect<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self.engine {
            TxEngine::Sqlite(_) => sqlite,
            TxEngine::Postgres(_) => postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
        match self.engine {
            TxEngine::Sqlite(t) => sqlite::execute(t, sql, args),
            TxEngine::Postgres(t) => t.execute(sql, args),
        }
    }

    /// Runs a query; its rows.
    pub(crate) fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self.engine {
            TxEngine::Sqlite(t) => sqlite::query(t, sql, args),
            TxEngine::Postgres(t) => t.query(sql, args),
        }
    }

    /// Runs a query and reads each row with `read`; the first unreadable row is an error.
    pub(crate) fn query_map<T>(
        &self,
        sql: &str,
        args: &[Value],
        read: impl Fn(&Row) -> Result<T, ReadError>,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .query(sql, args)?
            .iter()
            .map(read)
            .collect::<Result<_, _>>()?)
    }

    /// The first row of a query read with `read`, or `None`.
    pub(crate) fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Value],
        read: impl Fn(&Row) -> Result<T, ReadError>,
    ) -> Result<Option<T>, StoreError> {
        match self.query(sql, args)?.first() {
            Some(row) => Ok(Some(read(row)?)),
            None => Ok(None),
        }
    }

    /// The first row of a query read with `read`; [`StoreError::NotFound`] if there is none.
    pub(crate) fn query_one<T>(
        &self,
        sql: &str,
        args: &[Value],
        read: impl Fn(&Row) -> Result<T, ReadError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, args, read)?.ok_or(StoreError::NotFound)
    }

    /// Runs a query and reads each row with `read`, setting aside the rows it cannot read (their
    /// key read from column 0).
    pub(crate) fn read_rows<T>(
        &self,
        sql: &str,
        args: &[Value],
        read: impl Fn(&Row) -> Result<T, ReadError>,
    ) -> Result<Rows<T>, StoreError> {
        let mut out = Rows::default();
        for row in self.query(sql, args)? {
            match read(&row) {
                Ok(value) => out.rows.push(value),
                Err(e) => out.unreadable.push(Unreadable {
                    id: row.key(),
                    why: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Announces, when this transaction commits, that `topic` changed (other replicas re-read
    /// it at once). Nothing to announce on SQLite: its one server learns of another process's
    /// writes from the database's version.
    pub(crate) fn announce(&self, topic: Topic) {
        self.topics.set(self.topics.get() | 1 << topic as u8);
    }

    fn topics(&self) -> Vec<Topic> {
        [Topic::Keys, Topic::Clients, Topic::Settings]
            .into_iter()
            .filter(|t| self.topics.get() & (1 << *t as u8) != 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_idempotent() {
        sqlite::validate_migrations();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/keyhost.db");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        assert!(store.ping());
    }

    #[test]
    fn a_database_from_a_newer_keyhost_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhost.db");
        drop(Store::open(&path).unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }
}
