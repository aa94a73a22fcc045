//! Telnyx Media Streaming, bidirectional, as served on `GET /v1/telephony/telnyx`: a
//! [`CarrierCodec`] (reference: `reference/protocols.md` §2a).
//!
//! # The protocol in brief
//!
//! Telnyx opens the socket (Call Control `stream_url`, or TeXML `<Stream>`) and sends JSON text
//! frames with an `event`: `connected`, one `start`, then `media` interleaved with `dtmf` and
//! `mark`, possibly `error`, then `stop`. The stream id is the top-level `stream_id`; the
//! call's `call_control_id` and the `custom_parameters` sit inside `start`, whose
//! `media_format` says the codec of the stream:
//!
//! ```json
//! {"event":"start","sequence_number":"1","stream_id":"32DE0DEA-…",
//!  "start":{"call_control_id":"v2:T02llQ…","custom_parameters":{"api_key":"vxr_…","route":"support"},
//!           "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}
//! {"event":"media","sequence_number":"4","stream_id":"32DE0DEA-…",
//!  "media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"<base64>"}}
//! ```
//!
//! voxroute answers with `{"event":"media","media":{"payload":"<base64>"}}` in the stream's
//! codec and, on barge-in, `{"event":"clear"}` (without `stream_id`, as pipecat does).
//!
//! # Formats
//!
//! `PCMU` and `PCMA` at 8 kHz, and `L16` at 8 or 16 kHz, mono. Other codecs Telnyx offers
//! (`G722`, `OPUS`, `AMR-WB`) and other rates are refused with
//! [`ProtocolError::UnsupportedFormat`] (fatal). The same format is used both ways: the
//! bidirectional codec configured on Telnyx must match what `start` announces.
//!
//! `L16` is read and written **big-endian** (network byte order, as RFC 3551 defines L16 for
//! RTP; Telnyx sends RTP payloads without headers). Telnyx's own pages do not state the byte
//! order: this follows the RTP definition and the pipecat contributions that added L16, and
//! is unverified against a live Telnyx stream.
//!
//! # Order
//!
//! Telnyx does not guarantee frame order. Each `media` is returned with a sequence for the
//! session to reorder by: `media.chunk` (which counts media messages only), else the
//! top-level `sequence_number` (which, if it counts every message as Twilio's does, leaves
//! gaps at `dtmf`/`mark` frames that the jitter buffer waits out and fills). Both may be
//! strings or numbers (the literal frames are not verified). Frames of the `outbound` track
//! (a `both_tracks` stream) are ignored: only the caller's audio goes to the provider.
//!
//! Also unverified: the literal `dtmf` frame (read from `dtmf.digit`, or a top-level
//! `digit`), `mark` and `error` (both ignored: voxroute sends no marks, and a Telnyx error
//! about the stream is not the caller's bad input).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use voxroute_codecs::{AudioFormat, Channels, Codec, SampleRate};

use super::carrier::{
    CarrierCodec, CarrierInbound, CarrierOutbound, CarrierStart, Scalar, max_payload_bytes,
    take_caller_parameters,
};
use super::{BASE64, ProtocolError, Text, decode_base64_payload, parse_frame};

/// Largest decoded `media` payload in any accepted format: 120 ms of L16 at 16 kHz.
pub const MAX_MEDIA_PAYLOAD: usize = 3_840;

/// Initial capacity of the outbound buffer: a 120 ms L16 16 kHz `media` message fits.
const OUT_CAPACITY: usize = 5_300;

/// The sans-IO codec of one Telnyx stream.
#[derive(Debug)]
pub struct TelnyxCodec {
    /// Set once by the first good `start`.
    format: Option<AudioFormat>,
    /// The stream's `stream_id`, if `start` had one (kept for logs; outbound frames omit it).
    stream_id: Option<String>,
    /// Decoded `media` payloads, [`MAX_MEDIA_PAYLOAD`] bytes allocated once.
    media: Box<[u8]>,
    /// Outbound L16 turned big-endian, reused.
    swapped: Vec<u8>,
    /// The last outbound message, reused.
    out: String,
}

impl Default for TelnyxCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl TelnyxCodec {
    /// A codec for a new stream, with every buffer of the hot path allocated.
    pub fn new() -> Self {
        TelnyxCodec {
            format: None,
            stream_id: None,
            media: vec![0; MAX_MEDIA_PAYLOAD].into_boxed_slice(),
            swapped: Vec::with_capacity(MAX_MEDIA_PAYLOAD),
            out: String::with_capacity(OUT_CAPACITY),
        }
    }

    /// The `stream_id` of the `start` handled, if it had one.
    pub fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// Whether L16 is on the wire (big-endian, swapped both ways).
    fn is_l16(&self) -> bool {
        self.format.is_some_and(|f| f.codec == Codec::Pcm16)
    }
}

impl CarrierCodec for TelnyxCodec {
    fn carrier(&self) -> &'static str {
        "telnyx"
    }

    fn decode_text<'a>(&'a mut self, text: &'a str) -> Result<CarrierInbound<'a>, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let event = envelope.event.ok_or(ProtocolError::MissingField("event"))?;
        match &*event.0 {
            "media" => {
                let Some(format) = self.format else {
                    return Err(ProtocolError::MediaBeforeStart);
                };
                let media = envelope
                    .media
                    .ok_or(ProtocolError::MissingField("media.payload"))?;
                if media.track.as_ref().is_some_and(|t| t.0 == "outbound") {
                    return Ok(CarrierInbound::Ignored);
                }
                let sequence = match (&media.chunk, &envelope.sequence_number) {
                    (Some(chunk), _) => Some(
                        chunk
                            .counter()
                            .ok_or(ProtocolError::InvalidField("media.chunk"))?,
                    ),
                    (None, Some(sequence)) => Some(
                        sequence
                            .counter()
                            .ok_or(ProtocolError::InvalidField("sequence_number"))?,
                    ),
                    (None, None) => None,
                };
                let payload = media
                    .payload
                    .ok_or(ProtocolError::MissingField("media.payload"))?;
                let len =
                    decode_base64_payload(&payload.0, &mut self.media, max_payload_bytes(format))?;
                if self.is_l16() {
                    // An odd length is left for the ingress chain to refuse (as for any PCM16).
                    swap_pcm16_bytes(&mut self.media[..len]);
                }
                Ok(CarrierInbound::Media {
                    // Sequence numbers wrap at 16 bits in the jitter buffer: the low bits
                    // keep the order.
                    sequence: sequence.map(|s| s as u16),
                    payload: &self.media[..len],
                })
            }
            "dtmf" => {
                let digit = envelope
                    .dtmf
                    .and_then(|dtmf| dtmf.digit)
                    .or(envelope.digit)
                    .ok_or(ProtocolError::MissingField("dtmf.digit"))?;
                let digit = digit
                    .dtmf_digit()
                    .ok_or(ProtocolError::InvalidField("dtmf.digit"))?;
                Ok(CarrierInbound::Dtmf { digit })
            }
            "start" => {
                if self.format.is_some() {
                    return Err(ProtocolError::DuplicateStart);
                }
                let (start, stream_id) = parse_start(text)?;
                self.format = Some(start.format);
                self.stream_id = stream_id;
                Ok(CarrierInbound::Start(start))
            }
            "connected" | "mark" | "error" => Ok(CarrierInbound::Ignored),
            "stop" => Ok(CarrierInbound::Stop),
            _ => Err(ProtocolError::UnknownEvent),
        }
    }

    fn decode_binary<'a>(
        &'a mut self,
        frame: &'a [u8],
    ) -> Result<CarrierInbound<'a>, ProtocolError> {
        Err(ProtocolError::BinaryFrame { len: frame.len() })
    }

    fn format(&self) -> Option<AudioFormat> {
        self.format
    }

    fn encode_media(
        &mut self,
        audio: &[u8],
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        if self.format.is_none() {
            return Err(ProtocolError::NotStarted);
        }
        let wire = if self.is_l16() {
            self.swapped.clear();
            self.swapped.extend_from_slice(audio);
            swap_pcm16_bytes(&mut self.swapped);
            &self.swapped[..]
        } else {
            audio
        };
        self.out.clear();
        self.out
            .push_str(r#"{"event":"media","media":{"payload":""#);
        BASE64.encode_string(wire, &mut self.out);
        self.out.push_str(r#""}}"#);
        emit(CarrierOutbound::Text(&self.out));
        Ok(())
    }

    fn encode_clear(
        &mut self,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        if self.format.is_none() {
            return Err(ProtocolError::NotStarted);
        }
        emit(CarrierOutbound::Text(r#"{"event":"clear"}"#));
        Ok(())
    }
}

/// Swaps the two bytes of every 16-bit sample in place: little-endian to big-endian and back
/// (an odd trailing byte is left alone).
fn swap_pcm16_bytes(bytes: &mut [u8]) {
    for pair in bytes.chunks_exact_mut(2) {
        pair.swap(0, 1);
    }
}

/// What every message is read as first, borrowed from the frame; other fields are skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<Text<'a>>,
    #[serde(borrow)]
    sequence_number: Option<Scalar<'a>>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
    #[serde(borrow)]
    dtmf: Option<DtmfBody<'a>>,
    #[serde(borrow)]
    digit: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    track: Option<Text<'a>>,
    #[serde(borrow)]
    chunk: Option<Scalar<'a>>,
    #[serde(borrow)]
    payload: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct DtmfBody<'a> {
    #[serde(borrow)]
    digit: Option<Scalar<'a>>,
}

/// `start`, read a second time in full (once per stream).
#[derive(Deserialize)]
struct StartMessage {
    stream_id: Option<String>,
    start: Option<StartBody>,
}

#[derive(Deserialize)]
struct StartBody {
    call_control_id: Option<String>,
    custom_parameters: Option<BTreeMap<String, String>>,
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
struct MediaFormat {
    encoding: Option<String>,
    sample_rate: Option<u64>,
    channels: Option<u64>,
}

/// Validates a `start` frame: the start and the `stream_id`.
fn parse_start(text: &str) -> Result<(CarrierStart, Option<String>), ProtocolError> {
    let message: StartMessage =
        serde_json::from_str(text).map_err(|_| ProtocolError::BadStart("start"))?;
    let body = message.start.ok_or(ProtocolError::BadStart("start"))?;
    let media_format = body
        .media_format
        .ok_or(ProtocolError::BadStart("start.media_format"))?;
    let encoding = media_format
        .encoding
        .ok_or(ProtocolError::BadStart("start.media_format.encoding"))?;
    let sample_rate_hz = media_format
        .sample_rate
        .ok_or(ProtocolError::BadStart("start.media_format.sample_rate"))?;
    let format = telnyx_format(
        &encoding,
        sample_rate_hz,
        media_format.channels.unwrap_or(1),
    )?;
    let mut parameters = body.custom_parameters.unwrap_or_default();
    let (api_key, target) = take_caller_parameters(&mut parameters)?;
    let start = CarrierStart {
        call_id: body.call_control_id.unwrap_or_default(),
        format,
        target,
        api_key,
        parameters,
    };
    Ok((start, message.stream_id.filter(|id| !id.is_empty())))
}

/// The format of a Telnyx `media_format`, if voxroute speaks it.
fn telnyx_format(
    encoding: &str,
    sample_rate_hz: u64,
    channels: u64,
) -> Result<AudioFormat, ProtocolError> {
    let codec = match encoding.to_ascii_uppercase().as_str() {
        "PCMU" => Codec::Mulaw,
        "PCMA" => Codec::Alaw,
        "L16" => Codec::Pcm16,
        _ => return Err(ProtocolError::UnsupportedFormat),
    };
    let rate = match (codec, sample_rate_hz) {
        (_, 8_000) => SampleRate::HZ_8000,
        (Codec::Pcm16, 16_000) => SampleRate::HZ_16000,
        _ => return Err(ProtocolError::UnsupportedFormat),
    };
    if channels != 1 {
        return Err(ProtocolError::UnsupportedFormat);
    }
    AudioFormat::new(codec, rate, Channels::Mono).map_err(ProtocolError::BadAudioFormat)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::protocol::{MAX_TEXT_FRAME, RouteTarget};

    /// `start`, verbatim from protocols.md §2a (IDs shortened there).
    const START: &str = r#"{"event": "start", "sequence_number": "1", "stream_id": "32DE0DEA-...",
 "start": {"user_id": "3E6F995F-...", "call_control_id": "v2:T02llQ...", "call_session_id": "ff55a038-...",
           "from": "+13122010094", "to": "+13122123456", "tags": ["TAG1"], "client_state": "aGF2ZSBh...",
           "custom_parameters": {"customer_id": "customer_123"},
           "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}"#;

    /// `connected`, verbatim from protocols.md §2a.
    const CONNECTED: &str = r#"{"event": "connected", "version": "1.0.0"}"#;

    fn start_with(edit: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(START).unwrap();
        edit(&mut value);
        value.to_string()
    }

    fn media(sequence: &str, chunk: Option<&str>, payload: &str) -> String {
        let mut media = json!({"track": "inbound", "timestamp": "5", "payload": payload});
        if let Some(chunk) = chunk {
            media["chunk"] = json!(chunk);
        }
        json!({"event": "media", "sequence_number": sequence, "stream_id": "32DE0DEA-...", "media": media})
            .to_string()
    }

    fn started(encoding: &str, rate: u32) -> TelnyxCodec {
        let mut codec = TelnyxCodec::new();
        let frame = start_with(|v| {
            v["start"]["media_format"] =
                json!({"encoding": encoding, "sample_rate": rate, "channels": 1});
        });
        assert!(matches!(
            codec.decode_text(&frame),
            Ok(CarrierInbound::Start(_))
        ));
        codec
    }

    fn assert_skipped_then_recovers(codec: &mut TelnyxCodec, frame: &str, expected: ProtocolError) {
        assert_eq!(codec.decode_text(frame).unwrap_err(), expected, "{frame}");
        assert!(!expected.is_fatal(), "{expected:?}");
        let good = media("9", Some("7"), &BASE64.encode([1u8, 2, 3, 4]));
        assert!(matches!(
            codec.decode_text(&good),
            Ok(CarrierInbound::Media {
                sequence: Some(7),
                ..
            })
        ));
    }

    /// The documented `start` decodes: PCMU 8 kHz, call id, parameters; `connected` is
    /// ignored.
    #[test]
    fn golden_start() {
        let mut codec = TelnyxCodec::new();
        assert_eq!(
            codec.decode_text(CONNECTED).unwrap(),
            CarrierInbound::Ignored
        );
        let CarrierInbound::Start(start) = codec.decode_text(START).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.format, AudioFormat::telephony_mulaw());
        assert_eq!(start.call_id, "v2:T02llQ...");
        assert_eq!(start.target, RouteTarget::Default);
        assert_eq!(start.api_key, None);
        assert_eq!(start.parameters["customer_id"], "customer_123");
        assert_eq!(codec.stream_id(), Some("32DE0DEA-..."));
        assert_eq!(codec.format(), Some(AudioFormat::telephony_mulaw()));
        assert_eq!(codec.frame_bytes(), Some(160));
        assert_eq!(codec.carrier(), "telnyx");
    }

    /// The key, provider and route come from `custom_parameters`; the key is redacted.
    #[test]
    fn custom_parameters_carry_key_and_target() {
        let frame = start_with(|v| {
            v["start"]["custom_parameters"] = json!({"api_key": "vxr_secret", "provider": "echo"});
        });
        let CarrierInbound::Start(start) = TelnyxCodec::new().decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.api_key.as_deref(), Some("vxr_secret"));
        assert_eq!(start.target, RouteTarget::Provider("echo".into()));
        let debug = format!("{:?}", CarrierInbound::Start(start));
        assert!(!debug.contains("vxr_secret"), "{debug}");
    }

    /// PCMA and L16 at 8 and 16 kHz are accepted, in any case.
    #[test]
    fn accepted_formats() {
        for (encoding, rate, codec) in [
            ("PCMA", 8_000, Codec::Alaw),
            ("pcmu", 8_000, Codec::Mulaw),
            ("L16", 8_000, Codec::Pcm16),
            ("L16", 16_000, Codec::Pcm16),
        ] {
            let codec_state = started(encoding, rate);
            let format = codec_state.format().unwrap();
            assert_eq!(format.codec, codec, "{encoding}");
            assert_eq!(format.sample_rate.hz(), rate, "{encoding}");
        }
    }

    /// Media decodes with its chunk as the sequence; without a chunk the `sequence_number`
    /// is used; numbers work as well as strings.
    #[test]
    fn media_carries_its_sequence() {
        let mut codec = started("PCMU", 8_000);
        let payload = BASE64.encode([0xffu8; 160]);
        assert_eq!(
            codec.decode_text(&media("4", Some("2"), &payload)).unwrap(),
            CarrierInbound::Media {
                sequence: Some(2),
                payload: &[0xff; 160]
            }
        );
        assert!(matches!(
            codec.decode_text(&media("4", None, &payload)).unwrap(),
            CarrierInbound::Media {
                sequence: Some(4),
                ..
            }
        ));
        let numeric = json!({"event": "media", "sequence_number": 70_000,
            "media": {"chunk": 65_537, "payload": payload}})
        .to_string();
        assert!(matches!(
            codec.decode_text(&numeric).unwrap(),
            CarrierInbound::Media {
                sequence: Some(1),
                ..
            }
        ));
        let bare = json!({"event": "media", "media": {"payload": payload}}).to_string();
        assert!(matches!(
            codec.decode_text(&bare).unwrap(),
            CarrierInbound::Media { sequence: None, .. }
        ));
        let outbound =
            json!({"event": "media", "media": {"track": "outbound", "payload": payload}})
                .to_string();
        assert_eq!(
            codec.decode_text(&outbound).unwrap(),
            CarrierInbound::Ignored
        );
    }

    /// L16 is big-endian on the wire: inbound is swapped to little-endian, outbound back.
    #[test]
    fn l16_is_big_endian_both_ways() {
        let mut codec = started("L16", 16_000);
        let wire = [0x12u8, 0x34, 0xff, 0xfe];
        let frame = media("2", Some("1"), &BASE64.encode(wire));
        assert_eq!(
            codec.decode_text(&frame).unwrap(),
            CarrierInbound::Media {
                sequence: Some(1),
                payload: &[0x34, 0x12, 0xfe, 0xff]
            }
        );
        let mut sent = Vec::new();
        codec
            .encode_media(&[0x34, 0x12, 0xfe, 0xff], &mut |out| {
                sent.push(format!("{out:?}"));
                let CarrierOutbound::Text(text) = out else {
                    panic!("text expected");
                };
                let value: Value = serde_json::from_str(text).unwrap();
                let payload = value["media"]["payload"].as_str().unwrap();
                assert_eq!(BASE64.decode(payload).unwrap(), wire);
            })
            .unwrap();
        assert_eq!(sent.len(), 1);
    }

    /// Outbound `media` and `clear` are the documented shapes; nothing before `start`.
    #[test]
    fn golden_outbound() {
        let mut codec = TelnyxCodec::new();
        let mut texts = Vec::new();
        let mut collect = |out: CarrierOutbound<'_>| {
            if let CarrierOutbound::Text(text) = out {
                texts.push(text.to_owned());
            }
        };
        assert_eq!(
            codec.encode_media(&[1], &mut collect),
            Err(ProtocolError::NotStarted)
        );
        assert_eq!(
            codec.encode_clear(&mut collect),
            Err(ProtocolError::NotStarted)
        );
        codec.decode_text(START).unwrap();
        codec.encode_media(&[158, 143, 137], &mut collect).unwrap();
        codec.encode_clear(&mut collect).unwrap();
        assert_eq!(
            texts,
            [
                r#"{"event":"media","media":{"payload":"no+J"}}"#,
                r#"{"event":"clear"}"#
            ]
        );
        for (text, doc) in texts.iter().zip([
            r#"{"event": "media", "media": {"payload": "no+J"}}"#,
            r#"{"event": "clear"}"#,
        ]) {
            assert_eq!(
                serde_json::from_str::<Value>(text).unwrap(),
                serde_json::from_str::<Value>(doc).unwrap()
            );
        }
    }

    /// DTMF from `dtmf.digit` or a top-level `digit`; `stop`, `mark` and `error` decode.
    #[test]
    fn dtmf_stop_mark_error() {
        let mut codec = started("PCMU", 8_000);
        assert_eq!(
            codec
                .decode_text(r#"{"event":"dtmf","sequence_number":"5","dtmf":{"digit":"1"}}"#)
                .unwrap(),
            CarrierInbound::Dtmf { digit: '1' }
        );
        assert_eq!(
            codec
                .decode_text(r##"{"event":"dtmf","digit":"#"}"##)
                .unwrap(),
            CarrierInbound::Dtmf { digit: '#' }
        );
        assert_eq!(
            codec
                .decode_text(r#"{"event":"mark","mark":{"name":"utt-1"}}"#)
                .unwrap(),
            CarrierInbound::Ignored
        );
        assert_eq!(
            codec
                .decode_text(r#"{"event":"error","payload":{"code":100002}}"#)
                .unwrap(),
            CarrierInbound::Ignored
        );
        assert_eq!(
            codec
                .decode_text(r#"{"event":"stop","sequence_number":"9","stream_id":"x"}"#)
                .unwrap(),
            CarrierInbound::Stop
        );
    }

    /// Every skippable bad frame is refused with its own error and the next good frame decodes.
    #[test]
    fn bad_frames_are_skipped() {
        let mut codec = started("PCMU", 8_000);
        let cases: Vec<(String, ProtocolError)> = vec![
            ("{not json".into(), ProtocolError::MalformedJson),
            ("[1,2]".into(), ProtocolError::MalformedJson),
            (r#"{"event":5}"#.into(), ProtocolError::MalformedJson),
            (
                r#"{"media":{}}"#.into(),
                ProtocolError::MissingField("event"),
            ),
            (r#"{"event":"hello"}"#.into(), ProtocolError::UnknownEvent),
            (
                r#"{"event":"media"}"#.into(),
                ProtocolError::MissingField("media.payload"),
            ),
            (
                r#"{"event":"media","media":{"chunk":"1"}}"#.into(),
                ProtocolError::MissingField("media.payload"),
            ),
            (
                media("1", Some("x"), "AAAA"),
                ProtocolError::InvalidField("media.chunk"),
            ),
            (
                media("-3", None, "AAAA"),
                ProtocolError::InvalidField("sequence_number"),
            ),
            (media("1", Some("1"), "@@@@"), ProtocolError::BadBase64),
            (
                media("1", Some("1"), ""),
                ProtocolError::PayloadSize { len: 0, max: 960 },
            ),
            (
                media("1", Some("1"), &BASE64.encode([0u8; 961])),
                ProtocolError::PayloadSize { len: 961, max: 960 },
            ),
            (
                r#"{"event":"dtmf"}"#.into(),
                ProtocolError::MissingField("dtmf.digit"),
            ),
            (
                r#"{"event":"dtmf","dtmf":{"digit":"x"}}"#.into(),
                ProtocolError::InvalidField("dtmf.digit"),
            ),
            (START.into(), ProtocolError::DuplicateStart),
        ];
        for (frame, expected) in cases {
            assert_skipped_then_recovers(&mut codec, &frame, expected);
        }
        let huge = media("1", Some("1"), &"A".repeat(MAX_TEXT_FRAME));
        assert_skipped_then_recovers(
            &mut codec,
            &huge,
            ProtocolError::FrameTooLarge {
                len: huge.len(),
                max: MAX_TEXT_FRAME,
            },
        );
        assert_eq!(
            codec.decode_binary(&[0; 160]).unwrap_err(),
            ProtocolError::BinaryFrame { len: 160 }
        );
    }

    /// Media before `start` is refused, skippably.
    #[test]
    fn media_before_start_is_skipped() {
        let mut codec = TelnyxCodec::new();
        assert_eq!(
            codec
                .decode_text(&media("2", Some("1"), "AAAA"))
                .unwrap_err(),
            ProtocolError::MediaBeforeStart
        );
        assert!(matches!(
            codec.decode_text(START),
            Ok(CarrierInbound::Start(_))
        ));
    }

    /// A `start` that cannot be understood, or asks for a format voxroute does not speak, is
    /// fatal and leaves the codec not started.
    #[test]
    fn bad_start_is_fatal_and_leaves_no_state() {
        let format = |encoding: &str, rate: u32, channels: u32| {
            start_with(|v| {
                v["start"]["media_format"] =
                    json!({"encoding": encoding, "sample_rate": rate, "channels": channels});
            })
        };
        let cases: Vec<(String, ProtocolError)> = vec![
            (
                start_with(|v| {
                    v.as_object_mut().unwrap().remove("start");
                }),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("media_format");
                }),
                ProtocolError::BadStart("start.media_format"),
            ),
            (
                start_with(|v| {
                    v["start"]["media_format"]
                        .as_object_mut()
                        .unwrap()
                        .remove("encoding");
                }),
                ProtocolError::BadStart("start.media_format.encoding"),
            ),
            (
                start_with(|v| {
                    v["start"]["media_format"]
                        .as_object_mut()
                        .unwrap()
                        .remove("sample_rate");
                }),
                ProtocolError::BadStart("start.media_format.sample_rate"),
            ),
            (
                start_with(|v| v["start"]["media_format"]["sample_rate"] = json!("8000")),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| v["start"]["custom_parameters"] = json!({"n": 1})),
                ProtocolError::BadStart("start"),
            ),
            (format("OPUS", 16_000, 1), ProtocolError::UnsupportedFormat),
            (format("G722", 8_000, 1), ProtocolError::UnsupportedFormat),
            (
                format("AMR-WB", 16_000, 1),
                ProtocolError::UnsupportedFormat,
            ),
            (format("PCMU", 16_000, 1), ProtocolError::UnsupportedFormat),
            (format("L16", 24_000, 1), ProtocolError::UnsupportedFormat),
            (format("PCMU", 8_000, 2), ProtocolError::UnsupportedFormat),
            (
                start_with(|v| {
                    v["start"]["custom_parameters"] = json!({"provider": "echo", "route": "r"});
                }),
                ProtocolError::ProviderAndRoute,
            ),
        ];
        for (frame, expected) in cases {
            let mut codec = TelnyxCodec::new();
            assert_eq!(codec.decode_text(&frame).unwrap_err(), expected, "{frame}");
            assert!(expected.is_fatal(), "{expected:?}");
            assert_eq!(codec.format(), None);
            assert!(matches!(
                codec.decode_text(START),
                Ok(CarrierInbound::Start(_))
            ));
        }
    }

    /// Round trip: outbound media of every length decodes back to the same bytes (mu-law and
    /// L16, whose swap must cancel out).
    #[test]
    fn media_round_trips() {
        for (encoding, rate, step) in [("PCMU", 8_000, 1), ("L16", 16_000, 2)] {
            let mut codec = started(encoding, rate);
            for len in (step..=960).step_by(step) {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let mut message = String::new();
                codec
                    .encode_media(&payload, &mut |out| {
                        if let CarrierOutbound::Text(text) = out {
                            message = text.to_owned();
                        }
                    })
                    .unwrap();
                let message = message.replacen(r#""media":{"#, r#""media":{"chunk":"3","#, 1);
                assert_eq!(
                    codec.decode_text(&message).unwrap(),
                    CarrierInbound::Media {
                        sequence: Some(3),
                        payload: &payload
                    },
                    "{encoding} length {len}"
                );
            }
        }
    }
}
