//! The carrier abstraction: one trait, [`CarrierCodec`], that every telephony media-stream
//! format implements ([`twilio`](super::twilio), [`telnyx`](super::telnyx),
//! [`vonage`](super::vonage), [`plivo`](super::plivo)), so that the session core holds any
//! carrier the same way and a new carrier is one file.
//!
//! A carrier codec is sans-IO like every codec here: it turns each WebSocket frame the carrier
//! sends (text or binary) into a [`CarrierInbound`] (start, media, DTMF, stop, or nothing the
//! session needs), and writes what voxroute sends back (media and the barge-in `clear`) as
//! [`CarrierOutbound`] frames handed to a callback, zero or more per call: a carrier with fixed
//! outbound frames (Vonage) re-frames audio itself. Each codec says, once started, the audio
//! format it speaks ([`CarrierCodec::format`]) and the size of one 20 ms frame of it
//! ([`CarrierCodec::frame_bytes`]).
//!
//! This module also owns what the carriers share: the caller parameters (`api_key`,
//! `provider`, `route`) taken out of whatever map the carrier delivers them in, the DTMF digit
//! check, a JSON scalar that may be a string or a number (carriers disagree on which), and the
//! `type/subtype;rate=N` media-type reader.
//!
//! # What callers (the session core) must keep
//!
//! The rules of [the module](super) hold: one codec per session, every frame in order, and
//! [`ProtocolError::is_fatal`] decides between skipping a frame and ending the session. In
//! addition:
//! - [`CarrierInbound::Media::sequence`] is set by carriers that do not guarantee order
//!   (Telnyx): reorder by it (the jitter buffer) before decoding. `None` means in order.
//! - Outbound audio handed to [`CarrierCodec::encode_media`] is in [`CarrierCodec::format`]
//!   (the egress chain's output), before `start` nothing can be written
//!   ([`ProtocolError::NotStarted`]).
//! - Slices a call returns or emits borrow the codec (or the frame): use them before the next
//!   call. Once started, decoding audio and encoding media allocate nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use voxroute_codecs::chain::MAX_PAYLOAD_MS;
use voxroute_codecs::{AudioFormat, Codec};

use super::{PARAM_API_KEY, PARAM_PROVIDER, PARAM_ROUTE, ProtocolError, RouteTarget};

/// A carrier's media-stream wire format, sans-IO: see the [module docs](self).
pub trait CarrierCodec: Send + fmt::Debug {
    /// The carrier's name, for logs (`telnyx`, `vonage`, `plivo`).
    fn carrier(&self) -> &'static str;

    /// Decodes one text frame from the carrier.
    ///
    /// # Errors
    /// A [`ProtocolError`]; the codec is then unchanged.
    fn decode_text<'a>(&'a mut self, text: &'a str) -> Result<CarrierInbound<'a>, ProtocolError>;

    /// Decodes one binary frame from the carrier (audio for Vonage; refused by carriers that
    /// send only text, with [`ProtocolError::BinaryFrame`]).
    ///
    /// # Errors
    /// A [`ProtocolError`]; the codec is then unchanged.
    fn decode_binary<'a>(
        &'a mut self,
        frame: &'a [u8],
    ) -> Result<CarrierInbound<'a>, ProtocolError>;

    /// The audio the carrier sends and expects, once its `start` has been handled.
    fn format(&self) -> Option<AudioFormat>;

    /// Bytes of one 20 ms frame of [`format`](Self::format), once started.
    fn frame_bytes(&self) -> Option<usize> {
        self.format().map(frame_bytes)
    }

    /// Writes `audio` (in [`format`](Self::format), any length) as the carrier's media
    /// messages, each handed to `emit` (zero or more: a carrier with fixed frames keeps a
    /// partial frame for the next call).
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is emitted.
    fn encode_media(
        &mut self,
        audio: &[u8],
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError>;

    /// Barge-in: drops outbound audio the codec still holds and emits the carrier's `clear`.
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is emitted.
    fn encode_clear(
        &mut self,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError>;

    /// Whether the carrier reports back when the audio before a mark has played (Twilio),
    /// so the session sends marks through [`encode_mark`](Self::encode_mark).
    fn has_marks(&self) -> bool {
        false
    }

    /// Writes a mark named `name`; carriers without marks write nothing (the default).
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is emitted.
    fn encode_mark(
        &mut self,
        name: &str,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        let _ = (name, emit);
        Ok(())
    }
}

/// One frame from a carrier, decoded. Borrowed data lives until the codec's next call.
#[derive(Clone, PartialEq, Eq)]
pub enum CarrierInbound<'a> {
    /// A frame with nothing for the session (`connected`, acknowledgements, mark echoes).
    Ignored,
    /// The stream starts: format, caller parameters.
    Start(CarrierStart),
    /// Caller audio in [`CarrierStart::format`].
    Media {
        /// Where the payload goes in the stream, for carriers that may deliver out of order;
        /// `None`: this frame is in order.
        sequence: Option<u16>,
        /// The audio bytes.
        payload: &'a [u8],
    },
    /// The caller pressed a key: `0`–`9`, `*`, `#` or `A`–`D`.
    Dtmf {
        /// The key.
        digit: char,
    },
    /// The call ended; the carrier closes the socket next.
    Stop,
}

impl fmt::Debug for CarrierInbound<'_> {
    /// Audio is shown by length only: logs never hold audio.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarrierInbound::Ignored => f.write_str("Ignored"),
            CarrierInbound::Start(start) => f.debug_tuple("Start").field(start).finish(),
            CarrierInbound::Media { sequence, payload } => {
                write!(f, "Media(seq {sequence:?}, {} bytes)", payload.len())
            }
            CarrierInbound::Dtmf { digit } => f.debug_struct("Dtmf").field("digit", digit).finish(),
            CarrierInbound::Stop => f.write_str("Stop"),
        }
    }
}

/// A carrier's `start` (or first message): what the stream carries and what the caller asked.
#[derive(Clone, PartialEq, Eq)]
pub struct CarrierStart {
    /// The carrier's id of the call (Telnyx `call_control_id`, Plivo `callId`), empty when
    /// the carrier gives none (Vonage).
    pub call_id: String,
    /// The audio the carrier sends and expects.
    pub format: AudioFormat,
    /// The provider or route named by the `provider` / `route` parameters.
    pub target: RouteTarget,
    /// The caller's API key from the `api_key` parameter, if any; redacted from `Debug`.
    pub api_key: Option<String>,
    /// Every other parameter the carrier delivered, by name.
    pub parameters: BTreeMap<String, String>,
}

impl fmt::Debug for CarrierStart {
    /// The API key is shown as `<redacted>`: keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierStart")
            .field("call_id", &self.call_id)
            .field("format", &self.format)
            .field("target", &self.target)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("parameters", &self.parameters)
            .finish()
    }
}

/// One frame for the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierOutbound<'a> {
    /// A text frame (JSON).
    Text(&'a str),
    /// A binary frame (audio).
    Binary(&'a [u8]),
}

/// Bytes of one 20 ms frame of `format` (PCM16 or G.711; Opus frames have no fixed size and
/// count 0).
pub const fn frame_bytes(format: AudioFormat) -> usize {
    format.sample_rate.samples_per_frame() * bytes_per_sample(format)
}

/// The largest audio payload one carrier message may carry in `format`: [`MAX_PAYLOAD_MS`]
/// (120 ms), as the ingress chain accepts.
pub const fn max_payload_bytes(format: AudioFormat) -> usize {
    format.sample_rate.samples_in_ms(MAX_PAYLOAD_MS) * bytes_per_sample(format)
}

const fn bytes_per_sample(format: AudioFormat) -> usize {
    match format.codec {
        Codec::Pcm16 => 2 * format.channels.count() as usize,
        Codec::Mulaw | Codec::Alaw => format.channels.count() as usize,
        Codec::Opus => 0,
    }
}

/// Takes the caller parameters out of `parameters`: the key (removed, so that logging or
/// forwarding the rest cannot leak it; empty counts as absent) and the provider or route.
///
/// # Errors
/// [`ProtocolError::ProviderAndRoute`] when both a provider and a route are named.
pub(crate) fn take_caller_parameters(
    parameters: &mut BTreeMap<String, String>,
) -> Result<(Option<String>, RouteTarget), ProtocolError> {
    let target = RouteTarget::from_parts(
        parameters.get(PARAM_PROVIDER).map(String::as_str),
        parameters.get(PARAM_ROUTE).map(String::as_str),
    )?;
    let api_key = parameters
        .remove(PARAM_API_KEY)
        .filter(|key| !key.is_empty());
    Ok((api_key, target))
}

/// A DTMF key: one of `0-9 * # A-D` (lowercase `a-d` accepted and raised).
pub(crate) fn dtmf_digit(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    match c {
        '0'..='9' | '*' | '#' | 'A'..='D' => Some(c),
        'a'..='d' => Some(c.to_ascii_uppercase()),
        _ => None,
    }
}

/// A media type such as `audio/l16;rate=16000`: the type (lowercased, trimmed) and the
/// `rate` parameter if there is one. `None` for a `rate` that is not a number.
pub(crate) fn media_type(value: &str) -> Option<(String, Option<u32>)> {
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mut rate = None;
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("rate")
        {
            rate = Some(value.trim().parse().ok()?);
        }
    }
    Some((kind, rate))
}

/// A JSON value that carriers send as a string or as a number (`sequence_number`, `chunk`,
/// a DTMF `digit`), borrowed from the frame when it is a string without escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scalar<'a> {
    /// A string.
    Text(Cow<'a, str>),
    /// A non-negative integer.
    Number(u64),
    /// Anything else that is not an object or array (negative, fractional, boolean).
    Other,
}

impl Scalar<'_> {
    /// The value as a counter: a non-negative integer, or a string of one.
    pub(crate) fn counter(&self) -> Option<u64> {
        match self {
            Scalar::Number(n) => Some(*n),
            Scalar::Text(text) => text.parse().ok(),
            Scalar::Other => None,
        }
    }

    /// The value as a DTMF key (a string, or a number 0–9).
    pub(crate) fn dtmf_digit(&self) -> Option<char> {
        match self {
            Scalar::Text(text) => dtmf_digit(text),
            Scalar::Number(n) => char::from_digit(u32::try_from(*n).ok()?, 10),
            Scalar::Other => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::Number))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use voxroute_codecs::{Channels, SampleRate};

    use super::*;

    /// Frame and payload sizes follow the format: 20 ms and 120 ms.
    #[test]
    fn sizes_follow_the_format() {
        let mulaw = AudioFormat::telephony_mulaw();
        assert_eq!((frame_bytes(mulaw), max_payload_bytes(mulaw)), (160, 960));
        let l16 = AudioFormat::pcm16_mono(SampleRate::HZ_16000);
        assert_eq!((frame_bytes(l16), max_payload_bytes(l16)), (640, 3_840));
        let stereo = AudioFormat::new(Codec::Pcm16, SampleRate::HZ_8000, Channels::Stereo).unwrap();
        assert_eq!(frame_bytes(stereo), 640);
    }

    /// The key leaves the map, the target is typed, both provider and route are refused.
    #[test]
    fn caller_parameters_are_taken_out() {
        let mut params: BTreeMap<String, String> = [
            ("api_key", "vxr_secret"),
            ("route", "support"),
            ("from", "+1555"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (key, target) = take_caller_parameters(&mut params).unwrap();
        assert_eq!(key.as_deref(), Some("vxr_secret"));
        assert_eq!(target, RouteTarget::Route("support".into()));
        assert!(!params.contains_key("api_key"));
        assert_eq!(params["from"], "+1555");

        let mut empty_key: BTreeMap<String, String> =
            [("api_key".to_owned(), String::new())].into();
        assert_eq!(
            take_caller_parameters(&mut empty_key).unwrap(),
            (None, RouteTarget::Default)
        );
        let mut both: BTreeMap<String, String> = [
            ("provider".to_owned(), "echo".to_owned()),
            ("route".to_owned(), "r".to_owned()),
        ]
        .into();
        assert_eq!(
            take_caller_parameters(&mut both),
            Err(ProtocolError::ProviderAndRoute)
        );
    }

    /// DTMF keys: the sixteen keys, lowercase letters raised, anything else refused.
    #[test]
    fn dtmf_digits() {
        for key in "0123456789*#ABCD".chars() {
            assert_eq!(dtmf_digit(&key.to_string()), Some(key));
        }
        assert_eq!(dtmf_digit("b"), Some('B'));
        for bad in ["", "12", "x", "E", " 1"] {
            assert_eq!(dtmf_digit(bad), None, "{bad:?}");
        }
        assert_eq!(Scalar::Number(7).dtmf_digit(), Some('7'));
        assert_eq!(Scalar::Number(10).dtmf_digit(), None);
        assert_eq!(Scalar::Other.dtmf_digit(), None);
    }

    /// Media types: type lowercased, `rate` read, a rate that is not a number refused.
    #[test]
    fn media_types() {
        assert_eq!(
            media_type("audio/l16;rate=16000"),
            Some(("audio/l16".into(), Some(16_000)))
        );
        assert_eq!(
            media_type(" Audio/X-L16 ; Rate = 8000 "),
            Some(("audio/x-l16".into(), Some(8_000)))
        );
        assert_eq!(
            media_type("audio/x-mulaw"),
            Some(("audio/x-mulaw".into(), None))
        );
        assert_eq!(media_type("audio/l16;rate=fast"), None);
    }

    /// Scalars: strings and numbers both read as counters; other JSON does not.
    #[test]
    fn scalars_read_strings_and_numbers() {
        let parse = |json: &str| serde_json::from_str::<Scalar<'_>>(json).map(|s| s.counter());
        assert_eq!(parse(r#""42""#).unwrap(), Some(42));
        assert_eq!(parse("42").unwrap(), Some(42));
        assert_eq!(parse("-1").unwrap(), None);
        assert_eq!(parse("1.5").unwrap(), None);
        assert_eq!(parse("true").unwrap(), None);
        assert_eq!(parse(r#""x1""#).unwrap(), None);
        assert!(parse("{}").is_err());
        assert!(parse("[1]").is_err());
    }
}
