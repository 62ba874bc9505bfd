//! A local stand-in for AIR Kit's REST API (Issue on Behalf and its status endpoint), for tests,
//! demos and partners' development.
//!
//! It exists so that everything keyhost does against AIR Kit can be exercised on loopback, with
//! the failures production would produce. What it guarantees:
//!
//! - `x-partner-auth` is verified the way AIR Kit verifies it, by [`crate::partner_jwt`]
//!   (jsonwebtoken and a JWKS fetched over HTTP or HTTPS), never keyhost's signer: a test that
//!   passes here proves the token and the published JWKS agree, not that one piece of code agrees
//!   with itself.
//! - The JWKS is cached for the `max-age` its server announces, and an unknown `kid` is not
//!   refetched while that cache is fresh, so a key used before it was published fails exactly as
//!   it does in production.
//! - The JWKS fetch follows no redirect (a 3xx is an error naming its `Location`) and reads at
//!   most 1 MiB of body, so the JWKS server cannot send the emulator elsewhere or exhaust its
//!   memory.
//! - Request and response shapes, statuses and messages follow AIR Kit's documentation; every
//!   error body is `{"error": <status>, "message": "..."}`.
//! - Faults (429 with `Retry-After`, 500, added latency, a per-partner rate limit) can be injected
//!   from the command line and changed at run time through [`EmulatorControl`].
//! - No request, however malformed, makes the server panic.
//! - Time (added latency, the JWKS cache's age, the on-chain delay) is read from a
//!   [`Clock`](crate::clock::Clock), so that tests drive it with a manual clock.
//!
//! State is kept in memory only: a restart forgets every credential.
//!
//! It is part of the keyhost crate, not a crate of its own: `keyhost airkit-emulator` is part of
//! the documented command line, and it brings no dependency the server and `keyhost doctor` do
//! not use already (its token checks are the doctor's, [`crate::partner_jwt`]), so a separate
//! crate would save the binary only this module's code, at the price of a second binary to build
//! and link and a command renamed.

mod control;
mod credentials;
mod jwks;
mod server;
mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

pub use control::EmulatorControl;
pub(crate) use verify::verify_offline;

/// How long a JWKS fetch may take before it counts as unreachable.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Command-line flags of `keyhost airkit-emulator`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The partner's JWKS URL (http or https), as registered in AIR Kit's dashboard.
    #[arg(long)]
    pub jwks_url: String,
    /// The partner id tokens must carry in `partnerId`.
    #[arg(long)]
    pub partner_id: String,
    /// A `scope` claim value to accept (repeatable).
    #[arg(long = "accept-scope", default_values_t = ["issue".to_string()])]
    pub accept_scopes: Vec<String>,
    /// How long an issued credential stays `WAIT_ONCHAIN` before it is `ONCHAIN`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub onchain_delay: Duration,
    /// An issuer DID that exists (repeatable; none given: any DID is accepted).
    #[arg(long = "issuer-did")]
    pub issuer_dids: Vec<String>,
    /// An issuance program id that exists (repeatable; none given: any id is accepted).
    #[arg(long = "credential-id")]
    pub credential_ids: Vec<String>,
    /// A program id whose schema the issuer may not use: 403 (repeatable).
    #[arg(long = "forbidden-credential-id")]
    pub forbidden_credential_ids: Vec<String>,
    /// The email of a user who rejected consent: 409 (repeatable, compared case-insensitively).
    #[arg(long = "consent-rejected")]
    pub consent_rejected: Vec<String>,
    /// Share of requests answered 429 with `Retry-After: 1` (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate_429: f64,
    /// Share of requests answered 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate_500: f64,
    /// Delay added before every API request is handled.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Requests per second allowed per partnerId; beyond it, 429 with `Retry-After`.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// An extra trusted root CA (PEM) for fetching an HTTPS JWKS, e.g. a local test CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

impl EmulatorArgs {
    /// The command-line defaults for `jwks_url` and `partner_id`, except that it listens on
    /// `127.0.0.1:0` (a free port) rather than 8090, which is what embedding code and tests want.
    pub fn new(jwks_url: impl Into<String>, partner_id: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwks_url: jwks_url.into(),
            partner_id: partner_id.into(),
            accept_scopes: vec!["issue".to_owned()],
            onchain_delay: Duration::from_secs(3),
            issuer_dids: Vec::new(),
            credential_ids: Vec::new(),
            forbidden_credential_ids: Vec::new(),
            consent_rejected: Vec::new(),
            fail_rate_429: 0.0,
            fail_rate_500: 0.0,
            latency: Duration::ZERO,
            rate_limit: None,
            ca_file: None,
        }
    }

    /// Checks the values clap cannot check on its own.
    fn validate(&self) -> Result<(), ArgsError> {
        for (flag, rate) in [
            ("--fail-rate-429", self.fail_rate_429),
            ("--fail-rate-500", self.fail_rate_500),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ArgsError::Rate { flag, rate });
            }
        }
        if self.partner_id.trim().is_empty() {
            return Err(ArgsError::EmptyPartnerId);
        }
        if self.accept_scopes.is_empty() || self.accept_scopes.iter().any(|s| s.is_empty()) {
            return Err(ArgsError::Scopes);
        }
        if self.rate_limit == Some(0) {
            return Err(ArgsError::RateLimit);
        }
        let url = reqwest::Url::parse(&self.jwks_url).map_err(|e| ArgsError::JwksUrl {
            url: self.jwks_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ArgsError::JwksUrl {
                url: self.jwks_url.clone(),
                reason: "the scheme must be http or https".into(),
            });
        }
        Ok(())
    }
}

/// Why the emulator refuses its arguments.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A fault rate outside 0.0..=1.0.
    #[error("{flag} is {rate}; it must be between 0.0 and 1.0")]
    Rate {
        /// The flag.
        flag: &'static str,
        /// The value given.
        rate: f64,
    },
    /// An empty partner id.
    #[error("--partner-id must not be empty")]
    EmptyPartnerId,
    /// No usable scope.
    #[error("--accept-scope must name at least one non-empty scope")]
    Scopes,
    /// A rate limit of zero would refuse everything.
    #[error("--rate-limit must be at least 1 request per second (omit it for no limit)")]
    RateLimit,
    /// A JWKS URL that cannot be fetched.
    #[error("--jwks-url {url} is not a usable URL: {reason}")]
    JwksUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA file that cannot be used.
    #[error("--ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A bound emulator, listening but not yet serving.
pub struct Emulator {
    listener: TcpListener,
    state: Arc<server::AppState>,
}

impl Emulator {
    /// Validates `args`, builds the JWKS client and binds the listener (port 0 allowed).
    /// Nothing is fetched yet: the JWKS is fetched on the first authenticated request, as AIR
    /// Kit does.
    pub async fn bind(args: EmulatorArgs) -> anyhow::Result<Self> {
        Self::bind_with_clock(args, Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Emulator::bind`], with time read from `clock`.
    pub async fn bind_with_clock(
        args: EmulatorArgs,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> anyhow::Result<Self> {
        args.validate()?;
        let http = jwks_client(args.ca_file.as_deref())?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding the AIR Kit emulator to {}", args.listen))?;
        let state = Arc::new(server::AppState::new(&args, http, clock));
        Ok(Self { listener, state })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address; the fallback only keeps this
        // infallible.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Base URL including `/v1`, e.g. `http://127.0.0.1:PORT/v1` (what keyhost's
    /// `KEYHOST_AIRKIT_BASE_URL` takes).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.local_addr())
    }

    /// Handle to change faults at run time and read counters.
    pub fn control(&self) -> Arc<EmulatorControl> {
        self.state.control.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(
            base_url = %self.base_url(),
            jwks_url = %self.state.jwks_url(),
            "AIR Kit emulator serving"
        );
        let app = server::router(self.state);
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the AIR Kit emulator")?;
        tracing::info!("AIR Kit emulator stopped");
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(crate::startup::shutdown_signal()).await
    }
}

/// The HTTP client for the JWKS: a bounded time per fetch, no redirects (AIR Kit does not
/// follow them, so a JWKS URL that redirects must fail here too), plus the extra root CA if any.
fn jwks_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(JWKS_FETCH_TIMEOUT)
        .connect_timeout(JWKS_FETCH_TIMEOUT)
        .user_agent(concat!(
            "keyhost-airkit-emulator/",
            env!("CARGO_PKG_VERSION")
        ));
    if let Some(path) = ca_file {
        let ca_error = |reason: String| ArgsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ca_error("holds no PEM certificate".into()).into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().context("building the JWKS HTTP client")
}
