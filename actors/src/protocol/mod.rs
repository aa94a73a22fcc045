//! Caller-side wire protocols, sans-IO: WebSocket frames in, typed messages out; typed
//! messages in, frame text out.
//!
//! - [`twilio`]: Twilio Media Streams, bidirectional (`GET /v1/telephony/twilio`);
//! - [`native`]: voxroute's own protocol (`GET /v1/ws`), whose module doc is its reference;
//! - [`carrier`]: the [`CarrierCodec`](carrier::CarrierCodec) trait the other carriers
//!   implement: [`telnyx`], [`vonage`], [`plivo`] (`GET /v1/telephony/{telnyx,vonage,plivo}`);
//! - [`realtime`]: OpenAI Realtime, GA event shapes (`GET /v1/realtime`), for the OpenAI SDKs;
//! - [`listen`]: Deepgram-compatible live transcription (`GET /v1/listen`).
//!
//! This module owns what they share: [`ProtocolError`] (one enum, with
//! [`is_fatal`](ProtocolError::is_fatal) and a stable [`code`](ProtocolError::code)),
//! [`RouteTarget`] (which provider or route the caller asked for), the frame size limits and a
//! small JSON string writer.
//!
//! # What callers (the session core) must keep
//!
//! - One codec per session, fed every WebSocket frame of that session in order. A codec never
//!   does I/O, never reads a clock, never panics on input, and is left unchanged by any frame it
//!   refuses, so after a skippable error the next frame decodes as if the bad one never came.
//! - On an error, ask [`ProtocolError::is_fatal`]: skippable errors mean "count it and drop the
//!   frame"; fatal ones mean the session cannot go on (its `start` could not be understood) and
//!   should end with `CLIENT_ERROR`. Errors carry only small `Copy` data and never echo client
//!   bytes, so they may be logged and sent back to the client as they are.
//! - Nothing else bounds how long a client may stay before `start`: the core must (a start
//!   timeout, or a cap on skipped frames).
//!
//! # Allocation
//!
//! Once a codec is warm (its `start` handled), decoding a well-formed audio frame and encoding
//! an outbound message allocate nothing: JSON is parsed borrowing from the frame text, base64 is
//! decoded into a buffer the codec allocated at construction for the largest payload accepted,
//! and outbound JSON is written into a `String` the codec reuses (it grows only if a message is
//! longer than any before). The error path may allocate inside `serde_json` (its error is
//! dropped at once); `start` allocates, once per session.

use std::borrow::Cow;
use std::fmt;

use base64::DecodeSliceError;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use voxroute_codecs::{Codec, CodecError};

pub mod carrier;
pub mod listen;
pub mod native;
pub mod plivo;
pub mod realtime;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

/// Largest text frame a codec parses, in bytes; longer frames are refused unparsed with
/// [`ProtocolError::FrameTooLarge`]. A Twilio `media` frame of 120 ms is under 1.5 KiB and a
/// `start` with generous custom parameters a few KiB.
pub const MAX_TEXT_FRAME: usize = 64 * 1024;

/// Custom-parameter / start-field name of the caller's API key (for clients that cannot set an
/// `Authorization` header).
pub const PARAM_API_KEY: &str = "api_key";
/// Custom-parameter / start-field name that picks one provider by name.
pub const PARAM_PROVIDER: &str = "provider";
/// Custom-parameter / start-field name that picks a configured route by name.
pub const PARAM_ROUTE: &str = "route";

/// Why a frame from a caller was refused.
///
/// Every variant is bad input (or, for [`NotStarted`](Self::NotStarted), a call in the wrong
/// order); none is a bug in voxroute. Variants carry only small `Copy` data or a static
/// string, never client bytes, so building one neither allocates nor leaks what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame longer than the codec parses; refused before parsing. Skip.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Length of the frame, in bytes.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// Not JSON, or JSON of the wrong shape (a field of the wrong type). Skip.
    #[error("malformed JSON message")]
    MalformedJson,
    /// An `event` (Twilio) or `type` (native) that the protocol does not define. Skip.
    #[error("unknown event type")]
    UnknownEvent,
    /// A message other than `start` lacks a field it needs (the JSON path is named). Skip.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A message other than `start` has a field with a value out of its range. Skip.
    #[error("invalid value in field `{0}`")]
    InvalidField(&'static str),
    /// Audio (a Twilio `media`, a native binary frame) before `start`. Skip.
    #[error("audio before start")]
    MediaBeforeStart,
    /// A second `start`; the first one stays in force. Skip.
    #[error("duplicate start")]
    DuplicateStart,
    /// A media payload that is not valid base64. Skip.
    #[error("media payload is not valid base64")]
    BadBase64,
    /// An audio payload that is empty or longer than one message may carry. Skip.
    #[error("audio payload of {len} bytes (must be 1 to {max})")]
    PayloadSize {
        /// Decoded length of the payload, in bytes.
        len: usize,
        /// Largest decoded length accepted.
        max: usize,
    },
    /// A binary frame on a protocol that sends only text (Twilio). Skip.
    #[error("binary frame of {len} bytes where only text frames are defined")]
    BinaryFrame {
        /// Length of the frame, in bytes.
        len: usize,
    },
    /// A binary audio frame of another size than the carrier's fixed frame (Vonage: exactly
    /// 20 ms, 640 bytes at 16 kHz, 320 at 8 kHz). Skip.
    #[error("binary frame of {len} bytes; audio frames must be exactly {expected} bytes")]
    WrongFrameSize {
        /// Length of the frame, in bytes.
        len: usize,
        /// The one length accepted.
        expected: usize,
    },
    /// The `start` message cannot be understood: the named field is missing, empty, of the
    /// wrong type or out of range (`start` alone when the shape as a whole is wrong). Fatal.
    #[error("start message cannot be understood: field `{0}`")]
    BadStart(&'static str),
    /// The `start` asks for audio voxroute does not speak: a Twilio `mediaFormat` other than
    /// `audio/x-mulaw` 8000 Hz mono, or a native `codec` name it does not know. Fatal.
    #[error("unsupported media format")]
    UnsupportedFormat,
    /// The `start` names a known codec at a rate or layout it cannot run at (e.g. G.711 at
    /// 16 kHz). Fatal.
    #[error("unsupported audio format: {0}")]
    BadAudioFormat(CodecError),
    /// The `start` names both a `provider` and a `route`; it must name at most one. Fatal.
    #[error("start names both a provider and a route; name at most one")]
    ProviderAndRoute,
    /// An outbound message was asked for before `start` gave what it needs (Twilio's
    /// `streamSid`): a call out of order by the session, nothing was written. Skip.
    #[error("outbound message before start")]
    NotStarted,
    /// An event the protocol defines but voxroute cannot carry to every provider (OpenAI
    /// Realtime's `response.create`, `conversation.item.create`, ...): refused, not dropped
    /// silently. Skip.
    #[error("event `{0}` is not supported by voxroute")]
    UnsupportedEvent(&'static str),
    /// A setting the protocol defines but voxroute does not take per session (OpenAI
    /// Realtime's `session.instructions`: the route's provider settings hold it). The whole
    /// message is refused. Skip.
    #[error("field `{0}` is not supported by voxroute")]
    UnsupportedField(&'static str),
}

impl ProtocolError {
    /// Whether the session cannot go on after this error (its `start` could not be used).
    ///
    /// `false` means: count the error, drop the frame, and keep going; the codec's state is
    /// exactly what it was before the frame.
    pub const fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtocolError::BadStart(_)
                | ProtocolError::UnsupportedFormat
                | ProtocolError::BadAudioFormat(_)
                | ProtocolError::ProviderAndRoute
        )
    }

    /// A stable snake_case name for the error, sent as `code` in the native `error` event and
    /// usable as a metrics label. Part of the external contract: never rename one, only add.
    pub const fn code(&self) -> &'static str {
        match self {
            ProtocolError::FrameTooLarge { .. } => "frame_too_large",
            ProtocolError::MalformedJson => "malformed_json",
            ProtocolError::UnknownEvent => "unknown_event",
            ProtocolError::MissingField(_) => "missing_field",
            ProtocolError::InvalidField(_) => "invalid_field",
            ProtocolError::MediaBeforeStart => "media_before_start",
            ProtocolError::DuplicateStart => "duplicate_start",
            ProtocolError::BadBase64 => "bad_base64",
            ProtocolError::PayloadSize { .. } => "payload_size",
            ProtocolError::BinaryFrame { .. } => "binary_frame",
            ProtocolError::WrongFrameSize { .. } => "wrong_frame_size",
            ProtocolError::BadStart(_) => "bad_start",
            ProtocolError::UnsupportedFormat => "unsupported_format",
            ProtocolError::BadAudioFormat(_) => "bad_audio_format",
            ProtocolError::ProviderAndRoute => "provider_and_route",
            ProtocolError::NotStarted => "not_started",
            ProtocolError::UnsupportedEvent(_) => "unsupported_event",
            ProtocolError::UnsupportedField(_) => "unsupported_field",
        }
    }
}

/// Which upstream the caller asked for in its `start` (or custom parameters).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteTarget {
    /// Neither a provider nor a route was named: use the configured default route.
    #[default]
    Default,
    /// One provider, by name (`echo`, `openai`, ...).
    Provider(String),
    /// A configured route, by name.
    Route(String),
}

impl RouteTarget {
    /// Builds the target from the optional `provider` and `route` values; an empty value counts
    /// as absent.
    ///
    /// # Errors
    /// [`ProtocolError::ProviderAndRoute`] when both are given.
    pub fn from_parts(provider: Option<&str>, route: Option<&str>) -> Result<Self, ProtocolError> {
        match (non_empty(provider), non_empty(route)) {
            (Some(_), Some(_)) => Err(ProtocolError::ProviderAndRoute),
            (Some(provider), None) => Ok(RouteTarget::Provider(provider.to_owned())),
            (None, Some(route)) => Ok(RouteTarget::Route(route.to_owned())),
            (None, None) => Ok(RouteTarget::Default),
        }
    }
}

/// `None` for `None` and for `Some("")`.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// The wire name of a codec, as the native protocol spells it.
pub const fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcm16 => "pcm16",
        Codec::Mulaw => "mulaw",
        Codec::Alaw => "alaw",
        Codec::Opus => "opus",
    }
}

/// The codec with wire name `name` (see [`codec_name`]).
pub fn codec_from_name(name: &str) -> Option<Codec> {
    [Codec::Pcm16, Codec::Mulaw, Codec::Alaw, Codec::Opus]
        .into_iter()
        .find(|c| codec_name(*c) == name)
}

/// Standard alphabet, padded on output; on input, padding is optional (some carriers and SDKs
/// omit it).
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes the base64 audio payload `b64` into `buf[..max]` and returns the decoded length.
/// An empty payload, or one that would decode to more than `max` bytes, is refused with
/// [`ProtocolError::PayloadSize`] before anything is decoded; invalid base64 with
/// [`ProtocolError::BadBase64`]. `buf` must be at least `max` long (a broken invariant
/// panics).
pub(crate) fn decode_base64_payload(
    b64: &str,
    buf: &mut [u8],
    max: usize,
) -> Result<usize, ProtocolError> {
    let size = |len| ProtocolError::PayloadSize { len, max };
    if b64.is_empty() {
        return Err(size(0));
    }
    let len = decoded_len(b64);
    if len > max {
        return Err(size(len));
    }
    match BASE64.decode_slice(b64, &mut buf[..max]) {
        Ok(0) => Err(size(0)),
        Ok(n) => Ok(n),
        Err(DecodeSliceError::OutputSliceTooSmall) => Err(size(len)),
        Err(_) => Err(ProtocolError::BadBase64),
    }
}

/// The length `b64` decodes to if it is valid base64, padded or not.
pub(crate) fn decoded_len(b64: &str) -> usize {
    let unpadded = b64
        .strip_suffix("==")
        .or_else(|| b64.strip_suffix('='))
        .unwrap_or(b64)
        .len();
    unpadded / 4 * 3 + (unpadded % 4).saturating_sub(1)
}

/// Parses a text frame as `T`, borrowing from it: a frame longer than [`MAX_TEXT_FRAME`] is
/// refused before anything parses it ([`ProtocolError::FrameTooLarge`]), one that is not JSON
/// of `T`'s shape gets [`ProtocolError::MalformedJson`]. Every codec's first step on text.
fn parse_frame<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ProtocolError> {
    if text.len() > MAX_TEXT_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: text.len(),
            max: MAX_TEXT_FRAME,
        });
    }
    serde_json::from_str(text).map_err(|_| ProtocolError::MalformedJson)
}

/// A JSON string value that borrows from the frame when it holds no escapes (the normal case,
/// allocation-free) and owns an unescaped copy otherwise.
///
/// serde's `Option<Cow<str>>` always owns its string, even with `#[serde(borrow)]`; this newtype
/// is how an optional field borrows.
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Appends `s` to `out` as a JSON string literal, quotes included (RFC 8259 escaping: `"`,
/// `\` and control characters; everything else, non-ASCII included, as is). Allocates only if
/// `out` must grow.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_escaped(out, s);
    out.push('"');
}

/// The inside of a JSON string literal: `s` escaped, without quotes.
fn push_json_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte matched above is ASCII, so `i` is a char boundary.
        out.push_str(&s[run_start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        run_start = i + 1;
    }
    out.push_str(&s[run_start..]);
}

/// A [`fmt::Write`] that JSON-escapes what is written through it: `Display` output (an error
/// message) goes straight into a JSON string without a temporary `String`.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_json_escaped(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoded-length estimate is exact for valid base64, padded or not.
    #[test]
    fn decoded_len_is_exact() {
        for len in 0..50 {
            let bytes = vec![0xa5; len];
            let padded = BASE64.encode(&bytes);
            assert_eq!(decoded_len(&padded), len);
            assert_eq!(decoded_len(padded.trim_end_matches('=')), len);
        }
    }

    /// Payloads are refused by size before decoding, and garbage as bad base64.
    #[test]
    fn base64_payloads_are_bounded_and_checked() {
        let mut buf = [0u8; 8];
        assert_eq!(decode_base64_payload("AAEC", &mut buf, 8), Ok(3));
        assert_eq!(&buf[..3], &[0, 1, 2]);
        assert_eq!(
            decode_base64_payload("", &mut buf, 8),
            Err(ProtocolError::PayloadSize { len: 0, max: 8 })
        );
        assert_eq!(
            decode_base64_payload(&BASE64.encode([1u8; 9]), &mut buf, 8),
            Err(ProtocolError::PayloadSize { len: 9, max: 8 })
        );
        assert_eq!(
            decode_base64_payload("A*C=", &mut buf, 8),
            Err(ProtocolError::BadBase64)
        );
    }

    /// Every error has a distinct snake_case code, and exactly the `start` errors are fatal.
    #[test]
    fn codes_are_unique_snake_case_and_only_start_errors_are_fatal() {
        let all = [
            ProtocolError::FrameTooLarge { len: 1, max: 0 },
            ProtocolError::MalformedJson,
            ProtocolError::UnknownEvent,
            ProtocolError::MissingField("x"),
            ProtocolError::InvalidField("x"),
            ProtocolError::MediaBeforeStart,
            ProtocolError::DuplicateStart,
            ProtocolError::BadBase64,
            ProtocolError::PayloadSize { len: 0, max: 1 },
            ProtocolError::BinaryFrame { len: 1 },
            ProtocolError::WrongFrameSize {
                len: 1,
                expected: 2,
            },
            ProtocolError::BadStart("x"),
            ProtocolError::UnsupportedFormat,
            ProtocolError::BadAudioFormat(CodecError::EmptyPayload),
            ProtocolError::ProviderAndRoute,
            ProtocolError::NotStarted,
            ProtocolError::UnsupportedEvent("x"),
            ProtocolError::UnsupportedField("x"),
        ];
        let mut codes: Vec<&str> = all.iter().map(ProtocolError::code).collect();
        for code in &codes {
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{code}"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        let fatal: Vec<&str> = all
            .iter()
            .filter(|e| e.is_fatal())
            .map(ProtocolError::code)
            .collect();
        assert_eq!(
            fatal,
            [
                "bad_start",
                "unsupported_format",
                "bad_audio_format",
                "provider_and_route"
            ]
        );
    }

    /// The JSON string writer produces what serde_json reads back as the same string, for
    /// quotes, backslashes, every control character and non-ASCII text.
    #[test]
    fn json_strings_round_trip_through_serde_json() {
        let mut nasty = String::from("say \"hi\" \\ back/slash é 日本 \u{2028} ");
        nasty.extend((0u8..0x20).map(char::from));
        nasty.push('\u{7f}');
        let mut out = String::new();
        push_json_str(&mut out, &nasty);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), nasty);
        assert!(!out[1..out.len() - 1].contains(|c: char| c < ' '));
    }

    /// `provider` and `route` are exclusive; empty values count as absent.
    #[test]
    fn route_target_from_parts() {
        assert_eq!(
            RouteTarget::from_parts(None, None),
            Ok(RouteTarget::Default)
        );
        assert_eq!(
            RouteTarget::from_parts(Some(""), Some("")),
            Ok(RouteTarget::Default)
        );
        assert_eq!(
            RouteTarget::from_parts(Some("echo"), Some("")),
            Ok(RouteTarget::Provider("echo".into()))
        );
        assert_eq!(
            RouteTarget::from_parts(None, Some("support")),
            Ok(RouteTarget::Route("support".into()))
        );
        assert_eq!(
            RouteTarget::from_parts(Some("echo"), Some("support")),
            Err(ProtocolError::ProviderAndRoute)
        );
    }

    /// Codec wire names round-trip and unknown names are refused.
    #[test]
    fn codec_names_round_trip() {
        for codec in [Codec::Pcm16, Codec::Mulaw, Codec::Alaw, Codec::Opus] {
            assert_eq!(codec_from_name(codec_name(codec)), Some(codec));
        }
        assert_eq!(codec_from_name("PCM16"), None);
        assert_eq!(codec_from_name("g722"), None);
    }
}
