//! What each AIR Kit error means and how to fix it, from AIR Kit's error reference and the
//! Issue-on-Behalf troubleshooting list, so that a failed issuance says what to do.

/// The likely cause and fix for an AIR Kit status.
pub fn for_status(status: u16) -> &'static str {
    match status {
        400 => {
            "missing or invalid request fields: verify that issuerDid, credentialId and \
             credentialSubject match your schema, that required fields are present and that types \
             are correct"
        }
        401 => {
            "AIR Kit rejected the Partner JWT: check that your JWKS URL is publicly reachable over \
             HTTPS and lists the kid keyhost signs with (keyhost publishes keys \
             KEYHOST_PUBLISH_LEAD before use; an emergency rotation skips that), that the server \
             clock is synchronised (NTP; exp), and that partnerId and scope match your AIR Kit \
             account (KEYHOST_PARTNER_ID, KEYHOST_ISSUE_SCOPE); keyhost always sets typ: \"JWT\""
        }
        403 => {
            "feature not enabled or schema not allowed: confirm that Issue on Behalf is enabled \
             for your partner account in the Developer Dashboard and that your issuerDid owns the \
             schema"
        }
        404 => {
            "unknown issuer DID or program ID: double-check issuerDid and credentialId \
             (KEYHOST_ISSUER_DID, KEYHOST_CREDENTIAL_ID) against the Developer Dashboard"
        }
        409 => {
            "the user has denied consent for credentials issued on their behalf, or a duplicate \
             credential exists with onDuplicate: \"ignore\""
        }
        429 => {
            "rate limited: keyhost backs off and retries; lower the request rate if this persists"
        }
        s if s >= 500 => {
            "server-side failure: keyhost retries with exponential backoff; if it persists, check \
             the Moca Network status page or contact support"
        }
        _ => "unexpected answer from AIR Kit; check KEYHOST_AIRKIT_BASE_URL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_has_its_own_fix() {
        let fixes: Vec<&str> = [400, 401, 403, 404, 409, 429, 500]
            .iter()
            .map(|s| for_status(*s))
            .collect();
        for (i, a) in fixes.iter().enumerate() {
            assert!(fixes[i + 1..].iter().all(|b| a != b));
        }
        assert!(for_status(401).contains("kid"));
        assert!(for_status(401).contains("NTP"));
    }
}
