//! The background task that keeps the key set on schedule.
//!
//! It applies the planner, refreshes the in-memory views, then sleeps until the next transition
//! falls due (not a coarse poll, but at least once a minute, so that the time served by pending
//! and retired keys is counted as it accrues), waking early when an admin action or a clock jump
//! changes the picture, and once a second to notice writes by another process (the CLI) through
//! SQLite's `data_version`. Clock jumps need no detection of their own: the planner keeps every
//! key's wall-clock schedule in line with the time actually served. Every path that changes keys
//! goes through [`Lifecycle::settle`], which is serialised, so the views are always rebuilt from
//! the latest committed state.
//!
//! On a store shared by several servers (PostgreSQL), only the holder of the planner's lease
//! applies transitions and counts served time (see [`crate::replicas`]); every server rebuilds
//! its views when another announces a change (LISTEN/NOTIFY) and at least every
//! `KEYHOST_REFRESH_INTERVAL`, and each successful rebuild renews its signing lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, Notify, watch};

use crate::admins::AdminRegistry;
use crate::audit::HeadSchedule;
use crate::auth::ClientRegistry;
use crate::keys::planner::RESCHEDULE_TOLERANCE;
use crate::keys::service::Rotated;
use crate::keys::service::TickReport;
use crate::keys::{Alg, KeyError, KeyRecord, KeyService};
use crate::live::LiveKeys;
use crate::privacy::Privacy;
use crate::replicas::Replicas;
use crate::sightings::Sightings;
use crate::store::{Store, off_thread};

/// Longest sleep between looks at the store for changes made by other processes.
const EXTERNAL_POLL: Duration = Duration::from_secs(1);

/// Longest time between two rounds, so that the time served by pending and retired keys is
/// counted (and persisted) at least this often: a crash loses at most this much of it, which
/// only delays a switch.
const SERVED_TIME_ROUND: i64 = 60;

/// Drives the key lifecycle and the in-memory views; the admin API's and the server's way to
/// change keys (each change is followed by a round, so the JWKS and signers reflect it at once).
#[derive(Debug)]
pub struct Lifecycle {
    keys: Arc<KeyService>,
    live: Arc<LiveKeys>,
    clients: Arc<ClientRegistry>,
    admins: Arc<AdminRegistry>,
    store: Arc<Store>,
    replicas: Arc<Replicas>,
    refresh_interval: Duration,
    serial: Mutex<()>,
    wake: Notify,
    heads: Arc<HeadSchedule>,
    privacy: std::sync::OnceLock<Arc<Privacy>>,
    sightings: std::sync::OnceLock<Arc<Sightings>>,
}

impl Lifecycle {
    /// A lifecycle over the given parts; on a shared store it re-reads the store at least
    /// every `refresh_interval`.
    pub fn new(
        keys: Arc<KeyService>,
        live: Arc<LiveKeys>,
        clients: Arc<ClientRegistry>,
        admins: Arc<AdminRegistry>,
        store: Arc<Store>,
        replicas: Arc<Replicas>,
        refresh_interval: Duration,
    ) -> Self {
        Self {
            keys,
            live,
            clients,
            admins,
            store,
            replicas,
            refresh_interval,
            serial: Mutex::new(()),
            wake: Notify::new(),
            heads: Arc::default(),
            privacy: std::sync::OnceLock::new(),
            sightings: std::sync::OnceLock::new(),
        }
    }

    /// From now on the planning server's rounds also erase personal data past its retention.
    pub fn purge_with(&self, privacy: Arc<Privacy>) {
        let _ = self.privacy.set(privacy);
    }

    /// From now on every round writes the JWKS sightings noted since the last one to the store.
    pub fn flush_sightings_with(&self, sightings: Arc<Sightings>) {
        let _ = self.sightings.set(sightings);
    }

    /// This server among those sharing its store.
    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    /// Applies every due transition, then rebuilds the JWKS, signing keys and clients from the
    /// store. Returns what was applied and when to look again.
    pub async fn settle(&self, actor: &str) -> Result<TickReport, KeyError> {
        let _serial = self.serial.lock().await;
        let (keys, live, clients, admins, store, replicas, heads) = (
            self.keys.clone(),
            self.live.clone(),
            self.clients.clone(),
            self.admins.clone(),
            self.store.clone(),
            self.replicas.clone(),
            self.heads.clone(),
        );
        let privacy = self.privacy.get().cloned();
        let sightings = self.sightings.get().cloned();
        let actor = actor.to_owned();
        off_thread(move || {
            // Reads first: the views follow the store, and the signing lease is renewed, even
            // while writes wait (the writers' lock is shared by every replica, and one of them
            // may hold it for a while).
            let started = Instant::now();
            // Credentials first and regardless of the key steps: a client or admin disabled from
            // the CLI must stop working even while the key lifecycle is failing.
            let clients_result = clients.reload(&store).and_then(|()| admins.reload(&store));
            // On a shared store the keys are read before the writes too (SQLite has one writer:
            // its round reads once, after them, as it always has).
            let early = replicas.shared().then(|| live.refresh(&keys));
            if matches!(early, Some(Ok(()))) && clients_result.is_ok() {
                // The view is as recent as this read: the signing lease runs from here.
                live.mark_read(started);
            }
            // Only one server sharing the store plans (and counts served time); the others
            // follow what it wrote. A server that cannot renew its lease does not plan.
            // This server's sightings join the others' before anyone plans with them.
            if let Some(sightings) = &sightings
                && let Err(e) = sightings.flush(&store)
            {
                tracing::warn!(error = %e, "recording JWKS sightings failed; kept for the next round");
            }
            let plans = replicas.round();
            keys.set_counting(matches!(plans, Ok(true)));
            // What the signers signed since the last round, before any of them retires.
            let signed = live.signed_until();
            let noted = keys.note_signed_until(&signed);
            if noted.is_ok() {
                live.noted(&signed);
            }
            // The in-memory keys follow the store even when planning failed: the store is
            // consistent either way (each plan is one transaction), and a key revoked meanwhile
            // must stop signing.
            let planned = matches!(plans, Ok(true));
            let report = match plans {
                Ok(true) => keys.tick(&actor),
                Ok(false) => Ok(TickReport::default()),
                Err(e) => Err(e.into()),
            };
            // What the round changed reaches the views at once (the in-memory keys follow the
            // store even when planning failed).
            let changed = report.as_ref().map_or(true, |r| !r.applied.is_empty());
            let refreshed = match early {
                // Nothing the views hold changed since the early read (served time is not in
                // them): no second read of the keys.
                Some(early) if !planned || !changed => early,
                _ => live.refresh(&keys),
            };
            if planned && refreshed.is_ok() {
                heads.maybe_sign(&store, &live, keys.clock().now(), changed);
            }
            if planned && let Some(privacy) = &privacy {
                privacy.maybe_purge();
            }
            let report = report?;
            refreshed?;
            noted?;
            if replicas.plans() {
                keys.mark_served()?;
            }
            clients_result?;
            Ok(report)
        })
        .await
    }

    /// Applies what a change made due, rebuilds the views, and has the background task plan
    /// again.
    async fn after_change(&self, actor: &str) -> Result<(), KeyError> {
        self.settle(actor).await?;
        // A key transition made here: the trail's head is signed now, whichever server plans.
        let (store, live, heads, now) = (
            self.store.clone(),
            self.live.clone(),
            self.heads.clone(),
            self.keys.clock().now(),
        );
        off_thread(move || {
            heads.maybe_sign(&store, &live, now, true);
            Ok::<_, KeyError>(())
        })
        .await?;
        self.wake();
        Ok(())
    }

    /// Every verifier seen fetching the JWKS (this server's latest sightings included), and
    /// whether each has been served each pending key.
    pub async fn verifiers(&self) -> Result<Vec<crate::sightings::VerifierView>, KeyError> {
        let (keys, store, sightings) = (
            self.keys.clone(),
            self.store.clone(),
            self.sightings.get().cloned(),
        );
        off_thread(move || {
            if let Some(sightings) = sightings {
                sightings.flush(&store)?;
            }
            Ok(crate::sightings::report(&store, &keys.pending_kids()?)?)
        })
        .await
    }

    /// Every key as the admin API shows it.
    pub async fn views(&self) -> Result<Vec<crate::keys::KeyView>, KeyError> {
        let keys = self.keys.clone();
        off_thread(move || keys.views()).await
    }

    /// Every key with whether its row passed its integrity check.
    pub async fn inventory(&self) -> Result<Vec<(KeyRecord, bool)>, KeyError> {
        let keys = self.keys.clone();
        off_thread(move || keys.inventory()).await
    }

    /// Rotates `alg` now; an emergency rotation revokes the keys it replaces, which stop signing
    /// at once.
    pub async fn rotate(
        &self,
        alg: Alg,
        emergency: bool,
        actor: &str,
    ) -> Result<Rotated, KeyError> {
        let (keys, live) = (self.keys.clone(), self.live.clone());
        let who = actor.to_owned();
        let rotated = off_thread(move || {
            let rotated = keys.rotate(alg, emergency, &who)?;
            for kid in &rotated.revoked {
                live.withdraw(kid);
            }
            Ok::<_, KeyError>(rotated)
        })
        .await?;
        self.after_change(actor).await?;
        if let Some(w) = &rotated.warning {
            tracing::warn!(kid = %rotated.key.kid, warning = %w, "emergency rotation");
        }
        Ok(rotated)
    }

    /// Retires the key `kid`: it stops signing and stays published through its grace.
    pub async fn retire(&self, kid: String, actor: &str) -> Result<KeyRecord, KeyError> {
        let keys = self.keys.clone();
        let who = actor.to_owned();
        let key = off_thread(move || keys.retire(&kid, &who)).await?;
        self.after_change(actor).await?;
        Ok(key)
    }

    /// Revokes the key `kid`: it stops signing and leaves the JWKS at once.
    pub async fn revoke(
        &self,
        kid: String,
        actor: &str,
    ) -> Result<(KeyRecord, Option<String>), KeyError> {
        let (keys, live) = (self.keys.clone(), self.live.clone());
        let who = actor.to_owned();
        let (key, warning) = off_thread(move || {
            let (key, warning) = keys.revoke(&kid, &who)?;
            live.withdraw(&key.kid);
            Ok::<_, KeyError>((key, warning))
        })
        .await?;
        self.after_change(actor).await?;
        Ok((key, warning))
    }

    /// Imports a private key from PEM.
    pub async fn import(
        &self,
        pem: SecretString,
        kid: Option<String>,
        actor: &str,
    ) -> Result<KeyRecord, KeyError> {
        let keys = self.keys.clone();
        let who = actor.to_owned();
        let key =
            off_thread(move || keys.import(pem.expose_secret(), kid.as_deref(), &who)).await?;
        self.after_change(actor).await?;
        Ok(key)
    }

    async fn data_version(&self) -> Option<i64> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.data_version().ok())
            .await
            .ok()
            .flatten()
    }

    /// Asks the background task to re-plan now (after an admin action).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let clock = self.keys.clock().clone();
        let jumps = clock.jumps().unwrap_or_else(|| Arc::new(Notify::new()));
        let mut seen_version = self.data_version().await;
        let shared = self.replicas.shared();
        let mut failing = false;
        loop {
            let seconds_to_due = match self.settle("scheduler").await {
                Ok(report) => {
                    if failing {
                        tracing::info!("key lifecycle rounds succeed again");
                        failing = false;
                    }
                    report.next_due.map_or(SERVED_TIME_ROUND, |due| {
                        (due - clock.now()).min(SERVED_TIME_ROUND)
                    })
                }
                Err(e) if shared => {
                    // Every refresh interval while the database is away: say so once.
                    if !failing {
                        tracing::error!(
                            error = %e,
                            "key lifecycle round failed; retrying every refresh interval (this \
                             server stops signing once its view is older than the signing lease)"
                        );
                        failing = true;
                    }
                    5
                }
                Err(e) => {
                    tracing::error!(error = %e, "key lifecycle round failed; retrying in 5s");
                    5
                }
            };
            // On a shared store, a round at least every refresh interval: it renews the planner's
            // lease, this server's place in the roll and its signing lease.
            let refresh_at = shared.then(|| tokio::time::Instant::now() + self.refresh_interval);
            // The wait is measured on the monotonic clock, and the wall clock watched: when it
            // moves other than with real time (set back or ahead, and the system clock says
            // nothing of it), plan again at once, so that the schedule follows and an active key
            // whose signing time the clock overtook backwards keeps signing.
            let (planned_wall, planned_mono) = (clock.now(), clock.monotonic());
            loop {
                let real = (clock.monotonic() - planned_mono).as_secs() as i64;
                let drift = (clock.now() - planned_wall) - real;
                if drift.abs() > RESCHEDULE_TOLERANCE {
                    tracing::warn!(drift_seconds = drift, "the wall clock moved; re-planning");
                    break;
                }
                let left = seconds_to_due - real;
                if left <= 0 {
                    break;
                }
                let nap = Duration::from_secs(left as u64).min(EXTERNAL_POLL);
                tokio::select! {
                    _ = tokio::time::sleep(nap) => {
                        let version = self.data_version().await;
                        if version != seen_version {
                            seen_version = version;
                            tracing::debug!("store changed by another process");
                            break;
                        }
                    }
                    _ = jumps.notified() => break,
                    _ = self.wake.notified() => break,
                    _ = self.store.changed() => {
                        tracing::debug!("another server changed the store");
                        break;
                    }
                    _ = async {
                        match refresh_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => break,
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
