//! The command line: every command and flag that `../shared/DESIGN.md` names, parsed with
//! clap, and the commands other than `serve` (keys, sessions, retention), which are thin
//! wrappers over [`crate::store`].
//!
//! Flags that have an environment variable in the contract read it too. Flags shared by
//! several commands are defined once ([`DatabaseArg`], [`ConfigArg`]) and flattened in.
//!
//! Output contract (scripts rely on it): `keys create` prints the new key alone on the last
//! line of stdout; `sessions list --json` prints a JSON array of objects named by the
//! `sessions` columns. Errors go to stderr via the caller, with a non-zero exit.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::{Config, ConfigError};
use crate::store::{QueryError, Store, StoreOpenError};

/// `voxroute`: a self-hosted real-time voice session router.
#[derive(Debug, Parser)]
#[command(name = "voxroute", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router.
    Serve(ServeArgs),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect session records.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Apply the retention policy.
    #[command(subcommand)]
    Retention(RetentionCommand),
}

/// `--database-url`, shared by every command that opens the store.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArg {
    /// Session store: `sqlite://...` (created on first start) or `postgres://...`.
    // The value may hold a password: never show it in `--help`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://voxroute.db",
        hide_env_values = true
    )]
    pub database_url: String,
}

impl DatabaseArg {
    /// Opens the store and runs its migrations.
    ///
    /// # Errors
    ///
    /// See [`Store::open`].
    pub async fn open(&self) -> Result<Store, StoreOpenError> {
        Store::open(&self.database_url).await
    }
}

/// `--config`, shared by every command that reads the configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Optional TOML file with routes, limits, prices and retention.
    #[arg(long, env = "VOXROUTE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the file, or the defaults when none was given.
    ///
    /// # Errors
    ///
    /// See [`Config::load`].
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref())
    }
}

/// Flags of `voxroute serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VOXROUTE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
    /// `--config`/`VOXROUTE_CONFIG`.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Accept connections without an API key, from loopback only (for the demo).
    #[arg(long)]
    pub dev: bool,
    /// PEM certificate chain: serve HTTPS/WSS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where session records that the store could not take by shutdown are kept until the
    /// next start replays them (relative to the working directory).
    #[arg(long, env = "VOXROUTE_SPOOL_FILE", default_value = crate::spool::DEFAULT_SPOOL_FILE)]
    pub spool_file: PathBuf,
    /// On SIGTERM/SIGINT, how long live sessions may go on (new ones are refused) before they
    /// are ended with `SHUTDOWN`, in seconds.
    #[arg(long, env = "VOXROUTE_DRAIN_GRACE_SECS", default_value_t = 30)]
    pub drain_grace_secs: u64,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, env = "VOXROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line, with the session span's fields.
    Json,
}

/// `voxroute keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once, alone on the last line of stdout.
    Create(KeysCreateArgs),
    /// List every key (id, name, prefix, dates, limit; never the key or its hash).
    List(KeysListArgs),
    /// Revoke a key: it stops authenticating at once.
    Revoke(KeysRevokeArgs),
}

/// Flags of `voxroute keys create`.
#[derive(Debug, clap::Args)]
pub struct KeysCreateArgs {
    /// A label for the key (who or what uses it).
    #[arg(long)]
    pub name: String,
    /// Concurrent live sessions allowed for this key, across replicas (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
    pub max_sessions: Option<u32>,
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
}

/// Flags of `voxroute keys list`.
#[derive(Debug, clap::Args)]
pub struct KeysListArgs {
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
}

/// Flags of `voxroute keys revoke`.
#[derive(Debug, clap::Args)]
pub struct KeysRevokeArgs {
    /// The key's id, as shown by `voxroute keys list`.
    pub id: Uuid,
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
}

/// `voxroute sessions ...`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Recent session records, newest first.
    List(SessionsListArgs),
}

/// Flags of `voxroute sessions list`.
#[derive(Debug, clap::Args)]
pub struct SessionsListArgs {
    /// How many records to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of objects with the `sessions` column names instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
}

/// `voxroute retention ...`.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Apply the retention policy now (`voxroute serve` also applies it hourly).
    Run(RetentionRunArgs),
}

/// Flags of `voxroute retention run`.
#[derive(Debug, clap::Args)]
pub struct RetentionRunArgs {
    /// `--database-url`/`DATABASE_URL`.
    #[command(flatten)]
    pub database: DatabaseArg,
    /// `--config`/`VOXROUTE_CONFIG`: where `[retention]` comes from.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Why a command other than `serve` failed. The message is meant for the operator's terminal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] StoreOpenError),
    /// A store call failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The configuration file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `keys revoke` named an id that no key has.
    #[error("no API key with id {0} (see `voxroute keys list`)")]
    UnknownKey(Uuid),
    /// Writing to stdout failed (e.g. the pipe was closed).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The JSON output could not be written.
    #[error("cannot write the JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs `voxroute keys ...`, writing to `out`.
///
/// # Errors
///
/// [`CliError`]; for `revoke`, [`CliError::UnknownKey`] when no key has the id (revoking a key
/// that is already revoked succeeds and says so).
pub async fn run_keys(command: KeysCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        KeysCommand::Create(args) => {
            let store = args.database.open().await?;
            let (key, plaintext) = store.create_key(&args.name, args.max_sessions).await?;
            writeln!(out, "id:           {}", key.id)?;
            writeln!(out, "name:         {}", key.name)?;
            writeln!(out, "prefix:       {}", key.prefix)?;
            writeln!(out, "max_sessions: {}", limit_text(key.max_sessions))?;
            writeln!(
                out,
                "The key follows, on the last line. It is shown only this once: store it now."
            )?;
            writeln!(out, "{plaintext}")?;
        }
        KeysCommand::List(args) => {
            let store = args.database.open().await?;
            let keys = store.list_keys().await?;
            if keys.is_empty() {
                writeln!(
                    out,
                    "no API keys yet: create one with `voxroute keys create --name NAME`"
                )?;
                return Ok(());
            }
            let rows = keys
                .into_iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        k.name,
                        k.prefix,
                        time_text(k.created_at),
                        k.revoked_at.map_or_else(|| "-".to_owned(), time_text),
                        limit_text(k.max_sessions),
                    ]
                })
                .collect();
            write_table(
                out,
                &[
                    "ID",
                    "NAME",
                    "PREFIX",
                    "CREATED_AT",
                    "REVOKED_AT",
                    "MAX_SESSIONS",
                ],
                rows,
            )?;
        }
        KeysCommand::Revoke(args) => {
            let store = args.database.open().await?;
            if store.revoke_key(args.id).await? {
                writeln!(out, "revoked API key {}", args.id)?;
            } else {
                match store.get_key(args.id).await? {
                    None => return Err(CliError::UnknownKey(args.id)),
                    Some(key) => match key.revoked_at {
                        Some(at) => writeln!(
                            out,
                            "API key {} was already revoked at {}",
                            args.id,
                            time_text(at)
                        )?,
                        // Only a revocation racing with ours gets here.
                        None => writeln!(out, "revoked API key {}", args.id)?,
                    },
                }
            }
        }
    }
    Ok(())
}

/// Runs `voxroute sessions ...`, writing to `out`.
///
/// # Errors
///
/// [`CliError`].
pub async fn run_sessions(command: SessionsCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        SessionsCommand::List(args) => {
            let store = args.database.open().await?;
            let sessions = store.list_sessions(args.limit).await?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &sessions)?;
                writeln!(out)?;
                return Ok(());
            }
            if sessions.is_empty() {
                writeln!(out, "no session records")?;
                return Ok(());
            }
            let rows = sessions
                .into_iter()
                .map(|s| {
                    vec![
                        time_text(s.started_at),
                        s.id.to_string(),
                        s.endpoint,
                        s.transport,
                        s.provider,
                        s.duration_ms
                            .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                        s.close_reason.unwrap_or_else(|| "-".to_owned()),
                        s.failovers.to_string(),
                        s.client_ip.unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            write_table(
                out,
                &[
                    "STARTED_AT",
                    "ID",
                    "ENDPOINT",
                    "TRANSPORT",
                    "PROVIDER",
                    "DURATION_MS",
                    "CLOSE_REASON",
                    "FAILOVERS",
                    "CLIENT_IP",
                ],
                rows,
            )?;
        }
    }
    Ok(())
}

/// Runs `voxroute retention ...`, writing to `out`.
///
/// # Errors
///
/// [`CliError`].
pub async fn run_retention(command: RetentionCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        RetentionCommand::Run(args) => {
            // The configuration first: a typo in it must not cost a database round trip.
            let policy = args.config.load()?.retention;
            let store = args.database.open().await?;
            let now = Utc::now();
            let report = store.run_retention(now, &policy).await?;
            writeln!(
                out,
                "deleted {} session record(s) that started before {} (delete_after_days = {})",
                report.deleted,
                cutoff_text(now, policy.delete_after_days),
                policy.delete_after_days
            )?;
            writeln!(
                out,
                "anonymised {} client IP(s) of sessions that started before {} \
                 (anonymise_ip_after_days = {})",
                report.anonymised,
                cutoff_text(now, policy.anonymise_ip_after_days),
                policy.anonymise_ip_after_days
            )?;
        }
    }
    Ok(())
}

/// A timestamp for humans: RFC 3339, whole seconds, `Z`.
fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn cutoff_text(now: DateTime<Utc>, days: u32) -> String {
    TimeDelta::try_days(i64::from(days))
        .and_then(|window| now.checked_sub_signed(window))
        .map_or_else(|| "the beginning of time".to_owned(), time_text)
}

fn limit_text(max_sessions: Option<u32>) -> String {
    max_sessions.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Writes `rows` under `headers`, columns padded to their widest cell.
fn write_table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in &rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}
