//! HTTP surface: two routers on two listeners, so that only the JWKS faces the internet.
//!
//! - public: `GET /.well-known/jwks.json`, `GET /healthz`;
//! - internal: `POST /v1/tokens` (client API key), `/admin/...` (admin token), `GET /healthz`,
//!   `GET /readyz`.
//!
//! Both wrap their routes in the same layers: panics become 500s, any error response without
//! the standard body gets one, and bodies are capped. A route is registered with its
//! description ([`openapi::Routes`]), so the API description served at `/openapi.json` lists
//! exactly what the listeners answer.

pub mod admin;
pub mod error;
pub mod extract;
pub mod health;
pub mod issuance;
pub mod jwks;
pub mod openapi;
pub mod serve;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod webhooks;

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{Client, ClientRegistry};
use crate::clock::Clock;
use crate::config::Config;
use crate::issuance::IssuanceService;
use crate::keys::KeyService;
use crate::ledger::MintLedger;
use crate::lifecycle::Lifecycle;
use crate::live::LiveKeys;
use crate::metrics::Metrics;
use crate::store::Store;
use error::ApiError;
use openapi::Routes;

/// Everything a handler may need, behind one `Arc`: axum clones the state for every request, and
/// one reference count is cheaper than a dozen on the hot paths.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppStateInner {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Source of "now" for tokens and lifecycle decisions.
    pub clock: Arc<dyn Clock>,
    /// The database (admin paths only; never the hot paths).
    pub store: Arc<Store>,
    /// Key lifecycle operations.
    pub keys: Arc<KeyService>,
    /// Mints Partner JWTs with the live keys.
    pub minter: Arc<crate::mint::Minter>,
    /// Serialised JWKS and parsed signing keys.
    pub live: Arc<LiveKeys>,
    /// Applies transitions and refreshes the in-memory views.
    pub lifecycle: Arc<Lifecycle>,
    /// API clients, in memory.
    pub clients: Arc<ClientRegistry>,
    /// The admin credentials: the bootstrap token and the named ones.
    pub admin: Arc<crate::admins::AdminRegistry>,
    /// Creates, lists and disables named admin credentials.
    pub admin_service: Arc<crate::admins::AdminService>,
    /// Randomness for signatures and token ids.
    pub rng: Arc<SystemRandom>,
    /// Who fetched the JWKS, and which key set it got.
    pub sightings: Arc<crate::sightings::Sightings>,
    /// `Cache-Control` of the JWKS (the usual value built once).
    pub jwks_caching: jwks::JwksCaching,
    /// Per-client limit on token requests; `None` when unlimited.
    pub rate_limit: Option<Arc<ClientRateLimiter>>,
    /// The issuance proxy.
    pub issuance: Arc<IssuanceService>,
    /// Creates, lists and disables API clients.
    pub client_admin: Arc<crate::clients::ClientService>,
    /// The audit trail, for reading.
    pub audit: crate::audit::AuditLog,
    /// KYC subjects and webhook deliveries.
    pub kyc: Arc<crate::kyc::KycService>,
    /// Prometheus counters.
    pub metrics: Arc<Metrics>,
    /// Per-client mint counts, flushed to the audit trail.
    pub ledger: Arc<MintLedger>,
    /// Failed authentications per client address.
    pub auth_throttle: throttle::AuthThrottle,
    /// Checks and makes the MACs of the rows keyhost trusts.
    pub row_auth: Arc<crate::integrity::RowAuth>,
    /// keyhost's clock against AIR Kit's.
    pub clock_skew: Arc<crate::clock::ClockSkew>,
}

/// Token requests per client id (GCRA, burst of the whole hourly quota).
pub type ClientRateLimiter = governor::DefaultKeyedRateLimiter<String>;

/// Counts one Partner JWT request of `client` against `KEYHOST_CLIENT_RATE_LIMIT`: minting a
/// token, or asking keyhost to call AIR Kit with one (issue, status). 429 with `Retry-After` when
/// the hourly quota is spent.
pub fn check_client_rate(state: &AppState, client: &Client) -> Result<(), ApiError> {
    let Some(limiter) = &state.rate_limit else {
        return Ok(());
    };
    // The limit is the client's across every server sharing the store: each enforces its share
    // by charging a request as many cells as there are live servers (no database on this path).
    let share = std::num::NonZeroU32::new(state.lifecycle.replicas().live()).unwrap_or(NONZERO_ONE);
    let checked = match limiter.check_key_n(&client.id, share) {
        Ok(checked) => checked,
        // More servers than the whole quota: each may still pass one request per quota period.
        Err(_) => limiter.check_key(&client.id),
    };
    checked.map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        ApiError::too_many_requests(
            format!(
                "client {} exceeded {} Partner JWT requests per hour (KEYHOST_CLIENT_RATE_LIMIT; \
                 tokens, issuances and status calls all count)",
                client.id, state.config.tokens.client_rate_limit
            ),
            wait.as_secs() + 1,
        )
    })
}

const NONZERO_ONE: std::num::NonZeroU32 = std::num::NonZeroU32::MIN;

/// The limiter for `per_hour` requests per client, or `None` for 0 (unlimited).
pub fn client_rate_limiter(per_hour: u32) -> Option<Arc<ClientRateLimiter>> {
    let per_hour = std::num::NonZeroU32::new(per_hour)?;
    Some(Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_hour(per_hour),
    )))
}

/// The router of `routes` (the only way in: every route a listener answers is one its
/// description lists) with the layers both listeners share.
fn common_layers(routes: Routes, state: AppState) -> Router {
    let (router, _) = routes.split();
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::map_response(error::json_errors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(TraceLayer::new_for_http().on_failure(error::log_failure))
        .with_state(state)
}

/// The routes of the public listener, with their description.
pub fn public_routes() -> Routes {
    Routes::new()
        .merge(jwks::routes())
        .merge(health::public_routes())
}

/// The routes of the internal listener, with their description.
pub fn internal_routes() -> Routes {
    Routes::new()
        .merge(tokens::routes())
        .merge(issuance::routes())
        .merge(webhooks::routes())
        .merge(admin::routes())
        .merge(health::internal_routes())
}

/// The public listener's router.
pub fn public_router(state: AppState) -> Router {
    common_layers(public_routes(), state)
}

/// Routes of the internal listener. Every answer is `Cache-Control: no-store`, including those
/// made outside the routes (unknown paths, wrong methods, panics), so the layer wraps the whole
/// router rather than the routes alone.
pub fn internal_router(state: AppState) -> Router {
    common_layers(internal_routes(), state).layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
}
