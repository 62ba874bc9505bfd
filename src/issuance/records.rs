//! The issuance service's only way to the store: one thin function per operation, each one
//! transaction (on the store's blocking thread), reading rows into [`Issuance`] records and writing them
//! back. Keeping every store call here means a change of the store's interface is a change of
//! this file alone.

use std::sync::Arc;

use serde_json::json;

use super::state::{Issuance, IssuanceState};
use crate::clock::UnixTime;
use crate::store::issuances::IssuanceRow;
use crate::store::{self, Rows, Store, StoreError, Unreadable};

/// An audit row written with a change.
#[derive(Debug, Clone, Copy)]
pub(super) struct Audit<'a> {
    /// When.
    pub at: UnixTime,
    /// Who.
    pub actor: &'a str,
    /// What (`issuance.resume`).
    pub action: &'a str,
}

fn record(row: IssuanceRow) -> Result<Issuance, StoreError> {
    let id = row.id.clone();
    Issuance::try_from(row).map_err(|e| StoreError::Corrupt(format!("issuance {id}: {e}")))
}

fn records(found: Rows<IssuanceRow>) -> Rows<Issuance> {
    let mut out = Rows {
        rows: Vec::with_capacity(found.rows.len()),
        unreadable: found.unreadable,
    };
    for row in found.rows {
        let id = row.id.clone();
        match Issuance::try_from(row) {
            Ok(r) => out.rows.push(r),
            Err(e) => out.unreadable.push(Unreadable {
                id,
                why: e.to_string(),
            }),
        }
    }
    out
}

/// One issuance.
pub(super) async fn get(store: &Arc<Store>, id: &str) -> Result<Option<Issuance>, StoreError> {
    let id = id.to_owned();
    store
        .read(move |tx| store::issuances::get(tx, &id))
        .await?
        .map(record)
        .transpose()
}

/// The latest issuance AIR identified by `hash`.
pub(super) async fn by_core_claim_hash(
    store: &Arc<Store>,
    hash: &str,
) -> Result<Option<Issuance>, StoreError> {
    let hash = hash.to_owned();
    store
        .read(move |tx| store::issuances::by_core_claim_hash(tx, &hash))
        .await?
        .map(record)
        .transpose()
}

/// Inserts `new`, unless its source already recorded an issuance under its idempotency key:
/// returns the issuance recorded under the key, and whether it is `new`.
pub(super) async fn insert_unless_replay(
    store: &Arc<Store>,
    new: Issuance,
) -> Result<(Issuance, bool), StoreError> {
    let row = IssuanceRow::from(&new);
    let existing = store
        .write(move |tx| {
            if let Some(key) = &row.idempotency_key
                && let Some(existing) = store::issuances::by_idempotency_key(tx, &row.source, key)?
            {
                return Ok(Some(existing));
            }
            store::issuances::insert(tx, &row)?;
            Ok::<_, StoreError>(None)
        })
        .await?;
    match existing {
        Some(row) => Ok((record(row)?, false)),
        None => Ok((new, true)),
    }
}

/// Writes the mutable part of an issuance.
pub(super) async fn save(store: &Arc<Store>, issuance: &Issuance) -> Result<(), StoreError> {
    let row = IssuanceRow::from(issuance);
    store
        .write(move |tx| store::issuances::save(tx, &row))
        .await
}

/// Writes the mutable part of an issuance if the server `holder` still holds its claim;
/// whether it did.
pub(super) async fn save_claimed(
    store: &Arc<Store>,
    issuance: &Issuance,
    holder: &str,
) -> Result<bool, StoreError> {
    let (row, holder) = (IssuanceRow::from(issuance), holder.to_owned());
    store
        .write(move |tx| store::issuances::save_claimed(tx, &row, &holder))
        .await
}

/// Writes the mutable part of an issuance and its audit row, in one transaction, if the
/// issuance is still in state `from`; returns whether it was. (Two admins resuming at once
/// resume it once.)
pub(super) async fn save_audited_if(
    store: &Arc<Store>,
    issuance: &Issuance,
    from: IssuanceState,
    audit: Audit<'_>,
) -> Result<bool, StoreError> {
    let row = IssuanceRow::from(issuance);
    let (at, actor, action) = (audit.at, audit.actor.to_owned(), audit.action.to_owned());
    store
        .write(move |tx| {
            let current = store::issuances::get(tx, &row.id)?;
            // Erased meanwhile: it changes no more.
            if current
                .filter(|r| r.erased_at.is_none())
                .map(|r| r.state)
                .as_deref()
                != Some(from.as_str())
            {
                return Ok::<_, StoreError>(false);
            }
            store::issuances::save(tx, &row)?;
            store::audit::record(tx, at, &actor, &action, &row.id, &json!({}))?;
            Ok::<_, StoreError>(true)
        })
        .await
}

/// Issuances a server must carry on with (rows that cannot be read apart).
pub(super) async fn unfinished(store: &Arc<Store>) -> Result<Rows<Issuance>, StoreError> {
    let found = store.read(store::issuances::unfinished).await?;
    Ok(records(found))
}

/// Issuances, newest first, optionally in one state (rows that cannot be read apart).
pub(super) async fn list(
    store: &Arc<Store>,
    state: Option<IssuanceState>,
    limit: u32,
) -> Result<Rows<Issuance>, StoreError> {
    let found = store
        .read(move |tx| store::issuances::list(tx, state.map(IssuanceState::as_str), limit))
        .await?;
    Ok(records(found))
}
