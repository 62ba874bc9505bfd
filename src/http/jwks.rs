//! `GET /.well-known/jwks.json`: pre-serialised bytes, a strong ETag, `304` on a match.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::openapi::{Routes, Unavailable};

/// The JWKS route.
pub fn routes() -> Routes {
    Routes::new().route(routes!(jwks))
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 requires here).
fn matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    let Ok(value) = if_none_match.to_str() else {
        return false;
    };
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// The JWKS (public listener).
///
/// Served from bytes prepared when the key set changes. `Cache-Control: public, max-age` (from
/// `KEYHOST_JWKS_MAX_AGE`), a strong `ETag`, `304` on a matching `If-None-Match`, CORS `*`.
/// `503` only from a replica that has not reached its shared database for longer than
/// `KEYHOST_JWKS_STALE_LIMIT`.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "public",
    params((
        "If-None-Match" = Option<String>,
        Header,
        description = "ETags of a copy the caller holds (`*`, lists and weak tags accepted)"
    )),
    responses(
        (
            status = 200,
            description = "the key set",
            body = crate::jwks::JwksBody,
            headers(
                ("Cache-Control" = String, description = "public, max-age=<KEYHOST_JWKS_MAX_AGE>"),
                ("ETag" = String, description = "strong validator of these bytes"),
                ("Access-Control-Allow-Origin" = String, description = "*"),
            )
        ),
        (
            status = 304,
            description = "not modified: the caller's copy is current",
            headers(
                ("Cache-Control" = String, description = "public, max-age=<KEYHOST_JWKS_MAX_AGE>"),
                ("ETag" = String, description = "strong validator of the current key set"),
                ("Access-Control-Allow-Origin" = String, description = "*"),
            )
        ),
        Unavailable,
    )
)]
async fn jwks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(stale) = state.live.may_publish() {
        state.metrics.jwks.stale.inc();
        return ApiError::unavailable(
            format!(
                "this server has not reached the database for {} s (over its {} s limit), so \
                 its copy of the key set may be out of date",
                stale.age.as_secs(),
                stale.bound.as_secs()
            ),
            5,
        )
        .into_response();
    }
    let doc = state.live.jwks_now();
    let common = [
        (header::CACHE_CONTROL, state.jwks_cache_control.clone()),
        (header::ETAG, doc.etag_header.clone()),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
    ];
    if headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches(v, &doc.etag))
    {
        state.metrics.jwks.not_modified.inc();
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    state.metrics.jwks.ok.inc();
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.body.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(matches(&h("\"abc\""), "\"abc\""));
        assert!(matches(&h("\"x\", W/\"abc\""), "\"abc\""));
        assert!(matches(&h("*"), "\"abc\""));
        assert!(!matches(&h("\"abd\""), "\"abc\""));
        assert!(!matches(&h("abc"), "\"abc\""));
    }
}
