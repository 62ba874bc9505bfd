//! Reading the audit trail (every change writes its own row, in its own transaction).

use std::sync::Arc;

use serde::Serialize;

use crate::clock::rfc3339;
use crate::store::{self, Store, StoreError};

/// An audit row as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditView {
    /// Sequence number (pass it as `before` for the next page).
    pub id: i64,
    /// When, RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    /// Who: `admin:<name>`, `admin:bootstrap`, `cli:<user>`, `client:<id>`, `scheduler`, `webhook`, `system`.
    pub actor: String,
    /// What, e.g. `key.activate`, `client.create`.
    pub action: String,
    /// Which key (kid), client, issuance or provider.
    pub subject: String,
    /// Details (never secrets).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The audit trail, for reading.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<Store>,
}

impl AuditLog {
    /// The trail of `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The newest rows first, at most `limit`, with ids below `before` when given.
    pub async fn entries(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditView>, StoreError> {
        let rows = self
            .store
            .read(move |tx| store::audit::list(tx, limit, before))
            .await?;
        Ok(rows
            .into_iter()
            .map(|e| AuditView {
                id: e.id,
                at: rfc3339(e.at),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                detail: e.detail,
            })
            .collect())
    }
}
