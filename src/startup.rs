//! Builds and runs the server.
//!
//! [`Application::build`] does everything that can fail before serving (configuration check,
//! store and migrations, master key check against every stored key, admin token, listeners,
//! first lifecycle round) and binds its own listeners, so tests ask for port 0 and read the real
//! ports back. Nothing is served unless all of it succeeded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admins::AdminRegistry;
use crate::airkit::{AirKit, HttpAirKit};
use crate::auth::{AdminToken, AdminTokenSource, ClientRegistry};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::files::create_private_dir;
use crate::http::{self, AppState, AppStateInner};
use crate::issuance::IssuanceService;
use crate::keys::master::{self, MasterKeySource};
use crate::keys::{KeyService, Policy};
use crate::ledger::MintLedger;
use crate::lifecycle::Lifecycle;
use crate::live::LiveKeys;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// The store and key service, as both the server and the CLI open them.
pub struct Opened {
    /// The database.
    pub store: Arc<Store>,
    /// Key operations.
    pub keys: Arc<KeyService>,
    /// Rows from before row authentication, waiting for an operator's word (see
    /// [`crate::integrity::legacy::settle`]).
    pub legacy: Option<crate::integrity::legacy::Survey>,
    /// The partner id tokens carry: the configured one, else (CLI) the server's.
    pub partner_id: Option<String>,
}

/// What decides key transitions and what tokens carry, as the server runs with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServerPolicy {
    policy: Policy,
    partner_id: Option<String>,
}

/// The server records its policy in the store; the CLI follows the recorded one (when its row
/// passes its integrity check), so that a key retired from the CLI gets the server's grace, not
/// the CLI's defaults: one truth for every writer, which several replicas will need too.
fn agree_on_policy(
    config: &Config,
    store: &Store,
    auth: &crate::integrity::RowAuth,
    serving: bool,
) -> anyhow::Result<ServerPolicy> {
    let own = ServerPolicy {
        policy: config.policy(),
        partner_id: config.tokens.partner_id.clone(),
    };
    let name = store::settings::SERVER_POLICY;
    if serving {
        let json = serde_json::to_string(&own)?;
        let mac = auth.setting_mac(name, &json);
        store.blocking_write(|tx| store::settings::set_with_mac(tx, name, &json, &mac))?;
        return Ok(own);
    }
    let recorded = store
        .blocking_read(|tx| store::settings::get_with_mac(tx, name))?
        .filter(|s| auth.setting_ok(name, &s.value, s.mac.as_deref()))
        .and_then(|s| serde_json::from_str::<ServerPolicy>(&s.value).ok());
    let Some(recorded) = recorded else {
        return Ok(own);
    };
    if recorded.policy != own.policy {
        eprintln!(
            "keyhost: note: following the lifecycle policy the server last started with, not \
             this shell's settings (they differ)"
        );
    }
    Ok(ServerPolicy {
        policy: recorded.policy,
        partner_id: own.partner_id.or(recorded.partner_id),
    })
}

/// Opens the store, finds the master key and checks that it opens every stored private key.
/// `serving` is true for the server (see [`KeyService::new`]).
pub fn open(config: &Config, clock: Arc<dyn Clock>, serving: bool) -> anyhow::Result<Opened> {
    let store = open_store(config)?;
    // The master key the store was sealed under, as keyhost recorded it. Key rows name one too,
    // but a row keyhost did not write could name anything: they decide only for a store older
    // than the setting.
    let recorded =
        match store.blocking_read(|tx| store::settings::get(tx, store::settings::MASTER_KEY_ID))? {
            Some(id) => vec![id],
            None => store.blocking_read(store::keys::master_key_ids)?,
        };
    if recorded.len() > 1 {
        anyhow::bail!(
            "the store holds keys sealed under several master keys ({}); refusing to start",
            recorded.join(", ")
        );
    }
    let (master, source) = master::resolve(
        config.master_key.as_ref(),
        &config.keys_dir,
        recorded.first().map(String::as_str),
    )?;
    match &source {
        MasterKeySource::Created(path) => tracing::warn!(
            path = %path.display(),
            id = master.id(),
            "created a new master key; back it up apart from the database: without it the stored \
             keys cannot be opened"
        ),
        MasterKeySource::File(path) => {
            warn_if_readable_by_others(path);
            tracing::info!(path = %path.display(), id = master.id(), "master key loaded");
        }
        MasterKeySource::Environment => {
            tracing::info!(id = master.id(), "master key taken from KEYHOST_MASTER_KEY")
        }
    }
    // The master key is the one the store names: audit rows carry its MACs from now on.
    store.seal_with(master.row_auth().clone());
    let legacy = crate::integrity::legacy::settle(&store, clock.now())?;
    let agreed = agree_on_policy(
        config,
        &store,
        master.row_auth(),
        serving && legacy.is_none(),
    )?;
    let evidence: Option<Arc<dyn crate::keys::service::evidence::EvidenceSource>> =
        match (&config.keys.public_jwks_url, serving) {
            (Some(url), true) => Some(Arc::new(crate::public_jwks::PublicJwks::new(
                url,
                config.keys.public_jwks_ca_file.as_deref(),
            )?)),
            _ => None,
        };
    let keys = Arc::new(
        KeyService::new(
            store.clone(),
            Arc::new(master),
            clock,
            agreed.policy,
            serving,
        )
        .with_evidence(
            evidence,
            config
                .keys
                .activation_requires_sighting
                .clone()
                .filter(|_| serving)
                .map(|agent| crate::keys::service::evidence::SightingPolicy {
                    agent,
                    cap: config.keys.activation_sighting_cap.as_secs() as i64,
                }),
        ),
    );
    let opened = keys.verify_all().context(
        "opening the stored private keys failed; refusing to start (nothing was changed)",
    )?;
    tracing::debug!(opened, "stored private keys verified");
    // An audit trail from before the chain is chained as found by whatever writes to it next,
    // never by a command that only reads it (`keyhost audit verify` must report what it finds).
    if serving {
        store.blocking_write(store::audit::chain_legacy)?;
    }
    Ok(Opened {
        store,
        keys,
        legacy,
        partner_id: agreed.partner_id,
    })
}

/// Opens the store the configuration names: PostgreSQL when `database.url` is set, else the
/// SQLite file in the data directory. Either is migrated to the latest schema.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<Store>> {
    match &config.database.url {
        Some(url) => Store::open_postgres(&crate::store::PgOptions {
            url: url.expose_secret().to_owned(),
            ca_file: config.database.ca_file.clone(),
            pool_size: config.database.pool_size,
        })
        .context("opening the key store on PostgreSQL (KEYHOST_DATABASE_URL)"),
        None => {
            let db = config.database_path();
            Store::open(&db).with_context(|| format!("opening the key store {}", db.display()))
        }
    }
}

/// Takes an exclusive lock on `keyhost.lock` beside the database file itself (its real path, so
/// that a second data directory reaching the same database through a link is refused too): two
/// servers never drive the same store (both would count served time and resume the same
/// issuances). CLI commands do not take it: they are safe beside a running server.
pub fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let db = config.database_path();
    let real_db = std::fs::canonicalize(&db)
        .or_else(|_| std::fs::canonicalize(&config.data_dir).map(|d| d.join("keyhost.db")))
        .with_context(|| format!("resolving {}", db.display()))?;
    let path = real_db.with_file_name("keyhost.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another keyhost server is already using the database {} (lock {}); run one server \
             per database",
            real_db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the master key file is readable by other users; chmod 600 it"
            );
        }
    }
}

/// A built server, listening but not yet serving.
pub struct Application {
    state: AppState,
    /// Held while serving: one server per SQLite database (none on PostgreSQL, which several
    /// replicas share).
    _instance_lock: Option<std::fs::File>,
    public: http::serve::Server,
    internal: http::serve::Server,
    /// Whether the public listener speaks HTTPS.
    https: bool,
}

impl Application {
    /// Builds the server on the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds the server on `clock` (tests use a manual clock).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        config.validate()?;
        let instance_lock = match config.database.url {
            None => Some(lock_data_dir(&config)?),
            Some(_) => None,
        };
        let config = Arc::new(config);
        let (cfg, clk) = (config.clone(), clock.clone());
        let (opened, admin) = tokio::task::spawn_blocking(move || {
            let opened = open(&cfg, clk, true)?;
            if let Some(legacy) = &opened.legacy {
                anyhow::bail!(
                    "the store's {} rows predate row authentication (every row keyhost trusts now \
                     carries a MAC, so that a database writer without the master key cannot forge \
                     one). Check them, then give them their MACs once with `keyhost integrity \
                     accept-legacy-rows --yes` (it lists them); refusing to start until then",
                    legacy.without_mac.len()
                );
            }
            let (admin, source) = AdminToken::resolve(
                cfg.admin_token.as_ref(),
                &opened.store,
                opened.keys.row_auth(),
                &cfg.keys_dir,
            )?;
            match source {
                AdminTokenSource::Generated(path) => tracing::warn!(
                    path = %path.display(),
                    "generated the admin token and wrote it to this file (0600); read it, store it \
                     safely, then delete the file"
                ),
                AdminTokenSource::Stored => tracing::info!(
                    "admin token: the one generated on first start (set KEYHOST_ADMIN_TOKEN to \
                     replace it)"
                ),
                AdminTokenSource::Environment => {
                    tracing::info!("admin token taken from KEYHOST_ADMIN_TOKEN")
                }
            }
            anyhow::Ok((opened, admin))
        })
        .await??;

        let mut metrics = Metrics::default();
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                Some(http::tls::server_config(cert, key, metrics.tls_reload())?)
            }
            _ => None,
        };
        let https = tls.is_some();
        let open_files = http::serve::open_files_limit();
        let (public_limit, internal_limit) = http::serve::fit_connection_limits(
            config.http.public_max_connections,
            config.http.internal_max_connections,
            open_files,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        if (public_limit, internal_limit)
            != (
                config.http.public_max_connections,
                config.http.internal_max_connections,
            )
        {
            tracing::warn!(
                open_files = open_files.unwrap_or(0),
                public = public_limit,
                internal = internal_limit,
                "the open-files limit is too low for the configured connection limits; lowered \
                 them so that neither listener can take the other's descriptors (raise \
                 LimitNOFILE to keep them)"
            );
        }
        let bounds = |max_connections| http::serve::Bounds {
            max_connections,
            first_byte_timeout: config.http.first_byte_timeout,
            header_timeout: config.http.header_timeout,
            tls_handshake: config.tls.handshake_timeout,
        };
        let public_bounds = bounds(public_limit);
        let internal_bounds = bounds(internal_limit);
        let public = TcpListener::bind(config.http.public_addr)
            .await
            .with_context(|| format!("binding the public listener {}", config.http.public_addr))?;
        let internal = TcpListener::bind(config.http.internal_addr)
            .await
            .with_context(|| {
                format!(
                    "binding the internal listener {}",
                    config.http.internal_addr
                )
            })?;

        let live = Arc::new(LiveKeys::default());
        let replicas = Arc::new(crate::replicas::Replicas::new(
            opened.store.clone(),
            clock.now(),
            config.database.refresh_interval,
        ));
        if replicas.shared() {
            // Other servers change the store too: this one's view is only as good as its last
            // read of it.
            live.bound_age(config.database.signing_lease, config.jwks_stale_limit());
            tracing::info!(
                replica = %replicas.id(),
                store = %opened.store.location(),
                "sharing the store with any other replicas"
            );
        }
        let row_auth = opened.keys.row_auth().clone();
        let clients = Arc::new(ClientRegistry::new(row_auth.clone()));
        let admins = Arc::new(AdminRegistry::new(admin, row_auth.clone()));
        let lifecycle = Arc::new(Lifecycle::new(
            opened.keys.clone(),
            live.clone(),
            clients.clone(),
            admins.clone(),
            opened.store.clone(),
            replicas.clone(),
            config.database.refresh_interval,
        ));
        lifecycle
            .settle("scheduler")
            .await
            .context("preparing the signing keys")?;
        if config.tokens.partner_id.is_none() {
            tracing::warn!(
                "KEYHOST_PARTNER_ID is not set: the JWKS is served, but tokens cannot be minted \
                 until it is"
            );
        }
        let clock_skew = Arc::new(crate::clock::ClockSkew::new(
            config.airkit.max_clock_skew.as_secs() as i64,
        ));
        metrics.register_integrity(&row_auth.failures);
        metrics.register_clock_skew(clock_skew.gauge());
        let policy = config.policy();
        metrics.register_key_view(crate::metrics::KeyViewMetrics::new(
            live.clone(),
            policy.algorithms,
            policy.publish_lead,
            config.keys.jwks_max_age.as_secs() as i64,
        ));
        let state_metrics_verifiers = metrics.verifier_last_seen.clone();
        let blocked = metrics.activation_blocked.clone();
        opened.keys.report_blocked_with(Arc::new(move |alg, n| {
            blocked
                .get_or_create(&crate::metrics::AlgLabel {
                    alg: alg.as_str().to_owned(),
                })
                .set(n);
        }));
        let metrics = Arc::new(metrics);
        let auth_throttle = http::throttle::AuthThrottle::new(config.http.auth_failure_limit);
        let jwks_caching = http::jwks::JwksCaching::new(
            config.keys.jwks_max_age.as_secs() as i64,
            config.keys.publish_lead.as_secs() as i64,
        );
        let rate_limit = http::client_rate_limiter(config.tokens.client_rate_limit);
        let airkit: Option<Arc<dyn AirKit>> = match config.airkit.url() {
            Some(url) => {
                tracing::info!(base_url = %url, "issuance proxy enabled");
                Some(Arc::new(
                    HttpAirKit::new(&url, config.airkit.timeout)
                        .map_err(|e| anyhow::anyhow!("setting up the AIR Kit client: {e}"))?,
                ))
            }
            None => None,
        };
        let minter = Arc::new(crate::mint::Minter::new(
            live.clone(),
            clock.clone(),
            Some(metrics.clone()),
            config.tokens.partner_id.clone(),
        ));
        let issuance = IssuanceService::new(
            opened.store.clone(),
            row_auth.clone(),
            crate::issuance::Upstream {
                airkit,
                skew: clock_skew.clone(),
                alg: config.tokens.default_alg,
            },
            minter.clone(),
            clock.clone(),
            metrics.clone(),
            config.airkit.clone(),
        );
        if replicas.shared() {
            issuance.share_with_replicas(replicas.id(), config.database.refresh_interval);
        }
        let kyc = Arc::new(crate::kyc::KycService::new(
            opened.store.clone(),
            row_auth.clone(),
            clock.clone(),
            issuance.clone(),
            metrics.clone(),
        ));
        let client_admin = Arc::new(crate::clients::ClientService::new(
            opened.store.clone(),
            row_auth.clone(),
            clock.clone(),
            Some(clients.clone()),
        ));
        let audit = crate::audit::AuditLog::new(opened.store.clone());
        lifecycle.purge_with(Arc::new(crate::privacy::Privacy::new(
            opened.store.clone(),
            row_auth.clone(),
            clock.clone(),
            config.privacy.issuance_retention,
        )));
        let admin_service = Arc::new(crate::admins::AdminService::new(
            opened.store.clone(),
            row_auth.clone(),
            clock.clone(),
            Some(admins.clone()),
        ));

        let sightings = Arc::new(crate::sightings::Sightings::reporting_to(
            state_metrics_verifiers.clone(),
        ));
        lifecycle.flush_sightings_with(sightings.clone());
        let state = AppState::new(AppStateInner {
            sightings,
            client_admin,
            audit,
            minter,
            ledger: Arc::new(MintLedger::default()),
            rate_limit,
            issuance,
            kyc,
            metrics,
            config,
            clock,
            store: opened.store,
            keys: opened.keys,
            live,
            lifecycle,
            clients,
            admin: admins,
            admin_service,
            rng: Arc::new(SystemRandom::new()),
            jwks_caching,
            auth_throttle,
            row_auth,
            clock_skew,
        });
        // The JWKS path records who fetched it, from where (verifier sightings).
        let public =
            http::serve::Server::new("public", public, tls, public_bounds, state.metrics.clone())
                .with_peer_address();
        let internal = http::serve::Server::new(
            "internal",
            internal,
            None,
            internal_bounds,
            state.metrics.clone(),
        )
        .with_peer_address();
        Ok(Self {
            state,
            _instance_lock: instance_lock,
            public,
            internal,
            https,
        })
    }

    /// Address of the public listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("bound")
    }

    /// Address of the internal listener.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal.local_addr().expect("bound")
    }

    /// The shared state (tests use it to drive the lifecycle).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes in-flight requests and
    /// stops the lifecycle task.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let scheme = if self.https { "https" } else { "http" };
        tracing::info!(
            public = %self.public_addr(),
            internal = %self.internal_addr(),
            jwks = %format!("{scheme}://{}/.well-known/jwks.json", self.public_addr()),
            "keyhost serving"
        );
        let lifecycle = tokio::spawn(self.state.lifecycle.clone().run(stop_rx.clone()));
        let ledger = tokio::spawn(self.state.ledger.clone().run(
            self.state.store.clone(),
            self.state.clock.clone(),
            stop_rx.clone(),
        ));
        let claims = tokio::spawn(self.state.issuance.clone().keep_claims(stop_rx.clone()));
        let backlog = tokio::spawn(self.state.issuance.clone().watch_backlog(stop_rx.clone()));
        let resumed = self.state.issuance.resume_all().await?;
        if resumed > 0 {
            tracing::info!(resumed, "unfinished issuances resumed");
        }
        let public = tokio::spawn(
            self.public
                .run(http::public_router(self.state.clone()), stop_rx.clone()),
        );
        let internal = tokio::spawn(
            self.internal
                .run(http::internal_router(self.state.clone()), stop_rx.clone()),
        );
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        public.await??;
        internal.await??;
        lifecycle.await?;
        ledger.await?;
        claims.await?;
        backlog.await?;
        let replicas = self.state.lifecycle.replicas().clone();
        let _ = tokio::task::spawn_blocking(move || replicas.leave()).await;
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
