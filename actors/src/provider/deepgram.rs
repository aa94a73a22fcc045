//! `deepgram`: the adapter for Deepgram live streaming speech-to-text (`/v1/listen`).
//!
//! It owns Deepgram's wire protocol for one connection: the URL and its query parameters, the
//! `Authorization` header, raw PCM16 audio as binary frames, the `KeepAlive` / `Finalize` /
//! `CloseStream` control messages, the JSON results, and the close reasons Deepgram uses to
//! report errors. It does no I/O and reads no environment: the app builds a
//! [`DeepgramSettings`] (key from `DEEPGRAM_API_KEY`, base URL from `VOXROUTE_DEEPGRAM_URL`)
//! and hands it to [`DeepgramAdapter::new`].
//!
//! # The protocol as this adapter speaks it
//!
//! - **Connect**: `{base_url}/v1/listen?model=…&encoding=linear16&sample_rate=…&channels=1
//!   &interim_results=…&punctuate=…&smart_format=…[&endpointing=…]&vad_events=…[&language=…]
//!   [&tag=…]` with `Authorization: Token <key>`. No setup message: the adapter is ready as
//!   soon as the socket is up.
//! - **Audio out**: one binary frame of little-endian PCM16 per 20 ms command. Empty frames
//!   are never sent (Deepgram documents that an empty binary frame can close the stream).
//! - **Keep-alive**: every [`KEEPALIVE_CHECK_INTERVAL`] the adapter sends
//!   `{"type":"KeepAlive"}` unless audio went out since the previous check, so the server
//!   (which closes after 10 s without audio or `KeepAlive`) never sees more than two
//!   intervals of silence.
//! - **Flush** ([`ProviderCommand::Flush`], a `/v1/listen` caller's `Finalize`):
//!   `{"type":"Finalize"}`; the stream goes on.
//! - **Finish**: `{"type":"Finalize"}` (flush buffered audio) then `{"type":"CloseStream"}`;
//!   Deepgram sends its last `Results`, a `Metadata`, and closes. The adapter does not close
//!   the socket itself, so those last results arrive.
//! - **In**: `Results` with a non-blank `channel.alternatives[0].transcript` become
//!   [`ProviderEvent::Transcript`] (`is_final` from the message's `is_final`; an interim result
//!   is replaced by later ones); `SpeechStarted` (sent with `vad_events=true`) becomes
//!   [`ProviderEvent::SpeechStarted`]; `UtteranceEnd`, `Metadata`, blank results and unknown
//!   types are ignored and counted. Deepgram produces **no audio**.
//! - **Errors**: Deepgram reports them in the close frame's reason (`DATA-0000`, `NET-0000`,
//!   `NET-0001`); [`on_close`](ProviderAdapter::on_close) turns them into a [`ProviderError`]
//!   that says what happened and whether retrying can help.
//!
//! # Unverified wire facts, coded defensively
//!
//! The reference marks these as unconfirmed, so the adapter does not depend on them:
//! - whether the bad-audio close (`DATA-0000`) uses code 1002 or 1008: the adapter keys on the
//!   reason text, whatever the code, and treats 1002/1003/1007/1008 without a known reason as
//!   a rejection too;
//! - that a normal end after `CloseStream` uses code 1000: 1000 and a status-less close are
//!   both a normal end;
//! - field presence in `Results`: every field but `channel` is optional and unknown fields
//!   are ignored; a missing `is_final` falls back to `speech_final`, then to interim.
//!
//! Per-frame allocations: one `Vec<u8>` per outbound audio frame (it becomes the socket's
//! message without a further copy, so no scratch buffer is needed), one `String` per
//! transcript event.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;
use serde_json::error::Category;

use super::adapter::{
    AdapterOutput, ConnectRequest, Endpoint, ProviderAdapter, ProviderError, WsFrame, WsFrameRef,
};
use super::wire::{default_on_close, push_query_value, send_pcm16_binary, url_with_path};
use super::{ProviderCommand, ProviderEvent};

/// Deepgram's production WebSocket base URL; the adapter appends `/v1/listen`.
pub const DEFAULT_URL: &str = "wss://api.deepgram.com";

/// The model asked for when the settings do not name another.
pub const DEFAULT_MODEL: &str = "nova-3";

/// The default rate of the PCM16 Deepgram takes ([`DeepgramSettings::sample_rate_hz`] may
/// choose another; it must then match the route's provider rate).
pub const INPUT_SAMPLE_RATE_HZ: u32 = 16_000;

/// The rate of audio Deepgram gives back: the same as the input, for the route's spec only.
/// Deepgram is speech-to-text and never sends audio.
pub const OUTPUT_SAMPLE_RATE_HZ: u32 = INPUT_SAMPLE_RATE_HZ;

/// The default silence after which Deepgram ends an utterance (`endpointing`), in
/// milliseconds; Deepgram's own default (10 ms) is meant for dictation, its docs suggest
/// 300–500 ms for conversations.
pub const DEFAULT_ENDPOINTING_MS: u32 = 300;

/// How often the adapter checks whether a `KeepAlive` is due. Deepgram closes a stream that
/// has seen neither audio nor `KeepAlive` for 10 s; a `KeepAlive` goes out on a check that
/// saw no audio since the previous one, so the longest silence the server sees is two
/// intervals (6 s), within its 3–5 s advice for idle periods.
pub const KEEPALIVE_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// The control messages, as Deepgram's docs spell them.
const KEEPALIVE_MESSAGE: &str = r#"{"type":"KeepAlive"}"#;
const FINALIZE_MESSAGE: &str = r#"{"type":"Finalize"}"#;
const CLOSE_STREAM_MESSAGE: &str = r#"{"type":"CloseStream"}"#;

/// How to reach Deepgram and what to ask of it, built by the app from its configuration.
///
/// `Debug` hides the API key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeepgramSettings {
    /// `wss://` (or `ws://`, for a stand-in) base URL without a trailing path; `/v1/listen` is
    /// appended. [`DEFAULT_URL`] unless `VOXROUTE_DEEPGRAM_URL` overrides it.
    pub base_url: String,
    /// The API key, sent as `Authorization: Token <key>`; `None` sends no `Authorization`
    /// header (a stand-in server that needs none).
    pub api_key: Option<String>,
    /// The `model` query parameter, e.g. `nova-3` or `nova-2-phonecall`.
    pub model: String,
    /// The `language` query parameter (`en`, `en-US`, `multi`...); `None` leaves the model's
    /// default.
    pub language: Option<String>,
    /// The rate of the PCM16 the session sends (`sample_rate`); [`INPUT_SAMPLE_RATE_HZ`] by
    /// default. It must equal the route's provider rate.
    pub sample_rate_hz: u32,
    /// `interim_results`: whether Deepgram sends interim (revisable) transcripts before the
    /// final one.
    pub interim_results: bool,
    /// `punctuate`: punctuation and capitalisation in transcripts.
    pub punctuate: bool,
    /// `smart_format`: numbers, dates and the like formatted for reading.
    pub smart_format: bool,
    /// `endpointing`: the silence, in milliseconds, after which Deepgram marks the end of
    /// speech; `None` leaves Deepgram's default (10 ms).
    pub endpointing_ms: Option<u32>,
    /// `vad_events`: whether Deepgram sends `SpeechStarted`, which voxroute uses for
    /// barge-in.
    pub vad_events: bool,
    /// `tag`: a label Deepgram attaches to the request for usage reports; the app passes
    /// voxroute's session id so provider-side usage can be matched to session records.
    pub tag: Option<String>,
}

impl DeepgramSettings {
    /// Settings for Deepgram's production service with `api_key`: [`DEFAULT_MODEL`] at
    /// [`INPUT_SAMPLE_RATE_HZ`], interim results, punctuation and smart formatting on,
    /// [`DEFAULT_ENDPOINTING_MS`], VAD events on, no language and no tag.
    pub fn new(api_key: Option<String>) -> Self {
        DeepgramSettings {
            base_url: DEFAULT_URL.to_owned(),
            api_key,
            model: DEFAULT_MODEL.to_owned(),
            language: None,
            sample_rate_hz: INPUT_SAMPLE_RATE_HZ,
            interim_results: true,
            punctuate: true,
            smart_format: true,
            endpointing_ms: Some(DEFAULT_ENDPOINTING_MS),
            vad_events: true,
            tag: None,
        }
    }
}

impl fmt::Debug for DeepgramSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepgramSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("model", &self.model)
            .field("language", &self.language)
            .field("sample_rate_hz", &self.sample_rate_hz)
            .field("interim_results", &self.interim_results)
            .field("punctuate", &self.punctuate)
            .field("smart_format", &self.smart_format)
            .field("endpointing_ms", &self.endpointing_ms)
            .field("vad_events", &self.vad_events)
            .field("tag", &self.tag)
            .finish()
    }
}

/// The Deepgram adapter for one connection.
#[derive(Debug)]
pub struct DeepgramAdapter {
    /// What to connect to; fixed for the connection.
    settings: DeepgramSettings,
    /// Set by every non-empty audio frame sent, cleared by each keep-alive check: a
    /// `KeepAlive` is due only when a whole interval passed without audio.
    audio_since_keepalive_check: bool,
    /// Set once `Finish` was encoded: nothing (not even a `KeepAlive`) may follow
    /// `CloseStream`.
    finished: bool,
}

impl DeepgramAdapter {
    /// An adapter for one connection described by `settings`.
    pub fn new(settings: DeepgramSettings) -> Self {
        DeepgramAdapter {
            settings,
            audio_since_keepalive_check: false,
            finished: false,
        }
    }

    /// The `/v1/listen` URL with its query string (which holds no secret: the key goes in a
    /// header).
    fn listen_url(&self) -> String {
        let settings = &self.settings;
        let mut url = url_with_path(&settings.base_url, "/v1/listen");
        url.push_str("?model=");
        push_query_value(&mut url, &settings.model);
        // Writing to a `String` cannot fail; the results are discarded for that reason.
        let _ = write!(
            url,
            "&encoding=linear16&sample_rate={}&channels=1&interim_results={}&punctuate={}\
             &smart_format={}",
            settings.sample_rate_hz,
            settings.interim_results,
            settings.punctuate,
            settings.smart_format,
        );
        if let Some(endpointing_ms) = settings.endpointing_ms {
            let _ = write!(url, "&endpointing={endpointing_ms}");
        }
        let _ = write!(url, "&vad_events={}", settings.vad_events);
        if let Some(language) = &settings.language {
            url.push_str("&language=");
            push_query_value(&mut url, language);
        }
        if let Some(tag) = &settings.tag {
            url.push_str("&tag=");
            push_query_value(&mut url, tag);
        }
        url
    }
}

/// The part of every server message read first: its `type`, borrowed when unescaped.
#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
}

/// A `Results` message: only what voxroute uses; unknown fields are skipped.
#[derive(Deserialize)]
struct ResultsMessage {
    #[serde(default)]
    is_final: Option<bool>,
    #[serde(default)]
    speech_final: Option<bool>,
    channel: ResultsChannel,
}

/// `Results.channel` (an object here; in `SpeechStarted` and `UtteranceEnd` `channel` is an
/// array, which is why the type is read before the rest).
#[derive(Deserialize)]
struct ResultsChannel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

/// One recognition alternative; voxroute uses the first.
#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
}

/// The per-frame error for JSON that could not be read, by what was wrong with it.
fn json_error(err: &serde_json::Error, shape: &'static str) -> ProviderError {
    match err.classify() {
        Category::Data => ProviderError::bad_frame(shape),
        Category::Syntax | Category::Eof | Category::Io => {
            ProviderError::bad_frame("Deepgram sent malformed JSON")
        }
    }
}

impl ProviderAdapter for DeepgramAdapter {
    fn endpoint(&self) -> Endpoint {
        let mut request = ConnectRequest::new(self.listen_url());
        if let Some(key) = &self.settings.api_key {
            request = request.header("Authorization", format!("Token {key}"));
        }
        Endpoint::WebSocket(request)
    }

    // `on_open`: the default (no setup message, `Ready` at once) is Deepgram's protocol.

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        if self.finished {
            return;
        }
        match command {
            ProviderCommand::Audio(samples) => {
                // An empty binary frame can make Deepgram close the stream: none is sent.
                if send_pcm16_binary(&samples, out) {
                    self.audio_since_keepalive_check = true;
                }
            }
            // Speech-to-text has no place for a key press.
            ProviderCommand::Dtmf { .. } => {}
            // The results of the audio so far, now (they may carry `from_finalize`).
            ProviderCommand::Flush => out.send(WsFrame::Text(FINALIZE_MESSAGE.to_owned())),
            ProviderCommand::Finish => {
                self.finished = true;
                out.send(WsFrame::Text(FINALIZE_MESSAGE.to_owned()));
                out.send(WsFrame::Text(CLOSE_STREAM_MESSAGE.to_owned()));
            }
        }
    }

    fn decode(
        &mut self,
        frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let text = match frame {
            WsFrameRef::Text(text) => text,
            WsFrameRef::Binary(_) => {
                return Err(ProviderError::bad_frame(
                    "Deepgram sent a binary frame (it sends JSON text only)",
                ));
            }
        };
        let head: MessageHead<'_> = serde_json::from_str(text).map_err(|err| {
            json_error(
                &err,
                "Deepgram message is not a JSON object with a string type",
            )
        })?;
        match &*head.kind {
            "Results" => {
                let results: ResultsMessage = serde_json::from_str(text).map_err(|err| {
                    json_error(&err, "Deepgram Results message without a valid channel")
                })?;
                let is_final = results.is_final.or(results.speech_final).unwrap_or(false);
                match results.channel.alternatives.into_iter().next() {
                    Some(first) if !first.transcript.trim().is_empty() => {
                        out.emit(ProviderEvent::Transcript {
                            text: first.transcript,
                            is_final,
                        });
                    }
                    // Silence: Deepgram sends results with a blank transcript.
                    _ => out.ignore(),
                }
            }
            "SpeechStarted" => out.emit(ProviderEvent::SpeechStarted),
            // `UtteranceEnd`, `Metadata` and types voxroute does not know.
            _ => out.ignore(),
        }
        Ok(())
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        Some(KEEPALIVE_CHECK_INTERVAL)
    }

    fn on_keepalive(&mut self, out: &mut AdapterOutput) {
        if self.finished {
            return;
        }
        if self.audio_since_keepalive_check {
            self.audio_since_keepalive_check = false;
        } else {
            out.send(WsFrame::Text(KEEPALIVE_MESSAGE.to_owned()));
        }
    }

    /// Deepgram reports errors as the close reason: `DATA-…` (the audio could not be decoded:
    /// not retryable, the same audio fails again), `NET-…` (a timeout: retryable). A close
    /// with a protocol, data or policy code (1002, 1003, 1007, 1008) is a rejection and not
    /// retryable; any other code but 1000 is a retryable failure.
    fn on_close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        _out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let reason = reason.trim();
        let shown_code = code.map_or_else(|| "no code".to_owned(), |code| code.to_string());
        if reason.contains("DATA-") {
            return Err(ProviderError::Provider {
                message: format!(
                    "Deepgram could not decode the audio as linear16 PCM at {} Hz \
                     (close {shown_code}: {reason})",
                    self.settings.sample_rate_hz
                ),
                fatal: true,
            });
        }
        if reason.contains("NET-0000") {
            return Err(ProviderError::Closed {
                code,
                reason: format!(
                    "{reason}: Deepgram produced no result within its timeout \
                     (a Deepgram-side problem, or too little audio)"
                ),
                source: None,
            });
        }
        if reason.contains("NET-0001") {
            return Err(ProviderError::Closed {
                code,
                reason: format!("{reason}: Deepgram received no audio or KeepAlive for 10 s"),
                source: None,
            });
        }
        if reason.contains("NET-") {
            return Err(ProviderError::Closed {
                code,
                reason: format!("{reason}: Deepgram network error"),
                source: None,
            });
        }
        match code {
            Some(1002 | 1003 | 1007 | 1008) => Err(ProviderError::Provider {
                message: format!("Deepgram rejected the stream (close {shown_code}: {reason})"),
                fatal: true,
            }),
            _ => default_on_close(code, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::wire::testing::{
        GOLDEN_PCM16_LE, GOLDEN_SAMPLES, assert_bad_frame, decode_ok, events_and_ignored, text_json,
    };
    use super::*;

    fn settings() -> DeepgramSettings {
        DeepgramSettings {
            base_url: "wss://dg.example.test/".to_owned(),
            language: Some("en-US".to_owned()),
            tag: Some("0193a5c4-session".to_owned()),
            ..DeepgramSettings::new(Some("dg-SECRET".to_owned()))
        }
    }

    fn adapter() -> DeepgramAdapter {
        DeepgramAdapter::new(settings())
    }

    /// Decodes one text frame that must be accepted; returns the events and ignore count.
    fn decode_text(adapter: &mut DeepgramAdapter, text: &str) -> (Vec<ProviderEvent>, u64) {
        events_and_ignored(&decode_ok(adapter, text))
    }

    /// The URL carries exactly the documented query parameters, in a fixed order, with
    /// values percent-encoded; the key travels only in `Authorization: Token`, and neither
    /// the settings' nor the request's `Debug` shows it.
    #[test]
    fn endpoint_url_headers_and_hidden_key() {
        let Endpoint::WebSocket(request) = adapter().endpoint() else {
            panic!("Deepgram is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://dg.example.test/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000\
             &channels=1&interim_results=true&punctuate=true&smart_format=true&endpointing=300\
             &vad_events=true&language=en-US&tag=0193a5c4-session"
        );
        assert_eq!(
            request.headers,
            vec![("Authorization".to_owned(), "Token dg-SECRET".to_owned())]
        );
        let shown = format!("{request:?} {:?}", settings());
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");

        let plain = DeepgramSettings {
            sample_rate_hz: 8_000,
            model: "nova-2 phone&call".to_owned(),
            endpointing_ms: None,
            interim_results: false,
            ..DeepgramSettings::new(None)
        };
        let Endpoint::WebSocket(request) = DeepgramAdapter::new(plain).endpoint() else {
            panic!("Deepgram is a WebSocket");
        };
        assert_eq!(
            request.url,
            "wss://api.deepgram.com/v1/listen?model=nova-2%20phone%26call&encoding=linear16\
             &sample_rate=8000&channels=1&interim_results=false&punctuate=true\
             &smart_format=true&vad_events=true"
        );
        assert!(request.headers.is_empty());
    }

    /// A short conversation on the wire: ready at once with no setup frame, exact PCM16
    /// bytes, `KeepAlive` only after an idle interval, nothing for DTMF or empty audio, then
    /// `Finalize` + `CloseStream` with no close of our own, and silence after that.
    #[test]
    fn outbound_conversation() {
        let mut adapter = adapter();
        let mut out = AdapterOutput::new();
        assert_eq!(adapter.keepalive_interval(), Some(KEEPALIVE_CHECK_INTERVAL));
        adapter.on_open(&mut out);
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        assert!(out.frames().is_empty());
        out.clear();

        adapter.encode(ProviderCommand::Audio(GOLDEN_SAMPLES.to_vec()), &mut out);
        assert_eq!(out.frames(), &[WsFrame::Binary(GOLDEN_PCM16_LE.to_vec())]);
        out.clear();

        // Audio flowed during this interval: no KeepAlive.
        adapter.on_keepalive(&mut out);
        assert!(out.frames().is_empty());
        // Neither empty audio nor DTMF sends anything or counts as audio.
        adapter.encode(ProviderCommand::Audio(Vec::new()), &mut out);
        adapter.encode(ProviderCommand::Dtmf { digit: '5' }, &mut out);
        assert!(out.frames().is_empty());
        // A whole idle interval: KeepAlive, on every idle check.
        adapter.on_keepalive(&mut out);
        adapter.on_keepalive(&mut out);
        let frames: Vec<Value> = out.frames().iter().map(text_json).collect();
        assert_eq!(
            frames,
            vec![json!({"type": "KeepAlive"}), json!({"type": "KeepAlive"})]
        );
        out.clear();

        // A flush (a /v1/listen caller's Finalize) is Deepgram's Finalize, alone.
        adapter.encode(ProviderCommand::Flush, &mut out);
        let frames: Vec<Value> = out.frames().iter().map(text_json).collect();
        assert_eq!(frames, vec![json!({"type": "Finalize"})]);
        out.clear();

        adapter.encode(ProviderCommand::Finish, &mut out);
        let frames: Vec<Value> = out.frames().iter().map(text_json).collect();
        assert_eq!(
            frames,
            vec![json!({"type": "Finalize"}), json!({"type": "CloseStream"})]
        );
        assert!(
            out.close_request().is_none(),
            "Deepgram closes after CloseStream"
        );
        out.clear();

        adapter.on_keepalive(&mut out);
        adapter.encode(ProviderCommand::Audio(vec![1, 2]), &mut out);
        assert!(out.frames().is_empty(), "nothing may follow CloseStream");
    }

    /// Every server message type in the reference's shapes: final and interim results (an
    /// interim one from `is_final: false`, the fallback to `speech_final`), blank results,
    /// `SpeechStarted`, `UtteranceEnd`, `Metadata` and an unknown type.
    #[test]
    fn decodes_server_messages() {
        let mut adapter = adapter();
        let final_result = r#"{"type": "Results", "channel_index": [0, 1], "duration": 1.02,
            "start": 0.0, "is_final": true, "speech_final": true, "from_finalize": false,
            "channel": {"alternatives": [{"transcript": "hello there", "confidence": 0.98,
              "languages": ["en"], "words": [{"word": "hello", "start": 0.08, "end": 0.4,
              "confidence": 0.99, "punctuated_word": "Hello", "speaker": 0}]}]},
            "metadata": {"request_id": "8c8ebea9-0000", "model_uuid": "u",
              "model_info": {"name": "general-nova-3", "version": "2024-01-01.0",
              "arch": "nova-3"}}}"#;
        assert_eq!(
            decode_text(&mut adapter, final_result),
            (
                vec![ProviderEvent::Transcript {
                    text: "hello there".into(),
                    is_final: true
                }],
                0
            )
        );
        let interim = r#"{"type":"Results","is_final":false,"speech_final":false,
            "channel":{"alternatives":[{"transcript":"hel","confidence":0.5}]}}"#;
        assert_eq!(
            decode_text(&mut adapter, interim).0,
            vec![ProviderEvent::Transcript {
                text: "hel".into(),
                is_final: false
            }]
        );
        let endpoint_only = r#"{"type":"Results","speech_final":true,
            "channel":{"alternatives":[{"transcript":"bye"}]}}"#;
        assert_eq!(
            decode_text(&mut adapter, endpoint_only).0,
            vec![ProviderEvent::Transcript {
                text: "bye".into(),
                is_final: true
            }]
        );
        for skipped in [
            r#"{"type":"Results","is_final":true,"channel":{"alternatives":[{"transcript":""}]}}"#,
            r#"{"type":"Results","is_final":false,"channel":{"alternatives":[{"transcript":"  "}]}}"#,
            r#"{"type":"Results","is_final":true,"channel":{"alternatives":[]}}"#,
            r#"{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.39}"#,
            r#"{"type": "Metadata", "transaction_key": "deprecated",
                "request_id": "8c8ebea9-dbec-45fa-a035-e4632cb05b5f",
                "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "created": "2024-08-29T22:37:55.202Z", "duration": 0.0, "channels": 0}"#,
            r#"{"type":"SomethingNew","x":1}"#,
            r#"{"no_type":true}"#,
        ] {
            assert_eq!(decode_text(&mut adapter, skipped), (vec![], 1), "{skipped}");
        }
        assert_eq!(
            decode_text(
                &mut adapter,
                r#"{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 1.27}"#
            ),
            (vec![ProviderEvent::SpeechStarted], 0)
        );
    }

    /// Bad input is a non-fatal, non-retryable protocol error with a precise description,
    /// and produces no event.
    #[test]
    fn bad_frames_are_non_fatal_errors() {
        let mut adapter = adapter();
        let cases: [(WsFrameRef<'_>, &str); 5] = [
            (
                WsFrameRef::Text("{not json"),
                "Deepgram sent malformed JSON",
            ),
            (WsFrameRef::Text(""), "Deepgram sent malformed JSON"),
            (
                WsFrameRef::Text("[1,2,3]"),
                "Deepgram message is not a JSON object with a string type",
            ),
            (
                WsFrameRef::Text(r#"{"type":"Results","is_final":true}"#),
                "Deepgram Results message without a valid channel",
            ),
            (
                WsFrameRef::Binary(&[0, 1, 2]),
                "Deepgram sent a binary frame (it sends JSON text only)",
            ),
        ];
        for (frame, detail) in cases {
            assert_bad_frame(&mut adapter, frame, detail);
        }
        // Results whose channel is an array (the SpeechStarted shape) is a bad frame too.
        let mut out = AdapterOutput::new();
        let err = adapter
            .decode(
                WsFrameRef::Text(r#"{"type":"Results","channel":[0,1]}"#),
                &mut out,
            )
            .unwrap_err();
        assert!(!err.is_fatal());
    }

    /// Close reasons become errors that say what happened: bad audio is fatal and not
    /// retryable, timeouts are retryable, a normal close is the end of the conversation.
    #[test]
    fn close_codes_and_reasons() {
        let mut adapter = adapter();
        let mut out = AdapterOutput::new();
        assert!(adapter.on_close(Some(1000), "", &mut out).is_ok());
        assert!(adapter.on_close(None, "", &mut out).is_ok());

        for code in [1002, 1008] {
            let err = adapter
                .on_close(Some(code), "DATA-0000", &mut out)
                .unwrap_err();
            assert!(err.is_fatal() && !err.is_retryable());
            assert_eq!(
                err.to_string(),
                format!(
                    "provider error: Deepgram could not decode the audio as linear16 PCM at \
                     16000 Hz (close {code}: DATA-0000)"
                )
            );
        }
        let err = adapter
            .on_close(Some(1011), "NET-0000", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1011: NET-0000: Deepgram produced no \
             result within its timeout (a Deepgram-side problem, or too little audio))"
        );
        let err = adapter
            .on_close(Some(1011), "NET-0001", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1011: NET-0001: Deepgram received no \
             audio or KeepAlive for 10 s)"
        );
        let err = adapter
            .on_close(Some(1008), "policy", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "provider error: Deepgram rejected the stream (close 1008: policy)"
        );
        let err = adapter
            .on_close(Some(1011), "overloaded", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1011: overloaded)"
        );
        assert!(out.events().is_empty() && out.frames().is_empty());
    }
}
