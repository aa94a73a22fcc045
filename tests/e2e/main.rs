//! End-to-end tests of the voxroute app.
//!
//! This binary holds every end-to-end test of the app, one module per behaviour, so that the
//! workspace links a single test executable for them rather than one per file. Tests that need
//! a database read `DATABASE_URL`, which `scripts/test` points at a PostgreSQL server.
//!
//! - [`compose`]: the local stack (`docker-compose.yml` + `Dockerfile`) is wired as the README
//!   says, checked statically because CI has no Docker engine.
//! - [`otel`] (only with `--features otel`): the session spans reach an OTLP/HTTP collector.

mod admin;
mod bad_input;
mod browser;
mod carriers;
mod cli;
mod compose;
mod data_promises;
mod failover;
mod harness;
mod listen;
mod loadtest;
mod operations;
#[cfg(feature = "otel")]
mod otel;
mod providers;
mod realtime;
mod replicas;
mod sessions;
mod store;
mod tls;
mod usage;
mod webrtc;
