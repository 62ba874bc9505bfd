//! The AIR Kit REST client: Issue on Behalf and status, behind a trait so that tests can put the
//! emulator or anything else behind it.
//!
//! The client only transports: it sends what it is given with the Partner JWT it is given and
//! reports the status, body and `Retry-After`; retrying and interpreting are the issuance
//! service's job. [`hint`] holds the seeds' "how to fix" text for each AIR status.
//!
//! It never follows a redirect (the Partner JWT must not be forwarded to another host) and reads
//! at most [`MAX_ANSWER_BYTES`] of an answer, streaming it, so whatever sits at the base URL
//! cannot make keyhost buffer an endless or huge body.

pub mod hint;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use reqwest::header::{HeaderValue, RETRY_AFTER, USER_AGENT};
use serde_json::Value;

use crate::http_client::{self, BodyError};

/// AIR Kit's sandbox base URL.
pub const SANDBOX_BASE_URL: &str = "https://api.sandbox.mocachain.org/v1";
/// AIR Kit's production base URL (the Issue-on-Behalf reference's).
pub const PRODUCTION_BASE_URL: &str = "https://api.mocachain.org/v1";

/// Largest answer read from AIR Kit. Its answers are small JSON objects (a hash, a status, an
/// error message); anything near this size is not AIR Kit speaking.
pub const MAX_ANSWER_BYTES: usize = http_client::MIB;

/// A boxed future, so that [`AirKit`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What AIR Kit answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// `Retry-After`, in seconds form or as an HTTP date already converted.
    pub retry_after: Option<Duration>,
    /// AIR Kit's clock when it answered (its `Date` header, Unix seconds): an independent clock
    /// to check keyhost's own against.
    pub date: Option<i64>,
}

impl Reply {
    /// AIR's error message (`{"error": n, "message": "..."}`), or the body as text.
    pub fn message(&self) -> String {
        match self.body.get("message").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None if self.body.is_null() => "(no body)".to_owned(),
            None => self.body.to_string(),
        }
    }
}

/// Why no answer came back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The request timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be made.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Anything else on the way.
    #[error("request failed: {0}")]
    Other(String),
    /// The answer's body is larger than [`MAX_ANSWER_BYTES`]; it was not read to the end.
    #[error(
        "the answer (HTTP {status}) was refused: {reason}. AIR Kit's answers are small JSON; \
         check that KEYHOST_AIRKIT_BASE_URL points at AIR Kit's API and that no proxy answers in \
         its place"
    )]
    TooLarge {
        /// The status of the refused answer.
        status: u16,
        /// What was too large, with the cap.
        reason: String,
    },
}

impl TransportError {
    /// Whether trying again soon may succeed: timeouts, refused connections and broken
    /// exchanges come and go. An oversized answer does not: whatever answers at the base URL
    /// answers the same way on the next try, so retrying only repeats the call (an issue that
    /// AIR may already have accepted) without a chance of a different outcome.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::TooLarge { .. })
    }
}

/// The two AIR Kit calls keyhost makes.
pub trait AirKit: Send + Sync + 'static {
    /// `POST /credentials/issue-on-behalf` with `body`, authenticated by `token`.
    fn issue_on_behalf<'a>(
        &'a self,
        token: &'a str,
        body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, TransportError>>;

    /// `GET /credentials/status?coreClaimHash=`, authenticated by `token`.
    fn status<'a>(
        &'a self,
        token: &'a str,
        core_claim_hash: &'a str,
    ) -> BoxFuture<'a, Result<Reply, TransportError>>;
}

/// AIR Kit over HTTPS (or HTTP, for the emulator).
#[derive(Debug, Clone)]
pub struct HttpAirKit {
    client: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl HttpAirKit {
    /// A client for `base_url` (which includes `/v1`), with a per-request `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, TransportError> {
        // No redirects: x-partner-auth must never be forwarded to another host.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| TransportError::Other(e.to_string()))?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply, TransportError> {
        let res = req
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("keyhost/", env!("CARGO_PKG_VERSION"))),
            )
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let date = res
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(httpdate_to_unix);
        let bytes = http_client::read_capped(res, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::Read(e) => self.transport(e),
                too_large => TransportError::TooLarge {
                    status,
                    reason: too_large.to_string(),
                },
            })?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            retry_after,
            date,
        })
    }

    fn transport(&self, e: reqwest::Error) -> TransportError {
        if e.is_timeout() {
            TransportError::Timeout(self.timeout)
        } else if e.is_connect() {
            TransportError::Connect(e.to_string())
        } else {
            TransportError::Other(e.to_string())
        }
    }
}

/// Longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP date, at most [`RETRY_AFTER_CAP`].
fn parse_retry_after(v: &str) -> Option<Duration> {
    let cap = RETRY_AFTER_CAP.as_secs();
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs.min(cap)));
    }
    let when = httpdate_to_unix(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs((when - now).clamp(0, cap as i64) as u64))
}

/// An HTTP date (RFC 9110 IMF-fixdate, and the obsolete forms) as Unix seconds.
pub fn httpdate_to_unix(v: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

impl AirKit for HttpAirKit {
    fn issue_on_behalf<'a>(
        &'a self,
        token: &'a str,
        body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, TransportError>> {
        Box::pin(async move {
            let req = self
                .client
                .post(format!("{}/credentials/issue-on-behalf", self.base_url))
                .header("x-partner-auth", token)
                .json(body);
            self.send(req).await
        })
    }

    fn status<'a>(
        &'a self,
        token: &'a str,
        core_claim_hash: &'a str,
    ) -> BoxFuture<'a, Result<Reply, TransportError>> {
        Box::pin(async move {
            let req = self
                .client
                .get(format!("{}/credentials/status", self.base_url))
                .query(&[("coreClaimHash", core_claim_hash)])
                .header("x-partner-auth", token);
            self.send(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_an_oversized_answer_is_not_transient() {
        let too_large = TransportError::TooLarge {
            status: 200,
            reason: "the response body exceeds the cap".into(),
        };
        assert!(!too_large.is_transient());
        for transient in [
            TransportError::Timeout(Duration::from_secs(1)),
            TransportError::Connect("refused".into()),
            TransportError::Other("reset".into()),
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
    }
}
