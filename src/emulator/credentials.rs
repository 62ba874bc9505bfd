//! The emulator's credential ledger: issuance, duplicates and the asynchronous on-chain status.
//!
//! AIR Kit answers issue-on-behalf at once and writes the credential on chain later. The ledger
//! keeps the time of each issuance on the emulator's clock and derives the status from it when
//! asked (`WAIT_ONCHAIN` until the configured delay has passed, `ONCHAIN` after), so there are no
//! timers to run or cancel and the answer only depends on elapsed time.
//!
//! A credential is identified by its `coreClaimHash`. At most one credential per (user,
//! issuer DID, program) is live: a duplicate either answers with the live one (`ignore`) or
//! revokes it and issues a new one (`revoke`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::error::Unspecified;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::clock::Clock;

/// What to do when the user already holds a live credential of the same program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDuplicate {
    /// Answer 409 with the existing credential.
    Ignore,
    /// Revoke the existing credential and issue a new one (AIR Kit's default).
    Revoke,
}

impl OnDuplicate {
    /// The wire value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Revoke => "revoke",
        }
    }
}

/// The result of an issuance request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Issued {
    /// A new credential.
    New {
        /// Its `coreClaimHash`.
        core_claim_hash: String,
        /// The user's UUID.
        user_uuid: String,
    },
    /// `onDuplicate: "ignore"` met a live credential.
    Duplicate {
        /// The live credential's `coreClaimHash`.
        core_claim_hash: String,
    },
}

/// The status of a credential, as the status endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Status {
    /// Still being written on chain.
    WaitOnchain,
    /// On chain.
    Onchain {
        /// `YYYY-MM-DD HH:MM:SS`, UTC: when the issuance was requested.
        issuance_date: String,
        /// The issuer DID.
        issuer_did: String,
        /// The verifiable credential id.
        vc_id: String,
    },
}

struct Record {
    issuer_did: String,
    vc_id: String,
    /// On the clock's monotonic face.
    issued_at: Duration,
    issued_on: OffsetDateTime,
    revoked: bool,
}

#[derive(Default)]
struct Ledger {
    by_hash: HashMap<String, Record>,
    /// (normalised email, issuer DID, program id) → hash of the live credential.
    live: HashMap<(String, String, String), String>,
}

/// All credentials issued since start, in memory.
pub(super) struct Credentials {
    ledger: Mutex<Ledger>,
    onchain_delay: Duration,
    clock: Arc<dyn Clock>,
}

/// The key under which a user is known: AIR Kit users are email addresses, which are not
/// case-sensitive in practice.
pub(super) fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A UUID-shaped id that is stable per email: derived from a SHA-256 of the normalised email,
/// with the version and variant bits of a random (v4) UUID so that it looks like AIR Kit's.
pub(super) fn user_uuid(email: &str) -> String {
    let digest = digest::digest(
        &digest::SHA256,
        format!("airkit-emulator user {}", normalise_email(email)).as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// A 22-character lowercase alphanumeric id like AIR Kit's `vcId` (`c28t30c048pe502a3713w0`).
fn vc_id(rng: &SystemRandom) -> Result<String, Unspecified> {
    // 32 symbols, so that masking a byte picks each with the same probability.
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut bytes = [0u8; 22];
    rng.fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect())
}

fn lock(m: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    // Every update of the ledger is completed before the guard drops, so a poisoned lock still
    // guards consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Credentials {
    /// An empty ledger whose credentials go on chain `onchain_delay` (on `clock`) after
    /// issuance.
    pub(super) fn new(onchain_delay: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            ledger: Mutex::new(Ledger::default()),
            onchain_delay,
            clock,
        }
    }

    /// Issues a credential of program `credential_id` from `issuer_did` to `email`, applying
    /// `on_duplicate` when the user already holds a live one. A revoked credential keeps
    /// answering its status (it did go on chain; revocation does not undo the issuance), so a
    /// poller that follows the old hash is not left with a 404; it no longer counts as live.
    pub(super) fn issue(
        &self,
        rng: &SystemRandom,
        email: &str,
        issuer_did: &str,
        credential_id: &str,
        on_duplicate: OnDuplicate,
    ) -> Result<Issued, Unspecified> {
        let mut hash = [0u8; 32];
        rng.fill(&mut hash)?;
        let core_claim_hash = hex(&hash);
        let vc_id = vc_id(rng)?;
        let key = (
            normalise_email(email),
            issuer_did.to_owned(),
            credential_id.to_owned(),
        );

        let mut ledger = lock(&self.ledger);
        if let Some(existing) = ledger.live.get(&key).cloned() {
            match on_duplicate {
                OnDuplicate::Ignore => {
                    return Ok(Issued::Duplicate {
                        core_claim_hash: existing,
                    });
                }
                OnDuplicate::Revoke => {
                    if let Some(old) = ledger.by_hash.get_mut(&existing) {
                        old.revoked = true;
                    }
                }
            }
        }
        ledger.by_hash.insert(
            core_claim_hash.clone(),
            Record {
                issuer_did: issuer_did.to_owned(),
                vc_id,
                issued_at: self.clock.monotonic(),
                issued_on: OffsetDateTime::now_utc(),
                revoked: false,
            },
        );
        ledger.live.insert(key, core_claim_hash.clone());
        Ok(Issued::New {
            core_claim_hash,
            user_uuid: user_uuid(email),
        })
    }

    /// The status of the credential `core_claim_hash`, if it was ever issued.
    pub(super) fn status(&self, core_claim_hash: &str) -> Option<Status> {
        let ledger = lock(&self.ledger);
        let record = ledger.by_hash.get(core_claim_hash)?;
        if self.clock.monotonic().saturating_sub(record.issued_at) < self.onchain_delay {
            return Some(Status::WaitOnchain);
        }
        let issuance_date = record
            .issued_on
            .format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            // Formatting a valid UTC date with this description cannot fail; the fallback
            // keeps the endpoint infallible all the same.
            .unwrap_or_default();
        Some(Status::Onchain {
            issuance_date,
            issuer_did: record.issuer_did.clone(),
            vc_id: record.vc_id.clone(),
        })
    }

    /// How many credentials are live (issued and not revoked).
    pub(super) fn live_count(&self) -> usize {
        lock(&self.ledger)
            .by_hash
            .values()
            .filter(|r| !r.revoked)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_uuid_is_stable_per_email_and_shaped_like_a_v4_uuid() {
        let a = user_uuid("User@Example.com");
        assert_eq!(a, user_uuid(" user@example.com "));
        assert_ne!(a, user_uuid("other@example.com"));
        assert_eq!(a.len(), 36);
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn revoke_reissues_ignore_answers_with_the_live_one() {
        let rng = SystemRandom::new();
        let c = Credentials::new(Duration::ZERO, Arc::new(crate::clock::SystemClock));
        let Ok(Issued::New {
            core_claim_hash: first,
            ..
        }) = c.issue(&rng, "a@x.io", "did:1", "p", OnDuplicate::Revoke)
        else {
            panic!("first issuance");
        };
        assert_eq!(first.len(), 64);
        assert_eq!(
            c.issue(&rng, "A@x.io", "did:1", "p", OnDuplicate::Ignore),
            Ok(Issued::Duplicate {
                core_claim_hash: first.clone()
            })
        );
        let Ok(Issued::New {
            core_claim_hash: second,
            ..
        }) = c.issue(&rng, "a@x.io", "did:1", "p", OnDuplicate::Revoke)
        else {
            panic!("reissue");
        };
        assert_ne!(first, second);
        assert_eq!(c.live_count(), 1);
        assert!(matches!(c.status(&first), Some(Status::Onchain { .. })));
        assert!(c.status("nope").is_none());
    }
}
