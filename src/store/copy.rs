//! Copying a whole store into another, empty one (`keyhost migrate --to`): every row of every
//! table keyhost keeps, value for value, with its id, so that its MAC still checks and the same
//! kids are served from the copy. Private keys move still sealed under the master key.

use super::sql::{Value, args};
use super::{Store, StoreError, Topic};

/// The tables copied, in an order that satisfies their references, with their columns.
/// Issuance claims and the roll of servers are not copied: they belong to the servers of the
/// old store.
const TABLES: &[(&str, &str)] = &[
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
        "the target store is not empty ({0} holds rows); copy into an empty database or schema"
    )]
    NotEmpty(String),
    /// Reading or writing failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every row of `from` into `to`, which must be empty, in one transaction on `to`
/// (all or nothing), reading `from` in one snapshot.
pub fn copy_all(from: &Store, to: &Store) -> Result<Copied, CopyError> {
    let rows: Vec<(&str, &str, Vec<Vec<Value>>)> = from.blocking_read(|tx| {
        TABLES
            .iter()
            .map(|(table, columns)| {
                let rows = tx.query(&format!("SELECT {columns} FROM {table}"), &args![])?;
                Ok((*table, *columns, rows.into_iter().map(|r| r.0).collect()))
            })
            .collect::<Result<_, StoreError>>()
    })?;
    to.blocking_write(|tx| {
        for (table, _) in TABLES {
            let n: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &args![], |r| {
                r.get(0)
            })?;
            if n > 0 {
                return Err(CopyError::NotEmpty((*table).to_owned()));
            }
        }
        let mut copied = Copied::default();
        for (table, columns, values) in &rows {
            let placeholders: Vec<String> = (1..=columns.split(',').count())
                .map(|i| format!("?{i}"))
                .collect();
            let sql = format!(
                "INSERT INTO {table} ({columns}) VALUES ({})",
                placeholders.join(", ")
            );
            for row in values {
                tx.execute(&sql, row)?;
            }
            copied.tables.push(((*table).to_owned(), values.len()));
        }
        for table in NUMBERED {
            tx.query(
                tx.dialect(
                    // SQLite numbers from the largest id on its own.
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
        tx.announce(Topic::Keys);
        tx.announce(Topic::Clients);
        tx.announce(Topic::Settings);
        Ok(copied)
    })
}
