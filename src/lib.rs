//! # voxroute: the app
//!
//! The `voxroute` package is the server a user runs: the command line, configuration, the
//! HTTP/WebSocket/WebRTC edges, authentication, routing, the SQL store and metrics. It wires
//! the DSP of [`voxroute_codecs`] and the actors of [`voxroute_actors`] to the outside world.
//!
//! # Layout
//!
//! - [`admin`]: the admin API (`/admin/...`, bearer token): live sessions, history, keys, GDPR.
//! - [`cli`]: the command-line contract of `../shared/DESIGN.md` (`serve`, `keys`, `sessions`,
//!   `retention`) and the commands other than `serve`.
//! - [`config`]: the TOML configuration file (`--config`): sessions, providers, routes, prices,
//!   retention.
//! - [`limits`]: the per-key token bucket of new sessions.
//! - [`keys`]: API keys: generation, format check, the stored prefix and SHA-256 hash.
//! - [`store`]: the SQL store (SQLite or PostgreSQL): migrations, API keys, session records
//!   (it implements the actors' `SessionStore`) and retention.
//! - [`hosted`]: the hosted providers (OpenAI, Deepgram, ElevenLabs, Gemini): environment,
//!   endpoints, rates, settings.
//! - [`routing`]: the configured providers and routes, and which provider answers a caller
//!   (route policies, the order of failover).
//! - [`health`]: provider health shared by all sessions: the circuit breaker and smoothed
//!   latencies the routes order their providers by.
//! - [`edge`]: the HTTP edge: the caller endpoints (the carriers, native, OpenAI Realtime,
//!   Deepgram listen, WebRTC), their authentication, the per-session actors, health checks.
//! - [`replicas`]: several replicas on one PostgreSQL: registry, session leases (per-key limits
//!   across replicas), the cross-replica admin kill (`LISTEN`/`NOTIFY`).
//! - [`server`]: `voxroute serve`: start-up, the retention job, graceful shutdown.
//! - [`metrics`]: the Prometheus metrics of `GET /metrics`.
//! - [`telemetry`]: OpenTelemetry export of the session spans (cargo feature `otel`; without
//!   it, a no-op that warns when a collector is named).
//! - [`tls`]: the rustls configuration of `--tls-cert`/`--tls-key`.
//! - [`spool`]: the file that keeps session records the store could not take by shutdown.
//! - [`usage`]: metering for callers: the price table and `GET /v1/usage` (a key's own usage
//!   per day and provider, with an estimated cost).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod edge;
pub mod health;
pub mod hosted;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod replicas;
pub mod routing;
pub mod server;
pub mod spool;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
