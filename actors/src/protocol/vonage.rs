//! The Vonage Voice API WebSocket (NCCO `connect` to a `websocket` endpoint), as served on
//! `GET /v1/telephony/vonage`: a [`CarrierCodec`] (reference: `reference/protocols.md` §2c).
//!
//! # The protocol in brief
//!
//! Vonage opens the socket. Its first frame is JSON text naming the audio format in
//! `content-type`, with the NCCO endpoint's `headers` copied to the top level:
//!
//! ```json
//! {"event":"websocket:connected","content-type":"audio/l16;rate=16000","route":"support"}
//! ```
//!
//! Then audio flows both ways as **binary** frames of 16-bit linear PCM, mono, exactly 20 ms
//! each: 640 bytes at 16 kHz, 320 at 8 kHz. A binary frame of any other size is refused with
//! [`ProtocolError::WrongFrameSize`] (skippable: the session goes on), and outbound audio of
//! any length is re-framed here into exact 20 ms frames (a partial frame waits for the next
//! audio, and a barge-in drops it). Other text frames: `websocket:dtmf` (`digit`), and the
//! answers to voxroute's `{"action":"clear"}` (`websocket:cleared`) and to a `notify`
//! (`websocket:notify`), both ignored. There is no `stop`: Vonage ends the call by closing
//! the socket.
//!
//! # Formats and parameters
//!
//! `audio/l16;rate=16000` and `audio/l16;rate=8000`; anything else (24 kHz included, which
//! is not verified) is refused with [`ProtocolError::UnsupportedFormat`] (fatal). The byte
//! order is taken to be **little-endian**, as third-party material says; Vonage's guide does
//! not state it (unverified).
//!
//! The `api_key`, `provider` and `route` parameters come from the NCCO `headers` (top-level
//! fields of the first frame; at most 512 bytes in all), or from the `uri`'s query string,
//! which the endpoint checks before the upgrade. Other headers become
//! [`CarrierStart::parameters`] (numbers and booleans as their JSON text; objects and arrays
//! are skipped).
//!
//! Unverified: the `clear` action and its `websocket:cleared` answer (from pipecat and
//! third-party material), and the pacing Vonage needs: voxroute sends reply audio as the
//! provider produces it, relying on Vonage's outbound buffer (about 20 s of frames).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use voxroute_codecs::{AudioFormat, SampleRate};

use super::carrier::{
    CarrierCodec, CarrierInbound, CarrierOutbound, CarrierStart, Scalar, frame_bytes, media_type,
    take_caller_parameters,
};
use super::{ProtocolError, Text, parse_frame};

/// The first frame's `event`.
const EVENT_CONNECTED: &str = "websocket:connected";

/// The largest 20 ms frame of any accepted format: 16 kHz PCM16.
const MAX_FRAME_BYTES: usize = 640;

/// The barge-in action.
const CLEAR: &str = r#"{"action":"clear"}"#;

/// The sans-IO codec of one Vonage WebSocket.
#[derive(Debug)]
pub struct VonageCodec {
    /// Set once by the first good `websocket:connected`.
    format: Option<AudioFormat>,
    /// Bytes of one 20 ms frame of `format` (0 before start).
    frame_bytes: usize,
    /// Outbound audio waiting to fill a frame; [`MAX_FRAME_BYTES`] allocated once.
    pending: Vec<u8>,
}

impl Default for VonageCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl VonageCodec {
    /// A codec for a new call, with the outbound frame buffer allocated.
    pub fn new() -> Self {
        VonageCodec {
            format: None,
            frame_bytes: 0,
            pending: Vec::with_capacity(MAX_FRAME_BYTES),
        }
    }
}

impl CarrierCodec for VonageCodec {
    fn carrier(&self) -> &'static str {
        "vonage"
    }

    fn decode_text<'a>(&'a mut self, text: &'a str) -> Result<CarrierInbound<'a>, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let event = envelope.event.ok_or(ProtocolError::MissingField("event"))?;
        match &*event.0 {
            "websocket:dtmf" => {
                let digit = envelope.digit.ok_or(ProtocolError::MissingField("digit"))?;
                let digit = digit
                    .dtmf_digit()
                    .ok_or(ProtocolError::InvalidField("digit"))?;
                Ok(CarrierInbound::Dtmf { digit })
            }
            EVENT_CONNECTED => {
                if self.format.is_some() {
                    return Err(ProtocolError::DuplicateStart);
                }
                let start = parse_connected(text)?;
                self.format = Some(start.format);
                self.frame_bytes = frame_bytes(start.format);
                Ok(CarrierInbound::Start(start))
            }
            "websocket:cleared" | "websocket:notify" => Ok(CarrierInbound::Ignored),
            _ => Err(ProtocolError::UnknownEvent),
        }
    }

    fn decode_binary<'a>(
        &'a mut self,
        frame: &'a [u8],
    ) -> Result<CarrierInbound<'a>, ProtocolError> {
        if self.format.is_none() {
            return Err(ProtocolError::MediaBeforeStart);
        }
        if frame.len() != self.frame_bytes {
            return Err(ProtocolError::WrongFrameSize {
                len: frame.len(),
                expected: self.frame_bytes,
            });
        }
        Ok(CarrierInbound::Media {
            sequence: None,
            payload: frame,
        })
    }

    fn format(&self) -> Option<AudioFormat> {
        self.format
    }

    fn encode_media(
        &mut self,
        mut audio: &[u8],
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        if self.format.is_none() {
            return Err(ProtocolError::NotStarted);
        }
        let frame = self.frame_bytes;
        while !audio.is_empty() {
            if self.pending.is_empty() && audio.len() >= frame {
                // Whole frames straight from the input: no copy.
                let (whole, rest) = audio.split_at(frame);
                emit(CarrierOutbound::Binary(whole));
                audio = rest;
                continue;
            }
            let take = (frame - self.pending.len()).min(audio.len());
            let (piece, rest) = audio.split_at(take);
            self.pending.extend_from_slice(piece);
            audio = rest;
            if self.pending.len() == frame {
                emit(CarrierOutbound::Binary(&self.pending));
                self.pending.clear();
            }
        }
        Ok(())
    }

    fn encode_clear(
        &mut self,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        if self.format.is_none() {
            return Err(ProtocolError::NotStarted);
        }
        self.pending.clear();
        emit(CarrierOutbound::Text(CLEAR));
        Ok(())
    }
}

/// What every text frame is read as first, borrowed from the frame.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<Text<'a>>,
    #[serde(borrow)]
    digit: Option<Scalar<'a>>,
}

/// Validates the `websocket:connected` frame: the format and the headers.
fn parse_connected(text: &str) -> Result<CarrierStart, ProtocolError> {
    let fields: BTreeMap<String, Value> =
        serde_json::from_str(text).map_err(|_| ProtocolError::BadStart("start"))?;
    let content_type = match fields.get("content-type") {
        Some(Value::String(value)) => value,
        _ => return Err(ProtocolError::BadStart("content-type")),
    };
    let (kind, rate_hz) =
        media_type(content_type).ok_or(ProtocolError::BadStart("content-type"))?;
    if kind != "audio/l16" {
        return Err(ProtocolError::UnsupportedFormat);
    }
    let rate = match rate_hz {
        Some(16_000) => SampleRate::HZ_16000,
        Some(8_000) => SampleRate::HZ_8000,
        Some(_) => return Err(ProtocolError::UnsupportedFormat),
        None => return Err(ProtocolError::BadStart("content-type")),
    };
    let mut parameters: BTreeMap<String, String> = fields
        .into_iter()
        .filter(|(name, _)| name != "event" && name != "content-type")
        .filter_map(|(name, value)| match value {
            Value::String(text) => Some((name, text)),
            Value::Number(_) | Value::Bool(_) => Some((name, value.to_string())),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        })
        .collect();
    let (api_key, target) = take_caller_parameters(&mut parameters)?;
    Ok(CarrierStart {
        call_id: String::new(),
        format: AudioFormat::pcm16_mono(rate),
        target,
        api_key,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{MAX_TEXT_FRAME, RouteTarget};
    use voxroute_codecs::Codec;

    /// The first frame, verbatim from protocols.md §2c.
    const CONNECTED: &str = r#"{"event":"websocket:connected","content-type":"audio/l16;rate=16000","caller-id":"447700900123"}"#;

    fn started(rate: u32) -> VonageCodec {
        let mut codec = VonageCodec::new();
        let first = json!({"event": "websocket:connected", "content-type": format!("audio/l16;rate={rate}")});
        assert!(matches!(
            codec.decode_text(&first.to_string()),
            Ok(CarrierInbound::Start(_))
        ));
        codec
    }

    /// Sizes of the frames `encode_media` emits for `audio`.
    fn frames_out(codec: &mut VonageCodec, audio: &[u8]) -> Vec<usize> {
        let mut sizes = Vec::new();
        codec
            .encode_media(audio, &mut |out| match out {
                CarrierOutbound::Binary(frame) => sizes.push(frame.len()),
                CarrierOutbound::Text(text) => panic!("media is binary, got {text}"),
            })
            .unwrap();
        sizes
    }

    /// The documented first frame decodes: L16 16 kHz, 640-byte frames, headers kept.
    #[test]
    fn golden_connected() {
        let mut codec = VonageCodec::new();
        let CarrierInbound::Start(start) = codec.decode_text(CONNECTED).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.format, AudioFormat::pcm16_mono(SampleRate::HZ_16000));
        assert_eq!(start.parameters["caller-id"], "447700900123");
        assert_eq!(start.target, RouteTarget::Default);
        assert_eq!(start.call_id, "");
        assert_eq!(codec.frame_bytes(), Some(640));
        assert_eq!(codec.carrier(), "vonage");
        assert_eq!(started(8_000).frame_bytes(), Some(320));
    }

    /// NCCO headers carry the key and target; non-string headers are kept as JSON text.
    #[test]
    fn headers_carry_key_and_target() {
        let first = json!({"event": "websocket:connected", "content-type": "audio/l16;rate=8000",
            "api_key": "vxr_secret", "provider": "echo", "attempt": 2, "vip": true, "nested": {"a": 1}});
        let CarrierInbound::Start(start) =
            VonageCodec::new().decode_text(&first.to_string()).unwrap()
        else {
            panic!("not a start");
        };
        assert_eq!(start.api_key.as_deref(), Some("vxr_secret"));
        assert_eq!(start.target, RouteTarget::Provider("echo".into()));
        assert_eq!(start.parameters["attempt"], "2");
        assert_eq!(start.parameters["vip"], "true");
        assert!(!start.parameters.contains_key("nested"));
        assert!(!start.parameters.contains_key("api_key"));
        assert_eq!(start.format.codec, Codec::Pcm16);
        assert!(!format!("{start:?}").contains("vxr_secret"));
    }

    /// Binary frames of exactly 20 ms are audio; any other size is refused, skippably, and
    /// the next good frame decodes; audio before the first frame is refused.
    #[test]
    fn binary_frames_must_be_20_ms() {
        let mut codec = VonageCodec::new();
        assert_eq!(
            codec.decode_binary(&[0; 640]).unwrap_err(),
            ProtocolError::MediaBeforeStart
        );
        codec.decode_text(CONNECTED).unwrap();
        let frame = [7u8; 640];
        assert_eq!(
            codec.decode_binary(&frame).unwrap(),
            CarrierInbound::Media {
                sequence: None,
                payload: &frame
            }
        );
        for len in [0, 1, 320, 639, 641, 1_280, 65_536] {
            let wrong = vec![0u8; len];
            let error = codec.decode_binary(&wrong).unwrap_err();
            assert_eq!(error, ProtocolError::WrongFrameSize { len, expected: 640 });
            assert!(!error.is_fatal());
            assert_eq!(error.code(), "wrong_frame_size");
            assert!(matches!(
                codec.decode_binary(&frame),
                Ok(CarrierInbound::Media { .. })
            ));
        }
        let mut narrow = started(8_000);
        assert!(matches!(
            narrow.decode_binary(&[0; 320]),
            Ok(CarrierInbound::Media { .. })
        ));
        assert_eq!(
            narrow.decode_binary(&[0; 640]).unwrap_err(),
            ProtocolError::WrongFrameSize {
                len: 640,
                expected: 320
            }
        );
    }

    /// Outbound audio of any length leaves as exact 20 ms frames, the remainder waiting for
    /// the next call; a clear drops it and sends the `clear` action.
    #[test]
    fn outbound_is_reframed_to_exact_frames() {
        let mut codec = started(16_000);
        assert_eq!(frames_out(&mut codec, &[1; 640]), [640]);
        assert_eq!(frames_out(&mut codec, &[1; 1_000]), [640]);
        assert_eq!(frames_out(&mut codec, &[1; 100]), Vec::<usize>::new());
        // 360 held + 100 + 2000 = 3 frames, 540 bytes held.
        assert_eq!(frames_out(&mut codec, &[1; 2_000]), [640, 640, 640]);
        let mut texts = Vec::new();
        codec
            .encode_clear(&mut |out| {
                if let CarrierOutbound::Text(text) = out {
                    texts.push(text.to_owned());
                }
            })
            .unwrap();
        assert_eq!(texts, [r#"{"action":"clear"}"#]);
        // The partial frame went with the clear: the next frame starts clean.
        assert_eq!(frames_out(&mut codec, &[2; 640]), [640]);

        // Bytes are kept in order across calls.
        let mut codec = started(8_000);
        let audio: Vec<u8> = (0..1_000u32).map(|i| i as u8).collect();
        let mut joined = Vec::new();
        for piece in audio.chunks(77) {
            codec
                .encode_media(piece, &mut |out| {
                    if let CarrierOutbound::Binary(frame) = out {
                        assert_eq!(frame.len(), 320);
                        joined.extend_from_slice(frame);
                    }
                })
                .unwrap();
        }
        assert_eq!(joined, audio[..960]);
    }

    /// Nothing can be sent before the first frame.
    #[test]
    fn nothing_before_start() {
        let mut codec = VonageCodec::new();
        let mut emit = |_: CarrierOutbound<'_>| panic!("nothing before start");
        assert_eq!(
            codec.encode_media(&[0; 640], &mut emit),
            Err(ProtocolError::NotStarted)
        );
        assert_eq!(
            codec.encode_clear(&mut emit),
            Err(ProtocolError::NotStarted)
        );
    }

    /// DTMF (string or number) and the acknowledgements decode.
    #[test]
    fn dtmf_and_acks() {
        let mut codec = started(16_000);
        assert_eq!(
            codec
                .decode_text(r#"{"event":"websocket:dtmf","digit":"5","duration":260}"#)
                .unwrap(),
            CarrierInbound::Dtmf { digit: '5' }
        );
        assert_eq!(
            codec
                .decode_text(r#"{"event":"websocket:dtmf","digit":9}"#)
                .unwrap(),
            CarrierInbound::Dtmf { digit: '9' }
        );
        for ack in [
            r#"{"event":"websocket:cleared"}"#,
            r#"{"event":"websocket:notify","payload":{"x":1}}"#,
        ] {
            assert_eq!(codec.decode_text(ack).unwrap(), CarrierInbound::Ignored);
        }
    }

    /// Bad text frames are skipped with their own error; the codec goes on.
    #[test]
    fn bad_text_is_skipped() {
        let mut codec = started(16_000);
        let huge = format!(r#"{{"event":"x","pad":"{}"}}"#, "a".repeat(MAX_TEXT_FRAME));
        let cases: Vec<(String, ProtocolError)> = vec![
            ("{not json".into(), ProtocolError::MalformedJson),
            ("7".into(), ProtocolError::MalformedJson),
            (
                r#"{"digit":"1"}"#.into(),
                ProtocolError::MissingField("event"),
            ),
            (
                r#"{"event":"websocket:hello"}"#.into(),
                ProtocolError::UnknownEvent,
            ),
            (
                r#"{"event":"websocket:dtmf"}"#.into(),
                ProtocolError::MissingField("digit"),
            ),
            (
                r#"{"event":"websocket:dtmf","digit":"xy"}"#.into(),
                ProtocolError::InvalidField("digit"),
            ),
            (CONNECTED.into(), ProtocolError::DuplicateStart),
            (
                huge.clone(),
                ProtocolError::FrameTooLarge {
                    len: huge.len(),
                    max: MAX_TEXT_FRAME,
                },
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(codec.decode_text(&frame).unwrap_err(), expected, "{frame}");
            assert!(!expected.is_fatal());
            assert!(matches!(
                codec.decode_binary(&[0; 640]),
                Ok(CarrierInbound::Media { .. })
            ));
        }
    }

    /// A first frame that cannot be understood or asks for another format is fatal and
    /// leaves the codec not started.
    #[test]
    fn bad_first_frame_is_fatal() {
        let first = |content_type: Value| {
            json!({"event": "websocket:connected", "content-type": content_type}).to_string()
        };
        let cases: Vec<(String, ProtocolError)> = vec![
            (
                r#"{"event":"websocket:connected"}"#.into(),
                ProtocolError::BadStart("content-type"),
            ),
            (first(json!(16000)), ProtocolError::BadStart("content-type")),
            (
                first(json!("audio/l16")),
                ProtocolError::BadStart("content-type"),
            ),
            (
                first(json!("audio/l16;rate=sixteen")),
                ProtocolError::BadStart("content-type"),
            ),
            (
                first(json!("audio/l16;rate=24000")),
                ProtocolError::UnsupportedFormat,
            ),
            (
                first(json!("audio/pcmu;rate=8000")),
                ProtocolError::UnsupportedFormat,
            ),
            (
                json!({"event": "websocket:connected", "content-type": "audio/l16;rate=8000",
                    "provider": "echo", "route": "r"})
                .to_string(),
                ProtocolError::ProviderAndRoute,
            ),
        ];
        for (frame, expected) in cases {
            let mut codec = VonageCodec::new();
            assert_eq!(codec.decode_text(&frame).unwrap_err(), expected, "{frame}");
            assert!(expected.is_fatal(), "{expected:?}");
            assert_eq!(codec.format(), None);
            assert!(matches!(
                codec.decode_text(CONNECTED),
                Ok(CarrierInbound::Start(_))
            ));
        }
    }
}
