//! The store: the only place SQL lives.
//!
//! Everything outside this module reaches the database through a [`Tx`], a transaction the store
//! opens, commits and rolls back itself: [`Store::read`] and [`Store::write`] from async code
//! (on a blocking thread, in the caller's tracing span), [`Store::blocking_read`] and
//! [`Store::blocking_write`] from code already on one. The operations in the submodules take a
//! `&Tx` and are named for what they do; nothing outside `store` sees the engine's types, so a
//! second engine is a second arm of [`Tx`] and of each operation, not a change to its callers.
//!
//! The embedded engine is SQLite: one connection, guarded by a mutex and used from blocking
//! threads; WAL journaling so readers (the CLI, backups) never block the server; `secure_delete`
//! so destroyed private keys are overwritten on disk rather than left in free pages. Migrations
//! in `migrations/` are embedded and applied at open; the store never downgrades.

pub mod audit;
pub mod clients;
pub mod issuances;
pub mod keys;
pub mod kyc;
pub mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use crate::files::create_private_dir;

const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/0001_initial.sql")),
    M::up(include_str!("../../migrations/0002_issuance.sql")),
    M::up(include_str!("../../migrations/0003_kyc_repeats.sql")),
    M::up(include_str!(
        "../../migrations/0004_integrity_and_served_time.sql"
    )),
    M::up(include_str!("../../migrations/0005_issuance_checks.sql")).foreign_key_check(),
    M::up(include_str!("../../migrations/0006_kyc_checks.sql")).foreign_key_check(),
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] rusqlite_migration::Error),
    /// The database file or its directory is unusable.
    #[error("cannot open the database at {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A row holds a value this version cannot read.
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
    /// The operation panicked or its thread was cancelled; its transaction was rolled back.
    #[error("a store operation was interrupted: {0}")]
    Interrupted(String),
    /// The database was written by a newer keyhost.
    #[error(
        "the database at {path} has schema version {found}, newer than this keyhost knows \
         ({known}); run a newer keyhost"
    )]
    TooNew {
        /// Database file.
        path: PathBuf,
        /// Version found.
        found: usize,
        /// Latest version known here.
        known: usize,
    },
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

/// Runs `stmt` and reads each row with `read`, setting aside the rows it cannot read (their key
/// read from column 0 as text).
pub(crate) fn read_rows<T, P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
    read: impl Fn(&rusqlite::Row<'_>) -> Result<T, rusqlite::Error>,
) -> Result<Rows<T>, StoreError> {
    let mut out = Rows::default();
    let mut rows = stmt.query(params)?;
    while let Some(row) = rows.next()? {
        match read(row) {
            Ok(value) => out.rows.push(value),
            Err(e) => out.unreadable.push(Unreadable {
                id: row
                    .get_ref(0)
                    .map(|v| match v {
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        _ => "?".to_owned(),
                    })
                    .unwrap_or_else(|_| "?".to_owned()),
                why: e.to_string(),
            }),
        }
    }
    Ok(out)
}

impl StoreError {
    /// Whether this is a uniqueness or check constraint violation.
    pub fn is_constraint(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation)
    }
}

/// The key store database.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `data_dir/keyhost.db` and migrates it to the latest schema.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|e| StoreError::Io(dir.to_owned(), e))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let migrations = Migrations::from_slice(MIGRATIONS);
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let found = usize::try_from(found).unwrap_or(0);
        if found > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                known: MIGRATIONS.len(),
            });
        }
        migrations.to_latest(&mut conn)?;
        Ok(Arc::new(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transact<R, E: From<StoreError>>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut conn = self.lock();
        let tx = Tx {
            engine: TxEngine::Sqlite(
                conn.transaction_with_behavior(behavior)
                    .map_err(StoreError::from)?,
            ),
        };
        // An error (or a panic, which unwinds through the drop) rolls the transaction back.
        let value = f(&tx)?;
        match tx.engine {
            TxEngine::Sqlite(t) => t.commit().map_err(StoreError::from)?,
        }
        Ok(value)
    }

    /// Runs `f` in a read transaction (one consistent snapshot), on the calling thread: for
    /// code already on a blocking thread. Whatever `f` writes is committed if it returns `Ok`.
    pub fn blocking_read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        self.transact(TransactionBehavior::Deferred, f)
    }

    /// Runs `f` in a write transaction, taken before the first read (`BEGIN IMMEDIATE`), so
    /// that what `f` reads cannot change before it writes: committed if `f` returns `Ok`,
    /// rolled back otherwise. On the calling thread, like [`Store::blocking_read`].
    pub fn blocking_write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        self.transact(TransactionBehavior::Immediate, f)
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

    /// Changes whenever another connection (another process) commits; cheap to poll.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// Moves the write-ahead log into the database file and truncates it, so that bytes
    /// overwritten since (destroyed private keys) do not linger in old WAL frames. Best effort:
    /// a reader can hold it back, and a later one completes it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(self
            .lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the database answers a trivial query (readiness).
    pub fn ping(&self) -> bool {
        self.lock()
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .is_ok()
    }

    /// Runs raw SQL outside any transaction (tests that break the schema on purpose).
    #[cfg(test)]
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.lock().execute_batch(sql)?)
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
/// The engine is an arm of [`TxEngine`], private to this module: an operation reaches its SQL
/// through the arm of its engine, so a second engine adds an arm here and in the operations
/// (with its own SQL where the dialects differ), and nothing outside `store` changes. The
/// operations stay synchronous functions run on the store's blocking thread, so that a
/// service's read-decide-write sequence is one transaction whatever the engine.
pub struct Tx<'c> {
    engine: TxEngine<'c>,
}

/// The engine-specific transaction inside a [`Tx`].
enum TxEngine<'c> {
    /// The embedded engine.
    Sqlite(rusqlite::Transaction<'c>),
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The SQLite connection of this transaction (store operations only).
    fn sql(&self) -> &Connection {
        match &self.engine {
            TxEngine::Sqlite(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_idempotent() {
        Migrations::from_slice(MIGRATIONS).validate().unwrap();
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
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }
}
