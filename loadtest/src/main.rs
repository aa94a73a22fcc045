//! `voxroute-loadtest`: N concurrent sessions against a running voxroute router, with the
//! provider hosted in this process; prints a summary and optionally writes a JSON report.
//!
//! The router must route the sessions' provider (default `loadtest`) to this process's
//! ws-pcm provider: `--print-config` prints the TOML to give it (`voxroute serve --config`).
//! The logic is the library's ([`voxroute_loadtest::run`]); this file parses flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;
use voxroute_loadtest::config::{DEFAULT_PROVIDER_ADDR, DEFAULT_PROVIDER_NAME};
use voxroute_loadtest::{LoadConfig, Provider, Target, Transport};

/// Drives N concurrent voice sessions against a running voxroute router (loopback only) and
/// reports added latency, frame loss, set-up time and the router's CPU and memory per session.
#[derive(Debug, Parser)]
#[command(name = "voxroute-loadtest", version)]
struct Cli {
    /// The router's base URL, `ws://HOST:PORT` on loopback (the endpoint path is added).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    router: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 10)]
    sessions: u32,
    /// Sessions start evenly spread over this many seconds.
    #[arg(long, default_value_t = 1.0)]
    ramp_secs: f64,
    /// After the ramp, every session streams for this many seconds more (the steady window).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Caller protocol.
    #[arg(long, value_enum, default_value_t = TransportArg::Twilio)]
    transport: TransportArg,
    /// The callers' API key (omit for a router started with `--dev`).
    #[arg(long, env = "VOXROUTE_LOADTEST_API_KEY")]
    api_key: Option<String>,
    /// Ask for this route.
    #[arg(long, conflicts_with = "provider")]
    route: Option<String>,
    /// Ask for this provider (default `loadtest`, as `--print-config` defines it).
    #[arg(long)]
    provider: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The router's process id: its CPU time and memory are read from /proc.
    #[arg(long)]
    router_pid: Option<u32>,
    /// Where this process's ws-pcm provider listens (loopback).
    #[arg(long, default_value = DEFAULT_PROVIDER_ADDR)]
    provider_listen: SocketAddr,
    /// 8 kHz mono 16-bit WAV to send (default: the repository's speech fixture; synthetic
    /// speech if it cannot be read).
    #[arg(long)]
    speech: Option<PathBuf>,
    /// Print the router configuration that routes to this process's provider, and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Twilio,
    Native,
    #[value(name = "webrtc")]
    WebRtc,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let provider_name = cli
        .provider
        .clone()
        .unwrap_or_else(|| DEFAULT_PROVIDER_NAME.to_owned());
    if cli.print_config {
        let url = format!("ws://{}/loadtest", cli.provider_listen);
        print!(
            "{}",
            voxroute_loadtest::provider::router_config(&url, &provider_name, cli.sessions)
        );
        return Ok(());
    }
    let transport = match cli.transport {
        TransportArg::Twilio => Transport::Twilio,
        TransportArg::Native => Transport::Native,
        TransportArg::WebRtc => Transport::WebRtc,
    };
    let mut config = LoadConfig::new(cli.router.clone(), transport, cli.sessions);
    config.ramp = seconds(cli.ramp_secs, "--ramp-secs")?;
    config.duration = seconds(cli.duration_secs, "--duration-secs")?;
    config.api_key = cli.api_key.clone();
    config.target = match &cli.route {
        Some(route) => Target::Route(route.clone()),
        None => Target::Provider(provider_name.clone()),
    };
    config.provider_addr = cli.provider_listen;
    config.router_pid = cli.router_pid;
    if let Some(speech) = &cli.speech {
        config.speech_wav = Some(speech.clone());
    }
    config.validate()?;

    let provider = Provider::bind(config.provider_addr).await?;
    eprintln!(
        "provider listening on {}; the router must define it, e.g. (voxroute serve --config):\n\n{}",
        provider.url(),
        provider.router_config(&provider_name, cli.sessions)
    );
    let report = voxroute_loadtest::run_with_provider(config, &provider).await?;
    print!("{}", report.summary());
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        println!("JSON report written to {}", path.display());
    }
    if report.sessions.provider_connections == 0 {
        anyhow::bail!(
            "the provider received no connection: start the router with the configuration above \
             (--print-config prints it)"
        );
    }
    Ok(())
}
