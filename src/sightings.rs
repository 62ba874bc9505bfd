//! Verifier sightings: who fetches the JWKS (user agent, source address behind trusted proxies),
//! when, and which key set it received or revalidated (`304` to its `If-None-Match`).
//!
//! The JWKS path only updates a small in-memory summary (one short lock, no allocation for a
//! verifier already known, nothing written); the background round flushes it to the store, where
//! every replica's sightings meet: per verifier its first and last fetch, request count, last
//! address and last few sightings, and the kids of every key set it has been served. That is
//! what `GET /admin/verifiers` shows and what `KEYHOST_ACTIVATION_REQUIRES_SIGHTING` waits for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::clock::UnixTime;
use crate::jwks::JwksDocument;
use crate::metrics::VerifierLabel;
use crate::store::verifiers::{RECENT, Sighting};
use crate::store::{self, Store, StoreError};

/// Verifiers told apart at most (beyond, they share one summary: a flood of made-up user
/// agents cannot grow memory).
const MAX_VERIFIERS: usize = 256;
/// The summary of verifiers beyond [`MAX_VERIFIERS`].
const OTHERS: &str = "(other user agents)";
/// Longest user agent kept (characters).
const MAX_AGENT: usize = 120;
#[derive(Debug, Default)]
struct Pending {
    requests: u64,
    first: UnixTime,
    last: UnixTime,
    /// The latest requests (at most [`RECENT`]; nothing allocated per request once full).
    recent: std::collections::VecDeque<Noted>,
    /// Each key set served, with when it was first served.
    served: Vec<(Arc<JwksDocument>, UnixTime)>,
}

impl Pending {
    fn note(
        &mut self,
        now: UnixTime,
        address: Option<IpAddr>,
        doc: &Arc<JwksDocument>,
        revalidated: bool,
    ) {
        self.requests += 1;
        self.last = now;
        let served = match self.served.iter().position(|(d, _)| Arc::ptr_eq(d, doc)) {
            Some(i) => i,
            None => {
                self.served.push((doc.clone(), now));
                self.served.len() - 1
            }
        };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Noted {
            at: now,
            address,
            served,
            revalidated,
        });
    }
}

/// A request as the JWKS path notes it: plain values, turned into a [`Sighting`] at the flush.
#[derive(Debug, Clone, Copy)]
struct Noted {
    at: UnixTime,
    address: Option<IpAddr>,
    /// Index into `Pending::served`.
    served: usize,
    revalidated: bool,
}

/// Sightings since the last flush, per verifier.
#[derive(Debug, Default)]
pub struct Sightings {
    pending: Mutex<HashMap<String, Pending>>,
    /// `keyhost_verifier_last_seen_seconds{verifier}`, set at each flush.
    last_seen: Option<Family<VerifierLabel, Gauge>>,
}

/// A user agent as kept: at most [`MAX_AGENT`] characters, control characters replaced.
pub fn agent_name(user_agent: Option<&str>) -> String {
    match user_agent.map(str::trim).filter(|a| !a.is_empty()) {
        None => "(no user agent)".into(),
        Some(a) => a
            .chars()
            .take(MAX_AGENT)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    }
}

impl Sightings {
    /// Sightings whose flushes also set `gauge` (each verifier's last fetch, Unix seconds).
    pub fn reporting_to(gauge: Family<VerifierLabel, Gauge>) -> Self {
        Self {
            last_seen: Some(gauge),
            ..Self::default()
        }
    }

    /// Notes that `user_agent` from `address` was served `doc` at `now` (revalidated: answered
    /// `304`).
    pub fn note(
        &self,
        user_agent: Option<&str>,
        address: Option<IpAddr>,
        now: UnixTime,
        doc: &Arc<JwksDocument>,
        revalidated: bool,
    ) {
        let ua = user_agent.unwrap_or("");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // One lookup for a verifier already noted since the last flush (the usual case).
        if let Some(entry) = pending.get_mut(ua) {
            entry.note(now, address, doc, revalidated);
            return;
        }
        let name = if pending.len() >= MAX_VERIFIERS {
            OTHERS.to_owned()
        } else {
            agent_name(user_agent)
        };
        // Keyed by the header as sent, so that the next request finds it without a copy.
        let key = if name == OTHERS { name } else { ua.to_owned() };
        pending
            .entry(key)
            .or_insert_with(|| Pending {
                first: now,
                ..Pending::default()
            })
            .note(now, address, doc, revalidated);
    }

    /// Writes what was noted since the last flush to the store (one transaction) and starts
    /// afresh; what could not be written is noted again.
    pub fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let written = store.blocking_write(|tx| {
            let mut known = store::verifiers::count(tx)?;
            for (ua, p) in &taken {
                let mut name = if ua == OTHERS {
                    ua.clone()
                } else {
                    agent_name(Some(ua))
                };
                // The stored roll is bounded too, whatever the number of flushes.
                if !store::verifiers::exists(tx, &name)? {
                    if known >= MAX_VERIFIERS as i64 {
                        name = OTHERS.to_owned();
                    } else {
                        known += 1;
                    }
                }
                if let Some(gauge) = &self.last_seen {
                    gauge
                        .get_or_create(&VerifierLabel {
                            verifier: name.clone(),
                        })
                        .set(p.last);
                }
                let recent: Vec<Sighting> = p
                    .recent
                    .iter()
                    .map(|n| Sighting {
                        at: n.at,
                        address: n.address.map(|a| a.to_string()),
                        etag: p.served[n.served].0.etag.clone(),
                        revalidated: n.revalidated,
                    })
                    .collect();
                store::verifiers::record(
                    tx,
                    &store::verifiers::Seen {
                        user_agent: &name,
                        first: p.first,
                        last: p.last,
                        requests: p.requests as i64,
                        recent: &recent,
                    },
                )?;
                for (doc, at) in &p.served {
                    for kid in &doc.kids {
                        store::verifiers::served(tx, &name, kid, *at)?;
                    }
                }
            }
            Ok::<_, StoreError>(())
        });
        if written.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (ua, p) in taken {
                pending.entry(ua).or_insert(p);
            }
        }
        written
    }
}

/// A verifier as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Verifier)]
pub struct VerifierView {
    /// Its user agent (up to 120 characters).
    pub user_agent: String,
    /// First JWKS fetch seen, RFC 3339.
    #[schema(format = DateTime)]
    pub first_seen_at: String,
    /// Last JWKS fetch seen, RFC 3339.
    #[schema(format = DateTime)]
    pub last_seen_at: String,
    /// Fetches seen (every server sharing the store).
    pub requests: i64,
    /// The last few fetches, newest last.
    pub recent: Vec<SightingView>,
    /// For each pending key: whether this verifier has been served a key set listing it.
    pub pending_keys: Vec<PendingSeen>,
}

/// One fetch as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SightingView {
    /// When, RFC 3339.
    #[schema(format = DateTime)]
    pub at: String,
    /// Source address (behind trusted proxies: the client's).
    pub address: Option<String>,
    /// The ETag of the key set it received or revalidated.
    pub etag: String,
    /// Whether it revalidated its copy (`304` to `If-None-Match`).
    pub revalidated: bool,
}

/// Whether a verifier has been served a pending key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSeen {
    /// The pending key.
    pub kid: String,
    /// Whether this verifier has provably been served a key set listing it.
    pub seen: bool,
    /// When first, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub first_served_at: Option<String>,
}

/// Every verifier seen (most recent first), and for each pending key of `pending` whether it
/// has been served it.
pub fn report(store: &Store, pending: &[String]) -> Result<Vec<VerifierView>, StoreError> {
    use crate::clock::rfc3339;
    store.blocking_read(|tx| {
        let verifiers = store::verifiers::list(tx)?;
        let mut served: HashMap<&str, Vec<(String, UnixTime)>> = HashMap::new();
        for kid in pending {
            served.insert(kid, store::verifiers::seen_kid(tx, kid)?);
        }
        Ok(verifiers
            .into_iter()
            .map(|v| VerifierView {
                first_seen_at: rfc3339(v.first_seen),
                last_seen_at: rfc3339(v.last_seen),
                requests: v.requests,
                recent: v
                    .recent
                    .iter()
                    .map(|s| SightingView {
                        at: rfc3339(s.at),
                        address: s.address.clone(),
                        etag: s.etag.clone(),
                        revalidated: s.revalidated,
                    })
                    .collect(),
                pending_keys: pending
                    .iter()
                    .map(|kid| {
                        let first = served[kid.as_str()]
                            .iter()
                            .find(|(ua, _)| *ua == v.user_agent)
                            .map(|(_, at)| *at);
                        PendingSeen {
                            kid: kid.clone(),
                            seen: first.is_some(),
                            first_served_at: first.map(rfc3339),
                        }
                    })
                    .collect(),
                user_agent: v.user_agent,
            })
            .collect())
    })
}
