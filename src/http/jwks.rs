//! `GET /.well-known/jwks.json`: pre-serialised bytes, a strong ETag, `304` on a match.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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
                ("Cache-Control" = String, description = "public, max-age=<KEYHOST_JWKS_MAX_AGE, less near a scheduled key publication>, stale-if-error=<KEYHOST_PUBLISH_LEAD - max-age, at most a day>"),
                ("ETag" = String, description = "strong validator of these bytes"),
                ("Access-Control-Allow-Origin" = String, description = "*"),
            )
        ),
        (
            status = 304,
            description = "not modified: the caller's copy is current",
            headers(
                ("Cache-Control" = String, description = "public, max-age=<KEYHOST_JWKS_MAX_AGE, less near a scheduled key publication>, stale-if-error=<KEYHOST_PUBLISH_LEAD - max-age, at most a day>"),
                ("ETag" = String, description = "strong validator of the current key set"),
                ("Access-Control-Allow-Origin" = String, description = "*"),
            )
        ),
        Unavailable,
    )
)]
async fn jwks(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let headers = request.headers();
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
    let now = state.clock.now();
    let cache_control = state
        .jwks_caching
        .header(now, state.live.next_publication());
    let revalidated = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches(v, &doc.etag));
    state.sightings.note(
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        super::throttle::source_addr(
            request.extensions(),
            headers,
            &state.config.http.trusted_proxies,
        ),
        now,
        &doc,
        revalidated,
    );
    let common = [
        (header::CACHE_CONTROL, cache_control),
        (header::ETAG, doc.etag_header.clone()),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
    ];
    if revalidated {
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

/// The JWKS's `Cache-Control`: `max-age` is `KEYHOST_JWKS_MAX_AGE`, but never reaches past the
/// moment the schedule publishes the next key (so caches pick it up at once), and
/// `stale-if-error` lets a verifier keep its copy through an outage, for at most the publish lead
/// less `max-age` (no key published after the copy was fetched can sign within that time).
#[derive(Debug, Clone)]
pub struct JwksCaching {
    max_age: i64,
    stale_if_error: i64,
    usual: HeaderValue,
}

impl JwksCaching {
    /// `max_age` and `publish_lead` in seconds (the lead exceeds `max_age`: the configuration
    /// refuses anything else).
    pub fn new(max_age: i64, publish_lead: i64) -> Self {
        let stale_if_error = (publish_lead - max_age).clamp(0, 24 * 3600);
        Self {
            max_age,
            stale_if_error,
            usual: Self::value(max_age, stale_if_error),
        }
    }

    fn value(max_age: i64, stale_if_error: i64) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "public, max-age={max_age}, stale-if-error={stale_if_error}"
        ))
        .expect("ASCII")
    }

    /// The header at `now`, when the next key is published at `next_publication`.
    pub fn header(&self, now: i64, next_publication: Option<i64>) -> HeaderValue {
        match next_publication.map(|at| at - now) {
            Some(left) if left < self.max_age => Self::value(left.max(0), self.stale_if_error),
            _ => self.usual.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_never_reaches_past_the_next_publication_and_stale_if_error_stays_within_the_lead() {
        let c = JwksCaching::new(300, 86_400);
        let text = |h: HeaderValue| h.to_str().unwrap().to_owned();
        assert_eq!(
            text(c.header(1_000, None)),
            "public, max-age=300, stale-if-error=86100"
        );
        assert_eq!(
            text(c.header(1_000, Some(1_000 + 3_600))),
            "public, max-age=300, stale-if-error=86100"
        );
        assert_eq!(
            text(c.header(1_000, Some(1_120))),
            "public, max-age=120, stale-if-error=86100"
        );
        assert_eq!(
            text(c.header(1_000, Some(900))),
            "public, max-age=0, stale-if-error=86100",
            "overdue: caches look again at once"
        );
        assert!(text(JwksCaching::new(300, 600).header(0, None)).ends_with("stale-if-error=300"));
    }

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
