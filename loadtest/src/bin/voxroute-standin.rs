//! `voxroute-standin`: serves the stand-in provider server (see
//! `voxroute_loadtest::standin`) until interrupted.
//!
//! Once bound it prints exactly one line to stdout, `voxroute-standin listening on
//! http://ADDR`, so a test that passes `--listen 127.0.0.1:0` can read the port. Logs go to
//! stderr (`RUST_LOG` filters them; default `info`). Every flag can also be set from the
//! environment (`VOXROUTE_STANDIN_LISTEN`, `VOXROUTE_STANDIN_LATENCY_MS`, …), for
//! docker-compose. Plain `GET /healthz` and `GET /stats` answer over HTTP.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use voxroute_loadtest::standin::{self, FailMode, Knobs, knobs};

/// Stand-in for the OpenAI Realtime, Deepgram, ElevenLabs Agents and Gemini Live WebSocket
/// APIs: real wire protocols, a deterministic echo model, failure knobs.
#[derive(Debug, Parser)]
#[command(name = "voxroute-standin", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(
        long,
        env = "VOXROUTE_STANDIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    listen: SocketAddr,
    /// Delay added to every server → client message, in milliseconds.
    #[arg(long, default_value_t = 0, env = "VOXROUTE_STANDIN_LATENCY_MS")]
    latency_ms: u64,
    /// Fail every connection this many seconds after its upgrade (fractions allowed).
    #[arg(long, env = "VOXROUTE_STANDIN_FAIL_AFTER_SECS")]
    fail_after_secs: Option<f64>,
    /// How a connection fails: `close` (close frame 1011) or `drop` (TCP reset).
    #[arg(long, default_value = "close", value_parser = parse_fail_mode, env = "VOXROUTE_STANDIN_FAIL_MODE")]
    fail_mode: FailMode,
    /// Answer every upgrade with HTTP 401.
    #[arg(long, env = "VOXROUTE_STANDIN_REFUSE_AUTH")]
    refuse_auth: bool,
    /// Replace every Nth server JSON message of a connection with malformed JSON.
    #[arg(long, env = "VOXROUTE_STANDIN_MALFORMED_EVERY")]
    malformed_every: Option<u64>,
    /// Answer every upgrade with HTTP 429.
    #[arg(long, env = "VOXROUTE_STANDIN_RATE_LIMIT")]
    rate_limit: bool,
    /// Deepgram: close 1011 NET-0001 after this long without audio or KeepAlive, in ms.
    #[arg(long, default_value_t = knobs::DEFAULT_IDLE_TIMEOUT_MS, env = "VOXROUTE_STANDIN_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: u64,
    /// ElevenLabs: interval between `ping` events, in ms (0: none).
    #[arg(long, default_value_t = knobs::DEFAULT_PING_INTERVAL_MS, env = "VOXROUTE_STANDIN_PING_INTERVAL_MS")]
    ping_interval_ms: u64,
    /// Gemini: send server messages as JSON in binary frames instead of text frames.
    #[arg(long, env = "VOXROUTE_STANDIN_GEMINI_BINARY_FRAMES")]
    gemini_binary_frames: bool,
    /// Gemini: send `goAway` this many seconds after `setupComplete` (clients resume on a new
    /// connection).
    #[arg(long, env = "VOXROUTE_STANDIN_GEMINI_GO_AWAY_AFTER_SECS")]
    gemini_go_away_after_secs: Option<f64>,
}

fn parse_fail_mode(text: &str) -> Result<FailMode, String> {
    text.parse()
        .map_err(|error: standin::KnobError| error.to_string())
}

impl Cli {
    fn knobs(&self) -> Knobs {
        Knobs {
            latency_ms: self.latency_ms,
            fail_after_secs: self.fail_after_secs,
            fail_mode: self.fail_mode,
            refuse_auth: self.refuse_auth,
            malformed_every: self.malformed_every,
            rate_limit: self.rate_limit,
            idle_timeout_ms: self.idle_timeout_ms,
            ping_interval_ms: self.ping_interval_ms,
            gemini_binary_frames: self.gemini_binary_frames,
            gemini_go_away_after_secs: self.gemini_go_away_after_secs,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let knobs = cli.knobs();
    tracing::info!(?knobs, "starting");
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "voxroute-standin listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    tokio::select! {
        result = standin::serve(listener, knobs) => result.context("serving")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
