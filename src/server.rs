//! `voxroute serve`: wires the configuration, the store, the supervisor and the HTTP edge
//! together, runs the hourly retention job, and shuts down without losing a record.
//!
//! # Start
//!
//! The configuration is validated (routes, providers) and the store opened (migrations run)
//! before the listener binds: a bad setup fails at once with a clear message, never on the
//! first call. Once listening, one line `voxroute listening on http://ADDR` goes to stdout
//! (scripts and tests read the bound port from it when `--listen` asks for port 0).
//!
//! # Shutdown (SIGTERM, SIGINT)
//!
//! Readiness fails and new sessions are refused; every live session is ended with `SHUTDOWN`
//! (its caller gets a close frame saying so); the supervisor gets [`SHUTDOWN_FLUSH_TIMEOUT`]
//! to write the queued records; then the listener stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use voxroute_actors::session::SessionConfig;
use voxroute_actors::supervisor::{Drain, Flush, ListLive, Supervisor, SupervisorConfig};

use crate::cli::ServeArgs;
use crate::config::{Config, RetentionConfig};
use crate::edge::{self, AppState};
use crate::routing::Router;
use crate::store::Store;

/// How often the retention policy runs while serving.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);

/// How long live sessions get to wind down after being told to end, on shutdown.
pub const SHUTDOWN_SESSION_GRACE: Duration = Duration::from_secs(5);

/// How long queued records get to reach the store on shutdown.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the router until it is shut down. Blocks the calling thread, which must not be inside
/// an async runtime (the actor system brings its own).
///
/// # Errors
/// A configuration, store or listener that cannot be set up, with the reason.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    actix_web::rt::System::new().block_on(serve(args))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Sessions log at `info` when they
/// end, with counters only: never audio, transcripts, keys or payloads.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (tests running serve twice in one process) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config: Config = args.config.load()?;
    let router = Router::new(&config.providers, &config.routes, &config.default_route)
        .context("invalid routing configuration")?;
    let store: Store = args
        .database
        .open()
        .await
        .context("cannot open the session store")?;
    let supervisor = Supervisor::new(Arc::new(store.clone()), SupervisorConfig::default()).start();
    if args.dev && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "--dev accepts keyless callers from loopback only; callers from {} still need a key",
            args.listen.ip()
        );
    }
    let state = Arc::new(AppState {
        store: store.clone(),
        supervisor: supervisor.clone(),
        router,
        session: SessionConfig {
            idle_timeout: Duration::from_secs(config.session.idle_timeout_secs),
            ..SessionConfig::default()
        },
        dev: args.dev,
        draining: Default::default(),
    });

    let app_state = Arc::clone(&state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(Arc::clone(&app_state)))
            .configure(edge::configure)
    })
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_SESSION_GRACE.as_secs())
    .bind(args.listen)
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    for addr in server.addrs() {
        println!("voxroute listening on http://{addr}");
    }
    let server = server.run();

    actix_web::rt::spawn(retention_loop(store.clone(), config.retention));

    let handle = server.handle();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: refusing new sessions, ending live ones");
        state.draining.store(true, Ordering::SeqCst);
        let ended = supervisor.send(Drain).await.unwrap_or(0);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_SESSION_GRACE;
        while ended > 0 && tokio::time::Instant::now() < deadline {
            match supervisor.send(ListLive).await {
                Ok(live) if live.is_empty() => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
        let report = supervisor
            .send(Flush {
                timeout: SHUTDOWN_FLUSH_TIMEOUT,
            })
            .await;
        match report {
            Ok(report) if report.still_queued > 0 => tracing::error!(
                still_queued = report.still_queued,
                "shutting down with session records not written: the store did not come back"
            ),
            Ok(_) => tracing::info!("all session records written"),
            Err(_) => tracing::error!("the supervisor stopped before flushing"),
        }
        handle.stop(true).await;
    });

    server.await.context("the HTTP server failed")?;
    store.close().await;
    Ok(())
}

/// Applies the retention policy every [`RETENTION_INTERVAL`], the first time right away.
async fn retention_loop(store: Store, retention: RetentionConfig) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tick.tick().await;
        match store.run_retention(chrono::Utc::now(), &retention).await {
            Ok(report) => tracing::info!(
                deleted = report.deleted,
                anonymised = report.anonymised,
                "retention applied"
            ),
            Err(error) => tracing::warn!(%error, "retention failed; will try again next hour"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
