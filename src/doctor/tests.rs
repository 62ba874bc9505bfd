use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, LOCATION};

use super::*;

fn chain(url: &str, location: Option<&[u8]>) -> String {
    let mut headers = HeaderMap::new();
    if let Some(l) = location {
        headers.insert(LOCATION, HeaderValue::from_bytes(l).unwrap());
    }
    redirect_chain(
        &reqwest::Url::parse(url).unwrap(),
        StatusCode::FOUND,
        &headers,
    )
}

#[test]
fn a_redirect_from_https_to_plain_http_is_named_as_leaving_https() {
    let text = chain(
        "https://partner.example/jwks.json",
        Some(b"http://10.0.0.5:8081/admin/keys"),
    );
    assert!(
        text.starts_with(
            "redirect chain: https://partner.example/jwks.json answered HTTP 302 Found, \
             Location: http://10.0.0.5:8081/admin/keys; the redirect leaves HTTPS. The \
             target was not fetched"
        ),
        "{text}"
    );
}

#[test]
fn relative_missing_unreadable_and_huge_locations_are_described_not_trusted() {
    let relative = chain("https://partner.example/a/jwks.json", Some(b"../keys.json"));
    assert!(
        relative.contains("Location: ../keys.json (= https://partner.example/keys.json)")
            && !relative.contains("leaves HTTPS"),
        "{relative}"
    );
    assert!(chain("https://p.example/j", None).ends_with("302 Found without a Location header"));
    assert!(
        chain("https://p.example/j", Some(b"/caf\xe9"))
            .ends_with("with an unreadable Location header")
    );
    let huge = format!("/{}", "a".repeat(10_000));
    let text = chain("https://p.example/j", Some(huge.as_bytes()));
    assert!(text.len() < 1_000, "{} characters", text.len());
    assert!(text.contains("aaa..."), "{text}");
}
