//! Authenticity of what keyhost trusts in its database.
//!
//! The master key keeps private keys confidential, but a database writer without it (a stolen
//! backup restored elsewhere, a shared database with too-wide grants, an operator's mistake)
//! could otherwise insert a key that the JWKS publishes, a client whose secret it chose, an
//! issuance keyhost then sends to AIR Kit, or a clientId → email mapping that redirects a
//! credential. So every such row carries a MAC: HMAC-SHA256 under a key derived from the master
//! key, over a canonical encoding of the row's fields (each tagged and length-prefixed, with a
//! per-table domain, so that no two rows or tables can share an encoding).
//!
//! - A row whose MAC does not verify is never published, signed with, authenticated, issued or
//!   followed; it is reported (log, `keyhost_integrity_failures`, `"integrity": "failed"` in the
//!   admin listings) and the rest keeps serving.
//! - Only a verified row is ever rewritten (and re-MACed), inside the transaction that verified
//!   it, so keyhost never launders a row it did not write.
//! - What is covered: every field of a key row the lifecycle reads (identity, public key, state,
//!   times, served time, sealing master key); a client's name, scopes, secret hash, times; a
//!   named admin's name, role, secret hash, times; an issuance's request (who asked, for whom,
//!   what, idempotency key and request hash; not its progress); a KYC subject mapping; the
//!   stored admin token hash and whether it was disabled.
//! - What is not: rolling a row back to an earlier state it really had (from a backup) passes,
//!   since the MAC was real then. Deleting rows is a denial of service, not a forgery.
//! - A store from before row authentication is never authenticated behind anyone's back: a
//!   database writer can make any store look like one (delete the marker, clear the MACs, even
//!   rebuild the old schema), so its rows get their MACs only on an operator's word
//!   (`keyhost integrity accept-legacy-rows`), and the server refuses to start until then
//!   ([`legacy`]).

pub mod legacy;

use aws_lc_rs::hmac;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::canonical::{Field, encode};
use crate::keys::types::KeyRecord;
use crate::store::Rows;
use crate::store::admins::AdminRow;
use crate::store::clients::ClientRow;
use crate::store::issuances::IssuanceRow;
use crate::store::keys::StoredKey;

/// Derives the MAC key and checks rows with it.
pub struct RowAuth {
    key: hmac::Key,
    /// Rows that failed their check at the last full look, per table.
    pub failures: IntegrityGauges,
}

impl std::fmt::Debug for RowAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowAuth(<key>)")
    }
}

/// Label: database table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `keys`, `clients` or `issuances`.
    pub table: String,
}

/// Rows failing their integrity check, per table (exported as `keyhost_integrity_failures`): key
/// and client rows as of the last full reload, issuances as they were about to be sent.
#[derive(Debug, Clone, Default)]
pub struct IntegrityGauges(Family<TableLabel, Gauge>);

impl IntegrityGauges {
    /// The gauge of `table`.
    pub fn table(&self, table: &str) -> Gauge {
        self.0
            .get_or_create(&TableLabel {
                table: table.to_owned(),
            })
            .clone()
    }

    /// The family, for registration.
    pub fn family(&self) -> &Family<TableLabel, Gauge> {
        &self.0
    }
}

impl RowAuth {
    /// The row authenticator of the master key `master` (its raw 32 bytes).
    pub fn from_master(master: &[u8; 32]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, master),
            b"keyhost/v1/row-mac",
        );
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            failures: IntegrityGauges::default(),
        }
    }

    /// The rows of `found` that pass `ok`, and the ids of the others (unreadable ones
    /// included), whose count becomes `table`'s failure gauge.
    pub fn authentic<T>(
        &self,
        table: &str,
        found: Rows<T>,
        ok: impl Fn(&Self, &T) -> bool,
        id: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Vec<String>) {
        let (rows, forged): (Vec<_>, Vec<_>) = found.rows.into_iter().partition(|r| ok(self, r));
        let failing: Vec<String> = forged
            .iter()
            .map(|r| id(r).to_owned())
            .chain(found.unreadable.into_iter().map(|u| u.id))
            .collect();
        self.failures.table(table).set(failing.len() as i64);
        (rows, failing)
    }

    fn mac(&self, domain: &str, fields: &[Field<'_>]) -> Vec<u8> {
        hmac::sign(&self.key, &encode(domain, fields))
            .as_ref()
            .to_vec()
    }

    fn verify(&self, domain: &str, fields: &[Field<'_>], mac: Option<&[u8]>) -> bool {
        mac.is_some_and(|mac| hmac::verify(&self.key, &encode(domain, fields), mac).is_ok())
    }

    fn key_fields<'a>(
        k: &'a KeyRecord,
        jwk: &'a str,
        master_key_id: Option<&'a str>,
    ) -> [Field<'a>; 18] {
        [
            Field::Int(k.id),
            Field::Text(&k.kid),
            Field::Text(k.alg.as_str()),
            Field::Text(k.state.as_str()),
            Field::Text(k.origin.as_str()),
            Field::Int(i64::from(k.bits)),
            Field::Text(jwk),
            Field::OptText(master_key_id),
            Field::Int(k.created_at),
            Field::OptInt(k.published_at),
            Field::OptInt(k.signable_at),
            Field::OptInt(k.activated_at),
            Field::OptInt(k.retired_at),
            Field::OptInt(k.expires_at),
            Field::OptInt(k.revoked_at),
            Field::Int(k.lead_remaining),
            Field::Int(k.grace_remaining),
            Field::OptInt(k.last_exp),
        ]
    }

    /// The MAC of a key row.
    pub fn key_mac(&self, k: &KeyRecord, master_key_id: Option<&str>) -> Vec<u8> {
        let jwk = serde_json::to_string(&k.public_jwk).expect("a JWK serialises");
        self.mac("key", &Self::key_fields(k, &jwk, master_key_id))
    }

    /// Whether `mac` authenticates the key row.
    pub fn key_ok(&self, k: &KeyRecord, master_key_id: Option<&str>, mac: Option<&[u8]>) -> bool {
        let jwk = serde_json::to_string(&k.public_jwk).expect("a JWK serialises");
        self.verify("key", &Self::key_fields(k, &jwk, master_key_id), mac)
    }

    /// Whether a stored key row is authentic: its MAC verifies, and it holds a sealed private key
    /// exactly when its state is live (the schema says so too, but a writer can switch its checks
    /// off).
    pub fn stored_key_ok(&self, row: &StoredKey) -> bool {
        row.record.state.is_live() == row.sealed
            && self.key_ok(
                &row.record,
                row.master_key_id.as_deref(),
                row.mac.as_deref(),
            )
    }

    fn client_fields<'a>(c: &'a ClientRow, scopes: &'a str) -> [Field<'a>; 6] {
        [
            Field::Text(&c.id),
            Field::Text(&c.name),
            Field::Text(scopes),
            Field::Bytes(&c.secret_hash),
            Field::Int(c.created_at),
            Field::OptInt(c.disabled_at),
        ]
    }

    /// The MAC of a client row.
    pub fn client_mac(&self, c: &ClientRow) -> Vec<u8> {
        let scopes = serde_json::to_string(&c.scopes).expect("strings serialise");
        self.mac("client", &Self::client_fields(c, &scopes))
    }

    /// Whether the client row's MAC verifies.
    pub fn client_ok(&self, c: &ClientRow) -> bool {
        let scopes = serde_json::to_string(&c.scopes).expect("strings serialise");
        self.verify("client", &Self::client_fields(c, &scopes), c.mac.as_deref())
    }

    fn issuance_fields<'a>(i: &'a IssuanceRow, subject: &'a str) -> [Field<'a>; 10] {
        [
            Field::Text(&i.id),
            Field::Text(&i.source),
            Field::OptText(i.idempotency_key.as_deref()),
            Field::Text(&i.request_hash),
            Field::Text(&i.email),
            Field::Text(&i.issuer_did),
            Field::Text(&i.credential_id),
            Field::Text(subject),
            Field::Text(&i.on_duplicate),
            Field::Int(i.created_at),
        ]
    }

    /// The MAC of an issuance's request.
    pub fn issuance_mac(&self, i: &IssuanceRow) -> Vec<u8> {
        let subject = i.credential_subject.to_string();
        self.mac("issuance", &Self::issuance_fields(i, &subject))
    }

    /// Whether the issuance's request is authentic.
    pub fn issuance_ok(&self, i: &IssuanceRow) -> bool {
        let subject = i.credential_subject.to_string();
        self.verify(
            "issuance",
            &Self::issuance_fields(i, &subject),
            i.mac.as_deref(),
        )
    }

    fn admin_fields(a: &AdminRow) -> [Field<'_>; 6] {
        [
            Field::Text(&a.id),
            Field::Text(&a.name),
            Field::Text(&a.role),
            Field::Bytes(&a.secret_hash),
            Field::Int(a.created_at),
            Field::OptInt(a.disabled_at),
        ]
    }

    /// The MAC of a named admin credential's row.
    pub fn admin_mac(&self, a: &AdminRow) -> Vec<u8> {
        self.mac("admin", &Self::admin_fields(a))
    }

    /// Whether the admin row's MAC verifies.
    pub fn admin_ok(&self, a: &AdminRow) -> bool {
        self.verify("admin", &Self::admin_fields(a), a.mac.as_deref())
    }

    /// A keyed hash of an e-mail address (lower-cased), for records that must say whose data
    /// they concern without holding the address: only the holder of the master key can tell
    /// whether a given address produced it.
    pub fn email_tag(&self, email: &str) -> String {
        self.tag("email", &email.to_lowercase())
    }

    /// A keyed hash of a personal identifier of `kind` (an e-mail address, an iDenfy clientId),
    /// for the audit trail, which keeps no personal data.
    pub fn tag(&self, kind: &str, value: &str) -> String {
        hex::encode(&self.mac("tag", &[Field::Text(kind), Field::Text(value)])[..16])
    }

    /// The MAC of a KYC subject mapping.
    pub fn subject_mac(&self, client_id: &str, email: &str) -> Vec<u8> {
        self.mac("kyc-subject", &[Field::Text(client_id), Field::Text(email)])
    }

    /// Whether the mapping is authentic.
    pub fn subject_ok(&self, client_id: &str, email: &str, mac: Option<&[u8]>) -> bool {
        self.verify(
            "kyc-subject",
            &[Field::Text(client_id), Field::Text(email)],
            mac,
        )
    }

    /// The MAC of a setting.
    pub fn setting_mac(&self, name: &str, value: &str) -> Vec<u8> {
        self.mac("setting", &[Field::Text(name), Field::Text(value)])
    }

    /// Whether the setting is authentic.
    pub fn setting_ok(&self, name: &str, value: &str, mac: Option<&[u8]>) -> bool {
        self.verify("setting", &[Field::Text(name), Field::Text(value)], mac)
    }
}

impl crate::store::Sealer for RowAuth {
    fn mac(&self, domain: &str, fields: &[Field<'_>]) -> Vec<u8> {
        RowAuth::mac(self, domain, fields)
    }

    fn verify(&self, domain: &str, fields: &[Field<'_>], mac: Option<&[u8]>) -> bool {
        RowAuth::verify(self, domain, fields, mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_unambiguous_and_macs_depend_on_the_master_key() {
        // Moving a byte between fields, or from a value to a NULL, changes the encoding.
        assert_ne!(
            encode("d", &[Field::Text("ab"), Field::Text("c")]),
            encode("d", &[Field::Text("a"), Field::Text("bc")])
        );
        assert_ne!(
            encode("d", &[Field::OptText(None)]),
            encode("d", &[Field::OptText(Some(""))])
        );
        assert_ne!(
            encode("key", &[Field::Text("x")]),
            encode("client", &[Field::Text("x")])
        );
        let a = RowAuth::from_master(&[1; 32]);
        let b = RowAuth::from_master(&[2; 32]);
        let mac = a.subject_mac("c1", "a@example.com");
        assert!(a.subject_ok("c1", "a@example.com", Some(&mac)));
        assert!(!b.subject_ok("c1", "a@example.com", Some(&mac)));
        assert!(!a.subject_ok("c1", "b@example.com", Some(&mac)));
        assert!(!a.subject_ok("c1", "a@example.com", None));
        assert!(!a.subject_ok("c1", "a@example.com", Some(&mac[..31])));
    }
}
