//! The issuance's rules, as pure functions: which of AIR Kit's answers are worth retrying, how
//! long to wait before the next attempt, when to poll a credential's status and for how long,
//! what an answer means, and what keyhost answers its own callers for an AIR Kit status.
//!
//! Nothing here reads a clock, draws a random number or does I/O: the time, the jitter and the
//! answers are inputs, so that each rule is tested on its own (as the key planner is) and the
//! worker around it is thin glue.

use std::time::Duration;

use serde_json::Value;

use crate::airkit::Reply;
use crate::clock::UnixTime;

/// Longest delay between status polls.
pub const POLL_CAP: Duration = Duration::from_secs(30);

/// Whether an AIR Kit status is worth retrying: a timeout, a rate limit or a server failure
/// may be gone on the next try; any other refusal would be repeated.
pub fn is_transient(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// The retry delays: exponential from `first`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub first: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `attempts` failed attempts: `first` doubled per attempt up to `max`, half
    /// of it fixed and half scaled by `jitter` (a uniform draw from [0, 1]; "equal jitter", so
    /// that the retries of a burst spread out but never come sooner than half the schedule),
    /// and never shorter than AIR's `Retry-After`.
    pub fn delay(&self, attempts: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .first
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
            .min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = (exp / 2).saturating_add(exp.mul_f64(jitter / 2.0));
        delay.max(retry_after.unwrap_or_default())
    }
}

/// The status polls of an accepted issuance: from `interval`, doubling, capped at
/// [`POLL_CAP`], for as many polls as fit in `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    /// Delay before the first poll.
    pub interval: Duration,
    /// How long to follow the status.
    pub deadline: Duration,
}

impl PollSchedule {
    /// The wait before the next poll, once `polls` polls have been made.
    pub fn delay_after(&self, polls: u32) -> Duration {
        self.interval
            .saturating_mul(1u32 << polls.min(16))
            .min(POLL_CAP)
    }

    /// How many polls the schedule makes within the deadline (at least one). The deadline is
    /// counted in polls rather than on the wall clock, so that a clock that jumps ahead (or a
    /// long downtime) does not cut the following of an issuance short.
    pub fn polls_within_deadline(&self) -> u32 {
        let (mut total, mut polls) = (Duration::ZERO, 0u32);
        while total < self.deadline && polls < 100_000 {
            total += self.delay_after(polls);
            polls += 1;
        }
        polls.max(1)
    }

    /// Whether following stops after `polls` polls without `ONCHAIN`.
    pub fn gives_up_after(&self, polls: u32) -> bool {
        polls >= self.polls_within_deadline()
    }
}

/// How long until a due time, but never longer than the delay that was scheduled
/// (`due - scheduled_at`, both written under the same clock): a due time written while the wall
/// clock was ahead (a host that booted before NTP corrected it) must not park an issuance for as
/// long as the clock was wrong.
pub fn wait_until_due(due: UnixTime, scheduled_at: UnixTime, now: UnixTime) -> Duration {
    let scheduled = (due - scheduled_at).max(0);
    Duration::from_secs((due - now).clamp(0, scheduled) as u64)
}

/// How long to wait for a signing key when none may sign yet: until the time one may, if
/// known, else 5 s; between 1 s and a minute either way.
pub fn key_wait(signable_at: Option<UnixTime>, now: UnixTime) -> i64 {
    signable_at.map_or(5, |t| t - now).clamp(1, 60)
}

/// What an answer to an issue request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueAnswer {
    /// AIR accepted it, or (409 with a `coreClaimHash`) already holds it under
    /// `onDuplicate: "ignore"`.
    Accepted {
        /// AIR's issuance id, to poll.
        core_claim_hash: String,
        /// AIR's user id.
        user_uuid: Option<String>,
        /// AIR reported an existing credential.
        duplicate: bool,
    },
    /// A success without a `coreClaimHash`: there is nothing to follow.
    AcceptedWithoutHash {
        /// AIR's user id.
        user_uuid: Option<String>,
    },
    /// Refused (400, 401, 403, 404, a 409 without a hash, or anything else not transient):
    /// never retried.
    Refused,
    /// Worth another attempt, not before AIR's `Retry-After` if it sent one.
    Transient {
        /// AIR's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

fn text(body: &Value, member: &str) -> Option<String> {
    body.get(member).and_then(Value::as_str).map(str::to_owned)
}

/// Classifies AIR Kit's answer to an issue request.
pub fn classify_issue(reply: &Reply) -> IssueAnswer {
    let hash = text(&reply.body, "coreClaimHash");
    let success = (200..300).contains(&reply.status);
    match hash {
        Some(core_claim_hash) if success || reply.status == 409 => IssueAnswer::Accepted {
            core_claim_hash,
            user_uuid: text(&reply.body, "userUuid"),
            duplicate: reply.status == 409,
        },
        None if success => IssueAnswer::AcceptedWithoutHash {
            user_uuid: text(&reply.body, "userUuid"),
        },
        _ if is_transient(reply.status) => IssueAnswer::Transient {
            retry_after: reply.retry_after,
        },
        _ => IssueAnswer::Refused,
    }
}

/// What an answer to a status poll means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAnswer {
    /// The credential is on chain.
    Onchain {
        /// The credential id.
        vc_id: Option<String>,
        /// AIR's issuance date.
        issuance_date: Option<String>,
    },
    /// Not yet (`WAIT_ONCHAIN`, or a `vcStatus` keyhost does not know).
    Pending {
        /// The `vcStatus` AIR reported.
        vc_status: Option<String>,
    },
    /// Not a status: an error to record; the polls go on.
    Error,
}

/// Classifies AIR Kit's answer to a status poll.
pub fn classify_status(reply: &Reply) -> StatusAnswer {
    if reply.status != 200 {
        return StatusAnswer::Error;
    }
    match text(&reply.body, "vcStatus") {
        Some(s) if s == "ONCHAIN" => StatusAnswer::Onchain {
            vc_id: text(&reply.body, "vcId"),
            issuance_date: text(&reply.body, "issuanceDate"),
        },
        vc_status => StatusAnswer::Pending { vc_status },
    }
}

/// What keyhost answers its caller when AIR Kit did not answer with success: the one
/// translation of AIR's statuses, for refused issuances and the status proxy alike. The HTTP
/// layer gives each its status and identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AirFault {
    /// 400: the fields do not match the schema (400 `VALIDATION_ERROR`).
    Validation,
    /// 401: AIR rejected keyhost's Partner JWT, not the caller's credentials (502
    /// `UNAUTHORIZED`).
    TokenRejected,
    /// 403: feature not enabled, schema not allowed (403 `PERMISSIONS_ERROR`).
    Forbidden,
    /// 404: unknown issuer, program or hash (404 `NOT_FOUND`).
    NotFound,
    /// 409: consent rejected or a duplicate (409 `CONFLICT`).
    Conflict,
    /// 429: AIR's rate limit (429 `TOO_MANY_REQUESTS`).
    RateLimited,
    /// Anything else: a server failure, a timeout, an unexpected or missing status (502
    /// `INTERNAL_ERROR`).
    BadGateway,
}

/// The fault for AIR Kit's last status (`None`: no answer).
pub fn fault_for(status: Option<u16>) -> AirFault {
    match status {
        Some(400) => AirFault::Validation,
        Some(401) => AirFault::TokenRejected,
        Some(403) => AirFault::Forbidden,
        Some(404) => AirFault::NotFound,
        Some(409) => AirFault::Conflict,
        Some(429) => AirFault::RateLimited,
        _ => AirFault::BadGateway,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
            date: None,
        }
    }

    #[test]
    fn transient_statuses_are_408_429_and_5xx() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_transient(s), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 422, 499] {
            assert!(!is_transient(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_half_of_each_delay_jittered() {
        let b = Backoff {
            first: S(2),
            max: S(60),
        };
        // (attempts, without jitter, with full jitter)
        for (attempts, low, high) in [
            (0, 1, 2),
            (1, 1, 2),
            (2, 2, 4),
            (3, 4, 8),
            (5, 16, 32),
            (6, 30, 60),
            (40, 30, 60),
        ] {
            assert_eq!(b.delay(attempts, 0.0, None), S(low), "{attempts}");
            assert_eq!(b.delay(attempts, 1.0, None), S(high), "{attempts}");
            let mid = b.delay(attempts, 0.5, None);
            assert!(S(low) < mid && mid < S(high), "{attempts}: {mid:?}");
        }
    }

    #[test]
    fn backoff_jitter_outside_zero_to_one_is_clamped() {
        let b = Backoff {
            first: S(10),
            max: S(10),
        };
        assert_eq!(b.delay(1, -3.0, None), S(5));
        assert_eq!(b.delay(1, 7.0, None), S(10));
        assert_eq!(b.delay(1, f64::NAN, None), S(5));
        assert_eq!(b.delay(1, f64::INFINITY, None), S(5));
    }

    #[test]
    fn backoff_never_retries_before_retry_after_but_may_wait_longer() {
        let b = Backoff {
            first: S(4),
            max: S(4),
        };
        assert_eq!(b.delay(1, 0.0, Some(S(120))), S(120));
        assert_eq!(b.delay(1, 1.0, Some(S(1))), S(4));
        assert_eq!(b.delay(1, 0.0, Some(Duration::ZERO)), S(2));
    }

    #[test]
    fn backoff_survives_huge_settings_and_attempt_counts() {
        let b = Backoff {
            first: Duration::MAX,
            max: Duration::MAX,
        };
        assert!(b.delay(u32::MAX, 1.0, None) >= Duration::MAX / 2);
    }

    #[test]
    fn polls_start_at_the_interval_double_and_are_capped_at_30_s() {
        let p = PollSchedule {
            interval: S(1),
            deadline: S(600),
        };
        let delays: Vec<u64> = (0..8).map(|n| p.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(p.delay_after(u32::MAX), POLL_CAP);
        let long = PollSchedule {
            interval: S(45),
            deadline: S(60),
        };
        assert_eq!(
            long.delay_after(0),
            POLL_CAP,
            "the cap holds from the first poll"
        );
    }

    #[test]
    fn the_deadline_counts_the_polls_that_fit_in_it() {
        // 1 + 2 + 4 + 8 + 16 = 31 s, then 30 s steps: 61, 91, 121.
        for (deadline, polls) in [(0, 1), (1, 1), (2, 2), (31, 5), (32, 6), (61, 6), (120, 8)] {
            let p = PollSchedule {
                interval: S(1),
                deadline: S(deadline),
            };
            assert_eq!(p.polls_within_deadline(), polls, "{deadline} s");
            assert!(p.gives_up_after(polls) && !p.gives_up_after(polls - 1));
        }
        let sub_second = PollSchedule {
            interval: Duration::from_millis(100),
            deadline: S(5),
        };
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.3 s.
        assert_eq!(sub_second.polls_within_deadline(), 6);
        let endless = PollSchedule {
            interval: Duration::from_nanos(1),
            deadline: Duration::MAX,
        };
        assert_eq!(endless.polls_within_deadline(), 100_000, "bounded");
    }

    #[test]
    fn a_due_time_is_waited_for_but_never_longer_than_it_was_scheduled() {
        assert_eq!(wait_until_due(110, 100, 100), S(10));
        assert_eq!(wait_until_due(110, 100, 104), S(6));
        assert_eq!(wait_until_due(110, 100, 200), S(0), "overdue");
        // Scheduled while the clock was an hour ahead: the clock is now right.
        assert_eq!(wait_until_due(3610, 3600, 0), S(10));
        assert_eq!(
            wait_until_due(90, 100, 50),
            S(0),
            "due before it was scheduled"
        );
    }

    #[test]
    fn waiting_for_a_signing_key_lasts_one_second_to_a_minute() {
        assert_eq!(key_wait(None, 100), 5);
        assert_eq!(key_wait(Some(130), 100), 30);
        assert_eq!(key_wait(Some(100), 100), 1);
        assert_eq!(key_wait(Some(50), 100), 1);
        assert_eq!(key_wait(Some(10_000), 100), 60);
    }

    #[test]
    fn an_issue_answer_is_accepted_refused_or_transient() {
        let hash = json!({"coreClaimHash": "h", "userUuid": "u"});
        let accepted = |duplicate| IssueAnswer::Accepted {
            core_claim_hash: "h".into(),
            user_uuid: Some("u".into()),
            duplicate,
        };
        let without_hash = |user_uuid: Option<&str>| IssueAnswer::AcceptedWithoutHash {
            user_uuid: user_uuid.map(str::to_owned),
        };
        let cases = [
            (200, hash.clone(), accepted(false)),
            (201, hash.clone(), accepted(false)),
            (409, hash.clone(), accepted(true)),
            (200, json!({"userUuid": "u"}), without_hash(Some("u"))),
            (200, json!({"coreClaimHash": 5}), without_hash(None)),
            (200, Value::Null, without_hash(None)),
            (409, json!({"message": "consent"}), IssueAnswer::Refused),
            (400, hash.clone(), IssueAnswer::Refused),
            (401, json!({}), IssueAnswer::Refused),
            (403, json!({}), IssueAnswer::Refused),
            (404, json!({}), IssueAnswer::Refused),
            (302, json!({}), IssueAnswer::Refused),
            (500, hash, IssueAnswer::Transient { retry_after: None }),
            (503, json!({}), IssueAnswer::Transient { retry_after: None }),
            (408, json!({}), IssueAnswer::Transient { retry_after: None }),
        ];
        for (status, body, expected) in cases {
            assert_eq!(
                classify_issue(&reply(status, body.clone())),
                expected,
                "{status} {body}"
            );
        }
        let limited = Reply {
            retry_after: Some(S(7)),
            ..reply(429, json!({}))
        };
        assert_eq!(
            classify_issue(&limited),
            IssueAnswer::Transient {
                retry_after: Some(S(7))
            }
        );
    }

    #[test]
    fn a_status_answer_is_onchain_pending_or_an_error() {
        assert_eq!(
            classify_status(&reply(
                200,
                json!({"vcStatus": "ONCHAIN", "vcId": "v", "issuanceDate": "d"})
            )),
            StatusAnswer::Onchain {
                vc_id: Some("v".into()),
                issuance_date: Some("d".into())
            }
        );
        assert_eq!(
            classify_status(&reply(200, json!({"vcStatus": "ONCHAIN"}))),
            StatusAnswer::Onchain {
                vc_id: None,
                issuance_date: None
            }
        );
        for vc_status in ["WAIT_ONCHAIN", "SOMETHING_NEW", "onchain"] {
            assert_eq!(
                classify_status(&reply(200, json!({ "vcStatus": vc_status }))),
                StatusAnswer::Pending {
                    vc_status: Some(vc_status.into())
                }
            );
        }
        assert_eq!(
            classify_status(&reply(200, json!({}))),
            StatusAnswer::Pending { vc_status: None }
        );
        for status in [201, 401, 404, 429, 500] {
            let answer = classify_status(&reply(status, json!({"vcStatus": "ONCHAIN"})));
            assert_eq!(answer, StatusAnswer::Error, "{status}");
        }
    }

    #[test]
    fn each_air_kit_status_has_one_fault() {
        let cases = [
            (Some(400), AirFault::Validation),
            (Some(401), AirFault::TokenRejected),
            (Some(403), AirFault::Forbidden),
            (Some(404), AirFault::NotFound),
            (Some(409), AirFault::Conflict),
            (Some(429), AirFault::RateLimited),
            (Some(408), AirFault::BadGateway),
            (Some(422), AirFault::BadGateway),
            (Some(500), AirFault::BadGateway),
            (Some(503), AirFault::BadGateway),
            (Some(200), AirFault::BadGateway),
            (Some(302), AirFault::BadGateway),
            (None, AirFault::BadGateway),
        ];
        for (status, fault) in cases {
            assert_eq!(fault_for(status), fault, "{status:?}");
        }
    }
}
