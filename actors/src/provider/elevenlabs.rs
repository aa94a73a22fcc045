//! `elevenlabs`: the adapter for an ElevenLabs Agents Platform (Conversational AI) agent over
//! its conversation WebSocket (protocols.md §5a).
//!
//! # What it speaks
//!
//! - **Connect** to `{base_url}?agent_id={agent_id}` (default
//!   `wss://api.elevenlabs.io/v1/convai/conversation`), with `xi-api-key: <key>` when
//!   [`ElevenLabsSettings::api_key`] is set. For a private agent the app may instead fetch a
//!   signed URL (`GET /v1/convai/conversation/get-signed-url`, an HTTP call the adapter does
//!   not make) and pass it as [`ElevenLabsSettings::signed_url`]: it is dialled as it is, with
//!   no key header.
//! - **On open**, `conversation_initiation_client_data`, with the configured overrides
//!   (prompt, first message, language, voice), dynamic variables and user id; empty objects
//!   where nothing is set, as the SDKs send.
//! - **Ready on `conversation_initiation_metadata`**, once its audio formats are checked.
//!   The agent's formats are set in the agent's own settings, and the protocol has no verified
//!   way to ask for one in the initiation message. So a format other than `pcm_16000`
//!   ([`INPUT_SAMPLE_RATE_HZ`] and [`OUTPUT_SAMPLE_RATE_HZ`]) either way (`pcm_24000`,
//!   `ulaw_8000`, ...) is a **fatal** [`ProviderError::Protocol`] naming the format: the route
//!   fails over instead of playing audio at the wrong speed.
//! - **Commands.** [`ProviderCommand::Audio`] becomes `{"user_audio_chunk":"<base64>"}` of
//!   PCM16 little-endian at 16 kHz (an empty frame sends nothing). [`ProviderCommand::Dtmf`]
//!   is dropped: the protocol has no place for key presses. [`ProviderCommand::Finish`] closes
//!   the socket with 1000: the protocol has no end message.
//!
//! | server event | becomes |
//! |---|---|
//! | `conversation_initiation_metadata` (the first) | [`ProviderEvent::Ready`], or a fatal error for another format |
//! | `audio` | [`ProviderEvent::Audio`] at [`OUTPUT_SAMPLE_RATE_HZ`], unless already interrupted (below) |
//! | `interruption` | [`ProviderEvent::SpeechStarted`] (barge-in) |
//! | `user_transcript` | final `Transcript` of the caller's words |
//! | `agent_response` | final [`ProviderEvent::ReplyTranscript`] of the agent's words (the protocol has no end-of-reply event, so no [`ProviderEvent::ReplyDone`]) |
//! | `ping` | a `pong` frame with the same `event_id` |
//! | `client_tool_call` | a `client_tool_result` frame with `is_error: true`: voxroute runs no client tools, and an unanswered call would stall the agent |
//! | `error` (shape unverified) | non-fatal [`ProviderError::Provider`] |
//! | anything else (`agent_response_correction`, `agent_chat_response_part`, `vad_score`, ...) | ignored and counted |
//!
//! - **Interruptions**: as the SDK does, after `interruption` with `event_id` N every `audio`
//!   event with `event_id` ≤ N is dropped (counted as ignored): it belongs to the answer the
//!   caller cut off.
//! - **`agent_response_correction`** (the agent's words trimmed to what the caller heard before
//!   interrupting) is ignored: the `agent_response` it corrects was already sent as final,
//!   and [`ProviderEvent::ReplyTranscript`] has no way to revise a final transcript.
//! - **`ping_ms`** is not honoured: a sans-IO adapter cannot wait, so the `pong` goes at once.
//! - Empty transcripts are ignored.
//!
//! # Errors
//!
//! Malformed JSON, an event without a string `type`, a binary frame, audio that is not base64
//! or has an odd number of bytes, an event missing the field it exists for (`audio` without
//! `audio_base_64`, `ping` without `event_id`): non-fatal `bad_frame`s (dropped and counted).
//! No close codes are documented for agents, so closes follow the default rule: 1000 or no
//! code is the end of the conversation (the agent may end a call); any other code is a
//! retryable failure.
//!
//! # Unverified facts, and how the code copes
//!
//! - The `conversation_initiation_metadata` literal is ◐: the formats are read from
//!   `conversation_initiation_metadata_event` and, failing that, from the top level; if
//!   neither has a format, the SDK default `pcm_16000` is assumed.
//! - The override's inner structure (`agent.prompt.prompt`, `agent.first_message`,
//!   `agent.language`, `tts.voice_id`) is ◐, and overrides must be allowed in the agent's
//!   settings: the adapter sends only the overrides that are configured.
//! - `xi-api-key` on the conversation socket is not confirmed (the reference names it for the
//!   REST call and the TTS socket); the signed URL is the confirmed way for private agents.
//! - An `error` event is not in the reference's list; one is read leniently (`message`, or an
//!   `error` string) as a non-fatal error. `ulaw_8000` agents (⚠) are refused as above.
//! - Event ids are read as numbers or numeric strings; unknown fields are skipped and a known
//!   field of an unexpected type reads as absent.
//!
//! # Allocation
//!
//! As for [`openai`](super::openai), through the same shared wire helpers (base64 PCM16,
//! lenient JSON, URLs, error clipping): one exact-size `String` per audio frame sent, one
//! `Vec<i16>` per audio event received, the PCM bytes in a buffer kept across frames, the JSON
//! parsed borrowing from the frame. `Debug` shows neither the key, the signed URL's signature,
//! nor any audio or text.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::adapter::{
    AdapterOutput, CLOSE_NORMAL, ConnectRequest, Endpoint, ProviderAdapter, ProviderError, WsFrame,
    WsFrameRef,
};
use super::wire::{
    AudioError, Base64Pcm16, Lenient, LenientStr, MAX_ERROR_MESSAGE_BYTES, ShowUrl, clip,
    emit_final_or_ignore, url_with_query,
};
use super::{ProviderCommand, ProviderEvent};

/// The conversation endpoint the adapter dials unless told otherwise
/// (`VOXROUTE_ELEVENLABS_URL`).
pub const DEFAULT_URL: &str = "wss://api.elevenlabs.io/v1/convai/conversation";
/// The rate of the PCM16 the adapter sends: the agent's `user_input_audio_format` must be
/// `pcm_16000`.
pub const INPUT_SAMPLE_RATE_HZ: u32 = 16_000;
/// The rate of the PCM16 the adapter emits: the agent's `agent_output_audio_format` must be
/// `pcm_16000`.
pub const OUTPUT_SAMPLE_RATE_HZ: u32 = 16_000;
/// The `result` of the `client_tool_result` sent for every client tool call.
pub const TOOL_REFUSAL: &str = "voxroute does not run client tools";

/// The text a `user_audio_chunk` message starts with, before the base64 audio.
const CHUNK_PREFIX: &str = r#"{"user_audio_chunk":""#;
/// The text a `user_audio_chunk` message ends with, after the base64 audio.
const CHUNK_SUFFIX: &str = r#""}"#;
/// PCM bytes of one 20 ms frame at 16 kHz: the kept buffer's starting size.
const FRAME_BYTES: usize = INPUT_SAMPLE_RATE_HZ as usize / 50 * 2;
/// Longest provider-given format name quoted in an error.
const MAX_FORMAT_NAME: usize = 32;

/// Which agent to talk to, and how. The app fills it from its configuration and the
/// environment (`ELEVENLABS_API_KEY`, `VOXROUTE_ELEVENLABS_URL`); the adapter reads no
/// environment.
///
/// `Debug` hides the key, the signed URL, the base URL's query, the user id and the values of
/// the dynamic variables (they may hold a caller's number).
#[derive(Clone, PartialEq, Eq)]
pub struct ElevenLabsSettings {
    /// `wss://` (or `ws://`) URL of the conversation endpoint, without `agent_id`; `https://`
    /// and `http://` are turned into `wss://` and `ws://`.
    pub base_url: String,
    /// The agent, sent as the `agent_id` query parameter.
    pub agent_id: String,
    /// The API key, sent as `xi-api-key`; `None` (or empty) for a public agent.
    pub api_key: Option<String>,
    /// A signed URL for a private agent, fetched by the app just before connecting; when set
    /// (and not empty) it is dialled as it is, and `base_url`, `agent_id` and `api_key` are
    /// not used.
    pub signed_url: Option<String>,
    /// Overrides the agent's system prompt (`agent.prompt.prompt`).
    pub prompt: Option<String>,
    /// Overrides what the agent says first (`agent.first_message`).
    pub first_message: Option<String>,
    /// Overrides the agent's language (`agent.language`, e.g. `en`).
    pub language: Option<String>,
    /// Overrides the agent's voice (`tts.voice_id`).
    pub voice_id: Option<String>,
    /// Values for the agent's dynamic variables (`dynamic_variables`).
    pub dynamic_variables: BTreeMap<String, String>,
    /// The `user_id` of the conversation on ElevenLabs' side, e.g. voxroute's session id, so
    /// that their records can be matched with ours.
    pub user_id: Option<String>,
}

impl ElevenLabsSettings {
    /// Settings for `agent_id` on the public endpoint: no key, no overrides.
    pub fn new(agent_id: impl Into<String>) -> Self {
        ElevenLabsSettings {
            base_url: DEFAULT_URL.to_owned(),
            agent_id: agent_id.into(),
            api_key: None,
            signed_url: None,
            prompt: None,
            first_message: None,
            language: None,
            voice_id: None,
            dynamic_variables: BTreeMap::new(),
            user_id: None,
        }
    }
}

impl fmt::Debug for ElevenLabsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("ElevenLabsSettings")
            .field("base_url", &ShowUrl(&self.base_url))
            .field("agent_id", &self.agent_id)
            .field("api_key", &redacted(&self.api_key))
            .field("signed_url", &self.signed_url.as_deref().map(ShowUrl))
            .field("prompt", &self.prompt)
            .field("first_message", &self.first_message)
            .field("language", &self.language)
            .field("voice_id", &self.voice_id)
            .field("dynamic_variables", &self.dynamic_variables.keys())
            .field("user_id", &redacted(&self.user_id))
            .finish()
    }
}

/// The ElevenLabs agent adapter: one per connection.
pub struct ElevenLabsAdapter {
    /// Which agent and how; fixed for the connection.
    settings: ElevenLabsSettings,
    /// Set by the first acceptable `conversation_initiation_metadata`; never reset.
    ready: bool,
    /// The highest `interruption` event id seen: `audio` events up to it are dropped.
    interrupted_through: Option<u64>,
    /// PCM bytes on their way to or from base64, reused by every audio frame.
    pcm: Base64Pcm16,
}

impl ElevenLabsAdapter {
    /// An adapter for one connection with these settings.
    pub fn new(settings: ElevenLabsSettings) -> Self {
        ElevenLabsAdapter {
            settings,
            ready: false,
            interrupted_through: None,
            pcm: Base64Pcm16::with_capacity(FRAME_BYTES),
        }
    }

    /// The `conversation_initiation_client_data` sent on open.
    fn initiation(&self) -> Value {
        let settings = &self.settings;
        let mut agent = Map::new();
        if let Some(prompt) = &settings.prompt {
            agent.insert("prompt".into(), json!({ "prompt": prompt }));
        }
        if let Some(first_message) = &settings.first_message {
            agent.insert("first_message".into(), json!(first_message));
        }
        if let Some(language) = &settings.language {
            agent.insert("language".into(), json!(language));
        }
        let mut overrides = Map::new();
        if !agent.is_empty() {
            overrides.insert("agent".into(), Value::Object(agent));
        }
        if let Some(voice_id) = &settings.voice_id {
            overrides.insert("tts".into(), json!({ "voice_id": voice_id }));
        }
        let mut message = json!({
            "type": "conversation_initiation_client_data",
            "conversation_config_override": overrides,
            "custom_llm_extra_body": {},
            "dynamic_variables": settings.dynamic_variables,
        });
        if let Some(user_id) = &settings.user_id {
            message["user_id"] = json!(user_id);
        }
        message
    }

    /// `conversation_initiation_metadata`: checks the formats, then says `Ready` (once).
    fn on_metadata(
        &mut self,
        event: &Envelope<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        if self.ready {
            out.ignore();
            return Ok(());
        }
        let nested = event.conversation_initiation_metadata_event.as_ref();
        let output = nested
            .and_then(|m| m.agent_output_audio_format.get())
            .or(event.agent_output_audio_format.get());
        let input = nested
            .and_then(|m| m.user_input_audio_format.get())
            .or(event.user_input_audio_format.get());
        check_format("output", output, OUTPUT_SAMPLE_RATE_HZ)?;
        check_format("input", input, INPUT_SAMPLE_RATE_HZ)?;
        self.ready = true;
        out.emit(ProviderEvent::Ready);
        Ok(())
    }
}

impl fmt::Debug for ElevenLabsAdapter {
    /// Settings (secrets hidden) and state only: never audio or transcript text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElevenLabsAdapter")
            .field("settings", &self.settings)
            .field("ready", &self.ready)
            .field("interrupted_through", &self.interrupted_through)
            .finish_non_exhaustive()
    }
}

/// Accepts an agent audio format of `pcm_{rate_hz}`, or none (the SDK default, `pcm_16000`).
fn check_format(
    direction: &'static str,
    format: Option<&str>,
    rate_hz: u32,
) -> Result<(), ProviderError> {
    let Some(format) = format else {
        return Ok(());
    };
    let format_rate_hz = format
        .strip_prefix("pcm_")
        .and_then(|rate| rate.parse::<u32>().ok());
    if format_rate_hz == Some(rate_hz) {
        return Ok(());
    }
    let shown = if format.len() <= MAX_FORMAT_NAME
        && format
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        format
    } else {
        "an unrecognised format"
    };
    Err(ProviderError::Protocol {
        detail: format!(
            "the ElevenLabs agent's {direction} audio format is {shown}, but voxroute needs \
             pcm_{rate_hz}; change it in the agent's settings"
        )
        .into(),
        fatal: true,
    })
}

impl ProviderAdapter for ElevenLabsAdapter {
    fn endpoint(&self) -> Endpoint {
        let settings = &self.settings;
        if let Some(signed_url) = settings.signed_url.as_deref().filter(|url| !url.is_empty()) {
            return Endpoint::WebSocket(ConnectRequest::new(signed_url));
        }
        let url = url_with_query(&settings.base_url, "agent_id", &settings.agent_id);
        let mut request = ConnectRequest::new(url);
        if let Some(key) = settings.api_key.as_deref().filter(|key| !key.is_empty()) {
            request = request.header("xi-api-key", key);
        }
        Endpoint::WebSocket(request)
    }

    /// Sends `conversation_initiation_client_data`; `Ready` waits for the metadata.
    fn on_open(&mut self, out: &mut AdapterOutput) {
        out.send(WsFrame::Text(self.initiation().to_string()));
    }

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        match command {
            ProviderCommand::Audio(samples) => {
                self.pcm
                    .send_text(CHUNK_PREFIX, &samples, CHUNK_SUFFIX, out);
            }
            // The agent protocol has no message for key presses.
            ProviderCommand::Dtmf { .. } | ProviderCommand::Flush => {}
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
                "ElevenLabs sent a binary frame; its events are JSON text",
            ));
        };
        let event: Envelope<'_> = serde_json::from_str(text).map_err(|_| {
            ProviderError::bad_frame("ElevenLabs event is not a JSON object of the known shape")
        })?;
        let Some(kind) = event.kind.get() else {
            return Err(ProviderError::bad_frame(
                "ElevenLabs event has no string type",
            ));
        };
        match kind {
            "conversation_initiation_metadata" => self.on_metadata(&event, out)?,
            "audio" => {
                let audio = event.audio_event.as_ref();
                let b64 =
                    audio
                        .and_then(|a| a.audio_base_64.get())
                        .ok_or(ProviderError::bad_frame(
                            "ElevenLabs audio event has no audio_base_64",
                        ))?;
                let id = audio.and_then(|a| a.event_id.get());
                let interrupted = matches!(
                    (id, self.interrupted_through),
                    (Some(id), Some(through)) if id <= through
                );
                if interrupted || b64.is_empty() {
                    out.ignore();
                } else {
                    let samples = self.pcm.decode(b64).map_err(AudioError::bad_frame)?;
                    out.emit(ProviderEvent::Audio(samples));
                }
            }
            "interruption" => {
                if let Some(id) = event
                    .interruption_event
                    .as_ref()
                    .and_then(|i| i.event_id.get())
                {
                    // `None` orders below any `Some`: the highest id seen is kept.
                    self.interrupted_through = self.interrupted_through.max(Some(id));
                }
                out.emit(ProviderEvent::SpeechStarted);
            }
            "ping" => {
                let id = event
                    .ping_event
                    .as_ref()
                    .and_then(|ping| ping.event_id.get())
                    .ok_or(ProviderError::bad_frame(
                        "ElevenLabs ping has no event_id to answer with",
                    ))?;
                out.send(WsFrame::Text(format!(
                    r#"{{"type":"pong","event_id":{id}}}"#
                )));
            }
            "user_transcript" => {
                let text = event
                    .user_transcription_event
                    .as_ref()
                    .and_then(|t| t.user_transcript.get())
                    .ok_or(ProviderError::bad_frame(
                        "ElevenLabs user_transcript has no user_transcript text",
                    ))?;
                emit_final_or_ignore(text.to_owned(), out);
            }
            "agent_response" => {
                let text = event
                    .agent_response_event
                    .as_ref()
                    .and_then(|r| r.agent_response.get())
                    .ok_or(ProviderError::bad_frame(
                        "ElevenLabs agent_response has no agent_response text",
                    ))?;
                if text.is_empty() {
                    out.ignore();
                } else {
                    out.emit(ProviderEvent::ReplyTranscript {
                        text: text.to_owned(),
                        is_final: true,
                    });
                }
            }
            "client_tool_call" => {
                let call_id = event
                    .client_tool_call
                    .as_ref()
                    .and_then(|call| call.tool_call_id.get())
                    .ok_or(ProviderError::bad_frame(
                        "ElevenLabs client_tool_call has no tool_call_id",
                    ))?;
                let result = json!({
                    "type": "client_tool_result",
                    "tool_call_id": call_id,
                    "result": TOOL_REFUSAL,
                    "is_error": true,
                });
                out.send(WsFrame::Text(result.to_string()));
            }
            "error" => {
                let message = event
                    .message
                    .get()
                    .or(event.error.get())
                    .unwrap_or("unspecified error");
                return Err(ProviderError::Provider {
                    message: clip(message, MAX_ERROR_MESSAGE_BYTES),
                    fatal: false,
                });
            }
            _ => out.ignore(),
        }
        Ok(())
    }
}

/// What every server event is read as: the discriminator plus the payload objects of the
/// events used, borrowed from the frame. Everything else is skipped without allocating.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: LenientStr<'a>,
    #[serde(borrow, default)]
    audio_event: Option<AudioEvent<'a>>,
    #[serde(default)]
    interruption_event: Option<IdEvent>,
    #[serde(default)]
    ping_event: Option<IdEvent>,
    #[serde(borrow, default)]
    user_transcription_event: Option<UserTranscription<'a>>,
    #[serde(borrow, default)]
    agent_response_event: Option<AgentResponse<'a>>,
    #[serde(borrow, default)]
    client_tool_call: Option<ToolCall<'a>>,
    #[serde(borrow, default)]
    conversation_initiation_metadata_event: Option<Metadata<'a>>,
    /// The metadata's formats, if a server puts them at the top level.
    #[serde(borrow, default)]
    agent_output_audio_format: LenientStr<'a>,
    #[serde(borrow, default)]
    user_input_audio_format: LenientStr<'a>,
    /// An `error` event's text, in either place it might be.
    #[serde(borrow, default)]
    message: LenientStr<'a>,
    #[serde(borrow, default)]
    error: LenientStr<'a>,
}

/// `audio_event` (`alignment` is skipped).
#[derive(Deserialize)]
struct AudioEvent<'a> {
    #[serde(borrow, default)]
    audio_base_64: LenientStr<'a>,
    #[serde(default)]
    event_id: LenientId,
}

/// `interruption_event` and `ping_event` (`ping_ms` is skipped).
#[derive(Deserialize)]
struct IdEvent {
    #[serde(default)]
    event_id: LenientId,
}

/// `user_transcription_event`.
#[derive(Deserialize)]
struct UserTranscription<'a> {
    #[serde(borrow, default)]
    user_transcript: LenientStr<'a>,
}

/// `agent_response_event`.
#[derive(Deserialize)]
struct AgentResponse<'a> {
    #[serde(borrow, default)]
    agent_response: LenientStr<'a>,
}

/// `client_tool_call` (`tool_name` and `parameters` are skipped).
#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    tool_call_id: LenientStr<'a>,
}

/// `conversation_initiation_metadata_event` (`conversation_id` is skipped).
#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    agent_output_audio_format: LenientStr<'a>,
    #[serde(borrow, default)]
    user_input_audio_format: LenientStr<'a>,
}

/// An event id: a non-negative integer, or a string holding one; anything else reads as
/// absent.
type LenientId = Lenient<u64>;

#[cfg(test)]
mod tests {
    use super::super::wire::testing::{
        GOLDEN_B64, GOLDEN_SAMPLES, close_code, decode_err_output, decode_ok, opened,
        sent_audio_json, sent_json,
    };
    use super::*;

    const KEY: &str = "xi-SECRET-key";

    fn settings() -> ElevenLabsSettings {
        ElevenLabsSettings {
            api_key: Some(KEY.to_owned()),
            prompt: Some("You are a phone agent.".to_owned()),
            first_message: Some("Hi!".to_owned()),
            voice_id: Some("voice_1".to_owned()),
            dynamic_variables: BTreeMap::from([("caller".to_owned(), "+15551230000".to_owned())]),
            user_id: Some("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned()),
            ..ElevenLabsSettings::new("agent_123")
        }
    }

    /// `conversation_initiation_metadata` as the reference composes it.
    const METADATA: &str = r#"{"type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {"conversation_id": "conv_123",
          "agent_output_audio_format": "pcm_16000", "user_input_audio_format": "pcm_16000"}}"#;

    /// An adapter that has had its metadata.
    fn ready_adapter() -> ElevenLabsAdapter {
        opened(ElevenLabsAdapter::new(settings()), METADATA)
    }

    /// Decodes `text`, expecting an error and no events or frames; returns the error.
    fn decode_err(adapter: &mut ElevenLabsAdapter, text: &str) -> ProviderError {
        let (err, out) = decode_err_output(adapter, text);
        assert!(out.frames().is_empty());
        err
    }

    /// The whole outbound side of a short conversation: the initiation message with every
    /// override on open (no `Ready` yet), `Ready` on the metadata, a `pong`, one audio chunk,
    /// a dropped key press, a refused client tool call, and a normal close on `Finish`.
    #[test]
    fn golden_outbound_conversation() {
        let mut adapter = ElevenLabsAdapter::new(ElevenLabsSettings {
            language: Some("en".to_owned()),
            ..settings()
        });
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        assert!(out.events().is_empty());
        assert_eq!(
            sent_json(&out),
            vec![json!({
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {
                    "agent": {
                        "prompt": {"prompt": "You are a phone agent."},
                        "first_message": "Hi!",
                        "language": "en"
                    },
                    "tts": {"voice_id": "voice_1"}
                },
                "custom_llm_extra_body": {},
                "dynamic_variables": {"caller": "+15551230000"},
                "user_id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
            })]
        );
        out.clear();

        adapter
            .decode(WsFrameRef::Text(METADATA), &mut out)
            .unwrap();
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        assert!(out.frames().is_empty());
        out.clear();

        adapter
            .decode(
                WsFrameRef::Text(
                    r#"{"type": "ping", "ping_event": {"event_id": 12, "ping_ms": 80}}"#,
                ),
                &mut out,
            )
            .unwrap();
        adapter.encode(ProviderCommand::Audio(GOLDEN_SAMPLES.to_vec()), &mut out);
        adapter.encode(ProviderCommand::Dtmf { digit: '#' }, &mut out);
        adapter.encode(ProviderCommand::Audio(Vec::new()), &mut out);
        adapter
            .decode(
                WsFrameRef::Text(
                    r#"{"type": "client_tool_call", "client_tool_call": {"tool_name": "lookup",
                        "tool_call_id": "call_1", "parameters": {"q": "x"}}}"#,
                ),
                &mut out,
            )
            .unwrap();
        assert!(out.events().is_empty());
        assert_eq!(
            sent_json(&out),
            vec![
                json!({"type": "pong", "event_id": 12}),
                json!({"user_audio_chunk": GOLDEN_B64}),
                json!({
                    "type": "client_tool_result",
                    "tool_call_id": "call_1",
                    "result": "voxroute does not run client tools",
                    "is_error": true
                }),
            ]
        );
        assert!(out.close_request().is_none());
        out.clear();

        adapter.encode(ProviderCommand::Finish, &mut out);
        assert!(out.frames().is_empty() && out.events().is_empty());
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));
    }

    /// With nothing configured, the initiation message has the SDKs' empty objects only.
    #[test]
    fn initiation_without_overrides() {
        let mut adapter = ElevenLabsAdapter::new(ElevenLabsSettings::new("agent_123"));
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        assert_eq!(
            sent_json(&out),
            vec![json!({
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {},
                "custom_llm_extra_body": {},
                "dynamic_variables": {}
            })]
        );
    }

    /// The URL names the agent, the key travels as `xi-api-key`, a signed URL is dialled as
    /// it is without a key, and no `Debug` shows the key, the signature or a caller's number.
    #[test]
    fn endpoint_url_headers_and_debug_hide_secrets() {
        let adapter = ElevenLabsAdapter::new(settings());
        let Endpoint::WebSocket(request) = adapter.endpoint() else {
            panic!("ElevenLabs is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_123"
        );
        assert_eq!(
            request.headers,
            vec![("xi-api-key".to_owned(), KEY.to_owned())]
        );
        for shown in [
            format!("{request:?}"),
            format!("{adapter:?}"),
            format!("{:?}", settings()),
        ] {
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(!shown.contains("+1555"), "{shown}");
            assert!(!shown.contains("0193a1b2"), "{shown}");
        }

        // A public agent: no header; an agent id that needs escaping is percent-encoded.
        let public = ElevenLabsAdapter::new(ElevenLabsSettings::new("a b&c"));
        let Endpoint::WebSocket(request) = public.endpoint() else {
            panic!("ElevenLabs is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a%20b%26c"
        );
        assert!(request.headers.is_empty());

        let signed_url = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_123\
                          &conversation_signature=SECRET-signature";
        let private = ElevenLabsAdapter::new(ElevenLabsSettings {
            signed_url: Some(signed_url.to_owned()),
            ..settings()
        });
        let Endpoint::WebSocket(request) = private.endpoint() else {
            panic!("ElevenLabs is a WebSocket");
        };
        assert_eq!(request.url, signed_url);
        assert!(request.headers.is_empty());
        let shown = format!("{private:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    /// Every server event the adapter uses, in the reference's shapes; events it does not use
    /// are counted as ignored.
    #[test]
    fn decodes_every_server_event() {
        let mut adapter = ElevenLabsAdapter::new(settings());
        // Audio before the metadata is still audio.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "audio", "audio_event": {"audio_base_64": "ZACc/9AHMPg=", "event_id": 1}}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::Audio(vec![100, -100, 2000, -2000])]
        );
        let out = decode_ok(&mut adapter, METADATA);
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        let out = decode_ok(&mut adapter, METADATA);
        assert!(out.events().is_empty() && out.ignored() == 1);

        let out = decode_ok(
            &mut adapter,
            r#"{"type": "user_transcript", "user_transcription_event": {"user_transcript": "I need help."}}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::Transcript {
                text: "I need help.".into(),
                is_final: true
            }]
        );
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "agent_response", "agent_response_event": {"agent_response": "Sure, how can I help?"}}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::ReplyTranscript {
                text: "Sure, how can I help?".into(),
                is_final: true
            }]
        );

        // Audio with its alignment; then an interruption drops the audio it cut off (ids up
        // to 7) but not what comes after.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "audio", "audio_event": {"audio_base_64": "ZACc/9AHMPg=", "event_id": 6,
                "alignment": {"chars": ["H", "i"], "char_start_times_ms": [0, 60], "char_durations_ms": [60, 80]}}}"#,
        );
        assert_eq!(out.events().len(), 1);
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "interruption", "interruption_event": {"event_id": 7}}"#,
        );
        assert_eq!(out.events(), &[ProviderEvent::SpeechStarted]);
        for id in ["7", "\"5\""] {
            let text = format!(
                r#"{{"type": "audio", "audio_event": {{"audio_base_64": "ZACc/9AHMPg=", "event_id": {id}}}}}"#
            );
            let out = decode_ok(&mut adapter, &text);
            assert!(out.events().is_empty() && out.ignored() == 1, "{id}");
        }
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "audio", "audio_event": {"audio_base_64": "ZACc/9AHMPg=", "event_id": 8}}"#,
        );
        assert_eq!(
            out.events(),
            &[ProviderEvent::Audio(vec![100, -100, 2000, -2000])]
        );
        // An interruption without an id is still a barge-in, and forgets no earlier one.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "interruption", "interruption_event": {}}"#,
        );
        assert_eq!(out.events(), &[ProviderEvent::SpeechStarted]);
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "audio", "audio_event": {"audio_base_64": "ZACc/9AHMPg=", "event_id": 7}}"#,
        );
        assert!(out.events().is_empty());

        // A ping whose id is a string is answered with the number.
        let out = decode_ok(
            &mut adapter,
            r#"{"type": "ping", "ping_event": {"event_id": "13"}}"#,
        );
        assert_eq!(
            sent_json(&out),
            vec![json!({"type": "pong", "event_id": 13})]
        );
        assert!(out.events().is_empty());

        for text in [
            r#"{"type": "agent_response_correction", "agent_response_correction_event":
                {"original_agent_response": "Sure, how can I help you today?", "corrected_agent_response": "Sure, how"}}"#,
            r#"{"type": "agent_chat_response_part", "text_response_part": {"text": "Sure", "type": "delta"}}"#,
            r#"{"type": "vad_score", "vad_score_event": {"vad_score": 0.93}}"#,
            r#"{"type": "internal_tentative_agent_response", "tentative_agent_response_internal_event": {}}"#,
            r#"{"type": "user_transcript", "user_transcription_event": {"user_transcript": ""}}"#,
            r#"{"type": "audio", "audio_event": {"audio_base_64": "", "event_id": 9}}"#,
        ] {
            let out = decode_ok(&mut adapter, text);
            assert!(out.events().is_empty() && out.frames().is_empty(), "{text}");
            assert_eq!(out.ignored(), 1, "{text}");
        }
    }

    /// The formats may also sit at the top level of the metadata, or be missing (the SDK
    /// default then applies).
    #[test]
    fn metadata_in_either_shape() {
        for text in [
            r#"{"type": "conversation_initiation_metadata", "conversation_id": "conv_1",
                "agent_output_audio_format": "pcm_16000", "user_input_audio_format": "pcm_16000"}"#,
            r#"{"type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {"conversation_id": "conv_1"}}"#,
        ] {
            let mut adapter = ElevenLabsAdapter::new(settings());
            let out = decode_ok(&mut adapter, text);
            assert_eq!(out.events(), &[ProviderEvent::Ready], "{text}");
        }
    }

    /// An agent at another rate or in mu-law cannot be played right: the connection fails
    /// (fatal, not retryable), naming the format, and the adapter never says `Ready`.
    #[test]
    fn other_audio_formats_are_fatal() {
        let cases = [
            (
                "pcm_24000",
                "pcm_16000",
                "provider protocol violation: the ElevenLabs agent's output audio format is \
                 pcm_24000, but voxroute needs pcm_16000; change it in the agent's settings",
            ),
            (
                "pcm_16000",
                "ulaw_8000",
                "provider protocol violation: the ElevenLabs agent's input audio format is \
                 ulaw_8000, but voxroute needs pcm_16000; change it in the agent's settings",
            ),
            (
                "pcm_16000; DROP TABLE",
                "pcm_16000",
                "provider protocol violation: the ElevenLabs agent's output audio format is \
                 an unrecognised format, but voxroute needs pcm_16000; change it in the \
                 agent's settings",
            ),
        ];
        for (output, input, expected) in cases {
            let mut adapter = ElevenLabsAdapter::new(settings());
            let text = json!({
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "conv_1",
                    "agent_output_audio_format": output,
                    "user_input_audio_format": input,
                }
            })
            .to_string();
            let err = decode_err(&mut adapter, &text);
            assert!(
                matches!(err, ProviderError::Protocol { fatal: true, .. }),
                "{err:?}"
            );
            assert!(!err.is_retryable());
            assert_eq!(err.to_string(), expected);
        }
    }

    /// Bad frames are dropped with non-fatal errors and no events; an `error` event is a
    /// non-fatal provider error; unknown events are ignored.
    #[test]
    fn bad_input_is_a_non_fatal_error() {
        let mut adapter = ready_adapter();
        let cases: [(&str, &str); 8] = [
            (
                "{not json",
                "ElevenLabs event is not a JSON object of the known shape",
            ),
            (
                r#"{"type": "audio", "audio_event": "not an object"}"#,
                "ElevenLabs event is not a JSON object of the known shape",
            ),
            (
                r#"{"ping_event": {"event_id": 1}}"#,
                "ElevenLabs event has no string type",
            ),
            (
                r#"{"type": "audio", "audio_event": {"audio_base_64": "@@@", "event_id": 20}}"#,
                "provider audio is not valid base64",
            ),
            (
                r#"{"type": "audio", "audio_event": {"audio_base_64": "AQID", "event_id": 21}}"#,
                "provider audio has an odd number of bytes, so it is not PCM16",
            ),
            (
                r#"{"type": "audio", "audio_event": {"event_id": 22}}"#,
                "ElevenLabs audio event has no audio_base_64",
            ),
            (
                r#"{"type": "ping", "ping_event": {"ping_ms": 80}}"#,
                "ElevenLabs ping has no event_id to answer with",
            ),
            (
                r#"{"type": "user_transcript"}"#,
                "ElevenLabs user_transcript has no user_transcript text",
            ),
        ];
        for (text, expected) in cases {
            let err = decode_err(&mut adapter, text);
            assert!(
                matches!(err, ProviderError::Protocol { fatal: false, .. }),
                "{text}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("provider protocol violation: {expected}")
            );
        }

        let mut out = AdapterOutput::new();
        let err = adapter
            .decode(WsFrameRef::Binary(&[0, 1]), &mut out)
            .unwrap_err();
        assert!(matches!(err, ProviderError::Protocol { fatal: false, .. }));
        assert!(out.events().is_empty());

        let err = decode_err(
            &mut adapter,
            r#"{"type": "error", "message": "Conversation quota exceeded."}"#,
        );
        assert!(matches!(err, ProviderError::Provider { fatal: false, .. }));
        assert_eq!(
            err.to_string(),
            "provider error: Conversation quota exceeded."
        );
        let err = decode_err(&mut adapter, r#"{"type": "error", "error": {"code": 1}}"#);
        assert_eq!(err.to_string(), "provider error: unspecified error");

        let out = decode_ok(&mut adapter, r#"{"type": "brand_new_event", "x": [1]}"#);
        assert!(out.events().is_empty() && out.ignored() == 1);
    }

    /// No close codes are documented: a normal close ends the conversation, any other code
    /// is a retryable failure.
    #[test]
    fn closes_follow_the_default_rule() {
        let mut adapter = ready_adapter();
        let mut out = AdapterOutput::new();
        assert!(adapter.on_close(Some(CLOSE_NORMAL), "", &mut out).is_ok());
        assert!(adapter.on_close(None, "", &mut out).is_ok());
        let err = adapter
            .on_close(Some(1008), "policy violation", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
    }

    /// The audio voxroute sends, echoed back in a server `audio` event, decodes to the same
    /// samples; each chunk is one exact-size allocation.
    #[test]
    fn audio_round_trip() {
        let mut adapter = ready_adapter();
        let samples: Vec<i16> = (0..320).map(|i: i16| i.wrapping_mul(-211)).collect();
        let sent = sent_audio_json(&mut adapter, &samples);
        let echo = json!({
            "type": "audio",
            "audio_event": {"audio_base_64": sent["user_audio_chunk"], "event_id": 30},
        })
        .to_string();
        let out = decode_ok(&mut adapter, &echo);
        assert_eq!(out.events(), &[ProviderEvent::Audio(samples)]);
    }
}
