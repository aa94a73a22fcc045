//! Twilio Media Streams, bidirectional (`<Connect><Stream>`), as served on
//! `GET /v1/telephony/twilio`.
//!
//! This module owns the wire format only (reference: `reference/protocols.md` §1): a
//! [`TwilioCodec`] turns each text frame Twilio sends into a [`TwilioInbound`] and writes the
//! three messages voxroute sends back (`media`, `mark`, `clear`). It does no I/O.
//!
//! # The protocol in brief
//!
//! Twilio is the WebSocket client and sends only JSON **text** frames, each with an `event`:
//! `connected`, then one `start`, then `media` (base64 mu-law, 8 kHz mono, typically 20 ms)
//! interleaved with `dtmf` and `mark`, then `stop`. `sequenceNumber`, `media.chunk` and
//! `media.timestamp` are strings; fields voxroute does not use are ignored, but an unknown
//! `event` is refused. The caller's API key and the provider or route come from the
//! `<Parameter>`s of the TwiML, delivered in `start.customParameters` under
//! [`api_key`](super::PARAM_API_KEY), [`provider`](super::PARAM_PROVIDER) and
//! [`route`](super::PARAM_ROUTE) (Twilio strips query strings from stream URLs).
//!
//! ```json
//! {"event":"start","sequenceNumber":"1","streamSid":"MZ…01",
//!  "start":{"accountSid":"AC…01","streamSid":"MZ…01","callSid":"CA…01","tracks":["inbound"],
//!           "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
//!           "customParameters":{"api_key":"vxr_…","route":"support"}}}
//! {"event":"media","sequenceNumber":"4","streamSid":"MZ…01",
//!  "media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"no+JhoaJjpzS"}}
//! ```
//!
//! voxroute answers with compact JSON:
//!
//! ```json
//! {"event":"media","streamSid":"MZ…01","media":{"payload":"<base64 mu-law>"}}
//! {"event":"mark","streamSid":"MZ…01","mark":{"name":"my label"}}
//! {"event":"clear","streamSid":"MZ…01"}
//! ```
//!
//! `clear` is the barge-in primitive: Twilio drops the audio it has buffered and then echoes
//! every pending `mark`.
//!
//! # What callers must keep
//!
//! - Outbound messages need the `streamSid`, so they can only be written after `start`
//!   ([`ProtocolError::NotStarted`] before).
//! - The slices and strings a call returns borrow the codec's buffers: use them before the
//!   next call. Inbound media is at most [`MAX_MEDIA_PAYLOAD`] bytes (120 ms); outbound media
//!   may be any length (Twilio buffers and plays it in order).
//! - Error handling follows [`ProtocolError::is_fatal`] (see [the module](super)).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use voxroute_codecs::AudioFormat;

use super::carrier::{
    CarrierCodec, CarrierInbound, CarrierOutbound, CarrierStart, dtmf_digit, take_caller_parameters,
};
use super::{
    BASE64, ProtocolError, RouteTarget, Text, decode_base64_payload, parse_frame, push_json_str,
};

/// Largest decoded `media` payload accepted from Twilio: 120 ms of 8 kHz mu-law. Twilio sends
/// 20 ms (160 bytes); the margin absorbs carriers that batch.
pub const MAX_MEDIA_PAYLOAD: usize = 960;

/// The `mediaFormat` Twilio must announce: the only format bidirectional streams carry.
const ENCODING_MULAW: &str = "audio/x-mulaw";

/// Initial capacity of the outbound buffer: a 120 ms `media` message with a 34-character
/// `streamSid` fits without growing.
const OUT_CAPACITY: usize = 2048;

/// One Twilio message, decoded. Borrowed data lives in the codec until its next call.
#[derive(Clone, PartialEq, Eq)]
pub enum TwilioInbound<'a> {
    /// The socket is up (`connected`, the first message).
    Connected,
    /// The stream starts: identifiers, tracks and the caller's parameters (`start`, once).
    Start(TwilioStart),
    /// Caller audio: raw mu-law bytes, 8 kHz mono, 1 to [`MAX_MEDIA_PAYLOAD`] bytes.
    Media(&'a [u8]),
    /// All audio sent before the mark with this name has played (or was cleared).
    Mark {
        /// The name voxroute gave the mark.
        name: &'a str,
    },
    /// The caller pressed a key: `0`–`9`, `*`, `#` or `A`–`D`.
    Dtmf {
        /// The key.
        digit: char,
    },
    /// The stream stopped or the call ended; Twilio closes the socket next.
    Stop,
}

impl fmt::Debug for TwilioInbound<'_> {
    /// Audio is shown by length only: logs never hold audio.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwilioInbound::Connected => f.write_str("Connected"),
            TwilioInbound::Start(start) => f.debug_tuple("Start").field(start).finish(),
            TwilioInbound::Media(bytes) => write!(f, "Media({} bytes)", bytes.len()),
            TwilioInbound::Mark { name } => f.debug_struct("Mark").field("name", name).finish(),
            TwilioInbound::Dtmf { digit } => f.debug_struct("Dtmf").field("digit", digit).finish(),
            TwilioInbound::Stop => f.write_str("Stop"),
        }
    }
}

/// The `start` message: who is calling and what they asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct TwilioStart {
    /// The stream's id (`MZ…`); every outbound message carries it.
    pub stream_sid: String,
    /// The call's id (`CA…`), needed to hang up through Twilio's REST API.
    pub call_sid: String,
    /// The Twilio account (`AC…`).
    pub account_sid: String,
    /// Tracks streamed; `["inbound"]` for `<Connect><Stream>`.
    pub tracks: Vec<String>,
    /// The provider or route named by the `provider` / `route` parameters (empty values count
    /// as absent; both present is refused at decode time).
    pub target: RouteTarget,
    /// The caller's API key from the `api_key` parameter, if any. Moved out of
    /// [`custom_parameters`](Self::custom_parameters) and redacted from `Debug`, so logging or
    /// forwarding the parameters cannot leak it.
    pub api_key: Option<String>,
    /// Every other `<Parameter>` of the TwiML, by name.
    pub custom_parameters: BTreeMap<String, String>,
}

impl TwilioStart {
    /// The audio Twilio sends and expects: mu-law, 8 kHz, mono (checked at decode time).
    pub const fn format(&self) -> AudioFormat {
        AudioFormat::telephony_mulaw()
    }

    /// The caller's API key, if the TwiML passed one.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }
}

impl fmt::Debug for TwilioStart {
    /// The API key is shown as `<redacted>`: keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioStart")
            .field("stream_sid", &self.stream_sid)
            .field("call_sid", &self.call_sid)
            .field("account_sid", &self.account_sid)
            .field("tracks", &self.tracks)
            .field("target", &self.target)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("custom_parameters", &self.custom_parameters)
            .finish()
    }
}

/// The sans-IO codec of one Twilio stream: decodes what Twilio sends, encodes what voxroute
/// sends back, and remembers the `streamSid` in between.
#[derive(Debug)]
pub struct TwilioCodec {
    /// Set once by the first good `start`; outbound messages need it, and `media` before it is
    /// refused.
    stream_sid: Option<String>,
    /// Decoded `media` payloads, [`MAX_MEDIA_PAYLOAD`] bytes allocated once.
    media: Box<[u8]>,
    /// The last `mark` name received (copied, so the frame text need not outlive the call).
    mark: String,
    /// The last outbound message; reused, grows only for a longer message than any before.
    out: String,
}

impl Default for TwilioCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl TwilioCodec {
    /// A codec for a new stream, with every buffer of the hot path allocated.
    pub fn new() -> Self {
        TwilioCodec {
            stream_sid: None,
            media: vec![0; MAX_MEDIA_PAYLOAD].into_boxed_slice(),
            mark: String::with_capacity(64),
            out: String::with_capacity(OUT_CAPACITY),
        }
    }

    /// The `streamSid` of the `start` handled, if any.
    pub fn stream_sid(&self) -> Option<&str> {
        self.stream_sid.as_deref()
    }

    /// Whether a `start` has been handled.
    pub fn is_started(&self) -> bool {
        self.stream_sid.is_some()
    }

    /// Decodes one text frame from Twilio.
    ///
    /// # Errors
    /// Any [`ProtocolError`] but `BinaryFrame`, `BadAudioFormat` and `NotStarted`. On error
    /// the codec is unchanged; [`ProtocolError::is_fatal`] says whether the session can go on.
    pub fn decode_text(&mut self, text: &str) -> Result<TwilioInbound<'_>, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let event = envelope.event.ok_or(ProtocolError::MissingField("event"))?;
        match &*event.0 {
            "media" => {
                if self.stream_sid.is_none() {
                    return Err(ProtocolError::MediaBeforeStart);
                }
                let payload = envelope
                    .media
                    .and_then(|media| media.payload)
                    .ok_or(ProtocolError::MissingField("media.payload"))?;
                let len = decode_base64_payload(&payload.0, &mut self.media, MAX_MEDIA_PAYLOAD)?;
                Ok(TwilioInbound::Media(&self.media[..len]))
            }
            "mark" => {
                let name = envelope
                    .mark
                    .and_then(|mark| mark.name)
                    .ok_or(ProtocolError::MissingField("mark.name"))?;
                self.mark.clear();
                self.mark.push_str(&name.0);
                Ok(TwilioInbound::Mark { name: &self.mark })
            }
            "dtmf" => {
                let digit = envelope
                    .dtmf
                    .and_then(|dtmf| dtmf.digit)
                    .ok_or(ProtocolError::MissingField("dtmf.digit"))?;
                let digit =
                    dtmf_digit(&digit.0).ok_or(ProtocolError::InvalidField("dtmf.digit"))?;
                Ok(TwilioInbound::Dtmf { digit })
            }
            "start" => {
                if self.stream_sid.is_some() {
                    return Err(ProtocolError::DuplicateStart);
                }
                let start = parse_start(text)?;
                self.stream_sid = Some(start.stream_sid.clone());
                Ok(TwilioInbound::Start(start))
            }
            "connected" => Ok(TwilioInbound::Connected),
            "stop" => Ok(TwilioInbound::Stop),
            _ => Err(ProtocolError::UnknownEvent),
        }
    }

    /// Refuses a binary frame: Twilio sends only text.
    ///
    /// # Errors
    /// Always [`ProtocolError::BinaryFrame`] (skippable).
    pub fn decode_binary(&self, frame: &[u8]) -> Result<TwilioInbound<'_>, ProtocolError> {
        Err(ProtocolError::BinaryFrame { len: frame.len() })
    }

    /// Writes a `media` message carrying `mulaw` (8 kHz mono mu-law, any length).
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is written.
    pub fn encode_media(&mut self, mulaw: &[u8]) -> Result<&str, ProtocolError> {
        let sid = self
            .stream_sid
            .as_deref()
            .ok_or(ProtocolError::NotStarted)?;
        self.out.clear();
        self.out.push_str(r#"{"event":"media","streamSid":"#);
        push_json_str(&mut self.out, sid);
        self.out.push_str(r#","media":{"payload":""#);
        BASE64.encode_string(mulaw, &mut self.out);
        self.out.push_str(r#""}}"#);
        Ok(&self.out)
    }

    /// Writes a `mark` message: Twilio echoes it once the audio sent before it has played.
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is written.
    pub fn encode_mark(&mut self, name: &str) -> Result<&str, ProtocolError> {
        let sid = self
            .stream_sid
            .as_deref()
            .ok_or(ProtocolError::NotStarted)?;
        self.out.clear();
        self.out.push_str(r#"{"event":"mark","streamSid":"#);
        push_json_str(&mut self.out, sid);
        self.out.push_str(r#","mark":{"name":"#);
        push_json_str(&mut self.out, name);
        self.out.push_str("}}");
        Ok(&self.out)
    }

    /// Writes a `clear` message (barge-in): Twilio drops its buffered outbound audio.
    ///
    /// # Errors
    /// [`ProtocolError::NotStarted`] before `start`; nothing is written.
    pub fn encode_clear(&mut self) -> Result<&str, ProtocolError> {
        let sid = self
            .stream_sid
            .as_deref()
            .ok_or(ProtocolError::NotStarted)?;
        self.out.clear();
        self.out.push_str(r#"{"event":"clear","streamSid":"#);
        push_json_str(&mut self.out, sid);
        self.out.push('}');
        Ok(&self.out)
    }
}

/// Twilio as a [`CarrierCodec`]: the session core holds it like every carrier. `connected`
/// and mark echoes have nothing for the session; media is in order (Twilio's socket keeps
/// it); marks are sent.
impl CarrierCodec for TwilioCodec {
    fn carrier(&self) -> &'static str {
        "twilio"
    }

    fn decode_text<'a>(&'a mut self, text: &'a str) -> Result<CarrierInbound<'a>, ProtocolError> {
        Ok(match TwilioCodec::decode_text(self, text)? {
            TwilioInbound::Connected | TwilioInbound::Mark { .. } => CarrierInbound::Ignored,
            TwilioInbound::Start(start) => CarrierInbound::Start(CarrierStart {
                format: start.format(),
                call_id: start.call_sid,
                target: start.target,
                api_key: start.api_key,
                parameters: start.custom_parameters,
            }),
            TwilioInbound::Media(payload) => CarrierInbound::Media {
                sequence: None,
                payload,
            },
            TwilioInbound::Dtmf { digit } => CarrierInbound::Dtmf { digit },
            TwilioInbound::Stop => CarrierInbound::Stop,
        })
    }

    fn decode_binary<'a>(
        &'a mut self,
        frame: &'a [u8],
    ) -> Result<CarrierInbound<'a>, ProtocolError> {
        Err(ProtocolError::BinaryFrame { len: frame.len() })
    }

    fn format(&self) -> Option<AudioFormat> {
        self.is_started().then(AudioFormat::telephony_mulaw)
    }

    fn encode_media(
        &mut self,
        audio: &[u8],
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        emit(CarrierOutbound::Text(TwilioCodec::encode_media(
            self, audio,
        )?));
        Ok(())
    }

    fn encode_clear(
        &mut self,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        emit(CarrierOutbound::Text(TwilioCodec::encode_clear(self)?));
        Ok(())
    }

    fn has_marks(&self) -> bool {
        true
    }

    fn encode_mark(
        &mut self,
        name: &str,
        emit: &mut dyn FnMut(CarrierOutbound<'_>),
    ) -> Result<(), ProtocolError> {
        emit(CarrierOutbound::Text(TwilioCodec::encode_mark(self, name)?));
        Ok(())
    }
}

/// What every message is read as first: the discriminator plus the bodies of the frequent
/// messages, borrowed from the frame. Other fields (`start`, `stop`, `sequenceNumber`, ...) are
/// skipped without allocating.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<Text<'a>>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
    #[serde(borrow)]
    mark: Option<MarkBody<'a>>,
    #[serde(borrow)]
    dtmf: Option<DtmfBody<'a>>,
}

/// `media`: only the payload is used (`track`, `chunk`, `timestamp` are skipped).
#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    payload: Option<Text<'a>>,
}

/// `mark`.
#[derive(Deserialize)]
struct MarkBody<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
}

/// `dtmf` (`track` is skipped).
#[derive(Deserialize)]
struct DtmfBody<'a> {
    #[serde(borrow)]
    digit: Option<Text<'a>>,
}

/// `start`, read a second time in full (once per stream, so owning is fine). Every field is
/// optional here so that a missing one is reported by name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartMessage {
    stream_sid: Option<String>,
    start: Option<StartBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    stream_sid: Option<String>,
    account_sid: Option<String>,
    call_sid: Option<String>,
    tracks: Option<Vec<String>>,
    custom_parameters: Option<BTreeMap<String, String>>,
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: Option<String>,
    sample_rate: Option<u64>,
    channels: Option<u64>,
}

/// Validates a `start` frame into a [`TwilioStart`].
fn parse_start(text: &str) -> Result<TwilioStart, ProtocolError> {
    let message: StartMessage =
        serde_json::from_str(text).map_err(|_| ProtocolError::BadStart("start"))?;
    let body = message.start.ok_or(ProtocolError::BadStart("start"))?;
    let stream_sid = non_empty(body.stream_sid)
        .or_else(|| non_empty(message.stream_sid))
        .ok_or(ProtocolError::BadStart("start.streamSid"))?;
    let account_sid =
        non_empty(body.account_sid).ok_or(ProtocolError::BadStart("start.accountSid"))?;
    let call_sid = non_empty(body.call_sid).ok_or(ProtocolError::BadStart("start.callSid"))?;
    let format = body
        .media_format
        .ok_or(ProtocolError::BadStart("start.mediaFormat"))?;
    let encoding = format
        .encoding
        .ok_or(ProtocolError::BadStart("start.mediaFormat.encoding"))?;
    let sample_rate = format
        .sample_rate
        .ok_or(ProtocolError::BadStart("start.mediaFormat.sampleRate"))?;
    // Twilio always sends `channels`; a bridge that leaves it out means mono.
    let channels = format.channels.unwrap_or(1);
    if encoding != ENCODING_MULAW || sample_rate != 8_000 || channels != 1 {
        return Err(ProtocolError::UnsupportedFormat);
    }
    let mut custom_parameters = body.custom_parameters.unwrap_or_default();
    let (api_key, target) = take_caller_parameters(&mut custom_parameters)?;
    Ok(TwilioStart {
        stream_sid,
        call_sid,
        account_sid,
        tracks: body.tracks.unwrap_or_default(),
        target,
        api_key,
        custom_parameters,
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// `connected`, verbatim from protocols.md §1.
    const CONNECTED: &str = r#"{"event": "connected", "protocol": "Call", "version": "1.0.0"}"#;

    /// `start`, verbatim from protocols.md §1.
    const START: &str = r#"{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "AC…01",
    "streamSid": "MZ…01",
    "callSid": "CA…01",
    "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
  },
  "streamSid": "MZ…01"
}"#;

    /// `media` from protocols.md §1, with the elided payload `no+JhoaJjpzS...` cut to its
    /// valid base64 prefix.
    const MEDIA: &str = r#"{"event": "media", "sequenceNumber": "4",
 "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS"},
 "streamSid": "MZ…01"}"#;

    /// What [`MEDIA`]'s payload decodes to.
    const MEDIA_BYTES: [u8; 9] = [158, 143, 137, 134, 134, 137, 142, 156, 210];

    /// `dtmf`, verbatim from protocols.md §1.
    const DTMF: &str = r#"{"event": "dtmf", "streamSid": "MZ…01", "sequenceNumber": "5",
 "dtmf": {"track": "inbound_track", "digit": "1"}}"#;

    /// `mark`, verbatim from protocols.md §1.
    const MARK: &str = r#"{"event": "mark", "sequenceNumber": "4", "streamSid": "MZ…01", "mark": {"name": "my label"}}"#;

    /// `stop`, verbatim from protocols.md §1.
    const STOP: &str = r#"{"event": "stop", "sequenceNumber": "5",
 "stop": {"accountSid": "AC…01", "callSid": "CA…01"},
 "streamSid": "MZ…01"}"#;

    fn started() -> TwilioCodec {
        let mut codec = TwilioCodec::new();
        assert!(matches!(
            codec.decode_text(START),
            Ok(TwilioInbound::Start(_))
        ));
        codec
    }

    /// A `media` frame carrying `payload` as its base64 text.
    fn media_with(payload: &str) -> String {
        json!({"event": "media", "streamSid": "MZ…01",
               "media": {"track": "inbound", "chunk": "3", "timestamp": "25", "payload": payload}})
        .to_string()
    }

    /// The example `start` with `edit` applied to its JSON.
    fn start_with(edit: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(START).unwrap();
        edit(&mut value);
        value.to_string()
    }

    /// Asserts `frame` is refused with the skippable `expected`, and that the codec then still
    /// decodes a good `media` frame and writes outbound messages as before: nothing was lost.
    fn assert_skipped_then_recovers(codec: &mut TwilioCodec, frame: &str, expected: ProtocolError) {
        let sid_before = codec.stream_sid().map(str::to_owned);
        assert_eq!(codec.decode_text(frame).unwrap_err(), expected);
        assert!(!expected.is_fatal(), "{expected:?} must be skippable");
        assert_eq!(codec.stream_sid().map(str::to_owned), sid_before);
        assert_eq!(
            codec.decode_text(MEDIA).unwrap(),
            TwilioInbound::Media(&MEDIA_BYTES)
        );
        assert_eq!(
            codec.encode_clear().unwrap(),
            r#"{"event":"clear","streamSid":"MZ…01"}"#
        );
    }

    /// The literal `connected` decodes; its extra fields are ignored.
    #[test]
    fn golden_connected() {
        assert_eq!(
            TwilioCodec::new().decode_text(CONNECTED).unwrap(),
            TwilioInbound::Connected
        );
    }

    /// The literal `start` decodes to its identifiers, tracks and custom parameters, and the
    /// codec remembers the `streamSid`.
    #[test]
    fn golden_start_with_custom_parameters() {
        let mut codec = TwilioCodec::new();
        let TwilioInbound::Start(start) = codec.decode_text(START).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.stream_sid, "MZ…01");
        assert_eq!(start.call_sid, "CA…01");
        assert_eq!(start.account_sid, "AC…01");
        assert_eq!(start.tracks, ["inbound"]);
        assert_eq!(start.target, RouteTarget::Default);
        assert_eq!(start.api_key(), None);
        assert_eq!(start.format(), AudioFormat::telephony_mulaw());
        let params: Vec<(&str, &str)> = start
            .custom_parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            params,
            [
                ("FirstName", "Jane"),
                ("LastName", "Doe"),
                ("RemoteParty", "Bob")
            ]
        );
        assert_eq!(codec.stream_sid(), Some("MZ…01"));
        assert!(codec.is_started());
    }

    /// `api_key`, `provider` and `route` parameters become typed fields; the key leaves the
    /// parameter map and never shows in `Debug`.
    #[test]
    fn custom_parameters_carry_key_and_target() {
        let frame = start_with(|v| {
            v["start"]["customParameters"] =
                json!({"api_key": "vxr_secret", "route": "support", "from_number": "+15551230000"});
        });
        let TwilioInbound::Start(start) = TwilioCodec::new().decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.api_key(), Some("vxr_secret"));
        assert_eq!(start.target, RouteTarget::Route("support".into()));
        assert!(!start.custom_parameters.contains_key("api_key"));
        assert_eq!(start.custom_parameters["from_number"], "+15551230000");
        let debug = format!("{:?}", TwilioInbound::Start(start));
        assert!(!debug.contains("vxr_secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        let frame = start_with(|v| {
            v["start"]["customParameters"] = json!({"provider": "deepgram"});
        });
        let TwilioInbound::Start(start) = TwilioCodec::new().decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.target, RouteTarget::Provider("deepgram".into()));
    }

    /// The literal `media` decodes to its mu-law bytes, borrowed from the codec.
    #[test]
    fn golden_media() {
        let mut codec = started();
        assert_eq!(
            codec.decode_text(MEDIA).unwrap(),
            TwilioInbound::Media(&MEDIA_BYTES)
        );
        assert_eq!(
            format!("{:?}", codec.decode_text(MEDIA).unwrap()),
            "Media(9 bytes)"
        );
    }

    /// A payload with JSON escapes (`\/`) decodes like the unescaped one.
    #[test]
    fn escaped_payload_decodes() {
        let mut codec = started();
        let frame = r#"{"event":"media","media":{"payload":"\/w=="}}"#;
        assert_eq!(
            codec.decode_text(frame).unwrap(),
            TwilioInbound::Media(&[0xff])
        );
        // Unpadded base64 is accepted too.
        let frame = r#"{"event":"media","media":{"payload":"/w"}}"#;
        assert_eq!(
            codec.decode_text(frame).unwrap(),
            TwilioInbound::Media(&[0xff])
        );
    }

    /// The literal `dtmf`, `mark` and `stop` decode.
    #[test]
    fn golden_dtmf_mark_stop() {
        let mut codec = started();
        assert_eq!(
            codec.decode_text(DTMF).unwrap(),
            TwilioInbound::Dtmf { digit: '1' }
        );
        assert_eq!(
            codec.decode_text(MARK).unwrap(),
            TwilioInbound::Mark { name: "my label" }
        );
        assert_eq!(codec.decode_text(STOP).unwrap(), TwilioInbound::Stop);
    }

    /// Outbound `media`, `mark` and `clear` are byte-exact compact JSON, and structurally the
    /// literal server→Twilio examples of protocols.md §1.
    #[test]
    fn golden_outbound() {
        let mut codec = started();
        let media = codec.encode_media(&MEDIA_BYTES).unwrap().to_owned();
        assert_eq!(
            media,
            r#"{"event":"media","streamSid":"MZ…01","media":{"payload":"no+JhoaJjpzS"}}"#
        );
        let doc: Value = serde_json::from_str(
            r#"{"event": "media", "streamSid": "MZ…01", "media": {"payload": "no+JhoaJjpzS"}}"#,
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&media).unwrap(), doc);

        let mark = codec.encode_mark("my label").unwrap().to_owned();
        assert_eq!(
            mark,
            r#"{"event":"mark","streamSid":"MZ…01","mark":{"name":"my label"}}"#
        );
        let doc: Value = serde_json::from_str(
            r#"{"event": "mark",  "streamSid": "MZ…01", "mark": {"name": "my label"}}"#,
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&mark).unwrap(), doc);

        let clear = codec.encode_clear().unwrap();
        assert_eq!(clear, r#"{"event":"clear","streamSid":"MZ…01"}"#);
        let doc: Value =
            serde_json::from_str(r#"{"event": "clear", "streamSid": "MZ…01"}"#).unwrap();
        assert_eq!(serde_json::from_str::<Value>(clear).unwrap(), doc);
    }

    /// A mark name with quotes and control characters is escaped, and Twilio's echo of it
    /// decodes back to the same name.
    #[test]
    fn mark_names_are_escaped_and_round_trip() {
        let mut codec = started();
        let name = "say \"hi\"\n\\ end";
        let mark = codec.encode_mark(name).unwrap().to_owned();
        assert_eq!(
            codec.decode_text(&mark).unwrap(),
            TwilioInbound::Mark { name }
        );
    }

    /// Before `start` nothing can be sent (no `streamSid`), and `media` is refused, skippably;
    /// after `start` the same frame decodes.
    #[test]
    fn media_before_start_is_skipped() {
        let mut codec = TwilioCodec::new();
        assert_eq!(codec.encode_media(&[1]), Err(ProtocolError::NotStarted));
        assert_eq!(codec.encode_mark("m"), Err(ProtocolError::NotStarted));
        assert_eq!(codec.encode_clear(), Err(ProtocolError::NotStarted));
        assert_eq!(
            codec.decode_text(CONNECTED).unwrap(),
            TwilioInbound::Connected
        );
        assert_eq!(
            codec.decode_text(MEDIA).unwrap_err(),
            ProtocolError::MediaBeforeStart
        );
        assert!(!ProtocolError::MediaBeforeStart.is_fatal());
        assert!(matches!(
            codec.decode_text(START),
            Ok(TwilioInbound::Start(_))
        ));
        assert_skipped_then_recovers(
            &mut codec,
            r#"{"event":"nope"}"#,
            ProtocolError::UnknownEvent,
        );
    }

    /// Every skippable bad frame after `start` is refused with its own error and leaves the
    /// codec decoding the next good frame exactly.
    #[test]
    fn bad_frames_are_skipped_and_nothing_is_lost() {
        let mut codec = started();
        let cases: Vec<(String, ProtocolError)> = vec![
            (r#"{"event":"media","#.into(), ProtocolError::MalformedJson),
            ("not json".into(), ProtocolError::MalformedJson),
            (r#"{"event":5}"#.into(), ProtocolError::MalformedJson),
            (
                r#"{"event":"media","media":{"payload":7}}"#.into(),
                ProtocolError::MalformedJson,
            ),
            (r#"{"event":"hello"}"#.into(), ProtocolError::UnknownEvent),
            (
                r#"{"streamSid":"MZ…01"}"#.into(),
                ProtocolError::MissingField("event"),
            ),
            (
                r#"{"event":"media","streamSid":"MZ…01"}"#.into(),
                ProtocolError::MissingField("media.payload"),
            ),
            (
                r#"{"event":"media","media":{"track":"inbound"}}"#.into(),
                ProtocolError::MissingField("media.payload"),
            ),
            (
                r#"{"event":"mark","mark":{}}"#.into(),
                ProtocolError::MissingField("mark.name"),
            ),
            (
                r#"{"event":"dtmf"}"#.into(),
                ProtocolError::MissingField("dtmf.digit"),
            ),
            (
                r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#.into(),
                ProtocolError::InvalidField("dtmf.digit"),
            ),
            (
                r#"{"event":"dtmf","dtmf":{"digit":"x"}}"#.into(),
                ProtocolError::InvalidField("dtmf.digit"),
            ),
            (media_with("!!!!"), ProtocolError::BadBase64),
            (media_with("no+JhoaJjpz"), ProtocolError::BadBase64),
            (media_with("A"), ProtocolError::BadBase64),
            (media_with("no+J hoaJ"), ProtocolError::BadBase64),
            (
                media_with(""),
                ProtocolError::PayloadSize { len: 0, max: 960 },
            ),
            (media_with("=="), ProtocolError::BadBase64),
            (
                media_with(&BASE64.encode([0x7f; 961])),
                ProtocolError::PayloadSize { len: 961, max: 960 },
            ),
            (
                media_with(&BASE64.encode([0x7f; 4000])),
                ProtocolError::PayloadSize {
                    len: 4000,
                    max: 960,
                },
            ),
            (START.into(), ProtocolError::DuplicateStart),
            (
                start_with(|v| v["start"]["streamSid"] = json!("MZ…02")),
                ProtocolError::DuplicateStart,
            ),
            ("{".repeat(300), ProtocolError::MalformedJson),
        ];
        for (frame, expected) in cases {
            assert_skipped_then_recovers(&mut codec, &frame, expected);
        }
    }

    /// A 1 MiB text frame is refused by length before any parsing; the codec goes on.
    #[test]
    fn one_mebibyte_frame_is_refused_unparsed() {
        let mut codec = started();
        let huge = media_with(&"A".repeat(1 << 20));
        assert_skipped_then_recovers(
            &mut codec,
            &huge,
            ProtocolError::FrameTooLarge {
                len: huge.len(),
                max: super::super::MAX_TEXT_FRAME,
            },
        );
    }

    /// Binary frames are refused (Twilio sends only text), skippably.
    #[test]
    fn binary_frame_is_skipped() {
        let mut codec = started();
        let err = codec.decode_binary(&[0; 160]).unwrap_err();
        assert_eq!(err, ProtocolError::BinaryFrame { len: 160 });
        assert!(!err.is_fatal());
        assert_skipped_then_recovers(&mut codec, "[]", ProtocolError::MalformedJson);
    }

    /// A `start` that cannot be understood or asks for another format is fatal, and leaves the
    /// codec not started (a later good `start` would still be taken whole).
    #[test]
    fn bad_start_is_fatal_and_leaves_no_state() {
        let cases: Vec<(String, ProtocolError)> = vec![
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("streamSid");
                    v.as_object_mut().unwrap().remove("streamSid");
                }),
                ProtocolError::BadStart("start.streamSid"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("callSid");
                }),
                ProtocolError::BadStart("start.callSid"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("accountSid");
                }),
                ProtocolError::BadStart("start.accountSid"),
            ),
            (
                start_with(|v| {
                    v.as_object_mut().unwrap().remove("start");
                }),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| {
                    v["start"].as_object_mut().unwrap().remove("mediaFormat");
                }),
                ProtocolError::BadStart("start.mediaFormat"),
            ),
            (
                start_with(|v| {
                    v["start"]["mediaFormat"]
                        .as_object_mut()
                        .unwrap()
                        .remove("encoding");
                }),
                ProtocolError::BadStart("start.mediaFormat.encoding"),
            ),
            (
                start_with(|v| {
                    v["start"]["mediaFormat"]
                        .as_object_mut()
                        .unwrap()
                        .remove("sampleRate");
                }),
                ProtocolError::BadStart("start.mediaFormat.sampleRate"),
            ),
            (
                start_with(|v| v["start"]["mediaFormat"]["sampleRate"] = json!("8000")),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| v["start"]["customParameters"] = json!({"n": 5})),
                ProtocolError::BadStart("start"),
            ),
            (
                start_with(|v| v["start"]["mediaFormat"]["encoding"] = json!("audio/x-alaw")),
                ProtocolError::UnsupportedFormat,
            ),
            (
                start_with(|v| v["start"]["mediaFormat"]["sampleRate"] = json!(16000)),
                ProtocolError::UnsupportedFormat,
            ),
            (
                start_with(|v| v["start"]["mediaFormat"]["channels"] = json!(2)),
                ProtocolError::UnsupportedFormat,
            ),
            (
                start_with(|v| {
                    v["start"]["customParameters"] = json!({"provider": "echo", "route": "r"});
                }),
                ProtocolError::ProviderAndRoute,
            ),
        ];
        for (frame, expected) in cases {
            let mut codec = TwilioCodec::new();
            assert_eq!(codec.decode_text(&frame).unwrap_err(), expected, "{frame}");
            assert!(expected.is_fatal(), "{expected:?} must be fatal");
            assert!(!codec.is_started());
            assert_eq!(codec.encode_clear(), Err(ProtocolError::NotStarted));
            assert!(matches!(
                codec.decode_text(START),
                Ok(TwilioInbound::Start(_))
            ));
        }
    }

    /// An empty `start.streamSid` falls back to the top-level one; a `start` without
    /// `channels` means mono.
    #[test]
    fn start_fallbacks() {
        let frame = start_with(|v| {
            v["start"]["streamSid"] = json!("");
            v["start"]["mediaFormat"]
                .as_object_mut()
                .unwrap()
                .remove("channels");
        });
        let mut codec = TwilioCodec::new();
        assert!(matches!(
            codec.decode_text(&frame),
            Ok(TwilioInbound::Start(_))
        ));
        assert_eq!(codec.stream_sid(), Some("MZ…01"));
    }

    /// Through the [`CarrierCodec`] trait (as the session core holds it): `connected` and
    /// mark echoes are ignored, `start` carries the format and parameters, media is in order,
    /// and outbound media, clear and marks are the same frames as the inherent methods write.
    #[test]
    fn works_as_a_carrier_codec() {
        let mut codec = TwilioCodec::new();
        let carrier: &mut dyn CarrierCodec = &mut codec;
        assert_eq!(carrier.carrier(), "twilio");
        assert!(carrier.has_marks());
        assert_eq!(carrier.format(), None);
        assert_eq!(
            carrier.decode_text(CONNECTED).unwrap(),
            CarrierInbound::Ignored
        );
        let frame = start_with(|v| {
            v["start"]["customParameters"] =
                json!({"api_key": "vxr_secret", "route": "r", "x": "y"});
        });
        let CarrierInbound::Start(start) = carrier.decode_text(&frame).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(start.format, AudioFormat::telephony_mulaw());
        assert_eq!(start.call_id, "CA…01");
        assert_eq!(start.api_key.as_deref(), Some("vxr_secret"));
        assert_eq!(start.target, RouteTarget::Route("r".into()));
        assert_eq!(start.parameters["x"], "y");
        assert_eq!(carrier.frame_bytes(), Some(160));
        assert_eq!(
            carrier.decode_text(MEDIA).unwrap(),
            CarrierInbound::Media {
                sequence: None,
                payload: &MEDIA_BYTES
            }
        );
        assert_eq!(carrier.decode_text(MARK).unwrap(), CarrierInbound::Ignored);
        assert_eq!(
            carrier.decode_text(DTMF).unwrap(),
            CarrierInbound::Dtmf { digit: '1' }
        );
        assert_eq!(carrier.decode_text(STOP).unwrap(), CarrierInbound::Stop);
        assert_eq!(
            carrier.decode_binary(&[0; 3]).unwrap_err(),
            ProtocolError::BinaryFrame { len: 3 }
        );
        let mut texts = Vec::new();
        let mut emit = |out: CarrierOutbound<'_>| {
            if let CarrierOutbound::Text(text) = out {
                texts.push(text.to_owned());
            }
        };
        carrier.encode_media(&MEDIA_BYTES, &mut emit).unwrap();
        carrier.encode_mark("m", &mut emit).unwrap();
        carrier.encode_clear(&mut emit).unwrap();
        assert_eq!(
            texts,
            [
                r#"{"event":"media","streamSid":"MZ…01","media":{"payload":"no+JhoaJjpzS"}}"#,
                r#"{"event":"mark","streamSid":"MZ…01","mark":{"name":"m"}}"#,
                r#"{"event":"clear","streamSid":"MZ…01"}"#,
            ]
        );
    }

    /// Round trip: for random mu-law payloads of every length 1..=960, `encode_media` then
    /// `decode_text` of that very message (as if Twilio echoed it) gives back the same bytes.
    #[test]
    fn media_round_trips_for_every_length() {
        let mut codec = started();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut payload = Vec::with_capacity(MAX_MEDIA_PAYLOAD);
        for len in 1..=MAX_MEDIA_PAYLOAD {
            payload.clear();
            payload.extend((0..len).map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[3]
            }));
            let message = codec.encode_media(&payload).unwrap().to_owned();
            assert_eq!(
                codec.decode_text(&message).unwrap(),
                TwilioInbound::Media(&payload),
                "length {len}"
            );
        }
    }
}
