//! The one error shape of the API: `{"identifier": "...", "message": "..."}`, with the
//! identifiers of iDenfy's error reference (plus `NOT_FOUND` and `CONFLICT`) and the matching
//! status. Internal failures are logged with their whole cause chain; the client gets a generic
//! message that never carries key material or SQL.

use std::any::Any;
use std::error::Error as StdError;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::keys::KeyError;
use crate::keys::material::ImportError;

/// An API error: status, identifier and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    identifier: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// Close the connection after answering (the request was not read to its end).
    close: bool,
}

/// Every identifier an error body may carry (the API description lists them).
pub const IDENTIFIERS: [&str; 12] = [
    "BAD_VALUE",
    "MISSING_VALUE",
    "JSON_ERROR",
    "ENCODING_ERROR",
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "PERMISSIONS_ERROR",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "TOO_MANY_REQUESTS",
    "INTERNAL_ERROR",
];

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What went wrong, with the identifiers of iDenfy's error reference (plus `NOT_FOUND` and
    /// `CONFLICT`).
    #[schema(schema_with = identifier_schema)]
    identifier: &'a str,
    /// What went wrong and, where there is one, the fix.
    message: &'a str,
}

fn identifier_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(IDENTIFIERS))
}

impl ApiError {
    fn new(status: StatusCode, identifier: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            IDENTIFIERS.contains(&identifier),
            "{identifier} is not among the documented identifiers"
        );
        Self {
            status,
            identifier,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// Any status and identifier (for mapping upstream answers).
    pub fn with_status(
        status: StatusCode,
        identifier: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(status, identifier, message)
    }

    /// Adds a `Retry-After` (seconds).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// 400 `BAD_VALUE`: a parameter has an invalid value or type.
    pub fn bad_value(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_VALUE", message.to_string())
    }
    /// 400 `MISSING_VALUE`: a required parameter is absent.
    pub fn missing_value(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MISSING_VALUE", message)
    }
    /// 400 `JSON_ERROR`: the body is not JSON.
    pub fn json_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "JSON_ERROR", message)
    }
    /// 400 `ENCODING_ERROR`: the body is not UTF-8.
    pub fn encoding_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ENCODING_ERROR", message)
    }
    /// 400 `VALIDATION_ERROR`: well-formed values that break a rule.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }
    /// 401 `UNAUTHORIZED` (with `WWW-Authenticate`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
    /// 403 `PERMISSIONS_ERROR`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PERMISSIONS_ERROR", message)
    }
    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    /// 405 `METHOD_NOT_ALLOWED`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "the HTTP method is not supported for this endpoint",
        )
    }
    /// 409 `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }
    /// 413 `BAD_VALUE`: the body exceeds the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_VALUE",
            format!("the request body exceeds {limit} bytes"),
        )
    }
    /// 408 `BAD_VALUE`: the body did not arrive within `deadline`; the connection is closed.
    pub fn body_timeout(deadline: std::time::Duration) -> Self {
        Self {
            close: true,
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "BAD_VALUE",
                format!(
                    "the request body did not arrive within {} (KEYHOST_HTTP_BODY_TIMEOUT)",
                    humantime::format_duration(deadline)
                ),
            )
        }
    }
    /// 415 `BAD_VALUE`: the body is not declared as JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_VALUE",
            "send the body as JSON with Content-Type: application/json",
        )
    }
    /// 429 `TOO_MANY_REQUESTS` with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", message)
        }
    }
    /// 503 `INTERNAL_ERROR` with `Retry-After`: temporarily unable, nothing wrong with the request.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_ERROR", message)
        }
    }
    /// 500 `INTERNAL_ERROR`; logs the cause chain and tells the client nothing more.
    pub fn internal(err: &(dyn StdError + 'static)) -> Self {
        let mut chain = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "an unexpected error occurred; it has been logged",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The identifier.
    pub fn identifier(&self) -> &'static str {
        self.identifier
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                identifier: self.identifier,
                message: &self.message,
            }),
        )
            .into_response();
        let headers = res.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyhost\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl From<crate::kyc::KycError> for ApiError {
    fn from(e: crate::kyc::KycError) -> Self {
        match e {
            crate::kyc::KycError::Store(e) => e.into(),
            crate::kyc::KycError::Issuance(e) => e.into(),
        }
    }
}

impl From<crate::email::EmailError> for ApiError {
    fn from(e: crate::email::EmailError) -> Self {
        ApiError::bad_value(e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound(kid) => ApiError::not_found(format!("no key with kid {kid:?}")),
            KeyError::Conflict(m) => ApiError::conflict(m),
            KeyError::Invalid(m) => ApiError::validation(m),
            KeyError::Import(e) => match e {
                ImportError::RsaTooSmall
                | ImportError::RsaTooLarge
                | ImportError::RsaExponent(_)
                | ImportError::Unsupported(_)
                | ImportError::Encrypted
                | ImportError::Several(_)
                | ImportError::NotPrivate(_) => ApiError::validation(e.to_string()),
                ImportError::NotPem | ImportError::UnknownLabel(_) | ImportError::Malformed(..) => {
                    ApiError::bad_value(format!("pem: {e}"))
                }
            },
            other => ApiError::internal(&other),
        }
    }
}

/// The identifier used for a bare status produced outside the handlers.
fn identifier_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "PERMISSIONS_ERROR",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::CONFLICT => "CONFLICT",
        StatusCode::TOO_MANY_REQUESTS => "TOO_MANY_REQUESTS",
        s if s.is_server_error() => "INTERNAL_ERROR",
        _ => "BAD_VALUE",
    }
}

/// Guarantees the error shape for responses made outside the handlers (routing, body limits,
/// the HTTP layer): any error response that is not JSON gets the standard body; headers such as
/// `Allow` are kept.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let message = match status {
        StatusCode::NOT_FOUND => "no such endpoint".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => {
            "the HTTP method is not supported for this endpoint".to_owned()
        }
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_owned(),
    };
    let body = ApiError::new(status, identifier_for(status), message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, body.into_body())
}

/// Logs an answer the trace layer classifies as a failure (a 5xx). A 502 or 503 is an answer
/// keyhost means to give (AIR Kit refused or is down, no key may sign yet, a webhook is not
/// configured): the caller is told what to do, and the log gets a warning. Anything else is
/// unexpected and an error.
pub fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass as Class;
    let latency_ms = latency.as_millis() as u64;
    match class {
        Class::StatusCode(s)
            if s == StatusCode::BAD_GATEWAY || s == StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(status = s.as_u16(), latency_ms, "response failed")
        }
        other => tracing::error!(classification = %other, latency_ms, "response failed"),
    }
}

/// Turns a panic in a handler into a 500 with the standard body.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "an unexpected error occurred; it has been logged",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_a_500_with_the_standard_body_and_without_its_message() {
        let res = panic_response(Box::new(String::from("secret detail from a handler")));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["identifier"], "INTERNAL_ERROR");
        assert!(value["message"].is_string());
        assert!(!String::from_utf8_lossy(&body).contains("secret detail"));
    }
}
