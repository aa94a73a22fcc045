//! One live session, as a sans-IO state machine: [`SessionCore`].
//!
//! The core owns everything a session keeps while it is live: the caller protocol's codec
//! (Twilio or native), the DSP chains of `voxroute-codecs`, the framing of provider audio, the
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
//!   ── Provider(event) ────────────►  egress chain, barge-in, transcripts
//!   ◄── ToClientText / Binary ──────
//!   ◄── Close { outcome } ──────────  the driver closes the socket, stops the provider,
//!                                     and sends the outcome to the supervisor
//! ```
//!
//! When the core emits [`Output::Close`] it has already dropped its audio buffers; it emits
//! nothing after that.

mod core;

pub use self::core::{
    Admission, AuthorizeRequest, ClientProtocol, IDLE_TIMEOUT_DEFAULT, Input,
    MAX_CONSECUTIVE_BAD_FRAMES, Output, START_TIMEOUT, SessionConfig, SessionCore, SessionOutcome,
};

#[cfg(test)]
mod tests;
