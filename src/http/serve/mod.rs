//! Serving HTTP/1.1 (and HTTPS) connections within bounds, so that no client can hold a listener,
//! or the process's file descriptors, hostage.
//!
//! What each listener guarantees:
//! - **Its own connection limit.** The two listeners never share one: silent connections piled
//!   on the public listener cannot take `/admin` or `/v1/tokens` down, nor the reverse. Both
//!   limits are fitted under the process's open-files limit at start ([`fit_connection_limits`]).
//! - **A full listener sheds, it does not stall.** A new connection to a full listener replaces
//!   an open one that is doing nothing useful, chosen by [`limiter`]: of the source address
//!   holding the most connections, not a young one if it can help it, silent before idle before
//!   still sending its body. A connection whose request is being handled is never shed; if every
//!   connection is, the new one is refused (closed at once) and counted.
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

mod limiter;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use limiter::{Admission, ConnState, Limiter, Slot};
pub use limiter::{RESERVED_FILES, RequestWatch, fit_connection_limits, open_files_limit};

/// Largest read buffer of a connection, which bounds the request line and headers (hyper's
/// smallest allowed is 8 KiB; keyhost's largest header is an API key or a signature).
pub const MAX_BUF: usize = 16 * 1024;

/// Longest wait for connections to finish after shutdown was asked for.
pub const DRAIN: Duration = Duration::from_secs(30);

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

/// One listener: TCP, optionally TLS, HTTP/1.1, within its [`Bounds`].
pub struct Server {
    name: &'static str,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    /// Whether requests carry the peer's address (`ConnectInfo`: per-address throttling, the
    /// JWKS's verifier sightings).
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
        self.conn.busy.fetch_add(1, Ordering::Relaxed);
        // Only a request with a body needs a watch its body reader can reach (one allocation);
        // the others, the JWKS among them, are counted by the future alone.
        let guard = if req.body().is_end_stream() {
            Busy::Counted(self.conn.clone())
        } else {
            Busy::Watched(RequestWatch::receiving(self.conn.clone()))
        };
        let mut req = req.map(Body::new);
        if let Busy::Watched(watch) = &guard {
            req.extensions_mut().insert(watch.clone());
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        WatchedFuture {
            inner: tower::Service::call(&mut self.router, req),
            _busy: guard,
        }
    }
}

/// Keeps a request counted as busy until its answer is ready.
enum Busy {
    /// A request without a body.
    Counted(Arc<ConnState>),
    /// A request with a body, watched until the body has arrived too.
    Watched(Arc<RequestWatch>),
}

impl Drop for Busy {
    fn drop(&mut self) {
        match self {
            Busy::Counted(conn) => {
                conn.busy.fetch_sub(1, Ordering::Relaxed);
            }
            // The watch ends the count when its last holder (this, or the request) lets go.
            Busy::Watched(_) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, keeping the request counted until it is ready.
    struct WatchedFuture {
        #[pin]
        inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
        _busy: Busy,
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
