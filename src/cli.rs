//! The command line: `serve` (the default) and operator commands that work on the same data
//! directory as the server, which notices their changes within a second.
//!
//! Commands print JSON on stdout, for people and scripts alike; errors go to stderr with a
//! non-zero exit status.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::clients::ClientService;
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::config::Config;
use crate::keys::Alg;
use crate::keys::KeyView;
use crate::live::LiveKeys;
use crate::mint::{MintRequest, Minter};
use crate::signer::MAX_TOKEN_TTL;
use crate::startup::{self, Application};
use crate::store;

/// keyhost: partner keys, JWKS and Partner JWTs for AIR Kit.
#[derive(Debug, Parser)]
#[command(name = "keyhost", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (public JWKS listener and internal API listener).
    Serve,
    /// List, rotate, retire, revoke and import signing keys.
    Keys {
        /// Key command.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create, list and disable API clients.
    Clients {
        /// Client command.
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Create, list and disable named admin credentials (the audit trail names each change's
    /// admin).
    Admins {
        /// Admin command.
        #[command(subcommand)]
        command: AdminsCommand,
    },
    /// Personal data in issuance records: erase one person's on request.
    Issuances {
        /// Issuance command.
        #[command(subcommand)]
        command: IssuancesCommand,
    },
    /// Verifiers seen fetching the JWKS, and whether each has been served the pending keys.
    Verifiers,
    /// Check the audit trail's hash chain, or export it for a SIEM.
    Audit {
        /// Audit command.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mint tokens locally (operators).
    Token {
        /// Token command.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Create or upgrade the database schema, then exit; with `--to`, copy the SQLite store
    /// into an empty PostgreSQL database instead.
    Migrate {
        /// `postgres://…` URL of an empty database (or schema, through its search_path) to copy
        /// the SQLite store of KEYHOST_DATA_DIR into: keys (still sealed), clients, settings,
        /// the audit trail, issuances and KYC records. The server must be stopped.
        #[arg(long, value_name = "URL", conflicts_with = "to_file")]
        to: Option<String>,
        /// A file holding that URL (so that its password stays out of the process list and
        /// the shell's history).
        #[arg(long, value_name = "FILE")]
        to_file: Option<PathBuf>,
    },
    /// Write the whole store, encrypted under the master key, to a new file; the servers may
    /// keep running.
    Backup {
        /// The file to create (0600; an existing file is never replaced).
        file: PathBuf,
    },
    /// Put a backup into the configured store, which must be empty (SQLite or PostgreSQL,
    /// whichever the backup came from), then check it opens as a server would. On SQLite the
    /// server must be stopped.
    Restore {
        /// A file written by `keyhost backup`.
        file: PathBuf,
    },
    /// The MACs that authenticate the rows keyhost trusts.
    Integrity {
        /// Integrity command.
        #[command(subcommand)]
        command: IntegrityCommand,
    },
    /// Run a local stand-in for AIR Kit's Issue-on-Behalf API (tests, demos, development).
    AirkitEmulator(crate::emulator::EmulatorArgs),
    /// Check a JWKS URL (and a Partner JWT) against AIR Kit's troubleshooting list.
    Doctor(crate::doctor::DoctorArgs),
}

/// `keyhost keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List every key with its state and timestamps.
    List,
    /// Start a rotation: a new pending key that signs after the publish lead.
    Rotate {
        /// Algorithm to rotate (default: KEYHOST_DEFAULT_ALG).
        #[arg(long)]
        alg: Option<Alg>,
        /// Compromise: activate the new key at once and revoke the current one.
        #[arg(long)]
        emergency: bool,
    },
    /// Retire a pending key.
    Retire {
        /// Key id.
        kid: String,
    },
    /// Revoke a key now: it leaves the JWKS and its private key is destroyed.
    Revoke {
        /// Key id.
        kid: String,
    },
    /// Import a private key (PKCS#8, PKCS#1 or SEC1 PEM; RSA >= 2048 bits or P-256).
    Import {
        /// PEM file.
        #[arg(long)]
        pem: PathBuf,
        /// Key id to publish it under (default: its RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
    },
}

/// `keyhost clients ...`
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create a client; its API key is printed once.
    Create {
        /// Name of the application.
        #[arg(long)]
        name: String,
        /// Allowed scope (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List clients.
    List,
    /// Disable a client; its key stops working.
    Disable {
        /// Client id.
        id: String,
    },
}

/// `keyhost admins ...`
#[derive(Debug, Subcommand)]
pub enum AdminsCommand {
    /// Create a named admin credential; its token is printed once.
    Create {
        /// Who holds it, e.g. `alice` (a-z, 0-9, `.`, `_`, `-`; never reused).
        #[arg(long)]
        name: String,
        /// `reader` (may only read) or `operator` (may do everything).
        #[arg(long, value_enum)]
        role: crate::admins::Role,
    },
    /// List named admin credentials and the bootstrap token's state.
    List,
    /// Disable a named credential, or the bootstrap token (`bootstrap`).
    Disable {
        /// Admin name, or `bootstrap`.
        name: String,
    },
}

/// `keyhost issuances ...`
#[derive(Debug, Subcommand)]
pub enum IssuancesCommand {
    /// Erase one person's data: their issuances' personal data (one in progress is stopped),
    /// the KYC deliveries linked to them or to the clientIds mapped to the address, and those
    /// mappings. Audited without the address.
    Erase {
        /// The person's e-mail address (compared without regard to case).
        #[arg(long)]
        email: String,
    },
}

/// `keyhost audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain: every row's link, hash and MAC, every signed head, the head keyhost
    /// last recorded. Exits non-zero, naming the first row that is not as keyhost wrote it.
    Verify {
        /// A signed head kept outside the store (an `audit.head` row's `jws`, from the log or an
        /// export): the trail must still hold the row it covers, with the same hash.
        #[arg(long, value_name = "JWS", conflicts_with = "head_file")]
        head: Option<String>,
        /// A file holding such a signed head.
        #[arg(long, value_name = "FILE")]
        head_file: Option<PathBuf>,
    },
    /// Write the rows as JSON lines (with their hashes), oldest first.
    Export {
        /// Only rows at or after this time (RFC 3339, or Unix seconds).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Write to this file (created 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// A time given as RFC 3339 or Unix seconds.
fn parse_time(text: &str) -> anyhow::Result<crate::clock::UnixTime> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .with_context(|| {
            format!("{text:?} is neither RFC 3339 (2026-12-01T00:00:00Z) nor Unix seconds")
        })
}

/// `keyhost integrity ...`
#[derive(Debug, Subcommand)]
pub enum IntegrityCommand {
    /// Give the rows of a store from before row authentication their MACs (once, after
    /// checking the list it prints without --yes).
    AcceptLegacyRows {
        /// Write the MACs (without it, only list the rows).
        #[arg(long)]
        yes: bool,
    },
}

/// `keyhost token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a Partner JWT on behalf of a client, without the HTTP API.
    Mint {
        /// Client id.
        #[arg(long)]
        client: String,
        /// The user's email.
        #[arg(long)]
        email: String,
        /// Scope (must be one of the client's).
        #[arg(long, default_value = crate::scope::DEFAULT_SCOPE)]
        scope: String,
        /// Algorithm (default: KEYHOST_DEFAULT_ALG).
        #[arg(long)]
        alg: Option<Alg>,
        /// Lifetime in seconds (at most 300).
        #[arg(long, default_value_t = MAX_TOKEN_TTL)]
        ttl: i64,
    },
}

fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Writes `value` as JSON on stdout. A reader that went away (`keyhost keys list | head`) is a
/// [`StdoutClosed`] error, never a panic.
fn print(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON serialises");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// The reader of stdout has gone: the command did its work, and like any Unix tool keyhost then
/// stops quietly (the binary exits with success and prints nothing).
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Runs a parsed command line with a loaded configuration.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(config).await?.run_until_stopped().await,
        Command::AirkitEmulator(args) => {
            crate::emulator::Emulator::bind(args)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Doctor(args) => {
            let findings = crate::doctor::run(&args).await?;
            let printed = crate::doctor::print(&findings, args.json, &mut std::io::stdout().lock());
            // The verdict is the exit status, whether or not the reader saw every finding.
            if !crate::doctor::passed(&findings) {
                bail!("AIR Kit would reject this setup; see the fixes above")
            }
            printed.map_err(stdout_error)
        }
        other => tokio::task::spawn_blocking(move || run_offline(other, config)).await?,
    }
}

/// Copies the SQLite store into the empty PostgreSQL database at `url`, then opens the copy as
/// a server would (the master key, every row's MAC, every private key) and checks that it
/// serves the same kids.
fn migrate_to(config: &Config, clock: Arc<dyn Clock>, url: String) -> anyhow::Result<()> {
    if config.database.url.is_some() {
        bail!(
            "`keyhost migrate --to` copies the SQLite store of KEYHOST_DATA_DIR into PostgreSQL; \
             unset KEYHOST_DATABASE_URL (the source is the SQLite file)"
        );
    }
    let db = config.database_path();
    if !db.is_file() {
        bail!("there is no SQLite store at {} to copy", db.display());
    }
    // No server may write the source meanwhile.
    let _lock =
        startup::lock_data_dir(config).context("stop the server before copying its store")?;
    // The source opens with this master key (and its rows check) before anything is copied.
    let source = startup::open(config, clock.clone(), false)?;
    let served_before = crate::jwks::JwksDocument::build(&source.keys.list()?).kids;
    let mut target_config = config.clone();
    target_config.database.url = Some(url.into());
    target_config.validate()?;
    let target = startup::open_store(&target_config)?;
    let copied = store::copy::copy_all(&source.store, &target)
        .with_context(|| format!("copying into {}", target.location()))?;
    let location = target.location();
    drop(target);
    let copy = startup::open(&target_config, clock, false)
        .context("the copy does not open as the original did")?;
    let served_after = crate::jwks::JwksDocument::build(&copy.keys.list()?).kids;
    if served_after != served_before {
        bail!("the copy would serve {served_after:?}, not {served_before:?}; do not switch to it");
    }
    print(&json!({
        "from": db,
        "to": location,
        "copied": copied.tables.into_iter().map(|(t, n)| (t, json!(n))).collect::<serde_json::Map<_, _>>(),
        "servedKids": served_after,
        "next": "start the servers with KEYHOST_DATABASE_URL set to the new database and the same \
                 master key; keep the SQLite file as a backup",
    }))
}

fn run_offline(command: Command, config: Config) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Command::Migrate { to, to_file } = command {
        let to = match to_file {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => to,
        };
        return match to {
            None => {
                let store = startup::open_store(&config)?;
                print(&json!({"database": store.location(), "migrated": true}))
            }
            Some(url) => migrate_to(&config, clock, url),
        };
    }
    match &command {
        Command::Backup { file } => {
            let report = crate::backup::backup(&config, clock, file, &actor())?;
            return print(&serde_json::to_value(&report)?);
        }
        Command::Restore { file } => {
            let report = crate::backup::restore(&config, clock, file, &actor())?;
            return print(&serde_json::to_value(&report)?);
        }
        _ => {}
    }
    let opened = startup::open(&config, clock.clone(), false)?;
    if !matches!(command, Command::Audit { .. }) {
        opened.store.blocking_write(store::audit::chain_legacy)?;
    }
    let (store, keys, legacy, partner_id) =
        (opened.store, opened.keys, opened.legacy, opened.partner_id);
    if let Command::Integrity {
        command: IntegrityCommand::AcceptLegacyRows { yes },
    } = command
    {
        let Some(legacy) = legacy else {
            bail!("{}", crate::integrity::legacy::AcceptError::NotLegacy);
        };
        if !yes {
            print(&json!({
                "rowsWithoutMac": legacy.without_mac,
                "next": "check that these rows are your keys, clients, issuances and mappings, \
                         then run again with --yes",
            }))?;
            return Ok(());
        }
        let accepted = crate::integrity::legacy::accept_legacy_rows(
            &store,
            keys.row_auth(),
            clock.now(),
            &actor(),
        )?;
        print(&json!({ "authenticated": accepted }))?;
        return Ok(());
    }
    if let Some(legacy) = &legacy {
        eprintln!(
            "keyhost: warning: {} rows predate row authentication and are not trusted; see \
             `keyhost integrity accept-legacy-rows`",
            legacy.without_mac.len()
        );
    }
    let actor = actor();
    match command {
        Command::Serve
        | Command::Migrate { .. }
        | Command::Integrity { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::AirkitEmulator(_)
        | Command::Doctor(_) => {
            unreachable!("handled above")
        }
        Command::Keys { command } => match command {
            KeysCommand::List => {
                print(&json!({ "keys": keys.views()? }))?;
            }
            KeysCommand::Rotate { alg, emergency } => {
                let r = keys.rotate(alg.unwrap_or(config.tokens.default_alg), emergency, &actor)?;
                let mut out = json!({ "key": KeyView::from(&r.key), "revoked": r.revoked });
                if let Some(w) = r.warning {
                    out["warning"] = json!(w);
                }
                print(&out)?;
            }
            KeysCommand::Retire { kid } => {
                print(&json!({ "key": KeyView::from(&keys.retire(&kid, &actor)?) }))?;
            }
            KeysCommand::Revoke { kid } => {
                let (key, warning) = keys.revoke(&kid, &actor)?;
                print(&json!({ "key": KeyView::from(&key), "warning": warning }))?;
            }
            KeysCommand::Import { pem, kid } => {
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&pem)
                        .with_context(|| format!("reading {}", pem.display()))?,
                );
                let key = keys.import(&text, kid.as_deref(), &actor)?;
                print(&json!({ "key": KeyView::from(&key) }))?;
            }
        },
        Command::Clients { command } => {
            let clients =
                ClientService::new(store.clone(), keys.row_auth().clone(), clock.clone(), None);
            // The CLI runs on a blocking thread of the runtime: it may wait on it.
            let wait = tokio::runtime::Handle::current();
            match command {
                ClientsCommand::Create { name, scopes } => {
                    let (view, api_key) = wait.block_on(clients.create(&name, &scopes, &actor))?;
                    let mut out = serde_json::to_value(&view)?;
                    out["apiKey"] = json!(api_key.expose_secret());
                    print(&out)?;
                }
                ClientsCommand::List => {
                    print(&json!({ "clients": wait.block_on(clients.list())? }))?
                }
                ClientsCommand::Disable { id } => {
                    let view = wait.block_on(clients.disable(&id, &actor))?;
                    print(&json!({ "client": view }))?;
                }
            }
        }
        Command::Issuances {
            command: IssuancesCommand::Erase { email },
        } => {
            let email = email.trim();
            if email.is_empty() {
                bail!("--email must name an address");
            }
            let privacy = crate::privacy::Privacy::new(
                store.clone(),
                keys.row_auth().clone(),
                clock.clone(),
                config.privacy.issuance_retention,
            );
            let erased = privacy.erase_email(email, &actor)?;
            print(&serde_json::to_value(&erased)?)?;
        }
        Command::Verifiers => {
            let verifiers = crate::sightings::report(&store, &keys.pending_kids()?)?;
            print(&json!({ "verifiers": verifiers }))?;
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { head, head_file } => {
                let head = match (head, head_file) {
                    (Some(h), _) => Some(h),
                    (None, Some(path)) => Some(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    ),
                    (None, None) => None,
                };
                let head = head
                    .map(|h| crate::audit::SignedHead::parse(&h))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--head: {e}"))?;
                let report = crate::audit::verify(&store, keys.row_auth(), head.as_ref())?;
                print(&serde_json::to_value(&report)?)?;
                if let Some(problem) = &report.problem {
                    bail!(
                        "the audit trail is not as keyhost wrote it: row {} {}",
                        problem.row,
                        problem.what
                    );
                }
            }
            AuditCommand::Export { since, output } => {
                let since = since.as_deref().map(parse_time).transpose()?;
                match output {
                    Some(path) => {
                        let file = crate::files::create_private_file(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        let mut out = std::io::BufWriter::new(file);
                        let rows = crate::audit::export(&store, since, &mut out)?;
                        eprintln!("keyhost: wrote {rows} audit rows to {}", path.display());
                    }
                    None => {
                        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                        match crate::audit::export(&store, since, &mut out) {
                            Err(crate::audit::ExportError::Io(e)) => return Err(stdout_error(e)),
                            other => {
                                other?;
                            }
                        }
                    }
                }
            }
        },
        Command::Admins { command } => {
            let admins = crate::admins::AdminService::new(
                store.clone(),
                keys.row_auth().clone(),
                clock.clone(),
                None,
            );
            let wait = tokio::runtime::Handle::current();
            match command {
                AdminsCommand::Create { name, role } => {
                    let (view, token) = wait.block_on(admins.create(&name, role, &actor))?;
                    let mut out = serde_json::to_value(&view)?;
                    out["token"] = json!(token.expose_secret());
                    print(&out)?;
                }
                AdminsCommand::List => {
                    print(&serde_json::to_value(wait.block_on(admins.list())?)?)?
                }
                AdminsCommand::Disable { name } => print(&serde_json::to_value(
                    wait.block_on(admins.disable(&name, &actor))?,
                )?)?,
            }
        }
        Command::Token {
            command:
                TokenCommand::Mint {
                    client,
                    email,
                    scope,
                    alg,
                    ttl,
                },
        } => {
            let email = crate::email::Email::parse(&email)?;
            if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
                bail!("--ttl must be between 1 and {MAX_TOKEN_TTL}");
            }
            let row = store
                .blocking_read(|tx| store::clients::get(tx, &client))?
                .with_context(|| format!("no client with id {client:?}"))?;
            if !keys.row_auth().client_ok(&row) {
                bail!(
                    "the row of client {client} fails its integrity check (not written by keyhost)"
                );
            }
            if row.disabled_at.is_some() {
                bail!("client {client} is disabled");
            }
            if !row.scopes.contains(&scope) {
                bail!(
                    "client {client} may not request scope {scope:?}; allowed: {}",
                    row.scopes.join(", ")
                );
            }
            let alg = alg.unwrap_or(config.tokens.default_alg);
            if !config.keys.algorithms.contains(&alg) {
                bail!("{alg} is not enabled (KEYHOST_ALGORITHMS)");
            }
            // The same minting as the server's, with the keys as the store holds them now.
            let live = Arc::new(LiveKeys::default());
            live.refresh(&keys)?;
            let minter = Minter::new(live.clone(), clock.clone(), None, partner_id);
            let minted = minter.mint(MintRequest {
                alg,
                scope: &scope,
                email: &email,
                ttl,
            })?;
            keys.note_signed_until(&live.signed_until())?;
            let now = minted.iat;
            store.blocking_write(|tx| {
                store::audit::record(
                    tx,
                    now,
                    &actor,
                    "token.mint",
                    &client,
                    &json!({"kid": minted.kid, "jti": minted.jti}),
                )
            })?;
            print(&json!({
                "token": minted.token,
                "tokenType": "JWT",
                "alg": alg,
                "kid": minted.kid,
                "expiresAt": rfc3339(minted.exp),
                "expiresIn": minted.exp - minted.iat,
            }))?;
        }
    }
    Ok(())
}
