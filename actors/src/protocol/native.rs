//! voxroute's native protocol, served on `GET /v1/ws`: the reference, and its sans-IO codec.
//!
//! This module owns the wire format of `/v1/ws` (this doc is its reference): a [`NativeCodec`]
//! turns the client's text frames into [`NativeInbound`] messages, checks its binary frames,
//! and writes the server's [`ServerEvent`]s. It does no I/O.
//!
//! # The protocol
//!
//! One WebSocket per session. Text frames carry JSON objects with a `"type"`; binary frames
//! carry audio. Unknown fields are ignored (so clients can send newer fields to older servers);
//! an unknown `type` is answered with an `error` event and otherwise ignored.
//!
//! ## Client → server, text
//!
//! **`start`** (first, once): the audio format and what to talk to.
//!
//! | field | required | meaning |
//! | --- | --- | --- |
//! | `codec` | yes | `"pcm16"` (16-bit little-endian), `"mulaw"`, `"alaw"` (G.711) or `"opus"` |
//! | `sample_rate` | yes | Hz: 8000 for G.711, 48000 for Opus, 8000–96000 (a multiple of 50) for PCM16 |
//! | `channels` | no | `1` (default) or `2` (interleaved; mixed down to mono on the way in) |
//! | `provider` | no | one provider by name (`"echo"`, `"openai"`, ...) |
//! | `route` | no | a configured route by name; at most one of `provider` and `route`, neither means the default route |
//! | `api_key` | no | the caller's key, for clients that cannot send `Authorization: Bearer` |
//!
//! ```json
//! {"type":"start","codec":"pcm16","sample_rate":16000}
//! {"type":"start","codec":"pcm16","sample_rate":16000,"channels":2,"route":"support"}
//! {"type":"start","codec":"mulaw","sample_rate":8000,"provider":"deepgram","api_key":"vxr_…"}
//! {"type":"start","codec":"opus","sample_rate":48000}
//! ```
//!
//! A `start` that cannot be used (a required field missing or of the wrong type, an unknown
//! codec, a codec at a rate it does not run at such as `mulaw` at 16000, both `provider` and
//! `route`) ends the session: the server sends an `error` event, then `session.ended`.
//!
//! **`stop`**: the caller hangs up; the server ends the session (`CLIENT_HANGUP`).
//! **`clear`**: client-side barge-in; the server drops the audio it has queued for the client.
//!
//! ```json
//! {"type":"stop"}
//! {"type":"clear"}
//! ```
//!
//! ## Client → server, binary
//!
//! Audio in the `start`'s codec, rate and channels, any duration up to 120 ms per frame (PCM16:
//! whole samples; Opus: one packet per frame). Audio before `start` is refused.
//!
//! ## Server → client, binary
//!
//! Audio in the same format as the client's `start`, 20 ms per frame.
//!
//! ## Server → client, text (events)
//!
//! ```json
//! {"type":"session.started","session_id":"0190b5e4-8f1c-7a3e-9d2b-5c4f6e7a8b9c","provider":"echo","codec":"pcm16","sample_rate":16000,"channels":1}
//! {"type":"transcript","text":"Hello there.","final":true}
//! {"type":"provider.switched","from":"openai","to":"deepgram","reason":"PROVIDER_ERROR"}
//! {"type":"clear"}
//! {"type":"session.ended","reason":"CLIENT_HANGUP"}
//! {"type":"error","code":"bad_audio_format","message":"unsupported audio format: Mulaw is not supported at 16000 Hz"}
//! ```
//!
//! - `session.started`: the session is live and routed; `session_id` is the id of its record.
//! - `transcript`: text the provider recognised or said; `final: false` may still be revised.
//! - `provider.switched`: failover; the call goes on with `to`.
//! - `clear`: barge-in: the caller started speaking over the reply. Drop the audio received
//!   and not yet played; what follows is a new reply. (Not in DESIGN.md's list: a native
//!   client has no other way to learn that its playback queue is stale.)
//! - `session.ended`: the last event, with the record's close reason (`CLIENT_HANGUP`,
//!   `PROVIDER_ERROR`, `IDLE_TIMEOUT`, ...); the server closes the socket next.
//! - `error`: `code` is a stable snake_case string (the protocol errors' are
//!   [`ProtocolError::code`]); `message` is for humans and may change.
//!
//! # What callers must keep
//!
//! - The `&str` an encode call returns borrows the codec's buffer: send it before the next call.
//! - Validating the audio itself (PCM16 lengths, Opus packets) is the codec chain's job; this
//!   module checks only that audio comes after `start` and is between 1 byte and
//!   [`MAX_BINARY_FRAME`].
//! - Error handling follows [`ProtocolError::is_fatal`] (see [the module](super)).

use std::fmt::{self, Write as _};

use serde::Deserialize;
use uuid::Uuid;
use voxroute_codecs::{AudioFormat, Channels, SampleRate};

use super::{
    JsonEscaped, ProtocolError, RouteTarget, Text, codec_from_name, codec_name, parse_frame,
    push_json_str,
};
use crate::close_reason::SessionCloseReason;

/// Largest binary (audio) frame accepted, in bytes: more than 120 ms of 96 kHz stereo PCM16,
/// the most any codec chain takes in one push.
pub const MAX_BINARY_FRAME: usize = 64 * 1024;

/// Initial capacity of the outbound buffer: every event but a long transcript fits.
const OUT_CAPACITY: usize = 512;

/// A text message from the client, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeInbound {
    /// The session's format and target (first, once).
    Start(NativeStart),
    /// The caller hangs up.
    Stop,
    /// Client-side barge-in: drop the audio queued for the client.
    Clear,
}

/// The client's `start`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct NativeStart {
    /// The audio the client sends and expects back.
    pub format: AudioFormat,
    /// The provider or route asked for.
    pub target: RouteTarget,
    /// The caller's key, if sent in `start` (redacted from `Debug`).
    pub api_key: Option<String>,
}

impl fmt::Debug for NativeStart {
    /// The API key is shown as `<redacted>`: keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeStart")
            .field("format", &self.format)
            .field("target", &self.target)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An event for the client (see the module doc for the JSON of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// `session.started`: the session is live and routed.
    SessionStarted {
        /// The session's id (its record's id).
        session_id: Uuid,
        /// The provider that answers.
        provider: &'a str,
        /// The client's audio format (echoed).
        format: AudioFormat,
    },
    /// `transcript`: text recognised or spoken.
    Transcript {
        /// The text.
        text: &'a str,
        /// Whether the provider will not revise it (`final` on the wire).
        is_final: bool,
    },
    /// `provider.switched`: failover to another provider.
    ProviderSwitched {
        /// The provider that failed.
        from: &'a str,
        /// The provider now answering.
        to: &'a str,
        /// Why, as a short stable string (e.g. `PROVIDER_ERROR`).
        reason: &'a str,
    },
    /// `clear`: barge-in; drop the audio received and not yet played.
    Clear,
    /// `session.ended`: the last event.
    SessionEnded {
        /// Why the session ended, as stored in the record.
        reason: SessionCloseReason,
    },
    /// `error`: something the client should know about.
    Error {
        /// A stable snake_case code.
        code: &'a str,
        /// A human-readable message; must not hold secrets or audio.
        message: &'a str,
    },
}

/// The sans-IO codec of one `/v1/ws` session.
#[derive(Debug)]
pub struct NativeCodec {
    /// Set once by the first good `start`; audio before it is refused.
    format: Option<AudioFormat>,
    /// The last outbound event; reused, grows only for a longer event than any before.
    out: String,
}

impl Default for NativeCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeCodec {
    /// A codec for a new session.
    pub fn new() -> Self {
        NativeCodec {
            format: None,
            out: String::with_capacity(OUT_CAPACITY),
        }
    }

    /// The format of the `start` handled, if any.
    pub fn format(&self) -> Option<AudioFormat> {
        self.format
    }

    /// Whether a `start` has been handled.
    pub fn is_started(&self) -> bool {
        self.format.is_some()
    }

    /// Decodes one text frame from the client.
    ///
    /// # Errors
    /// `FrameTooLarge`, `MalformedJson`, `MissingField("type")`, `UnknownEvent`,
    /// `DuplicateStart` (skippable), or, for a first `start` that cannot be used, `BadStart`,
    /// `UnsupportedFormat`, `BadAudioFormat`, `ProviderAndRoute` (fatal). On error the codec
    /// is unchanged.
    pub fn decode_text(&mut self, text: &str) -> Result<NativeInbound, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let kind = envelope.kind.ok_or(ProtocolError::MissingField("type"))?;
        match &*kind.0 {
            "start" => {
                if self.format.is_some() {
                    return Err(ProtocolError::DuplicateStart);
                }
                let start = parse_start(text)?;
                self.format = Some(start.format);
                Ok(NativeInbound::Start(start))
            }
            "stop" => Ok(NativeInbound::Stop),
            "clear" => Ok(NativeInbound::Clear),
            _ => Err(ProtocolError::UnknownEvent),
        }
    }

    /// Checks one binary frame (client audio) and hands it back for the codec chain.
    ///
    /// # Errors
    /// [`ProtocolError::MediaBeforeStart`], [`ProtocolError::FrameTooLarge`] over
    /// [`MAX_BINARY_FRAME`], [`ProtocolError::PayloadSize`] when empty; all skippable.
    pub fn decode_binary<'a>(&self, frame: &'a [u8]) -> Result<&'a [u8], ProtocolError> {
        if frame.len() > MAX_BINARY_FRAME {
            return Err(ProtocolError::FrameTooLarge {
                len: frame.len(),
                max: MAX_BINARY_FRAME,
            });
        }
        if self.format.is_none() {
            return Err(ProtocolError::MediaBeforeStart);
        }
        if frame.is_empty() {
            return Err(ProtocolError::PayloadSize {
                len: 0,
                max: MAX_BINARY_FRAME,
            });
        }
        Ok(frame)
    }

    /// Writes `event` as one JSON text frame.
    pub fn encode_event(&mut self, event: &ServerEvent<'_>) -> &str {
        let out = &mut self.out;
        out.clear();
        match *event {
            ServerEvent::SessionStarted {
                session_id,
                provider,
                format,
            } => {
                let mut id = Uuid::encode_buffer();
                out.push_str(r#"{"type":"session.started","session_id":""#);
                out.push_str(session_id.hyphenated().encode_lower(&mut id));
                out.push_str(r#"","provider":"#);
                push_json_str(out, provider);
                out.push_str(r#","codec":""#);
                out.push_str(codec_name(format.codec));
                // Writing into a String cannot fail.
                let _ = write!(
                    out,
                    r#"","sample_rate":{},"channels":{}}}"#,
                    format.sample_rate.hz(),
                    format.channels.count()
                );
            }
            ServerEvent::Transcript { text, is_final } => {
                out.push_str(r#"{"type":"transcript","text":"#);
                push_json_str(out, text);
                out.push_str(if is_final {
                    r#","final":true}"#
                } else {
                    r#","final":false}"#
                });
            }
            ServerEvent::ProviderSwitched { from, to, reason } => {
                out.push_str(r#"{"type":"provider.switched","from":"#);
                push_json_str(out, from);
                out.push_str(r#","to":"#);
                push_json_str(out, to);
                out.push_str(r#","reason":"#);
                push_json_str(out, reason);
                out.push('}');
            }
            ServerEvent::Clear => out.push_str(r#"{"type":"clear"}"#),
            ServerEvent::SessionEnded { reason } => {
                out.push_str(r#"{"type":"session.ended","reason":"#);
                push_json_str(out, reason.as_str());
                out.push('}');
            }
            ServerEvent::Error { code, message } => {
                out.push_str(r#"{"type":"error","code":"#);
                push_json_str(out, code);
                out.push_str(r#","message":"#);
                push_json_str(out, message);
                out.push('}');
            }
        }
        &self.out
    }

    /// Writes the `error` event for a protocol error: its [`code`](ProtocolError::code) and
    /// its message, formatted straight into the buffer.
    pub fn encode_protocol_error(&mut self, error: &ProtocolError) -> &str {
        let out = &mut self.out;
        out.clear();
        out.push_str(r#"{"type":"error","code":"#);
        push_json_str(out, error.code());
        out.push_str(r#","message":""#);
        // Writing into a String cannot fail.
        let _ = write!(JsonEscaped(out), "{error}");
        out.push_str(r#""}"#);
        &self.out
    }
}

/// The discriminator, borrowed; everything else is skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
}

/// `start`, read a second time in full. Every field is optional here so that a missing one is
/// reported by name; numbers are read wide so that out-of-range values are reported as such.
#[derive(Deserialize)]
struct StartFields {
    codec: Option<String>,
    sample_rate: Option<u64>,
    channels: Option<u64>,
    provider: Option<String>,
    route: Option<String>,
    api_key: Option<String>,
}

/// Validates a `start` frame into a [`NativeStart`].
fn parse_start(text: &str) -> Result<NativeStart, ProtocolError> {
    let fields: StartFields =
        serde_json::from_str(text).map_err(|_| ProtocolError::BadStart("start"))?;
    let codec = fields
        .codec
        .filter(|c| !c.is_empty())
        .ok_or(ProtocolError::BadStart("codec"))?;
    let codec = codec_from_name(&codec).ok_or(ProtocolError::UnsupportedFormat)?;
    let sample_rate = fields
        .sample_rate
        .ok_or(ProtocolError::BadStart("sample_rate"))?;
    let sample_rate =
        u32::try_from(sample_rate).map_err(|_| ProtocolError::BadStart("sample_rate"))?;
    let sample_rate = SampleRate::new(sample_rate).map_err(ProtocolError::BadAudioFormat)?;
    let channels = match fields.channels {
        None | Some(1) => Channels::Mono,
        Some(2) => Channels::Stereo,
        Some(_) => return Err(ProtocolError::BadStart("channels")),
    };
    let format =
        AudioFormat::new(codec, sample_rate, channels).map_err(ProtocolError::BadAudioFormat)?;
    let target = RouteTarget::from_parts(fields.provider.as_deref(), fields.route.as_deref())?;
    Ok(NativeStart {
        format,
        target,
        api_key: fields.api_key.filter(|k| !k.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use voxroute_codecs::{Codec, CodecError};

    fn decode_start(text: &str) -> Result<NativeStart, ProtocolError> {
        let mut codec = NativeCodec::new();
        match codec.decode_text(text)? {
            NativeInbound::Start(start) => {
                assert_eq!(codec.format(), Some(start.format));
                Ok(start)
            }
            other => panic!("not a start: {other:?}"),
        }
    }

    /// The minimal `start` gets the defaults: mono, the default route, no key.
    #[test]
    fn start_defaults() {
        let start =
            decode_start(r#"{"type":"start","codec":"pcm16","sample_rate":16000}"#).unwrap();
        assert_eq!(
            start,
            NativeStart {
                format: AudioFormat::pcm16_mono(SampleRate::HZ_16000),
                target: RouteTarget::Default,
                api_key: None,
            }
        );
    }

    /// Stereo PCM16 at 16 kHz, mu-law at 8 kHz and Opus at 48 kHz are accepted, with
    /// provider, route and key; unknown fields are ignored.
    #[test]
    fn start_variants() {
        let start = decode_start(
            r#"{"type":"start","codec":"pcm16","sample_rate":16000,"channels":2,"route":"support","future":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            start.format,
            AudioFormat::new(Codec::Pcm16, SampleRate::HZ_16000, Channels::Stereo).unwrap()
        );
        assert_eq!(start.target, RouteTarget::Route("support".into()));

        let start = decode_start(
            r#"{"type":"start","codec":"mulaw","sample_rate":8000,"channels":1,"provider":"deepgram","api_key":"vxr_secret"}"#,
        )
        .unwrap();
        assert_eq!(start.format, AudioFormat::telephony_mulaw());
        assert_eq!(start.target, RouteTarget::Provider("deepgram".into()));
        assert_eq!(start.api_key.as_deref(), Some("vxr_secret"));
        let debug = format!("{:?}", NativeInbound::Start(start));
        assert!(
            !debug.contains("vxr_secret") && debug.contains("<redacted>"),
            "{debug}"
        );

        let start = decode_start(r#"{"type":"start","codec":"opus","sample_rate":48000}"#).unwrap();
        assert_eq!(start.format, AudioFormat::opus(Channels::Mono));
    }

    /// Every unusable `start` is refused with its own fatal error and leaves the codec not
    /// started.
    #[test]
    fn bad_starts_are_fatal() {
        let cases = [
            (
                r#"{"type":"start","codec":"mulaw","sample_rate":16000}"#,
                ProtocolError::BadAudioFormat(CodecError::UnsupportedCodecRate {
                    codec: Codec::Mulaw,
                    sample_rate_hz: 16_000,
                }),
            ),
            (
                r#"{"type":"start","codec":"opus","sample_rate":16000}"#,
                ProtocolError::BadAudioFormat(CodecError::UnsupportedCodecRate {
                    codec: Codec::Opus,
                    sample_rate_hz: 16_000,
                }),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":12345}"#,
                ProtocolError::BadAudioFormat(CodecError::UnsupportedSampleRate {
                    sample_rate_hz: 12_345,
                }),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":8000,"provider":"echo","route":"support"}"#,
                ProtocolError::ProviderAndRoute,
            ),
            (
                r#"{"type":"start","codec":"g722","sample_rate":16000}"#,
                ProtocolError::UnsupportedFormat,
            ),
            (
                r#"{"type":"start","codec":"PCM16","sample_rate":16000}"#,
                ProtocolError::UnsupportedFormat,
            ),
            (
                r#"{"type":"start","codec":"pcm16"}"#,
                ProtocolError::BadStart("sample_rate"),
            ),
            (
                r#"{"type":"start","sample_rate":16000}"#,
                ProtocolError::BadStart("codec"),
            ),
            (
                r#"{"type":"start","codec":"","sample_rate":16000}"#,
                ProtocolError::BadStart("codec"),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":"16000"}"#,
                ProtocolError::BadStart("start"),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":-8000}"#,
                ProtocolError::BadStart("start"),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":4294967296000}"#,
                ProtocolError::BadStart("sample_rate"),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":16000,"channels":3}"#,
                ProtocolError::BadStart("channels"),
            ),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":16000,"channels":0}"#,
                ProtocolError::BadStart("channels"),
            ),
        ];
        for (frame, expected) in cases {
            let mut codec = NativeCodec::new();
            assert_eq!(codec.decode_text(frame), Err(expected), "{frame}");
            assert!(expected.is_fatal(), "{expected:?}");
            assert!(!codec.is_started());
            assert_eq!(
                codec.decode_binary(&[0, 0]),
                Err(ProtocolError::MediaBeforeStart)
            );
        }
    }

    /// `stop` and `clear` decode, before and after `start`, extra fields ignored.
    #[test]
    fn stop_and_clear() {
        let mut codec = NativeCodec::new();
        assert_eq!(
            codec.decode_text(r#"{"type":"clear"}"#),
            Ok(NativeInbound::Clear)
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"stop"}"#),
            Ok(NativeInbound::Stop)
        );
        codec
            .decode_text(r#"{"type":"start","codec":"pcm16","sample_rate":24000}"#)
            .unwrap();
        assert_eq!(
            codec.decode_text(r#"{"type":"clear","why":"barge-in"}"#),
            Ok(NativeInbound::Clear)
        );
        assert_eq!(
            codec.decode_text(r#" {"type" : "stop"} "#),
            Ok(NativeInbound::Stop)
        );
    }

    /// Audio before `start` is refused skippably; after `start` the same bytes come back
    /// untouched, and empty or oversized frames are refused skippably.
    #[test]
    fn binary_audio_needs_start() {
        let mut codec = NativeCodec::new();
        let audio = [1u8, 2, 3, 4];
        let err = codec.decode_binary(&audio).unwrap_err();
        assert_eq!(err, ProtocolError::MediaBeforeStart);
        assert!(!err.is_fatal());
        codec
            .decode_text(r#"{"type":"start","codec":"pcm16","sample_rate":16000}"#)
            .unwrap();
        assert_eq!(codec.decode_binary(&audio), Ok(&audio[..]));
        assert_eq!(
            codec.decode_binary(&[]),
            Err(ProtocolError::PayloadSize {
                len: 0,
                max: MAX_BINARY_FRAME
            })
        );
        let big = vec![0u8; MAX_BINARY_FRAME + 1];
        assert_eq!(
            codec.decode_binary(&big),
            Err(ProtocolError::FrameTooLarge {
                len: MAX_BINARY_FRAME + 1,
                max: MAX_BINARY_FRAME
            })
        );
        assert_eq!(codec.decode_binary(&audio), Ok(&audio[..]));
    }

    /// Skippable text errors leave the codec as it was: the format stays, audio still passes.
    #[test]
    fn bad_text_is_skipped_and_nothing_is_lost() {
        let mut codec = NativeCodec::new();
        codec
            .decode_text(r#"{"type":"start","codec":"mulaw","sample_rate":8000}"#)
            .unwrap();
        let huge = format!(r#"{{"type":"stop","pad":"{}"}}"#, "x".repeat(1 << 20));
        let cases = [
            ("{\"type\":", ProtocolError::MalformedJson),
            ("[1]", ProtocolError::MalformedJson),
            (r#"{"type":7}"#, ProtocolError::MalformedJson),
            (r#"{"codec":"pcm16"}"#, ProtocolError::MissingField("type")),
            (r#"{"type":"hello"}"#, ProtocolError::UnknownEvent),
            (
                r#"{"type":"start","codec":"pcm16","sample_rate":16000}"#,
                ProtocolError::DuplicateStart,
            ),
            (
                huge.as_str(),
                ProtocolError::FrameTooLarge {
                    len: huge.len(),
                    max: super::super::MAX_TEXT_FRAME,
                },
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(codec.decode_text(frame), Err(expected));
            assert!(!expected.is_fatal());
            assert_eq!(codec.format(), Some(AudioFormat::telephony_mulaw()));
            assert_eq!(codec.decode_binary(&[0xff; 160]), Ok(&[0xff; 160][..]));
            assert_eq!(
                codec.decode_text(r#"{"type":"clear"}"#),
                Ok(NativeInbound::Clear)
            );
        }
    }

    /// Every event serialises to the JSON documented in the module doc, byte for byte.
    #[test]
    fn events_serialise_to_documented_json() {
        let mut codec = NativeCodec::new();
        let session_id = Uuid::parse_str("0190b5e4-8f1c-7a3e-9d2b-5c4f6e7a8b9c").unwrap();
        let cases = [
            (
                ServerEvent::SessionStarted {
                    session_id,
                    provider: "echo",
                    format: AudioFormat::pcm16_mono(SampleRate::HZ_16000),
                },
                r#"{"type":"session.started","session_id":"0190b5e4-8f1c-7a3e-9d2b-5c4f6e7a8b9c","provider":"echo","codec":"pcm16","sample_rate":16000,"channels":1}"#,
            ),
            (
                ServerEvent::Transcript {
                    text: "Hello there.",
                    is_final: true,
                },
                r#"{"type":"transcript","text":"Hello there.","final":true}"#,
            ),
            (
                ServerEvent::Transcript {
                    text: "Hel",
                    is_final: false,
                },
                r#"{"type":"transcript","text":"Hel","final":false}"#,
            ),
            (
                ServerEvent::ProviderSwitched {
                    from: "openai",
                    to: "deepgram",
                    reason: "PROVIDER_ERROR",
                },
                r#"{"type":"provider.switched","from":"openai","to":"deepgram","reason":"PROVIDER_ERROR"}"#,
            ),
            (ServerEvent::Clear, r#"{"type":"clear"}"#),
            (
                ServerEvent::SessionEnded {
                    reason: SessionCloseReason::ClientHangup,
                },
                r#"{"type":"session.ended","reason":"CLIENT_HANGUP"}"#,
            ),
            (
                ServerEvent::Error {
                    code: "auth_failed",
                    message: "the API key is not valid",
                },
                r#"{"type":"error","code":"auth_failed","message":"the API key is not valid"}"#,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(codec.encode_event(&event), expected);
        }
        let err = ProtocolError::BadAudioFormat(CodecError::UnsupportedCodecRate {
            codec: Codec::Mulaw,
            sample_rate_hz: 16_000,
        });
        assert_eq!(
            codec.encode_protocol_error(&err),
            r#"{"type":"error","code":"bad_audio_format","message":"unsupported audio format: Mulaw is not supported at 16000 Hz"}"#
        );
        let err = ProtocolError::MissingField("type");
        assert_eq!(
            codec.encode_protocol_error(&err),
            r#"{"type":"error","code":"missing_field","message":"missing field `type`"}"#
        );
    }

    /// Opus stereo and 44.1 kHz PCM16 echo their format in `session.started`.
    #[test]
    fn session_started_echoes_format() {
        let mut codec = NativeCodec::new();
        let json: Value = serde_json::from_str(codec.encode_event(&ServerEvent::SessionStarted {
            session_id: Uuid::nil(),
            provider: "ws-pcm",
            format: AudioFormat::opus(Channels::Stereo),
        }))
        .unwrap();
        assert_eq!(json["codec"], "opus");
        assert_eq!(json["sample_rate"], 48_000);
        assert_eq!(json["channels"], 2);
        assert_eq!(json["session_id"], "00000000-0000-0000-0000-000000000000");
    }

    /// Text from providers (quotes, newlines, non-ASCII, control characters) is escaped so
    /// that the event parses back to the same strings.
    #[test]
    fn event_text_is_escaped() {
        let mut codec = NativeCodec::new();
        let text = "He said \"stop\"\n\ttwice \\ 日本語 \u{1}";
        let json: Value = serde_json::from_str(codec.encode_event(&ServerEvent::Transcript {
            text,
            is_final: false,
        }))
        .unwrap();
        assert_eq!(
            json,
            json!({"type": "transcript", "text": text, "final": false})
        );
        let json: Value =
            serde_json::from_str(codec.encode_event(&ServerEvent::ProviderSwitched {
                from: "a\"b",
                to: "c\\d",
                reason: "e\nf",
            }))
            .unwrap();
        assert_eq!(
            json,
            json!({"type": "provider.switched", "from": "a\"b", "to": "c\\d", "reason": "e\nf"})
        );
    }

    /// Every protocol error's `error` event is valid JSON carrying its code.
    #[test]
    fn protocol_error_events_are_valid_json() {
        let mut codec = NativeCodec::new();
        for err in [
            ProtocolError::FrameTooLarge {
                len: 70_000,
                max: 65_536,
            },
            ProtocolError::PayloadSize { len: 0, max: 960 },
            ProtocolError::BadStart("sample_rate"),
            ProtocolError::ProviderAndRoute,
        ] {
            let json: Value = serde_json::from_str(codec.encode_protocol_error(&err)).unwrap();
            assert_eq!(json["type"], "error");
            assert_eq!(json["code"], err.code());
            assert_eq!(json["message"], err.to_string());
        }
    }
}
