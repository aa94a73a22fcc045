//! # voxroute-actors: the live side of a voice session
//!
//! Everything that runs while a call is live, except the HTTP edge:
//!
//! - [`close_reason`]: why a session ended, a closed set of stable strings;
//! - [`record`]: the session record (metadata only: never audio or text);
//! - [`store`]: [`store::SessionStore`], the trait the supervisor writes records through
//!   (the app implements it with SQL), and an in-memory store for tests;
//! - [`provider`]: the provider interface (commands in, events out), its sans-IO adapters and
//!   the actor that owns each upstream connection;
//! - [`protocol`]: the caller-side wire protocols (Twilio Media Streams, native `/v1/ws`),
//!   sans-IO codecs that turn frames into typed messages and back;
//! - [`session`]: [`session::SessionCore`], one live session as a sans-IO state machine
//!   (caller protocol, codec chains, framing, barge-in, idle timer, counters);
//! - [`supervisor`]: the per-process [`supervisor::Supervisor`]: live sessions, per-key limits,
//!   and the queued, retried record writes.
//!
//! What it deliberately does not know: HTTP routing and WebSocket upgrades (actix-web) and SQL
//! (sqlx) belong to the app crate; pure DSP belongs to `voxroute-codecs`. The dependency
//! direction is codecs → actors → app.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod close_reason;
pub mod jitter;
pub mod protocol;
pub mod provider;
pub mod record;
pub mod session;
pub mod store;
pub mod supervisor;

pub use voxroute_codecs as codecs;
