//! `GET /.well-known/jwks.json`: pre-serialised bytes, a strong ETag, `304` on a match.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// The JWKS route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
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

async fn jwks(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
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
