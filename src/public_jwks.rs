//! The public JWKS URL as verifiers see it (`KEYHOST_PUBLIC_JWKS_URL`): fetched over the normal
//! TLS checks (plus `KEYHOST_PUBLIC_JWKS_CA_FILE`), through whatever CDN or proxy sits in front,
//! without asking any cache to revalidate, so that keyhost sees the copy a verifier would get.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::UnixTime;

use crate::http_client::{MIB, describe, read_capped, trusting_ca_file};
use crate::keys::planner::Evidence;
use crate::keys::service::evidence::EvidenceSource;

/// How long one look is reused, in seconds of the lifecycle's clock (rounds can come every
/// second on a shared store).
const REUSE: UnixTime = 5;

/// Reads the public JWKS URL.
pub struct PublicJwks {
    url: String,
    client: reqwest::Client,
    last: Mutex<Option<(UnixTime, Evidence)>>,
}

impl std::fmt::Debug for PublicJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicJwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PublicJwks {
    /// A reader of `url`, trusting the system's roots and those of `ca_file`.
    pub fn new(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .user_agent(concat!(
                "keyhost/",
                env!("CARGO_PKG_VERSION"),
                " (activation check)"
            ));
        if let Some(path) = ca_file {
            builder = trusting_ca_file(builder, path, "KEYHOST_PUBLIC_JWKS_CA_FILE")?;
        }
        Ok(Self {
            url: url.to_owned(),
            client: builder.build()?,
            last: Mutex::default(),
        })
    }

    async fn fetch(&self) -> Result<BTreeSet<String>, String> {
        let res = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !res.status().is_success() {
            return Err(format!("it answered HTTP {}", res.status()));
        }
        let body = read_capped(res, MIB).await.map_err(|e| e.to_string())?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc["keys"].as_array().ok_or("not a JWKS: no keys array")?;
        Ok(keys
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect())
    }
}

impl EvidenceSource for PublicJwks {
    fn look(&self, now: UnixTime) -> Evidence {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, evidence)) = &*last
            && (0..REUSE).contains(&(now - at))
        {
            return evidence.clone();
        }
        let fetched = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.fetch()),
            Err(_) => Err("no runtime to fetch it with".into()),
        };
        let evidence = match fetched {
            Ok(kids) => Evidence::Listed {
                url: self.url.clone(),
                kids,
            },
            Err(why) => Evidence::Unavailable {
                url: self.url.clone(),
                why,
            },
        };
        *last = Some((now, evidence.clone()));
        evidence
    }
}
