//! The `keyhost` binary: parse the command line, load the configuration, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use keyhost::cli::{self, Cli, Command};
use keyhost::config::Config;
use keyhost::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyhost: {e}");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(
        cli.command,
        None | Some(Command::Serve) | Some(Command::AirkitEmulator(_))
    );
    telemetry::init(config.log_format, if serving { "info" } else { "warn" });
    for name in Config::unknown_env_vars() {
        tracing::warn!(
            variable = %name,
            "ignoring an environment variable that names no keyhost setting"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyhost: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<cli::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
