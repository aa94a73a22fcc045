//! # voxroute-loadtest: the load generator's library and the stand-in provider server
//!
//! # Layout
//!
//! - [`standin`]: a server that speaks the real wire protocols of OpenAI Realtime, Deepgram
//!   live transcription, the ElevenLabs Agents conversation and the Gemini Live API on one
//!   port, with a deterministic "model" (it echoes audio and reports transcripts of the audio's
//!   timing) and failure knobs (latency, failing connections, refused auth, rate limits,
//!   malformed frames). voxroute's tests, the load test and the docker-compose stack dial it
//!   instead of the real providers. The `voxroute-standin` binary serves it from the command
//!   line; tests host it in-process with [`standin::spawn`].
//!
//! The load generator itself (binary `voxroute-loadtest`) arrives with the session router.
//!
//! # What callers must keep
//!
//! The stand-in never panics on client input: bad input gets what the real service would
//! send (an error event, an HTTP status or a close code), documented per protocol.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod standin;
