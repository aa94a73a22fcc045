//! The session record: what voxroute keeps about a session, and nothing more (no audio, no
//! transcript, no payload). Written in two steps, [`SessionStart`] when the session is
//! admitted (so that a crash still leaves a trace) and [`SessionEnd`] when it ends.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::close_reason::SessionCloseReason;

/// How the caller's audio reaches voxroute; stored in `sessions.transport`. Its serde form is
/// [`as_str`](Self::as_str).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// A carrier's media-stream WebSocket (Twilio, Telnyx, Vonage, Plivo).
    Telephony,
    /// A WebSocket protocol for applications: voxroute's native one (`/v1/ws`), OpenAI
    /// Realtime (`/v1/realtime`) or Deepgram live transcription (`/v1/listen`).
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One provider's share of a session's audio: what the caller sent while that provider was
/// the session's provider, and what it sent back. A session that failed over has one per
/// provider segment, in order; their sums are the session's `audio_in_ms` and `audio_out_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderUsage {
    /// The provider's name, as in `sessions.provider` and `providers_tried`.
    pub provider: String,
    /// Caller audio counted for this provider, in milliseconds: forwarded to it, or held for
    /// it while it connected after a failover. Replayed audio is counted once, for the
    /// provider it was first counted for.
    pub audio_in_ms: i64,
    /// Audio of this provider sent to the caller, in milliseconds.
    pub audio_out_ms: i64,
}

/// The fields that complete a record when its session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The audio per provider segment, in order (stored in `session_usage`, summed per
    /// provider). Empty for sessions that never reached a provider, and in spool lines
    /// written before metering existed (hence the serde default).
    #[serde(default)]
    pub usage: Vec<ProviderUsage>,
}

/// One write of a record: the two steps above, in the order the store must take them. The
/// supervisor queues these; on shutdown with the store away they are spooled to a file as one
/// JSON object per line (`{"start": {...}}` or `{"end": {...}}`) and replayed at the next
/// start. Both writes are idempotent in the store, so a replay of a write that did land is
/// harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordWrite {
    /// Insert the record (ignored if it exists).
    Start(SessionStart),
    /// Complete the record.
    End(SessionEnd),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_serde_form_is_the_stored_string() {
        for transport in [
            Transport::Telephony,
            Transport::WebSocket,
            Transport::WebRtc,
        ] {
            let json = serde_json::to_string(&transport).unwrap();
            assert_eq!(json, format!("\"{}\"", transport.as_str()));
        }
    }

    #[test]
    fn a_write_survives_a_json_line() {
        let end = RecordWrite::End(SessionEnd {
            id: Uuid::now_v7(),
            ended_at: Utc::now(),
            duration_ms: 1_234,
            close_reason: SessionCloseReason::ClientHangup,
            provider: "echo".into(),
            providers_tried: vec!["echo".into()],
            audio_in_ms: 1_000,
            audio_out_ms: 980,
            failovers: 0,
            first_response_ms: Some(21),
            usage: vec![ProviderUsage {
                provider: "echo".into(),
                audio_in_ms: 1_000,
                audio_out_ms: 980,
            }],
        });
        let line = serde_json::to_string(&end).unwrap();
        assert!(line.starts_with(r#"{"end":{"#), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<RecordWrite>(&line).unwrap(), end);
    }

    /// A spool line written before metering existed has no `usage`: it still replays, with
    /// no usage.
    #[test]
    fn an_end_without_usage_still_parses() {
        let line = r#"{"end":{"id":"0193a0a0-0000-7000-8000-000000000001","ended_at":"2026-12-01T10:00:00Z","duration_ms":2000,"close_reason":"CLIENT_HANGUP","provider":"echo","providers_tried":["echo"],"audio_in_ms":1980,"audio_out_ms":1960,"failovers":0,"first_response_ms":12}}"#;
        match serde_json::from_str::<RecordWrite>(line).unwrap() {
            RecordWrite::End(end) => {
                assert!(end.usage.is_empty());
                assert_eq!(end.audio_in_ms, 1_980);
            }
            other => panic!("expected an end, got {other:?}"),
        }
    }
}
