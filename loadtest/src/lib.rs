//! # voxroute-loadtest: the load generator's library and the stand-in provider server
//!
//! The load generator drives N concurrent sessions against a **running** router over the
//! Twilio protocol, the native WebSocket or WebRTC, each sending speech at real time in 20 ms frames,
//! and hosts the provider at the far end in the same process, so that the router's added
//! latency is measured on one clock. [`run`] (or [`run_with_provider`]) does a whole run and
//! returns a [`Report`]; the `voxroute-loadtest` binary parses flags and calls it.
//!
//! # Layout
//!
//! - [`config`]: [`LoadConfig`] (what to run, and its bounds: at most [`MAX_SESSIONS`]
//!   sessions and an hour each of ramp and duration, loopback only) and [`LoadError`];
//! - [`signal`]: what the callers say: speech with an in-band session id and sequence
//!   markers that survive mu-law and resampling, and how frames are matched across the
//!   router (read its doc for the latency method);
//! - [`provider`]: the in-process ws-pcm provider that echoes and timestamps every frame;
//! - [`drive`]: the callers and the run's timeline (ramp, steady window, drain, hang-up);
//! - [`webrtc`]: the WebRTC caller (a `webrtc`-crate peer, SDP over `POST /v1/webrtc`, Opus
//!   both ways) and how it keeps the markers on their frames through Opus's lookahead;
//! - [`measure`]: latency histograms, the router's CPU and RSS from `/proc`, and the DSP-only
//!   cost of the same chains measured with `voxroute-codecs`;
//! - [`report`]: the [`Report`] (JSON schema and human summary);
//! - [`standin`]: a server that speaks the real wire protocols of OpenAI Realtime, Deepgram
//!   live transcription, the ElevenLabs Agents conversation and the Gemini Live API on one
//!   port, with a deterministic "model" (it echoes audio and reports transcripts of the audio's
//!   timing) and failure knobs (latency, failing connections, refused auth, rate limits,
//!   malformed frames). voxroute's tests, the load test and the docker-compose stack dial it
//!   instead of the real providers. The `voxroute-standin` binary serves it from the command
//!   line; tests host it in-process with [`standin::spawn`].
//!
//! # What callers must keep
//!
//! The stand-in never panics on client input: bad input gets what the real service would
//! send (an error event, an HTTP status or a close code), documented per protocol.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod drive;
pub mod measure;
pub mod provider;
pub mod report;
pub mod signal;
pub mod standin;
pub mod webrtc;

pub use config::{LoadConfig, LoadError, MAX_SESSIONS, Target, Transport};
pub use drive::{run, run_with_provider};
pub use provider::Provider;
pub use report::Report;
