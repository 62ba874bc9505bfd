//! Robustness and configuration: malformed requests get AIR Kit's error body and never crash the
//! server; invalid arguments are refused at bind.

use keyhost::emulator::{Emulator, EmulatorArgs};
use serde_json::{Value, json};

use super::harness::{env, issue_body, unsigned};
use crate::helpers::PARTNER_ID;

#[tokio::test]
async fn malformed_requests_never_crash_the_server_and_always_get_airs_error_body() {
    let env = env().await;
    let token = env.token("u@example.com", "ES256").await;
    let base = env.emu.base.clone();
    let root = base.trim_end_matches("/v1").to_owned();
    let http = &env.emu.http;
    let issue = format!("{base}/credentials/issue-on-behalf");
    let long = "a".repeat(20_000);
    let requests = vec![
        http.get(format!("{root}/")),
        http.get(format!("{base}/credentials/unknown")),
        http.delete(&issue),
        http.get(&issue),
        http.post(format!("{base}/credentials/status")),
        http.get(format!("{base}/credentials/status?coreClaimHash=%ff%fe"))
            .header("x-partner-auth", &token),
        http.get(format!(
            "{base}/credentials/status?coreClaimHash=a&coreClaimHash=b"
        ))
        .header("x-partner-auth", &token),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", "application/json")
            .body(vec![0xff, 0xfe, 0x00, 0x7b]),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", "application/json")
            .body("[".repeat(10_000)),
        http.post(&issue)
            .header("x-partner-auth", &token)
            .header("content-type", ";;;")
            .body("{}"),
        http.post(&issue).header("x-partner-auth", long.as_str()),
        http.post(&issue)
            .header("x-partner-auth", format!("{long}.{long}.{long}")),
        http.post(&issue).header("x-partner-auth", "..."),
        http.post(&issue).header("x-partner-auth", "e30.e30.e30"),
        http.post(&issue)
            .header("x-partner-auth", "eyJ0eXAiOiJKV1QifQ.e30.AA"),
        http.post(&issue).header(
            "x-partner-auth",
            unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": 5}),
                json!({}),
                b"x",
            ),
        ),
        http.post(&issue).header(
            "x-partner-auth",
            unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": "\u{0}\"'<>"}),
                json!([]),
                b"",
            ),
        ),
    ];
    for request in requests {
        let res = request.send().await.expect("answered");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status} with a non-JSON body ({e}): {text}"));
        assert_eq!(body["error"], status, "{body}");
        assert!(body["message"].is_string(), "{body}");
        assert!((400..500).contains(&status), "{status}: {body}");
    }
    assert_eq!(env.emu.issue(&token, issue_body()).await.status, 200);
}

#[tokio::test]
async fn bind_refuses_invalid_arguments() {
    let base = || EmulatorArgs::new("http://127.0.0.1:1/jwks.json", PARTNER_ID);
    let cases: Vec<(EmulatorArgs, &str)> = vec![
        (
            EmulatorArgs {
                fail_rate_429: 1.5,
                ..base()
            },
            "--fail-rate-429",
        ),
        (
            EmulatorArgs {
                fail_rate_500: f64::NAN,
                ..base()
            },
            "--fail-rate-500",
        ),
        (
            EmulatorArgs {
                rate_limit: Some(0),
                ..base()
            },
            "--rate-limit",
        ),
        (
            EmulatorArgs {
                jwks_url: "ftp://example.com/jwks".into(),
                ..base()
            },
            "--jwks-url",
        ),
        (
            EmulatorArgs {
                jwks_url: "not a url".into(),
                ..base()
            },
            "--jwks-url",
        ),
        (
            EmulatorArgs {
                partner_id: " ".into(),
                ..base()
            },
            "--partner-id",
        ),
        (
            EmulatorArgs {
                accept_scopes: vec![],
                ..base()
            },
            "--accept-scope",
        ),
        (
            EmulatorArgs {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..base()
            },
            "--ca-file",
        ),
        (
            EmulatorArgs {
                ca_file: Some(
                    format!("{}/tests/fixtures/README.md", env!("CARGO_MANIFEST_DIR")).into(),
                ),
                ..base()
            },
            "--ca-file",
        ),
    ];
    for (args, flag) in cases {
        let err = Emulator::bind(args).await.err().expect("refused");
        assert!(err.to_string().contains(flag), "{flag}: {err:#}");
    }
}
