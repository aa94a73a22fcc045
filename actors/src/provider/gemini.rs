//! `gemini`: the adapter for the Google Gemini Live API (`BidiGenerateContent`), a
//! speech-to-speech model.
//!
//! It owns Gemini Live's wire protocol for one connection: the WebSocket URL and the
//! `x-goog-api-key` header, the `setup` message, caller audio as base64 PCM16 in
//! `realtimeInput`, and the server's `setupComplete`, `serverContent` (audio, transcriptions,
//! `interrupted`, `turnComplete`), `goAway` and `sessionResumptionUpdate` messages. It does no
//! I/O and reads no environment: the app builds a [`GeminiSettings`] (key from
//! `GEMINI_API_KEY`, base URL from `VOXROUTE_GEMINI_URL`) and hands it to
//! [`GeminiAdapter::new`].
//!
//! # The protocol as this adapter speaks it
//!
//! - **Connect**: `{base_url}` followed by [`LIVE_API_PATH`]
//!   (`/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`), with
//!   the key in the `x-goog-api-key` header (the SDK's way; the key never enters the URL,
//!   which proxies tend to log).
//! - **Setup**: `on_open` sends one `setup` message (model, `responseModalities: ["AUDIO"]`,
//!   optional voice and system instruction, input/output transcription, sliding-window
//!   context compression, and `sessionResumption`, with the handle of the session to resume
//!   if the settings carry one). [`ProviderEvent::Ready`] is emitted only when the server's
//!   `setupComplete` arrives: Gemini must not get input before it.
//! - **Audio out**: `{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":…}}}`,
//!   PCM16 at [`INPUT_SAMPLE_RATE_HZ`].
//! - **Finish**: `{"realtimeInput":{"audioStreamEnd":true}}`, then a normal close (Gemini's
//!   sessions end when the client closes the socket). Pending transcripts are flushed first.
//! - **In**: `modelTurn.parts[].inlineData` audio (PCM16 at [`OUTPUT_SAMPLE_RATE_HZ`], 24 kHz;
//!   the session resamples it, this adapter does not) becomes [`ProviderEvent::Audio`];
//!   `interrupted` (the caller barged in) becomes [`ProviderEvent::SpeechStarted`].
//! - **Transcripts**: Gemini sends transcription in pieces. The adapter joins the pieces of
//!   the current caller utterance (`inputTranscription`) and of the current model turn
//!   (`outputTranscription`) and emits the text so far as an interim
//!   [`ProviderEvent::Transcript`] (the caller's) or [`ProviderEvent::ReplyTranscript`] (the
//!   model's) after each piece, and the whole text as a final one when the piece says
//!   `finished` (input), the turn completes (`turnComplete`, both), the model is interrupted
//!   (output) or the conversation is finished. `turnComplete` also becomes
//!   [`ProviderEvent::ReplyDone`], after the final transcripts.
//! - **`goAway`**: Gemini will close the connection soon (connections live about 10 min).
//!   The adapter records the time left ([`GeminiAdapter::go_away_time_left`]) and emits
//!   [`ProviderEvent::GoAway`] with the newest resumption handle: the session then opens a
//!   new connection to Gemini that resumes the conversation (not a failover). Should Gemini
//!   close first (even with 1000, which after a `goAway` is reported as a retryable
//!   failure), the session fails over like on any provider failure.
//! - **`sessionResumptionUpdate`**: the newest resumable handle is kept
//!   ([`GeminiAdapter::resumption_handle`]); a new adapter built with that handle in
//!   [`GeminiSettings::resumption_handle`] asks Gemini to resume the session.
//! - Tool calls, usage metadata, voice-activity signals and unknown messages are ignored and
//!   counted.
//!
//! # Unverified wire facts, coded defensively
//!
//! The reference marks these as unconfirmed or does not say, so the adapter does not depend
//! on them:
//! - **Casing.** The camelCase of the `setup` fields is composed from the SDK's snake_case
//!   names. The adapter sends camelCase (what the docs show) and reads every server field
//!   under both casings (`serverContent` and `server_content`).
//! - **Audio field.** `realtimeInput.audio` is the current field (`mediaChunks[]` the older
//!   one); the adapter sends only `audio`.
//! - **Binary frames.** The reference does not say in which frame type the server sends its
//!   JSON; the adapter reads binary frames exactly like text frames (UTF-8 JSON), and a binary
//!   frame that is not JSON is a non-fatal bad frame.
//! - **Output rate.** Audio whose `mimeType` names a rate other than 24 kHz is refused as a bad
//!   frame rather than played at the wrong speed; a missing `mimeType` is taken as 24 kHz
//!   PCM16. Base64 is accepted with or without padding.
//! - **Omitted booleans.** Proto3 JSON omits `false`, so a missing `turnComplete`,
//!   `interrupted`, `finished` or `resumable` counts as `false`.
//! - **`sessionResumption: {}`** is sent even without a handle, so that Gemini sends
//!   resumption handles at all (as the SDK's session-resumption config does).
//! - **`goAway.timeLeft`** is read as a protobuf duration string (`"10s"`, `"0.5s"`) or a
//!   `{seconds, nanos}` object; anything else is recorded as zero (closing imminently).
//! - **Close codes.** Users report 1011 ("Deadline expired") and 1007 (a rejected resumption);
//!   1008 for a bad key or policy is unconfirmed. 1007 and 1008 are treated as rejections that
//!   retrying will not fix; every other code but 1000 is a retryable failure.
//!
//! Per-frame allocations: out, one `String` per audio frame (the message itself; the PCM bytes
//! go through a scratch buffer the adapter reuses); in, one `Vec<i16>` per audio part (the
//! event's payload; base64 is decoded into the same reused scratch buffer, and borrowed from
//! the frame rather than copied), and one `String` per transcript event.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::error::Category;
use serde_json::{Map, Value, json};

use super::adapter::{
    AdapterOutput, CLOSE_NORMAL, ConnectRequest, Endpoint, ProviderAdapter, ProviderError, WsFrame,
    WsFrameRef,
};
use super::wire::{AudioError, Base64Pcm16, default_on_close, url_with_path};
use super::{ProviderCommand, ProviderEvent};

/// Gemini API's WebSocket base URL; the adapter appends [`LIVE_API_PATH`].
pub const DEFAULT_URL: &str = "wss://generativelanguage.googleapis.com";

/// The path of the Live API's bidirectional streaming method (Gemini API, `v1beta`).
pub const LIVE_API_PATH: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// The upgrade-request header that carries the API key.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

/// The model asked for when the settings do not name another.
pub const DEFAULT_MODEL: &str = "models/gemini-live-2.5-flash-preview";

/// The rate of the PCM16 Gemini Live takes (its native input rate).
pub const INPUT_SAMPLE_RATE_HZ: u32 = 16_000;

/// The rate of the PCM16 Gemini Live gives back.
pub const OUTPUT_SAMPLE_RATE_HZ: u32 = 24_000;

/// The start of every audio message, up to the base64 data. The rate in the `mimeType` must
/// be [`INPUT_SAMPLE_RATE_HZ`] (checked below).
const AUDIO_MESSAGE_START: &str =
    r#"{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":""#;
/// The end of every audio message, after the base64 data.
const AUDIO_MESSAGE_END: &str = r#""}}}"#;
const _: () = assert!(INPUT_SAMPLE_RATE_HZ == 16_000, "update AUDIO_MESSAGE_START");

/// The message that tells Gemini the caller's audio has ended.
const AUDIO_STREAM_END_MESSAGE: &str = r#"{"realtimeInput":{"audioStreamEnd":true}}"#;

/// How to reach Gemini Live and how to configure the session, built by the app from its
/// configuration.
///
/// `Debug` hides the API key and the resumption handle.
#[derive(Clone, PartialEq, Eq)]
pub struct GeminiSettings {
    /// `wss://` (or `ws://`, for a stand-in) base URL without a trailing path;
    /// [`LIVE_API_PATH`] is appended. [`DEFAULT_URL`] unless `VOXROUTE_GEMINI_URL` overrides
    /// it.
    pub base_url: String,
    /// The API key, sent in the [`API_KEY_HEADER`] header; `None` sends no key (a stand-in
    /// server that needs none).
    pub api_key: Option<String>,
    /// The model, e.g. `models/gemini-live-2.5-flash-preview`; a bare name without `models/`
    /// gets that prefix.
    pub model: String,
    /// A prebuilt voice (`Puck`, `Kore`...); `None` leaves the model's default.
    pub voice_name: Option<String>,
    /// The system instruction (the agent's persona and task); `None` sends none.
    pub system_instruction: Option<String>,
    /// Whether Gemini transcribes the caller's speech (`inputAudioTranscription`).
    pub transcribe_input: bool,
    /// Whether Gemini transcribes its own speech (`outputAudioTranscription`).
    pub transcribe_output: bool,
    /// Whether to ask for sliding-window context compression, without which an audio session
    /// ends after at most 15 minutes.
    pub context_window_compression: bool,
    /// The handle of an earlier session to resume (the last
    /// [`GeminiAdapter::resumption_handle`] of its connection); `None` starts a new session.
    pub resumption_handle: Option<String>,
}

impl GeminiSettings {
    /// Settings for the Gemini API with `api_key`: [`DEFAULT_MODEL`], default voice, no system
    /// instruction, both transcriptions and context compression on, a new session.
    pub fn new(api_key: Option<String>) -> Self {
        GeminiSettings {
            base_url: DEFAULT_URL.to_owned(),
            api_key,
            model: DEFAULT_MODEL.to_owned(),
            voice_name: None,
            system_instruction: None,
            transcribe_input: true,
            transcribe_output: true,
            context_window_compression: true,
            resumption_handle: None,
        }
    }
}

impl fmt::Debug for GeminiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("model", &self.model)
            .field("voice_name", &self.voice_name)
            .field(
                "system_instruction",
                &self.system_instruction.as_ref().map(String::len),
            )
            .field("transcribe_input", &self.transcribe_input)
            .field("transcribe_output", &self.transcribe_output)
            .field(
                "context_window_compression",
                &self.context_window_compression,
            )
            .field(
                "resumption_handle",
                &self.resumption_handle.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// The Gemini Live adapter for one connection.
pub struct GeminiAdapter {
    /// What to connect to and how to configure the session; fixed for the connection.
    settings: GeminiSettings,
    /// Set when `setupComplete` arrived and `Ready` was emitted (once).
    ready: bool,
    /// Set once `Finish` was encoded: nothing more is sent.
    finished: bool,
    /// The newest handle Gemini said the session can be resumed with; starts as the handle
    /// this connection resumed (if any), replaced by each resumable `sessionResumptionUpdate`.
    resumption_handle: Option<String>,
    /// The time left announced by the last `goAway`, if one arrived.
    go_away_time_left: Option<Duration>,
    /// The caller's current utterance, joined from `inputTranscription` pieces until it is
    /// final; emptied when it is emitted as final.
    input_transcript: String,
    /// The model's current turn, joined from `outputTranscription` pieces until it is final;
    /// emptied when it is emitted as final.
    output_transcript: String,
    /// Scratch for PCM bytes: little-endian samples on their way to base64, and decoded base64
    /// on its way to samples. Reused for the whole connection.
    pcm: Base64Pcm16,
}

impl fmt::Debug for GeminiAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Transcripts are the caller's words: never in `Debug`.
        f.debug_struct("GeminiAdapter")
            .field("settings", &self.settings)
            .field("ready", &self.ready)
            .field("finished", &self.finished)
            .field("go_away_time_left", &self.go_away_time_left)
            .finish_non_exhaustive()
    }
}

impl GeminiAdapter {
    /// An adapter for one connection described by `settings`.
    pub fn new(settings: GeminiSettings) -> Self {
        let resumption_handle = settings.resumption_handle.clone();
        GeminiAdapter {
            settings,
            ready: false,
            finished: false,
            resumption_handle,
            go_away_time_left: None,
            input_transcript: String::new(),
            output_transcript: String::new(),
            pcm: Base64Pcm16::default(),
        }
    }

    /// The newest handle with which a new connection can resume this session (put it in
    /// [`GeminiSettings::resumption_handle`]), or `None` if Gemini has not sent one and this
    /// connection did not resume one.
    pub fn resumption_handle(&self) -> Option<&str> {
        self.resumption_handle.as_deref()
    }

    /// The time left before Gemini closes the connection, as announced by its last `goAway`
    /// (zero if the message did not say); `None` if no `goAway` arrived. Counted from when the
    /// message arrived: the adapter has no clock.
    pub fn go_away_time_left(&self) -> Option<Duration> {
        self.go_away_time_left
    }

    /// The `setup` message.
    fn setup_message(&self) -> String {
        let settings = &self.settings;
        let model = if settings.model.contains('/') {
            settings.model.clone()
        } else {
            format!("models/{}", settings.model)
        };
        let mut generation_config = Map::new();
        generation_config.insert("responseModalities".into(), json!(["AUDIO"]));
        if let Some(voice) = &settings.voice_name {
            generation_config.insert(
                "speechConfig".into(),
                json!({"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": voice}}}),
            );
        }
        let mut setup = Map::new();
        setup.insert("model".into(), Value::String(model));
        setup.insert("generationConfig".into(), Value::Object(generation_config));
        if let Some(instruction) = &settings.system_instruction {
            setup.insert(
                "systemInstruction".into(),
                json!({"parts": [{"text": instruction}]}),
            );
        }
        if settings.transcribe_input {
            setup.insert("inputAudioTranscription".into(), json!({}));
        }
        if settings.transcribe_output {
            setup.insert("outputAudioTranscription".into(), json!({}));
        }
        if settings.context_window_compression {
            setup.insert(
                "contextWindowCompression".into(),
                json!({"slidingWindow": {}}),
            );
        }
        let resumption = match &settings.resumption_handle {
            Some(handle) => json!({ "handle": handle }),
            None => json!({}),
        };
        setup.insert("sessionResumption".into(), resumption);
        json!({ "setup": setup }).to_string()
    }

    /// One `serverContent`; returns whether it held anything voxroute uses. The first bad
    /// audio part is kept in `error`; the rest of the message is still used.
    fn server_content(
        &mut self,
        content: ServerContent<'_>,
        out: &mut AdapterOutput,
        error: &mut Option<ProviderError>,
    ) -> bool {
        let mut used = false;
        if content.interrupted {
            // The interrupted reply's words close it, then the barge-in (the session flushes
            // the audio it queued for the caller): in this order an OpenAI-Realtime client
            // sees the words inside the response the barge-in then cancels.
            emit_final(&mut self.output_transcript, Speaker::Reply, out);
            out.emit(ProviderEvent::SpeechStarted);
            used = true;
        }
        if let Some(piece) = content.input_transcription {
            add_piece(
                &mut self.input_transcript,
                &piece.text,
                Speaker::Caller,
                out,
            );
            if piece.finished {
                emit_final(&mut self.input_transcript, Speaker::Caller, out);
            }
            used = true;
        }
        if let Some(turn) = content.model_turn {
            for part in turn.parts {
                let Some(blob) = part.inline_data else {
                    continue;
                };
                match self.decode_audio(&blob) {
                    Ok(Some(samples)) => {
                        out.emit(ProviderEvent::Audio(samples));
                        used = true;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
            }
        }
        if let Some(piece) = content.output_transcription {
            add_piece(
                &mut self.output_transcript,
                &piece.text,
                Speaker::Reply,
                out,
            );
            used = true;
        }
        if content.turn_complete {
            emit_final(&mut self.input_transcript, Speaker::Caller, out);
            emit_final(&mut self.output_transcript, Speaker::Reply, out);
            out.emit(ProviderEvent::ReplyDone);
            used = true;
        }
        used
    }

    /// One `inlineData` blob: `Ok(Some)` for audio, `Ok(None)` for something that is not audio
    /// (or empty), an error for audio that cannot be played.
    fn decode_audio(&mut self, blob: &Blob<'_>) -> Result<Option<Vec<i16>>, ProviderError> {
        let mime_type = blob.mime_type.trim().to_ascii_lowercase();
        if !mime_type.is_empty()
            && !mime_type.starts_with("audio/pcm")
            && !mime_type.starts_with("audio/l16")
        {
            return Ok(None);
        }
        if let Some(rate_hz) = mime_rate_hz(&mime_type)
            && rate_hz != OUTPUT_SAMPLE_RATE_HZ
        {
            return Err(ProviderError::bad_frame(
                "Gemini sent audio at a rate other than 24000 Hz",
            ));
        }
        // Gemini's own texts (its tests pin them), not the generic `AudioError::bad_frame`.
        let samples = self.pcm.decode(&blob.data).map_err(|err| match err {
            AudioError::NotBase64 => ProviderError::bad_frame("Gemini audio is not valid base64"),
            AudioError::OddLength => {
                ProviderError::bad_frame("Gemini audio of odd length is not PCM16")
            }
        })?;
        Ok(Some(samples).filter(|samples| !samples.is_empty()))
    }
}

/// The `rate=` parameter of a MIME type such as `audio/pcm;rate=24000`.
fn mime_rate_hz(mime_type: &str) -> Option<u32> {
    mime_type
        .split(';')
        .skip(1)
        .find_map(|param| param.trim().strip_prefix("rate="))
        .and_then(|rate| rate.trim().parse().ok())
}

/// Whose words a transcript holds: the caller's (`inputTranscription`) or the model's
/// (`outputTranscription`).
#[derive(Debug, Clone, Copy)]
enum Speaker {
    Caller,
    Reply,
}

impl Speaker {
    fn transcript(self, text: &str, is_final: bool) -> ProviderEvent {
        let text = text.to_owned();
        match self {
            Speaker::Caller => ProviderEvent::Transcript { text, is_final },
            Speaker::Reply => ProviderEvent::ReplyTranscript { text, is_final },
        }
    }
}

/// Adds one transcription piece to `buffer` and emits the text so far as interim.
fn add_piece(buffer: &mut String, piece: &str, speaker: Speaker, out: &mut AdapterOutput) {
    if piece.is_empty() {
        return;
    }
    buffer.push_str(piece);
    let text = buffer.trim();
    if !text.is_empty() {
        out.emit(speaker.transcript(text, false));
    }
}

/// Emits the text in `buffer` as final (unless it is blank) and empties it.
fn emit_final(buffer: &mut String, speaker: Speaker, out: &mut AdapterOutput) {
    let text = buffer.trim();
    if !text.is_empty() {
        out.emit(speaker.transcript(text, true));
    }
    buffer.clear();
}

/// A protobuf JSON duration: `"10s"`, `"1.5s"`, or `{"seconds": 10, "nanos": 0}`.
fn proto_duration(value: &Value) -> Option<Duration> {
    match value {
        Value::String(text) => {
            let seconds: f64 = text.trim().strip_suffix('s')?.trim().parse().ok()?;
            Duration::try_from_secs_f64(seconds).ok()
        }
        Value::Object(fields) => {
            let seconds = match fields.get("seconds") {
                Some(Value::String(text)) => text.parse().ok()?,
                Some(value) => value.as_u64()?,
                None => 0,
            };
            let nanos = match fields.get("nanos") {
                Some(value) => u32::try_from(value.as_u64()?).ok()?,
                None => 0,
            };
            Some(Duration::new(seconds, 0).checked_add(Duration::from_nanos(u64::from(nanos)))?)
        }
        _ => None,
    }
}

/// One server message: what voxroute uses, under both casings; the rest is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerMessage<'a> {
    #[serde(default, alias = "setup_complete")]
    setup_complete: Option<IgnoredAny>,
    #[serde(default, borrow, alias = "server_content")]
    server_content: Option<ServerContent<'a>>,
    #[serde(default, alias = "go_away")]
    go_away: Option<GoAway>,
    #[serde(default, alias = "session_resumption_update")]
    session_resumption_update: Option<ResumptionUpdate>,
}

/// `serverContent`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerContent<'a> {
    #[serde(default, borrow, alias = "model_turn")]
    model_turn: Option<ModelTurn<'a>>,
    #[serde(default, alias = "turn_complete")]
    turn_complete: bool,
    #[serde(default)]
    interrupted: bool,
    #[serde(default, borrow, alias = "input_transcription")]
    input_transcription: Option<Transcription<'a>>,
    #[serde(default, borrow, alias = "output_transcription")]
    output_transcription: Option<Transcription<'a>>,
}

/// `serverContent.modelTurn`.
#[derive(Deserialize)]
struct ModelTurn<'a> {
    #[serde(default, borrow)]
    parts: Vec<Part<'a>>,
}

/// One part of a model turn; text parts (no `inlineData`) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(default, borrow, alias = "inline_data")]
    inline_data: Option<Blob<'a>>,
}

/// `inlineData`: base64 bytes and their MIME type, borrowed from the frame when unescaped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    #[serde(default, borrow, alias = "mime_type")]
    mime_type: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Cow<'a, str>,
}

/// `inputTranscription` / `outputTranscription`: one piece of text.
#[derive(Deserialize)]
struct Transcription<'a> {
    #[serde(default, borrow)]
    text: Cow<'a, str>,
    #[serde(default)]
    finished: bool,
}

/// `goAway`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoAway {
    #[serde(default, alias = "time_left")]
    time_left: Option<Value>,
}

/// `sessionResumptionUpdate`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumptionUpdate {
    #[serde(default, alias = "new_handle")]
    new_handle: Option<String>,
    #[serde(default)]
    resumable: bool,
}

impl ProviderAdapter for GeminiAdapter {
    fn endpoint(&self) -> Endpoint {
        let mut request =
            ConnectRequest::new(url_with_path(&self.settings.base_url, LIVE_API_PATH));
        if let Some(key) = &self.settings.api_key {
            request = request.header(API_KEY_HEADER, key.clone());
        }
        Endpoint::WebSocket(request)
    }

    /// Sends `setup`; `Ready` waits for `setupComplete`.
    fn on_open(&mut self, out: &mut AdapterOutput) {
        out.send(WsFrame::Text(self.setup_message()));
    }

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        if self.finished {
            return;
        }
        match command {
            ProviderCommand::Audio(samples) => {
                self.pcm
                    .send_text(AUDIO_MESSAGE_START, &samples, AUDIO_MESSAGE_END, out);
            }
            // Gemini Live has no place for a key press.
            ProviderCommand::Dtmf { .. } | ProviderCommand::Flush => {}
            ProviderCommand::Finish => {
                self.finished = true;
                emit_final(&mut self.input_transcript, Speaker::Caller, out);
                emit_final(&mut self.output_transcript, Speaker::Reply, out);
                out.send(WsFrame::Text(AUDIO_STREAM_END_MESSAGE.to_owned()));
                out.close(CLOSE_NORMAL, "");
            }
        }
    }

    fn decode(
        &mut self,
        frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let parsed: Result<ServerMessage<'_>, _> = match frame {
            WsFrameRef::Text(text) => serde_json::from_str(text),
            WsFrameRef::Binary(bytes) => serde_json::from_slice(bytes),
        };
        let message = parsed.map_err(|err| match (err.classify(), frame) {
            (Category::Data, _) => {
                ProviderError::bad_frame("Gemini message has an unexpected shape")
            }
            (_, WsFrameRef::Binary(_)) => {
                ProviderError::bad_frame("Gemini sent a binary frame that is not JSON")
            }
            (_, WsFrameRef::Text(_)) => ProviderError::bad_frame("Gemini sent malformed JSON"),
        })?;

        let mut used = false;
        let mut error = None;
        if message.setup_complete.is_some() {
            if !self.ready {
                self.ready = true;
                out.emit(ProviderEvent::Ready);
            }
            used = true;
        }
        if let Some(content) = message.server_content {
            used |= self.server_content(content, out, &mut error);
        }
        let mut go_away = false;
        if let Some(go_away_message) = message.go_away {
            let time_left = go_away_message
                .time_left
                .as_ref()
                .and_then(proto_duration)
                .unwrap_or(Duration::ZERO);
            self.go_away_time_left = Some(time_left);
            go_away = true;
            used = true;
        }
        if let Some(update) = message.session_resumption_update {
            if update.resumable
                && let Some(handle) = update.new_handle.filter(|handle| !handle.is_empty())
            {
                self.resumption_handle = Some(handle);
            }
            used = true;
        }
        if go_away {
            // After any handle update in the same message, so the newest one is used.
            out.emit(ProviderEvent::GoAway {
                resumption_handle: self.resumption_handle.clone(),
            });
        }
        if !used && error.is_none() {
            out.ignore();
        }
        error.map_or(Ok(()), Err)
    }

    /// 1007 (users report it for a rejected resumption) and 1008 (policy) are rejections that
    /// retrying will not fix; 1000 and a status-less close end the conversation, except after
    /// a `goAway`, when they mean the connection's lifetime ran out in the middle of the call
    /// (a retryable failure, so the session fails over); any other code is a retryable
    /// failure.
    fn on_close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        _out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let reason = reason.trim();
        match code {
            None | Some(CLOSE_NORMAL) if self.go_away_time_left.is_some() => {
                Err(ProviderError::Closed {
                    code,
                    reason: if reason.is_empty() {
                        "after goAway".to_owned()
                    } else {
                        format!("{reason}, after goAway")
                    },
                    source: None,
                })
            }
            Some(1007) => Err(ProviderError::Provider {
                message: if self.settings.resumption_handle.is_some() {
                    format!(
                        "Gemini rejected the session (close 1007: {reason}); the resumption \
                         handle may have expired"
                    )
                } else {
                    format!("Gemini rejected the session (close 1007: {reason})")
                },
                fatal: true,
            }),
            Some(1008) => Err(ProviderError::Provider {
                message: format!("Gemini refused the session (close 1008: {reason})"),
                fatal: true,
            }),
            _ => default_on_close(code, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose;

    use super::super::wire::testing::{
        GOLDEN_B64, GOLDEN_SAMPLES, assert_bad_frame, b64_pcm, close_code, decode_frame_ok,
        events_and_ignored, text_json,
    };
    use super::*;

    fn settings() -> GeminiSettings {
        GeminiSettings {
            base_url: "wss://gemini.example.test/".to_owned(),
            voice_name: Some("Puck".to_owned()),
            system_instruction: Some("You are a phone agent.".to_owned()),
            ..GeminiSettings::new(Some("gm-SECRET".to_owned()))
        }
    }

    fn adapter() -> GeminiAdapter {
        GeminiAdapter::new(settings())
    }

    /// Decodes one frame that must be accepted; returns the events and ignore count.
    fn decode_ok(adapter: &mut GeminiAdapter, frame: WsFrameRef<'_>) -> (Vec<ProviderEvent>, u64) {
        let out = decode_frame_ok(adapter, frame);
        assert!(out.frames().is_empty(), "Gemini needs no replies");
        events_and_ignored(&out)
    }

    fn decode_text(adapter: &mut GeminiAdapter, text: &str) -> (Vec<ProviderEvent>, u64) {
        decode_ok(adapter, WsFrameRef::Text(text))
    }

    fn transcript(text: &str, is_final: bool) -> ProviderEvent {
        ProviderEvent::Transcript {
            text: text.into(),
            is_final,
        }
    }

    fn reply(text: &str, is_final: bool) -> ProviderEvent {
        ProviderEvent::ReplyTranscript {
            text: text.into(),
            is_final,
        }
    }

    /// The Live API URL with no query string; the key only in `x-goog-api-key`, hidden by
    /// both `Debug`s; no key, no header.
    #[test]
    fn endpoint_url_headers_and_hidden_key() {
        let Endpoint::WebSocket(request) = adapter().endpoint() else {
            panic!("Gemini is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://gemini.example.test/ws/google.ai.generativelanguage.v1beta.GenerativeService\
             .BidiGenerateContent"
        );
        assert_eq!(
            request.headers,
            vec![("x-goog-api-key".to_owned(), "gm-SECRET".to_owned())]
        );
        let resumed = GeminiSettings {
            resumption_handle: Some("h_SECRET".to_owned()),
            ..settings()
        };
        let shown = format!(
            "{request:?} {resumed:?} {:?}",
            GeminiAdapter::new(resumed.clone())
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("x-goog-api-key"), "{shown}");

        let Endpoint::WebSocket(request) = GeminiAdapter::new(GeminiSettings::new(None)).endpoint()
        else {
            panic!("Gemini is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta\
             .GenerativeService.BidiGenerateContent"
        );
        assert!(request.headers.is_empty());
    }

    /// A short conversation on the wire: `setup` on open (no `Ready` until `setupComplete`),
    /// audio as `realtimeInput.audio`, nothing for DTMF or empty audio, then `audioStreamEnd`
    /// and a normal close, and silence after that.
    #[test]
    fn outbound_conversation() {
        let mut adapter = adapter();
        let mut out = AdapterOutput::new();
        assert_eq!(adapter.keepalive_interval(), None);
        adapter.on_open(&mut out);
        assert!(out.events().is_empty(), "Ready waits for setupComplete");
        assert_eq!(out.frames().len(), 1);
        assert_eq!(
            text_json(&out.frames()[0]),
            json!({"setup": {
                "model": "models/gemini-live-2.5-flash-preview",
                "generationConfig": {
                    "responseModalities": ["AUDIO"],
                    "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}}
                },
                "systemInstruction": {"parts": [{"text": "You are a phone agent."}]},
                "inputAudioTranscription": {},
                "outputAudioTranscription": {},
                "contextWindowCompression": {"slidingWindow": {}},
                "sessionResumption": {}
            }})
        );
        out.clear();

        assert_eq!(
            decode_text(&mut adapter, r#"{"setupComplete": {}}"#),
            (vec![ProviderEvent::Ready], 0)
        );
        // A repeated setupComplete does not repeat Ready.
        assert_eq!(
            decode_text(&mut adapter, r#"{"setupComplete": {"sessionId": "s1"}}"#),
            (vec![], 0)
        );

        adapter.encode(ProviderCommand::Audio(GOLDEN_SAMPLES.to_vec()), &mut out);
        adapter.encode(ProviderCommand::Audio(vec![7]), &mut out);
        adapter.encode(ProviderCommand::Audio(Vec::new()), &mut out);
        adapter.encode(ProviderCommand::Dtmf { digit: '#' }, &mut out);
        adapter.encode(ProviderCommand::Finish, &mut out);
        let frames: Vec<Value> = out.frames().iter().map(text_json).collect();
        assert_eq!(
            frames,
            vec![
                json!({"realtimeInput": {"audio": {
                    "mimeType": "audio/pcm;rate=16000", "data": GOLDEN_B64}}}),
                json!({"realtimeInput": {"audio": {
                    "mimeType": "audio/pcm;rate=16000", "data": "BwA="}}}),
                json!({"realtimeInput": {"audioStreamEnd": true}}),
            ]
        );
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));
        out.clear();
        adapter.encode(ProviderCommand::Audio(vec![1, 2]), &mut out);
        assert!(out.frames().is_empty(), "nothing after Finish");
    }

    /// Model audio (24 kHz PCM16, several parts, text parts skipped), `interrupted` as
    /// barge-in, and a turn's transcripts: interim pieces joined, final on `finished`,
    /// `turnComplete` or interruption.
    #[test]
    fn decodes_audio_interruption_and_transcripts() {
        let mut adapter = adapter();
        let audio = format!(
            r#"{{"serverContent": {{"modelTurn": {{"parts": [
                {{"inlineData": {{"mimeType": "audio/pcm;rate=24000", "data": "{}"}}}},
                {{"text": "thinking"}},
                {{"inlineData": {{"mimeType": "audio/pcm;rate=24000", "data": "{}"}}}}]}}}}}}"#,
            b64_pcm(&[0, 1, -1, i16::MAX, i16::MIN]),
            b64_pcm(&[42]),
        );
        assert_eq!(
            decode_text(&mut adapter, &audio),
            (
                vec![
                    ProviderEvent::Audio(vec![0, 1, -1, i16::MAX, i16::MIN]),
                    ProviderEvent::Audio(vec![42]),
                ],
                0
            )
        );

        let script = [
            (
                r#"{"serverContent": {"inputTranscription": {"text": "book a"}}}"#,
                vec![transcript("book a", false)],
            ),
            (
                r#"{"serverContent": {"inputTranscription": {"text": " table", "finished": true}}}"#,
                vec![
                    transcript("book a table", false),
                    transcript("book a table", true),
                ],
            ),
            (
                r#"{"serverContent": {"outputTranscription": {"text": "Sure,"}}}"#,
                vec![reply("Sure,", false)],
            ),
            (
                r#"{"serverContent": {"outputTranscription": {"text": " one moment"}}}"#,
                vec![reply("Sure, one moment", false)],
            ),
            (
                r#"{"serverContent": {"turnComplete": true}}"#,
                vec![reply("Sure, one moment", true), ProviderEvent::ReplyDone],
            ),
            (
                r#"{"serverContent": {"outputTranscription": {"text": "Your table is"}}}"#,
                vec![reply("Your table is", false)],
            ),
            (
                r#"{"serverContent": {"interrupted": true}}"#,
                vec![reply("Your table is", true), ProviderEvent::SpeechStarted],
            ),
            // snake_case, as the SDK's own types spell it.
            (
                r#"{"server_content": {"input_transcription": {"text": "wait"}, "turn_complete": true}}"#,
                vec![
                    transcript("wait", false),
                    transcript("wait", true),
                    ProviderEvent::ReplyDone,
                ],
            ),
        ];
        for (text, events) in script {
            assert_eq!(decode_text(&mut adapter, text), (events, 0), "{text}");
        }
    }

    /// The server may send its JSON in binary frames: they decode exactly like text.
    #[test]
    fn binary_frames_hold_json() {
        let mut adapter = adapter();
        assert_eq!(
            decode_ok(
                &mut adapter,
                WsFrameRef::Binary(br#"{"setupComplete": {}}"#)
            ),
            (vec![ProviderEvent::Ready], 0)
        );
        let audio = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{}"}}}}]}},"turnComplete":true}}}}"#,
            b64_pcm(&[-2, 3]),
        );
        assert_eq!(
            decode_ok(&mut adapter, WsFrameRef::Binary(audio.as_bytes())),
            (
                vec![ProviderEvent::Audio(vec![-2, 3]), ProviderEvent::ReplyDone],
                0
            )
        );
    }

    /// `goAway` becomes [`ProviderEvent::GoAway`] with the newest resumption handle (none
    /// before Gemini gave one) and its time left is recorded; messages voxroute does not use
    /// are ignored and counted.
    #[test]
    fn go_away_and_ignored_messages() {
        let mut adapter = adapter();
        assert_eq!(adapter.go_away_time_left(), None);
        assert_eq!(
            decode_text(&mut adapter, r#"{"goAway": {"timeLeft": "10s"}}"#),
            (
                vec![ProviderEvent::GoAway {
                    resumption_handle: None
                }],
                0
            )
        );
        decode_text(
            &mut adapter,
            r#"{"sessionResumptionUpdate": {"newHandle": "h-7", "resumable": true}}"#,
        );
        assert_eq!(
            decode_text(&mut adapter, r#"{"goAway": {"timeLeft": "10s"}}"#),
            (
                vec![ProviderEvent::GoAway {
                    resumption_handle: Some("h-7".into())
                }],
                0
            )
        );
        assert_eq!(adapter.go_away_time_left(), Some(Duration::from_secs(10)));
        decode_text(&mut adapter, r#"{"goAway": {"timeLeft": "0.5s"}}"#);
        assert_eq!(
            adapter.go_away_time_left(),
            Some(Duration::from_millis(500))
        );
        decode_text(
            &mut adapter,
            r#"{"goAway": {"timeLeft": {"seconds": 3, "nanos": 0}}}"#,
        );
        assert_eq!(adapter.go_away_time_left(), Some(Duration::from_secs(3)));
        decode_text(&mut adapter, r#"{"goAway": {}}"#);
        assert_eq!(adapter.go_away_time_left(), Some(Duration::ZERO));

        for ignored in [
            r#"{"toolCall": {"functionCalls": [{"id": "fc_1", "name": "lookup", "args": {"q": "x"}}]}}"#,
            r#"{"usageMetadata": {"promptTokenCount": 12}}"#,
            r#"{"serverContent": {"generationComplete": true}}"#,
            r#"{"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}}"#,
            r#"{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}}}"#,
            r#"{"somethingNew": 1}"#,
            "{}",
        ] {
            assert_eq!(decode_text(&mut adapter, ignored), (vec![], 1), "{ignored}");
        }
    }

    /// Bad input is a non-fatal, non-retryable protocol error with a precise description; a
    /// bad audio part does not hide the rest of its message.
    #[test]
    fn bad_frames_are_non_fatal_errors() {
        let mut adapter = adapter();
        let odd = general_purpose::STANDARD.encode([1u8, 2, 3]);
        let odd_audio = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{odd}"}}}}]}}}}}}"#
        );
        let cases: [(WsFrameRef<'_>, &str); 7] = [
            (WsFrameRef::Text("{not json"), "Gemini sent malformed JSON"),
            (
                WsFrameRef::Binary(&[0xff, 0x00, 0x12]),
                "Gemini sent a binary frame that is not JSON",
            ),
            (
                WsFrameRef::Text("[1,2,3]"),
                "Gemini message has an unexpected shape",
            ),
            (
                WsFrameRef::Text(r#"{"serverContent":{"modelTurn":{"parts":{"x":1}}}}"#),
                "Gemini message has an unexpected shape",
            ),
            (
                WsFrameRef::Text(
                    r#"{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=24000","data":"!!not base64!!"}}]}}}"#,
                ),
                "Gemini audio is not valid base64",
            ),
            (
                WsFrameRef::Text(&odd_audio),
                "Gemini audio of odd length is not PCM16",
            ),
            (
                WsFrameRef::Text(
                    r#"{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=16000","data":"AAA="}}]}}}"#,
                ),
                "Gemini sent audio at a rate other than 24000 Hz",
            ),
        ];
        for (frame, detail) in cases {
            assert_bad_frame(&mut adapter, frame, detail);
        }

        let mixed = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[
                {{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"!!"}}}},
                {{"inlineData":{{"data":"{}"}}}}]}},
                "outputTranscription":{{"text":"Hi"}}}}}}"#,
            b64_pcm(&[5, 6]),
        );
        let mut out = AdapterOutput::new();
        let err = adapter
            .decode(WsFrameRef::Text(&mixed), &mut out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider protocol violation: Gemini audio is not valid base64"
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::Audio(vec![5, 6]), reply("Hi", false)]
        );
    }

    /// The handle from the newest resumable update is kept (a non-resumable one does not
    /// replace it) and a new connection built with it resumes the session in its `setup`.
    #[test]
    fn resumption_handle_round_trip() {
        let mut first = adapter();
        assert_eq!(first.resumption_handle(), None);
        decode_text(
            &mut first,
            r#"{"sessionResumptionUpdate": {"newHandle": "h_abc", "resumable": true}}"#,
        );
        assert_eq!(first.resumption_handle(), Some("h_abc"));
        assert_eq!(
            decode_text(
                &mut first,
                r#"{"sessionResumptionUpdate": {"newHandle": "", "resumable": false}}"#
            ),
            (vec![], 0)
        );
        decode_text(
            &mut first,
            r#"{"sessionResumptionUpdate": {"newHandle": "h_x"}}"#,
        );
        assert_eq!(first.resumption_handle(), Some("h_abc"));
        decode_text(
            &mut first,
            r#"{"session_resumption_update": {"new_handle": "h_def", "resumable": true}}"#,
        );
        assert_eq!(first.resumption_handle(), Some("h_def"));

        let mut second = GeminiAdapter::new(GeminiSettings {
            resumption_handle: first.resumption_handle().map(str::to_owned),
            voice_name: None,
            system_instruction: None,
            transcribe_input: false,
            transcribe_output: false,
            context_window_compression: false,
            model: "gemini-live-2.5-flash-preview".to_owned(),
            ..settings()
        });
        assert_eq!(second.resumption_handle(), Some("h_def"));
        let mut out = AdapterOutput::new();
        second.on_open(&mut out);
        assert_eq!(
            out.frames().iter().map(text_json).collect::<Vec<_>>(),
            vec![json!({"setup": {
                "model": "models/gemini-live-2.5-flash-preview",
                "generationConfig": {"responseModalities": ["AUDIO"]},
                "sessionResumption": {"handle": "h_def"}
            }})]
        );
    }

    /// Close codes: normal ends the conversation; 1007 and 1008 are not retryable (1007 hints
    /// at a stale handle on a resumed connection); others are retryable failures.
    #[test]
    fn close_codes() {
        let mut out = AdapterOutput::new();
        let mut fresh = adapter();
        assert!(fresh.on_close(Some(1000), "", &mut out).is_ok());
        assert!(fresh.on_close(None, "", &mut out).is_ok());
        let err = fresh
            .on_close(Some(1008), "API key not valid.", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "provider error: Gemini refused the session (close 1008: API key not valid.)"
        );
        let err = fresh
            .on_close(
                Some(1007),
                "Request contains an invalid argument.",
                &mut out,
            )
            .unwrap_err();
        assert!(err.is_fatal() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "provider error: Gemini rejected the session (close 1007: Request contains an \
             invalid argument.)"
        );
        let mut resumed = GeminiAdapter::new(GeminiSettings {
            resumption_handle: Some("h_old".to_owned()),
            ..settings()
        });
        let err = resumed
            .on_close(Some(1007), "invalid handle", &mut out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider error: Gemini rejected the session (close 1007: invalid handle); the \
             resumption handle may have expired"
        );
        let err = fresh
            .on_close(
                Some(1011),
                "Deadline expired before operation could complete.",
                &mut out,
            )
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1011: Deadline expired before operation \
             could complete.)"
        );
        assert!(out.events().is_empty() && out.frames().is_empty());

        // After goAway even a normal close is the connection's end, not the conversation's.
        decode_text(&mut fresh, r#"{"goAway": {"timeLeft": "1s"}}"#);
        let err = fresh.on_close(Some(1000), "", &mut out).unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1000: after goAway)"
        );
    }
}
