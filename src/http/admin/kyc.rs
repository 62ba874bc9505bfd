//! `/admin/kyc-subjects` (the clientId → email mapping of iDenfy verifications) and
//! `/admin/kyc-events` (every KYC webhook delivery).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ListQuery, limit_of};
use crate::email::Email;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{AdminAuth, JsonBody, QueryParams};
use crate::http::openapi::{
    AdminChangeErrors, AuthErrors, BadRequest, InternalError, JsonBodyErrors,
};
use crate::kyc::{KycEventView, Outcome, SubjectView};

/// An iDenfy clientId and the email it stands for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct KycSubject {
    /// iDenfy's clientId (your id for the user).
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    pub(crate) client_id: Option<String>,
    /// The email to issue to.
    #[schema(schema_with = crate::http::openapi::email, required = true)]
    pub(crate) email: Option<String>,
}

/// A mapping as it was stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MappedSubject {
    /// iDenfy's clientId.
    client_id: String,
    /// The email it maps to.
    #[schema(format = Email)]
    email: String,
}

/// Map an iDenfy clientId to an email.
///
/// A clientId that is an email address is used as is; any other is looked up here. An event
/// recorded as `unmatched` before the mapping existed is not replayed: ask iDenfy to resend it.
#[utoipa::path(
    post,
    path = "/admin/kyc-subjects",
    tag = "admin",
    security(("adminToken" = [])),
    request_body = KycSubject,
    responses(
        (status = 201, description = "mapped", body = MappedSubject),
        JsonBodyErrors,
        AdminChangeErrors,
        InternalError,
    )
)]
pub(super) async fn put_subject(
    admin: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<KycSubject>,
) -> Result<(StatusCode, Json<MappedSubject>), ApiError> {
    let client_id = req
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::missing_value("clientId is required"))?;
    if client_id.chars().count() > 200 {
        return Err(ApiError::bad_value(
            "clientId must be at most 200 characters",
        ));
    }
    let email = req
        .email
        .ok_or_else(|| ApiError::missing_value("email is required"))?;
    let email = Email::parse(&email)?;
    state
        .kyc
        .put_subject(client_id.clone(), email.clone(), &admin.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(MappedSubject {
            client_id,
            email: email.into_string(),
        }),
    ))
}

/// Every mapping.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SubjectList {
    /// The mappings.
    subjects: Vec<SubjectView>,
}

/// iDenfy clientId to email mappings.
#[utoipa::path(
    get,
    path = "/admin/kyc-subjects",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "subjects", body = SubjectList),
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn subjects(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<SubjectList>, ApiError> {
    let subjects = state.kyc.subjects().await?;
    Ok(Json(SubjectList { subjects }))
}

/// KYC deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EventList {
    /// Newest first.
    events: Vec<KycEventView>,
}

/// KYC webhook events and what came of them.
///
/// Every iDenfy delivery received, newest first; a delivery received again byte for byte is
/// counted in its first row's `repeats` (and `lastReceivedAt`), not stored again. A kyc-complete
/// delivery is an issuance with `"source": "webhook:kyc"` in `GET /admin/issuances`.
#[utoipa::path(
    get,
    path = "/admin/kyc-events",
    tag = "admin",
    security(("adminToken" = [])),
    params(
        ("outcome" = inline(Option<Outcome>), Query, description = "only events with this outcome"),
        (
            "limit" = Option<u32>,
            Query,
            description = "how many (default 100)",
            minimum = 1,
            maximum = 1000
        ),
    ),
    responses(
        (status = 200, description = "events", body = EventList),
        BadRequest,
        AuthErrors,
        InternalError,
    )
)]
pub(super) async fn events(
    _: AdminAuth,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = limit_of(q.limit)?;
    let outcome = q
        .outcome
        .as_deref()
        .map(str::parse::<Outcome>)
        .transpose()
        .map_err(ApiError::bad_value)?;
    let events = state.kyc.events(outcome, limit).await?;
    Ok(Json(EventList { events }))
}
