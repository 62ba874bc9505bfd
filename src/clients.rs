//! API clients: creation (the key is shown once), listing and disabling, with their rules.
//! One service for the admin API and the CLI.

use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;

use std::sync::Arc;

use crate::auth::{ClientRegistry, issue_client_key};
use crate::clock::{Clock, rfc3339};
use crate::integrity::RowAuth;
use crate::scope::validate_scope;
use crate::store::clients::ClientRow;
use crate::store::{self, Store, StoreError};

/// A client as the API shows it (never its secret or hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Client)]
pub struct ClientView {
    /// Client id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// Creation time, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Disabling time, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
    /// `failed` when the row fails its integrity check: it was not written by keyhost and its
    /// key is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^failed$")]
    pub integrity: Option<&'static str>,
}

impl From<&ClientRow> for ClientView {
    fn from(r: &ClientRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            created_at: rfc3339(r.created_at),
            disabled_at: r.disabled_at.map(rfc3339),
            integrity: None,
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A value breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No such client.
    #[error("no client with id {0:?}")]
    NotFound(String),
    /// Already disabled.
    #[error("client {0} is already disabled")]
    AlreadyDisabled(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// API clients: creation, listing and disabling, each change one transaction with its audit
/// row. In a server, the in-memory registry follows every change at once.
pub struct ClientService {
    store: Arc<Store>,
    auth: Arc<RowAuth>,
    clock: Arc<dyn Clock>,
    registry: Option<Arc<ClientRegistry>>,
}

impl std::fmt::Debug for ClientService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService").finish_non_exhaustive()
    }
}

impl ClientService {
    /// A service over `store`; `registry` is the server's in-memory view (none in the CLI).
    pub fn new(
        store: Arc<Store>,
        auth: Arc<RowAuth>,
        clock: Arc<dyn Clock>,
        registry: Option<Arc<ClientRegistry>>,
    ) -> Self {
        Self {
            store,
            auth,
            clock,
            registry,
        }
    }

    /// Creates a client; returns it and its API key (the only time the key exists in the
    /// clear).
    pub async fn create(
        &self,
        name: &str,
        scopes: &[String],
        actor: &str,
    ) -> Result<(ClientView, SecretString), ClientError> {
        // At most 100 characters as sent (as the API description says), white space around
        // them trimmed.
        let sent = name.chars().count();
        let name = name.trim();
        if name.is_empty() || sent > 100 || name.chars().any(char::is_control) {
            return Err(ClientError::Invalid(
                "name must be 1 to 100 printable characters".into(),
            ));
        }
        if scopes.is_empty() || scopes.len() > 16 {
            return Err(ClientError::Invalid(
                "scopes must list 1 to 16 scopes, e.g. [\"issue\"]".into(),
            ));
        }
        let mut unique: Vec<String> = Vec::new();
        for s in scopes {
            validate_scope(s).map_err(|e| ClientError::Invalid(e.to_string()))?;
            if !unique.contains(s) {
                unique.push(s.clone());
            }
        }
        let now = self.clock.now();
        let issued = issue_client_key();
        let mut row = ClientRow {
            id: issued.id.clone(),
            name: name.to_owned(),
            scopes: unique,
            secret_hash: issued.secret_hash.to_vec(),
            created_at: now,
            disabled_at: None,
            mac: None,
        };
        row.mac = Some(self.auth.client_mac(&row));
        let view = ClientView::from(&row);
        let actor = actor.to_owned();
        self.store
            .write(move |tx| {
                store::clients::insert(tx, &row)?;
                store::audit::record(
                    tx,
                    now,
                    &actor,
                    "client.create",
                    &row.id,
                    &json!({"name": row.name, "scopes": row.scopes}),
                )
            })
            .await?;
        self.reload().await?;
        Ok((view, issued.api_key))
    }

    /// Every client, each flagged if its row fails its integrity check.
    pub async fn list(&self) -> Result<Vec<ClientView>, ClientError> {
        let rows = self.store.read(store::clients::list).await?.rows;
        Ok(rows
            .iter()
            .map(|r| ClientView {
                integrity: (!self.auth.client_ok(r)).then_some("failed"),
                ..ClientView::from(r)
            })
            .collect())
    }

    /// Disables a client at once; its key stops working (in the server's registry even if the
    /// reload that follows fails).
    pub async fn disable(&self, id: &str, actor: &str) -> Result<ClientView, ClientError> {
        let (now, auth, id_owned, actor) = (
            self.clock.now(),
            self.auth.clone(),
            id.to_owned(),
            actor.to_owned(),
        );
        let view = self
            .store
            .write(move |tx| {
                let id = id_owned.as_str();
                let Some(_) = store::clients::get(tx, id)? else {
                    return Err(ClientError::NotFound(id.to_owned()));
                };
                if !store::clients::disable(tx, id, now)? {
                    return Err(ClientError::AlreadyDisabled(id.to_owned()));
                }
                store::audit::record(tx, now, &actor, "client.disable", id, &json!({}))?;
                // A disabled client authenticates nothing, so a forged row may be disabled too
                // (that is the remedy); its MAC then covers the disabling.
                let row = store::clients::get(tx, id)?
                    .ok_or_else(|| ClientError::NotFound(id.to_owned()))?;
                store::clients::set_mac(tx, id, &auth.client_mac(&row))?;
                Ok(ClientView::from(&row))
            })
            .await?;
        if let Some(registry) = self.registry.clone() {
            // Blocking (it waits for a reload in progress), so off the async threads.
            let id = id.to_owned();
            let _ = tokio::task::spawn_blocking(move || registry.withdraw(&id)).await;
        }
        self.reload().await?;
        Ok(view)
    }

    /// Rebuilds the server's registry from the store (nothing in the CLI).
    pub async fn reload(&self) -> Result<(), ClientError> {
        if let Some(registry) = self.registry.clone() {
            let store = self.store.clone();
            crate::store::off_thread(move || registry.reload(&store)).await?;
        }
        Ok(())
    }
}
