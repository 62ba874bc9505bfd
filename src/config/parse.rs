//! How the values that are not plain strings, numbers or durations are read: listener
//! addresses, proxy networks, algorithm lists and the partner id. Each accepts both the
//! environment's form (text: `"ES256,RS256"`) and the file's (a list), and refuses with what to
//! write instead.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use crate::keys::types::Alg;

/// Accepts an IP address and a port. A host name is refused with what to write instead: it
/// could resolve to several addresses (which one to bind?) or to another one later.
pub(super) fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Port(u64),
        Other(serde::de::IgnoredAny),
    }
    let text = match Form::deserialize(d)? {
        Form::Text(text) => text,
        Form::Other(_) => String::new(),
        Form::Port(port) => {
            return Err(serde::de::Error::custom(format!(
                "a port alone is not an address; write the IP address too, e.g. 127.0.0.1:{port}"
            )));
        }
    };
    if let Ok(addr) = text.trim().parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = text
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let message = match (text.rsplit_once(':').map(|(h, _)| h), port) {
        (Some("localhost"), Some(port)) => format!(
            "host names are not accepted, only an IP address and a port; use 127.0.0.1:{port} \
             (or [::1]:{port})"
        ),
        (Some(_), Some(port)) => format!(
            "host names are not accepted, only an IP address and a port, e.g. 127.0.0.1:{port}, \
             or 0.0.0.0:{port} for every interface"
        ),
        _ => "not an IP address and a port, e.g. 127.0.0.1:8080".to_owned(),
    };
    Err(serde::de::Error::custom(message))
}

/// Accepts a string, or a number as its decimal text (the environment parser turns `12345` into a
/// number, and a partner id may well be all digits).
pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(Some(match Form::deserialize(d)? {
        Form::Text(s) => s,
        Form::Unsigned(n) => n.to_string(),
        Form::Signed(n) => n.to_string(),
    }))
}

/// Accepts `"10.0.0.0/8, 127.0.0.1"` (the environment form) or a list (the TOML form); a bare
/// address is a single-host network.
pub(super) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let items = match Form::deserialize(d)? {
        Form::List(v) => v,
        Form::Text(s) => s.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{item:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

/// Accepts `"ES256,RS256"` (the environment form) or `["ES256", "RS256"]` (the TOML form).
pub(super) fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Alg>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let names = match Form::deserialize(d)? {
        Form::List(v) => v,
        Form::Text(s) => s.split(',').map(str::to_owned).collect(),
    };
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let alg = name.parse::<Alg>().map_err(serde::de::Error::custom)?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}
