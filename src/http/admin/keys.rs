//! `/admin/keys`: list, rotate, retire, revoke, import. Each change is followed by a lifecycle
//! round, so the JWKS and signers reflect it at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody};
use crate::http::openapi::{
    AdminChangeErrors, AuthErrors, Conflict, InternalError, JsonBodyErrors, NotFound,
};
use crate::keys::{Alg, KeyView};

/// Every key.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KeyList {
    /// Every key keyhost holds or held, with its state and times.
    keys: Vec<KeyView>,
}

/// Every key with its state and timestamps.
///
/// `leadToServe`, `graceToServe` and `lastTokenExpiresAt` where they apply; `"integrity":
/// "failed"` for a row keyhost did not write.
#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "keys", body = KeyList),
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = state.lifecycle.views().await?;
    Ok(Json(KeyList { keys }))
}

/// A rotation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    /// The algorithm whose key to rotate.
    #[schema(value_type = Alg, required = true)]
    alg: Option<String>,
    /// `true`: the new key signs at once and the old ones of the algorithm are revoked (for a
    /// compromised key; tokens they signed stop verifying).
    emergency: Option<bool>,
}

/// The key a rotation made.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RotatedKey {
    /// The new key.
    key: KeyView,
    /// Emergency rotation: the kids it revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<Vec<String>>,
    /// Something the operator must know.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

/// Rotate.
///
/// A pending successor that signs once it has been published for the publish lead, or (with
/// `emergency`) a key that signs at once, the old ones revoked.
#[utoipa::path(
    post,
    path = "/admin/keys/rotate",
    tag = "admin",
    security(("adminToken" = [])),
    request_body = RotateRequest,
    responses(
        (status = 201, description = "rotated", body = RotatedKey),
        JsonBodyErrors,
        AdminChangeErrors,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn rotate(
    admin: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RotateRequest>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    let alg = match req.alg.as_deref() {
        None => return Err(ApiError::missing_value("alg is required (ES256 or RS256)")),
        Some(a) => a.parse::<Alg>().map_err(ApiError::bad_value)?,
    };
    let emergency = req.emergency.unwrap_or(false);
    let rotated = state
        .lifecycle
        .rotate(alg, emergency, &admin.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            key: KeyView::from(&rotated.key),
            revoked: emergency.then_some(rotated.revoked),
            warning: rotated.warning,
        }),
    ))
}

/// A key as a change left it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KeyAnswer {
    /// The key.
    key: KeyView,
}

/// Retire a pending key.
#[utoipa::path(
    post,
    path = "/admin/keys/{kid}/retire",
    tag = "admin",
    security(("adminToken" = [])),
    params(("kid" = String, Path, description = "key id")),
    responses(
        (status = 200, description = "retired", body = KeyAnswer),
        AdminChangeErrors,
        NotFound,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn retire(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<KeyAnswer>, ApiError> {
    let key = state.lifecycle.retire(kid, &admin.actor()).await?;
    Ok(Json(KeyAnswer {
        key: KeyView::from(&key),
    }))
}

/// A revoked key.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RevokedKey {
    /// The key.
    key: KeyView,
    /// Something the operator must know (e.g. no key of the algorithm is left to sign).
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

/// Revoke a key now.
///
/// It leaves the JWKS and its private key is destroyed; tokens it signed stop verifying.
#[utoipa::path(
    post,
    path = "/admin/keys/{kid}/revoke",
    tag = "admin",
    security(("adminToken" = [])),
    params(("kid" = String, Path, description = "key id")),
    responses(
        (status = 200, description = "revoked", body = RevokedKey),
        AdminChangeErrors,
        NotFound,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn revoke(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<RevokedKey>, ApiError> {
    let (key, warning) = state.lifecycle.revoke(kid, &admin.actor()).await?;
    Ok(Json(RevokedKey {
        key: KeyView::from(&key),
        warning,
    }))
}

/// A private key to import.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRequest {
    /// The private key in PEM (PKCS#8, PKCS#1 or SEC1; RSA of at least 2048 bits or P-256);
    /// held in a redacting, zeroising type.
    #[schema(value_type = String, required = true)]
    pem: Option<secrecy::SecretString>,
    /// The kid to publish it under (default: its RFC 7638 thumbprint): 1 to 128 visible ASCII
    /// characters, no quotes or backslashes.
    #[schema(schema_with = crate::http::openapi::kid_or_null)]
    kid: Option<String>,
}

/// An imported key.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ImportedKey {
    /// The key.
    key: KeyView,
    /// Set when the key was given an explicit kid.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Import a private key.
///
/// A PKCS#8, PKCS#1 or SEC1 PEM private key (RSA of at least 2048 bits, or P-256), as a pending
/// key. An explicit kid names one published key at a time, so a successor needs another kid.
#[utoipa::path(
    post,
    path = "/admin/keys/import",
    tag = "admin",
    security(("adminToken" = [])),
    request_body = ImportRequest,
    responses(
        (status = 201, description = "imported", body = ImportedKey),
        JsonBodyErrors,
        AdminChangeErrors,
        Conflict,
        InternalError,
    )
)]
pub(super) async fn import(
    admin: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<(StatusCode, Json<ImportedKey>), ApiError> {
    let pem = req
        .pem
        .ok_or_else(|| ApiError::missing_value("pem is required (the private key in PEM form)"))?;
    let key = state.lifecycle.import(pem, req.kid, &admin.actor()).await?;
    let note = (key.kid != key.public_jwk.thumbprint()).then(|| {
        "an explicit kid can name only one published key at a time: a successor needs \
         another kid"
            .to_owned()
    });
    Ok((
        StatusCode::CREATED,
        Json(ImportedKey {
            key: KeyView::from(&key),
            note,
        }),
    ))
}
