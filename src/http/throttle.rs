//! Failed authentication, throttled per client address.
//!
//! Guessing a 256-bit token is hopeless, but unthrottled guessing still costs CPU and, before
//! this, one log line per guess. Each client address (an IPv6 client: its /64) may fail
//! `KEYHOST_AUTH_FAILURE_LIMIT` times in a burst, refilled at that many per minute; once spent,
//! every authenticated request from it is answered 429 `TOO_MANY_REQUESTS` with `Retry-After`
//! *before* its credential is looked at, so a throttled guesser learns nothing, right or wrong.
//! A success does not reset the count (a guesser holding one valid key must not refill its
//! budget for the others).
//!
//! The client address is the connection's peer, or, when the peer is one of
//! `KEYHOST_TRUSTED_PROXIES`, the right-most address in `X-Forwarded-For` that is not itself a
//! trusted proxy (the left-most entries are whatever the client chose to write).
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked. When that many are, the ones
//! whose budget is full again are forgotten; if none is, all are (a guesser with that many
//! addresses has more budget than a per-address throttle can take away, and forgetting in bulk
//! keeps the cost per failure constant).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

/// Addresses tracked at once.
pub const MAX_TRACKED: usize = 100_000;

/// One address's remaining budget.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failed-authentication budgets per client address.
#[derive(Debug)]
pub struct AuthThrottle {
    /// Failures allowed in a burst, and refilled per minute.
    limit: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// How many addresses are tracked: zero on a quiet server, so the check costs one load.
    tracked: AtomicUsize,
}

/// The group a source address counts in, for throttling and for connection shedding: the
/// address itself for IPv4 (an IPv4-mapped IPv6 address is the IPv4 one), its /64 for IPv6 (one
/// host usually holds a whole /64).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

impl AuthThrottle {
    /// A throttle allowing `per_minute` failures per address and minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: f64::from(per_minute.max(1)),
            buckets: Mutex::default(),
            tracked: AtomicUsize::new(0),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        (b.tokens + elapsed * self.limit / 60.0).min(self.limit)
    }

    /// `Err(wait)` while `ip` has spent its budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = buckets.get(&source_of(ip)) else {
            return Ok(());
        };
        let tokens = self.refilled(*bucket, Instant::now());
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) * 60.0 / self.limit))
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&source_of(ip)) {
            let limit = self.limit;
            buckets.retain(|_, b| self.refilled(*b, now) < limit);
            if buckets.len() * 10 >= MAX_TRACKED * 9 {
                buckets.clear();
            }
        }
        let entry = buckets.entry(source_of(ip)).or_insert(Bucket {
            tokens: self.limit,
            updated: now,
        });
        let tokens = self.refilled(*entry, now);
        *entry = Bucket {
            tokens: (tokens - 1.0).max(0.0),
            updated: now,
        };
        self.tracked.store(buckets.len(), Ordering::Relaxed);
    }
}

/// The client's address: the peer, or what a trusted proxy says the client was (see the module
/// documentation). `None` when the connection's address is unknown (a router called directly).
pub fn client_addr(parts: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    source_addr(&parts.extensions, &parts.headers, trusted)
}

/// [`client_addr`] of a request given by its extensions and headers.
pub fn source_addr(
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())?;
    Some(forwarded_for(peer, headers, trusted))
}

fn forwarded_for(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let parsed = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        match parsed {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(&client) {
                    break;
                }
            }
            // Garbage in the header: stop at the last address a trusted hop vouched for.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_spent_budget_refuses_until_it_refills_and_other_addresses_are_untouched() {
        let t = AuthThrottle::new(3);
        assert!(t.check(ip("10.0.0.1")).is_ok());
        for _ in 0..3 {
            assert!(t.check(ip("10.0.0.1")).is_ok());
            t.failed(ip("10.0.0.1"));
        }
        let wait = t.check(ip("10.0.0.1")).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(t.check(ip("10.0.0.2")).is_ok());
        // An IPv6 host cannot escape by changing the low bits of its address.
        for i in 0..3 {
            t.failed(ip(&format!("2001:db8::{i}")));
        }
        assert!(t.check(ip("2001:db8::ffff")).is_err());
        assert!(t.check(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_only_up_to_them() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.5, 10.1.1.1"),
        );
        // From a trusted proxy: the right-most untrusted hop, not the client-written first one.
        assert_eq!(
            forwarded_for(ip("10.0.0.9"), &h, &trusted),
            ip("203.0.113.5")
        );
        // From anyone else the header is ignored.
        assert_eq!(
            forwarded_for(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(forwarded_for(ip("10.0.0.9"), &h, &[]), ip("10.0.0.9"));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("nonsense, 10.2.2.2"),
        );
        assert_eq!(forwarded_for(ip("10.0.0.9"), &h, &trusted), ip("10.2.2.2"));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            forwarded_for(ip("10.0.0.9"), &h, &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let t = AuthThrottle::new(1);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }
}
