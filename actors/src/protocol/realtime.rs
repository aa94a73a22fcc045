//! OpenAI Realtime, GA event shapes (protocols.md §3), spoken to the caller on
//! `GET /v1/realtime`: an unmodified OpenAI SDK pointed at voxroute works, whichever
//! provider the route reaches. This module owns the wire format of that endpoint and its
//! sans-IO codec, [`RealtimeCodec`]; the session core decides what happens.
//!
//! # Connection
//!
//! `GET /v1/realtime?model=NAME` with `Authorization: Bearer vxr_…` (what the SDKs send as
//! their API key). `model` picks the route (the app's `Router::target_for_model`). The
//! session is admitted as soon as the socket opens; `session.created` follows.
//!
//! # Client → server
//!
//! | event | what voxroute does |
//! | --- | --- |
//! | `session.update` | `session.audio.input.format` / `session.audio.output.format` are honoured: `{"type":"audio/pcm","rate":24000}` (the default), `{"type":"audio/pcmu"}`, `{"type":"audio/pcma"}` (8 kHz). One format runs both ways: a format given for one direction applies to both, and two different ones are refused (`unsupported_field`). `instructions`, `tools`, `tool_choice` and `prompt` (when not empty) are refused (`unsupported_field`): the route's provider settings hold them. `type` other than `realtime` is refused. Every other field (voice, turn detection, transcription, noise reduction, ...) is accepted and ignored: the provider's own settings apply. Answered by `session.updated`. |
//! | `input_audio_buffer.append` | the base64 `audio` (at most [`MAX_APPEND_BYTES`] decoded, whole samples) goes to the provider in 20 ms frames |
//! | `input_audio_buffer.commit` | acknowledged with `input_audio_buffer.committed`; the provider's own turn detection decides turns |
//! | `input_audio_buffer.clear` | the part of a 20 ms frame not yet sent is dropped; `input_audio_buffer.cleared` (audio already sent is not recalled) |
//! | `response.create`, `response.cancel`, `conversation.item.*`, `output_audio_buffer.clear`, `transcription_session.update` | refused with an `error` of code `unsupported_event` |
//!
//! An unknown `type` gets `unknown_event`; malformed JSON `malformed_json`; bad base64
//! `bad_base64`; binary frames `binary_frame`. No error closes the socket (as on OpenAI),
//! except that [`MAX_CONSECUTIVE_BAD_FRAMES`](crate::session::MAX_CONSECUTIVE_BAD_FRAMES) in
//! a row end the session.
//!
//! # Server → client
//!
//! `session.created` (the session's `id` is voxroute's session id, `model` the provider),
//! `session.updated`, `input_audio_buffer.speech_started` / `speech_stopped` / `committed` /
//! `cleared`, `response.created`, `response.output_audio.delta` (20 ms each, in the session's
//! format), `response.output_audio_transcript.delta` / `.done`, `response.output_audio.done`,
//! `response.done` (`completed`, or `cancelled` when the caller barged in),
//! `conversation.item.input_audio_transcription.completed` and `error` (`error.code` is
//! stable: the [`ProtocolError::code`]s, `provider_error`, `refused`, ...). Two events of
//! voxroute's own, which the SDKs pass through as they do any event type they do not know:
//! `voxroute.provider_switched` (`from`, `to`, `reason`: failover, the call goes on) and
//! `voxroute.session_ended` (`reason`, the record's close reason; the socket closes next).
//!
//! # What callers must keep
//!
//! - The `&str` a call returns (or hands to `emit`) borrows the codec's buffer: send it before
//!   the next call.
//! - After [`RealtimeInbound::Append`], the audio is [`RealtimeCodec::audio`] until the next
//!   decode.
//! - Error handling follows [`ProtocolError::is_fatal`] (see [the module](super)); no error of
//!   this protocol is fatal.
//!
//! # Allocation
//!
//! Warm, an append and an audio delta allocate nothing: the append's JSON is parsed borrowing
//! from the frame, its base64 is decoded into a buffer allocated at construction, and every
//! event is written into one reused `String`. `session.update` (rare) is parsed into a
//! `serde_json::Value`.

use std::fmt::Write as _;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;
use voxroute_codecs::{AudioFormat, Codec, SampleRate};

use super::{
    BASE64, JsonEscaped, MAX_TEXT_FRAME, ProtocolError, Text, decode_base64_payload, parse_frame,
    push_json_str,
};
use crate::close_reason::SessionCloseReason;

/// Largest decoded audio of one `input_audio_buffer.append`, in bytes: what a frame of
/// [`MAX_TEXT_FRAME`] can carry (about one second of 24 kHz PCM16).
pub const MAX_APPEND_BYTES: usize = MAX_TEXT_FRAME / 4 * 3;

/// Longest client `event_id` echoed in an `error`; longer ones are not echoed.
const MAX_CLIENT_EVENT_ID: usize = 64;

/// Initial capacity of the outbound buffer: a 20 ms delta of 24 kHz PCM16 is 1280 base64
/// characters plus the envelope.
const OUT_CAPACITY: usize = 2048;

/// OpenAI's GA client events voxroute refuses with `unsupported_event`.
const UNSUPPORTED_EVENTS: [&str; 9] = [
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "output_audio_buffer.clear",
    "transcription_session.update",
    "input_audio_buffer.dtmf",
];

/// `session` fields refused when present and not empty: the route's provider settings hold
/// them, and silently ignoring them would change what the model does.
const REFUSED_SESSION_FIELDS: [(&str, &str); 4] = [
    ("instructions", "session.instructions"),
    ("tools", "session.tools"),
    ("tool_choice", "session.tool_choice"),
    ("prompt", "session.prompt"),
];

/// A text message from the client, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealtimeInbound {
    /// A `session.update` that was accepted; the codec's [`format`](RealtimeCodec::format)
    /// is the new one. Answer with `session.updated`.
    SessionUpdate {
        /// Whether the audio format changed.
        format_changed: bool,
    },
    /// Caller audio: the first `len` bytes of [`RealtimeCodec::audio`], in the session's
    /// format, whole samples.
    Append {
        /// Decoded length, in bytes.
        len: usize,
    },
    /// `input_audio_buffer.commit`.
    Commit,
    /// `input_audio_buffer.clear`.
    Clear,
}

/// Which `session.*` event to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEventKind {
    /// `session.created`.
    Created,
    /// `session.updated`.
    Updated,
}

/// The sans-IO codec of one `/v1/realtime` session.
#[derive(Debug)]
pub struct RealtimeCodec {
    /// The audio format, both ways.
    format: AudioFormat,
    /// Decoded appends, [`MAX_APPEND_BYTES`] allocated once.
    audio: Box<[u8]>,
    /// The last outbound event; reused.
    out: String,
    /// The `event_id` of the frame being decoded, if it had a short one (echoed in errors).
    client_event_id: String,
    /// Numbers our `event_id`s.
    events_sent: u64,
    /// Numbers items and responses.
    ids_issued: u64,
    /// The voxroute session id and provider, set by `session.created`.
    session: Option<(Uuid, String)>,
    /// A `session.update` was accepted before `session.created` could be sent.
    update_pending: bool,
    /// Caller audio appended so far, in milliseconds (the speech events' `audio_*_ms`).
    audio_in_ms: u64,
    /// The caller's current input item.
    input_item: Option<u64>,
    /// The reply in progress: `(response number, item number)`.
    response: Option<(u64, u64)>,
    /// The reply's words sent so far as transcript deltas.
    reply_text: String,
    /// The reply's transcript is done (a final came).
    reply_text_done: bool,
}

impl Default for RealtimeCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl RealtimeCodec {
    /// A codec for a new session: `audio/pcm` at 24 kHz until a `session.update` says
    /// otherwise.
    pub fn new() -> Self {
        RealtimeCodec {
            format: AudioFormat::pcm16_mono(SampleRate::HZ_24000),
            audio: vec![0; MAX_APPEND_BYTES].into_boxed_slice(),
            out: String::with_capacity(OUT_CAPACITY),
            client_event_id: String::with_capacity(MAX_CLIENT_EVENT_ID),
            events_sent: 0,
            ids_issued: 0,
            session: None,
            update_pending: false,
            audio_in_ms: 0,
            input_item: None,
            response: None,
            reply_text: String::new(),
            reply_text_done: false,
        }
    }

    /// The session's audio format (both ways).
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// The audio of the last [`RealtimeInbound::Append`].
    pub fn audio(&self) -> &[u8] {
        &self.audio
    }

    /// Bytes of 20 ms of audio in the session's format: the pieces appends are cut into.
    pub fn frame_bytes(&self) -> usize {
        let bytes_per_sample = match self.format.codec {
            Codec::Pcm16 => 2,
            _ => 1,
        };
        self.format.sample_rate.samples_per_frame() * bytes_per_sample
    }

    /// Decodes one text frame from the client.
    ///
    /// # Errors
    /// `FrameTooLarge`, `MalformedJson`, `MissingField`, `InvalidField`, `UnknownEvent`,
    /// `UnsupportedEvent`, `UnsupportedField`, `BadBase64`, `PayloadSize`; all skippable. On
    /// error the codec's settings are unchanged.
    pub fn decode_text(&mut self, text: &str) -> Result<RealtimeInbound, ProtocolError> {
        self.client_event_id.clear();
        let event: ClientEvent<'_> = parse_frame(text)?;
        if let Some(id) = &event.event_id
            && id.0.len() <= MAX_CLIENT_EVENT_ID
        {
            self.client_event_id.push_str(&id.0);
        }
        let kind = event.kind.ok_or(ProtocolError::MissingField("type"))?;
        match &*kind.0 {
            "input_audio_buffer.append" => {
                let audio = event.audio.ok_or(ProtocolError::MissingField("audio"))?;
                let len = decode_base64_payload(&audio.0, &mut self.audio, MAX_APPEND_BYTES)?;
                if self.format.codec == Codec::Pcm16 && len % 2 != 0 {
                    return Err(ProtocolError::InvalidField("audio"));
                }
                let samples = match self.format.codec {
                    Codec::Pcm16 => len / 2,
                    _ => len,
                };
                self.audio_in_ms += self.format.sample_rate.ms_of_samples(samples);
                Ok(RealtimeInbound::Append { len })
            }
            "input_audio_buffer.commit" => Ok(RealtimeInbound::Commit),
            "input_audio_buffer.clear" => Ok(RealtimeInbound::Clear),
            "session.update" => {
                let format = parse_session_update(text)?;
                let format_changed = format.is_some_and(|f| f != self.format);
                if let Some(format) = format {
                    self.format = format;
                }
                Ok(RealtimeInbound::SessionUpdate { format_changed })
            }
            other => Err(UNSUPPORTED_EVENTS
                .iter()
                .find(|name| **name == other)
                .map_or(ProtocolError::UnknownEvent, |name| {
                    ProtocolError::UnsupportedEvent(name)
                })),
        }
    }

    /// Remembers that a `session.updated` is owed once `session.created` has gone out.
    pub fn defer_session_updated(&mut self) {
        self.update_pending = true;
    }

    /// Writes `session.created` for voxroute session `session_id` on `provider`, then the
    /// `session.updated` deferred before it, if any.
    pub fn session_created(
        &mut self,
        session_id: Uuid,
        provider: &str,
        mut emit: impl FnMut(&str),
    ) {
        self.session = Some((session_id, provider.to_owned()));
        emit(self.encode_session(SessionEventKind::Created));
        if std::mem::take(&mut self.update_pending) {
            emit(self.encode_session(SessionEventKind::Updated));
        }
    }

    /// Writes `session.created` or `session.updated`: the effective session.
    pub fn encode_session(&mut self, kind: SessionEventKind) -> &str {
        let name = match kind {
            SessionEventKind::Created => "session.created",
            SessionEventKind::Updated => "session.updated",
        };
        self.begin(name);
        let out = &mut self.out;
        out.push_str(r#","session":{"type":"realtime","object":"realtime.session""#);
        if let Some((session_id, provider)) = &self.session {
            let mut id = Uuid::encode_buffer();
            out.push_str(r#","id":""#);
            out.push_str(session_id.hyphenated().encode_lower(&mut id));
            out.push_str(r#"","model":"#);
            push_json_str(out, provider);
        }
        out.push_str(r#","output_modalities":["audio"],"audio":{"input":{"format":"#);
        push_format(out, self.format);
        out.push_str(r#"},"output":{"format":"#);
        push_format(out, self.format);
        out.push_str("}}}}");
        &self.out
    }

    /// Writes `input_audio_buffer.committed` for the current input item (a new one if none).
    pub fn encode_committed(&mut self) -> &str {
        let item = self.input_item.take().unwrap_or_else(|| self.next_id());
        self.begin("input_audio_buffer.committed");
        self.out.push_str(r#","previous_item_id":null,"item_id":"#);
        push_id(&mut self.out, "item_", item);
        self.out.push('}');
        &self.out
    }

    /// Writes `input_audio_buffer.cleared`.
    pub fn encode_cleared(&mut self) -> &str {
        self.begin("input_audio_buffer.cleared");
        self.out.push('}');
        &self.out
    }

    /// The provider heard the caller start: `input_audio_buffer.speech_started`, after the
    /// reply in progress (if any) is closed as `cancelled`.
    pub fn speech_started(&mut self, mut emit: impl FnMut(&str)) {
        self.cancel_response(&mut emit);
        let item = self.next_id();
        self.input_item = Some(item);
        self.begin("input_audio_buffer.speech_started");
        let _ = write!(
            self.out,
            r#","audio_start_ms":{},"item_id":"#,
            self.audio_in_ms
        );
        push_id(&mut self.out, "item_", item);
        self.out.push('}');
        emit(&self.out);
    }

    /// The provider heard the caller stop: `input_audio_buffer.speech_stopped`.
    pub fn encode_speech_stopped(&mut self) -> &str {
        let item = self.current_input_item();
        self.begin("input_audio_buffer.speech_stopped");
        let _ = write!(
            self.out,
            r#","audio_end_ms":{},"item_id":"#,
            self.audio_in_ms
        );
        push_id(&mut self.out, "item_", item);
        self.out.push('}');
        &self.out
    }

    /// The caller's words: `conversation.item.input_audio_transcription.completed`.
    pub fn encode_input_transcript(&mut self, text: &str) -> &str {
        let item = self.current_input_item();
        self.begin("conversation.item.input_audio_transcription.completed");
        self.out.push_str(r#","item_id":"#);
        push_id(&mut self.out, "item_", item);
        self.out.push_str(r#","content_index":0,"transcript":"#);
        push_json_str(&mut self.out, text);
        self.out.push('}');
        &self.out
    }

    /// One 20 ms frame of reply audio (in the session's format): a
    /// `response.output_audio.delta`, after `response.created` if no reply was in progress.
    pub fn audio_delta(&mut self, audio: &[u8], mut emit: impl FnMut(&str)) {
        let (response, item) = self.open_response(&mut emit);
        self.begin("response.output_audio.delta");
        push_reply_ids(&mut self.out, response, item);
        self.out.push_str(r#","delta":""#);
        BASE64.encode_string(audio, &mut self.out);
        self.out.push_str(r#""}"#);
        emit(&self.out);
    }

    /// The reply's words so far (`text`, cumulative as in
    /// [`ProviderEvent::ReplyTranscript`](crate::provider::ProviderEvent::ReplyTranscript)):
    /// a `response.output_audio_transcript.delta` with what is new, and `.done` when final.
    pub fn reply_transcript(&mut self, text: &str, is_final: bool, mut emit: impl FnMut(&str)) {
        if self.reply_text_done {
            // A new stretch of words in the same reply.
            self.reply_text.clear();
            self.reply_text_done = false;
        }
        let (response, item) = self.open_response(&mut emit);
        // Words that do not extend what was sent (a revision) are sent whole.
        let new = text.strip_prefix(self.reply_text.as_str()).unwrap_or(text);
        if !new.is_empty() {
            self.begin("response.output_audio_transcript.delta");
            push_reply_ids(&mut self.out, response, item);
            self.out.push_str(r#","delta":"#);
            push_json_str(&mut self.out, new);
            self.out.push('}');
            emit(&self.out);
        }
        self.reply_text.clear();
        self.reply_text.push_str(text);
        if is_final {
            self.transcript_done(response, item, &mut emit);
        }
    }

    /// The provider finished its reply: `response.output_audio.done`, the transcript's
    /// `.done` if it is still open, and `response.done` (`completed`). Nothing without a
    /// reply in progress.
    pub fn reply_done(&mut self, mut emit: impl FnMut(&str)) {
        self.close_response("completed", &mut emit);
    }

    /// The reply in progress is dropped (barge-in, failover): `response.done` (`cancelled`).
    pub fn cancel_response(&mut self, mut emit: impl FnMut(&str)) {
        self.close_response("cancelled", &mut emit);
    }

    /// `voxroute.provider_switched`: failover; the call goes on with `to`, which later
    /// `session.updated` events name as `session.model`.
    pub fn encode_provider_switched(&mut self, from: &str, to: &str, reason: &str) -> &str {
        if let Some((_, provider)) = &mut self.session {
            provider.clear();
            provider.push_str(to);
        }
        self.begin("voxroute.provider_switched");
        self.out.push_str(r#","from":"#);
        push_json_str(&mut self.out, from);
        self.out.push_str(r#","to":"#);
        push_json_str(&mut self.out, to);
        self.out.push_str(r#","reason":"#);
        push_json_str(&mut self.out, reason);
        self.out.push('}');
        &self.out
    }

    /// `voxroute.session_ended`: the last event before the socket closes.
    pub fn encode_session_ended(&mut self, reason: SessionCloseReason) -> &str {
        self.begin("voxroute.session_ended");
        self.out.push_str(r#","reason":"#);
        push_json_str(&mut self.out, reason.as_str());
        self.out.push('}');
        &self.out
    }

    /// An `error` event: `code` is stable snake_case, `message` for humans. `provider_error`
    /// is a `server_error`, everything else an `invalid_request_error`.
    pub fn encode_error(&mut self, code: &str, message: &str) -> &str {
        self.begin_error(code);
        self.out.push_str(r#","message":"#);
        push_json_str(&mut self.out, message);
        self.end_error(None);
        &self.out
    }

    /// The `error` event for a protocol error, with the client's `event_id` echoed and, for
    /// errors about one field, its path as `param`.
    pub fn encode_protocol_error(&mut self, error: &ProtocolError) -> &str {
        self.begin_error(error.code());
        self.out.push_str(r#","message":""#);
        // Writing into a String cannot fail.
        let _ = write!(JsonEscaped(&mut self.out), "{error}");
        self.out.push('"');
        let param = match error {
            ProtocolError::MissingField(field)
            | ProtocolError::InvalidField(field)
            | ProtocolError::UnsupportedField(field) => Some(*field),
            _ => None,
        };
        self.end_error(param);
        &self.out
    }

    fn begin_error(&mut self, code: &str) {
        let kind = if code == "provider_error" {
            "server_error"
        } else {
            "invalid_request_error"
        };
        self.begin("error");
        self.out.push_str(r#","error":{"type":""#);
        self.out.push_str(kind);
        self.out.push_str(r#"","code":"#);
        push_json_str(&mut self.out, code);
    }

    fn end_error(&mut self, param: Option<&str>) {
        self.out.push_str(r#","param":"#);
        match param {
            Some(param) => push_json_str(&mut self.out, param),
            None => self.out.push_str("null"),
        }
        self.out.push_str(r#","event_id":"#);
        if self.client_event_id.is_empty() {
            self.out.push_str("null");
        } else {
            push_json_str(&mut self.out, &self.client_event_id);
        }
        self.out.push_str("}}");
    }

    /// The reply in progress, opened with `response.created` if there was none.
    fn open_response(&mut self, emit: &mut impl FnMut(&str)) -> (u64, u64) {
        if let Some(ids) = self.response {
            return ids;
        }
        let ids = (self.next_id(), self.next_id());
        self.response = Some(ids);
        self.reply_text.clear();
        self.reply_text_done = false;
        self.begin("response.created");
        self.out
            .push_str(r#","response":{"object":"realtime.response","id":"#);
        push_id(&mut self.out, "resp_", ids.0);
        self.out
            .push_str(r#","status":"in_progress","output_modalities":["audio"],"output":[]}}"#);
        emit(&self.out);
        ids
    }

    fn transcript_done(&mut self, response: u64, item: u64, emit: &mut impl FnMut(&str)) {
        self.reply_text_done = true;
        self.begin("response.output_audio_transcript.done");
        push_reply_ids(&mut self.out, response, item);
        self.out.push_str(r#","transcript":"#);
        push_json_str(&mut self.out, &self.reply_text);
        self.out.push('}');
        emit(&self.out);
    }

    fn close_response(&mut self, status: &str, emit: &mut impl FnMut(&str)) {
        let Some((response, item)) = self.response.take() else {
            return;
        };
        self.begin("response.output_audio.done");
        push_reply_ids(&mut self.out, response, item);
        self.out.push('}');
        emit(&self.out);
        if !self.reply_text.is_empty() && !self.reply_text_done {
            self.transcript_done(response, item, emit);
        }
        self.reply_text.clear();
        self.reply_text_done = false;
        self.begin("response.done");
        self.out
            .push_str(r#","response":{"object":"realtime.response","id":"#);
        push_id(&mut self.out, "resp_", response);
        self.out.push_str(r#","status":""#);
        self.out.push_str(status);
        self.out
            .push_str(r#"","output_modalities":["audio"],"output":[]}}"#);
        emit(&self.out);
    }

    /// The caller's current input item, a new one if none is open.
    fn current_input_item(&mut self) -> u64 {
        match self.input_item {
            Some(item) => item,
            None => {
                let item = self.next_id();
                self.input_item = Some(item);
                item
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.ids_issued += 1;
        self.ids_issued
    }

    /// Clears the buffer and writes `{"type":"<kind>","event_id":"vxr_evt_N"`.
    fn begin(&mut self, kind: &str) {
        self.events_sent += 1;
        self.out.clear();
        self.out.push_str(r#"{"type":""#);
        self.out.push_str(kind);
        self.out.push_str(r#"","event_id":"#);
        push_id(&mut self.out, "vxr_evt_", self.events_sent);
    }
}

/// `"<prefix><n>"`.
fn push_id(out: &mut String, prefix: &str, n: u64) {
    out.push('"');
    out.push_str(prefix);
    let _ = write!(out, "{n}");
    out.push('"');
}

/// The fields that place an event in the reply: response, item, output and content index.
fn push_reply_ids(out: &mut String, response: u64, item: u64) {
    out.push_str(r#","response_id":"#);
    push_id(out, "resp_", response);
    out.push_str(r#","item_id":"#);
    push_id(out, "item_", item);
    out.push_str(r#","output_index":0,"content_index":0"#);
}

/// A GA audio format object.
fn push_format(out: &mut String, format: AudioFormat) {
    out.push_str(match format.codec {
        Codec::Mulaw => r#"{"type":"audio/pcmu"}"#,
        Codec::Alaw => r#"{"type":"audio/pcma"}"#,
        _ => r#"{"type":"audio/pcm","rate":24000}"#,
    });
}

/// Every field a client event may need, borrowed; everything else is skipped unparsed.
#[derive(Deserialize)]
struct ClientEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    audio: Option<Text<'a>>,
}

/// Validates a `session.update`; `Some` format when it names one.
fn parse_session_update(text: &str) -> Result<Option<AudioFormat>, ProtocolError> {
    let event: Value = serde_json::from_str(text).map_err(|_| ProtocolError::MalformedJson)?;
    let session = event
        .get("session")
        .ok_or(ProtocolError::MissingField("session"))?
        .as_object()
        .ok_or(ProtocolError::InvalidField("session"))?;
    for (name, path) in REFUSED_SESSION_FIELDS {
        if session.get(name).is_some_and(|value| !is_empty(value)) {
            return Err(ProtocolError::UnsupportedField(path));
        }
    }
    if let Some(kind) = session.get("type")
        && kind.as_str() != Some("realtime")
    {
        return Err(ProtocolError::UnsupportedField("session.type"));
    }
    if let Some(modalities) = session.get("output_modalities")
        && !modalities
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("audio")))
    {
        return Err(ProtocolError::UnsupportedField("session.output_modalities"));
    }
    let audio = session.get("audio");
    let format_of = |direction: &str, path: &'static str| {
        audio
            .and_then(|a| a.get(direction))
            .and_then(|d| d.get("format"))
            .filter(|f| !f.is_null())
            .map(|f| parse_format(f).ok_or(ProtocolError::InvalidField(path)))
            .transpose()
    };
    let input = format_of("input", "session.audio.input.format")?;
    let output = format_of("output", "session.audio.output.format")?;
    match (input, output) {
        (Some(input), Some(output)) if input != output => Err(ProtocolError::UnsupportedField(
            "session.audio.output.format",
        )),
        (input, output) => Ok(input.or(output)),
    }
}

/// `null`, `""`, `[]` or `{}`: what clears a field.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A GA format object: `audio/pcm` (24 kHz only), `audio/pcmu`, `audio/pcma`.
fn parse_format(format: &Value) -> Option<AudioFormat> {
    let kind = format.get("type")?.as_str()?;
    match kind {
        "audio/pcm" => {
            let rate_ok = match format.get("rate") {
                None | Some(Value::Null) => true,
                Some(rate) => rate.as_f64() == Some(24_000.0),
            };
            rate_ok.then(|| AudioFormat::pcm16_mono(SampleRate::HZ_24000))
        }
        "audio/pcmu" => Some(AudioFormat::telephony_mulaw()),
        "audio/pcma" => AudioFormat::new(
            Codec::Alaw,
            SampleRate::HZ_8000,
            voxroute_codecs::Channels::Mono,
        )
        .ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every event `emit` gets, parsed.
    fn collect(run: impl FnOnce(&mut dyn FnMut(&str))) -> Vec<Value> {
        let mut events = Vec::new();
        run(&mut |text: &str| events.push(serde_json::from_str(text).expect("valid JSON")));
        events
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn append(bytes: &[u8]) -> String {
        json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(bytes)}).to_string()
    }

    /// An append decodes into the kept buffer, whole samples only; the audio clock advances.
    #[test]
    fn append_decodes_audio() {
        let mut codec = RealtimeCodec::new();
        let pcm = [7u8; 960];
        assert_eq!(
            codec.decode_text(&append(&pcm)),
            Ok(RealtimeInbound::Append { len: 960 })
        );
        assert_eq!(&codec.audio()[..960], &pcm[..]);
        assert_eq!(codec.frame_bytes(), 960);
        assert_eq!(codec.audio_in_ms, 20);
        assert_eq!(
            codec.decode_text(&append(&[1, 2, 3])),
            Err(ProtocolError::InvalidField("audio"))
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"input_audio_buffer.append"}"#),
            Err(ProtocolError::MissingField("audio"))
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"input_audio_buffer.append","audio":"@@@@"}"#),
            Err(ProtocolError::BadBase64)
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"input_audio_buffer.append","audio":""}"#),
            Err(ProtocolError::PayloadSize {
                len: 0,
                max: MAX_APPEND_BYTES
            })
        );
    }

    /// Frames over the limit are refused unparsed; malformed JSON and a missing or unknown
    /// `type` are errors; the events voxroute cannot carry are refused by name.
    #[test]
    fn bad_frames_and_unsupported_events() {
        let mut codec = RealtimeCodec::new();
        let big = "x".repeat(MAX_TEXT_FRAME + 1);
        assert!(matches!(
            codec.decode_text(&big),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert_eq!(
            codec.decode_text("{nope"),
            Err(ProtocolError::MalformedJson)
        );
        assert_eq!(
            codec.decode_text(r#"{"type": 7}"#),
            Err(ProtocolError::MalformedJson)
        );
        assert_eq!(
            codec.decode_text(r#"{"event_id":"x"}"#),
            Err(ProtocolError::MissingField("type"))
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"what.ever"}"#),
            Err(ProtocolError::UnknownEvent)
        );
        for name in UNSUPPORTED_EVENTS {
            let text = json!({"type": name}).to_string();
            assert_eq!(
                codec.decode_text(&text),
                Err(ProtocolError::UnsupportedEvent(name))
            );
        }
        assert_eq!(
            codec.decode_text(r#"{"type":"input_audio_buffer.commit"}"#),
            Ok(RealtimeInbound::Commit)
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"input_audio_buffer.clear"}"#),
            Ok(RealtimeInbound::Clear)
        );
    }

    /// `session.update` honours the three GA formats (one format both ways), refuses other
    /// formats, different formats per direction and the settings voxroute does not take, and
    /// ignores the rest; a refused update changes nothing.
    #[test]
    fn session_update_formats_and_fields() {
        let mut codec = RealtimeCodec::new();
        let update =
            |session: Value| json!({"type": "session.update", "session": session}).to_string();
        assert_eq!(
            codec.decode_text(&update(
                json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}})
            )),
            Ok(RealtimeInbound::SessionUpdate {
                format_changed: true
            })
        );
        assert_eq!(codec.format(), AudioFormat::telephony_mulaw());
        assert_eq!(codec.frame_bytes(), 160);
        assert_eq!(
            codec.decode_text(&update(
                json!({"audio": {"output": {"format": {"type": "audio/pcma"}, "voice": "marin"}}})
            )),
            Ok(RealtimeInbound::SessionUpdate {
                format_changed: true
            })
        );
        assert_eq!(codec.format().codec, Codec::Alaw);
        assert_eq!(
            codec.decode_text(&update(json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": null}}, "output_modalities": ["audio"]}))),
            Ok(RealtimeInbound::SessionUpdate { format_changed: true })
        );
        assert_eq!(
            codec.format(),
            AudioFormat::pcm16_mono(SampleRate::HZ_24000)
        );
        assert_eq!(
            codec.decode_text(&update(json!({"instructions": "", "tools": [], "audio": {"input": {"noise_reduction": null}}}))),
            Ok(RealtimeInbound::SessionUpdate { format_changed: false })
        );
        let refused = [
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
                ProtocolError::InvalidField("session.audio.input.format"),
            ),
            (
                json!({"audio": {"output": {"format": {"type": "audio/mp3"}}}}),
                ProtocolError::InvalidField("session.audio.output.format"),
            ),
            (
                json!({"audio": {"input": {"format": "pcm16"}}}),
                ProtocolError::InvalidField("session.audio.input.format"),
            ),
            (
                json!({"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}}),
                ProtocolError::UnsupportedField("session.audio.output.format"),
            ),
            (
                json!({"instructions": "Be brief.", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}),
                ProtocolError::UnsupportedField("session.instructions"),
            ),
            (
                json!({"tools": [{"type": "function", "name": "f"}]}),
                ProtocolError::UnsupportedField("session.tools"),
            ),
            (
                json!({"type": "transcription"}),
                ProtocolError::UnsupportedField("session.type"),
            ),
            (
                json!({"output_modalities": ["text"]}),
                ProtocolError::UnsupportedField("session.output_modalities"),
            ),
            (json!("realtime"), ProtocolError::InvalidField("session")),
        ];
        for (session, error) in refused {
            assert_eq!(
                codec.decode_text(&update(session.clone())),
                Err(error),
                "{session}"
            );
            assert_eq!(
                codec.format(),
                AudioFormat::pcm16_mono(SampleRate::HZ_24000)
            );
        }
        assert_eq!(
            codec.decode_text(r#"{"type":"session.update"}"#),
            Err(ProtocolError::MissingField("session"))
        );
    }

    /// `session.created` carries the session id and provider; an update accepted before it
    /// is answered right after it; `session.updated` shows the effective format.
    #[test]
    fn session_events() {
        let mut codec = RealtimeCodec::new();
        codec.defer_session_updated();
        let id = Uuid::now_v7();
        let events = collect(|emit| codec.session_created(id, "gemini", emit));
        assert_eq!(kinds(&events), ["session.created", "session.updated"]);
        assert_eq!(events[0]["session"]["id"], id.to_string());
        assert_eq!(events[0]["session"]["model"], "gemini");
        assert_eq!(
            events[0]["session"]["audio"]["input"]["format"],
            json!({"type": "audio/pcm", "rate": 24000})
        );
        assert_ne!(events[0]["event_id"], events[1]["event_id"]);
        codec
            .decode_text(r#"{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}}}}}"#)
            .unwrap();
        let updated = parse(codec.encode_session(SessionEventKind::Updated));
        assert_eq!(
            updated["session"]["audio"]["output"]["format"],
            json!({"type": "audio/pcmu"})
        );
        // Nothing deferred any more.
        let again = collect(|emit| codec.session_created(id, "gemini", emit));
        assert_eq!(kinds(&again), ["session.created"]);
    }

    /// A reply: `response.created` before the first delta, deltas of base64 audio, transcript
    /// deltas of what is new in cumulative words, `.done` events and `response.done`
    /// (`completed`); a barge-in cancels the reply in progress before `speech_started`.
    #[test]
    fn reply_lifecycle() {
        let mut codec = RealtimeCodec::new();
        let mut events = collect(|emit| {
            codec.audio_delta(&[1, 2, 3, 4], &mut *emit);
            codec.audio_delta(&[5, 6], &mut *emit);
            codec.reply_transcript("Sure", false, &mut *emit);
            codec.reply_transcript("Sure, one moment", false, &mut *emit);
            codec.reply_transcript("Sure, one moment.", true, &mut *emit);
            codec.reply_done(&mut *emit);
            codec.reply_done(&mut *emit);
        });
        assert_eq!(
            kinds(&events),
            [
                "response.created",
                "response.output_audio.delta",
                "response.output_audio.delta",
                "response.output_audio_transcript.delta",
                "response.output_audio_transcript.delta",
                "response.output_audio_transcript.delta",
                "response.output_audio_transcript.done",
                "response.output_audio.done",
                "response.done",
            ]
        );
        let response_id = events[0]["response"]["id"].clone();
        assert_eq!(events[1]["response_id"], response_id);
        assert_eq!(events[1]["delta"], BASE64.encode([1, 2, 3, 4]));
        let deltas: Vec<&str> = events[3..6]
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, ["Sure", ", one moment", "."]);
        assert_eq!(events[6]["transcript"], "Sure, one moment.");
        assert_eq!(events[8]["response"]["status"], "completed");
        assert_eq!(events[8]["response"]["id"], response_id);

        // Barge-in: the open reply (words not final) is cancelled, then speech starts.
        events = collect(|emit| {
            codec.reply_transcript("Let me", false, &mut *emit);
            codec.speech_started(&mut *emit);
        });
        assert_eq!(
            kinds(&events),
            [
                "response.created",
                "response.output_audio_transcript.delta",
                "response.output_audio.done",
                "response.output_audio_transcript.done",
                "response.done",
                "input_audio_buffer.speech_started",
            ]
        );
        assert_ne!(events[0]["response"]["id"], response_id);
        assert_eq!(events[3]["transcript"], "Let me");
        assert_eq!(events[4]["response"]["status"], "cancelled");
        let item = events[5]["item_id"].clone();
        // The caller's turn: stopped, transcribed and committed under the same item.
        let stopped = parse(codec.encode_speech_stopped());
        assert_eq!(
            (stopped["type"].as_str(), &stopped["item_id"]),
            (Some("input_audio_buffer.speech_stopped"), &item)
        );
        let words = parse(codec.encode_input_transcript("book a \"table\""));
        assert_eq!(
            words["type"],
            "conversation.item.input_audio_transcription.completed"
        );
        assert_eq!(
            (&words["item_id"], &words["transcript"]),
            (&item, &json!("book a \"table\""))
        );
        let committed = parse(codec.encode_committed());
        assert_eq!(committed["item_id"], item);
        // The next commit names a new item.
        let next = parse(codec.encode_committed());
        assert_ne!(next["item_id"], item);
        assert_eq!(
            parse(codec.encode_cleared())["type"],
            "input_audio_buffer.cleared"
        );
        // Cancelling with nothing open says nothing.
        assert!(collect(|emit| codec.cancel_response(emit)).is_empty());
    }

    /// Errors: protocol errors carry their stable code, the client's `event_id` (only from
    /// the frame that failed, and only if short) and the field as `param`; provider errors
    /// are `server_error`s; voxroute's own events carry their fields.
    #[test]
    fn errors_and_voxroute_events() {
        let mut codec = RealtimeCodec::new();
        let error = codec
            .decode_text(r#"{"type":"response.create","event_id":"evt_42"}"#)
            .unwrap_err();
        let event = parse(codec.encode_protocol_error(&error));
        assert_eq!(event["type"], "error");
        assert_eq!(
            event["error"],
            json!({"type": "invalid_request_error", "code": "unsupported_event",
                   "message": "event `response.create` is not supported by voxroute",
                   "param": null, "event_id": "evt_42"})
        );
        let error = codec
            .decode_text(r#"{"type":"session.update","session":{"instructions":"x"}}"#)
            .unwrap_err();
        let event = parse(codec.encode_protocol_error(&error));
        assert_eq!(event["error"]["param"], "session.instructions");
        assert_eq!(event["error"]["event_id"], Value::Null);
        let long_id = "e".repeat(MAX_CLIENT_EVENT_ID + 1);
        let error = codec
            .decode_text(&json!({"type": "nope", "event_id": long_id}).to_string())
            .unwrap_err();
        assert_eq!(
            parse(codec.encode_protocol_error(&error))["error"]["event_id"],
            Value::Null
        );
        let event = parse(codec.encode_error("provider_error", "the provider reported an error"));
        assert_eq!(event["error"]["type"], "server_error");
        assert_eq!(event["error"]["code"], "provider_error");
        let event = parse(codec.encode_provider_switched("oa-a", "oa-b", "PROVIDER_ERROR"));
        assert_eq!(
            (
                event["type"].as_str(),
                event["from"].as_str(),
                event["to"].as_str(),
                event["reason"].as_str()
            ),
            (
                Some("voxroute.provider_switched"),
                Some("oa-a"),
                Some("oa-b"),
                Some("PROVIDER_ERROR")
            )
        );
        let event = parse(codec.encode_session_ended(SessionCloseReason::IdleTimeout));
        assert_eq!(event["type"], "voxroute.session_ended");
        assert_eq!(event["reason"], "IDLE_TIMEOUT");
    }

    /// After a failover, `session.updated` names the provider the call goes on with.
    #[test]
    fn session_model_follows_a_failover() {
        let mut codec = RealtimeCodec::default();
        codec.session_created(Uuid::now_v7(), "oa-a", |_| {});
        codec.encode_provider_switched("oa-a", "oa-b", "PROVIDER_ERROR");
        let event = parse(codec.encode_session(SessionEventKind::Updated));
        assert_eq!(event["session"]["model"], "oa-b");
    }
}
