//! The planner's rules, one test each.

use super::*;
use crate::keys::Origin;
use crate::keys::PublicJwk;

const H: i64 = 3600;
const D: i64 = 24 * H;
const T0: i64 = 1_800_000_000;

fn policy() -> Policy {
    Policy {
        algorithms: vec![Alg::ES256, Alg::RS256],
        publish_lead: D,
        rotation_period: 30 * D,
        auto_rotate: true,
        retire_grace: H,
        rsa_bits: 2048,
    }
}

fn es256_only() -> Policy {
    Policy {
        algorithms: vec![Alg::ES256],
        ..policy()
    }
}

/// A toy store that applies transitions the way the real one does.
#[derive(Default)]
struct Sim {
    keys: Vec<KeyRecord>,
    next_id: i64,
    /// Whether a server has served the JWKS (set after the first settle, as the server does).
    served: bool,
    /// The wall time of the last settle of the running server, if it is running.
    last: Option<UnixTime>,
}

impl Sim {
    /// Counts the time since the last settle as served (the server ran all along, and its
    /// wall clock kept real time), as the service does with its monotonic clock.
    fn accrue(&mut self, now: UnixTime) {
        if let Some(last) = self.last {
            let served = (now - last).max(0);
            for k in &mut self.keys {
                match k.state {
                    KeyState::Pending if k.published_at.is_some() => {
                        k.lead_remaining = (k.lead_remaining - served).max(0)
                    }
                    KeyState::Retired => k.grace_remaining = (k.grace_remaining - served).max(0),
                    _ => {}
                }
            }
        }
        self.last = Some(now);
    }

    fn apply(&mut self, now: UnixTime, p: &Policy) -> Vec<Transition> {
        let plan = plan(now, &self.keys, p, self.served);
        for t in &plan.transitions {
            match *t {
                Transition::Reschedule {
                    id, signable_at, ..
                } => self.get(id).signable_at = Some(signable_at),
                Transition::Publish { id, signable_at } => {
                    let k = self.get(id);
                    k.published_at = Some(now);
                    k.signable_at = Some(signable_at);
                    k.lead_remaining = signable_at - now;
                }
                Transition::Generate {
                    alg,
                    activate_now,
                    signable_at,
                    ..
                } => {
                    self.next_id += 1;
                    self.keys.push(KeyRecord {
                        id: self.next_id,
                        kid: format!("k{}", self.next_id),
                        alg,
                        state: if activate_now {
                            KeyState::Active
                        } else {
                            KeyState::Pending
                        },
                        origin: Origin::Generated,
                        bits: 256,
                        public_jwk: PublicJwk::Ec {
                            crv: "P-256".into(),
                            x: String::new(),
                            y: String::new(),
                        },
                        created_at: now,
                        published_at: Some(now),
                        signable_at: Some(signable_at),
                        activated_at: activate_now.then_some(now),
                        retired_at: None,
                        expires_at: None,
                        revoked_at: None,
                        lead_remaining: signable_at - now,
                        grace_remaining: 0,
                        last_exp: None,
                    });
                }
                Transition::Activate { id } => {
                    let k = self.get(id);
                    k.state = KeyState::Active;
                    k.activated_at = Some(now);
                }
                Transition::Retire { id, expires_at, .. } => {
                    let k = self.get(id);
                    k.state = KeyState::Retired;
                    k.retired_at = Some(now);
                    k.expires_at = Some(expires_at);
                    k.grace_remaining = expires_at - now;
                }
                Transition::Expire { id } => self.get(id).state = KeyState::Expired,
            }
        }
        plan.transitions
    }

    /// The running server plans at `now`: the time since its last round was served.
    fn settle(&mut self, now: UnixTime, p: &Policy) -> Vec<Transition> {
        self.accrue(now);
        self.plan_until_settled(now, p)
    }

    /// A server starts at `now` after downtime, or the wall clock jumped to `now`: nothing
    /// was served meanwhile.
    fn restart(&mut self, now: UnixTime, p: &Policy) -> Vec<Transition> {
        self.last = Some(now);
        self.plan_until_settled(now, p)
    }

    /// Plans and applies until nothing is due, as the service does.
    fn plan_until_settled(&mut self, now: UnixTime, p: &Policy) -> Vec<Transition> {
        let mut all = Vec::new();
        for _ in 0..10 {
            let ts = self.apply(now, p);
            if ts.is_empty() {
                self.served = true;
                return all;
            }
            all.extend(ts);
        }
        panic!("plan did not settle at {now}: {all:?}");
    }

    fn get(&mut self, id: i64) -> &mut KeyRecord {
        self.keys.iter_mut().find(|k| k.id == id).unwrap()
    }

    fn active(&self, alg: Alg) -> Option<&KeyRecord> {
        self.keys
            .iter()
            .find(|k| k.alg == alg && k.state == KeyState::Active)
    }

    fn state_of(&self, id: i64) -> KeyState {
        self.keys.iter().find(|k| k.id == id).unwrap().state
    }
}

/// Whether `ts` changes which keys sign or are published (rescheduling aside).
fn changes_states(ts: &[Transition]) -> bool {
    ts.iter()
        .any(|t| !matches!(t, Transition::Reschedule { .. }))
}

fn started(p: &Policy) -> Sim {
    let mut sim = Sim::default();
    sim.settle(T0, p);
    sim
}

#[test]
fn first_keys_of_an_empty_store_are_active_at_once() {
    let sim = started(&policy());
    for alg in Alg::ALL {
        let k = sim.active(alg).expect("active key");
        assert_eq!(k.activated_at, Some(T0));
        assert_eq!(k.signable_at, Some(T0));
    }
    assert_eq!(sim.keys.len(), 2);
}

#[test]
fn nothing_is_due_between_events_and_next_due_names_the_successor_generation() {
    let p = policy();
    let sim = started(&p);
    let plan = plan(T0 + 10, &sim.keys, &p, true);
    assert!(plan.transitions.is_empty());
    assert_eq!(plan.next_due, Some(T0 + 30 * D - D));
}

#[test]
fn successor_is_generated_one_lead_before_the_period_ends_and_signs_only_after_the_lead() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;

    assert!(sim.settle(T0 + 29 * D - 1, &p).is_empty());
    let ts = sim.settle(T0 + 29 * D, &p);
    assert!(matches!(
        ts[..],
        [Transition::Generate {
            activate_now: false,
            ..
        }]
    ));
    let successor = sim.keys.last().unwrap().clone();
    assert_eq!(successor.state, KeyState::Pending);
    assert_eq!(successor.signable_at, Some(T0 + 30 * D));

    assert!(sim.settle(T0 + 30 * D - 1, &p).is_empty());
    assert_eq!(sim.active(Alg::ES256).unwrap().id, first);

    sim.settle(T0 + 30 * D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, successor.id);
    assert_eq!(sim.state_of(first), KeyState::Retired);
}

#[test]
fn retired_key_stays_published_until_grace_ends_then_expires() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    sim.settle(T0 + 29 * D, &p);
    sim.settle(T0 + 30 * D, &p);
    let retired = sim.keys.iter().find(|k| k.id == first).unwrap().clone();
    assert_eq!(retired.expires_at, Some(T0 + 30 * D + H));
    sim.settle(T0 + 30 * D + 10, &p);
    assert_eq!(
        plan(T0 + 30 * D + 10, &sim.keys, &p, true).next_due,
        Some(T0 + 30 * D + H)
    );

    sim.settle(T0 + 30 * D + H - 1, &p);
    assert_eq!(sim.state_of(first), KeyState::Retired);
    sim.settle(T0 + 30 * D + H, &p);
    assert_eq!(sim.state_of(first), KeyState::Expired);
}

#[test]
fn manual_pending_key_takes_over_as_soon_as_it_is_signable() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    // An operator rotation at T0 + 5d: a pending key published now.
    sim.settle(T0 + 5 * D, &p);
    sim.next_id += 1;
    let mut k = sim.keys[0].clone();
    k.id = sim.next_id;
    k.state = KeyState::Pending;
    k.activated_at = None;
    k.created_at = T0 + 5 * D;
    k.published_at = Some(T0 + 5 * D);
    k.signable_at = Some(T0 + 6 * D);
    k.lead_remaining = D;
    sim.keys.push(k);

    assert!(sim.settle(T0 + 6 * D - 1, &p).is_empty());
    assert_eq!(
        plan(T0 + 6 * D - 1, &sim.keys, &p, true).next_due,
        Some(T0 + 6 * D)
    );
    sim.settle(T0 + 6 * D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, sim.next_id);
    assert_eq!(sim.state_of(first), KeyState::Retired);
}

#[test]
fn key_added_while_no_server_ran_is_published_first_and_waits_a_full_lead() {
    let p = es256_only();
    let mut sim = started(&p);
    sim.next_id += 1;
    let mut k = sim.keys[0].clone();
    k.id = sim.next_id;
    k.state = KeyState::Pending;
    k.activated_at = None;
    k.published_at = None;
    k.signable_at = None;
    k.created_at = T0 + D;
    sim.keys.push(k);

    // The server comes back ten days later: the lead starts now, not at creation.
    let back = T0 + 10 * D;
    let ts = sim.restart(back, &p);
    assert_eq!(
        ts,
        vec![Transition::Publish {
            id: sim.next_id,
            signable_at: back + D
        }]
    );
    assert!(sim.settle(back + D - 1, &p).is_empty());
    sim.settle(back + D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, sim.next_id);
}

#[test]
fn server_down_longer_than_a_period_keeps_the_old_key_until_a_successor_had_its_lead() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    // Down from T0 + 1d to T0 + 75d: more than two whole periods.
    let back = T0 + 75 * D;
    let ts = sim.restart(back, &p);
    assert!(matches!(
        ts[..],
        [Transition::Generate {
            activate_now: false,
            ..
        }]
    ));
    assert_eq!(sim.active(Alg::ES256).unwrap().id, first, "no lead skipped");
    let successor = sim.keys.last().unwrap().id;

    assert!(sim.settle(back + D - 1, &p).is_empty());
    sim.settle(back + D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, successor);
    let old = sim.keys.iter().find(|k| k.id == first).unwrap();
    assert_eq!(
        old.retired_at,
        Some(back + D),
        "retired when it last signed"
    );
    assert_eq!(old.expires_at, Some(back + D + H));
}

#[test]
fn server_down_across_a_switch_retires_the_old_key_from_the_restart_not_the_due_time() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    sim.settle(T0 + 29 * D, &p);
    // Down from just after the successor was generated until long after it became signable:
    // the successor has its whole lead still to serve.
    let back = T0 + 40 * D;
    assert!(!changes_states(&sim.restart(back, &p)));
    assert_eq!(sim.active(Alg::ES256).unwrap().id, first);
    sim.settle(back + D, &p);
    let old = sim.keys.iter().find(|k| k.id == first).unwrap();
    assert_eq!(old.state, KeyState::Retired);
    assert_eq!(
        old.expires_at,
        Some(back + D + H),
        "it signed until its successor had been served for the lead"
    );
}

#[test]
fn clock_jumping_backwards_delays_and_never_undoes_transitions() {
    let p = es256_only();
    let mut sim = started(&p);
    sim.settle(T0 + 29 * D, &p);
    let before = sim.keys.clone();
    // The clock jumps back a week: nothing reversed, the successor's signing time follows
    // the lead it still has to serve.
    let ts = sim.settle(T0 + 22 * D, &p);
    assert!(!changes_states(&ts), "{ts:?}");
    let states = |keys: &[KeyRecord]| keys.iter().map(|k| k.state).collect::<Vec<_>>();
    assert_eq!(states(&sim.keys), states(&before));
    assert_eq!(sim.keys[1].signable_at, Some(T0 + 23 * D));
    // The successor still waits for its full lead, in served time.
    assert!(sim.settle(T0 + 23 * D - 1, &p).is_empty());
    sim.settle(T0 + 23 * D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, before[1].id);
}

#[test]
fn clock_jumping_forwards_never_activates_a_key_that_was_not_published_for_the_lead() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    // A jump of a year: the successor is generated now and waits its lead.
    sim.restart(T0 + 365 * D, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, first);
    assert_eq!(sim.keys.last().unwrap().signable_at, Some(T0 + 366 * D));
}

#[test]
fn a_restart_with_the_wall_clock_ahead_never_shortens_a_lead_or_a_grace() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    sim.settle(T0 + 29 * D, &p);
    let successor = sim.keys.last().unwrap().id;
    // Five seconds after the successor was published, the server restarts on a host whose
    // clock is a day ahead: by the wall clock its lead is over, but it was served 5 s.
    sim.settle(T0 + 29 * D + 5, &p);
    assert!(
        !changes_states(&sim.restart(T0 + 30 * D + 10, &p)),
        "not yet"
    );
    assert_eq!(sim.active(Alg::ES256).unwrap().id, first);
    assert_eq!(
        plan(T0 + 30 * D + 10, &sim.keys, &p, true).next_due,
        Some(T0 + 31 * D + 5),
        "the rest of the lead, in served time"
    );
    // The clock is corrected (back a day): still the same served time to go.
    assert!(!changes_states(&sim.restart(T0 + 29 * D + 10, &p)));
    assert!(!changes_states(&sim.settle(T0 + 30 * D + 4, &p)));
    sim.settle(T0 + 30 * D + 5, &p);
    assert_eq!(sim.active(Alg::ES256).unwrap().id, successor);
    // The same for the retired key's grace: a restart an hour ahead does not end it.
    sim.settle(T0 + 30 * D + 6, &p);
    assert!(!changes_states(&sim.restart(T0 + 30 * D + 6 + 2 * H, &p)));
    assert_eq!(sim.state_of(first), KeyState::Retired);
    sim.settle(T0 + 30 * D + 6 + 3 * H - 2, &p);
    assert_eq!(sim.state_of(first), KeyState::Retired);
    sim.settle(T0 + 30 * D + 6 + 3 * H - 1, &p);
    assert_eq!(sim.state_of(first), KeyState::Expired);
}

#[test]
fn a_retired_key_stays_published_until_the_last_token_it_signed_has_expired() {
    let p = es256_only();
    let mut sim = started(&p);
    let first = sim.active(Alg::ES256).unwrap().id;
    // It signed a token under a clock ten days ahead.
    sim.get(first).last_exp = Some(T0 + 40 * D);
    sim.settle(T0 + 29 * D, &p);
    sim.settle(T0 + 30 * D, &p);
    assert_eq!(sim.state_of(first), KeyState::Retired);
    // Its grace is over, on the wall clock and served; that token is not.
    sim.settle(T0 + 30 * D + 2 * H, &p);
    assert_eq!(sim.state_of(first), KeyState::Retired);
    assert_eq!(
        plan(T0 + 30 * D + 2 * H, &sim.keys, &p, true).next_due,
        Some(T0 + 40 * D)
    );
    sim.settle(T0 + 40 * D, &p);
    assert_eq!(sim.state_of(first), KeyState::Expired);
}

#[test]
fn automatic_rotation_can_be_switched_off() {
    let p = Policy {
        auto_rotate: false,
        ..es256_only()
    };
    let mut sim = started(&p);
    assert!(sim.settle(T0 + 400 * D, &p).is_empty());
    assert_eq!(plan(T0 + 400 * D, &sim.keys, &p, true).next_due, None);
}

#[test]
fn a_store_never_served_gets_its_missing_keys_active_at_once_even_beside_an_imported_key() {
    // An operator imported the partner's ES256 key before the first start.
    let mut sim = started(&es256_only());
    sim.served = false;
    let ts = sim.settle(T0 + H, &policy());
    assert!(matches!(
        ts[..],
        [Transition::Generate {
            alg: Alg::RS256,
            activate_now: true,
            signable_at,
            ..
        }] if signable_at == T0 + H
    ));
}

#[test]
fn an_algorithm_enabled_later_gets_a_pending_key_not_an_active_one() {
    let mut sim = started(&es256_only());
    let ts = sim.settle(T0 + D, &policy());
    assert_eq!(
        ts,
        vec![Transition::Generate {
            alg: Alg::RS256,
            activate_now: false,
            signable_at: T0 + D + policy().publish_lead,
            reason: "no active or pending key"
        }]
    );
    assert!(sim.active(Alg::RS256).is_none());
    sim.settle(T0 + 2 * D, &policy());
    assert!(sim.active(Alg::RS256).is_some());
}

#[test]
fn keys_of_a_disabled_algorithm_retire_and_later_expire() {
    let mut sim = started(&policy());
    let rs = sim.active(Alg::RS256).unwrap().id;
    let p = es256_only();
    sim.settle(T0 + D, &p);
    assert_eq!(sim.state_of(rs), KeyState::Retired);
    sim.settle(T0 + D + H, &p);
    assert_eq!(sim.state_of(rs), KeyState::Expired);
}

#[test]
fn revoked_active_key_is_replaced_by_a_pending_key_with_a_full_lead() {
    let p = es256_only();
    let mut sim = started(&p);
    sim.keys[0].state = KeyState::Revoked;
    let ts = sim.settle(T0 + H, &p);
    assert!(matches!(
        ts[..],
        [Transition::Generate {
            activate_now: false,
            ..
        }]
    ));
    assert_eq!(sim.keys.last().unwrap().signable_at, Some(T0 + H + D));
}

/// Runs a year of operation with an irregular planner (late, early, clock jumps) and checks the
/// invariants a verifier depends on after every step.
#[test]
fn a_year_of_irregular_ticks_keeps_every_invariant() {
    let p = Policy {
        publish_lead: 6 * H,
        rotation_period: 3 * D,
        retire_grace: 2 * H,
        ..policy()
    };
    const BACK: i64 = 600;
    let mut sim = started(&p);
    let mut now = T0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rotations = 0;
    let mut first_published: std::collections::HashMap<i64, UnixTime> = Default::default();
    let mut last_signed: std::collections::HashMap<i64, UnixTime> = Default::default();
    let mut served_pending: std::collections::HashMap<i64, i64> = Default::default();
    let mut served_retired: std::collections::HashMap<i64, i64> = Default::default();
    while now < T0 + 365 * D {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Mostly small steps, sometimes an outage of up to five days, sometimes a step back
        // of up to ten minutes (an NTP correction).
        let (step, running) = match seed % 100 {
            0..=79 => ((seed >> 8) as i64 % (2 * H), true),
            80..=94 => ((seed >> 8) as i64 % (5 * D), false),
            _ => (-((seed >> 8) as i64 % BACK), false),
        };
        now += step;
        let before: Vec<i64> = Alg::ALL
            .iter()
            .filter_map(|a| sim.active(*a).map(|k| k.id))
            .collect();
        // Real served time, counted independently of the sim's own bookkeeping.
        if running {
            for k in &sim.keys {
                match k.state {
                    KeyState::Pending if k.published_at.is_some() => {
                        *served_pending.entry(k.id).or_default() += step
                    }
                    KeyState::Retired => *served_retired.entry(k.id).or_default() += step,
                    _ => {}
                }
            }
            sim.settle(now, &p);
        } else {
            sim.restart(now, &p);
        }
        for k in &sim.keys {
            if k.state == KeyState::Expired {
                assert!(
                    served_retired.get(&k.id).copied().unwrap_or(0) >= p.retire_grace,
                    "key {} expired before its grace was served",
                    k.kid
                );
            }
        }
        for k in &sim.keys {
            if k.is_published() {
                first_published.entry(k.id).or_insert(now);
            }
        }
        for alg in Alg::ALL {
            let active: Vec<_> = sim
                .keys
                .iter()
                .filter(|k| k.alg == alg && k.state == KeyState::Active)
                .collect();
            assert_eq!(active.len(), 1, "exactly one active {alg} key at {now}");
            let k = active[0];
            assert!(k.signable_at.unwrap() <= now.max(k.activated_at.unwrap()));
            if k.created_at != T0 {
                // (On the wall clock the lead may look shorter: it went back meanwhile.)
                assert!(
                    served_pending.get(&k.id).copied().unwrap_or(0) >= p.publish_lead,
                    "key {} signed before a server had served it for its lead",
                    k.kid
                );
            }
            let last = last_signed.entry(k.id).or_insert(now);
            *last = (*last).max(now);
            if !before.contains(&k.id) {
                rotations += 1;
            }
        }
        // A step back can shorten publication by at most its own length.
        for k in &sim.keys {
            if let Some(&t) = last_signed.get(&k.id)
                && now < t + p.retire_grace - BACK
            {
                assert!(k.is_published(), "key {} left the JWKS too early", k.kid);
            }
        }
    }
    assert!(rotations > 50, "only {rotations} rotations in a year");
}

fn listed(kids: &[&str]) -> Evidence {
    Evidence::Listed {
        url: "https://partner.example/.well-known/jwks.json".into(),
        kids: kids.iter().map(|k| (*k).to_owned()).collect(),
    }
}

#[test]
fn a_signable_successor_the_public_url_does_not_list_waits_and_the_current_key_keeps_signing() {
    let p = es256_only();
    let mut sim = started(&p);
    let old = sim.active(Alg::ES256).unwrap().kid.clone();
    sim.settle(T0 + 29 * D, &p);
    let successor = sim
        .keys
        .iter()
        .find(|k| k.state == KeyState::Pending)
        .unwrap()
        .kid
        .clone();
    sim.accrue(T0 + 30 * D);
    let now = T0 + 30 * D;
    let plan = plan_with(now, &sim.keys, &p, true, &listed(&[&old]));
    assert!(plan.transitions.is_empty(), "{:?}", plan.transitions);
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(plan.blocked[0].kid, successor);
    assert!(plan.blocked[0].reason.contains("does not list it"));
    assert_eq!(plan.next_due, Some(now + EVIDENCE_RETRY));
    // Unreadable is no evidence either.
    let unreadable = Evidence::Unavailable {
        url: "u".into(),
        why: "timed out".into(),
    };
    assert_eq!(
        plan_with(now, &sim.keys, &p, true, &unreadable)
            .blocked
            .len(),
        1
    );
    // Listed: it activates at once.
    let plan = plan_with(now, &sim.keys, &p, true, &listed(&[&old, &successor]));
    assert!(plan.blocked.is_empty());
    assert!(
        plan.transitions
            .iter()
            .any(|t| matches!(t, Transition::Activate { .. }))
    );
}

#[test]
fn evidence_never_shortens_the_lead_and_never_holds_back_an_algorithm_without_a_signing_key() {
    let p = es256_only();
    let mut sim = started(&p);
    sim.settle(T0 + 29 * D, &p);
    let successor = sim
        .keys
        .iter()
        .find(|k| k.state == KeyState::Pending)
        .unwrap()
        .clone();
    // Listed a minute before its lead is served: nothing happens.
    sim.accrue(T0 + 30 * D - 60);
    let plan = plan_with(
        T0 + 30 * D - 60,
        &sim.keys,
        &p,
        true,
        &listed(&[&successor.kid]),
    );
    assert!(
        plan.transitions.is_empty() && plan.blocked.is_empty(),
        "{plan:?}"
    );
    // No current key (revoked meanwhile): waiting would leave the algorithm without a signer.
    sim.accrue(T0 + 30 * D);
    for k in &mut sim.keys {
        if k.state == KeyState::Active {
            k.state = KeyState::Revoked;
        }
    }
    let plan = plan_with(T0 + 30 * D, &sim.keys, &p, true, &listed(&[]));
    assert!(plan.blocked.is_empty());
    assert!(
        plan.transitions
            .iter()
            .any(|t| matches!(t, Transition::Activate { id } if *id == successor.id))
    );
}
