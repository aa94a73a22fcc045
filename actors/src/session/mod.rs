//! One live session, as a sans-IO state machine: [`SessionCore`].
//!
//! The core owns everything a session keeps while it is live: the caller protocol's codec
//! (native, OpenAI Realtime, Deepgram live transcription, or a carrier's, Twilio's included,
//! through [`CarrierCodec`](crate::protocol::carrier::CarrierCodec), with its reordering), the
//! DSP chains of `voxroute-codecs`, the framing of provider audio, the
//! barge-in flush, the idle timer and the counters that end up in the session record. It does
//! no I/O and reads no clock: the driver (the app's WebSocket actor) feeds it inputs with the
//! current time and carries out its outputs.
//!
//! # The rule (as in str0m)
//!
//! After every [`SessionCore::handle_input`], call [`SessionCore::poll_output`] until it
//! returns [`Output::Timeout`]; then call `handle_input(now, Input::Timeout)` no later than
//! that instant. Outputs must be carried out in the order they come.
//!
//! ```text
//! driver                           SessionCore
//!   ── ClientText / ClientBinary ──►  decode, authorize, ingress chain
//!   ◄── Authorize ──────────────────  (the driver checks the key, asks the supervisor)
//!   ── Admitted / Refused ─────────►
//!   ◄── StartProvider, ToProvider ──  20 ms frames at the provider's rate
//!   ── Provider(event) ────────────►  egress chain, barge-in, transcripts, failover
//!   ◄── StartProvider (next) ───────  on a provider failure, with fallbacks left
//!   ◄── ToClientText / Binary ──────
//!   ◄── Close { outcome } ──────────  the driver closes the socket, stops the provider,
//!                                     and sends the outcome to the supervisor
//! ```
//!
//! When the core emits [`Output::Close`] it has already dropped its audio buffers; it emits
//! nothing after that.
//!
//! # Failover
//!
//! [`Admission::fallbacks`] lists the route's other providers, in order. When the provider
//! fails (`Error { fatal: true }` or `Closed { error: true }`: refused, timed out, dropped), the
//! core does not end the session: it emits [`Output::StartProvider`] with the next one (the
//! driver replaces the connection and from then on feeds only the new connection's events),
//! rebuilds the codec chains if the rates differ, drops the stale outbound audio (a `clear` to
//! the caller), tells a native caller with `provider.switched` (an OpenAI Realtime caller with
//! `voxroute.provider_switched`; carriers and Deepgram callers have no event channel),
//! and counts the failover in the record. Caller audio is recorded all along in a ring of the
//! last [`REPLAY_MS`] (allocated once); while the new provider connects, caller audio only
//! goes into the ring, and when it is `Ready` the whole ring is replayed to it, oldest first,
//! so a speech-to-text provider loses no speech. The replay goes out in bursts (20 frames
//! every 10 ms, through [`Output::Timeout`]) because the provider connection's writer queue
//! is bounded and drops what does not fit; caller audio keeps queueing behind it until it is
//! out. Key presses during the switch are dropped (there is no conversation to press them
//! in). The gap from the failure to the new provider's first audio or transcript is logged
//! and reported in [`SessionOutcome::failover_gap_ms`].
//! With no provider left the session ends with `PROVIDER_ERROR`; a provider that closes
//! normally (`Closed { error: false }`) ends it with `PROVIDER_CLOSED`, without failover.
//!
//! A provider that announces it will close (`GoAway`, Gemini's connection limit) is not a
//! failure: the core emits [`Output::ResumeProvider`] for a new connection to the same
//! provider that resumes the conversation, holds caller audio for it as on a failover, and
//! counts a reconnect, not a failover. The old connection's answers still reach the caller
//! until the new one answers (make before break: audio already in flight is not cut).
//!
//! # Metering
//!
//! [`SessionOutcome::usage`] splits the session's audio counters by provider segment: the
//! provider the session started on, then one segment per failover. Caller audio is counted
//! once, for the provider it was forwarded to (or held for while that provider connected);
//! replayed audio is not counted again. The split costs nothing per frame: a segment is
//! closed from the frame counters at each failover and at the end, so the segments always add
//! up to `audio_in_ms` and `audio_out_ms`.

mod carrier;
mod core;
mod replay;

pub use self::core::{
    Admission, AuthorizeRequest, CLOSE_STREAM_FLUSH_TIMEOUT, ClientProtocol, IDLE_TIMEOUT_DEFAULT,
    Input, LISTEN_IDLE_TIMEOUT, MAX_CONSECUTIVE_BAD_FRAMES, Output, REPLAY_MS, START_TIMEOUT,
    SessionConfig, SessionCore, SessionOutcome,
};

#[cfg(test)]
mod listen_tests;
#[cfg(test)]
mod tests;
