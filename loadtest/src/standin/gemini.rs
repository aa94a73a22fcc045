//! Gemini Live API: `GET /ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`
//! (and the same method under `v1alpha`).
//!
//! # Upgrade
//! - Key: `?key=<key>` or `x-goog-api-key`; ephemeral tokens as `?access_token=` or
//!   `Authorization: Token …` are accepted too. Missing → 401 with a Google-style body
//!   `{"error": {"code", "message", "status"}}`.
//!
//! # Conversation
//! - Client messages are JSON objects with exactly one of `setup`, `clientContent`,
//!   `realtimeInput`, `toolResponse`, in camelCase or snake_case (both accepted, as the real
//!   server does), in text or binary frames. The stand-in sends text frames, or binary ones
//!   with [`Knobs::gemini_binary_frames`](super::Knobs) (the real server's choice is
//!   unverified).
//! - `setup` (first, exactly once, with a non-empty `model`) → `{"setupComplete": {}}`.
//!   Anything before it, a second `setup`, malformed JSON, or a message without exactly one
//!   known field → close 1007 with a reason (the real codes beyond the user-reported 1007/1011
//!   are not documented: ◐ choice).
//! - **Echo**: each `realtimeInput.audio` (or legacy `mediaChunks[]`) of `audio/pcm;rate=R`
//!   (R = 16000 when absent; 8–48 kHz accepted) comes back as
//!   `serverContent.modelTurn.parts[0].inlineData` `audio/pcm;rate=24000`, resampled by
//!   linear interpolation (sample-exact: output `3j` = input `2j` at 16 kHz; see
//!   [`audio`](super::audio)). Another mime type → close 1007.
//! - **Turns**: a start of speech after audio was sent gives `serverContent.interrupted:
//!   true` first; 500 ms of silence after speech, `realtimeInput.audioStreamEnd` or
//!   `activityEnd` give `serverContent.turnComplete: true` (once per turn).
//!   `clientContent` with `turnComplete: true` gets a text part `"echo: <text>"` and
//!   `turnComplete`.
//! - **Resumption**: a `setup` with `sessionResumption` gets a
//!   `sessionResumptionUpdate {newHandle: "standin-resume-…", resumable: true}` after
//!   `setupComplete`; a `setup` resuming one of those handles is counted
//!   ([`ProviderStats::resumed_sessions`](super::ProviderStats::resumed_sessions)).
//!   With [`Knobs::gemini_go_away_after_secs`], `goAway {timeLeft: "5s"}` follows that long
//!   after `setupComplete` (the stand-in does not close by itself after it).
//! - **Transcripts**: each whole second of input gives `serverContent.inputTranscription
//!   {text: "audio S.S-E.Es"}` (always, whether or not `inputAudioTranscription` was set up);
//!   `audioStreamEnd` flushes the rest with `finished: true`.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::audio::{LinearResampler, SpeechDetector, SpeechEvent, TranscriptClock, WireFormat};
use super::{
    Knobs, Opened, Outbox, Rejection, Session, SessionCounters, Upgrade, b64_decode, b64_encode,
};

/// The upgrade path of the Gemini API (v1beta).
pub const PATH: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// The same method under v1alpha.
pub const PATH_V1ALPHA: &str =
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent";

/// Output audio rate, in Hz.
pub const OUTPUT_RATE_HZ: u32 = 24_000;

/// Input rate when the mime type names none, in Hz.
pub const DEFAULT_INPUT_RATE_HZ: u32 = 16_000;

/// Close code for a message the server rejects (◐).
pub const INVALID_CLOSE_CODE: u16 = 1007;

const OUTPUT_MIME: &str = "audio/pcm;rate=24000";

/// What the stand-in's resumption handles start with (a `setup` resuming one is counted).
const RESUMPTION_HANDLE_PREFIX: &str = "standin-resume-";

/// The `timeLeft` of the stand-in's `goAway` (it never closes by itself after it).
const GO_AWAY_TIME_LEFT: &str = "5s";

pub(crate) fn authorized(upgrade: &Upgrade<'_>) -> bool {
    upgrade.query("key").is_some_and(|key| !key.is_empty())
        || upgrade
            .query("access_token")
            .is_some_and(|key| !key.is_empty())
        || upgrade
            .header("x-goog-api-key")
            .is_some_and(|key| !key.trim().is_empty())
        || upgrade.authorization("Token").is_some()
}

pub(crate) fn reject(status: StatusCode, message: &str) -> Rejection {
    let google_status = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::TOO_MANY_REQUESTS => "RESOURCE_EXHAUSTED",
        _ => "INVALID_ARGUMENT",
    };
    Rejection {
        status,
        body:
            json!({"error": {"code": status.as_u16(), "message": message, "status": google_status}})
                .to_string(),
        headers: Vec::new(),
    }
}

pub(crate) fn open(_upgrade: &Upgrade<'_>, knobs: &Knobs) -> Result<Opened, Rejection> {
    Ok(Opened {
        session: Box::new(GeminiSession::new(
            knobs.gemini_binary_frames,
            knobs.gemini_go_away_after(),
        )),
        headers: Vec::new(),
    })
}

/// `object[camel]` or `object[snake]`.
fn field<'a>(object: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake))
}

/// The rate in a `audio/pcm;rate=R` mime type, or why it is refused.
fn input_rate(mime: &str) -> Result<u32, String> {
    let mut parts = mime.split(';').map(str::trim);
    if parts.next() != Some("audio/pcm") {
        return Err(format!("Unsupported mime type {mime}"));
    }
    let rate = parts
        .find_map(|part| part.strip_prefix("rate="))
        .map(str::parse::<u32>);
    match rate {
        None => Ok(DEFAULT_INPUT_RATE_HZ),
        Some(Ok(rate)) if (8_000..=48_000).contains(&rate) => Ok(rate),
        Some(_) => Err(format!("Unsupported sample rate in {mime}")),
    }
}

/// One Live session.
pub(crate) struct GeminiSession {
    /// Send JSON in binary frames ([`Knobs::gemini_binary_frames`]).
    binary_frames: bool,
    setup_done: bool,
    input_rate_hz: u32,
    carry: Option<u8>,
    resampler: LinearResampler,
    vad: SpeechDetector,
    clock: TranscriptClock,
    audio_ms_before: u64,
    /// Model audio was sent in the current turn (a turn ends with `turnComplete`).
    turn_open: bool,
    /// When to send `goAway`, after `setupComplete` ([`Knobs::gemini_go_away_after_secs`]).
    go_away_after: Option<Duration>,
    /// When `setupComplete` went out (on the connection's clock), and whether `goAway` did.
    setup_at: Option<Duration>,
    go_away_sent: bool,
    /// The client asked for session resumption (`setup.sessionResumption`): hand out handles.
    resumption: bool,
    /// The `setup` resumed a session with one of this stand-in's handles.
    resumed: bool,
    /// The connection's clock, as of the last tick.
    since_open: Duration,
    /// Model audio was ever sent.
    sent_audio: bool,
}

impl GeminiSession {
    pub(crate) fn new(binary_frames: bool, go_away_after: Option<Duration>) -> Self {
        GeminiSession {
            binary_frames,
            go_away_after,
            setup_at: None,
            go_away_sent: false,
            resumption: false,
            resumed: false,
            since_open: Duration::ZERO,
            setup_done: false,
            input_rate_hz: DEFAULT_INPUT_RATE_HZ,
            carry: None,
            resampler: LinearResampler::new(DEFAULT_INPUT_RATE_HZ, OUTPUT_RATE_HZ),
            vad: SpeechDetector::new(DEFAULT_INPUT_RATE_HZ),
            clock: TranscriptClock::new(DEFAULT_INPUT_RATE_HZ, false),
            audio_ms_before: 0,
            turn_open: false,
            sent_audio: false,
        }
    }

    fn send(&self, out: &mut Outbox, message: Value) {
        if self.binary_frames {
            out.json_binary(message);
        } else {
            out.json(message);
        }
    }

    fn turn_complete(&mut self, out: &mut Outbox) {
        if self.turn_open {
            self.turn_open = false;
            self.send(out, json!({"serverContent": {"turnComplete": true}}));
        }
    }

    fn audio(&mut self, blob: &Value, out: &mut Outbox) {
        let mime = field(blob, "mimeType", "mime_type")
            .and_then(Value::as_str)
            .unwrap_or("audio/pcm");
        let rate = match input_rate(mime) {
            Ok(rate) => rate,
            Err(reason) => return out.close(INVALID_CLOSE_CODE, reason),
        };
        let Some(bytes) = blob
            .get("data")
            .and_then(Value::as_str)
            .and_then(b64_decode)
        else {
            return out.close(INVALID_CLOSE_CODE, "Invalid base64 in audio data");
        };
        if rate != self.input_rate_hz {
            self.audio_ms_before += self.clock.audio_ms();
            self.input_rate_hz = rate;
            self.carry = None;
            self.resampler = LinearResampler::new(rate, OUTPUT_RATE_HZ);
            self.vad = SpeechDetector::new(rate);
            self.clock = TranscriptClock::new(rate, false);
        }
        let mut samples = Vec::with_capacity(bytes.len() / 2 + 1);
        WireFormat::pcm16(rate).decode_into(&bytes, &mut self.carry, &mut samples);
        if samples.is_empty() {
            return;
        }
        let speech = self.vad.push(&samples);
        for event in &speech {
            if matches!(event, SpeechEvent::Started { .. }) && self.sent_audio {
                self.send(out, json!({"serverContent": {"interrupted": true}}));
            }
        }
        let echoed = self.resampler.process(&samples);
        if !echoed.is_empty() {
            self.turn_open = true;
            self.sent_audio = true;
            let data = b64_encode(&WireFormat::pcm16(OUTPUT_RATE_HZ).encode(&echoed));
            self.send(
                out,
                json!({"serverContent": {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}]}}}),
            );
        }
        for transcript in self.clock.advance(samples.len() as u64) {
            self.send(
                out,
                json!({"serverContent": {"inputTranscription": {"text": transcript.text}}}),
            );
        }
        if speech
            .iter()
            .any(|event| matches!(event, SpeechEvent::Stopped { .. }))
        {
            self.turn_complete(out);
        }
    }

    fn realtime_input(&mut self, input: &Value, out: &mut Outbox) {
        if let Some(audio) = input.get("audio") {
            self.audio(audio, out);
        }
        if let Some(chunks) = field(input, "mediaChunks", "media_chunks").and_then(Value::as_array)
        {
            for chunk in chunks {
                self.audio(chunk, out);
            }
        }
        let stream_end = field(input, "audioStreamEnd", "audio_stream_end")
            .and_then(Value::as_bool)
            == Some(true);
        if stream_end {
            if let Some(transcript) = self.clock.flush() {
                self.send(out, json!({"serverContent": {"inputTranscription": {"text": transcript.text, "finished": true}}}));
            }
            self.turn_complete(out);
        }
        if field(input, "activityEnd", "activity_end").is_some() {
            self.turn_complete(out);
        }
    }

    fn handle(&mut self, message: &Map<String, Value>, out: &mut Outbox) {
        const FIELDS: [(&str, &str); 4] = [
            ("setup", "setup"),
            ("clientContent", "client_content"),
            ("realtimeInput", "realtime_input"),
            ("toolResponse", "tool_response"),
        ];
        let present: Vec<(&str, &Value)> = FIELDS
            .iter()
            .filter_map(|(camel, snake)| {
                message
                    .get(*camel)
                    .or_else(|| message.get(*snake))
                    .map(|value| (*camel, value))
            })
            .collect();
        let [(kind, body)] = present.as_slice() else {
            return out.close(INVALID_CLOSE_CODE,
                "Request must contain exactly one of setup, clientContent, realtimeInput, toolResponse");
        };
        match (*kind, self.setup_done) {
            ("setup", false) => {
                if body
                    .get("model")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return out.close(INVALID_CLOSE_CODE, "setup.model is required");
                }
                self.setup_done = true;
                let resumption = field(body, "sessionResumption", "session_resumption");
                self.resumption = resumption.is_some();
                self.resumed = resumption
                    .and_then(|r| r.get("handle"))
                    .and_then(Value::as_str)
                    .is_some_and(|handle| handle.starts_with(RESUMPTION_HANDLE_PREFIX));
                self.setup_at = Some(self.since_open);
                self.send(out, json!({"setupComplete": {}}));
                if self.resumption {
                    let handle = format!("{RESUMPTION_HANDLE_PREFIX}{}", uuid::Uuid::now_v7());
                    self.send(
                        out,
                        json!({"sessionResumptionUpdate": {"newHandle": handle, "resumable": true}}),
                    );
                }
            }
            ("setup", true) => out.close(INVALID_CLOSE_CODE, "setup may only be sent once"),
            (_, false) => out.close(INVALID_CLOSE_CODE, "setup must be the first message"),
            ("realtimeInput", true) => self.realtime_input(body, out),
            ("clientContent", true)
                if field(body, "turnComplete", "turn_complete").and_then(Value::as_bool)
                    == Some(true) =>
            {
                let text: Vec<&str> = body
                    .get("turns")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|turn| turn.get("parts").and_then(Value::as_array))
                    .flatten()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect();
                self.send(
                    out,
                    json!({"serverContent": {"modelTurn": {"parts": [
                        {"text": format!("echo: {}", text.join(" "))}]}}}),
                );
                self.send(out, json!({"serverContent": {"turnComplete": true}}));
                self.turn_open = false;
            }
            _ => {}
        }
    }
}

impl Session for GeminiSession {
    fn on_open(&mut self, _out: &mut Outbox) {}

    fn on_text(&mut self, text: &str, out: &mut Outbox) {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(message)) => self.handle(&message, out),
            _ => out.close(INVALID_CLOSE_CODE, "Invalid JSON payload received."),
        }
    }

    fn on_binary(&mut self, bytes: &[u8], out: &mut Outbox) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.on_text(text, out),
            Err(_) => out.close(INVALID_CLOSE_CODE, "Invalid JSON payload received."),
        }
    }

    fn on_tick(&mut self, since_open: Duration, out: &mut Outbox) {
        self.since_open = since_open;
        if let (Some(after), Some(setup_at)) = (self.go_away_after, self.setup_at)
            && !self.go_away_sent
            && since_open >= setup_at + after
        {
            self.go_away_sent = true;
            self.send(out, json!({"goAway": {"timeLeft": GO_AWAY_TIME_LEFT}}));
        }
    }

    fn counters(&self) -> SessionCounters {
        SessionCounters {
            audio_received_ms: self.audio_ms_before + self.clock.audio_ms(),
            pongs_received: 0,
            resumed: u64::from(self.resumed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(samples: &[i16], snake: bool) -> String {
        let data = b64_encode(&WireFormat::pcm16(16_000).encode(samples));
        if snake {
            json!({"realtime_input": {"media_chunks": [{"mime_type": "audio/pcm;rate=16000", "data": data}]}}).to_string()
        } else {
            json!({"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": data}}})
                .to_string()
        }
    }

    /// Setup first, then audio comes back at 24 kHz, sample-exact every third sample; both
    /// casings work; a transcript per second; stream end completes the turn.
    #[test]
    fn setup_echo_transcript() {
        let mut session = GeminiSession::new(false, None);
        let mut out = Outbox::default();
        session.on_text(
            r#"{"setup":{"model":"models/gemini-live-2.5-flash-preview"}}"#,
            &mut out,
        );
        assert_eq!(out.take_json(), vec![json!({"setupComplete": {}})]);
        let samples: Vec<i16> = (0..16_000).map(|i| ((i * 7) % 600) as i16).collect();
        session.on_text(&audio(&samples[..8_000], false), &mut out);
        session.on_text(&audio(&samples[8_000..], true), &mut out);
        let events = out.take_json();
        let mut echoed = Vec::new();
        for event in &events[..2] {
            let part = &event["serverContent"]["modelTurn"]["parts"][0]["inlineData"];
            assert_eq!(part["mimeType"], OUTPUT_MIME);
            let bytes = b64_decode(part["data"].as_str().unwrap()).unwrap();
            echoed.extend(
                bytes
                    .chunks_exact(2)
                    .map(|p| i16::from_le_bytes([p[0], p[1]])),
            );
        }
        assert!(echoed.len() >= 23_998);
        for (j, sample) in echoed.iter().step_by(3).enumerate() {
            assert_eq!(*sample, samples[2 * j]);
        }
        assert_eq!(
            events[2]["serverContent"]["inputTranscription"]["text"],
            "audio 0.0-1.0s"
        );
        session.on_text(r#"{"realtimeInput":{"audioStreamEnd":true}}"#, &mut out);
        assert_eq!(
            out.take_json(),
            vec![json!({"serverContent": {"turnComplete": true}})]
        );
    }

    /// A setup asking for resumption gets a handle; `goAway` goes out once, the configured
    /// time after `setupComplete`; a setup with one of the stand-in's handles is counted.
    #[test]
    fn resumption_handles_and_go_away() {
        let after = Duration::from_secs(2);
        let mut session = GeminiSession::new(false, Some(after));
        let mut out = Outbox::default();
        session.on_tick(Duration::from_secs(1), &mut out);
        session.on_text(
            r#"{"setup":{"model":"m","sessionResumption":{}}}"#,
            &mut out,
        );
        let sent = out.take_json();
        assert_eq!(sent[0], json!({"setupComplete": {}}));
        let handle = sent[1]["sessionResumptionUpdate"]["newHandle"]
            .as_str()
            .expect("a handle")
            .to_owned();
        assert!(handle.starts_with(RESUMPTION_HANDLE_PREFIX), "{handle}");
        assert_eq!(sent[1]["sessionResumptionUpdate"]["resumable"], true);
        session.on_tick(Duration::from_millis(2_900), &mut out);
        assert!(out.take_json().is_empty(), "not before setup + 2 s");
        session.on_tick(Duration::from_secs(3), &mut out);
        assert_eq!(out.take_json(), vec![json!({"goAway": {"timeLeft": "5s"}})]);
        session.on_tick(Duration::from_secs(9), &mut out);
        assert!(out.take_json().is_empty(), "only once");
        assert_eq!(session.counters().resumed, 0);

        let mut resumed = GeminiSession::new(false, None);
        let setup = json!({"setup": {"model": "m", "sessionResumption": {"handle": handle}}});
        resumed.on_text(&setup.to_string(), &mut out);
        assert_eq!(resumed.counters().resumed, 1);
    }

    /// Audio before setup, two fields, garbage: close 1007.
    #[test]
    fn protocol_violations_close_1007() {
        for bad in [
            audio(&[0; 10], false),
            r#"{"setup":{"model":"m"},"realtimeInput":{}}"#.into(),
            "nope".into(),
            r#"{"setup":{}}"#.into(),
        ] {
            let mut session = GeminiSession::new(false, None);
            let mut out = Outbox::default();
            session.on_text(&bad, &mut out);
            assert_eq!(
                out.close.as_ref().map(|c| c.0),
                Some(INVALID_CLOSE_CODE),
                "{bad}"
            );
        }
        assert_eq!(input_rate("audio/pcm"), Ok(16_000));
        assert_eq!(input_rate("audio/pcm; rate=24000"), Ok(24_000));
        assert!(input_rate("audio/opus").is_err());
    }
}
