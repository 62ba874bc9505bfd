//! Request extractors that fail with the API's error shape.
//!
//! [`JsonBody`] checks, in order: content type (415), size (413), UTF-8 (`ENCODING_ERROR`),
//! JSON syntax (`JSON_ERROR`), that no object repeats a member (`JSON_ERROR`: RFC 8259 leaves
//! duplicates to the parser, so two parsers may read two different requests; I-JSON, RFC 7493,
//! forbids them), that no integer needs more than 64 bits (`BAD_VALUE`: it would silently become
//! a float before being forwarded), that the body is an object (`BAD_VALUE`; `null` is
//! `MISSING_VALUE`, as in iDenfy's reference), then field types with the field's path in the
//! message. Credentials are checked by [`AdminAuth`] and [`ClientAuth`], which handlers list
//! first so that unauthenticated requests learn nothing about body validation.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

use super::error::ApiError;
use super::{AppState, throttle};
use crate::admins::{AdminIdentity, Role};
use crate::auth::{AuthError, Client};
use crate::log_limit::LogLimiter;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON object body deserialised into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Walks a JSON document and fails on the first object that names a member twice (names are
/// compared after unescaping, so `"\u0065mail"` repeats `"email"`).
struct UniqueMembers;

/// Members compared pairwise below this count; a set beyond it, so that a 64 KiB object of
/// distinct names costs linear time.
const SMALL_OBJECT: usize = 16;

impl<'de> DeserializeSeed<'de> for UniqueMembers {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueMembers {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueMembers)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<std::borrow::Cow<'de, str>>> = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let repeated = match &mut many {
                Some(set) => !set.insert(name.clone()),
                None if names.len() < SMALL_OBJECT => names.contains(&name),
                None => {
                    let mut set: std::collections::HashSet<_> = names.drain(..).collect();
                    let repeated = !set.insert(name.clone());
                    many = Some(set);
                    repeated
                }
            };
            if repeated {
                return Err(de::Error::custom(format_args!(
                    "the member {name:?} appears twice in one object"
                )));
            }
            if many.is_none() {
                names.push(name);
            }
            map.next_value_seed(UniqueMembers)?;
        }
        Ok(())
    }
}

/// A decimal number as sign, significant digits (no leading or trailing zeros) and the power
/// of ten of the last one: `-12.30e2` (-1230) is `(true, "123", 1)`; zero is `(false, "", 0)`.
fn canonical_decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    let digits = all.trim_start_matches('0');
    if digits.is_empty() {
        // Zero, whatever its exponent (`0e9223372036854775807` included).
        return Some((false, String::new(), 0));
    }
    let significant = digits.trim_end_matches('0');
    let trailing = (digits.len() - significant.len()) as i64;
    let exp = exp.checked_sub(frac.len() as i64)?.checked_add(trailing)?;
    Some((negative, significant.to_owned(), exp))
}

/// The first number literal (outside strings) that would not reach its destination as written:
/// an integer that fits neither `i64` nor `u64`, or a number with a fraction or an exponent
/// whose value a 64-bit float does not hold exactly (`9007199254740993.0` would arrive as
/// `9007199254740992.0`). Run on syntactically valid JSON only.
fn inexact_number(bytes: &[u8]) -> Option<&str> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                let exact = if token.contains(['.', 'e', 'E']) {
                    token.parse::<f64>().ok().is_some_and(|v| {
                        v.is_finite()
                            && canonical_decimal(&format!("{v:e}")) == canonical_decimal(token)
                    })
                } else {
                    token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()
                };
                if !exact {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The checks every JSON body passes before it is read as a request, whatever the route and
/// whatever part of the body the route reads: UTF-8, JSON that a full walk can read (so a member
/// the route ignores cannot hide anything, nor switch these checks off), no repeated member, no
/// number that would change on its way.
fn strict_checks(bytes: &[u8]) -> Result<(), ApiError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::encoding_error(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match UniqueMembers.deserialize(&mut de).and_then(|()| de.end()) {
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(ApiError::json_error(format!(
                "the request body is not valid JSON here: {e}; each member may appear once"
            )));
        }
        Err(e) => {
            return Err(ApiError::json_error(format!(
                "the request body is not valid JSON: {e}"
            )));
        }
        Ok(()) => {}
    }
    if let Some(token) = inexact_number(bytes) {
        let shown: String = token.chars().take(40).collect();
        return Err(ApiError::bad_value(format!(
            "the number {shown}{} cannot be carried exactly (beyond 64-bit integers and floats) \
             and would change on its way; send it as a string",
            if shown.len() < token.len() { "…" } else { "" }
        )));
    }
    Ok(())
}

/// Deserialises a JSON object from raw bytes with the API's error mapping.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::json_error(
            "An error occurred while parsing/constructing JSON: the body is empty",
        ));
    }
    strict_checks(bytes)?;
    // Fast path: a well-formed object parses straight into `T`; only a failure pays for the
    // slower walk below, which names exactly what is wrong. (A leading `{` is required because
    // serde would also accept an array for a struct.)
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && let Ok(value) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(value);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::encoding_error(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::json_error(format!("the request body is not valid JSON: {e}")))?;
    match &value {
        serde_json::Value::Object(_) => {}
        serde_json::Value::Null => {
            return Err(ApiError::missing_value(
                "Some of required values are missing",
            ));
        }
        other => {
            let kind = match other {
                serde_json::Value::Array(_) => "list",
                serde_json::Value::String(_) => "str",
                serde_json::Value::Bool(_) => "bool",
                _ => "number",
            };
            return Err(ApiError::bad_value(format!(
                "Invalid data. Expected a dictionary, but got {kind}."
            )));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(field) = inner.strip_prefix("missing field ") {
            ApiError::missing_value(format!("{} is required", field.trim_matches('`')))
        } else if path == "." {
            ApiError::bad_value(inner)
        } else {
            ApiError::bad_value(format!("{path}: {inner}"))
        }
    })
}

/// Reads an optional integer member by its value, as JSON means numbers: `188.0` is 188 (a
/// client that holds the number as a float writes it so), a fraction or a value beyond `i64` is
/// refused. For `#[serde(default, deserialize_with = "...")]` on an `Option<i64>`.
pub fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Beyond ±2^53 every float is whole, and `as` would saturate: the bounds are exact
        // powers of two, so the comparison is too.
        Some(f)
            if f.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
        {
            Ok(Some(f as i64))
        }
        _ => Err(de::Error::custom(format!(
            "invalid value: {n}, expected a whole number of at most 64 bits"
        ))),
    }
}

/// Reads a request body within [`BODY_LIMIT`] and the configured body deadline
/// (`KEYHOST_HTTP_BODY_TIMEOUT`, counted from the end of the headers), so that a client that
/// stops sending holds its connection for a bounded time only.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let deadline = state.config.http.body_timeout;
    // Until the body has arrived, the connection counts as uploading, not busy: a full
    // listener may shed it (see `serve`).
    let watch = req
        .extensions()
        .get::<std::sync::Arc<super::serve::RequestWatch>>()
        .cloned();
    let read = tokio::time::timeout(deadline, Bytes::from_request(req, state)).await;
    if let Some(watch) = watch {
        watch.body_done();
    }
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::payload_too_large(BODY_LIMIT))
        }
        Ok(Err(e)) => Err(ApiError::bad_value(format!(
            "the request body could not be read: {e}"
        ))),
        Err(_) => Err(ApiError::body_timeout(deadline)),
    }
}

/// The raw bytes of a request body (for webhooks, whose signature covers those bytes).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_body(req, state).await.map(RawBody)
    }
}

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = read_body(req, state).await?;
        parse_json_object(&bytes).map(JsonBody)
    }
}

/// Query parameters deserialised into `T`; errors are `BAD_VALUE`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::bad_value(format!("query: {}", e.body_text())))
    }
}

fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

/// Which credential a request presents, for the failed-authentication throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// The admin token, which an operator may have chosen (at least 16 characters): a throttled
    /// address is refused before it is looked at, so that a guesser learns nothing.
    Admin,
    /// An API key, always 256 random bits: a valid one passes even from a throttled address (the
    /// difference teaches a guesser nothing it could use, and one misconfigured app must not
    /// lock out the apps that share its address); a wrong one is refused 429 there.
    Client,
}

impl Credential {
    fn name(self) -> &'static str {
        match self {
            Credential::Admin => "admin",
            Credential::Client => "client",
        }
    }
}

fn throttled(ip: std::net::IpAddr, wait: std::time::Duration, state: &AppState) -> ApiError {
    state.metrics.auth_throttled.inc();
    ApiError::too_many_requests(
        format!(
            "too many failed authentications from {ip}; try again in {} s \
             (KEYHOST_AUTH_FAILURE_LIMIT per minute)",
            wait.as_secs() + 1
        ),
        wait.as_secs() + 1,
    )
}

/// Runs `verify` on the request's bearer credential within the client address's budget of
/// failed authentications (see [`super::throttle`] and [`Credential`]): a failure is counted,
/// and logged at most once every 10 s (with how many were held back).
fn authenticate<T>(
    parts: &Parts,
    state: &AppState,
    kind: Credential,
    verify: impl FnOnce(&str) -> Result<T, AuthError>,
) -> Result<T, ApiError> {
    static FAILURES: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(10));
    let source = throttle::client_addr(parts, &state.config.http.trusted_proxies);
    let spent = source.and_then(|ip| state.auth_throttle.check(ip).err().map(|w| (ip, w)));
    if kind == Credential::Admin
        && let Some((ip, wait)) = spent
    {
        return Err(throttled(ip, wait, state));
    }
    let token = bearer(parts).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    verify(token).map_err(|e| {
        if let Some((ip, wait)) = spent {
            return throttled(ip, wait, state);
        }
        state.metrics.auth_failed(kind.name());
        if let Some(ip) = source {
            state.auth_throttle.failed(ip);
        }
        if let Some(suppressed) = FAILURES.allow() {
            tracing::warn!(
                kind = kind.name(),
                source = %source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
                suppressed,
                "request with invalid credentials"
            );
        }
        ApiError::unauthorized(e.to_string())
    })
}

/// Proof that the request carries an admin credential, and whose. A `reader` credential passes
/// only on `GET` (and `HEAD`) requests: any change answers 403 `PERMISSIONS_ERROR`. For a change,
/// the credential is confirmed against the store itself (see [`crate::admins::AdminService::confirm`]).
#[derive(Debug, Clone)]
pub struct AdminAuth(pub AdminIdentity);

impl AdminAuth {
    /// The audit trail's actor for what this request changes: `admin:<name>`.
    pub fn actor(&self) -> String {
        self.0.actor()
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let who = authenticate(parts, state, Credential::Admin, |token| {
            state.admin.authenticate(token)
        })?;
        let reads = parts.method == Method::GET || parts.method == Method::HEAD;
        if who.role == Role::Reader && !reads {
            return Err(ApiError::forbidden(format!(
                "admin {:?} has the role reader: it may only read (GET); ask an operator",
                who.name
            )));
        }
        // A change goes by the store, not by this server's view of it: a credential disabled
        // through another replica a moment ago changes nothing here.
        if !reads && !state.admin_service.confirm(&who).await? {
            state.metrics.auth_failed(Credential::Admin.name());
            return Err(ApiError::unauthorized(AuthError::Disabled.to_string()));
        }
        Ok(AdminAuth(who))
    }
}

/// The API client that sent the request.
#[derive(Debug, Clone)]
pub struct ClientAuth(pub Arc<Client>);

impl FromRequestParts<AppState> for ClientAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state, Credential::Client, |token| {
            state.clients.authenticate(token).map(ClientAuth)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        email: String,
        ttl: Option<u32>,
    }

    #[test]
    fn each_kind_of_bad_body_gets_its_identifier() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "JSON_ERROR"),
            (b"   ", "JSON_ERROR"),
            (b"\xff\xfe", "ENCODING_ERROR"),
            (b"{\"email\":", "JSON_ERROR"),
            (b"null", "MISSING_VALUE"),
            (b"[1]", "BAD_VALUE"),
            (b"\"x\"", "BAD_VALUE"),
            (b"{}", "MISSING_VALUE"),
            (b"{\"email\": 5}", "BAD_VALUE"),
            (b"{\"email\": \"a@b.c\", \"ttl\": -1}", "BAD_VALUE"),
            (b"{\"email\": \"a@b.c\", \"nope\": 1}", "BAD_VALUE"),
        ];
        for (body, want) in cases {
            let err = parse_json_object::<T>(body).unwrap_err();
            assert_eq!(
                err.identifier(),
                *want,
                "{:?}: {}",
                String::from_utf8_lossy(body),
                err.message()
            );
        }
        let err = parse_json_object::<T>(b"{\"email\": 5}").unwrap_err();
        assert!(err.message().starts_with("email:"), "{}", err.message());
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth_and_however_it_is_escaped() {
        let cases: &[&[u8]] = &[
            br#"{"email": "a@b.c", "email": "x@y.z"}"#,
            br#"{"email": "a@b.c", "\u0065mail": "x@y.z"}"#,
            br#"{"email": "a@b.c", "ttl": 1, "sub": {"x": 1, "x": 2}}"#,
            br#"{"email": "a@b.c", "ttl": 1, "sub": [{"y": 1}, {"x": 1, "x": 2}]}"#,
        ];
        for body in cases {
            let err = parse_json_object::<serde_json::Value>(body).unwrap_err();
            assert_eq!(err.identifier(), "JSON_ERROR", "{}", err.message());
            assert!(err.message().contains("twice"), "{}", err.message());
        }
        let many: String = (0..2000).map(|i| format!("\"k{i}\":{i},")).collect();
        let body = format!("{{{many}\"k1999\":0}}");
        let err = parse_json_object::<serde_json::Value>(body.as_bytes()).unwrap_err();
        assert!(err.message().contains("k1999"), "{}", err.message());
        let distinct = format!("{{{}}}", many.trim_end_matches(','));
        parse_json_object::<serde_json::Value>(distinct.as_bytes()).unwrap();
    }

    #[test]
    fn numbers_that_would_change_on_their_way_are_refused_not_rounded() {
        for big in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ] {
            let body = format!(r#"{{"a": {{"n": [1, {big}]}}}}"#);
            let err = parse_json_object::<serde_json::Value>(body.as_bytes()).unwrap_err();
            assert_eq!(err.identifier(), "BAD_VALUE", "{big}: {}", err.message());
            assert!(
                err.message().contains(&big[..10.min(big.len())]),
                "{}",
                err.message()
            );
        }
        for fine in [
            "18446744073709551615",
            "-9223372036854775808",
            "1.5e300",
            "0.1",
            "-0",
        ] {
            let body = format!(r#"{{"n": {fine}, "s": "123456789012345678901234567890"}}"#);
            parse_json_object::<serde_json::Value>(body.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_member_only_the_walk_cannot_read_does_not_switch_the_checks_off() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for hidden in [r#""x": 1e400"#.to_owned(), format!(r#""x": {deep}"#)] {
            let body = format!(r#"{{{hidden}, "email": "a@b.c", "email": "x@y.z"}}"#);
            let err = parse_json_object::<T>(body.as_bytes()).unwrap_err();
            assert_eq!(err.identifier(), "JSON_ERROR", "{}", err.message());
        }
        let lone_surrogate = r#"{"\ud800": 1, "email": "a@b.c"}"#;
        let err = parse_json_object::<T>(lone_surrogate.as_bytes()).unwrap_err();
        assert_eq!(err.identifier(), "JSON_ERROR", "{}", err.message());
    }

    #[test]
    fn zero_with_any_exponent_is_zero_and_extreme_exponents_do_not_overflow() {
        assert_eq!(
            canonical_decimal("0e9223372036854775807"),
            Some((false, String::new(), 0))
        );
        assert_eq!(
            canonical_decimal("-0.000e-5"),
            Some((false, String::new(), 0))
        );
        assert_eq!(canonical_decimal("10e9223372036854775807"), None);
        assert_eq!(canonical_decimal("-12.30e2"), Some((true, "123".into(), 1)));
        assert_eq!(inexact_number(b"{\"n\": 0e9223372036854775807}"), None);
        assert_eq!(
            inexact_number(b"{\"n\": 10e9223372036854775807}"),
            Some("10e9223372036854775807")
        );
        parse_json_object::<serde_json::Value>(b"{\"n\": 0e9223372036854775807}").unwrap();
    }

    #[test]
    fn a_whole_number_may_be_written_as_a_float_but_not_with_a_fraction() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ttl {
            #[serde(default, deserialize_with = "whole_number")]
            ttl: Option<i64>,
        }
        let read = |body: &str| parse_json_object::<Ttl>(body.as_bytes()).map(|t| t.ttl);
        assert_eq!(read(r#"{"ttl": 188}"#).unwrap(), Some(188));
        assert_eq!(read(r#"{"ttl": 188.0}"#).unwrap(), Some(188));
        assert_eq!(read(r#"{"ttl": -2e2}"#).unwrap(), Some(-200));
        assert_eq!(read(r#"{"ttl": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
        for bad in [
            r#"{"ttl": 188.5}"#,
            r#"{"ttl": 9223372036854775808}"#,
            r#"{"ttl": 1e19}"#,
            r#"{"ttl": "188"}"#,
        ] {
            let err = read(bad).unwrap_err();
            assert_eq!(err.identifier(), "BAD_VALUE", "{bad}: {}", err.message());
            assert!(err.message().starts_with("ttl:"), "{}", err.message());
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        let v = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("Application/JSON"))));
        assert!(is_json(Some(&v("application/merge-patch+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }
}
