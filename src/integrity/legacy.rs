//! Stores from before row authentication: found at start, and given their MACs only on an
//! operator's word.

use serde_json::json;

use super::RowAuth;
use crate::clock::UnixTime;
use crate::store::{self, Store, StoreError, Tx};

/// The rows of a store that carry no MAC, and how many do.
#[derive(Debug, Default)]
pub struct Survey {
    /// Rows without a MAC, described (`key 3 (kid …)`, `client …`).
    pub without_mac: Vec<String>,
    /// Rows with one.
    pub with_mac: usize,
}

fn survey(tx: &Tx<'_>) -> Result<Survey, StoreError> {
    let mut survey = Survey::default();
    let mut count = |has_mac: bool, what: String| {
        if has_mac {
            survey.with_mac += 1;
        } else {
            survey.without_mac.push(what);
        }
    };
    let keys = store::keys::list(tx)?;
    for row in &keys.rows {
        let state = row.record.state.as_str();
        count(
            row.mac.is_some(),
            format!("key {} ({}, {state})", row.record.id, row.record.kid),
        );
    }
    for bad in &keys.unreadable {
        count(false, format!("key {} (unreadable: {})", bad.id, bad.why));
    }
    let clients = store::clients::list(tx)?;
    for row in &clients.rows {
        count(
            row.mac.is_some(),
            format!("client {} ({})", row.id, row.name),
        );
    }
    for bad in &clients.unreadable {
        count(
            false,
            format!("client {} (unreadable: {})", bad.id, bad.why),
        );
    }
    for row in store::issuances::without_mac(tx)? {
        count(false, format!("issuance {} ({})", row.id, row.email));
    }
    for s in store::kyc::subjects(tx)? {
        count(
            s.mac.is_some(),
            format!("KYC subject {} → {}", s.client_id, s.email),
        );
    }
    if let Some(setting) = store::settings::get_with_mac(tx, store::settings::ADMIN_TOKEN_SHA256)? {
        count(setting.mac.is_some(), "the stored admin token hash".into());
    }
    Ok(survey)
}

/// Records that the store's rows are authenticated, when that is safe without anyone's word:
/// a new store, or one whose rows keyhost authenticated before (a row without a MAC there was
/// written behind its back and stays untrusted). Returns the survey of a store whose rows all
/// predate row authentication: those need an operator's word
/// ([`accept_legacy_rows`]), since a database writer can make any store look like that.
pub fn settle(store: &Store, now: UnixTime) -> Result<Option<Survey>, StoreError> {
    store.blocking_write(|tx| {
        if store::settings::get(tx, store::settings::ROW_MACS_SINCE)?.is_some() {
            return Ok(None);
        }
        let survey = survey(tx)?;
        if !survey.without_mac.is_empty() && survey.with_mac == 0 {
            return Ok(Some(survey));
        }
        if survey.with_mac > 0 {
            tracing::error!(
                rows_without_mac = survey.without_mac.len(),
                "the setting that records when rows were first authenticated was missing from a \
                 store whose rows carry MACs: someone changed the database; rows without a MAC \
                 stay untrusted"
            );
        }
        store::settings::set(tx, store::settings::ROW_MACS_SINCE, &now.to_string())?;
        Ok(None)
    })
}

/// Why rows from before row authentication were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The store's rows are authenticated already.
    #[error(
        "this store's rows are authenticated already; rows without a MAC in it were written \
         behind keyhost's back and stay untrusted"
    )]
    NotLegacy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Gives every row of a store from before row authentication its MAC: the operator's one-time
/// word that the rows in it are keyhost's (`keyhost integrity accept-legacy-rows`). Refused for a
/// store whose rows were authenticated before. Returns the rows it authenticated.
pub fn accept_legacy_rows(
    store: &Store,
    auth: &RowAuth,
    now: UnixTime,
    actor: &str,
) -> Result<Vec<String>, AcceptError> {
    store.blocking_write(|tx| {
        let surveyed = survey(tx)?;
        if store::settings::get(tx, store::settings::ROW_MACS_SINCE)?.is_some()
            || surveyed.with_mac > 0
        {
            return Err(AcceptError::NotLegacy);
        }
        // Unreadable rows get no MAC: they stay out, reported.
        for row in store::keys::list(tx)?.rows {
            let mac = auth.key_mac(&row.record, row.master_key_id.as_deref());
            store::keys::set_mac(tx, row.record.id, &mac)?;
        }
        for row in store::clients::list(tx)?.rows {
            store::clients::set_mac(tx, &row.id, &auth.client_mac(&row))?;
        }
        for row in store::issuances::without_mac(tx)? {
            store::issuances::set_mac(tx, &row.id, &auth.issuance_mac(&row))?;
        }
        for s in store::kyc::subjects(tx)? {
            store::kyc::set_subject_mac(
                tx,
                &s.client_id,
                &auth.subject_mac(&s.client_id, &s.email),
            )?;
        }
        let name = store::settings::ADMIN_TOKEN_SHA256;
        if let Some(setting) = store::settings::get_with_mac(tx, name)? {
            let mac = auth.setting_mac(name, &setting.value);
            store::settings::set_with_mac(tx, name, &setting.value, &mac)?;
        }
        store::settings::set(tx, store::settings::ROW_MACS_SINCE, &now.to_string())?;
        store::audit::record(
            tx,
            now,
            actor,
            "integrity.accept-legacy-rows",
            "store",
            &json!({"rows": surveyed.without_mac.len()}),
        )?;
        Ok(surveyed.without_mac)
    })
}
