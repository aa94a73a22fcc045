//! The session record: what voxroute keeps about a session, and nothing more (no audio, no
//! transcript, no payload). Written in two steps, [`SessionStart`] when the session is
//! admitted (so that a crash still leaves a trace) and [`SessionEnd`] when it ends.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::close_reason::SessionCloseReason;

/// How the caller's audio reaches voxroute; stored in `sessions.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// A carrier's media-stream WebSocket (Twilio, Telnyx, Vonage).
    Telephony,
    /// voxroute's native WebSocket protocol (`/v1/ws`).
    WebSocket,
    /// WebRTC (`/v1/webrtc`).
    WebRtc,
}

impl Transport {
    /// The stable string stored in `sessions.transport`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Telephony => "telephony",
            Transport::WebSocket => "websocket",
            Transport::WebRtc => "webrtc",
        }
    }
}

/// The record written when a session is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    /// Session id, a UUID v7 (time-ordered).
    pub id: Uuid,
    /// The caller's API key; `None` for `--dev` keyless sessions and failed authentication.
    pub api_key_id: Option<Uuid>,
    /// The endpoint path the caller used, e.g. `/v1/telephony/twilio`.
    pub endpoint: String,
    /// How the audio arrives.
    pub transport: Transport,
    /// The route the caller asked for, if it named one.
    pub route: Option<String>,
    /// The provider the session starts on.
    pub provider: String,
    /// The caller's address as seen by voxroute (anonymised by retention later).
    pub client_ip: Option<IpAddr>,
    /// When the connection was accepted.
    pub started_at: DateTime<Utc>,
}

/// The fields that complete a record when its session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// Which session.
    pub id: Uuid,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// Wall time from accept to end, in milliseconds.
    pub duration_ms: i64,
    /// Why it ended.
    pub close_reason: SessionCloseReason,
    /// The provider last used.
    pub provider: String,
    /// Every provider tried, in order (the first is the one the session started on).
    pub providers_tried: Vec<String>,
    /// Caller audio forwarded to providers, in milliseconds.
    pub audio_in_ms: i64,
    /// Provider audio sent back to the caller, in milliseconds.
    pub audio_out_ms: i64,
    /// How many times the session moved to another provider.
    pub failovers: i32,
    /// From the first caller audio to the first provider response, in milliseconds.
    pub first_response_ms: Option<i64>,
}
