//! `/admin/...`: keys (list, rotate, retire, revoke, import), clients (create, list, disable) and
//! the audit trail. Every route requires the admin token; every change is audited with the actor
//! `admin-api` and followed by a lifecycle round, so the JWKS and signers reflect it at once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{AdminAuth, JsonBody, QueryParams};
use super::{AppState, blocking};
use crate::clients::{self, ClientError};
use crate::clock::rfc3339;
use crate::issuance::IssuanceView;
use crate::keys::{Alg, KeyRecord, KeyState};
use crate::store;

const ACTOR: &str = "admin-api";

/// Admin routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list_keys))
        .route("/admin/keys/rotate", post(rotate))
        .route("/admin/keys/import", post(import))
        .route("/admin/keys/{kid}/retire", post(retire))
        .route("/admin/keys/{kid}/revoke", post(revoke))
        .route("/admin/clients", get(list_clients).post(create_client))
        .route("/admin/clients/{id}/disable", post(disable_client))
        .route("/admin/audit", get(audit))
        .route("/admin/issuances", get(list_issuances))
        .route("/admin/issuances/{id}", get(one_issuance))
        .route("/admin/issuances/{id}/resume", post(resume_issuance))
        .route(
            "/admin/kyc-subjects",
            get(list_kyc_subjects).post(put_kyc_subject),
        )
        .route("/admin/kyc-events", get(list_kyc_events))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    outcome: Option<String>,
    limit: Option<u32>,
}

fn limit_of(q: &ListQuery) -> Result<u32, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_value("limit must be between 1 and 1000"))
    }
}

async fn list_issuances(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(&q)?;
    let wanted = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| {
            ApiError::bad_value(format!(
                "state must be one of {}",
                crate::issuance::state::ALL.join(", ")
            ))
        })?;
    let rows = state
        .issuance
        .list(wanted, limit)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let views: Vec<IssuanceView> = rows.iter().map(IssuanceView::from).collect();
    Ok(Json(json!({ "issuances": views })))
}

async fn one_issuance(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.get(&id).await {
        Ok(Some(row)) => Ok(Json(IssuanceView::from(&row))),
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn resume_issuance(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IssuanceView>, ApiError> {
    match state.issuance.resume(&id, ACTOR).await {
        Ok(Some(issuance)) => Ok(Json(IssuanceView::from(&issuance))),
        Ok(None) => Err(ApiError::not_found(format!("no issuance {id:?}"))),
        Err(crate::issuance::IssuanceError::Invalid(m)) => Err(ApiError::conflict(m)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct KycSubject {
    client_id: Option<String>,
    email: Option<String>,
}

async fn put_kyc_subject(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<KycSubject>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let client_id = req
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::missing_value("clientId is required"))?;
    if client_id.len() > 200 {
        return Err(ApiError::bad_value(
            "clientId must be at most 200 characters",
        ));
    }
    let email = req
        .email
        .ok_or_else(|| ApiError::missing_value("email is required"))?;
    super::tokens::validate_email(&email)?;
    let (store, now) = (state.store.clone(), state.clock.now());
    let (c2, e2) = (client_id.clone(), email.clone());
    let mac = state.row_auth.subject_mac(&client_id, &email);
    blocking(move || {
        store.with(|c| {
            let tx = c.transaction()?;
            store::kyc::put_subject(&tx, &c2, &e2, now, &mac)?;
            store::audit::record(&tx, now, ACTOR, "kyc-subject.put", &c2, &json!({}))?;
            tx.commit()?;
            Ok::<_, crate::store::StoreError>(())
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"clientId": client_id, "email": email})),
    ))
}

async fn list_kyc_subjects(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let rows = blocking(move || store.with(|c| store::kyc::subjects(c))).await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            let ok = state
                .row_auth
                .subject_ok(&s.client_id, &s.email, s.mac.as_deref());
            let mut v = json!({"clientId": s.client_id, "email": s.email, "createdAt": rfc3339(s.created_at)});
            if !ok {
                v["integrity"] = json!("failed");
            }
            v
        })
        .collect();
    Ok(Json(json!({ "subjects": rows })))
}

async fn list_kyc_events(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(&q)?;
    let store = state.store.clone();
    let outcome = q.outcome.clone();
    let rows =
        blocking(move || store.with(|c| store::kyc::list(c, outcome.as_deref(), limit))).await?;
    Ok(Json(json!({ "events": rows })))
}

/// A key as the admin API shows it: state and timestamps, the public JWK, never private parts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    kid: String,
    alg: Alg,
    state: &'static str,
    origin: &'static str,
    bits: u32,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signable_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retired_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// Pending: seconds of its publish lead a running server has still to serve (it signs only
    /// once this is 0 and `signableAt` has passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_to_serve: Option<i64>,
    /// Retired: seconds of its grace a running server has still to serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_to_serve: Option<i64>,
    /// The latest expiry of a token it signed, as recorded (it stays published until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_token_expires_at: Option<String>,
    public_jwk: crate::jwks::PublicJwk,
    /// `failed` when the row fails its integrity check: it was not written by keyhost, and is
    /// neither published nor used.
    #[serde(skip_serializing_if = "Option::is_none")]
    integrity: Option<&'static str>,
}

impl KeyView {
    /// The view of a key and whether its row passed its integrity check.
    pub fn checked(k: &KeyRecord, trusted: bool) -> Self {
        Self {
            integrity: (!trusted).then_some("failed"),
            ..Self::from(k)
        }
    }
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        Self {
            kid: k.kid.clone(),
            alg: k.alg,
            state: k.state.as_str(),
            origin: k.origin.as_str(),
            bits: k.bits,
            created_at: rfc3339(k.created_at),
            published_at: k.published_at.map(rfc3339),
            signable_at: k.signable_at.map(rfc3339),
            activated_at: k.activated_at.map(rfc3339),
            retired_at: k.retired_at.map(rfc3339),
            expires_at: k.expires_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            lead_to_serve: (k.state == KeyState::Pending && k.published_at.is_some())
                .then_some(k.lead_remaining),
            grace_to_serve: (k.state == KeyState::Retired).then_some(k.grace_remaining),
            last_token_expires_at: k.last_exp.map(rfc3339),
            public_jwk: k.public_jwk.clone(),
            integrity: None,
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(m) => ApiError::validation(m),
            ClientError::NotFound(id) => ApiError::not_found(format!("no client with id {id:?}")),
            e @ ClientError::AlreadyDisabled(_) => ApiError::conflict(e.to_string()),
            ClientError::Store(e) => ApiError::internal(&e),
        }
    }
}

/// After a change: apply what it made due and rebuild the views.
async fn settle(state: &AppState) -> Result<(), ApiError> {
    state.lifecycle.settle(ACTOR).await?;
    state.lifecycle.wake();
    Ok(())
}

async fn list_keys(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.keys.clone();
    let list = blocking(move || keys.inventory()).await?;
    let views: Vec<KeyView> = list
        .iter()
        .map(|(k, ok)| KeyView::checked(k, *ok))
        .collect();
    Ok(Json(json!({ "keys": views })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    alg: Option<String>,
    emergency: Option<bool>,
}

async fn rotate(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RotateRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let alg = match req.alg.as_deref() {
        None => return Err(ApiError::missing_value("alg is required (ES256 or RS256)")),
        Some(a) => a.parse::<Alg>().map_err(ApiError::bad_value)?,
    };
    let emergency = req.emergency.unwrap_or(false);
    let keys = state.keys.clone();
    let rotated = blocking(move || keys.rotate(alg, emergency, ACTOR)).await?;
    for kid in &rotated.revoked {
        state.live.withdraw(kid);
    }
    settle(&state).await?;
    if let Some(w) = &rotated.warning {
        tracing::warn!(kid = %rotated.key.kid, warning = %w, "emergency rotation");
    }
    let mut body = json!({ "key": KeyView::from(&rotated.key) });
    if emergency {
        body["revoked"] = json!(rotated.revoked);
    }
    if let Some(w) = rotated.warning {
        body["warning"] = json!(w);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

async fn retire(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = state.keys.clone();
    let key = blocking(move || keys.retire(&kid, ACTOR)).await?;
    settle(&state).await?;
    Ok(Json(json!({ "key": KeyView::from(&key) })))
}

async fn revoke(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = state.keys.clone();
    let (key, warning) = blocking(move || keys.revoke(&kid, ACTOR)).await?;
    state.live.withdraw(&key.kid);
    settle(&state).await?;
    let mut body = json!({ "key": KeyView::from(&key) });
    if let Some(w) = warning {
        body["warning"] = json!(w);
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRequest {
    /// The private key; held in a redacting, zeroising type.
    pem: Option<secrecy::SecretString>,
    kid: Option<String>,
}

async fn import(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let pem = req
        .pem
        .ok_or_else(|| ApiError::missing_value("pem is required (the private key in PEM form)"))?;
    let keys = state.keys.clone();
    let kid = req.kid;
    let key = blocking(move || {
        keys.import(
            secrecy::ExposeSecret::expose_secret(&pem),
            kid.as_deref(),
            ACTOR,
        )
    })
    .await?;
    settle(&state).await?;
    let mut body = json!({ "key": KeyView::from(&key) });
    if key.kid != key.public_jwk.thumbprint() {
        body["note"] = json!(
            "an explicit kid can name only one published key at a time: a successor needs another kid"
        );
    }
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateClientRequest {
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

async fn create_client(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateClientRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = req
        .name
        .ok_or_else(|| ApiError::missing_value("name is required"))?;
    let scopes = req
        .scopes
        .ok_or_else(|| ApiError::missing_value("scopes is required, e.g. [\"issue\"]"))?;
    let (store, now, auth) = (
        state.store.clone(),
        state.clock.now(),
        state.row_auth.clone(),
    );
    let (view, api_key) =
        blocking(move || clients::create(&store, &auth, now, &name, &scopes, ACTOR)).await?;
    reload_clients(&state).await?;
    let mut body = serde_json::to_value(&view).expect("serialises");
    body["apiKey"] = json!(secrecy::ExposeSecret::expose_secret(&api_key));
    Ok((StatusCode::CREATED, Json(body)))
}

async fn reload_clients(state: &AppState) -> Result<(), ApiError> {
    let (clients, store) = (state.clients.clone(), state.store.clone());
    blocking(move || clients.reload(&store)).await
}

async fn list_clients(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let (store, auth) = (state.store.clone(), state.row_auth.clone());
    let list = blocking(move || clients::list(&store, &auth)).await?;
    Ok(Json(json!({ "clients": list })))
}

async fn disable_client(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (store, now, auth) = (
        state.store.clone(),
        state.clock.now(),
        state.row_auth.clone(),
    );
    let disabled = id.clone();
    let view = blocking(move || clients::disable(&store, &auth, now, &disabled, ACTOR)).await?;
    // At once, even if the reload that follows fails.
    state.clients.withdraw(&id);
    reload_clients(&state).await?;
    Ok(Json(json!({ "client": view })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

async fn audit(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_value("limit must be between 1 and 1000"));
    }
    let store = state.store.clone();
    let entries = blocking(move || store.with(|c| store::audit::list(c, limit, q.before))).await?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": rfc3339(e.at),
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": entries })))
}
