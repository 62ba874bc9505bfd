//! Every row of every table keyhost keeps, value for value, with its id, so that its MAC still
//! checks and the same kids are served wherever the rows go: read in one snapshot
//! ([`snapshot`]) and written into an empty store in one transaction ([`ensure_empty`],
//! [`insert`], [`renumber`]). `keyhost migrate --to` copies a store this way ([`copy_all`]);
//! `keyhost backup` and `keyhost restore` keep the snapshot in an encrypted file in between
//! (`crate::backup`). Private keys stay sealed under the master key throughout.

use super::sql::{Value, args};
use super::{Store, StoreError, Topic, Tx};
use crate::canonical::{Field, sha256};

/// The tables copied, in an order that satisfies their references, with their columns.
/// Issuance claims and the roll of servers are not copied: they belong to the servers of the
/// old store.
pub const TABLES: &[(&str, &str)] = &[
    ("settings", "name, value, mac"),
    (
        "keys",
        "id, kid, alg, state, origin, bits, public_jwk, private_key_enc, master_key_id, \
         created_at, published_at, signable_at, activated_at, retired_at, expires_at, \
         revoked_at, destroyed_at, mac, lead_remaining, grace_remaining, last_exp",
    ),
    (
        "clients",
        "id, name, scopes, secret_hash, created_at, disabled_at, mac",
    ),
    (
        "admins",
        "id, name, role, secret_hash, created_at, disabled_at, mac",
    ),
    (
        "audit",
        "id, at, actor, action, subject, detail, prev_hash, hash, mac",
    ),
    (
        "issuances",
        "id, source, idempotency_key, request_hash, email, issuer_did, credential_id, \
         credential_subject, on_duplicate, state, attempts, next_attempt_at, core_claim_hash, \
         user_uuid, duplicate, vc_status, vc_id, issuance_date, polls, last_status, last_error, \
         created_at, updated_at, submitted_at, completed_at, mac, erased_at",
    ),
    (
        "kyc_events",
        "id, provider, scan_ref, client_id, final, status, outcome, detail, issuance_id, \
         received_at, delivery_hash, repeats, last_received_at, erased_at",
    ),
    ("kyc_subjects", "client_id, email, created_at, mac"),
];

/// Tables whose ids the database assigns: after the copy, it goes on from the largest.
const NUMBERED: &[&str] = &["keys", "audit", "kyc_events"];

/// A fingerprint of [`TABLES`] (the tables and columns copied, in order): the same on both
/// engines, and different whenever a keyhost version copies other columns. Rows taken by one
/// keyhost go only into a store of the same layout.
pub fn layout() -> String {
    let fields: Vec<Field<'_>> = TABLES
        .iter()
        .flat_map(|(table, columns)| [Field::Text(table), Field::Text(columns)])
        .collect();
    hex::encode(&sha256("copy-layout", &fields)[..8])
}

/// The rows of one table, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// The table.
    pub table: String,
    /// Its columns, as [`TABLES`] lists them.
    pub columns: String,
    /// Its rows, each a value per column.
    pub rows: Vec<Vec<Value>>,
}

/// Every row of every table of [`TABLES`], in their order, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The tables.
    pub tables: Vec<TableRows>,
}

impl Snapshot {
    /// Rows per table.
    pub fn counts(&self) -> Copied {
        Copied {
            tables: self
                .tables
                .iter()
                .map(|t| (t.table.clone(), t.rows.len()))
                .collect(),
        }
    }
}

/// Rows copied, per table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Copied {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(String, usize)>,
}

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds rows.
    #[error(
        "the target store is not empty ({0} holds rows); use an empty database, schema or data \
         directory"
    )]
    NotEmpty(String),
    /// The rows are not of the tables and columns this keyhost copies.
    #[error("the rows are not of keyhost's tables as this version keeps them: {0}")]
    Layout(String),
    /// Reading or writing failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The version of the store's schema on its engine (its migrations applied): SQLite's and
/// PostgreSQL's are numbered apart.
pub fn schema_version(tx: &Tx<'_>) -> Result<i64, StoreError> {
    tx.query_one(
        tx.dialect(
            "SELECT user_version FROM pragma_user_version",
            "SELECT COALESCE(MAX(version), 0)::bigint FROM keyhost_schema",
        ),
        &args![],
        |r| r.get(0),
    )
}

/// Every row of every table of [`TABLES`], as `tx` sees them (in a read transaction: one
/// consistent snapshot, whatever the servers write meanwhile).
pub fn snapshot(tx: &Tx<'_>) -> Result<Snapshot, StoreError> {
    let tables = TABLES
        .iter()
        .map(|(table, columns)| {
            let rows = tx.query(&format!("SELECT {columns} FROM {table}"), &args![])?;
            Ok(TableRows {
                table: (*table).to_owned(),
                columns: (*columns).to_owned(),
                rows: rows.into_iter().map(|r| r.0).collect(),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Snapshot { tables })
}

/// Fails with [`CopyError::NotEmpty`] unless every table of [`TABLES`] is empty.
pub fn ensure_empty(tx: &Tx<'_>) -> Result<(), CopyError> {
    for (table, _) in TABLES {
        let n: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &args![], |r| {
            r.get(0)
        })?;
        if n > 0 {
            return Err(CopyError::NotEmpty((*table).to_owned()));
        }
    }
    Ok(())
}

/// Writes the rows of `snapshot`, which must hold exactly the tables and columns of
/// [`TABLES`], each row a value per column; rows per table. Announces keys, clients and
/// settings. Call [`ensure_empty`] before and [`renumber`] after, in the same transaction.
pub fn insert(tx: &Tx<'_>, snapshot: &Snapshot) -> Result<Copied, CopyError> {
    let found: Vec<(&str, &str)> = snapshot
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.columns.as_str()))
        .collect();
    if found != TABLES {
        let described: Vec<String> = found.iter().map(|(t, c)| format!("{t} ({c})")).collect();
        return Err(CopyError::Layout(format!(
            "they hold {}",
            described.join("; ")
        )));
    }
    for t in &snapshot.tables {
        let width = t.columns.split(',').count();
        let placeholders: Vec<String> = (1..=width).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            t.table,
            t.columns,
            placeholders.join(", ")
        );
        for row in &t.rows {
            if row.len() != width {
                return Err(CopyError::Layout(format!(
                    "a row of {} has {} values for {width} columns",
                    t.table,
                    row.len()
                )));
            }
            tx.execute(&sql, row)?;
        }
    }
    tx.announce(Topic::Keys);
    tx.announce(Topic::Clients);
    tx.announce(Topic::Settings);
    Ok(snapshot.counts())
}

/// After rows were written with their ids: the database numbers new rows from the largest id
/// (PostgreSQL's sequences; SQLite does so on its own).
pub fn renumber(tx: &Tx<'_>) -> Result<(), StoreError> {
    for table in NUMBERED {
        tx.query(
            tx.dialect(
                "SELECT 1",
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                     GREATEST(COALESCE(MAX(id), 0), 1), COALESCE(MAX(id), 0) > 0) \
                     FROM {table}"
                ),
            ),
            &args![],
        )?;
    }
    Ok(())
}

/// Copies every row of `from` into `to`, which must be empty, in one transaction on `to`
/// (all or nothing), reading `from` in one snapshot.
pub fn copy_all(from: &Store, to: &Store) -> Result<Copied, CopyError> {
    let rows = from.blocking_read(snapshot)?;
    to.blocking_write(|tx| {
        ensure_empty(tx)?;
        let copied = insert(tx, &rows)?;
        renumber(tx)?;
        Ok(copied)
    })
}
