//! Logging through `tracing`: human-readable lines by default, JSON on request; the level comes
//! from `RUST_LOG` (default `info`). Secrets never reach a log line: they are held in redacting
//! types and no code formats them.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber at `default_level` unless `RUST_LOG` says otherwise; later calls are ignored (tests start many apps).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},tower_http=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
