//! keyhost as a process of its own, for what an in-process server cannot show: a SIGKILL at any
//! moment, a per-process file limit, its resident memory, its log lines. Listeners bind port 0
//! and the real ports are read from the JSON log line `keyhost serving`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, PARTNER_ID};

/// A running keyhost process (killed when dropped).
pub struct Process {
    child: Child,
    /// Base URL of the public listener.
    pub public: String,
    /// Base URL of the internal listener.
    pub internal: String,
    log: Arc<Mutex<Vec<Value>>>,
    https: bool,
}

/// The environment every test process gets: data and keys under `dir`, loopback port 0, the test
/// admin token and partner id, JSON logs.
pub fn base_env(dir: &Path) -> Vec<(String, String)> {
    [
        ("KEYHOST_DATA_DIR", dir.join("data").display().to_string()),
        ("KEYHOST_KEYS_DIR", dir.join("keys").display().to_string()),
        ("KEYHOST_PUBLIC_ADDR", "127.0.0.1:0".into()),
        ("KEYHOST_INTERNAL_ADDR", "127.0.0.1:0".into()),
        ("KEYHOST_PARTNER_ID", PARTNER_ID.into()),
        ("KEYHOST_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("KEYHOST_LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(crate::helpers::store_env(dir))
    .collect()
}

/// The keyhost binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyhost"))
}

impl Process {
    /// Starts `keyhost serve` with `env`, through `prefix` (a wrapper command such as
    /// `["bash", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""]`, or none), and waits until it serves.
    pub fn start(env: &[(String, String)], prefix: &[&str]) -> Self {
        let mut p = Self::spawn(env, prefix);
        if let Err(why) = p.wait_serving(Duration::from_secs(60)) {
            panic!("{why}");
        }
        p
    }

    /// Starts `keyhost serve` without waiting for it (to kill it while it starts).
    pub fn spawn(env: &[(String, String)], prefix: &[&str]) -> Self {
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starts keyhost");
        let stderr = child.stderr.take().expect("piped");
        let log: Arc<Mutex<Vec<Value>>> = Arc::default();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                    log.lock().unwrap().push(value);
                }
            });
        }
        let https = env.iter().any(|(k, _)| k == "KEYHOST_TLS_CERT");
        Self {
            child,
            public: String::new(),
            internal: String::new(),
            log,
            https,
        }
    }

    /// Waits until the process logs that it serves (and learns its addresses), or fails with
    /// what it logged.
    pub fn wait_serving(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let serving = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l["message"] == "keyhost serving")
                .cloned();
            if let Some(line) = serving {
                let scheme = if self.https { "https" } else { "http" };
                self.public = format!("{scheme}://{}", line["public"].as_str().unwrap());
                self.internal = format!("http://{}", line["internal"].as_str().unwrap());
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "keyhost exited with {status} before serving: {:?}",
                    self.log.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "keyhost did not serve within {limit:?}: {:?}",
                    self.log.lock().unwrap()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log lines written so far, as JSON.
    pub fn log(&self) -> Vec<Value> {
        self.log.lock().unwrap().clone()
    }

    /// Resident memory in kB (Linux).
    pub fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Descriptors open in the process (Linux).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
