//! The embedded engine: one SQLite file, one connection behind a mutex, used from blocking
//! threads.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use super::StoreError;
use super::sql::{Row, Value};
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
    M::up(include_str!("../../migrations/0007_replicas.sql")),
    M::up(include_str!("../../migrations/0008_admins.sql")),
    M::up(include_str!("../../migrations/0009_audit_chain.sql")),
    M::up(include_str!("../../migrations/0010_personal_data.sql")),
    M::up(include_str!("../../migrations/0011_verifiers.sql")),
];

#[cfg(test)]
pub(super) fn validate_migrations() {
    Migrations::from_slice(MIGRATIONS).validate().unwrap();
}

/// An open SQLite store.
#[derive(Debug)]
pub(super) struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
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
                location: path.display().to_string(),
                found,
                known: MIGRATIONS.len(),
            });
        }
        migrations.to_latest(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a transaction (`BEGIN IMMEDIATE` when `write`): committed if it returns
    /// `Ok`; an error, or a panic unwinding through the drop, rolls it back.
    pub(super) fn transact<R, E: From<StoreError>>(
        &self,
        write: bool,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut conn = self.lock();
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(StoreError::from)?;
        let value = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    pub(super) fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// Whether the checkpoint completed (no reader held it back).
    pub(super) fn checkpoint(&self) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0).map(|busy| busy == 0)
            })?)
    }

    pub(super) fn ping(&self) -> bool {
        self.lock()
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .is_ok()
    }

    #[cfg(test)]
    pub(super) fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.lock().execute_batch(sql)?)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // keyhost stores no floating-point value; one written behind its back reads as text,
        // which no reader accepts as a number.
        ValueRef::Real(f) => Value::Text(f.to_string()),
        // Text that is not UTF-8 cannot be keyhost's: it reads as bytes, which no text column
        // accepts, so its row is reported unreadable rather than silently altered.
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_owned()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

pub(super) fn execute(conn: &Connection, sql: &str, args: &[Value]) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(args))?)
}

pub(super) fn query(conn: &Connection, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(value(r.get_ref(i)?));
        }
        out.push(Row(values));
    }
    Ok(out)
}
