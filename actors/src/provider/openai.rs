//! `openai`: the adapter for the OpenAI Realtime API over a WebSocket, in its GA event shapes
//! (protocols.md §3).
//!
//! # What it speaks
//!
//! - **Connect** to `{base_url}?model={model}` (default
//!   `wss://api.openai.com/v1/realtime?model=gpt-realtime`) with `Authorization: Bearer <key>`.
//!   The header is left out when [`OpenAiSettings::api_key`] is `None` (a proxy or a stand-in
//!   that needs none). No `OpenAI-Beta` header: it selects the beta shapes.
//! - **On open**, one `session.update` (GA shape) with `event_id`
//!   [`SESSION_UPDATE_EVENT_ID`]: `audio/pcm` at 24 kHz both ways, server VAD that answers
//!   (unless [`OpenAiSettings::reply`] is off, for transcription only) and lets the caller
//!   interrupt, the voice, the optional instructions, and input transcription
//!   when [`OpenAiSettings::transcription_model`] is set.
//! - **Ready on `session.created`.** The server sends it as soon as the socket opens. Our
//!   `session.update` went out before any audio on the same socket, and the server handles
//!   client events in order, so every append is read with our formats. Waiting for
//!   `session.updated` would cost a round trip and buys nothing. A `session.updated` that
//!   comes first (see below) makes the adapter ready too; later ones are ignored.
//!   If the server refuses our `session.update`, its `error` echoes our event id, and the
//!   connection fails (fatal): the session is not configured the way voxroute needs.
//! - **Commands.** [`ProviderCommand::Audio`] becomes `input_audio_buffer.append` with the
//!   base64 of little-endian PCM16 at [`INPUT_SAMPLE_RATE_HZ`]. The server commits the buffer
//!   itself (server VAD), so there is no `commit`. An empty frame sends nothing.
//!   [`ProviderCommand::Dtmf`] is dropped: a WebSocket client has no place for key presses
//!   (`input_audio_buffer.dtmf_event_received` is a SIP server event). [`ProviderCommand::Finish`]
//!   closes the socket with 1000, which is how a Realtime conversation ends; a
//!   transcription-only session ([`OpenAiSettings::reply`] off, `/v1/listen`) first commits
//!   the audio not yet committed and closes once that item's transcript came (or the commit
//!   was refused as empty), so the caller's last words are transcribed too.
//!
//! | server event | becomes |
//! |---|---|
//! | `session.created` (or `session.updated`), the first | [`ProviderEvent::Ready`] |
//! | `response.output_audio.delta`, beta `response.audio.delta` | [`ProviderEvent::Audio`] at [`OUTPUT_SAMPLE_RATE_HZ`] |
//! | `response.output_audio_transcript.delta`, beta `response.audio_transcript.delta` | interim [`ProviderEvent::ReplyTranscript`] (the model's words) |
//! | `response.output_audio_transcript.done`, beta `response.audio_transcript.done` | final [`ProviderEvent::ReplyTranscript`] |
//! | `conversation.item.input_audio_transcription.completed` | final `Transcript` of the caller's words |
//! | `conversation.item.input_audio_transcription.failed` | non-fatal [`ProviderError::Provider`] |
//! | `input_audio_buffer.speech_started` | [`ProviderEvent::SpeechStarted`] (barge-in; the server cancels its response itself) |
//! | `input_audio_buffer.speech_stopped` | [`ProviderEvent::SpeechStopped`] |
//! | `response.done` | [`ProviderEvent::ReplyDone`] |
//! | `error` | a [`ProviderError`], see below |
//! | anything else (`rate_limits.updated`, text deltas, ...) | ignored and counted |
//!
//! Interim transcripts are cumulative, like other providers' interim results: each one holds
//! the model's words so far in the current output item, not just the new delta. Transcription
//! deltas of the caller's words are not used; the `completed` event carries the whole text.
//! Empty transcripts are ignored.
//!
//! # Errors
//!
//! - Most `error` events leave the session open (the reference says so): they become
//!   non-fatal [`ProviderError::Provider`] with `code: message`, clipped to
//!   [`MAX_ERROR_MESSAGE_BYTES`].
//! - Fatal: `invalid_api_key` or an error of type `authentication_error` (as
//!   [`ProviderError::AuthRefused`] with 401, which also keeps the server's message, holding
//!   part of the key, out of logs); `access_not_enabled`,
//!   `session_expired` and `beta_api_shape_disabled`; and any error echoing
//!   [`SESSION_UPDATE_EVENT_ID`].
//! - Malformed JSON, an event without a string `type`, a binary frame, an audio delta that is
//!   not base64 or holds an odd number of bytes: non-fatal `bad_frame`s (dropped and counted).
//! - Closes: a close reason naming `invalid_api_key` is [`ProviderError::AuthRefused`], one
//!   naming `beta_api_shape_disabled` is [`ProviderError::Config`]; otherwise the default
//!   (1000 or no code is the end of the conversation, any other code a retryable failure).
//!
//! # Unverified facts, and how the code copes
//!
//! - The lifecycle (`session.created` first, `session.updated` in answer) is ◐. Should a
//!   server send `session.updated` without `session.created`, that makes the adapter ready
//!   instead; should it send neither, the actor's connect timeout fails the connection over.
//! - The GA `session.update` is composed from SDK types (not a published example). Its shape
//!   is GA-only; a beta-only server refuses it, and the echoed event id makes that fatal.
//! - Error codes: `invalid_api_key`, `access_not_enabled` and a close with code 3000 and reason
//!   `invalid_request_error.invalid_api_key` come from third-party reports; `session_expired`
//!   is remembered (⚠); the close 4000 `beta_api_shape_disabled` is ◐. Matching is on the
//!   `code` (or reason) text only, and an unknown code is non-fatal.
//! - Server events are read leniently: unknown fields are skipped, and a known field holding
//!   another JSON type than expected reads as absent instead of failing the frame. Both GA and
//!   beta names of the audio and transcript events are accepted.
//!
//! # Allocation
//!
//! A warm audio frame allocates one `String`, exactly the size of the message it becomes:
//! the PCM bytes go through a buffer the adapter keeps, and base64 is written straight into
//! the message. An inbound audio delta allocates its `Vec<i16>` (the event's payload); its
//! base64 is decoded into the same kept buffer, and the JSON is parsed borrowing from the
//! frame. `Debug` shows neither the key nor any audio or text.
//!
//! The base64 PCM16, URL, lenient-JSON and error-clipping helpers are the provider module's
//! shared wire helpers (`provider/wire.rs`), which the other adapters use too.

use std::fmt;

use serde::Deserialize;
use serde_json::{Value, json};

use super::adapter::{
    AdapterOutput, CLOSE_NORMAL, ConnectRequest, Endpoint, ProviderAdapter, ProviderError, WsFrame,
    WsFrameRef,
};
use super::wire::{
    self, AudioError, Base64Pcm16, LenientStr, ShowUrl, clip, default_on_close,
    emit_final_or_ignore, url_with_query,
};
use super::{ProviderCommand, ProviderEvent};

/// The Realtime endpoint the adapter dials unless told otherwise (`VOXROUTE_OPENAI_URL`).
pub const DEFAULT_URL: &str = "wss://api.openai.com/v1/realtime";
/// The model asked for in the URL unless told otherwise.
pub const DEFAULT_MODEL: &str = "gpt-realtime";
/// The voice asked for unless told otherwise (one of the GA built-in voices).
pub const DEFAULT_VOICE: &str = "marin";
/// The model that transcribes the caller unless told otherwise.
pub const DEFAULT_TRANSCRIPTION_MODEL: &str = "gpt-4o-transcribe";
/// The rate of the PCM16 the adapter sends: `audio/pcm` in GA takes 24 kHz only.
pub const INPUT_SAMPLE_RATE_HZ: u32 = 24_000;
/// The rate of the PCM16 the adapter emits: the same 24 kHz `audio/pcm`.
pub const OUTPUT_SAMPLE_RATE_HZ: u32 = 24_000;
/// The `event_id` of the `session.update` sent on open; an `error` echoing it is fatal.
pub const SESSION_UPDATE_EVENT_ID: &str = "voxroute_session_update";
/// Longest provider error message passed on, in bytes; longer ones are cut at a character
/// boundary (they go to the caller's `error` event and to the logs). Every adapter uses the
/// same limit.
pub const MAX_ERROR_MESSAGE_BYTES: usize = wire::MAX_ERROR_MESSAGE_BYTES;

/// The text an `input_audio_buffer.append` starts with, before the base64 audio.
const APPEND_PREFIX: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
/// The text an `input_audio_buffer.append` ends with, after the base64 audio.
const APPEND_SUFFIX: &str = r#""}"#;
/// The `event_id` of [`FINAL_COMMIT`]: an error that echoes it refused the commit.
const FINAL_COMMIT_EVENT_ID: &str = "voxroute_final_commit";
/// The commit a transcription-only session finishes with (see [`FinalCommit`]).
const FINAL_COMMIT: &str =
    r#"{"type":"input_audio_buffer.commit","event_id":"voxroute_final_commit"}"#;
/// PCM bytes of one 20 ms frame at 24 kHz: the kept buffer's starting size.
const FRAME_BYTES: usize = INPUT_SAMPLE_RATE_HZ as usize / 50 * 2;

/// How to reach OpenAI and what to ask of it. The app fills it from its configuration and the
/// environment (`OPENAI_API_KEY`, `VOXROUTE_OPENAI_URL`); the adapter reads no environment.
///
/// `Debug` hides the key and the base URL's query string.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiSettings {
    /// `wss://` (or `ws://`) URL of the Realtime endpoint, without `model`; `https://` and
    /// `http://` are turned into `wss://` and `ws://`. It may carry its own query string.
    pub base_url: String,
    /// The API key or ephemeral client secret, sent as `Authorization: Bearer`; `None` (or
    /// empty) sends no `Authorization` header.
    pub api_key: Option<String>,
    /// The model, sent as the `model` query parameter (e.g. `gpt-realtime`).
    pub model: String,
    /// The voice of the model's audio (`alloy`, `ash`, `ballad`, `coral`, `echo`, `sage`,
    /// `shimmer`, `verse`, `marin`, `cedar`).
    pub voice: String,
    /// The system instructions; `None` keeps the server's default.
    pub instructions: Option<String>,
    /// The model transcribing the caller's audio; `None` turns input transcription off (no
    /// caller transcripts then).
    pub transcription_model: Option<String>,
    /// Whether the model answers each turn the server's voice detection ends
    /// (`turn_detection.create_response`); `false` for transcription only (`/v1/listen`).
    pub reply: bool,
}

impl Default for OpenAiSettings {
    /// The public endpoint, [`DEFAULT_MODEL`], [`DEFAULT_VOICE`], no key, no instructions,
    /// caller transcription with [`DEFAULT_TRANSCRIPTION_MODEL`], answering every turn.
    fn default() -> Self {
        OpenAiSettings {
            base_url: DEFAULT_URL.to_owned(),
            api_key: None,
            model: DEFAULT_MODEL.to_owned(),
            voice: DEFAULT_VOICE.to_owned(),
            instructions: None,
            transcription_model: Some(DEFAULT_TRANSCRIPTION_MODEL.to_owned()),
            reply: true,
        }
    }
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &ShowUrl(&self.base_url))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("instructions", &self.instructions)
            .field("transcription_model", &self.transcription_model)
            .finish()
    }
}

/// The OpenAI Realtime adapter: one per connection.
pub struct OpenAiAdapter {
    /// What to connect to and ask for; fixed for the connection.
    settings: OpenAiSettings,
    /// Set by the first `session.created` (or `session.updated`), when `Ready` is emitted;
    /// never reset.
    ready: bool,
    /// PCM bytes on their way to or from base64, reused by every audio frame.
    pcm: Base64Pcm16,
    /// The model's words so far in the output item [`transcript_item`](Self::transcript_item),
    /// for cumulative interim transcripts; emptied when the item's transcript is done or
    /// another item starts.
    transcript: String,
    /// The `item_id` the words in [`transcript`](Self::transcript) belong to.
    transcript_item: String,
    /// A transcription-only session finishing (see [`FinalCommit`]).
    final_commit: FinalCommit,
}

/// How a transcription-only session ([`OpenAiSettings::reply`] off) finishes: on
/// [`ProviderCommand::Finish`] it commits the audio its voice detection has not committed
/// yet, and closes once that item's transcript has come (or the commit was refused: nothing
/// was left). The provider actor's finish timeout bounds the wait.
#[derive(Debug, Default, PartialEq, Eq)]
enum FinalCommit {
    /// Not finishing (or finishing by closing at once).
    #[default]
    None,
    /// The commit is sent; its `input_audio_buffer.committed` names the item to wait for.
    Sent,
    /// The transcript of this item is the last one.
    Awaiting(String),
}

impl OpenAiAdapter {
    /// An adapter for one connection with these settings.
    pub fn new(settings: OpenAiSettings) -> Self {
        OpenAiAdapter {
            settings,
            ready: false,
            pcm: Base64Pcm16::with_capacity(FRAME_BYTES),
            transcript: String::new(),
            transcript_item: String::new(),
            final_commit: FinalCommit::None,
        }
    }

    /// The `session.update` sent on open.
    fn session_update(&self) -> Value {
        let format = json!({"type": "audio/pcm", "rate": INPUT_SAMPLE_RATE_HZ});
        let mut input = json!({
            "format": format,
            "turn_detection": {
                "type": "server_vad",
                "create_response": self.settings.reply,
                "interrupt_response": true,
            },
        });
        if let Some(model) = &self.settings.transcription_model {
            input["transcription"] = json!({ "model": model });
        }
        let mut session = json!({
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": input,
                "output": {
                    "format": {"type": "audio/pcm", "rate": OUTPUT_SAMPLE_RATE_HZ},
                    "voice": self.settings.voice,
                },
            },
        });
        if let Some(instructions) = &self.settings.instructions {
            session["instructions"] = json!(instructions);
        }
        json!({
            "type": "session.update",
            "event_id": SESSION_UPDATE_EVENT_ID,
            "session": session,
        })
    }

    /// A transcript delta of the model's words: the words so far, as an interim transcript.
    fn transcript_delta(&mut self, event: &Envelope<'_>, out: &mut AdapterOutput) {
        let item = event.item_id.get().unwrap_or("");
        if item != self.transcript_item {
            self.transcript.clear();
            self.transcript_item.clear();
            self.transcript_item.push_str(item);
        }
        match event.delta.get() {
            Some(delta) if !delta.is_empty() => {
                self.transcript.push_str(delta);
                out.emit(ProviderEvent::ReplyTranscript {
                    text: self.transcript.clone(),
                    is_final: false,
                });
            }
            _ => out.ignore(),
        }
    }

    /// Closes the connection if `event` ends the transcription of the final commit's item.
    fn close_if_last(&mut self, event: &Envelope<'_>, out: &mut AdapterOutput) {
        if let FinalCommit::Awaiting(item) = &self.final_commit
            && event.item_id.get() == Some(item.as_str())
        {
            self.final_commit = FinalCommit::None;
            out.close(CLOSE_NORMAL, "");
        }
    }

    /// The model's transcript of an output item is done: a final transcript.
    fn transcript_done(&mut self, event: &Envelope<'_>, out: &mut AdapterOutput) {
        let same_item = event.item_id.get().unwrap_or("") == self.transcript_item;
        let text = match event.transcript.get() {
            Some(text) => text.to_owned(),
            // No `transcript` field: what the deltas said is the best we have.
            None if same_item => std::mem::take(&mut self.transcript),
            None => String::new(),
        };
        if same_item {
            self.transcript.clear();
            self.transcript_item.clear();
        }
        if text.is_empty() {
            out.ignore();
        } else {
            out.emit(ProviderEvent::ReplyTranscript {
                text,
                is_final: true,
            });
        }
    }
}

impl fmt::Debug for OpenAiAdapter {
    /// Settings (key hidden) and state only: never audio or transcript text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiAdapter")
            .field("settings", &self.settings)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl ProviderAdapter for OpenAiAdapter {
    fn endpoint(&self) -> Endpoint {
        let url = url_with_query(&self.settings.base_url, "model", &self.settings.model);
        let mut request = ConnectRequest::new(url);
        if let Some(key) = self
            .settings
            .api_key
            .as_deref()
            .filter(|key| !key.is_empty())
        {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        Endpoint::WebSocket(request)
    }

    /// Sends the `session.update`; `Ready` waits for `session.created`.
    fn on_open(&mut self, out: &mut AdapterOutput) {
        out.send(WsFrame::Text(self.session_update().to_string()));
    }

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        match command {
            ProviderCommand::Audio(samples) => {
                self.pcm
                    .send_text(APPEND_PREFIX, &samples, APPEND_SUFFIX, out);
            }
            // A Realtime WebSocket client has no event for key presses.
            ProviderCommand::Dtmf { .. } | ProviderCommand::Flush => {}
            ProviderCommand::Finish if !self.settings.reply && self.ready => {
                out.send(WsFrame::Text(FINAL_COMMIT.to_owned()));
                self.final_commit = FinalCommit::Sent;
            }
            ProviderCommand::Finish => out.close(CLOSE_NORMAL, ""),
        }
    }

    fn decode(
        &mut self,
        frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let WsFrameRef::Text(text) = frame else {
            return Err(ProviderError::bad_frame(
                "OpenAI sent a binary frame; its events are JSON text",
            ));
        };
        let event: Envelope<'_> = serde_json::from_str(text)
            .map_err(|_| ProviderError::bad_frame("OpenAI event is not a JSON object"))?;
        let Some(kind) = event.kind.get() else {
            return Err(ProviderError::bad_frame("OpenAI event has no string type"));
        };
        match kind {
            "session.created" | "session.updated" if !self.ready => {
                self.ready = true;
                out.emit(ProviderEvent::Ready);
            }
            "response.output_audio.delta" | "response.audio.delta" => {
                let delta = event.delta.get().ok_or(ProviderError::bad_frame(
                    "OpenAI audio delta has no string delta",
                ))?;
                if delta.is_empty() {
                    out.ignore();
                } else {
                    let samples = self.pcm.decode(delta).map_err(AudioError::bad_frame)?;
                    out.emit(ProviderEvent::Audio(samples));
                }
            }
            "response.output_audio_transcript.delta" | "response.audio_transcript.delta" => {
                self.transcript_delta(&event, out);
            }
            "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                self.transcript_done(&event, out);
            }
            "input_audio_buffer.committed" if self.final_commit == FinalCommit::Sent => {
                let item = event.item_id.get().unwrap_or("").to_owned();
                self.final_commit = FinalCommit::Awaiting(item);
            }
            "conversation.item.input_audio_transcription.completed" => {
                emit_final_or_ignore(event.transcript.get().unwrap_or("").to_owned(), out);
                self.close_if_last(&event, out);
            }
            "conversation.item.input_audio_transcription.failed" => {
                self.close_if_last(&event, out);
                let ErrorDetails { message, .. } = ErrorDetails::parse(text);
                return Err(ProviderError::Provider {
                    message: format!("caller transcription failed: {message}"),
                    fatal: false,
                });
            }
            // The final commit refused: no audio was left to transcribe. Any other error
            // is reported as usual.
            "error"
                if self.final_commit == FinalCommit::Sent
                    && error_answers(text, FINAL_COMMIT_EVENT_ID) =>
            {
                out.close(CLOSE_NORMAL, "")
            }
            "input_audio_buffer.speech_started" => out.emit(ProviderEvent::SpeechStarted),
            "input_audio_buffer.speech_stopped" => out.emit(ProviderEvent::SpeechStopped),
            "response.done" => out.emit(ProviderEvent::ReplyDone),
            "error" => return Err(ErrorDetails::parse(text).into_error()),
            _ => out.ignore(),
        }
        Ok(())
    }

    /// Explains the closes reported for a refused key (3000,
    /// `invalid_request_error.invalid_api_key`) and for the beta shape (4000,
    /// `…beta_api_shape_disabled`); any other close as the default does.
    fn on_close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let _ = out;
        if reason.contains("invalid_api_key") {
            return Err(ProviderError::AuthRefused { status: 401 });
        }
        if reason.contains("beta_api_shape_disabled") {
            return Err(ProviderError::Config {
                detail: "the OpenAI endpoint refused the beta Realtime shape".into(),
            });
        }
        default_on_close(code, reason)
    }
}

/// What every server event is read as: the discriminator plus the few fields the events used
/// carry, borrowed from the frame. Everything else is skipped without allocating.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: LenientStr<'a>,
    /// Base64 audio (audio deltas) or text (transcript deltas).
    #[serde(borrow, default)]
    delta: LenientStr<'a>,
    /// The whole text of a finished transcript.
    #[serde(borrow, default)]
    transcript: LenientStr<'a>,
    /// The conversation item a delta belongs to.
    #[serde(borrow, default)]
    item_id: LenientStr<'a>,
}

/// The `error` object of an `error` or `…transcription.failed` event, read a second time
/// (errors are rare, so the common path does not pay for it).
#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: LenientStr<'a>,
    #[serde(borrow, default)]
    code: LenientStr<'a>,
    #[serde(borrow, default)]
    message: LenientStr<'a>,
    /// The client event that failed, if one did.
    #[serde(borrow, default)]
    event_id: LenientStr<'a>,
}

/// Whether the `error` event `text` answers the client event `event_id`.
fn error_answers(text: &str, event_id: &str) -> bool {
    serde_json::from_str::<ErrorEvent<'_>>(text)
        .ok()
        .and_then(|event| event.error)
        .is_some_and(|body| body.event_id.get() == Some(event_id))
}

/// An OpenAI error, ready to become a [`ProviderError`].
struct ErrorDetails {
    /// `code: message` (or whichever of them is there), clipped.
    message: String,
    /// The fatality decided from the code and the echoed event id.
    fatal: bool,
    /// The server refused our key.
    auth: bool,
}

impl ErrorDetails {
    /// Reads the `error` object of `text`; an unreadable one gives a generic non-fatal error.
    fn parse(text: &str) -> Self {
        let body = serde_json::from_str::<ErrorEvent<'_>>(text)
            .ok()
            .and_then(|event| event.error);
        let Some(body) = body else {
            return ErrorDetails {
                message: "unspecified error".to_owned(),
                fatal: false,
                auth: false,
            };
        };
        let code = body.code.get().unwrap_or("");
        let auth = code == "invalid_api_key" || body.kind.get() == Some("authentication_error");
        let fatal =
            auth || matches!(
                code,
                "access_not_enabled" | "session_expired" | "beta_api_shape_disabled"
            ) || body.event_id.get() == Some(SESSION_UPDATE_EVENT_ID);
        let message = match (code, body.message.get().unwrap_or("")) {
            ("", "") => "unspecified error".to_owned(),
            (code, "") => clip(code, MAX_ERROR_MESSAGE_BYTES),
            ("", message) => clip(message, MAX_ERROR_MESSAGE_BYTES),
            (code, message) => clip(&format!("{code}: {message}"), MAX_ERROR_MESSAGE_BYTES),
        };
        ErrorDetails {
            message,
            fatal,
            auth,
        }
    }

    /// The error `decode` returns for an `error` event.
    fn into_error(self) -> ProviderError {
        if self.auth {
            // The message of a refused key quotes part of it: it is not passed on.
            ProviderError::AuthRefused { status: 401 }
        } else {
            ProviderError::Provider {
                message: self.message,
                fatal: self.fatal,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::testing::{
        GOLDEN_B64, GOLDEN_SAMPLES, close_code, decode_err, decode_ok, opened, sent_audio_json,
        sent_json,
    };
    use super::*;

    const KEY: &str = "sk-test-SECRET";

    fn settings() -> OpenAiSettings {
        OpenAiSettings {
            api_key: Some(KEY.to_owned()),
            instructions: Some("You are a phone agent.".to_owned()),
            ..OpenAiSettings::default()
        }
    }

    /// An adapter that has had its `session.created`.
    fn ready_adapter() -> OpenAiAdapter {
        opened(OpenAiAdapter::new(settings()), SESSION_CREATED)
    }

    const SESSION_CREATED: &str = r#"{"type": "session.created", "event_id": "event_0",
        "session": {"type": "realtime", "id": "sess_1", "model": "gpt-realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}}"#;

    /// The whole outbound side of a short conversation: `session.update` on open (and no
    /// `Ready` yet), `Ready` on `session.created`, one audio append, a dropped key press, and
    /// a normal close on `Finish`.
    #[test]
    fn golden_outbound_conversation() {
        let mut adapter = OpenAiAdapter::new(settings());
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        assert!(out.events().is_empty());
        assert_eq!(
            sent_json(&out),
            vec![json!({
                "type": "session.update",
                "event_id": "voxroute_session_update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "You are a phone agent.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {
                                "type": "server_vad",
                                "create_response": true,
                                "interrupt_response": true
                            },
                            "transcription": {"model": "gpt-4o-transcribe"}
                        },
                        "output": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "voice": "marin"
                        }
                    }
                }
            })]
        );
        out.clear();

        adapter
            .decode(WsFrameRef::Text(SESSION_CREATED), &mut out)
            .unwrap();
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        assert!(out.frames().is_empty());
        out.clear();

        adapter.encode(ProviderCommand::Audio(GOLDEN_SAMPLES.to_vec()), &mut out);
        adapter.encode(ProviderCommand::Dtmf { digit: '5' }, &mut out);
        adapter.encode(ProviderCommand::Audio(Vec::new()), &mut out);
        assert_eq!(
            sent_json(&out),
            vec![json!({"type": "input_audio_buffer.append", "audio": GOLDEN_B64})]
        );
        assert!(out.close_request().is_none());
        out.clear();

        adapter.encode(ProviderCommand::Finish, &mut out);
        assert!(out.frames().is_empty() && out.events().is_empty());
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));
    }

    /// Without instructions and transcription, `session.update` leaves both out (the server
    /// keeps its defaults; no caller transcripts).
    #[test]
    fn session_update_leaves_out_unset_options() {
        let mut adapter = OpenAiAdapter::new(OpenAiSettings {
            transcription_model: None,
            voice: "cedar".to_owned(),
            ..OpenAiSettings::default()
        });
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        let update = &sent_json(&out)[0];
        assert!(update["session"].get("instructions").is_none(), "{update}");
        assert!(
            update["session"]["audio"]["input"]
                .get("transcription")
                .is_none()
        );
        assert_eq!(update["session"]["audio"]["output"]["voice"], "cedar");
    }

    /// A transcription-only session finishes by committing what is left and closes once
    /// that item's transcript came; an earlier item's transcript does not close it, and a
    /// refused (empty) commit closes at once.
    #[test]
    fn transcription_only_finish_commits_then_closes() {
        let settings = || OpenAiSettings {
            reply: false,
            ..OpenAiSettings::default()
        };
        let mut adapter = opened(OpenAiAdapter::new(settings()), SESSION_CREATED);
        let mut out = AdapterOutput::new();
        adapter.encode(ProviderCommand::Finish, &mut out);
        assert_eq!(
            sent_json(&out),
            vec![json!({"type": "input_audio_buffer.commit", "event_id": FINAL_COMMIT_EVENT_ID})]
        );
        assert!(out.close_request().is_none());
        out.clear();
        for (event, closes) in [
            (
                r#"{"type":"input_audio_buffer.committed","item_id":"item_9"}"#,
                false,
            ),
            (
                r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_8","transcript":"before"}"#,
                false,
            ),
            (
                r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_9","transcript":"last words"}"#,
                true,
            ),
        ] {
            adapter.decode(WsFrameRef::Text(event), &mut out).unwrap();
            assert_eq!(close_code(&out).is_some(), closes, "{event}");
        }
        assert_eq!(
            out.events().last(),
            Some(&ProviderEvent::Transcript {
                text: "last words".into(),
                is_final: true
            })
        );

        let mut adapter = opened(OpenAiAdapter::new(settings()), SESSION_CREATED);
        let mut out = AdapterOutput::new();
        adapter.encode(ProviderCommand::Finish, &mut out);
        out.clear();
        let refused = r#"{"type":"error","error":{"type":"invalid_request_error","code":"input_audio_buffer_commit_empty","message":"buffer too small","event_id":"voxroute_final_commit"}}"#;
        adapter.decode(WsFrameRef::Text(refused), &mut out).unwrap();
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));

        // An error about something else is not the commit's refusal: reported, no close.
        let mut adapter = opened(OpenAiAdapter::new(settings()), SESSION_CREATED);
        let mut out = AdapterOutput::new();
        adapter.encode(ProviderCommand::Finish, &mut out);
        out.clear();
        let other = r#"{"type":"error","error":{"type":"server_error","code":"server_error","message":"overloaded"}}"#;
        assert!(adapter.decode(WsFrameRef::Text(other), &mut out).is_err());
        assert!(out.close_request().is_none());
    }

    /// A transcription-only session (`reply: false`) asks the server not to answer turns.
    #[test]
    fn session_update_without_replies() {
        let mut adapter = OpenAiAdapter::new(OpenAiSettings {
            reply: false,
            ..OpenAiSettings::default()
        });
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        let update = &sent_json(&out)[0];
        let input = &update["session"]["audio"]["input"];
        assert_eq!(
            input["turn_detection"]["create_response"], false,
            "{update}"
        );
        assert_eq!(input["transcription"]["model"], DEFAULT_TRANSCRIPTION_MODEL);
    }

    /// The URL names the model, the key travels as a bearer header, and no `Debug` (settings,
    /// adapter, request) shows the key or the base URL's query.
    #[test]
    fn endpoint_url_headers_and_debug_hide_the_key() {
        let adapter = OpenAiAdapter::new(settings());
        let Endpoint::WebSocket(request) = adapter.endpoint() else {
            panic!("OpenAI is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            request.headers,
            vec![("Authorization".to_owned(), format!("Bearer {KEY}"))]
        );
        for shown in [
            format!("{request:?}"),
            format!("{adapter:?}"),
            format!("{:?}", settings()),
        ] {
            assert!(!shown.contains("SECRET"), "{shown}");
        }

        // A proxy without a key, given as https with its own query: no header, `&` joins, the
        // model is percent-encoded, and Debug hides the proxy's token.
        let proxy = OpenAiAdapter::new(OpenAiSettings {
            base_url: "https://proxy.test/rt?token=SECRET".to_owned(),
            api_key: Some(String::new()),
            model: "my model/1".to_owned(),
            ..OpenAiSettings::default()
        });
        let Endpoint::WebSocket(request) = proxy.endpoint() else {
            panic!("OpenAI is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://proxy.test/rt?token=SECRET&model=my%20model%2F1"
        );
        assert!(request.headers.is_empty());
        let shown = format!("{proxy:?}");
        assert!(
            !shown.contains("SECRET") && shown.contains("https://proxy.test/rt?…"),
            "{shown}"
        );
    }

    /// A server that skips `session.created` still gets the adapter ready, once.
    #[test]
    fn session_updated_first_also_means_ready() {
        let mut adapter = OpenAiAdapter::new(settings());
        let updated = r#"{"type": "session.updated", "event_id": "event_1", "session": {"type": "realtime"}}"#;
        let out = decode_ok(&mut adapter, updated);
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        let out = decode_ok(&mut adapter, SESSION_CREATED);
        assert!(out.events().is_empty() && out.ignored() == 1);
    }

    /// Every server event the adapter uses, GA and beta names, with frames shaped as in the
    /// reference; events it does not use are counted as ignored.
    #[test]
    fn decodes_every_server_event() {
        let mut adapter = OpenAiAdapter::new(settings());

        let out = decode_ok(&mut adapter, SESSION_CREATED);
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        // Only the first `session.created` makes the adapter ready; `session.updated` is
        // ignored.
        let out = decode_ok(&mut adapter, SESSION_CREATED);
        assert!(out.events().is_empty() && out.ignored() == 1);
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "session.updated", "event_id": "event_1", "session": {"type": "realtime"}}"#,
        );
        assert!(out.events().is_empty() && out.ignored() == 1);

        // Audio, GA and beta names (the same fields).
        for kind in ["response.output_audio.delta", "response.audio.delta"] {
            let text = format!(
                r#"{{"type": "{kind}", "event_id": "event_1", "response_id": "resp_1",
                    "item_id": "item_1", "output_index": 0, "content_index": 0,
                    "delta": "ZACc/9AHMPg="}}"#
            );
            let out = decode_ok(&mut adapter, &text);
            assert_eq!(
                out.events(),
                &[ProviderEvent::Audio(vec![100, -100, 2000, -2000])]
            );
        }
        // An empty delta carries no audio.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "response.output_audio.delta", "item_id": "item_1", "delta": ""}"#,
        );
        assert!(out.events().is_empty() && out.ignored() == 1);

        let out = decode_ok(
            &mut adapter,
            r#"{"type": "input_audio_buffer.speech_started", "event_id": "event_2",
                "audio_start_ms": 1000, "item_id": "item_2"}"#,
        );
        assert_eq!(out.events(), &[ProviderEvent::SpeechStarted]);

        let out = decode_ok(
            &mut adapter,
            r#"{"type": "conversation.item.input_audio_transcription.completed",
                "event_id": "event_6", "item_id": "item_2", "content_index": 0,
                "transcript": "Hello.", "usage": {"type": "duration", "seconds": 1.3}}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::Transcript {
                text: "Hello.".into(),
                is_final: true
            }]
        );

        // The model's words: cumulative interims, then the final text (GA, then beta names).
        for (delta, done) in [
            (
                "response.output_audio_transcript.delta",
                "response.output_audio_transcript.done",
            ),
            (
                "response.audio_transcript.delta",
                "response.audio_transcript.done",
            ),
        ] {
            let mut events = Vec::new();
            for (item, text) in [("item_3", "Sure"), ("item_3", ", one moment.")] {
                let frame = format!(
                    r#"{{"type": "{delta}", "event_id": "event_9", "response_id": "resp_2",
                        "item_id": "{item}", "output_index": 0, "content_index": 0,
                        "delta": "{text}"}}"#
                );
                events.extend_from_slice(decode_ok(&mut adapter, &frame).events());
            }
            let frame = format!(
                r#"{{"type": "{done}", "event_id": "event_10", "response_id": "resp_2",
                    "item_id": "item_3", "output_index": 0, "content_index": 0,
                    "transcript": "Sure, one moment."}}"#
            );
            events.extend_from_slice(decode_ok(&mut adapter, &frame).events());
            assert_eq!(
                events,
                vec![
                    ProviderEvent::ReplyTranscript {
                        text: "Sure".into(),
                        is_final: false
                    },
                    ProviderEvent::ReplyTranscript {
                        text: "Sure, one moment.".into(),
                        is_final: false
                    },
                    ProviderEvent::ReplyTranscript {
                        text: "Sure, one moment.".into(),
                        is_final: true
                    },
                ]
            );
        }

        // A new item starts its own words; a `done` without `transcript` uses the deltas.
        decode_ok(
            &mut adapter,
            r#"{"type": "response.output_audio_transcript.delta", "item_id": "item_4", "delta": "Old"}"#,
        );
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "response.output_audio_transcript.delta", "item_id": "item_5", "delta": "New"}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::ReplyTranscript {
                text: "New".into(),
                is_final: false
            }]
        );
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "response.output_audio_transcript.done", "item_id": "item_5"}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::ReplyTranscript {
                text: "New".into(),
                is_final: true
            }]
        );

        // The caller's turn ends, and the model's reply is complete.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "input_audio_buffer.speech_stopped", "event_id": "event_3", "audio_end_ms": 2300, "item_id": "item_2"}"#,
        );
        assert_eq!(out.events(), &[ProviderEvent::SpeechStopped]);
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "response.done", "response": {"status": "cancelled"}}"#,
        );
        assert_eq!(out.events(), &[ProviderEvent::ReplyDone]);

        // Events voxroute does not use, and a known field of an unexpected type.
        for text in [
            r#"{"type": "rate_limits.updated", "event_id": "event_8",
                "rate_limits": [{"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60}]}"#,
            r#"{"type": "input_audio_buffer.committed", "item_id": "item_2", "previous_item_id": null}"#,
            r#"{"type": "conversation.item.input_audio_transcription.delta", "event_id": "event_5",
                "item_id": "item_2", "content_index": 0, "delta": "Hel"}"#,
            r#"{"type": "response.output_text.delta", "delta": "hi"}"#,
            r#"{"type": "conversation.item.input_audio_transcription.completed", "transcript": ""}"#,
            r#"{"type": "response.created", "delta": {"unexpected": ["object"]}, "transcript": 7}"#,
        ] {
            let out = decode_ok(&mut adapter, text);
            assert!(out.events().is_empty(), "{text}");
            assert_eq!(out.ignored(), 1, "{text}");
        }
    }

    /// Bad frames are dropped with non-fatal errors and no events; a transcription failure is
    /// non-fatal too.
    #[test]
    fn bad_input_is_a_non_fatal_error() {
        let mut adapter = ready_adapter();
        let cases: [(&str, &str); 6] = [
            (
                "{not json",
                "provider protocol violation: OpenAI event is not a JSON object",
            ),
            (
                r#"{"event_id": "event_1"}"#,
                "provider protocol violation: OpenAI event has no string type",
            ),
            (
                r#"{"type": 7}"#,
                "provider protocol violation: OpenAI event has no string type",
            ),
            (
                r#"{"type": "response.output_audio.delta", "item_id": "item_1", "delta": "@@not base64@@"}"#,
                "provider protocol violation: provider audio is not valid base64",
            ),
            (
                r#"{"type": "response.output_audio.delta", "item_id": "item_1", "delta": "AQID"}"#,
                "provider protocol violation: provider audio has an odd number of bytes, so it is not PCM16",
            ),
            (
                r#"{"type": "response.audio.delta", "item_id": "item_1"}"#,
                "provider protocol violation: OpenAI audio delta has no string delta",
            ),
        ];
        for (text, expected) in cases {
            let err = decode_err(&mut adapter, text);
            assert!(
                matches!(err, ProviderError::Protocol { fatal: false, .. }),
                "{text}: {err:?}"
            );
            assert_eq!(err.to_string(), expected);
        }

        let mut out = AdapterOutput::new();
        let err = adapter
            .decode(WsFrameRef::Binary(&[0, 1, 2, 3]), &mut out)
            .unwrap_err();
        assert!(matches!(err, ProviderError::Protocol { fatal: false, .. }));
        assert!(out.events().is_empty());

        let err = decode_err(
            &mut adapter,
            r#"{"type": "conversation.item.input_audio_transcription.failed", "event_id": "event_7",
                "item_id": "item_2", "content_index": 0,
                "error": {"type": "transcription_error", "code": "audio_unintelligible",
                          "message": "The audio could not be transcribed.", "param": null}}"#,
        );
        assert!(!err.is_fatal() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "provider error: caller transcription failed: audio_unintelligible: \
             The audio could not be transcribed."
        );

        // Unknown events are not errors: counted as ignored.
        let out = decode_ok(&mut adapter, r#"{"type": "brand.new_event", "x": 1}"#);
        assert!(out.events().is_empty() && out.ignored() == 1);
    }

    /// `error` events: recoverable ones are non-fatal; a refused key, a lost entitlement, an
    /// expired session and a refused `session.update` end the connection.
    #[test]
    fn error_events_and_their_fatality() {
        let mut adapter = ready_adapter();
        // The published example: recoverable.
        let err = decode_err(
            &mut adapter,
            r#"{"event_id": "event_890", "type": "error",
                "error": {"type": "invalid_request_error", "code": "invalid_event",
                          "message": "The 'type' field is missing.", "param": null,
                          "event_id": "event_567"}}"#,
        );
        assert!(matches!(err, ProviderError::Provider { fatal: false, .. }));
        assert_eq!(
            err.to_string(),
            "provider error: invalid_event: The 'type' field is missing."
        );

        let err = decode_err(
            &mut adapter,
            r#"{"type": "error", "error": {"type": "server_error", "code": null,
                "message": "The server had an error while processing your request."}}"#,
        );
        assert!(matches!(err, ProviderError::Provider { fatal: false, .. }));
        assert_eq!(
            err.to_string(),
            "provider error: The server had an error while processing your request."
        );

        let err = decode_err(&mut adapter, r#"{"type": "error"}"#);
        assert_eq!(err.to_string(), "provider error: unspecified error");
        assert!(!err.is_fatal());

        let err = decode_err(
            &mut adapter,
            r#"{"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_api_key",
                "message": "Incorrect API key provided: sk-abc***xyz."}}"#,
        );
        assert!(matches!(err, ProviderError::AuthRefused { status: 401 }));
        assert!(!err.to_string().contains("sk-abc"));

        for code in [
            "access_not_enabled",
            "session_expired",
            "beta_api_shape_disabled",
        ] {
            let text = format!(
                r#"{{"type": "error", "error": {{"type": "invalid_request_error",
                    "code": "{code}", "message": "No."}}}}"#
            );
            let err = decode_err(&mut adapter, &text);
            assert!(
                matches!(err, ProviderError::Provider { fatal: true, .. }),
                "{code}"
            );
            assert!(!err.is_retryable());
        }

        // Our own session.update refused: the session is not what voxroute needs.
        let err = decode_err(
            &mut adapter,
            r#"{"type": "error", "event_id": "event_2",
                "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                          "message": "Unknown parameter: 'session.type'.", "param": "session.type",
                          "event_id": "voxroute_session_update"}}"#,
        );
        assert!(matches!(err, ProviderError::Provider { fatal: true, .. }));
        assert_eq!(
            err.to_string(),
            "provider error: unknown_parameter: Unknown parameter: 'session.type'."
        );

        // Long messages are clipped, at a character boundary.
        let long = "é".repeat(400);
        let text = format!(r#"{{"type": "error", "error": {{"message": "{long}"}}}}"#);
        let ProviderError::Provider { message, .. } = decode_err(&mut adapter, &text) else {
            panic!("an error event is a provider error");
        };
        assert_eq!(message, "é".repeat(MAX_ERROR_MESSAGE_BYTES / 2));
    }

    /// The closes reported for a refused key and for the beta shape are explained; others
    /// follow the default rule.
    #[test]
    fn on_close_explains_reported_closes() {
        let mut adapter = ready_adapter();
        let mut out = AdapterOutput::new();
        let err = adapter
            .on_close(
                Some(3000),
                "invalid_request_error.invalid_api_key",
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, ProviderError::AuthRefused { status: 401 }));
        let err = adapter
            .on_close(
                Some(4000),
                "invalid_request_error.beta_api_shape_disabled",
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, ProviderError::Config { .. }));
        assert!(err.is_fatal() && !err.is_retryable());
        assert!(adapter.on_close(Some(CLOSE_NORMAL), "", &mut out).is_ok());
        assert!(adapter.on_close(None, "", &mut out).is_ok());
        let err = adapter
            .on_close(Some(1011), "overloaded", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert!(out.events().is_empty() && out.frames().is_empty());
    }

    /// The audio voxroute sends, echoed back in a server audio delta, decodes to the same
    /// samples; each append is one exact-size allocation.
    #[test]
    fn audio_round_trip() {
        let mut adapter = ready_adapter();
        let samples: Vec<i16> = (0..480).map(|i: i16| i.wrapping_mul(137)).collect();
        let sent = sent_audio_json(&mut adapter, &samples);
        let b64 = sent["audio"].as_str().unwrap();
        let echo = json!({
            "type": "response.output_audio.delta", "event_id": "event_1",
            "response_id": "resp_1", "item_id": "item_1", "output_index": 0,
            "content_index": 0, "delta": b64,
        })
        .to_string();
        let out = decode_ok(&mut adapter, &echo);
        assert_eq!(out.events(), &[ProviderEvent::Audio(samples)]);
    }

    /// Unpadded base64 and JSON-escaped slashes are accepted (other encoders emit both).
    #[test]
    fn audio_in_other_base64_spellings() {
        let mut adapter = ready_adapter();
        for delta in ["ZACc/9AHMPg", r"ZACc\/9AHMPg="] {
            let text = format!(r#"{{"type": "response.output_audio.delta", "delta": "{delta}"}}"#);
            let out = decode_ok(&mut adapter, &text);
            assert_eq!(
                out.events(),
                &[ProviderEvent::Audio(vec![100, -100, 2000, -2000])]
            );
        }
    }
}
