//! The walk: its order, which failures end it, and its arithmetic on times the token chooses.

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::keys::Alg;
use crate::keys::material;

const NOW: UnixTime = 1_750_000_000;

/// A P-256 key generated for the test (it must not be used in production), published as `k1`.
struct Signer {
    key: EncodingKey,
    keys: KeySet,
}

fn signer(published_alg: &str) -> Signer {
    let m = material::generate(Alg::ES256, 2048).unwrap();
    let mut jwk = serde_json::to_value(m.pair.public_jwk()).unwrap();
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!(published_alg);
    Signer {
        key: EncodingKey::from_ec_der(&m.pkcs8),
        keys: KeySet::from_entries([jwk]),
    }
}

fn header() -> Header {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header
}

fn claims() -> Value {
    json!({
        "partnerId": "p1",
        "email": "u@example.com",
        "scope": "issue",
        "iat": NOW,
        "exp": NOW + 300,
    })
}

impl Signer {
    fn token(&self, header: &Header, claims: &Value) -> UnverifiedToken {
        UnverifiedToken::parse(&jsonwebtoken::encode(header, claims, &self.key).unwrap()).unwrap()
    }
}

fn scopes() -> Vec<String> {
    vec!["issue".to_owned()]
}

/// The emulator's rules: no lifetime or `iat` limit.
fn air(scopes: &[String]) -> Rules<'_> {
    Rules {
        partner_id: Some("p1"),
        scopes,
        max_lifetime: None,
        max_iat_ahead: None,
    }
}

/// The doctor's rules.
fn doctor(scopes: &[String]) -> Rules<'_> {
    Rules {
        partner_id: None,
        scopes,
        max_lifetime: Some(900),
        max_iat_ahead: Some(60),
    }
}

fn steps(checks: &[Check]) -> Vec<(Step, bool)> {
    checks.iter().map(|c| (c.step, c.result.is_ok())).collect()
}

#[test]
fn a_valid_token_passes_every_step_in_order_and_yields_its_claims() {
    let s = signer("ES256");
    let token = s.token(&header(), &claims());
    let scopes = scopes();
    let all = [
        Step::Typ,
        Step::Kid,
        Step::Algorithm,
        Step::Signature,
        Step::Expiry,
    ];
    let claim_steps = [Step::PartnerId, Step::Email, Step::Scope];
    let expected: Vec<_> = all.iter().chain(&claim_steps).map(|s| (*s, true)).collect();
    assert_eq!(
        steps(&inspect(&token, &s.keys, &air(&scopes), NOW)),
        expected
    );
    let expected: Vec<_> = all
        .iter()
        .chain(&[Step::Lifetime, Step::IssuedAt])
        .chain(&claim_steps)
        .map(|s| (*s, true))
        .collect();
    assert_eq!(
        steps(&inspect(&token, &s.keys, &doctor(&scopes), NOW)),
        expected
    );
    assert_eq!(
        verify(&token, &s.keys, &air(&scopes), NOW).unwrap(),
        Claims {
            partner_id: "p1".into(),
            email: "u@example.com".into(),
            scope: "issue".into(),
        }
    );
    assert!(check_header(&token).is_ok());
}

#[test]
fn failures_that_leave_nothing_to_read_end_the_walk_and_the_others_are_all_reported() {
    let s = signer("ES256");
    let scopes = scopes();
    // No typ, expired, another scope: each reported; the first is the one refused.
    let mut no_typ = header();
    no_typ.typ = None;
    let mut late = claims();
    late["exp"] = json!(NOW - 5);
    late["scope"] = json!("issue on-behalf");
    let token = s.token(&no_typ, &late);
    let checks = inspect(&token, &s.keys, &air(&scopes), NOW);
    let failed: Vec<_> = checks
        .iter()
        .filter(|c| c.result.is_err())
        .map(|c| c.step)
        .collect();
    assert_eq!(failed, [Step::Typ, Step::Expiry, Step::Scope]);
    assert!(matches!(
        verify(&token, &s.keys, &air(&scopes), NOW),
        Err(TokenError::MissingTyp { found: None })
    ));
    assert!(matches!(
        check_header(&token),
        Err(TokenError::MissingTyp { found: None })
    ));

    // An unknown kid, then a key published for another algorithm: nothing after them runs.
    let mut other_kid = header();
    other_kid.kid = Some("k2".into());
    let token = s.token(&other_kid, &claims());
    let checks = inspect(&token, &s.keys, &air(&scopes), NOW);
    assert_eq!(steps(&checks), [(Step::Typ, true), (Step::Kid, false)]);
    let es384 = signer("ES384");
    let token = es384.token(&header(), &claims());
    let checks = inspect(&token, &es384.keys, &air(&scopes), NOW);
    assert_eq!(
        steps(&checks),
        [
            (Step::Typ, true),
            (Step::Kid, true),
            (Step::Algorithm, false)
        ]
    );

    // Signed by another key under the published kid.
    let token = signer("ES256").token(&header(), &claims());
    let checks = inspect(&token, &s.keys, &air(&scopes), NOW);
    assert!(matches!(
        checks.last().map(|c| (c.step, &c.result)),
        Some((Step::Signature, Err(TokenError::BadSignature { .. })))
    ));
}

#[test]
fn expiry_is_exact_to_the_second_and_times_the_token_chooses_never_overflow() {
    let s = signer("ES256");
    let scopes = scopes();
    let at = |exp: Value, iat: Value| {
        let mut c = claims();
        c["exp"] = exp;
        c["iat"] = iat;
        let token = s.token(&header(), &c);
        inspect(&token, &s.keys, &doctor(&scopes), NOW)
    };
    let find = |checks: &[Check], step| {
        checks
            .iter()
            .find(|c| c.step == step)
            .map(|c| c.result.clone())
    };
    let checks = at(json!(NOW), json!(NOW - 10));
    assert!(matches!(
        find(&checks, Step::Expiry),
        Some(Err(TokenError::Expired { seconds_ago: 0 }))
    ));
    assert!(matches!(
        find(&at(json!(NOW + 1), json!(NOW)), Step::Expiry),
        Some(Ok(()))
    ));

    let checks = at(json!(i64::MAX), json!(i64::MIN));
    assert!(matches!(
        find(&checks, Step::Lifetime),
        Some(Err(TokenError::LifetimeTooLong { seconds, limit: 900 })) if seconds == u64::MAX.into()
    ));
    let checks = at(json!(i64::MIN), json!(i64::MAX));
    assert!(matches!(
        find(&checks, Step::Expiry),
        Some(Err(TokenError::Expired { .. }))
    ));
    assert!(matches!(
        find(&checks, Step::IssuedAt),
        Some(Err(TokenError::IssuedInFuture { .. }))
    ));

    for bad in [json!(1.5), json!("soon"), json!(u64::MAX)] {
        let checks = at(bad.clone(), json!(NOW));
        assert!(
            matches!(find(&checks, Step::Expiry), Some(Err(TokenError::BadExp))),
            "{bad}"
        );
        assert_eq!(
            find(&checks, Step::Lifetime).map(|r| r.is_ok()),
            None,
            "{bad}"
        );
    }
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let token = s.token(&header(), &no_exp);
    assert!(matches!(
        verify(&token, &s.keys, &air(&scopes), NOW),
        Err(TokenError::MissingClaim("exp"))
    ));
}
