//! `voxroute serve`: wires the configuration, the store, the supervisor and the HTTP edge
//! together, runs the hourly retention job, and shuts down without losing a record.
//!
//! # Start
//!
//! The configuration is validated (routes, providers) and the store opened (migrations run)
//! before the listener binds: a bad setup fails at once with a clear message, never on the
//! first call. Once listening, one line `voxroute listening on http://ADDR` (`https://` with
//! `--tls-cert`/`--tls-key`, see [`crate::tls`]) goes to stdout (scripts and tests read the
//! bound port from it when `--listen` asks for port 0).
//!
//! # Shutdown (SIGTERM, SIGINT)
//!
//! Readiness fails and new sessions are refused (`503` before the upgrade, `SHUTDOWN` after
//! it); live sessions may go on for `--drain-grace-secs` (default 30), then those left are
//! ended with `SHUTDOWN` (their callers get a close frame saying so); the supervisor gets [`SHUTDOWN_FLUSH_TIMEOUT`]
//! to write the queued records; whatever the store has not taken by then is written to the
//! spool file (`--spool-file`, see [`crate::spool`]); then the listener stops.
//!
//! At the next start the spool is replayed ahead of any new record, and deleted once those
//! writes have reached the store.
//!
//! # Several replicas
//!
//! On PostgreSQL the process joins the deployment ([`crate::replicas`]) before it listens: it
//! registers, hands the supervisor the session leases, and listens for admin kills; on a
//! graceful shutdown it leaves (its leases and row are deleted) just before the store closes.
//! The TTL comes from `VOXROUTE_REPLICA_TTL_SECS`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Actor;
use actix::Addr;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use voxroute_actors::session::SessionConfig;
use voxroute_actors::supervisor::{
    Drain, Flush, ListLive, Replay, StopAdmitting, Supervisor, SupervisorConfig, TakeQueued,
};

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
    let telemetry = init_logging(args.log_format)?;
    let served = actix_web::rt::System::new().block_on(serve(args));
    // After the actor system has stopped: every session span has closed, and the exporter's
    // blocking shutdown runs outside any async runtime.
    telemetry.shutdown();
    served
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines. Sessions log
/// inside a span carrying the session id, transport and provider, and at `info` when they end,
/// with counters only: never audio, transcripts, keys, payloads or full IP addresses.
///
/// With the `otel` feature and a collector named in the environment, the session spans are also
/// exported ([`crate::telemetry`]); the returned [`Telemetry`](crate::telemetry::Telemetry) is
/// shut down once serving has ended.
fn init_logging(format: crate::cli::LogFormat) -> anyhow::Result<crate::telemetry::Telemetry> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let telemetry = crate::telemetry::Telemetry::from_env()
        .context("invalid OpenTelemetry configuration (OTEL_* environment variables)")?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt_layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // RUST_LOG filters the log lines only; the exported spans have their own filter.
    let fmt_layer = match format {
        crate::cli::LogFormat::Text => fmt_layer
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        crate::cli::LogFormat::Json => fmt_layer
            .json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(fmt_layer);
    let otel_layer = telemetry.layer();
    // A second initialisation (tests running serve twice in one process) is harmless.
    if subscriber.with(otel_layer).try_init().is_ok() {
        telemetry.log_status();
    }
    Ok(telemetry)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config(cert, key)
                .context("cannot set up TLS (--tls-cert/--tls-key)")?,
        ),
        _ => None,
    };
    let config: Config = args.config.load()?;
    let router = Router::new(
        &config.providers,
        &config.routes,
        &config.default_route,
        &crate::hosted::ProviderEnv::from_env(),
    )
    .context("invalid routing configuration")?
    .with_health(config.health);
    let store: Store = args
        .database
        .open()
        .await
        .context("cannot open the session store")?;
    let replica_ttl = crate::replicas::ttl_from_env()?;
    let cluster = crate::replicas::Cluster::join(
        &store,
        replica_ttl,
        Some(args.listen).filter(|a| a.port() != 0),
    )
    .await
    .context("cannot register this replica in the store")?;
    let mut supervisor = Supervisor::new(Arc::new(store.clone()), SupervisorConfig::default());
    if let Some(cluster) = &cluster {
        tracing::info!(node_id = %cluster.node_id(), ttl_secs = cluster.ttl().as_secs(), "registered as a replica");
        supervisor =
            supervisor.with_leases(Arc::new(cluster.clone()), cluster.heartbeat_interval());
    }
    let supervisor = supervisor.start();
    if let Some(cluster) = &cluster {
        actix_web::rt::spawn(cluster.clone().listen_for_ends(supervisor.clone()));
    }
    let spool_file = args.spool_file.clone();
    let drain_grace_secs = args.drain_grace_secs;
    let replayed = replay_spool(&spool_file, &supervisor).await?;
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
        rate_limiter: crate::limits::SessionRateLimiter::new(config.limits),
        metrics: crate::metrics::Metrics::new(),
        admin_token: std::env::var("VOXROUTE_ADMIN_TOKEN")
            .ok()
            .filter(|token| !token.trim().is_empty()),
        prices: config.prices.clone(),
        cluster: cluster.clone(),
        webrtc: config.webrtc.clone(),
        webrtc_sessions: Default::default(),
    });

    let app_state = Arc::clone(&state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(Arc::clone(&app_state)))
            .configure(edge::configure)
    })
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_SESSION_GRACE.as_secs());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(args.listen, tls),
        None => server.bind(args.listen),
    }
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    for addr in server.addrs() {
        println!("voxroute listening on {scheme}://{addr}");
    }
    let server = server.run();

    actix_web::rt::spawn(retention_loop(store.clone(), config.retention));
    if replayed {
        actix_web::rt::spawn(remove_spool_once_written(
            spool_file.clone(),
            supervisor.clone(),
            Arc::clone(&state),
        ));
    }

    let handle = server.handle();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        let grace = Duration::from_secs(drain_grace_secs);
        tracing::info!(
            grace_secs = drain_grace_secs,
            "shutting down: refusing new sessions, letting live ones finish"
        );
        state.draining.store(true, Ordering::SeqCst);
        let live = supervisor.send(StopAdmitting).await.unwrap_or(0);
        if live > 0 && !wait_until_no_live_session(&supervisor, grace).await {
            let ended = supervisor.send(Drain).await.unwrap_or(0);
            tracing::info!(ended, "drain grace over: ending the remaining sessions");
            wait_until_no_live_session(&supervisor, SHUTDOWN_SESSION_GRACE).await;
        }
        let report = supervisor
            .send(Flush {
                timeout: SHUTDOWN_FLUSH_TIMEOUT,
            })
            .await;
        match report {
            Ok(report) if report.still_queued > 0 => {
                spool_remaining(&spool_file, &supervisor).await;
            }
            Ok(_) => tracing::info!("all session records written"),
            Err(_) => tracing::error!("the supervisor stopped before flushing"),
        }
        handle.stop(true).await;
    });

    server.await.context("the HTTP server failed")?;
    if let Some(cluster) = &cluster
        && let Err(error) = cluster.leave().await
    {
        tracing::warn!(%error, "cannot deregister this replica; its rows expire with the TTL");
    }
    store.close().await;
    Ok(())
}

/// Waits until no session is live, for at most `limit`. Returns whether none is.
async fn wait_until_no_live_session(supervisor: &Addr<Supervisor>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match supervisor.send(ListLive).await {
            Ok(live) if live.is_empty() => return true,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => return false,
            // The supervisor is gone: nothing is live any more.
            Err(_) => return true,
        }
    }
}

/// Queues the spool of an earlier run, if there is one. Returns whether anything was queued.
async fn replay_spool(
    path: &std::path::Path,
    supervisor: &Addr<Supervisor>,
) -> anyhow::Result<bool> {
    let contents = crate::spool::read(path).context("cannot read the spool of the last run")?;
    if let Some(copy) = &contents.bad_copy {
        tracing::error!(bad_lines = contents.bad_lines, copy = %copy.display(), "the spool had lines that do not parse; a copy of it is kept");
    }
    if contents.writes.is_empty() {
        crate::spool::remove(path)?;
        return Ok(false);
    }
    tracing::info!(writes = contents.writes.len(), file = %path.display(), "replaying session records spooled at the last shutdown");
    supervisor
        .send(Replay {
            writes: contents.writes,
        })
        .await
        .context("the supervisor stopped at start")?;
    Ok(true)
}

/// Deletes the replayed spool once the supervisor's queue has emptied (so the replayed writes,
/// queued first, have reached the store). Never while shutting down: then the queue was
/// handed to a new spool, which must stay.
async fn remove_spool_once_written(
    path: std::path::PathBuf,
    supervisor: Addr<Supervisor>,
    state: Arc<AppState>,
) {
    loop {
        let Ok(report) = supervisor
            .send(Flush {
                timeout: Duration::from_secs(60),
            })
            .await
        else {
            return;
        };
        if state.draining.load(Ordering::SeqCst) {
            return;
        }
        if report.still_queued == 0 {
            match crate::spool::remove(&path) {
                Ok(()) => tracing::info!("spooled session records written; spool removed"),
                Err(error) => tracing::error!(%error, "cannot remove the replayed spool"),
            }
            return;
        }
    }
}

/// Writes what the store has not taken to the spool, for the next start.
async fn spool_remaining(path: &std::path::Path, supervisor: &Addr<Supervisor>) {
    let Ok(writes) = supervisor.send(TakeQueued).await else {
        tracing::error!("the supervisor stopped before its queue could be spooled");
        return;
    };
    match crate::spool::write(path, &writes) {
        Ok(()) => tracing::warn!(
            writes = writes.len(),
            file = %path.display(),
            "the store did not come back: session records spooled for the next start"
        ),
        Err(error) => tracing::error!(
            %error,
            writes = writes.len(),
            "session records could not be spooled and are lost"
        ),
    }
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
