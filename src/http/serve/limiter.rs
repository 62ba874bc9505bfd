//! The connections of one listener within its limit, and which one to shed for a newcomer.
//!
//! When the listener is full, the connection shed is one of the source address (IPv6: its /64)
//! holding the most connections, so that one source sheds its own and not a stranger's; among
//! those, one older than [`YOUNG`] if there is one (a connection just opened has had no time to
//! speak), silent before idle before still sending its body (a slow upload and one that never
//! ends look the same), the oldest first. A connection whose request is being handled is never
//! shed. The limits themselves are fitted under the process's open-files limit.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::http::throttle::source_of;

/// Open files kept out of the connection budget: the database and its journal, the lock file,
/// the runtime's own descriptors, outgoing connections to AIR Kit, certificate reloads.
pub const RESERVED_FILES: u64 = 64;

/// The smallest connection budget keyhost starts with.
const MIN_BUDGET: u64 = 8;

/// Raises the soft open-files limit to the hard one (as nginx and Go do) and returns the soft
/// limit then in force, if the platform tells.
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return limit.maximum.or(Some(u64::MAX));
            }
        }
        Some(limit.current.unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// An open-files limit too low to serve at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-files limit is {0}, which leaves no room for connections after the \
     {RESERVED_FILES} keyhost keeps for itself; raise it (ulimit -n, systemd LimitNOFILE) to at \
     least {at_least}",
    at_least = RESERVED_FILES + 256
)]
pub struct TooFewFiles(pub u64);

/// The connection limits of the public and internal listeners once fitted under `open_files`
/// (less [`RESERVED_FILES`]): unchanged if both fit; otherwise the internal listener keeps at
/// least a quarter of the budget and the public one the rest, so that neither can exhaust the
/// process's descriptors for the other. `Err` when the budget is too small to serve at all.
pub fn fit_connection_limits(
    public: usize,
    internal: usize,
    open_files: Option<u64>,
) -> Result<(usize, usize), TooFewFiles> {
    let Some(open_files) = open_files else {
        return Ok((public, internal));
    };
    let budget = open_files.saturating_sub(RESERVED_FILES);
    if budget < MIN_BUDGET {
        return Err(TooFewFiles(open_files));
    }
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if public.saturating_add(internal) <= budget {
        return Ok((public, internal));
    }
    let internal = internal.min((budget / 4).max(1));
    let public = public.min(budget - internal);
    Ok((public, internal))
}

/// One open connection as the limiter sees it.
struct Entry {
    source: IpAddr,
    state: Arc<ConnState>,
}

/// What a connection is doing, updated by its task and its requests.
pub(super) struct ConnState {
    /// When it was accepted.
    opened: Instant,
    /// The client has sent at least one byte.
    pub(super) spoke: AtomicBool,
    /// Requests being handled now.
    pub(super) busy: AtomicUsize,
    /// Of those, requests whose body has not arrived yet.
    receiving: AtomicUsize,
    /// Told to close by the limiter.
    pub(super) shed: Notify,
}

impl ConnState {
    fn opened_at(opened: Instant) -> Self {
        Self {
            opened,
            spoke: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            shed: Notify::new(),
        }
    }
}

/// What a connection is doing, from the limiter's point of view, in the order it sheds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Activity {
    /// Not a byte yet.
    Silent,
    /// Between requests, or sending a request's headers.
    Idle,
    /// Every request in flight is still sending its body (a slow upload looks the same as one
    /// that never ends).
    Receiving,
    /// A request is being handled: never shed.
    Busy,
}

impl ConnState {
    fn activity(&self) -> Activity {
        let busy = self.busy.load(Ordering::Relaxed);
        if !self.spoke.load(Ordering::Relaxed) {
            Activity::Silent
        } else if busy == 0 {
            Activity::Idle
        } else if self.receiving.load(Ordering::Relaxed) >= busy {
            Activity::Receiving
        } else {
            Activity::Busy
        }
    }
}

/// How young a connection is protected from shedding while older ones are there to shed: a
/// verifier that has just connected has had no time to send its request.
const YOUNG: Duration = Duration::from_secs(1);

/// One request in flight on a connection: counts it as busy until it ends, and as receiving
/// until its body has arrived (the body reader says so, see `extract`).
pub struct RequestWatch {
    conn: Arc<ConnState>,
    receiving: AtomicBool,
}

impl RequestWatch {
    /// Watches a request with a body on `conn`, already counted busy there.
    pub(super) fn receiving(conn: Arc<ConnState>) -> Arc<Self> {
        conn.receiving.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self {
            conn,
            receiving: AtomicBool::new(true),
        })
    }

    #[cfg(test)]
    fn start(conn: Arc<ConnState>, has_body: bool) -> Arc<Self> {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        if has_body {
            conn.receiving.fetch_add(1, Ordering::Relaxed);
        }
        Arc::new(Self {
            conn,
            receiving: AtomicBool::new(has_body),
        })
    }

    /// The request's body has been read (or given up on).
    pub fn body_done(&self) {
        if self.receiving.swap(false, Ordering::Relaxed) {
            self.conn.receiving.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        self.body_done();
        self.conn.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, which is the order of arrival.
    conns: BTreeMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

impl Open {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// The connection to shed for a newcomer: one of the source holding the most connections
    /// (so that one source sheds its own and not a stranger's); among those, one older than
    /// [`YOUNG`] if there is one; either way silent before idle before still sending a body,
    /// the oldest first. Among young ones that order protects the connection that has spoken
    /// (a verifier's TLS hello arrives within milliseconds) from a churn of silent ones, which
    /// would otherwise make it the oldest and shed it before it could be answered. Never one
    /// whose request is being handled.
    fn victim(&self) -> Option<u64> {
        self.conns
            .iter()
            .map(|(id, e)| (*id, e, e.state.activity()))
            .filter(|(_, _, activity)| *activity != Activity::Busy)
            .min_by_key(|(id, e, activity)| {
                let young = e.state.opened.elapsed() < YOUNG;
                (
                    std::cmp::Reverse(self.per_source.get(&e.source).copied().unwrap_or(0)),
                    young,
                    *activity,
                    *id,
                )
            })
            .map(|(id, _, _)| id)
    }
}

/// The connections of one listener, within its limit.
pub(super) struct Limiter {
    capacity: usize,
    open: Mutex<Open>,
    /// Notified whenever a connection closes (for the drain at shutdown).
    closed: Notify,
}

/// A connection's place in its listener; gives the place back when dropped.
pub(super) struct Slot {
    id: u64,
    limiter: Arc<Limiter>,
    pub(super) state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.lock().remove(self.id);
        self.limiter.closed.notify_waiters();
    }
}

/// Whether a connection got in.
pub(super) enum Admission {
    /// There was room.
    Admitted(Slot),
    /// It took the place of a connection that was told to close.
    Shed(Slot),
    /// Every connection is in the middle of a request.
    Refused,
}

impl Limiter {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            open: Mutex::default(),
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        self.admit_at(ip, Instant::now())
    }

    /// [`Limiter::admit`] for a connection accepted at `opened`.
    fn admit_at(self: &Arc<Self>, ip: IpAddr, opened: Instant) -> Admission {
        let source = source_of(ip);
        let mut open = self.lock();
        let mut shed = false;
        if open.conns.len() >= self.capacity {
            let Some(victim) = open.victim() else {
                return Admission::Refused;
            };
            if let Some(entry) = open.remove(victim) {
                entry.state.shed.notify_one();
            }
            shed = true;
        }
        let id = open.next_id;
        open.next_id += 1;
        let state = Arc::new(ConnState::opened_at(opened));
        open.conns.insert(
            id,
            Entry {
                source,
                state: state.clone(),
            },
        );
        *open.per_source.entry(source).or_default() += 1;
        let slot = Slot {
            id,
            limiter: self.clone(),
            state,
        };
        if shed {
            Admission::Shed(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Waits until no connection is left, or `limit` has passed.
    pub(super) async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let closed = self.closed.notified();
                if self.len() == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connection_still_sending_its_body_is_shed_after_idle_ones_and_never_once_it_arrived() {
        let limiter = Limiter::new(3);
        let source = ip("203.0.113.9");
        let uploading = old(&limiter, source);
        uploading.state.spoke.store(true, Ordering::Relaxed);
        let watch = RequestWatch::start(uploading.state.clone(), true);
        assert_eq!(uploading.state.activity(), Activity::Receiving);
        let idle = old(&limiter, source);
        idle.state.spoke.store(true, Ordering::Relaxed);
        // A connection just accepted has said nothing yet: it is not the one to go.
        let young = admitted(limiter.admit(source)).unwrap();
        // The idle one goes before the uploading one, though it is younger.
        let _n1 = admitted(limiter.admit(source)).unwrap();
        assert!(!limiter.lock().conns.contains_key(&idle.id));
        assert!(limiter.lock().conns.contains_key(&young.id));
        // Once its body has arrived, the request is busy and never shed.
        watch.body_done();
        assert_eq!(uploading.state.activity(), Activity::Busy);
        drop(watch);
        assert_eq!(uploading.state.activity(), Activity::Idle);
        drop(young);
    }

    #[test]
    fn limits_fit_under_the_open_files_limit_and_neither_listener_takes_it_all() {
        assert_eq!(fit_connection_limits(4096, 1024, None), Ok((4096, 1024)));
        assert_eq!(
            fit_connection_limits(4096, 1024, Some(100_000)),
            Ok((4096, 1024))
        );
        assert_eq!(fit_connection_limits(4096, 1024, Some(128)), Ok((48, 16)));
        assert_eq!(fit_connection_limits(4096, 8, Some(128)), Ok((56, 8)));
        let (public, internal) = fit_connection_limits(4096, 1024, Some(1024)).unwrap();
        assert_eq!((public, internal), (720, 240));
        assert!(fit_connection_limits(4096, 1024, Some(70)).is_err());
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    /// Admits a connection accepted well over [`YOUNG`] ago.
    fn old(limiter: &Arc<Limiter>, ip: IpAddr) -> Slot {
        admitted(limiter.admit_at(ip, Instant::now() - YOUNG * 5)).unwrap()
    }

    fn admitted(a: Admission) -> Option<Slot> {
        match a {
            Admission::Admitted(s) | Admission::Shed(s) => Some(s),
            Admission::Refused => None,
        }
    }

    #[test]
    fn a_full_listener_sheds_silent_then_idle_connections_of_the_busiest_source_never_busy_ones() {
        let limiter = Limiter::new(5);
        let attacker = ip("203.0.113.9");
        let verifier = ip("198.51.100.7");
        let open = |id: u64| limiter.lock().conns.contains_key(&id);
        let talk = |slot: &Slot, busy: usize| {
            slot.state.spoke.store(true, Ordering::Relaxed);
            slot.state.busy.store(busy, Ordering::Relaxed);
        };
        let v1 = old(&limiter, verifier);
        talk(&v1, 0); // an idle keep-alive connection
        let a: Vec<Slot> = (0..4).map(|_| old(&limiter, attacker)).collect();
        talk(&a[0], 1); // in a request
        talk(&a[1], 0);
        talk(&a[2], 0);
        // a[3] is silent.

        // The silent one goes first, though the verifier's idle connection is older.
        let n1 = admitted(limiter.admit(verifier)).unwrap();
        assert!(open(v1.id) && !open(a[3].id));
        // Then the oldest idle one of the source holding the most connections (3 against 2).
        talk(&n1, 1);
        let n2 = admitted(limiter.admit(verifier)).unwrap();
        assert!(open(v1.id) && !open(a[1].id) && open(a[2].id));
        // Now the verifier holds the most (3 against 2): its own idle connection goes.
        talk(&n2, 1);
        let n3 = admitted(limiter.admit(attacker)).unwrap();
        assert!(!open(v1.id) && open(a[2].id));
        talk(&n3, 1);
        let n4 = admitted(limiter.admit(attacker)).unwrap();
        assert!(!open(a[2].id));
        // Everyone busy: refused; a request in flight is never cut.
        talk(&n4, 1);
        assert!(matches!(limiter.admit(attacker), Admission::Refused));
        assert!(open(a[0].id));
        assert_eq!(limiter.len(), 5);
        drop((v1, a, n1, n2, n3, n4));
        assert_eq!(limiter.len(), 0);
        assert!(limiter.lock().per_source.is_empty());
    }

    #[test]
    fn a_young_connection_that_has_spoken_outlives_a_churn_of_silent_young_ones() {
        let limiter = Limiter::new(4);
        let everyone = ip("127.0.0.1");
        let open = |id: u64| limiter.lock().conns.contains_key(&id);
        // The verifier connects first and sends its TLS hello; then a flood from the same
        // address keeps the listener full of connections that never speak.
        let verifier = admitted(limiter.admit(everyone)).unwrap();
        verifier.state.spoke.store(true, Ordering::Relaxed);
        let mut flood: Vec<Slot> = (0..3)
            .map(|_| admitted(limiter.admit(everyone)).unwrap())
            .collect();
        for _ in 0..100 {
            flood.push(admitted(limiter.admit(everyone)).unwrap());
            assert!(
                open(verifier.id),
                "the verifier, though the oldest, is never shed"
            );
        }
        assert_eq!(limiter.len(), 4);
    }
}
