//! Serving HTTP/1.1 (and HTTPS) connections within bounds, so that no client can hold a listener,
//! or the process's file descriptors, hostage.
//!
//! What each listener guarantees:
//! - **Its own connection limit.** The two listeners never share one: silent connections piled
//!   on the public listener cannot take `/admin` or `/v1/tokens` down, nor the reverse. Both
//!   limits are fitted under the process's open-files limit at start ([`fit_connection_limits`]).
//! - **A full listener sheds, it does not stall.** A new connection to a full listener replaces
//!   an open one that is doing nothing useful: first the oldest connection that has not sent a
//!   byte (a silent TCP or TLS connection), then the oldest idle one (between requests, or still
//!   sending headers); within a class, the one whose source address (IPv6: its /64) holds the
//!   most connections, so that one busy source sheds its own connections and not a stranger's.
//!   Connections in the middle of a request are never shed; if every connection is, the new one
//!   is refused (closed at once) and counted. A legitimate verifier sends its request as soon as
//!   it connects, so a flood of silent or slow connections cannot cost it its fetch.
//! - **Timers on every wait.** The client's first byte within [`Bounds::first_byte_timeout`]
//!   (verifiers and proxies speak as soon as they connect); TLS: the whole handshake within
//!   [`Bounds::tls_handshake`]; HTTP: a request's headers within [`Bounds::header_timeout`],
//!   counted from the connection's start or the end of the previous response, so it is also the
//!   keep-alive idle timeout. Request bodies have their own deadline, enforced where they are
//!   read (`extract`).
//! - **Bounded memory per connection**: headers and buffered bytes are capped ([`MAX_BUF`]).
//!
//! On shutdown a listener stops accepting, lets requests in flight finish, closes idle
//! connections, and waits (at most [`DRAIN`]) for the rest.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use super::throttle::source_of;
use crate::metrics::Metrics;
use crate::telemetry::LogLimiter;

/// Largest read buffer of a connection, which bounds the request line and headers (hyper's
/// smallest allowed is 8 KiB; keyhost's largest header is an API key or a signature).
pub const MAX_BUF: usize = 16 * 1024;

/// Longest wait for connections to finish after shutdown was asked for.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Open files kept out of the connection budget: the database and its journal, the lock file,
/// the runtime's own descriptors, outgoing connections to AIR Kit, certificate reloads.
pub const RESERVED_FILES: u64 = 64;

/// The smallest connection budget keyhost starts with.
const MIN_BUDGET: u64 = 8;

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the connection's start or the end of
    /// the previous response (so also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Time to the client's first byte (of its TLS handshake, or of its first request).
    pub first_byte_timeout: Duration,
    /// TLS: time to the end of the handshake.
    pub tls_handshake: Duration,
}

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

/// The connection limits of the public and internal listeners once fitted under `open_files`
/// (less [`RESERVED_FILES`]): unchanged if both fit; otherwise the internal listener keeps at
/// least a quarter of the budget and the public one the rest, so that neither can exhaust the
/// process's descriptors for the other. `Err` when the budget is too small to serve at all.
pub fn fit_connection_limits(
    public: usize,
    internal: usize,
    open_files: Option<u64>,
) -> Result<(usize, usize), String> {
    let Some(open_files) = open_files else {
        return Ok((public, internal));
    };
    let budget = open_files.saturating_sub(RESERVED_FILES);
    if budget < MIN_BUDGET {
        return Err(format!(
            "the open-files limit is {open_files}, which leaves no room for connections after \
             the {RESERVED_FILES} keyhost keeps for itself; raise it (ulimit -n, systemd \
             LimitNOFILE) to at least {}",
            RESERVED_FILES + 256
        ));
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
struct ConnState {
    /// When it was accepted.
    opened: Instant,
    /// The client has sent at least one byte.
    spoke: AtomicBool,
    /// Requests being handled now.
    busy: AtomicUsize,
    /// Of those, requests whose body has not arrived yet.
    receiving: AtomicUsize,
    /// Told to close by the limiter.
    shed: Notify,
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
    /// [`YOUNG`] if there is one, silent before idle before still sending a body, the oldest
    /// first; among young ones simply the oldest (a connection a few milliseconds old has not
    /// had the time to say anything, so its silence says nothing). Never one whose request is
    /// being handled.
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
                    if young { Activity::Silent } else { *activity },
                    *id,
                )
            })
            .map(|(id, _, _)| id)
    }
}

/// The connections of one listener, within its limit.
struct Limiter {
    capacity: usize,
    open: Mutex<Open>,
    /// Notified whenever a connection closes (for the drain at shutdown).
    closed: Notify,
}

/// A connection's place in its listener; gives the place back when dropped.
struct Slot {
    id: u64,
    limiter: Arc<Limiter>,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.lock().remove(self.id);
        self.limiter.closed.notify_waiters();
    }
}

/// Whether a connection got in.
enum Admission {
    /// There was room.
    Admitted(Slot),
    /// It took the place of a connection that was told to close.
    Shed(Slot),
    /// Every connection is in the middle of a request.
    Refused,
}

impl Limiter {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            open: Mutex::default(),
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
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
    async fn drained(&self, limit: Duration) {
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

/// One listener: TCP, optionally TLS, HTTP/1.1, within its [`Bounds`].
pub struct Server {
    name: &'static str,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    /// Whether requests carry the peer's address (`ConnectInfo`); the public listener's routes
    /// need none, and it saves them an allocation each.
    peer_address: bool,
}

static ACCEPT_FAILURES: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static REFUSALS: LogLimiter = LogLimiter::new(Duration::from_secs(10));

impl Server {
    /// A server named `name` (`public` or `internal`, for logs and metrics) on `tcp`, speaking
    /// TLS with `tls` when given.
    pub fn new(
        name: &'static str,
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        bounds: Bounds,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name,
            tcp,
            tls: tls.map(TlsAcceptor::from),
            bounds,
            metrics,
            peer_address: false,
        }
    }

    /// Gives every request the peer's address as `ConnectInfo<SocketAddr>` (for per-address
    /// throttling).
    pub fn with_peer_address(mut self) -> Self {
        self.peer_address = true;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves `router` until `shutdown` turns true, then drains (see the module documentation).
    pub async fn run(self, router: Router, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let limiter = Limiter::new(self.bounds.max_connections);
        let (closing, closing_rx) = watch::channel(false);
        let counters = self.metrics.connections(self.name);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for some to close.
                        if let Some(suppressed) = ACCEPT_FAILURES.allow() {
                            tracing::warn!(listener = self.name, error = %e, suppressed, "accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            let slot = match limiter.admit(peer.ip()) {
                Admission::Admitted(slot) => slot,
                Admission::Shed(slot) => {
                    counters.shed.inc();
                    slot
                }
                Admission::Refused => {
                    counters.refused.inc();
                    if let Some(suppressed) = REFUSALS.allow() {
                        tracing::warn!(
                            listener = self.name,
                            limit = self.bounds.max_connections,
                            suppressed,
                            "connection refused: every connection is busy with a request"
                        );
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                peer: self.peer_address.then_some(peer),
                slot,
                router: router.clone(),
                bounds: self.bounds.clone(),
                closing: closing_rx.clone(),
            };
            let tls = self.tls.clone();
            let open = counters.open.clone();
            open.inc();
            tokio::spawn(async move {
                conn.serve(tcp, tls).await;
                open.dec();
            });
        }
        drop(self.tcp);
        let _ = closing.send(true);
        limiter.drained(DRAIN).await;
        Ok(())
    }
}

/// The router of one connection: each request carries its [`RequestWatch`] (and the peer's
/// address, when asked for), which ends with it.
#[derive(Clone)]
struct Watched {
    router: Router,
    conn: Arc<ConnState>,
    peer: Option<SocketAddr>,
}

impl tower::Service<Request<Incoming>> for Watched {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = WatchedFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        let watch = RequestWatch::start(self.conn.clone(), !req.body().is_end_stream());
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(watch.clone());
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        WatchedFuture {
            inner: tower::Service::call(&mut self.router, req),
            _watch: watch,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, keeping its [`RequestWatch`] until it is ready.
    struct WatchedFuture {
        #[pin]
        inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
        _watch: Arc<RequestWatch>,
    }
}

impl std::future::Future for WatchedFuture {
    type Output = Result<axum::response::Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// Completes once `flag` turns true (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// One accepted connection and what it needs to serve itself.
struct Connection {
    /// The peer, when requests are to carry it.
    peer: Option<SocketAddr>,
    slot: Slot,
    router: Router,
    bounds: Bounds,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let state = self.slot.state.clone();
        let first_byte = self.bounds.first_byte_timeout;
        // Wait for the client to say something; until it does, it is first in line to be shed.
        let spoke = async {
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(first_byte, tcp.peek(&mut byte)).await,
                Ok(Ok(1..))
            )
        };
        let spoke = tokio::select! {
            spoke = spoke => spoke,
            _ = state.shed.notified() => false,
            _ = stopped(&mut self.closing) => false,
        };
        if !spoke {
            return;
        }
        state.spoke.store(true, Ordering::Relaxed);
        match tls {
            None => self.http(tcp).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.bounds.tls_handshake, acceptor.accept(tcp));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    },
                    _ = state.shed.notified() => return,
                    _ = stopped(&mut self.closing) => return,
                };
                self.http(stream).await
            }
        }
    }

    async fn http<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.slot.state.clone();
        let service = Watched {
            router: self.router.clone(),
            conn: state.clone(),
            peer: self.peer,
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.bounds.header_timeout)
            .max_buf_size(MAX_BUF);
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let mut conn = pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Only a connection between requests is shed: dropping it closes it.
                _ = state.shed.notified() => return,
                _ = stopped(&mut self.closing), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
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
}
