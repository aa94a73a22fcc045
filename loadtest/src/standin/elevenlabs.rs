//! ElevenLabs Agents Platform conversation: `GET /v1/convai/conversation?agent_id=…`.
//!
//! # Upgrade
//! - `agent_id` is required (→ 400 without it). `xi-api-key` is optional, as for public agents
//!   and signed URLs; other query parameters (`source`, `version`, a signature) are ignored.
//!   Error bodies are `{"detail": {"status", "message"}}`.
//!
//! # Conversation
//! - The client opens with `conversation_initiation_client_data`; the stand-in answers
//!   `conversation_initiation_metadata` with `conversation_id` and both formats (`pcm_16000`
//!   unless the override's `asr.user_input_audio_format` / `tts.agent_output_audio_format`
//!   names another of `pcm_8000|16000|22050|24000|44100|48000`, `ulaw_8000` — these override
//!   paths are ◐). If any other message comes first, the metadata is sent before handling it.
//! - **Echo**: each `{"user_audio_chunk": "<b64>"}` comes back as one
//!   `{"type":"audio","audio_event":{"audio_base_64","event_id"}}` in the agent output format
//!   (resampled linearly when the rates differ). `event_id`s increase by one per server event
//!   that carries one (audio, ping).
//! - **Barge-in**: at each start of speech (see [`audio`](super::audio)) after audio was
//!   sent, an `interruption` event names the last audio `event_id` (clients drop audio up to
//!   it), before the echo of the chunk that started the speech.
//! - **Transcripts**: each whole second of input gives `user_transcript` with
//!   `"audio S.S-E.Es"`, then `agent_response` `"echo: audio S.S-E.Es"`. A `user_message`
//!   gets `agent_response` `"echo: <text>"`.
//! - **Keep-alive**: a `ping {event_id, ping_ms}` every [`Knobs::ping_interval_ms`](super::Knobs)
//!   (2 s by default; `ping_ms` is the last measured round trip, `null` at first); a
//!   `{"type":"pong","event_id":N}` matching an outstanding ping is counted.
//! - `contextual_update`, `user_activity`, `client_tool_result`, `feedback`,
//!   `multimodal_message` and unknown types are accepted silently.
//! - **Bad input**: a frame that is not a JSON object, or audio that is not base64 → close
//!   1008 `Invalid message received` (the real close codes are not documented: ◐ choice).

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::audio::{
    Encoding, LinearResampler, SpeechDetector, SpeechEvent, TranscriptClock, WireFormat,
};
use super::{
    Knobs, Opened, Outbox, Rejection, Session, SessionCounters, Upgrade, b64_decode, b64_encode,
};

/// The upgrade path.
pub const PATH: &str = "/v1/convai/conversation";

/// The default format both ways.
pub const DEFAULT_FORMAT: &str = "pcm_16000";

/// Close code for a message the stand-in cannot read (◐).
pub const INVALID_MESSAGE_CLOSE_CODE: u16 = 1008;

pub(crate) fn reject(status: StatusCode, message: &str) -> Rejection {
    let code = match status {
        StatusCode::UNAUTHORIZED => "invalid_api_key",
        StatusCode::TOO_MANY_REQUESTS => "too_many_concurrent_requests",
        _ => "invalid_request",
    };
    Rejection {
        status,
        body: json!({"detail": {"status": code, "message": message}}).to_string(),
        headers: Vec::new(),
    }
}

pub(crate) fn open(upgrade: &Upgrade<'_>, knobs: &Knobs) -> Result<Opened, Rejection> {
    if upgrade.query("agent_id").is_none_or(str::is_empty) {
        return Err(reject(StatusCode::BAD_REQUEST, "agent_id is required."));
    }
    Ok(Opened {
        session: Box::new(ElevenLabsSession::new(Duration::from_millis(
            knobs.ping_interval_ms,
        ))),
        headers: Vec::new(),
    })
}

/// The wire format named by an ElevenLabs format string.
pub(crate) fn parse_format(name: &str) -> Option<WireFormat> {
    if name == "ulaw_8000" {
        return Some(WireFormat {
            encoding: Encoding::Mulaw,
            sample_rate_hz: 8_000,
        });
    }
    let rate: u32 = name.strip_prefix("pcm_")?.parse().ok()?;
    [8_000, 16_000, 22_050, 24_000, 44_100, 48_000]
        .contains(&rate)
        .then(|| WireFormat::pcm16(rate))
}

static CONVERSATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One agent conversation.
pub(crate) struct ElevenLabsSession {
    conversation_id: String,
    initiated: bool,
    input_name: String,
    output_name: String,
    input: WireFormat,
    output: WireFormat,
    carry: Option<u8>,
    resampler: LinearResampler,
    vad: SpeechDetector,
    clock: TranscriptClock,
    next_event_id: u64,
    last_audio_event: Option<u64>,
    ping_interval: Duration,
    next_ping_at: Duration,
    /// Pings not yet answered: event id and time sent (since open).
    outstanding: VecDeque<(u64, Duration)>,
    last_rtt_ms: Option<u64>,
    /// Time since open at the last tick: the clock for round trips.
    now: Duration,
    pongs: u64,
}

impl ElevenLabsSession {
    pub(crate) fn new(ping_interval: Duration) -> Self {
        let n = CONVERSATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pcm = WireFormat::pcm16(16_000);
        ElevenLabsSession {
            conversation_id: format!("conv_standin{n}"),
            initiated: false,
            input_name: DEFAULT_FORMAT.into(),
            output_name: DEFAULT_FORMAT.into(),
            input: pcm,
            output: pcm,
            carry: None,
            resampler: LinearResampler::new(16_000, 16_000),
            vad: SpeechDetector::new(16_000),
            clock: TranscriptClock::new(16_000, false),
            next_event_id: 1,
            last_audio_event: None,
            ping_interval,
            next_ping_at: ping_interval,
            outstanding: VecDeque::new(),
            last_rtt_ms: None,
            now: Duration::ZERO,
            pongs: 0,
        }
    }

    fn event_id(&mut self) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        id
    }

    fn initiate(&mut self, client_data: Option<&Value>, out: &mut Outbox) {
        if self.initiated {
            return;
        }
        self.initiated = true;
        let override_format = |pointer: &str| {
            client_data
                .and_then(|data| data.pointer(pointer))
                .and_then(Value::as_str)
                .and_then(|name| parse_format(name).map(|format| (name.to_owned(), format)))
        };
        if let Some((name, format)) =
            override_format("/conversation_config_override/asr/user_input_audio_format")
        {
            self.input_name = name;
            self.input = format;
        }
        if let Some((name, format)) =
            override_format("/conversation_config_override/tts/agent_output_audio_format")
        {
            self.output_name = name;
            self.output = format;
        }
        self.resampler =
            LinearResampler::new(self.input.sample_rate_hz, self.output.sample_rate_hz);
        self.vad = SpeechDetector::new(self.input.sample_rate_hz);
        self.clock = TranscriptClock::new(self.input.sample_rate_hz, false);
        out.json(json!({"type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": self.conversation_id,
                "agent_output_audio_format": self.output_name,
                "user_input_audio_format": self.input_name}}));
    }

    fn audio(&mut self, chunk: &str, out: &mut Outbox) {
        let Some(bytes) = b64_decode(chunk) else {
            out.close(INVALID_MESSAGE_CLOSE_CODE, "Invalid message received");
            return;
        };
        let mut samples = Vec::with_capacity(bytes.len());
        self.input
            .decode_into(&bytes, &mut self.carry, &mut samples);
        if samples.is_empty() {
            return;
        }
        for event in self.vad.push(&samples) {
            if let (SpeechEvent::Started { .. }, Some(last)) = (event, self.last_audio_event) {
                out.json(json!({"type": "interruption", "interruption_event": {"event_id": last}}));
            }
        }
        let echoed = self.resampler.process(&samples);
        if !echoed.is_empty() {
            let event_id = self.event_id();
            self.last_audio_event = Some(event_id);
            out.json(json!({"type": "audio", "audio_event": {
                "audio_base_64": b64_encode(&self.output.encode(&echoed)), "event_id": event_id}}));
        }
        for transcript in self.clock.advance(samples.len() as u64) {
            out.json(json!({"type": "user_transcript",
                "user_transcription_event": {"user_transcript": transcript.text}}));
            out.json(json!({"type": "agent_response",
                "agent_response_event": {"agent_response": format!("echo: {}", transcript.text)}}));
        }
    }

    fn handle(&mut self, message: &Value, out: &mut Outbox) {
        if let Some(chunk) = message.get("user_audio_chunk") {
            self.initiate(None, out);
            match chunk.as_str() {
                Some(chunk) => self.audio(chunk, out),
                None => out.close(INVALID_MESSAGE_CLOSE_CODE, "Invalid message received"),
            }
            return;
        }
        match message.get("type").and_then(Value::as_str) {
            Some("conversation_initiation_client_data") => self.initiate(Some(message), out),
            Some("pong") => {
                self.initiate(None, out);
                let id = message.get("event_id").and_then(Value::as_u64);
                if let Some(position) = self
                    .outstanding
                    .iter()
                    .position(|(sent, _)| Some(*sent) == id)
                    && let Some((_, sent_at)) = self.outstanding.remove(position)
                {
                    self.last_rtt_ms = Some(self.now.saturating_sub(sent_at).as_millis() as u64);
                    self.pongs += 1;
                }
            }
            Some("user_message") => {
                self.initiate(None, out);
                let text = message.get("text").and_then(Value::as_str).unwrap_or("");
                out.json(json!({"type": "agent_response",
                    "agent_response_event": {"agent_response": format!("echo: {text}")}}));
            }
            _ => self.initiate(None, out),
        }
    }
}

impl Session for ElevenLabsSession {
    fn on_open(&mut self, _out: &mut Outbox) {}

    fn on_text(&mut self, text: &str, out: &mut Outbox) {
        match serde_json::from_str::<Value>(text) {
            Ok(message) if message.is_object() => self.handle(&message, out),
            _ => out.close(INVALID_MESSAGE_CLOSE_CODE, "Invalid message received"),
        }
    }

    fn on_binary(&mut self, bytes: &[u8], out: &mut Outbox) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.on_text(text, out),
            Err(_) => out.close(INVALID_MESSAGE_CLOSE_CODE, "Invalid message received"),
        }
    }

    fn on_tick(&mut self, since_open: Duration, out: &mut Outbox) {
        self.now = since_open;
        if self.ping_interval.is_zero() || !self.initiated || since_open < self.next_ping_at {
            return;
        }
        self.next_ping_at = since_open + self.ping_interval;
        let event_id = self.event_id();
        self.outstanding.push_back((event_id, since_open));
        // An unanswered ping is forgotten after a while so the queue stays small.
        while self.outstanding.len() > 16 {
            self.outstanding.pop_front();
        }
        out.json(json!({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": self.last_rtt_ms}}));
    }

    fn counters(&self) -> SessionCounters {
        SessionCounters {
            audio_received_ms: self.clock.audio_ms(),
            pongs_received: self.pongs,
            resumed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(samples: &[i16]) -> String {
        json!({"user_audio_chunk": b64_encode(&WireFormat::pcm16(16_000).encode(samples))})
            .to_string()
    }

    /// Init → metadata; audio → audio events echoing the bytes; 1 s → transcript.
    #[test]
    fn initiation_echo_and_transcript() {
        let mut session = ElevenLabsSession::new(Duration::from_secs(2));
        let mut out = Outbox::default();
        session.on_text(
            r#"{"type":"conversation_initiation_client_data"}"#,
            &mut out,
        );
        let events = out.take_json();
        assert_eq!(events[0]["type"], "conversation_initiation_metadata");
        assert_eq!(
            events[0]["conversation_initiation_metadata_event"]["user_input_audio_format"],
            "pcm_16000"
        );
        let samples: Vec<i16> = (0..16_000).map(|i| (i % 100) as i16).collect();
        session.on_text(&chunk(&samples), &mut out);
        let events = out.take_json();
        assert_eq!(events[0]["type"], "audio");
        let audio =
            b64_decode(events[0]["audio_event"]["audio_base_64"].as_str().unwrap()).unwrap();
        assert_eq!(audio, WireFormat::pcm16(16_000).encode(&samples));
        assert_eq!(
            events[1]["user_transcription_event"]["user_transcript"],
            "audio 0.0-1.0s"
        );
        assert_eq!(session.counters().audio_received_ms, 1000);
    }

    /// Pings every interval after initiation; a matching pong is counted.
    #[test]
    fn ping_pong() {
        let mut session = ElevenLabsSession::new(Duration::from_secs(2));
        let mut out = Outbox::default();
        session.on_tick(Duration::from_secs(3), &mut out);
        assert!(out.take_json().is_empty(), "no ping before initiation");
        session.on_text(
            r#"{"type":"conversation_initiation_client_data"}"#,
            &mut out,
        );
        out.take_json();
        session.on_tick(Duration::from_secs(3), &mut out);
        let ping = out.take_json().remove(0);
        assert_eq!(ping["type"], "ping");
        let id = ping["ping_event"]["event_id"].as_u64().unwrap();
        session.on_tick(Duration::from_millis(3_100), &mut out);
        session.on_text(
            &json!({"type": "pong", "event_id": id + 100}).to_string(),
            &mut out,
        );
        session.on_text(
            &json!({"type": "pong", "event_id": id}).to_string(),
            &mut out,
        );
        assert_eq!(session.counters().pongs_received, 1);
        session.on_tick(Duration::from_secs(5), &mut out);
        assert_eq!(out.take_json()[0]["ping_event"]["ping_ms"], 100);
    }

    /// Formats, an interruption at speech start, and a close for garbage.
    #[test]
    fn formats_interruption_and_garbage() {
        assert_eq!(parse_format("pcm_24000"), Some(WireFormat::pcm16(24_000)));
        assert_eq!(
            parse_format("ulaw_8000").map(|f| f.encoding),
            Some(Encoding::Mulaw)
        );
        assert_eq!(parse_format("pcm_12345"), None);
        let mut session = ElevenLabsSession::new(Duration::ZERO);
        let mut out = Outbox::default();
        session.on_text(&chunk(&[0; 320]), &mut out);
        session.on_text(&chunk(&[5000; 320]), &mut out);
        let kinds: Vec<_> = out.take_json().iter().map(|e| e["type"].clone()).collect();
        assert_eq!(
            kinds,
            [
                json!("conversation_initiation_metadata"),
                json!("audio"),
                json!("interruption"),
                json!("audio")
            ]
        );
        session.on_text("{not json", &mut out);
        assert_eq!(
            out.close.as_ref().map(|c| c.0),
            Some(INVALID_MESSAGE_CLOSE_CODE)
        );
    }
}
