//! The partner's JWKS as AIR Kit sees it: fetched over HTTP(S) and cached for the `max-age` its
//! server announces.
//!
//! Faithfulness matters more than convenience here. While the cached copy is fresh an unknown
//! `kid` does not trigger a refetch, so a key that signs before verifiers have fetched it fails
//! as in production. Once stale, the next request refetches. A failed fetch is an error even
//! when a stale copy exists, so that an unreachable JWKS is noticed rather than masked.
//!
//! The copy's age is measured on the emulator's clock, so that a test ages it by advancing a
//! manual clock rather than by sleeping.
//!
//! Requests never stampede the JWKS server: one fetch runs at a time, and requests that waited
//! for it share its result, success or failure.
//!
//! The fetch is bounded like AIR Kit's: a redirect is an error, not followed (the client is
//! built without redirects), and the body is read with a 1 MiB cap, so a hostile or broken JWKS
//! server can neither send the emulator elsewhere nor make it buffer an endless body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::http_client::{self, describe};
use crate::partner_jwt::KeySet;
use arc_swap::ArcSwapOption;
use axum::http::header::{ACCEPT, CACHE_CONTROL, LOCATION};
use axum::http::{HeaderMap, HeaderValue};

/// Cache lifetime when the JWKS response carries no `max-age`.
pub(super) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Largest JWKS document accepted; a real one is a few kilobytes.
const MAX_JWKS_BYTES: usize = http_client::MIB;

/// Longest `Location` quoted in an error; the rest is cut.
const MAX_LOCATION_CHARS: usize = 256;

/// A fetched JWKS.
pub(super) struct Snapshot {
    keys: KeySet,
    /// When the fetch ended, to tell requests that waited for it from later ones.
    fetched_at: Instant,
    /// When the fetch ended on the clock's monotonic face, to age the copy.
    fetched_on: Duration,
    max_age: Duration,
}

impl Snapshot {
    /// The published keys.
    pub(super) fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Whether the copy is younger than its max-age at `now` (the clock's monotonic face).
    fn is_fresh(&self, now: Duration) -> bool {
        now.saturating_sub(self.fetched_on) < self.max_age
    }

    /// The snapshot a fetch of `url` answering `body` (without `max-age`) would make; for the
    /// fuzz targets, which verify tokens without a network.
    pub(super) fn from_body(url: &str, body: &[u8]) -> Result<Self, JwksError> {
        Ok(Snapshot {
            keys: parse(url, body)?,
            fetched_at: Instant::now(),
            fetched_on: Duration::ZERO,
            max_age: DEFAULT_MAX_AGE,
        })
    }
}

/// Why no JWKS could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JwksError {
    /// The request failed (connection, TLS, timeout).
    #[error("{0}")]
    Request(String),
    /// The server answered with a non-success status.
    #[error("HTTP {status} from {url}")]
    Status {
        /// The status.
        status: u16,
        /// The JWKS URL.
        url: String,
    },
    /// The server answered with a redirect, which AIR Kit does not follow.
    #[error(
        "{url} answered HTTP {status} redirecting to {location}; AIR Kit does not follow \
         redirects: register the URL that serves the JWKS itself"
    )]
    Redirect {
        /// The status (3xx).
        status: u16,
        /// The JWKS URL.
        url: String,
        /// The `Location` header, as sent (cut if very long), or why there is none.
        location: String,
    },
    /// The body is not a JWKS.
    #[error("{url} did not return a valid JSON Web Key Set: {reason}")]
    Invalid {
        /// The JWKS URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Default)]
struct RefreshState {
    /// The last failed fetch: when it finished and why.
    last_failure: Option<(Instant, JwksError)>,
}

/// The cached JWKS of one URL.
pub(super) struct JwksCache {
    url: String,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    current: ArcSwapOption<Snapshot>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

/// The cache lifetime a response allows: `no-store`/`no-cache` or `max-age=0` mean none, a
/// `max-age=N` means N seconds, anything else the default.
pub(super) fn cache_lifetime(headers: &HeaderMap) -> Duration {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-store" || directive == "no-cache" {
                return Duration::ZERO;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=")
                && let Ok(seconds) = seconds.trim_matches('"').parse::<u64>()
            {
                max_age = Some(Duration::from_secs(seconds));
            }
        }
    }
    max_age.unwrap_or(DEFAULT_MAX_AGE)
}

/// The `Location` of a redirect, for an error message: as sent, cut if very long.
fn location(headers: &HeaderMap) -> String {
    match headers.get(LOCATION).map(HeaderValue::to_str) {
        None => "(no Location header)".to_owned(),
        Some(Err(_)) => "(an unreadable Location header)".to_owned(),
        Some(Ok(location)) if location.chars().count() > MAX_LOCATION_CHARS => {
            let cut: String = location.chars().take(MAX_LOCATION_CHARS).collect();
            format!("{cut}...")
        }
        Some(Ok(location)) => location.to_owned(),
    }
}

/// The keys of a JWKS document fetched from `url`.
fn parse(url: &str, body: &[u8]) -> Result<KeySet, JwksError> {
    KeySet::from_json(body).map_err(|e| JwksError::Invalid {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

impl JwksCache {
    /// A cache for `url`, aged on `clock`, empty until first used.
    pub(super) fn new(url: String, http: reqwest::Client, clock: Arc<dyn Clock>) -> Self {
        Self {
            url,
            http,
            clock,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// The JWKS URL.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The JWKS to verify against: the cached copy while fresh, else a new fetch.
    pub(super) async fn current(&self) -> Result<Arc<Snapshot>, JwksError> {
        if let Some(snapshot) = self.current.load_full()
            && snapshot.is_fresh(self.clock.monotonic())
        {
            return Ok(snapshot);
        }
        let waiting_since = Instant::now();
        let mut refresh = self.refresh.lock().await;
        // Someone else may have fetched while this request waited: share that result rather
        // than fetching again (this is also what keeps `no-store` from stampeding).
        if let Some(snapshot) = self.current.load_full()
            && (snapshot.is_fresh(self.clock.monotonic()) || snapshot.fetched_at >= waiting_since)
        {
            return Ok(snapshot);
        }
        if let Some((at, error)) = &refresh.last_failure
            && *at >= waiting_since
        {
            return Err(error.clone());
        }
        match self.fetch().await {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                tracing::debug!(
                    url = %self.url,
                    keys = snapshot.keys.len(),
                    max_age_s = snapshot.max_age.as_secs(),
                    "JWKS fetched"
                );
                self.current.store(Some(snapshot.clone()));
                refresh.last_failure = None;
                Ok(snapshot)
            }
            Err(error) => {
                tracing::debug!(url = %self.url, %error, "JWKS fetch failed");
                refresh.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<Snapshot, JwksError> {
        let res = self
            .http
            .get(&self.url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(|e| JwksError::Request(describe(&e)))?;
        let status = res.status();
        if status.is_redirection() {
            return Err(JwksError::Redirect {
                status: status.as_u16(),
                url: self.url.clone(),
                location: location(res.headers()),
            });
        }
        if !status.is_success() {
            return Err(JwksError::Status {
                status: status.as_u16(),
                url: self.url.clone(),
            });
        }
        let max_age = cache_lifetime(res.headers());
        let body = http_client::read_capped(res, MAX_JWKS_BYTES)
            .await
            .map_err(|e| {
                if e.is_too_large() {
                    JwksError::Invalid {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    }
                } else {
                    JwksError::Request(describe(&e))
                }
            })?;
        Ok(Snapshot {
            keys: parse(&self.url, &body)?,
            fetched_at: Instant::now(),
            fetched_on: self.clock.monotonic(),
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_lifetime_follows_max_age_no_store_and_defaults() {
        assert_eq!(
            cache_lifetime(&headers(&["public, max-age=60"])),
            Duration::from_secs(60)
        );
        assert_eq!(
            cache_lifetime(&headers(&["MAX-AGE=7"])),
            Duration::from_secs(7)
        );
        assert_eq!(cache_lifetime(&headers(&["max-age=0"])), Duration::ZERO);
        assert_eq!(
            cache_lifetime(&headers(&["max-age=60", "no-store"])),
            Duration::ZERO
        );
        assert_eq!(cache_lifetime(&headers(&["no-cache"])), Duration::ZERO);
        assert_eq!(cache_lifetime(&headers(&[])), DEFAULT_MAX_AGE);
        assert_eq!(cache_lifetime(&headers(&["max-age=soon"])), DEFAULT_MAX_AGE);
    }
}
