//! Faults injected from the command line or at run time: 429 with `Retry-After`, 500, the
//! per-partner rate limit and added latency on the emulator's clock.

use std::sync::Arc;
use std::time::Duration;

use keyhost::clock::ManualClock;
use serde_json::json;

use super::harness::{Emu, args_for, env_with, issue_body};
use crate::helpers::spawn_app_at_wall_clock;

#[tokio::test]
async fn injected_429s_carry_retry_after_and_injected_500s_follow_their_rate() {
    let env = env_with(|args| args.fail_rate_429 = 1.0).await;
    let token = env.token("u@example.com", "ES256").await;
    let a = env.emu.issue(&token, issue_body()).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body["error"], 429);
    assert_eq!(a.headers["retry-after"], "1");
    // Faults come before authentication.
    let a = env.emu.issue("garbage", issue_body()).await;
    assert_eq!(a.status, 429);
    let a = env.emu.status("garbage", "abc").await;
    assert_eq!(a.status, 429);

    env.emu.control.set_fail_rate_429(0.0);
    env.emu.control.set_fail_rate_500(1.0);
    let a = env.emu.issue(&token, issue_body()).await;
    a.assert_error(500, "Internal server error");
    assert!(env.emu.control.issue_calls().is_empty());

    env.emu.control.set_fail_rate_500(0.0);
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
    let counts = env.emu.control.status_counts();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(200, 1), (429, 3), (500, 1)]
    );

    // A rate in between fails some and not others (each of 40 draws).
    env.emu.control.set_fail_rate_500(0.5);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(env.emu.status(&token, "abc").await.status.as_u16());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [404, 500]);
}

#[tokio::test]
async fn the_rate_limit_is_per_partner_and_answers_429_with_retry_after() {
    let env = env_with(|args| args.rate_limit = Some(2)).await;
    let token = env.token("u@example.com", "ES256").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let a = env.emu.issue(&token, issue_body()).await;
        statuses.push(a.status.as_u16());
        if a.status == 429 {
            assert_eq!(a.body["error"], 429);
            assert!(a.message().contains("2 requests per second"));
            retry_after = Some(a.headers["retry-after"].to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds));
    // Requests that claim no partner are limited per address, apart from the partner's.
    let a = env.emu.issue("garbage", issue_body()).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn added_latency_delays_every_api_answer_on_the_emulators_clock() {
    let app = spawn_app_at_wall_clock().await;
    let clock = ManualClock::starting_now();
    let emu = Arc::new(Emu::start_with_clock(args_for(&app), clock.clone()).await);
    let (_, key) = app.create_client(&["issue"]).await;
    let token = app.mint_ok(&key, json!({"email": "u@example.com"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.control.set_latency(Duration::from_secs(3600));
    let issuing = {
        let (emu, token) = (emu.clone(), token.clone());
        tokio::spawn(async move { emu.issue(&token, issue_body()).await.status })
    };
    crate::helpers::eventually(Duration::from_secs(10), "the request waits", || async {
        clock.sleepers() == 1
    })
    .await;
    assert!(!issuing.is_finished());
    clock.advance(3599);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(clock.sleepers(), 1, "an hour has not passed");
    clock.advance(1);
    assert_eq!(issuing.await.unwrap(), 200);
    // Without latency nothing waits: the answer comes with the clock standing still.
    emu.control.set_latency(Duration::ZERO);
    assert_eq!(emu.status(&token, "abc").await.status, 404);
    assert_eq!(clock.sleepers(), 0);
}
