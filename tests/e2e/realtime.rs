//! `GET /v1/realtime`, OpenAI-Realtime-compatible, end to end.
//!
//! What they prove:
//!
//! - the official **OpenAI Python SDK**, unmodified (tests/sdk/openai_realtime.py, run with
//!   `$VOXROUTE_SDK_PYTHON`), pointed at voxroute by its base URL alone and holding a voxroute
//!   key, streams speech at real time and gets the stand-in's echo back as
//!   `response.output_audio.delta`s (most of its voiced 20 ms windows match what was sent),
//!   with the caller's transcripts, turn events and `response.done`, through routes to the
//!   **openai**, **gemini** and **elevenlabs** stand-ins (`model` naming a provider or a
//!   route), in `audio/pcm` 24 kHz and in `audio/pcmu`; the session's record names the
//!   provider;
//! - a route that **fails over mid-stream** keeps the SDK receiving audio, and tells it with
//!   `voxroute.provider_switched`;
//! - **bad input** gets a clear `error` event and the session goes on: malformed JSON, bad
//!   base64, an unsupported audio format or session field, an event voxroute cannot carry,
//!   a binary frame; an oversized frame closes the socket (`CLIENT_ERROR`); a bad key gets
//!   `401` and an unknown model `400` before the upgrade; a client that never sends audio is
//!   closed with `IDLE_TIMEOUT`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use uuid::Uuid;
use voxroute_codecs::SampleRate;
use voxroute_codecs::resample::StreamResampler;
use voxroute_loadtest::standin::{FailMode, Knobs};

use crate::harness::{
    NativeCaller, Setup, TempDir, WAIT, mulaw, pcm16_bytes, pcm16_samples, speech_8k, standin_with,
    unmulaw,
};
use crate::providers::{ELEVENLABS_TABLE, matching_windows, router_for};

/// The endpoint.
const REALTIME: &str = "/v1/realtime";

/// Share of the voiced 20 ms windows sent that must come back (the stand-ins echo).
const MIN_MATCHING: f64 = 0.9;

/// The format the SDK asks for in its `session.update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `audio/pcm`, 24 kHz PCM16.
    Pcm,
    /// `audio/pcmu`, 8 kHz mu-law.
    Pcmu,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Pcm => "pcm",
            Format::Pcmu => "pcmu",
        }
    }

    /// 8 kHz speech in this format.
    fn encode(self, speech_8k: &[i16]) -> Vec<u8> {
        match self {
            Format::Pcm => pcm16_bytes(&resample(
                speech_8k,
                SampleRate::HZ_8000,
                SampleRate::HZ_24000,
            )),
            Format::Pcmu => mulaw(speech_8k),
        }
    }

    /// Audio in this format, back at 8 kHz.
    fn decode(self, bytes: &[u8]) -> Vec<i16> {
        match self {
            Format::Pcm => resample(
                &pcm16_samples(bytes),
                SampleRate::HZ_24000,
                SampleRate::HZ_8000,
            ),
            Format::Pcmu => unmulaw(bytes),
        }
    }
}

/// `pcm` from one rate to another, 20 ms at a time (a partial last frame is dropped).
fn resample(pcm: &[i16], from: SampleRate, to: SampleRate) -> Vec<i16> {
    let mut resampler = StreamResampler::new(from, to).expect("a resampler");
    let mut out = Vec::with_capacity(pcm.len() * to.hz() as usize / from.hz() as usize);
    let mut frame = vec![0i16; to.samples_per_frame()];
    for chunk in pcm.chunks_exact(from.samples_per_frame()) {
        resampler
            .process_frame(chunk, &mut frame)
            .expect("one frame");
        out.extend_from_slice(&frame);
    }
    out
}

/// What the SDK script reports, and the audio it received (in its format).
struct SdkRun {
    report: Value,
    audio: Vec<u8>,
}

impl SdkRun {
    fn count(&self, event: &str) -> u64 {
        self.report["event_counts"][event].as_u64().unwrap_or(0)
    }

    fn session_id(&self) -> Uuid {
        self.report["session"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "session.created carries voxroute's session id: {}",
                    self.report
                )
            })
    }

    fn list(&self, field: &str) -> Vec<Value> {
        self.report[field].as_array().cloned().unwrap_or_default()
    }
}

/// The Python with the SDKs of tests/sdk/requirements.txt (scripts/test sets it).
fn sdk_python() -> String {
    std::env::var("VOXROUTE_SDK_PYTHON").expect(
        "VOXROUTE_SDK_PYTHON must name a Python with tests/sdk/requirements.txt installed \
         (scripts/test sets it)",
    )
}

/// Runs tests/sdk/openai_realtime.py against `setup`'s router: `speech` (8 kHz) plus a second
/// of silence (so the stand-ins' turn detection ends the turn) in `format`, on `model`.
async fn run_sdk(setup: &Setup, key: &str, model: &str, format: Format, speech: &[i16]) -> SdkRun {
    let dir = TempDir::new();
    let input = dir.path().join("input.raw");
    let output = dir.path().join("output.raw");
    let mut audio = speech.to_vec();
    audio.extend(std::iter::repeat_n(0i16, 8_000));
    std::fs::write(&input, format.encode(&audio)).expect("writing the input audio");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_realtime.py");
    let mut command = Command::new(sdk_python());
    command
        .arg(script)
        .args(["--base-url", &setup.router.http_url("/v1")])
        .args(["--key", key, "--model", model, "--format", format.name()])
        .arg("--audio")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        // The SDK must not find a proxy or a real key of the host's.
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("NO_PROXY", "*");
    let result = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the SDK run joins")
        .expect("the SDK's Python starts");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the SDK script prints JSON ({e}): {stdout}"));
    let audio = std::fs::read(&output).expect("the SDK script wrote the audio it received");
    SdkRun { report, audio }
}

/// Proves the unmodified OpenAI SDK works through voxroute to each speech-to-speech
/// stand-in: `session.created` first (naming the provider), its `session.update` answered,
/// at least 90% of the voiced speech windows echoed back as audio deltas in the format asked
/// for, the caller's transcripts, the turn's `response.done`, no `error`; the record names the
/// provider and the realtime endpoint. `model` is a provider name for openai and elevenlabs
/// and a route name for gemini.
#[tokio::test]
async fn openai_sdk_streams_through_each_provider() {
    let (addr, _stats) = standin_with(Knobs::default()).await;
    let config = format!("{ELEVENLABS_TABLE}[routes.live]\nproviders = [\"gemini\"]\n");
    let setup = router_for(addr, Some(&config)).await;
    let (_key_id, key) = setup.key("realtime-sdk", None).await;
    let speech = speech_8k(2.0);
    for (model, provider, format) in [
        ("openai", "openai", Format::Pcm),
        ("openai", "openai", Format::Pcmu),
        ("live", "gemini", Format::Pcmu),
        ("elevenlabs", "elevenlabs", Format::Pcm),
    ] {
        let what = format!("{model} ({provider}, {})", format.name());
        let run = run_sdk(&setup, &key, model, format, &speech).await;
        let back = format.decode(&run.audio);
        let matching = matching_windows(&speech, &back);
        println!(
            "{what}: {} bytes back for {} sent, {:.0}% of voiced windows match; events {}",
            run.audio.len(),
            run.report["audio_bytes_sent"],
            matching * 100.0,
            run.report["event_counts"]
        );
        assert_eq!(run.report["first_event"], "session.created", "{what}");
        assert_eq!(run.report["session"]["model"], provider, "{what}");
        assert_eq!(run.count("session.updated"), 1, "{what}");
        assert!(run.list("errors").is_empty(), "{what}: {}", run.report);
        assert!(run.report["closed"].is_null(), "{what}: {}", run.report);
        assert!(
            matching >= MIN_MATCHING,
            "{what}: {:.2} of windows match",
            matching
        );
        assert!(run.count("response.created") >= 1, "{what}");
        assert!(
            !run.list("input_transcripts").is_empty(),
            "{what}: the caller's transcripts: {}",
            run.report
        );
        match provider {
            "openai" => {
                assert!(
                    run.count("input_audio_buffer.speech_started") >= 1,
                    "{what}"
                );
                assert!(
                    run.count("input_audio_buffer.speech_stopped") >= 1,
                    "{what}"
                );
                assert!(run.count("response.done") >= 1, "{what}");
            }
            "gemini" => assert!(run.count("response.done") >= 1, "{what}"),
            _ => assert!(
                !run.list("reply_transcripts").is_empty(),
                "{what}: the agent's words: {}",
                run.report
            ),
        }
        let row = setup.ended(run.session_id()).await;
        assert_eq!(row.provider, provider, "{what}: {row:#?}");
        assert_eq!(row.endpoint, REALTIME, "{what}: {row:#?}");
        assert_eq!(
            row.close_reason.as_deref(),
            Some("CLIENT_HANGUP"),
            "{what}: {row:#?}"
        );
        assert!(row.audio_in_ms >= 2_000, "{what}: {row:#?}");
    }
}

/// Proves failover under the SDK: on a route of two OpenAI stand-ins whose first drops every
/// connection 1.5 s in, the SDK is told with `voxroute.provider_switched` (from, to, reason)
/// and keeps receiving audio: what came back covers at least half of the voiced windows of
/// the last two seconds, which were spoken after the drop; no `error`; the record shows one
/// failover.
#[tokio::test]
async fn openai_sdk_keeps_receiving_audio_across_a_failover() {
    let (first, _) = standin_with(Knobs {
        fail_after_secs: Some(1.5),
        fail_mode: FailMode::Close,
        ..Knobs::default()
    })
    .await;
    let (second, _) = standin_with(Knobs::default()).await;
    let config = format!(
        "[providers.oa-a]\nkind = \"openai\"\nurl = \"ws://{first}\"\n\
         [providers.oa-b]\nkind = \"openai\"\nurl = \"ws://{second}\"\n\
         [routes.s2s]\nproviders = [\"oa-a\", \"oa-b\"]\n"
    );
    let setup = router_for(first, Some(&config)).await;
    let (_key_id, key) = setup.key("realtime-failover", None).await;
    let speech = speech_8k(4.0);
    let run = run_sdk(&setup, &key, "s2s", Format::Pcmu, &speech).await;
    println!(
        "failover: {} bytes back for {} sent; events {}",
        run.audio.len(),
        run.report["audio_bytes_sent"],
        run.report["event_counts"]
    );
    assert_eq!(
        run.list("provider_switches"),
        vec![json!({"from": "oa-a", "to": "oa-b", "reason": "PROVIDER_ERROR"})],
        "{}",
        run.report
    );
    assert!(run.list("errors").is_empty(), "{}", run.report);
    // Everything spoken after the switch came back from oa-b (with the replay's echo on
    // top): the audio did not stop.
    let sent = run.report["audio_bytes_sent"].as_u64().unwrap();
    let sent_before = run.report["audio_bytes_sent_before_switch"]
        .as_u64()
        .unwrap();
    let back_after = run.report["audio_bytes_after_switch"].as_u64().unwrap();
    println!(
        "failover: {back_after} bytes back after the switch for {} sent after it",
        sent - sent_before
    );
    assert!(
        sent - sent_before >= 8_000,
        "the switch came at least a second before the end"
    );
    assert!(
        back_after * 10 >= (sent - sent_before) * 9,
        "{back_after} bytes back after the switch for {} sent",
        sent - sent_before
    );
    // And it is the caller's speech: the echo matches what was sent (the replay repeats the
    // audio before the drop, so windows are looked for anywhere nearby).
    let back = unmulaw(&run.audio);
    assert!(matching_windows(&speech[..8_000], &back) >= MIN_MATCHING);
    let row = setup.ended(run.session_id()).await;
    assert_eq!(row.failovers, 1, "{row:#?}");
    assert_eq!(row.providers_tried, ["oa-a", "oa-b"], "{row:#?}");
}

/// A raw client of the endpoint (the SDK hides the wire): text frames in, events out.
async fn raw_client(setup: &Setup, key: &str, model: &str) -> NativeCaller {
    let url = setup.router.ws_url(&format!("{REALTIME}?model={model}"));
    let caller = NativeCaller::connect(&url, Some(key))
        .await
        .expect("the realtime upgrade succeeds");
    caller
        .conn
        .wait_event("session.created", |e| e["type"] == "session.created")
        .await;
    caller
}

/// Waits for the `error` event with `error.code` = `code` (answering client event
/// `event_id`, when given), and returns it.
async fn wait_error(caller: &NativeCaller, code: &str, event_id: Option<&str>) -> Value {
    caller
        .conn
        .wait_event(&format!("an error `{code}` for {event_id:?}"), |e| {
            e["type"] == "error"
                && e["error"]["code"] == code
                && event_id.is_none_or(|id| e["error"]["event_id"] == id)
        })
        .await
}

/// Proves every bad-input path of the endpoint: each bad event gets an `error` event with a
/// stable `code` (the client's `event_id` echoed, `param` naming the field where there is
/// one) and the session goes on (a good `session.update` is answered afterwards and audio
/// still echoes); an oversized frame closes the socket with 1008 `CLIENT_ERROR`; a bad key
/// gets `401` and an unknown model `400` before any upgrade.
#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (addr, _stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (_key_id, key) = setup.key("realtime-bad", None).await;
    let mut caller = raw_client(&setup, &key, "openai").await;
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("{not json", "malformed_json", None),
        (r#"{"event_id":"e1"}"#, "missing_field", Some("type")),
        (
            r#"{"type":"input_audio_buffer.append","event_id":"e2","audio":"!!not base64!!"}"#,
            "bad_base64",
            None,
        ),
        (
            r#"{"type":"session.update","event_id":"e3","session":{"audio":{"input":{"format":{"type":"audio/pcm","rate":16000}}}}}"#,
            "invalid_field",
            Some("session.audio.input.format"),
        ),
        (
            r#"{"type":"session.update","event_id":"e4","session":{"audio":{"input":{"format":{"type":"audio/opus"}}}}}"#,
            "invalid_field",
            Some("session.audio.input.format"),
        ),
        (
            r#"{"type":"session.update","event_id":"e5","session":{"instructions":"Be brief."}}"#,
            "unsupported_field",
            Some("session.instructions"),
        ),
        (
            r#"{"type":"response.create","event_id":"e6","response":{"instructions":"Greet."}}"#,
            "unsupported_event",
            None,
        ),
        (
            r#"{"type":"no.such_event","event_id":"e7"}"#,
            "unknown_event",
            None,
        ),
    ];
    for (text, code, param) in cases {
        caller.conn.text(text).await;
        let event_id = text
            .split("\"event_id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        let event = wait_error(&caller, code, event_id).await;
        println!("{text} -> {event}");
        let error = &event["error"];
        assert_eq!(error["type"], "invalid_request_error", "{event}");
        assert!(
            !error["message"].as_str().unwrap_or("").is_empty(),
            "{event}"
        );
        assert_eq!(error["param"].as_str(), param, "{event}");
        assert_eq!(error["event_id"].as_str(), event_id, "{event}");
    }
    caller.conn.binary(vec![0u8; 320]).await;
    wait_error(&caller, "binary_frame", None).await;
    // The session is unharmed: a good update is answered, and audio echoes.
    caller
        .conn
        .text(json!({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}).to_string())
        .await;
    let updated = caller
        .conn
        .wait_event("session.updated", |e| e["type"] == "session.updated")
        .await;
    assert_eq!(
        updated["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    let tone = voxroute_codecs::measure::sine(440.0, 8_000, 8_000.0, 1_600);
    let audio = base64_of(&mulaw(&tone));
    caller
        .conn
        .text(json!({"type": "input_audio_buffer.append", "audio": audio}).to_string())
        .await;
    caller
        .conn
        .wait_event("an audio delta", |e| {
            e["type"] == "response.output_audio.delta"
        })
        .await;
    // One frame over the limit: the socket is closed.
    let oversized = json!({"type": "input_audio_buffer.append", "audio": "A".repeat(70 * 1024)});
    let _ = caller
        .conn
        .send(tungstenite::Message::text(oversized.to_string()))
        .await;
    let closed = caller.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "CLIENT_ERROR")
    );

    // Before any upgrade: a bad key, an unknown model.
    let url = setup.router.ws_url(&format!("{REALTIME}?model=openai"));
    match NativeCaller::connect(&url, Some("vxr_not_a_real_key")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(other) => panic!("a bad key: {other}"),
        Ok(_) => panic!("a bad key was upgraded"),
    }
    let url = setup
        .router
        .ws_url(&format!("{REALTIME}?model=gpt-nothing"));
    match NativeCaller::connect(&url, Some(&key)).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        Err(other) => panic!("an unknown model: {other}"),
        Ok(_) => panic!("an unknown model was upgraded"),
    }
}

/// Proves the idle timeout (`[session] idle_timeout_secs = 1`) on the endpoint: a client that
/// never sends audio gets `voxroute.session_ended` with `IDLE_TIMEOUT` and a close frame with
/// that reason, and the record says so.
#[tokio::test]
async fn idle_client_is_closed_with_idle_timeout() {
    let (addr, _stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, Some("[session]\nidle_timeout_secs = 1\n")).await;
    let (_key_id, key) = setup.key("realtime-idle", None).await;
    let caller = raw_client(&setup, &key, "openai").await;
    let created = caller
        .conn
        .wait_event("session.created", |e| e["type"] == "session.created")
        .await;
    let ended = caller
        .conn
        .wait_event("voxroute.session_ended", |e| {
            e["type"] == "voxroute.session_ended"
        })
        .await;
    assert_eq!(ended["reason"], "IDLE_TIMEOUT");
    let closed = caller.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "IDLE_TIMEOUT")
    );
    let id: Uuid = created["session"]["id"].as_str().unwrap().parse().unwrap();
    let row = setup.ended(id).await;
    assert_eq!(row.close_reason.as_deref(), Some("IDLE_TIMEOUT"));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
