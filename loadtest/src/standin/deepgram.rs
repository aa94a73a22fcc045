//! Deepgram live transcription: `GET /v1/listen?…`, binary audio in, JSON results out.
//!
//! # Upgrade
//! - Key: `Authorization: Token <key>` or `Authorization: Bearer <jwt>`, or subprotocols
//!   `token, <key>` (answered with `token`). Missing → 401. Every upgrade response (101 or
//!   error) carries `dg-request-id`; errors also `dg-error` and a JSON body
//!   `{err_code, err_msg, request_id}`.
//! - `encoding` must be `linear16`, `mulaw` or `alaw` (the stand-in decodes only these; other
//!   Deepgram encodings and a missing one → 400), `sample_rate` an integer in 8000–48000
//!   (→ 400 otherwise), `channels` 1 if present (→ 400 otherwise: no multichannel here).
//!   `interim_results=true`, `vad_events=true` and `utterance_end_ms` switch on the matching
//!   messages; `model` (default `nova-3`) is echoed in result metadata; the rest is ignored.
//!
//! # Conversation
//! - **Results**: each whole second of audio gives a final `Results` (`is_final: true`,
//!   `speech_final: false`, `start` = the second, `duration: 1.0`, transcript
//!   `"audio S.S-E.Es"`); with `interim_results=true` each half second before it also gives
//!   an interim (`is_final: false`, `duration: 0.5`, `"audio S.S-S.5s"`).
//! - `{"type":"Finalize"}` flushes the audio since the last final as a final result with
//!   `from_finalize: true` and `speech_final: true` (nothing if there is none).
//!   `{"type":"CloseStream"}` flushes the same way (without `from_finalize`), sends `Metadata`
//!   (`sha256` of all audio bytes received, `duration` in seconds, `channels: 1`) and closes
//!   1000. `{"type":"KeepAlive"}` gets no reply.
//! - `vad_events=true`: `SpeechStarted {channel, timestamp}` at each start of speech;
//!   `utterance_end_ms`: `UtteranceEnd {channel, last_word_end}` when speech stops.
//! - **Idle**: no audio and no `KeepAlive` for [`Knobs::idle_timeout_ms`](super::Knobs)
//!   (10 s by default) → close 1011 `NET-0001`.
//! - **Bad input** (the documented close codes): a binary frame that is a JSON control message
//!   (the "KeepAlive sent as binary" mistake), a text frame that is not a known control
//!   message → close 1008 `DATA-0000`. The reference lists 1002 for DATA-0000 in a 2021 doc
//!   and says current docs may say 1008; the stand-in uses 1008. An empty binary frame ends
//!   the stream like `CloseStream` (Deepgram's historical meaning of an empty message; the
//!   docs only warn it causes a closure).

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::audio::{
    Encoding, SpeechDetector, SpeechEvent, Transcript, TranscriptClock, WireFormat,
};
use super::{Knobs, Opened, Outbox, Rejection, Session, SessionCounters, Upgrade};

/// The upgrade path.
pub const PATH: &str = "/v1/listen";

/// Close code for undecodable input (`DATA-0000`).
pub const DATA_CLOSE_CODE: u16 = 1008;

/// Close code for the idle timeout (`NET-0001`).
pub const IDLE_CLOSE_CODE: u16 = 1011;

/// Normal close after `CloseStream`.
pub const NORMAL_CLOSE_CODE: u16 = 1000;

pub(crate) fn authorized(upgrade: &Upgrade<'_>) -> bool {
    if upgrade.authorization("Token").is_some() || upgrade.authorization("Bearer").is_some() {
        return true;
    }
    let protocols = upgrade.subprotocols();
    protocols.first() == Some(&"token") && protocols.get(1).is_some_and(|key| !key.is_empty())
}

fn rejection(status: StatusCode, message: &str, request_id: &str) -> Rejection {
    let err_code = match status {
        StatusCode::UNAUTHORIZED => "INVALID_AUTH",
        StatusCode::TOO_MANY_REQUESTS => "TOO_MANY_REQUESTS",
        _ => "Bad Request",
    };
    Rejection {
        status,
        body: json!({"err_code": err_code, "err_msg": message, "request_id": request_id})
            .to_string(),
        headers: vec![
            ("dg-request-id", request_id.to_owned()),
            ("dg-error", message.to_owned()),
        ],
    }
}

pub(crate) fn reject(status: StatusCode, message: &str) -> Rejection {
    rejection(status, message, &uuid::Uuid::now_v7().to_string())
}

pub(crate) fn open(upgrade: &Upgrade<'_>, knobs: &Knobs) -> Result<Opened, Rejection> {
    let request_id = uuid::Uuid::now_v7().to_string();
    let bad = |message: &str| rejection(StatusCode::BAD_REQUEST, message, &request_id);
    let encoding = match upgrade.query("encoding") {
        Some("linear16") => Encoding::Pcm16,
        Some("mulaw") => Encoding::Mulaw,
        Some("alaw") => Encoding::Alaw,
        Some(other) => {
            return Err(bad(&format!(
                "The stand-in decodes only linear16, mulaw and alaw, not encoding={other}."
            )));
        }
        None => {
            return Err(bad(
                "encoding is required for raw audio (the stand-in takes no containers).",
            ));
        }
    };
    let sample_rate_hz = match upgrade.query("sample_rate").map(str::parse::<u32>) {
        Some(Ok(rate)) if (8_000..=48_000).contains(&rate) => rate,
        Some(_) => return Err(bad("sample_rate must be an integer from 8000 to 48000.")),
        None => return Err(bad("sample_rate is required with encoding.")),
    };
    match upgrade.query("channels") {
        None | Some("1") => {}
        Some(_) => return Err(bad("The stand-in supports channels=1 only.")),
    }
    let flag = |name: &str| upgrade.query(name) == Some("true");
    let mut headers = vec![("dg-request-id", request_id.clone())];
    if upgrade.subprotocols().first() == Some(&"token") {
        headers.push(("sec-websocket-protocol", "token".to_owned()));
    }
    let session = DeepgramSession::new(
        DeepgramConfig {
            format: WireFormat {
                encoding,
                sample_rate_hz,
            },
            model: upgrade.query("model").unwrap_or("nova-3").to_owned(),
            interim_results: flag("interim_results"),
            vad_events: flag("vad_events"),
            utterance_end: upgrade.query("utterance_end_ms").is_some(),
            idle_timeout: Duration::from_millis(knobs.idle_timeout_ms),
        },
        request_id,
    );
    Ok(Opened {
        session: Box::new(session),
        headers,
    })
}

/// What the query string asked for.
#[derive(Debug, Clone)]
pub(crate) struct DeepgramConfig {
    pub(crate) format: WireFormat,
    pub(crate) model: String,
    pub(crate) interim_results: bool,
    pub(crate) vad_events: bool,
    pub(crate) utterance_end: bool,
    pub(crate) idle_timeout: Duration,
}

/// One live-transcription connection.
pub(crate) struct DeepgramSession {
    config: DeepgramConfig,
    request_id: String,
    model_uuid: String,
    created: String,
    carry: Option<u8>,
    vad: SpeechDetector,
    clock: TranscriptClock,
    sha256: Sha256,
    /// Audio or `KeepAlive` arrived since the last tick.
    active_since_tick: bool,
    /// Time since open of the last activity seen by a tick.
    last_active: Duration,
}

impl DeepgramSession {
    pub(crate) fn new(config: DeepgramConfig, request_id: String) -> Self {
        let rate = config.format.sample_rate_hz;
        DeepgramSession {
            vad: SpeechDetector::new(rate),
            clock: TranscriptClock::new(rate, config.interim_results),
            config,
            request_id,
            model_uuid: "00000000-0000-4000-8000-00000000d9a0".into(),
            created: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            carry: None,
            sha256: Sha256::new(),
            active_since_tick: false,
            last_active: Duration::ZERO,
        }
    }

    fn results(&self, transcript: &Transcript, speech_final: bool, from_finalize: bool) -> Value {
        let text = &transcript.text;
        let start = transcript.start_secs();
        let end = start + transcript.duration_secs();
        let words: Vec<Value> = text
            .split(' ')
            .enumerate()
            .map(|(i, word)| {
                let half = (end - start) / 2.0;
                let word_start = start + half * i as f64;
                json!({"word": word, "start": word_start, "end": word_start + half,
                       "confidence": 0.99, "punctuated_word": word})
            })
            .collect();
        json!({
            "type": "Results", "channel_index": [0, 1],
            "duration": transcript.duration_secs(), "start": start,
            "is_final": transcript.is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": words}]},
            "metadata": {"request_id": self.request_id, "model_uuid": self.model_uuid,
                "model_info": {"name": format!("general-{}", self.config.model),
                               "version": "standin", "arch": self.config.model}},
        })
    }

    fn audio(&mut self, bytes: &[u8], out: &mut Outbox) {
        self.active_since_tick = true;
        self.sha256.update(bytes);
        let mut samples = Vec::with_capacity(bytes.len());
        self.config
            .format
            .decode_into(bytes, &mut self.carry, &mut samples);
        for event in self.vad.push(&samples) {
            match event {
                SpeechEvent::Started { at_ms } if self.config.vad_events => {
                    out.json(json!({"type": "SpeechStarted", "channel": [0, 1],
                        "timestamp": at_ms as f64 / 1000.0}));
                }
                SpeechEvent::Stopped { at_ms } if self.config.utterance_end => {
                    out.json(json!({"type": "UtteranceEnd", "channel": [0, 1],
                        "last_word_end": at_ms as f64 / 1000.0}));
                }
                _ => {}
            }
        }
        for transcript in self.clock.advance(samples.len() as u64) {
            let results = self.results(&transcript, false, false);
            out.json(results);
        }
    }

    fn flush(&mut self, from_finalize: bool, out: &mut Outbox) {
        if let Some(transcript) = self.clock.flush() {
            let results = self.results(&transcript, true, from_finalize);
            out.json(results);
        }
    }

    fn close_stream(&mut self, out: &mut Outbox) {
        self.flush(false, out);
        let digest = self.sha256.clone().finalize();
        let sha256: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        out.json(json!({
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": sha256, "created": self.created,
            "duration": self.clock.audio_ms() as f64 / 1000.0, "channels": 1,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid.clone(): {"name": format!("general-{}", self.config.model),
                "version": "standin", "arch": self.config.model}},
        }));
        out.close(NORMAL_CLOSE_CODE, "");
    }
}

impl Session for DeepgramSession {
    fn on_open(&mut self, _out: &mut Outbox) {}

    fn on_text(&mut self, text: &str, out: &mut Outbox) {
        let kind = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|value| value.get("type").and_then(Value::as_str).map(str::to_owned));
        match kind.as_deref() {
            Some("KeepAlive") => self.active_since_tick = true,
            Some("Finalize") => self.flush(true, out),
            Some("CloseStream") => self.close_stream(out),
            _ => out.close(DATA_CLOSE_CODE, "DATA-0000"),
        }
    }

    fn on_binary(&mut self, bytes: &[u8], out: &mut Outbox) {
        if bytes.is_empty() {
            self.close_stream(out);
            return;
        }
        let is_control = bytes.first() == Some(&b'{')
            && serde_json::from_slice::<Value>(bytes)
                .is_ok_and(|value| value.get("type").is_some());
        if is_control {
            out.close(DATA_CLOSE_CODE, "DATA-0000");
            return;
        }
        self.audio(bytes, out);
    }

    fn on_tick(&mut self, since_open: Duration, out: &mut Outbox) {
        if self.active_since_tick {
            self.active_since_tick = false;
            self.last_active = since_open;
        } else if since_open.saturating_sub(self.last_active) >= self.config.idle_timeout {
            out.close(IDLE_CLOSE_CODE, "NET-0001");
        }
    }

    fn counters(&self) -> SessionCounters {
        SessionCounters {
            audio_received_ms: self.clock.audio_ms(),
            pongs_received: 0,
            resumed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(interim: bool) -> DeepgramSession {
        DeepgramSession::new(
            DeepgramConfig {
                format: WireFormat::pcm16(16_000),
                model: "nova-3".into(),
                interim_results: interim,
                vad_events: true,
                utterance_end: true,
                idle_timeout: Duration::from_secs(10),
            },
            "req".into(),
        )
    }

    /// Interim at 0.5 s, final at 1 s with start/duration; Finalize flushes the rest.
    #[test]
    fn results_timing() {
        let mut session = session(true);
        let mut out = Outbox::default();
        session.on_binary(&vec![0u8; 16_000], &mut out); // 0.5 s of silence
        let events = out.take_json();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["is_final"], false);
        assert_eq!(
            events[0]["channel"]["alternatives"][0]["transcript"],
            "audio 0.0-0.5s"
        );
        session.on_binary(&vec![0u8; 22_400], &mut out); // to 1.2 s
        let events = out.take_json();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["is_final"], true);
        assert_eq!(events[0]["start"], 0.0);
        assert_eq!(events[0]["duration"], 1.0);
        session.on_text(r#"{"type":"Finalize"}"#, &mut out);
        let events = out.take_json();
        assert_eq!(events[0]["from_finalize"], true);
        assert_eq!(
            events[0]["channel"]["alternatives"][0]["transcript"],
            "audio 1.0-1.2s"
        );
        assert_eq!(session.counters().audio_received_ms, 1200);
    }

    /// CloseStream: Metadata with the audio's sha256 and duration, then close 1000.
    #[test]
    fn close_stream_metadata() {
        let mut session = session(false);
        let mut out = Outbox::default();
        session.on_text(r#"{"type":"CloseStream"}"#, &mut out);
        let events = out.take_json();
        assert_eq!(events[0]["type"], "Metadata");
        assert_eq!(
            events[0]["sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(out.close, Some((1000, String::new())));
    }

    /// Speech events, then control-as-binary closes 1008 DATA-0000.
    #[test]
    fn vad_events_and_bad_input() {
        let mut session = session(false);
        let mut out = Outbox::default();
        let loud = WireFormat::pcm16(16_000).encode(&[3000; 1600]);
        session.on_binary(&loud, &mut out);
        session.on_binary(&vec![0u8; 16_000], &mut out);
        let types: Vec<_> = out.take_json().iter().map(|e| e["type"].clone()).collect();
        assert_eq!(types, [json!("SpeechStarted"), json!("UtteranceEnd")]);
        session.on_binary(br#"{"type":"KeepAlive"}"#, &mut out);
        assert_eq!(out.close, Some((1008, "DATA-0000".into())));
        let mut other = self::session(false);
        let mut out = Outbox::default();
        other.on_text("garbage", &mut out);
        assert_eq!(out.close, Some((1008, "DATA-0000".into())));
    }

    /// KeepAlive holds the idle timer off; silence past it closes 1011 NET-0001.
    #[test]
    fn idle_timeout() {
        let mut session = session(false);
        let mut out = Outbox::default();
        session.on_tick(Duration::from_secs(9), &mut out);
        session.on_text(r#"{"type":"KeepAlive"}"#, &mut out);
        session.on_tick(Duration::from_secs(9), &mut out);
        session.on_tick(Duration::from_secs(18), &mut out);
        assert!(out.close.is_none());
        session.on_tick(Duration::from_secs(19), &mut out);
        assert_eq!(out.close, Some((1011, "NET-0001".into())));
    }
}
