//! The worker that drives one issuance: issue attempts until AIR Kit answers, then status polls
//! until `ONCHAIN`, saving the record after each step. What each answer means and how long to
//! wait come from [`super::policy`]; every wait is on the service's clock.
//!
//! One worker per issuance at a time (a set of the issuances being driven); the record is the
//! truth, so a worker that stops for any reason (a store error, a restart) carries on from it.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SecureRandom;
use serde_json::json;

use super::policy::{self, IssueAnswer, StatusAnswer};
use super::state::{Issuance, IssuanceState};
use super::{IssuanceService, NoToken};
use crate::airkit::hint;
use crate::clock::rfc3339;
use crate::store::StoreError;

/// How long a worker waits after a store error before reading its record again.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// How long a worker waits when this server's view of the key set is stale.
const STALE_RETRY: Duration = Duration::from_secs(2);

impl IssuanceService {
    /// Starts a worker for the issuance `id`, unless one is running.
    pub(super) fn spawn(self: &Arc<Self>, id: String) {
        {
            let mut driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
            if !driving.insert(id.clone()) {
                return;
            }
        }
        /// Takes the id out of the running set however the worker ends, panics included.
        struct Running(Arc<IssuanceService>, String);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0
                    .driving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.1);
                self.0.release(&self.1);
            }
        }
        let running = Running(self.clone(), id);
        tokio::spawn(async move {
            let (me, id) = (&running.0, &running.1);
            // On a shared store, only the server holding the issuance's claim drives it.
            loop {
                match me.claim(id).await {
                    Ok(true) => break,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(issuance = %id, error = %e, "cannot claim the issuance yet; retrying in 5 s");
                        me.clock.sleep(STORE_RETRY).await;
                    }
                }
            }
            // A store error (a busy database, a full disk) must not strand the issuance: the row
            // is the truth, so wait and carry on from it.
            while let Err(e) = me.drive(id).await {
                tracing::error!(issuance = %id, error = %e, "issuance worker failed; retrying in 5 s");
                me.clock.sleep(STORE_RETRY).await;
            }
        });
    }

    /// A uniform draw from [0, 1], for the backoff's jitter.
    fn jitter(&self) -> f64 {
        let mut r = [0u8; 4];
        let _ = self.rng.fill(&mut r);
        f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX)
    }

    /// Waits until the record's next attempt or poll is due (after a restart, a delay that was
    /// scheduled before it).
    async fn sleep_until_due(&self, issuance: &Issuance) {
        if let Some(due) = issuance.next_attempt_at {
            let wait = policy::wait_until_due(due, issuance.updated_at, self.clock.now());
            if !wait.is_zero() {
                self.clock.sleep(wait).await;
            }
        }
    }

    async fn drive(&self, id: &str) -> Result<(), StoreError> {
        if self.airkit.is_none() {
            return Ok(());
        }
        let Some(mut issuance) = self.get(id).await? else {
            return Ok(());
        };
        if !self.authentic(&issuance) {
            return Ok(());
        }
        self.sleep_until_due(&issuance).await;
        while issuance.state == IssuanceState::Queued {
            if !self.holds(id) {
                return Ok(());
            }
            if let Some(delay) = self.attempt(&mut issuance).await? {
                self.clock.sleep(delay).await;
            }
        }
        let polls = self.settings.polls();
        while issuance.state == IssuanceState::Submitted {
            self.clock.sleep(polls.delay_after(issuance.polls)).await;
            if !self.holds(id) {
                return Ok(());
            }
            self.poll(&mut issuance).await?;
        }
        Ok(())
    }

    /// One issue attempt; returns the delay before the next one, if any.
    async fn attempt(&self, issuance: &mut Issuance) -> Result<Option<Duration>, StoreError> {
        let airkit = match self.airkit() {
            Ok(a) => a.clone(),
            Err(_) => return Ok(None),
        };
        let body = json!({
            "issuerDid": issuance.issuer_did,
            "credentialId": issuance.credential_id,
            "credentialSubject": issuance.credential_subject,
            "onDuplicate": issuance.on_duplicate,
        });
        issuance.attempts += 1;
        let outcome = match self.token(&issuance.email) {
            Ok((token, kid)) => {
                let _permit = self.in_flight.acquire().await.expect("never closed");
                let result = airkit.issue_on_behalf(&token, &body).await;
                self.count_upstream("issue", &result);
                Some((result, kid))
            }
            Err(NoToken::NotYet(alg, until)) => {
                // Nothing was sent: keyhost itself has no key that may sign yet (a key being
                // replaced, a clock set back). That is not AIR Kit's failure: wait for the key
                // without spending the retry budget.
                issuance.attempts -= 1;
                let now = self.clock.now();
                let wait = policy::key_wait(until, now);
                issuance.updated_at = now;
                issuance.next_attempt_at = Some(now + wait);
                issuance.last_error = Some(format!(
                    "waiting for a signing key: no {alg} key may sign yet{}",
                    until.map_or(String::new(), |t| format!(" (until {})", rfc3339(t)))
                ));
                self.save(issuance).await?;
                return Ok(Some(Duration::from_secs(wait as u64)));
            }
            Err(NoToken::Stale(_)) => {
                // Nothing was sent, and nothing can be recorded (the database is away): spend
                // no attempt, and look again shortly (or leave it to the server that takes the
                // claim over).
                issuance.attempts -= 1;
                return Ok(Some(STALE_RETRY));
            }
            Err(why) => {
                issuance.last_error = Some(format!("cannot mint a Partner JWT: {why}"));
                None
            }
        };
        let now = self.clock.now();
        issuance.updated_at = now;
        let mut retry_after = None;
        // Set when retrying cannot help: park now rather than spend the retry budget.
        let mut park_now = false;
        match outcome {
            Some((Ok(reply), kid)) => {
                issuance.last_status = Some(reply.status);
                let refusal = || {
                    format!(
                        "AIR Kit answered {}: {}. Fix: {}",
                        reply.status,
                        reply.message(),
                        hint::for_status(reply.status)
                    )
                };
                match policy::classify_issue(&reply) {
                    IssueAnswer::Accepted {
                        core_claim_hash,
                        user_uuid,
                        duplicate,
                    } => {
                        issuance.state = IssuanceState::Submitted;
                        issuance.duplicate = duplicate;
                        issuance.core_claim_hash = Some(core_claim_hash);
                        issuance.user_uuid = user_uuid;
                        issuance.vc_status = Some("WAIT_ONCHAIN".into());
                        issuance.submitted_at = Some(now);
                        issuance.last_error = None;
                        let first_poll = self.settings.polls().delay_after(0);
                        issuance.next_attempt_at = Some(now + first_poll.as_secs() as i64);
                        self.save(issuance).await?;
                        self.count_state(IssuanceState::Submitted);
                        tracing::info!(issuance = %issuance.id, hash = ?issuance.core_claim_hash, duplicate, "issuance accepted");
                        return Ok(None);
                    }
                    IssueAnswer::AcceptedWithoutHash { user_uuid } => {
                        issuance.state = IssuanceState::Failed;
                        issuance.user_uuid = user_uuid;
                        issuance.vc_status = Some("WAIT_ONCHAIN".into());
                        issuance.submitted_at = Some(now);
                        issuance.completed_at = Some(now);
                        issuance.next_attempt_at = None;
                        issuance.last_error =
                            Some("AIR Kit accepted the request but sent no coreClaimHash".into());
                        self.save(issuance).await?;
                        self.count_state(IssuanceState::Failed);
                        tracing::warn!(issuance = %issuance.id, "issuance accepted without a coreClaimHash");
                        return Ok(None);
                    }
                    IssueAnswer::Refused => {
                        if reply.status == 401 {
                            self.note_unauthorized(&kid, "issue", &reply);
                        }
                        issuance.last_error = Some(refusal());
                        issuance.state = IssuanceState::Failed;
                        issuance.completed_at = Some(now);
                        issuance.next_attempt_at = None;
                        self.save(issuance).await?;
                        self.count_state(IssuanceState::Failed);
                        tracing::warn!(issuance = %issuance.id, status = reply.status, "issuance refused by AIR Kit");
                        return Ok(None);
                    }
                    IssueAnswer::Transient { retry_after: after } => {
                        issuance.last_error = Some(refusal());
                        retry_after = after;
                    }
                }
            }
            Some((Err(e), _)) if e.is_transient() => {
                issuance.last_status = None;
                issuance.last_error = Some(format!(
                    "AIR Kit unreachable: {e}. Fix: check KEYHOST_AIRKIT_BASE_URL and the \
                     network; keyhost retries"
                ));
            }
            Some((Err(e), _)) => {
                // An answer too large to be AIR Kit's. Not `failed`: that state means AIR
                // refused the request, whereas here no usable answer arrived (AIR may even have
                // accepted it) and a failed issuance cannot be resumed. Not retried either:
                // whatever answers at the base URL answers the same way seconds later, and each
                // retry would send the issue again (AIR reissues under `onDuplicate: "revoke"`)
                // for nothing. So it is parked as `stalled` at once: recorded, visible, and
                // resumable by an admin once the base URL or the proxy in the way is fixed.
                issuance.last_status = None;
                issuance.last_error = Some(format!("AIR Kit's answer could not be used: {e}"));
                park_now = true;
            }
            None => {}
        }
        if park_now || issuance.attempts >= self.settings.max_attempts {
            let why = if park_now {
                "not retried, since retrying cannot change such an answer".to_owned()
            } else {
                format!("gave up after {} attempts", issuance.attempts)
            };
            issuance.state = IssuanceState::Stalled;
            issuance.next_attempt_at = None;
            issuance.last_error = Some(format!(
                "{why}; the issuance is recorded: an admin resumes it with POST \
                 /admin/issuances/{}/resume (sending the request again without the same \
                 Idempotency-Key would start a second issuance). Last error: {}",
                issuance.id,
                issuance.last_error.as_deref().unwrap_or("none")
            ));
            self.save(issuance).await?;
            self.count_state(IssuanceState::Stalled);
            tracing::warn!(issuance = %issuance.id, attempts = issuance.attempts, "issuance stalled");
            return Ok(None);
        }
        let delay = self
            .settings
            .backoff()
            .delay(issuance.attempts, self.jitter(), retry_after);
        issuance.next_attempt_at = Some(now + delay.as_secs() as i64);
        self.save(issuance).await?;
        tracing::debug!(issuance = %issuance.id, attempts = issuance.attempts, ?delay, "issuance will be retried");
        Ok(Some(delay))
    }

    /// One status poll.
    async fn poll(&self, issuance: &mut Issuance) -> Result<(), StoreError> {
        let Some(hash) = issuance.core_claim_hash.clone() else {
            return Ok(());
        };
        let airkit = match self.airkit() {
            Ok(a) => a.clone(),
            Err(_) => return Ok(()),
        };
        issuance.polls += 1;
        let now = self.clock.now();
        match self.token(&issuance.email) {
            Ok((token, kid)) => {
                let result = {
                    let _permit = self.in_flight.acquire().await.expect("never closed");
                    airkit.status(&token, &hash).await
                };
                self.count_upstream("status", &result);
                match result {
                    Ok(reply) => match policy::classify_status(&reply) {
                        StatusAnswer::Onchain {
                            vc_id,
                            issuance_date,
                        } => {
                            issuance.vc_status = Some("ONCHAIN".into());
                            issuance.last_status = Some(reply.status);
                            issuance.last_error = None;
                            issuance.state = IssuanceState::Onchain;
                            issuance.vc_id = vc_id;
                            issuance.issuance_date = issuance_date;
                            issuance.completed_at = Some(now);
                            issuance.next_attempt_at = None;
                        }
                        StatusAnswer::Pending { vc_status } => {
                            issuance.vc_status = vc_status;
                            issuance.last_status = Some(reply.status);
                            issuance.last_error = None;
                        }
                        StatusAnswer::Error => {
                            if reply.status == 401 {
                                self.note_unauthorized(&kid, "status", &reply);
                            }
                            issuance.last_status = Some(reply.status);
                            issuance.last_error = Some(format!(
                                "status check answered {}: {}. Fix: {}",
                                reply.status,
                                reply.message(),
                                hint::for_status(reply.status)
                            ));
                        }
                    },
                    Err(e) => issuance.last_error = Some(format!("status check failed: {e}")),
                }
            }
            Err(NoToken::Stale(_)) => {
                // As for an attempt: no poll is spent while the database is away.
                issuance.polls -= 1;
                return Ok(());
            }
            Err(why) => issuance.last_error = Some(format!("cannot mint a Partner JWT: {why}")),
        }
        issuance.updated_at = now;
        let polls = self.settings.polls();
        if issuance.state == IssuanceState::Submitted && polls.gives_up_after(issuance.polls) {
            issuance.state = IssuanceState::Unconfirmed;
            issuance.next_attempt_at = None;
            issuance.completed_at = Some(now);
            issuance.last_error = Some(format!(
                "not ONCHAIN {} after AIR Kit accepted it; resume with POST \
                 /admin/issuances/{}/resume. Last: {}",
                humantime::format_duration(self.settings.poll_deadline),
                issuance.id,
                issuance.last_error.as_deref().unwrap_or("WAIT_ONCHAIN")
            ));
        }
        if issuance.state == IssuanceState::Submitted {
            let next = polls.delay_after(issuance.polls);
            issuance.next_attempt_at = Some(now + next.as_secs() as i64);
        }
        self.save(issuance).await?;
        if issuance.state != IssuanceState::Submitted {
            self.count_state(issuance.state);
            tracing::info!(issuance = %issuance.id, state = %issuance.state, "issuance finished");
        }
        Ok(())
    }
}
