//! OpenAI Realtime (GA event shapes) over WebSocket: `GET /v1/realtime?model=…`.
//!
//! # Upgrade
//! - Key: `Authorization: Bearer <key>`, or the browser form, subprotocols
//!   `realtime, openai-insecure-api-key.<key>` (answered with `realtime`). Missing → 401.
//! - `model` (or `call_id`) is required → 400 `missing_required_parameter` without it.
//! - A beta client (`OpenAI-Beta: realtime=v1`) is upgraded, then gets an `error` event and a
//!   close 4000 `invalid_request_error.beta_api_shape_disabled`, as a 2026 report says the
//!   real service now does (◐ in the reference); the stand-in speaks GA shapes only.
//!
//! # Conversation
//! - On open: `session.created` (full session object; input and output `audio/pcm` 24 kHz,
//!   `server_vad` turn detection). `session.update` changes only the fields present
//!   (`instructions`, `output_modalities`, `audio.input.format`, `audio.input.turn_detection`,
//!   `audio.input.transcription`, `audio.output.format`, `audio.output.voice`) and is answered
//!   by `session.updated`. Formats: `{"type":"audio/pcm","rate":24000}` (the only rate),
//!   `audio/pcmu`, `audio/pcma` (8 kHz).
//! - **Echo**: each `input_audio_buffer.append` comes back at once as one
//!   `response.output_audio.delta` with the same audio, converted to the output format (the
//!   same bytes when the formats match). Deltas belong to a response: the first audio after
//!   none is active opens one with `response.created`.
//! - **Turns** (while turn detection is on): a loud sample after silence (see
//!   [`audio`](super::audio)) gives `input_audio_buffer.speech_started {audio_start_ms,
//!   item_id}` before that append's delta; 500 ms of silence after speech gives
//!   `input_audio_buffer.speech_stopped {audio_end_ms}`, `input_audio_buffer.committed`,
//!   `response.output_audio.done` and `response.done` (status `completed`).
//! - **Transcripts**: each whole second of input audio gives
//!   `conversation.item.input_audio_transcription.completed` with transcript
//!   `"audio S.S-E.Es"` and `usage {type: duration, seconds: 1.0}` (always, whether or not
//!   the session asked for transcription).
//! - `input_audio_buffer.commit` (error `input_audio_buffer_commit_empty` under 100 ms; else
//!   `committed`, then the transcript of the audio since the last whole second),
//!   `input_audio_buffer.clear` (→ `cleared`), `response.cancel` (→ `response.done` status
//!   `cancelled`, or error `response_cancel_not_active`), `response.create` (→ an empty
//!   `response.created` + `response.done`, or error `conversation_already_has_active_response`),
//!   `conversation.item.truncate` (→ `truncated`), `conversation.item.create` (→ `added`),
//!   `conversation.item.delete` (→ `deleted`); `conversation.item.retrieve` and
//!   `output_audio_buffer.clear` are accepted silently.
//! - **Bad input** never closes the socket: malformed JSON, a missing or unknown `type`,
//!   bad base64 or an unsupported format give an `error` event (`invalid_request_error`,
//!   with the client's `event_id` echoed), as the real service does for most errors.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::audio::{
    Encoding, LinearResampler, SpeechDetector, SpeechEvent, TranscriptClock, WireFormat,
    ms_of_samples,
};
use super::{Opened, Outbox, Rejection, Session, SessionCounters, Upgrade, b64_decode, b64_encode};

/// The upgrade path.
pub const PATH: &str = "/v1/realtime";

/// The only PCM rate of the GA API, in Hz.
pub const PCM_RATE_HZ: u32 = 24_000;

/// Close code for a beta-shaped client (◐).
pub const BETA_CLOSE_CODE: u16 = 4000;

/// Least audio `input_audio_buffer.commit` accepts, in milliseconds.
pub const MIN_COMMIT_MS: u64 = 100;

const BROWSER_KEY_PREFIX: &str = "openai-insecure-api-key.";

pub(crate) fn authorized(upgrade: &Upgrade<'_>) -> bool {
    upgrade.authorization("Bearer").is_some()
        || upgrade.subprotocols().iter().any(|protocol| {
            protocol
                .strip_prefix(BROWSER_KEY_PREFIX)
                .is_some_and(|key| !key.is_empty())
        })
}

pub(crate) fn reject(status: StatusCode, message: &str) -> Rejection {
    let code = match status {
        StatusCode::UNAUTHORIZED => "invalid_api_key",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        _ => "invalid_request_error",
    };
    let kind = match status {
        StatusCode::TOO_MANY_REQUESTS => "requests",
        _ => "invalid_request_error",
    };
    Rejection {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            .to_string(),
        headers: Vec::new(),
    }
}

pub(crate) fn open(upgrade: &Upgrade<'_>) -> Result<Opened, Rejection> {
    let model = upgrade.query("model").filter(|model| !model.is_empty());
    let call_id = upgrade.query("call_id").filter(|id| !id.is_empty());
    if model.is_none() && call_id.is_none() {
        let mut rejection = reject(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'.",
        );
        rejection.body = json!({"error": {"message": "Missing required parameter: 'model'.",
            "type": "invalid_request_error", "param": "model", "code": "missing_required_parameter"}})
        .to_string();
        return Err(rejection);
    }
    let mut headers = Vec::new();
    if upgrade.subprotocols().contains(&"realtime") {
        headers.push(("sec-websocket-protocol", "realtime".to_owned()));
    }
    let beta = upgrade
        .header("openai-beta")
        .is_some_and(|value| value.contains("realtime"));
    let session = OpenAiSession::new(model.unwrap_or("gpt-realtime"), beta);
    Ok(Opened {
        session: Box::new(session),
        headers,
    })
}

/// Connection counter for ids that differ between connections of one process.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The response being streamed.
#[derive(Debug, Clone)]
struct ActiveResponse {
    id: String,
    item_id: String,
    /// Whether a `response.output_audio.delta` was sent (then `.done` closes the audio).
    has_audio: bool,
}

/// One Realtime connection.
pub(crate) struct OpenAiSession {
    session_id: String,
    model: String,
    beta: bool,
    next_event: u64,
    next_id: u64,
    instructions: String,
    output_modalities: Value,
    voice: String,
    turn_detection: Value,
    transcription: Value,
    input: WireFormat,
    output: WireFormat,
    carry: Option<u8>,
    resampler: LinearResampler,
    vad: SpeechDetector,
    clock: TranscriptClock,
    /// Audio counted under earlier input formats, in milliseconds.
    audio_ms_before: u64,
    /// Samples in the input buffer since the last commit or clear.
    buffered_samples: u64,
    /// The user item the input buffer will become.
    input_item: String,
    previous_item: Option<String>,
    response: Option<ActiveResponse>,
}

impl OpenAiSession {
    pub(crate) fn new(model: &str, beta: bool) -> Self {
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pcm = WireFormat::pcm16(PCM_RATE_HZ);
        OpenAiSession {
            session_id: format!("sess_standin{n}"),
            model: model.to_owned(),
            beta,
            next_event: 1,
            next_id: 1,
            instructions: String::new(),
            output_modalities: json!(["audio"]),
            voice: "alloy".into(),
            turn_detection: json!({"type": "server_vad", "threshold": 0.5,
                "prefix_padding_ms": 300, "silence_duration_ms": 500,
                "create_response": true, "interrupt_response": true, "idle_timeout_ms": null}),
            transcription: Value::Null,
            input: pcm,
            output: pcm,
            carry: None,
            resampler: LinearResampler::new(PCM_RATE_HZ, PCM_RATE_HZ),
            vad: SpeechDetector::new(PCM_RATE_HZ),
            clock: TranscriptClock::new(PCM_RATE_HZ, false),
            audio_ms_before: 0,
            buffered_samples: 0,
            input_item: "item_in1".into(),
            previous_item: None,
            response: None,
        }
    }

    fn event_id(&mut self) -> String {
        let id = format!("event_{}", self.next_event);
        self.next_event += 1;
        id
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// Sends `event` with a fresh `event_id` added.
    fn send(&mut self, out: &mut Outbox, mut event: Value) {
        if let Some(object) = event.as_object_mut() {
            object.insert("event_id".into(), Value::String(self.event_id()));
        }
        out.json(event);
    }

    fn error(
        &mut self,
        out: &mut Outbox,
        code: &str,
        message: &str,
        param: Option<&str>,
        client_event: Option<&str>,
    ) {
        let event = json!({"type": "error", "error": {"type": "invalid_request_error",
            "code": code, "message": message, "param": param, "event_id": client_event}});
        self.send(out, event);
    }

    fn session_object(&self) -> Value {
        json!({
            "type": "realtime", "object": "realtime.session", "id": self.session_id,
            "model": self.model, "output_modalities": self.output_modalities,
            "instructions": self.instructions, "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": null, "prompt": null, "expires_at": 0,
            "include": null,
            "audio": {
                "input": {"format": format_json(self.input), "transcription": self.transcription,
                          "noise_reduction": null, "turn_detection": self.turn_detection},
                "output": {"format": format_json(self.output), "voice": self.voice, "speed": 1.0},
            },
        })
    }

    fn session_update(&mut self, event: &Value, client_event: Option<&str>, out: &mut Outbox) {
        let Some(session) = event.get("session").filter(|s| s.is_object()) else {
            self.error(
                out,
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                Some("session"),
                client_event,
            );
            return;
        };
        // Validate everything before changing anything: a failed update changes nothing.
        let input_format = match session.pointer("/audio/input/format").map(parse_format) {
            Some(Err(message)) => {
                self.error(
                    out,
                    "invalid_value",
                    &message,
                    Some("session.audio.input.format"),
                    client_event,
                );
                return;
            }
            Some(Ok(format)) => Some(format),
            None => None,
        };
        let output_format = match session.pointer("/audio/output/format").map(parse_format) {
            Some(Err(message)) => {
                self.error(
                    out,
                    "invalid_value",
                    &message,
                    Some("session.audio.output.format"),
                    client_event,
                );
                return;
            }
            Some(Ok(format)) => Some(format),
            None => None,
        };
        if let Some(text) = session.get("instructions").and_then(Value::as_str) {
            self.instructions = text.to_owned();
        }
        if let Some(modalities) = session.get("output_modalities").filter(|m| m.is_array()) {
            self.output_modalities = modalities.clone();
        }
        if let Some(voice) = session
            .pointer("/audio/output/voice")
            .and_then(Value::as_str)
        {
            self.voice = voice.to_owned();
        }
        if let Some(turn_detection) = session.pointer("/audio/input/turn_detection") {
            self.turn_detection = turn_detection.clone();
        }
        if let Some(transcription) = session.pointer("/audio/input/transcription") {
            self.transcription = transcription.clone();
        }
        if let Some(format) = output_format {
            self.output = format;
        }
        if let Some(format) = input_format
            && format != self.input
        {
            self.audio_ms_before += self.clock.audio_ms();
            self.input = format;
            self.carry = None;
            self.vad = SpeechDetector::new(format.sample_rate_hz);
            self.clock = TranscriptClock::new(format.sample_rate_hz, false);
            self.buffered_samples = 0;
        }
        self.resampler =
            LinearResampler::new(self.input.sample_rate_hz, self.output.sample_rate_hz);
        let session = self.session_object();
        self.send(out, json!({"type": "session.updated", "session": session}));
    }

    fn append(&mut self, event: &Value, client_event: Option<&str>, out: &mut Outbox) {
        let Some(audio) = event.get("audio").and_then(Value::as_str) else {
            self.error(
                out,
                "missing_required_parameter",
                "Missing required parameter: 'audio'.",
                Some("audio"),
                client_event,
            );
            return;
        };
        let Some(bytes) = b64_decode(audio) else {
            self.error(
                out,
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                Some("audio"),
                client_event,
            );
            return;
        };
        let mut samples = Vec::with_capacity(bytes.len());
        self.input
            .decode_into(&bytes, &mut self.carry, &mut samples);
        if samples.is_empty() {
            return;
        }
        self.buffered_samples += samples.len() as u64;
        let vad_on = !self.turn_detection.is_null();
        let speech = if vad_on {
            self.vad.push(&samples)
        } else {
            Vec::new()
        };
        for event in &speech {
            if let SpeechEvent::Started { at_ms } = *event {
                let item_id = self.input_item.clone();
                self.send(
                    out,
                    json!({"type": "input_audio_buffer.speech_started",
                    "audio_start_ms": at_ms, "item_id": item_id}),
                );
            }
        }
        let echoed = self.resampler.process(&samples);
        if !echoed.is_empty() {
            let response = self.ensure_response(out);
            if let Some(active) = &mut self.response {
                active.has_audio = true;
            }
            let delta = b64_encode(&self.output.encode(&echoed));
            self.send(
                out,
                json!({"type": "response.output_audio.delta",
                "response_id": response.id, "item_id": response.item_id,
                "output_index": 0, "content_index": 0, "delta": delta}),
            );
        }
        for transcript in self.clock.advance(samples.len() as u64) {
            let item_id = self.input_item.clone();
            self.send(
                out,
                json!({"type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id, "content_index": 0, "transcript": transcript.text,
                "usage": {"type": "duration", "seconds": transcript.duration_secs()}}),
            );
        }
        for event in speech {
            if let SpeechEvent::Stopped { at_ms } = event {
                let item_id = self.input_item.clone();
                self.send(
                    out,
                    json!({"type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": at_ms, "item_id": item_id}),
                );
                self.commit_buffer(out);
                self.finish_response(out, "completed");
            }
        }
    }

    fn ensure_response(&mut self, out: &mut Outbox) -> ActiveResponse {
        if let Some(response) = &self.response {
            return response.clone();
        }
        let response = ActiveResponse {
            id: self.new_id("resp_"),
            item_id: self.new_id("item_out"),
            has_audio: false,
        };
        self.send(
            out,
            json!({"type": "response.created", "response": {
            "id": response.id, "object": "realtime.response", "status": "in_progress",
            "output": [], "usage": null}}),
        );
        self.response = Some(response.clone());
        response
    }

    fn finish_response(&mut self, out: &mut Outbox, status: &str) {
        let Some(response) = self.response.take() else {
            return;
        };
        if response.has_audio {
            self.send(
                out,
                json!({"type": "response.output_audio.done",
                "response_id": response.id, "item_id": response.item_id,
                "output_index": 0, "content_index": 0}),
            );
        }
        self.send(
            out,
            json!({"type": "response.done", "response": {
            "id": response.id, "object": "realtime.response", "status": status,
            "output": [], "usage": null}}),
        );
    }

    fn commit_buffer(&mut self, out: &mut Outbox) {
        let item_id = self.input_item.clone();
        let previous = self.previous_item.clone();
        self.send(
            out,
            json!({"type": "input_audio_buffer.committed",
            "item_id": item_id, "previous_item_id": previous}),
        );
        self.previous_item = Some(item_id);
        self.input_item = self.new_id("item_in");
        self.buffered_samples = 0;
    }

    fn handle(&mut self, event: &Value, out: &mut Outbox) {
        let client_event = event
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let client_event = client_event.as_deref();
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            self.error(
                out,
                "invalid_event",
                "The 'type' field is missing.",
                Some("type"),
                client_event,
            );
            return;
        };
        match kind {
            "session.update" => self.session_update(event, client_event, out),
            "input_audio_buffer.append" => self.append(event, client_event, out),
            "input_audio_buffer.commit" => {
                let buffered_ms = ms_of_samples(self.buffered_samples, self.input.sample_rate_hz);
                if buffered_ms < MIN_COMMIT_MS {
                    let message = format!(
                        "Error committing input audio buffer: buffer too small. \
                        Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms}ms of audio."
                    );
                    self.error(
                        out,
                        "input_audio_buffer_commit_empty",
                        &message,
                        None,
                        client_event,
                    );
                } else {
                    let item_id = self.input_item.clone();
                    self.commit_buffer(out);
                    // The committed item is transcribed now: the words since the last
                    // whole-second transcript.
                    if let Some(transcript) = self.clock.flush() {
                        self.send(
                            out,
                            json!({"type": "conversation.item.input_audio_transcription.completed",
                            "item_id": item_id, "content_index": 0, "transcript": transcript.text,
                            "usage": {"type": "duration", "seconds": transcript.duration_secs()}}),
                        );
                    }
                }
            }
            "input_audio_buffer.clear" => {
                self.buffered_samples = 0;
                self.send(out, json!({"type": "input_audio_buffer.cleared"}));
            }
            "response.create" => {
                if self.response.is_some() {
                    self.error(
                        out,
                        "conversation_already_has_active_response",
                        "Conversation already has an active response in progress.",
                        None,
                        client_event,
                    );
                } else {
                    self.ensure_response(out);
                    self.finish_response(out, "completed");
                }
            }
            "response.cancel" => {
                if self.response.is_some() {
                    self.finish_response(out, "cancelled");
                } else {
                    self.error(
                        out,
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found.",
                        None,
                        client_event,
                    );
                }
            }
            "conversation.item.truncate" => {
                let item_id = event.get("item_id").cloned().unwrap_or(Value::Null);
                let content_index = event.get("content_index").cloned().unwrap_or(json!(0));
                let audio_end_ms = event.get("audio_end_ms").cloned().unwrap_or(json!(0));
                self.send(
                    out,
                    json!({"type": "conversation.item.truncated", "item_id": item_id,
                    "content_index": content_index, "audio_end_ms": audio_end_ms}),
                );
            }
            "conversation.item.create" => {
                let mut item = event.get("item").cloned().unwrap_or_else(|| json!({}));
                if item.get("id").is_none()
                    && let Some(object) = item.as_object_mut()
                {
                    object.insert("id".into(), Value::String(self.new_id("item_")));
                }
                let previous = event
                    .get("previous_item_id")
                    .cloned()
                    .unwrap_or(Value::Null);
                self.send(
                    out,
                    json!({"type": "conversation.item.added",
                    "previous_item_id": previous, "item": item}),
                );
            }
            "conversation.item.delete" => {
                let item_id = event.get("item_id").cloned().unwrap_or(Value::Null);
                self.send(
                    out,
                    json!({"type": "conversation.item.deleted", "item_id": item_id}),
                );
            }
            "conversation.item.retrieve" | "output_audio_buffer.clear" => {}
            other => {
                let message = format!(
                    "Invalid value: '{other}'. Supported values are: \
                    'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', \
                    'input_audio_buffer.clear', 'conversation.item.create', \
                    'conversation.item.retrieve', 'conversation.item.truncate', \
                    'conversation.item.delete', 'response.create', 'response.cancel', and \
                    'output_audio_buffer.clear'."
                );
                self.error(out, "invalid_value", &message, Some("type"), client_event);
            }
        }
    }
}

/// The GA JSON of a format.
fn format_json(format: WireFormat) -> Value {
    match format.encoding {
        Encoding::Pcm16 => json!({"type": "audio/pcm", "rate": format.sample_rate_hz}),
        Encoding::Mulaw => json!({"type": "audio/pcmu"}),
        Encoding::Alaw => json!({"type": "audio/pcma"}),
    }
}

/// A GA format object, or the error message for it.
fn parse_format(value: &Value) -> Result<WireFormat, String> {
    match value.get("type").and_then(Value::as_str) {
        Some("audio/pcm") => match value.get("rate").map(Value::as_u64) {
            None | Some(Some(24_000)) => Ok(WireFormat::pcm16(PCM_RATE_HZ)),
            Some(_) => Err("Invalid 'rate': audio/pcm supports only 24000.".into()),
        },
        Some("audio/pcmu") => Ok(WireFormat {
            encoding: Encoding::Mulaw,
            sample_rate_hz: 8_000,
        }),
        Some("audio/pcma") => Ok(WireFormat {
            encoding: Encoding::Alaw,
            sample_rate_hz: 8_000,
        }),
        Some(other) => Err(format!(
            "Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'."
        )),
        None => Err("Missing required parameter: 'type'.".into()),
    }
}

impl Session for OpenAiSession {
    fn on_open(&mut self, out: &mut Outbox) {
        if self.beta {
            self.error(
                out,
                "beta_api_shape_disabled",
                "The beta Realtime API shape is no longer supported; use the GA shape.",
                None,
                None,
            );
            out.close(
                BETA_CLOSE_CODE,
                "invalid_request_error.beta_api_shape_disabled",
            );
            return;
        }
        let session = self.session_object();
        self.send(out, json!({"type": "session.created", "session": session}));
    }

    fn on_text(&mut self, text: &str, out: &mut Outbox) {
        match serde_json::from_str::<Value>(text) {
            Ok(event) if event.is_object() => self.handle(&event, out),
            Ok(_) | Err(_) => self.error(
                out,
                "invalid_json",
                "We could not parse the JSON body of your request: expected a JSON object.",
                None,
                None,
            ),
        }
    }

    fn on_binary(&mut self, bytes: &[u8], out: &mut Outbox) {
        // The server reads JSON events in binary frames too.
        match std::str::from_utf8(bytes) {
            Ok(text) => self.on_text(text, out),
            Err(_) => self.error(
                out,
                "invalid_json",
                "We could not parse the JSON body of your request: not UTF-8.",
                None,
                None,
            ),
        }
    }

    fn on_tick(&mut self, _since_open: std::time::Duration, _out: &mut Outbox) {}

    fn counters(&self) -> SessionCounters {
        SessionCounters {
            audio_received_ms: self.audio_ms_before + self.clock.audio_ms(),
            pongs_received: 0,
            resumed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (OpenAiSession, Outbox) {
        let mut session = OpenAiSession::new("gpt-realtime", false);
        let mut out = Outbox::default();
        session.on_open(&mut out);
        (session, out)
    }

    fn append(session: &mut OpenAiSession, samples: &[i16], out: &mut Outbox) {
        let audio = b64_encode(&WireFormat::pcm16(PCM_RATE_HZ).encode(samples));
        session.on_text(
            &json!({"type": "input_audio_buffer.append", "audio": audio}).to_string(),
            out,
        );
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().filter_map(|e| e["type"].as_str()).collect()
    }

    /// Open → `session.created`; update → `session.updated` with the new formats.
    #[test]
    fn handshake_and_update() {
        let (mut session, mut out) = session();
        let events = out.take_json();
        assert_eq!(types(&events), ["session.created"]);
        assert_eq!(
            events[0]["session"]["audio"]["input"]["format"]["rate"],
            24_000
        );
        session.on_text(r#"{"type":"session.update","session":{"type":"realtime",
            "audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"},"voice":"marin"}}}}"#, &mut out);
        let events = out.take_json();
        assert_eq!(types(&events), ["session.updated"]);
        assert_eq!(
            events[0]["session"]["audio"]["output"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(events[0]["session"]["audio"]["output"]["voice"], "marin");
        assert_eq!(session.input.sample_rate_hz, 8_000);
    }

    /// Speech then silence: started, created, deltas echoing the audio, transcript at 1 s,
    /// stopped/committed/done after 500 ms of silence.
    #[test]
    fn echo_turn_and_transcript() {
        let (mut session, mut out) = session();
        out.take_json();
        let loud: Vec<i16> = (0..24_000)
            .map(|i| if i % 2 == 0 { 4000 } else { -4000 })
            .collect();
        append(&mut session, &loud, &mut out);
        let events = out.take_json();
        assert_eq!(
            types(&events),
            [
                "input_audio_buffer.speech_started",
                "response.created",
                "response.output_audio.delta",
                "conversation.item.input_audio_transcription.completed"
            ]
        );
        let delta = b64_decode(events[2]["delta"].as_str().unwrap()).unwrap();
        assert_eq!(delta, WireFormat::pcm16(PCM_RATE_HZ).encode(&loud));
        assert_eq!(events[3]["transcript"], "audio 0.0-1.0s");
        append(&mut session, &[0; 12_000], &mut out);
        let events = out.take_json();
        assert_eq!(
            types(&events),
            [
                "response.output_audio.delta",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "response.output_audio.done",
                "response.done"
            ]
        );
        assert_eq!(events[1]["audio_end_ms"], 1000);
        assert_eq!(session.counters().audio_received_ms, 1500);
    }

    /// Bad input gives `error` events and the session carries on.
    #[test]
    fn bad_input_is_an_error_event() {
        let (mut session, mut out) = session();
        out.take_json();
        for bad in [
            "not json",
            "[1]",
            r#"{"event_id":"e1"}"#,
            r#"{"type":"nope","event_id":"e2"}"#,
            r#"{"type":"input_audio_buffer.append","audio":"!!"}"#,
            r#"{"type":"input_audio_buffer.commit"}"#,
            r#"{"type":"response.cancel"}"#,
            r#"{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/pcm","rate":16000}}}}}"#,
        ] {
            session.on_text(bad, &mut out);
            let events = out.take_json();
            assert_eq!(types(&events), ["error"], "{bad}");
            assert_eq!(events[0]["error"]["type"], "invalid_request_error");
        }
        session.on_text(r#"{"type":"nope","event_id":"e2"}"#, &mut out);
        assert_eq!(out.take_json()[0]["error"]["event_id"], "e2");
        assert!(out.close.is_none());
    }

    /// `response.create` is an empty completed response; `response.cancel` ends the echo's
    /// response as cancelled; cancelling again is an error.
    #[test]
    fn response_create_and_cancel() {
        let (mut session, mut out) = session();
        out.take_json();
        session.on_text(r#"{"type":"response.create"}"#, &mut out);
        assert_eq!(
            types(&out.take_json()),
            ["response.created", "response.done"]
        );
        append(&mut session, &[0; 480], &mut out);
        out.take_json();
        session.on_text(r#"{"type":"response.cancel"}"#, &mut out);
        let events = out.take_json();
        assert_eq!(
            types(&events),
            ["response.output_audio.done", "response.done"]
        );
        assert_eq!(events[1]["response"]["status"], "cancelled");
        session.on_text(r#"{"type":"response.cancel"}"#, &mut out);
        assert_eq!(
            out.take_json()[0]["error"]["code"],
            "response_cancel_not_active"
        );
    }

    /// A beta client gets an error and close 4000.
    #[test]
    fn beta_shape_is_refused() {
        let mut session = OpenAiSession::new("gpt-realtime", true);
        let mut out = Outbox::default();
        session.on_open(&mut out);
        assert_eq!(types(&out.take_json()), ["error"]);
        assert_eq!(out.close.as_ref().map(|c| c.0), Some(BETA_CLOSE_CODE));
    }
}
