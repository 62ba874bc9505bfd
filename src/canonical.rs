//! The canonical encoding of a list of fields, the input of every MAC and hash keyhost keeps
//! over its rows (row authentication, the audit chain).

/// One field of a canonical encoding.
pub enum Field<'a> {
    /// A string.
    Text(&'a str),
    /// A string or NULL.
    OptText(Option<&'a str>),
    /// Bytes.
    Bytes(&'a [u8]),
    /// An integer.
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
}

/// `fields` under `domain`, each tagged with its type and prefixed with its length, so that no
/// two different lists (or domains) share an encoding.
pub fn encode(domain: &str, fields: &[Field<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut put = |tag: u8, bytes: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    put(b'D', domain.as_bytes());
    for field in fields {
        match field {
            Field::Text(t) => put(b'S', t.as_bytes()),
            Field::OptText(None) | Field::OptInt(None) => put(b'N', &[]),
            Field::OptText(Some(t)) => put(b'S', t.as_bytes()),
            Field::Bytes(b) => put(b'B', b),
            Field::Int(i) | Field::OptInt(Some(i)) => put(b'I', &i.to_be_bytes()),
        }
    }
    out
}

/// SHA-256 of the canonical encoding.
pub fn sha256(domain: &str, fields: &[Field<'_>]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &encode(domain, fields))
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}
