//! Plivo Audio Streams, bidirectional, as served on `GET /v1/telephony/plivo`: a
//! [`CarrierCodec`] (reference: `reference/protocols.md` §2b).
//!
//! # The protocol in brief
//!
//! Plivo opens the socket (XML `<Stream bidirectional="true">` whose text is the `wss://`
//! URL) and sends JSON text frames with an `event`: one `start`, then `media` interleaved
//! with `dtmf`, and acknowledgements of what voxroute sent (`playedStream` or `played` for a
//! checkpoint, `clearedAudio`); a `stop` is accepted too, though the socket closing is how
//! Plivo usually ends. Unlike Twilio, `sequenceNumber` is a number.
//!
//! ```json
//! {"event":"start","sequenceNumber":1,
//!  "start":{"callId":"12345678-…","streamId":"87654321-…","accountId":"MA…","tracks":["inbound"],
//!           "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000}},
//!  "extra_headers":"route=support"}
//! {"event":"media","sequenceNumber":3,"streamId":"87654321-…",
//!  "media":{"track":"inbound","timestamp":"40","chunk":2,"payload":"<base64>"}}
//! ```
//!
//! voxroute answers with `playAudio` in the stream's format and, on barge-in, `clearAudio`:
//!
//! ```json
//! {"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"<base64>"},"streamId":"87654321-…"}
//! {"event":"clearAudio","streamId":"87654321-…"}
//! ```
//!
//! # Formats and parameters
//!
//! `audio/x-mulaw` at 8 kHz and `audio/x-l16` at 8 or 16 kHz, mono (the `contentType`s Plivo
//! streams); anything else is refused with [`ProtocolError::UnsupportedFormat`] (fatal). A
//! `;rate=N` on the encoding is read when `sampleRate` is absent. Plivo does not state the
//! byte order of `audio/x-l16`: it is read and written **little-endian** (the raw PCM of
//! Plivo's own examples), unverified against a live stream.
//!
//! The `provider` and `route` parameters may come in the `extraHeaders` of the `<Stream>`,
//! delivered as `extra_headers` (`name=value` pairs separated by `;` as in the reference, or
//! `,` as in Plivo's XML docs). Plivo allows only letters and digits there, so the API key
//! (`vxr_…`) cannot pass through it: it goes in the stream URL's query string
//! (`?api_key=…`), which the endpoint checks before the upgrade. An `api_key` that does
//! arrive in `extra_headers` is honoured all the same.
//!
//! Unverified: the literal `media` and `dtmf` frames (media order is taken as delivered: the
//! sequence fields are not needed and may be strings or numbers), `played` vs `playedStream`
//! (both ignored).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use voxroute_codecs::{AudioFormat, Channels, Codec, SampleRate};

use super::carrier::{
    CarrierCodec, CarrierInbound, CarrierOutbound, CarrierStart, Scalar, max_payload_bytes,
    media_type, take_caller_parameters,
};
use super::{BASE64, ProtocolError, Text, decode_base64_payload, parse_frame, push_json_str};

/// Largest decoded `media` payload in any accepted format: 120 ms of L16 at 16 kHz.
pub const MAX_MEDIA_PAYLOAD: usize = 3_840;

/// Initial capacity of the outbound buffer: a 120 ms L16 16 kHz `playAudio` fits.
const OUT_CAPACITY: usize = 5_400;

/// The sans-IO codec of one Plivo stream.
#[derive(Debug)]
pub struct PlivoCodec {
    /// Set once by the first good `start`, with the `streamId` every outbound frame carries.
    started: Option<(AudioFormat, String)>,
    /// Decoded `media` payloads, [`MAX_MEDIA_PAYLOAD`] bytes allocated once.
    media: Box<[u8]>,
    /// The last outbound message, reused.
    out: String,
}

impl Default for PlivoCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl PlivoCodec {
    /// A codec for a new stream, with every buffer of the hot path allocated.
    pub fn new() -> Self {
        PlivoCodec {
            started: None,
            media: vec![0; MAX_MEDIA_PAYLOAD].into_boxed_slice(),
            out: String::with_capacity(OUT_CAPACITY),
        }
    }

    /// The `streamId` of the `start` handled, if any.
    pub fn stream_id(&self) -> Option<&str> {
        self.started.as_ref().map(|(_, id)| id.as_str())
    }
}

impl CarrierCodec for PlivoCodec {
    fn carrier(&self) -> &'static str {
        "plivo"
    }

    fn decode_text<'a>(&'a mut self, text: &'a str) -> Result<CarrierInbound<'a>, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let event = envelope.event.ok_or(ProtocolError::MissingField("event"))?;
        match &*event.0 {
            "media" => {
                let Some((format, _)) = self.started else {
                    return Err(ProtocolError::MediaBeforeStart);
                };
                let media = envelope
                    .media
                    .ok_or(ProtocolError::MissingField("media.payload"))?;
                if media.track.as_ref().is_some_and(|t| t.0 == "outbound") {
                    return Ok(CarrierInbound::Ignored);
                }
                let payload = media
                    .payload
                    .ok_or(ProtocolError::MissingField("media.payload"))?;
                let len =
                    decode_base64_payload(&payload.0, &mut self.media, max_payload_bytes(format))?;
                Ok(CarrierInbound::Media {
                    sequence: None,
                    payload: &self.media[..len],
                })
            }
            "dtmf" => {
                let digit = envelope
                    .dtmf
                    .and_then(|dtmf| dtmf.digit)
                    .ok_or(ProtocolError::MissingField("dtmf.digit"))?;
                let digit = digit
                    .dtmf_digit()
                    .ok_or(ProtocolError::InvalidField("dtmf.digit"))?;
                Ok(CarrierInbound::Dtmf { digit })
            }
            "start" => {
                if self.started.is_some() {
                    return Err(ProtocolError::DuplicateStart);
                }
                let (start, stream_id) = parse_start(text)?;
                self.started = Some((start.format, stream_id));
                Ok(CarrierInbound::Start(start))
            }
            "playedStream" | "played" | "clearedAudio" => Ok(CarrierInbound::Ignored),
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
        self.started.as_ref().map(|(format, _)| *format)
    }

    fn encode_media(
        &mut self,
        audio: &[u8],
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        let (format, stream_id) = self.started.as_ref().ok_or(ProtocolError::NotStarted)?;
        let content_type = match format.codec {
            Codec::Pcm16 => "audio/x-l16",
            _ => "audio/x-mulaw",
        };
        self.out.clear();
        self.out
            .push_str(r#"{"event":"playAudio","media":{"contentType":""#);
        self.out.push_str(content_type);
        self.out.push_str(r#"","sampleRate":"#);
        self.out.push_str(match format.sample_rate.hz() {
            16_000 => "16000",
            _ => "8000",
        });
        self.out.push_str(r#","payload":""#);
        BASE64.encode_string(audio, &mut self.out);
        self.out.push_str(r#""},"streamId":"#);
        push_json_str(&mut self.out, stream_id);
        self.out.push('}');
        emit(CarrierOutbound::Text(&self.out));
        Ok(())
    }

    fn encode_clear(
        &mut self,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        let (_, stream_id) = self.started.as_ref().ok_or(ProtocolError::NotStarted)?;
        self.out.clear();
        self.out.push_str(r#"{"event":"clearAudio","streamId":"#);
        push_json_str(&mut self.out, stream_id);
        self.out.push('}');
        emit(CarrierOutbound::Text(&self.out));
        Ok(())
    }
}

/// What every message is read as first, borrowed from the frame; other fields are skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<Text<'a>>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
    #[serde(borrow)]
    dtmf: Option<DtmfBody<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    track: Option<Text<'a>>,
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
#[serde(rename_all = "camelCase")]
struct StartMessage {
    stream_id: Option<String>,
    start: Option<StartBody>,
    #[serde(alias = "extra_headers")]
    extra_headers: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    call_id: Option<String>,
    stream_id: Option<String>,
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: Option<String>,
    sample_rate: Option<u64>,
    channels: Option<u64>,
}

/// Validates a `start` frame: the start and the `streamId`.
fn parse_start(text: &str) -> Result<(CarrierStart, String), ProtocolError> {
    let message: StartMessage =
        serde_json::from_str(text).map_err(|_| ProtocolError::BadStart("start"))?;
    let body = message.start.ok_or(ProtocolError::BadStart("start"))?;
    let stream_id = body
        .stream_id
        .filter(|id| !id.is_empty())
        .or(message.stream_id.filter(|id| !id.is_empty()))
        .ok_or(ProtocolError::BadStart("start.streamId"))?;
    let media_format = body
        .media_format
        .ok_or(ProtocolError::BadStart("start.mediaFormat"))?;
    let encoding = media_format
        .encoding
        .ok_or(ProtocolError::BadStart("start.mediaFormat.encoding"))?;
    let (kind, rate_in_type) =
        media_type(&encoding).ok_or(ProtocolError::BadStart("start.mediaFormat.encoding"))?;
    let sample_rate_hz = media_format
        .sample_rate
        .or(rate_in_type.map(u64::from))
        .ok_or(ProtocolError::BadStart("start.mediaFormat.sampleRate"))?;
    let format = plivo_format(&kind, sample_rate_hz, media_format.channels.unwrap_or(1))?;
    let mut parameters = message
        .extra_headers
        .as_deref()
        .map(extra_headers)
        .unwrap_or_default();
    let (api_key, target) = take_caller_parameters(&mut parameters)?;
    let start = CarrierStart {
        call_id: body.call_id.unwrap_or_default(),
        format,
        target,
        api_key,
        parameters,
    };
    Ok((start, stream_id))
}

/// The `name=value` pairs of Plivo's `extra_headers` (`;`- or `,`-separated); pieces
/// without `=` are skipped.
fn extra_headers(value: &str) -> BTreeMap<String, String> {
    value
        .split([';', ','])
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// The format of a Plivo `mediaFormat`, if voxroute speaks it.
fn plivo_format(
    kind: &str,
    sample_rate_hz: u64,
    channels: u64,
) -> Result<AudioFormat, ProtocolError> {
    let codec = match kind {
        "audio/x-mulaw" => Codec::Mulaw,
        "audio/x-l16" => Codec::Pcm16,
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

    /// `start`, verbatim from protocols.md §2b.
    const START: &str = r#"{"event": "start", "sequenceNumber": 1,
 "start": {"callId": "12345678-1234-1234-1234-123456789abc", "streamId": "87654321-4321-4321-4321-cba987654321",
           "accountId": "MAXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
           "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
 "extra_headers": "userId=12345;sessionId=abc-xyz"}"#;

    const STREAM_ID: &str = "87654321-4321-4321-4321-cba987654321";

    fn start_with(edit: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(START).unwrap();
        edit(&mut value);
        value.to_string()
    }

    fn media(payload: &str) -> String {
        json!({"event": "media", "sequenceNumber": 3, "streamId": STREAM_ID,
            "media": {"track": "inbound", "timestamp": "40", "chunk": 2, "payload": payload}})
        .to_string()
    }

    fn started() -> PlivoCodec {
        let mut codec = PlivoCodec::new();
        assert!(matches!(
            codec.decode_text(START),
            Ok(CarrierInbound::Start(_))
        ));
        codec
    }

    fn collect(codec: &mut PlivoCodec, audio: Option<&[u8]>) -> Vec<String> {
        let mut texts = Vec::new();
        let mut emit = |out: CarrierOutbound<'_>| match out {
            CarrierOutbound::Text(text) => texts.push(text.to_owned()),
            CarrierOutbound::Binary(_) => panic!("Plivo is text only"),
        };
        match audio {
            Some(audio) => codec.encode_media(audio, &mut emit).unwrap(),
            None => codec.encode_clear(&mut emit).unwrap(),
        }
        texts
    }

    fn assert_skipped_then_recovers(codec: &mut PlivoCodec, frame: &str, expected: ProtocolError) {
        assert_eq!(codec.decode_text(frame).unwrap_err(), expected, "{frame}");
        assert!(!expected.is_fatal(), "{expected:?}");
        assert!(matches!(
            codec.decode_text(&media("AAEC")),
            Ok(CarrierInbound::Media {
                sequence: None,
                payload: [0, 1, 2]
            })
        ));
    }

    /// The documented `start` decodes: mu-law 8 kHz, call id, stream id, extra headers.
    #[test]
    fn golden_start() {
        let mut codec = PlivoCodec::new();
        let CarrierInbound::Start(start) = codec.decode_text(START).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.format, AudioFormat::telephony_mulaw());
        assert_eq!(start.call_id, "12345678-1234-1234-1234-123456789abc");
        assert_eq!(start.parameters["userId"], "12345");
        assert_eq!(start.parameters["sessionId"], "abc-xyz");
        assert_eq!(start.target, RouteTarget::Default);
        assert_eq!(codec.stream_id(), Some(STREAM_ID));
        assert_eq!(codec.frame_bytes(), Some(160));
        assert_eq!(codec.carrier(), "plivo");
    }

    /// `extra_headers` carry the provider or route (either separator), and a key if one
    /// gets through; `extraHeaders` is read too.
    #[test]
    fn extra_headers_carry_the_target() {
        let frame = start_with(|v| v["extra_headers"] = json!("route=support,test1=12"));
        let CarrierInbound::Start(start) = PlivoCodec::new().decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.target, RouteTarget::Route("support".into()));
        assert_eq!(start.parameters["test1"], "12");
        let frame = start_with(|v| {
            v.as_object_mut().unwrap().remove("extra_headers");
            v["extraHeaders"] = json!("provider=echo;api_key=vxr_secret;junk");
        });
        let CarrierInbound::Start(start) = PlivoCodec::new().decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.target, RouteTarget::Provider("echo".into()));
        assert_eq!(start.api_key.as_deref(), Some("vxr_secret"));
        assert!(!format!("{start:?}").contains("vxr_secret"));
    }

    /// L16 at 8 and 16 kHz, and a rate given only in the encoding, are accepted.
    #[test]
    fn accepted_formats() {
        for (encoding, rate, hz, codec) in [
            ("audio/x-l16", Some(8_000), 8_000, Codec::Pcm16),
            ("audio/x-l16", Some(16_000), 16_000, Codec::Pcm16),
            ("audio/x-l16;rate=16000", None, 16_000, Codec::Pcm16),
            ("audio/x-mulaw;rate=8000", None, 8_000, Codec::Mulaw),
        ] {
            let frame = start_with(|v| {
                v["start"]["mediaFormat"] = json!({"encoding": encoding});
                if let Some(rate) = rate {
                    v["start"]["mediaFormat"]["sampleRate"] = json!(rate);
                }
            });
            let CarrierInbound::Start(start) = PlivoCodec::new().decode_text(&frame).unwrap()
            else {
                panic!("not a start: {encoding}");
            };
            assert_eq!(
                (start.format.codec, start.format.sample_rate.hz()),
                (codec, hz),
                "{encoding}"
            );
        }
    }

    /// Media decodes in order (no sequence); outbound-track media is ignored.
    #[test]
    fn golden_media() {
        let mut codec = started();
        assert_eq!(
            codec.decode_text(&media("no+JhoaJjpzS")).unwrap(),
            CarrierInbound::Media {
                sequence: None,
                payload: &[158, 143, 137, 134, 134, 137, 142, 156, 210]
            }
        );
        let outbound = json!({"event": "media", "media": {"track": "outbound", "payload": "AAEC"}});
        assert_eq!(
            codec.decode_text(&outbound.to_string()).unwrap(),
            CarrierInbound::Ignored
        );
    }

    /// Outbound `playAudio` and `clearAudio` are the documented shapes; nothing before start.
    #[test]
    fn golden_outbound() {
        let mut codec = PlivoCodec::new();
        let mut emit = |_: CarrierOutbound<'_>| panic!("nothing before start");
        assert_eq!(
            codec.encode_media(&[1], &mut emit),
            Err(ProtocolError::NotStarted)
        );
        assert_eq!(
            codec.encode_clear(&mut emit),
            Err(ProtocolError::NotStarted)
        );
        codec.decode_text(START).unwrap();
        let play = collect(&mut codec, Some(&[158, 143, 137]));
        assert_eq!(
            play,
            [format!(
                r#"{{"event":"playAudio","media":{{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"no+J"}},"streamId":"{STREAM_ID}"}}"#
            )]
        );
        let doc = json!({"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "no+J"}, "streamId": STREAM_ID});
        assert_eq!(serde_json::from_str::<Value>(&play[0]).unwrap(), doc);
        let clear = collect(&mut codec, None);
        assert_eq!(
            serde_json::from_str::<Value>(&clear[0]).unwrap(),
            json!({"event": "clearAudio", "streamId": STREAM_ID})
        );

        let l16 = start_with(|v| {
            v["start"]["mediaFormat"] = json!({"encoding": "audio/x-l16", "sampleRate": 16000});
        });
        let mut codec = PlivoCodec::new();
        codec.decode_text(&l16).unwrap();
        let play = collect(&mut codec, Some(&[0, 1, 2, 3]));
        let value: Value = serde_json::from_str(&play[0]).unwrap();
        assert_eq!(value["media"]["contentType"], "audio/x-l16");
        assert_eq!(value["media"]["sampleRate"], 16_000);
        assert_eq!(
            BASE64
                .decode(value["media"]["payload"].as_str().unwrap())
                .unwrap(),
            [0, 1, 2, 3]
        );
    }

    /// DTMF, acknowledgements and `stop` decode.
    #[test]
    fn dtmf_acks_stop() {
        let mut codec = started();
        assert_eq!(
            codec
                .decode_text(r#"{"event":"dtmf","dtmf":{"digit":"5"}}"#)
                .unwrap(),
            CarrierInbound::Dtmf { digit: '5' }
        );
        for ack in [
            r#"{"event":"playedStream","streamId":"s","name":"n"}"#,
            r#"{"event":"played","streamId":"s","name":"n"}"#,
            r#"{"event":"clearedAudio","streamId":"s"}"#,
        ] {
            assert_eq!(codec.decode_text(ack).unwrap(), CarrierInbound::Ignored);
        }
        assert_eq!(
            codec.decode_text(r#"{"event":"stop"}"#).unwrap(),
            CarrierInbound::Stop
        );
    }

    /// Every skippable bad frame is refused with its own error and the next good one decodes.
    #[test]
    fn bad_frames_are_skipped() {
        let mut codec = PlivoCodec::new();
        assert_eq!(
            codec.decode_text(&media("AAEC")).unwrap_err(),
            ProtocolError::MediaBeforeStart
        );
        codec.decode_text(START).unwrap();
        let cases: Vec<(String, ProtocolError)> = vec![
            ("{not json".into(), ProtocolError::MalformedJson),
            (
                r#"{"event":["media"]}"#.into(),
                ProtocolError::MalformedJson,
            ),
            (
                r#"{"media":{}}"#.into(),
                ProtocolError::MissingField("event"),
            ),
            (
                r#"{"event":"checkpoint"}"#.into(),
                ProtocolError::UnknownEvent,
            ),
            (
                r#"{"event":"media","media":{}}"#.into(),
                ProtocolError::MissingField("media.payload"),
            ),
            (media("**not base64**"), ProtocolError::BadBase64),
            (media(""), ProtocolError::PayloadSize { len: 0, max: 960 }),
            (
                media(&BASE64.encode([0u8; 961])),
                ProtocolError::PayloadSize { len: 961, max: 960 },
            ),
            (
                r#"{"event":"dtmf","dtmf":{}}"#.into(),
                ProtocolError::MissingField("dtmf.digit"),
            ),
            (
                r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#.into(),
                ProtocolError::InvalidField("dtmf.digit"),
            ),
            (START.into(), ProtocolError::DuplicateStart),
        ];
        for (frame, expected) in cases {
            assert_skipped_then_recovers(&mut codec, &frame, expected);
        }
        let huge = media(&"A".repeat(MAX_TEXT_FRAME));
        assert_skipped_then_recovers(
            &mut codec,
            &huge,
            ProtocolError::FrameTooLarge {
                len: huge.len(),
                max: MAX_TEXT_FRAME,
            },
        );
        assert_eq!(
            codec.decode_binary(&[1, 2]).unwrap_err(),
            ProtocolError::BinaryFrame { len: 2 }
        );
    }

    /// A `start` that cannot be understood or asks for another format is fatal and leaves
    /// the codec not started.
    #[test]
    fn bad_start_is_fatal_and_leaves_no_state() {
        let format = |format: Value| start_with(|v| v["start"]["mediaFormat"] = format);
        let cases: Vec<(String, ProtocolError)> = vec![
            (
                start_with(|v| {
                    v.as_object_mut().unwrap().remove("start");
                }),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("streamId");
                }),
                ProtocolError::BadStart("start.streamId"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("mediaFormat");
                }),
                ProtocolError::BadStart("start.mediaFormat"),
            ),
            (
                format(json!({"sampleRate": 8000})),
                ProtocolError::BadStart("start.mediaFormat.encoding"),
            ),
            (
                format(json!({"encoding": "audio/x-l16"})),
                ProtocolError::BadStart("start.mediaFormat.sampleRate"),
            ),
            (
                format(json!({"encoding": "audio/x-l16;rate=high"})),
                ProtocolError::BadStart("start.mediaFormat.encoding"),
            ),
            (
                start_with(|v| v["extra_headers"] = json!(5)),
                ProtocolError::BadStart("start"),
            ),
            (
                format(json!({"encoding": "audio/x-alaw", "sampleRate": 8000})),
                ProtocolError::UnsupportedFormat,
            ),
            (
                format(json!({"encoding": "audio/x-mulaw", "sampleRate": 16000})),
                ProtocolError::UnsupportedFormat,
            ),
            (
                format(json!({"encoding": "audio/x-l16", "sampleRate": 24000})),
                ProtocolError::UnsupportedFormat,
            ),
            (
                format(json!({"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 2})),
                ProtocolError::UnsupportedFormat,
            ),
            (
                start_with(|v| v["extra_headers"] = json!("provider=echo;route=r")),
                ProtocolError::ProviderAndRoute,
            ),
        ];
        for (frame, expected) in cases {
            let mut codec = PlivoCodec::new();
            assert_eq!(codec.decode_text(&frame).unwrap_err(), expected, "{frame}");
            assert!(expected.is_fatal(), "{expected:?}");
            assert_eq!(codec.format(), None);
            assert!(matches!(
                codec.decode_text(START),
                Ok(CarrierInbound::Start(_))
            ));
        }
    }
}
