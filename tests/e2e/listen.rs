//! `GET /v1/listen`, Deepgram-compatible live transcription, end to end: a real router, the
//! stand-in providers over their real wire protocols, and the official Deepgram Python SDK,
//! unmodified (`tests/sdk/deepgram_listen.py`, run with `$VOXROUTE_SDK_PYTHON`).
//!
//! What they prove:
//!
//! - the SDK, pointed at voxroute by its environment's base URL and given a voxroute key,
//!   streams the speech fixture and receives as `Results` exactly the final transcripts the
//!   Deepgram stand-in produces for the audio it received, then a `Metadata` whose hash and
//!   duration are those of the audio sent, then close 1000; the record is `CLIENT_HANGUP`;
//! - on a route `deepgram → gemini` whose Deepgram stand-in fails 1.5 s in, the SDK keeps
//!   receiving `Results` (now Gemini's transcription of the caller) before its audio is over,
//!   and the stream ends cleanly; the record shows the failover;
//! - routed to OpenAI Realtime, the SDK gets the caller's words (the stand-in's transcription
//!   of all the audio it received, the last part committed at `CloseStream`) and none of the
//!   model's;
//! - `Finalize` reaches Deepgram: the audio so far comes back final before the stream ends;
//! - bad input gets a clear answer: bad query values, a provider that cannot transcribe and an
//!   unknown route are refused with `400` before the upgrade (Deepgram's `dg-error` header and
//!   body), a bad or missing key with `401` (the SDK's `Token` scheme included); malformed
//!   text and oversized frames close with 1008 `DATA-0000`, while an unknown message type and
//!   a too-long audio message are only skipped; a client that sends nothing is closed after
//!   10 s with 1011 `NET-0001`, unless it sends `KeepAlive`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite;
use voxroute_loadtest::standin::audio::TranscriptClock;
use voxroute_loadtest::standin::{FailMode, Knobs, Provider};

use crate::harness::{
    NativeCaller, RouterOptions, Setup, TestDb, WAIT, pcm16_bytes, speech_8k, standin_with,
};
use crate::providers::router_for;

/// The endpoint.
const LISTEN: &str = "/v1/listen";

/// The rate the Deepgram adapter sends at (the stand-in counts seconds of it).
const DEEPGRAM_RATE_HZ: u32 = 16_000;

/// The rate the OpenAI adapter sends at.
const OPENAI_RATE_HZ: u32 = 24_000;

/// The speech fixture the SDK streams (8 kHz mono PCM16).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("codecs/tests/fixtures/speech/speech-8k.wav")
}

/// The fixture's PCM bytes, as the SDK sends them.
fn fixture_pcm_bytes() -> Vec<u8> {
    let mut reader = hound::WavReader::open(fixture()).expect("the fixture opens");
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    pcm16_bytes(&samples)
}

/// Runs the SDK script with `args` and returns its report.
async fn run_sdk(args: Value) -> Value {
    let python = std::env::var("VOXROUTE_SDK_PYTHON").expect(
        "VOXROUTE_SDK_PYTHON must name a Python with tests/sdk/requirements.txt installed \
         (scripts/test sets it)",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/deepgram_listen.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(args.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the SDK script runs");
    let started = std::time::Instant::now();
    // tokio's `process` feature is off in this workspace: poll the child, killing it if it
    // hangs, so a stuck client fails the test instead of blocking it.
    while child.try_wait().expect("the SDK script's status").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("the waiting task")
        .expect("the SDK script's output");
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("SDK report: {}", String::from_utf8_lossy(&output.stdout));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the SDK script's report is JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The SDK's arguments for the router at `setup`.
fn sdk_args(setup: &Setup, key: &str, model: &str, interim_results: bool) -> Value {
    serde_json::json!({
        "url": setup.router.ws_url(""),
        "api_key": key,
        "model": model,
        "wav": fixture(),
        "chunk_ms": 100,
        "interim_results": interim_results,
    })
}

/// The final transcripts a stand-in produces for `audio_ms` of audio at `rate_hz`, ended by
/// a flush (Deepgram's `Finalize`, Gemini's stream end).
fn expected_finals(audio_ms: u64, rate_hz: u32) -> Vec<String> {
    let mut clock = TranscriptClock::new(rate_hz, false);
    let samples = audio_ms * u64::from(rate_hz) / 1_000;
    let mut finals: Vec<String> = clock.advance(samples).into_iter().map(|t| t.text).collect();
    finals.extend(clock.flush().map(|t| t.text));
    finals
}

/// The SDK streams the fixture to the Deepgram stand-in through voxroute and gets its
/// transcripts as `Results`, then `Metadata` for the audio it sent, then a normal close.
#[tokio::test]
async fn deepgram_sdk_streams_through_voxroute() {
    let (addr, stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("listen-sdk", None).await;

    let report = run_sdk(sdk_args(&setup, &key, "deepgram", false)).await;

    let received_ms = stats.provider(Provider::Deepgram).audio_received_ms;
    let sent = fixture_pcm_bytes();
    let sent_ms = sent.len() as u64 * 1_000 / (2 * 8_000);
    assert!(
        received_ms + 20 >= sent_ms && received_ms <= sent_ms,
        "the stand-in got the audio: {received_ms} ms of {sent_ms} ms"
    );
    let results = report["results"].as_array().expect("results");
    let finals: Vec<&str> = results
        .iter()
        .filter(|r| r["is_final"] == true)
        .map(|r| r["transcript"].as_str().unwrap())
        .collect();
    assert_eq!(
        finals,
        expected_finals(received_ms, DEEPGRAM_RATE_HZ),
        "report: {report}"
    );
    assert!(results.iter().all(|r| r["model"] == "deepgram"));
    // Spans follow the audio: each final starts where the last one ended.
    let mut end = 0.0;
    for result in results {
        let start = result["start"].as_f64().unwrap();
        assert!((start - end).abs() < 1e-6, "contiguous spans: {report}");
        end = start + result["duration"].as_f64().unwrap();
    }
    assert!(end <= sent_ms as f64 / 1_000.0 + 1e-6, "{report}");

    let metadata = &report["metadata"];
    let expected_sha: String = Sha256::digest(&sent)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(metadata["sha256"], expected_sha, "{report}");
    assert_eq!(
        metadata["duration"].as_f64(),
        Some(sent_ms as f64 / 1_000.0)
    );
    assert_eq!(metadata["channels"], 1);
    assert_eq!(report["close_code"], 1000, "{report}");

    let record = &setup.ended_for_key(key_id, 1).await[0];
    assert_eq!(metadata["request_id"], record.id.to_string());
    assert_eq!(record.endpoint, LISTEN);
    assert_eq!(record.provider, "deepgram");
    assert_eq!(record.close_reason.as_deref(), Some("CLIENT_HANGUP"));
    assert!(record.audio_in_ms >= 3_000, "{}", record.audio_in_ms);
}

/// Routed to OpenAI Realtime, the SDK gets the caller's words as `Results`: the stand-in's
/// transcription of each whole second of audio it received, then of the rest (committed at
/// `CloseStream`), and none of the model's own (voxroute asks OpenAI for input transcription
/// and no answers).
#[tokio::test]
async fn openai_transcribes_for_the_sdk() {
    let (addr, stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("listen-openai", None).await;

    let report = run_sdk(sdk_args(&setup, &key, "openai", false)).await;

    let received_ms = stats.provider(Provider::OpenAi).audio_received_ms;
    assert!(
        received_ms >= 3_000,
        "the stand-in got the audio: {received_ms} ms"
    );
    let results = report["results"].as_array().expect("results");
    let finals: Vec<&str> = results
        .iter()
        .filter(|r| r["is_final"] == true)
        .map(|r| r["transcript"].as_str().unwrap())
        .collect();
    // Whole seconds as they come, then the rest: `CloseStream` commits it, and voxroute
    // waits for its transcript before closing.
    assert_eq!(
        finals,
        expected_finals(received_ms, OPENAI_RATE_HZ),
        "report: {report}"
    );
    assert!(results.iter().all(|r| r["model"] == "openai"), "{report}");
    assert!(report["metadata"].is_object(), "{report}");
    assert_eq!(report["close_code"], 1000, "{report}");

    let record = &setup.ended_for_key(key_id, 1).await[0];
    assert_eq!(record.endpoint, LISTEN);
    assert_eq!(record.provider, "openai");
    assert_eq!(record.close_reason.as_deref(), Some("CLIENT_HANGUP"));
}

/// A route `deepgram → gemini` whose Deepgram stand-in fails mid-stream: the SDK keeps
/// receiving `Results` (Gemini's transcription of the caller) while it still streams, and
/// the stream ends cleanly.
#[tokio::test]
async fn failover_keeps_results_flowing() {
    let failing = Knobs {
        fail_after_secs: Some(1.5),
        fail_mode: FailMode::Close,
        ..Knobs::default()
    };
    let (deepgram, _) = standin_with(failing).await;
    let (gemini, gemini_stats) = standin_with(Knobs::default()).await;
    let setup = failover_router(deepgram, gemini).await;
    let (key_id, key) = setup.key("listen-failover", None).await;

    let report = run_sdk(sdk_args(&setup, &key, "stt", true)).await;

    let results = report["results"].as_array().expect("results");
    let models: Vec<&str> = results
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    let first_gemini = models
        .iter()
        .position(|m| *m == "gemini")
        .unwrap_or_else(|| panic!("Gemini's results reach the SDK: {report}"));
    assert!(
        first_gemini > 0 && models[..first_gemini].iter().all(|m| *m == "deepgram"),
        "Deepgram first, then Gemini: {models:?}"
    );
    assert!(
        models[first_gemini..].iter().all(|m| *m == "gemini"),
        "{models:?}"
    );
    // Gemini transcribed the caller (the replay included): its texts are the stand-in's
    // spans of the audio it received.
    let gemini_texts: Vec<&str> = results[first_gemini..]
        .iter()
        .map(|r| r["transcript"].as_str().unwrap())
        .collect();
    assert!(
        gemini_texts.iter().all(|t| t.starts_with("audio ")),
        "{gemini_texts:?}"
    );
    // Mid-stream: Gemini's results came while the SDK was still sending audio.
    let audio_done_at = report["audio_done_at"].as_f64().expect("audio_done_at");
    assert!(
        results[first_gemini..]
            .iter()
            .any(|r| r["at"].as_f64().unwrap() < audio_done_at),
        "{report}"
    );
    assert!(gemini_stats.provider(Provider::Gemini).audio_received_ms >= 3_000);
    assert!(report["metadata"].is_object(), "{report}");
    assert_eq!(report["close_code"], 1000, "{report}");

    let record = &setup.ended_for_key(key_id, 1).await[0];
    assert_eq!(record.failovers, 1);
    assert_eq!(record.providers_tried, ["deepgram", "gemini"]);
    assert_eq!(record.close_reason.as_deref(), Some("CLIENT_HANGUP"));
}

/// A router with Deepgram at `deepgram`, Gemini at `gemini`, and the route `stt` over both.
async fn failover_router(deepgram: SocketAddr, gemini: SocketAddr) -> Setup {
    let env = vec![
        ("VOXROUTE_DEEPGRAM_URL".into(), format!("ws://{deepgram}")),
        ("DEEPGRAM_API_KEY".into(), "test".into()),
        ("VOXROUTE_GEMINI_URL".into(), format!("ws://{gemini}")),
        ("GEMINI_API_KEY".into(), "test".into()),
    ];
    let options = RouterOptions {
        config: Some("[routes.stt]\nproviders = [\"deepgram\", \"gemini\"]\n".to_owned()),
        env,
        ..RouterOptions::default()
    };
    Setup::new(TestDb::sqlite(), options).await
}

/// The upgrade's refusal: status, `dg-error` header, body.
fn refusal(error: tungstenite::Error) -> (u16, Option<String>, Value) {
    let tungstenite::Error::Http(response) = error else {
        panic!("an HTTP refusal, not {error}");
    };
    let dg_error = response
        .headers()
        .get("dg-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    (response.status().as_u16(), dg_error, body)
}

/// Opens `/v1/listen?{query}` with `key` as a bearer token.
async fn open(
    setup: &Setup,
    query: &str,
    key: Option<&str>,
) -> Result<NativeCaller, tungstenite::Error> {
    NativeCaller::connect(&setup.router.ws_url(&format!("{LISTEN}?{query}")), key).await
}

/// Everything wrong in the request is refused before the upgrade, with a clear code.
#[tokio::test]
async fn bad_requests_are_refused_before_the_upgrade() {
    let (addr, _) = standin_with(Knobs::default()).await;
    let config = "[routes.mixed]\nproviders = [\"deepgram\", \"echo\"]\n";
    let setup = router_for(addr, Some(config)).await;
    let (_, key) = setup.key("listen-bad", None).await;
    let good = "model=deepgram&encoding=linear16&sample_rate=16000";
    for (query, code) in [
        ("model=deepgram&sample_rate=16000", "missing_encoding"),
        (
            "model=deepgram&encoding=opus&sample_rate=48000",
            "unsupported_encoding",
        ),
        (
            "model=deepgram&encoding=wav&sample_rate=16000",
            "unknown_encoding",
        ),
        ("model=deepgram&encoding=linear16", "missing_sample_rate"),
        (
            "model=deepgram&encoding=linear16&sample_rate=abc",
            "bad_sample_rate",
        ),
        (
            "model=deepgram&encoding=mulaw&sample_rate=16000",
            "bad_audio_format",
        ),
        (&format!("{good}&channels=2"), "unsupported_channels"),
        (&format!("{good}&interim_results=maybe"), "bad_boolean"),
        (&format!("{good}&provider=echo"), "cannot_transcribe"),
        (&format!("{good}&route=mixed"), "cannot_transcribe"),
        (&format!("{good}&route=nowhere"), "unknown_route"),
        (
            &format!("{good}&route=mixed&provider=deepgram"),
            "provider_and_route",
        ),
    ] {
        let error = open(&setup, query, Some(&key))
            .await
            .err()
            .unwrap_or_else(|| panic!("{query} is refused"));
        let (status, dg_error, body) = refusal(error);
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["err_code"], code, "{query}: {body}");
        assert_eq!(dg_error.as_deref(), body["err_msg"].as_str(), "{query}");
    }
    for presented in [Some("vxr_not_a_real_key"), None] {
        let error = open(&setup, good, presented).await.err().expect("refused");
        assert_eq!(refusal(error).0, 401, "{presented:?}");
    }
    // The SDK's own `Authorization: Token` with a bad key: the SDK reports the 401.
    let report = run_sdk(sdk_args(&setup, "vxr_not_a_real_key", "deepgram", false)).await;
    assert_eq!(report["error_status"], 401, "{report}");
    assert_eq!(report["results"], serde_json::json!([]));
}

/// Bad frames after the upgrade: malformed text and oversized frames end the stream with
/// Deepgram's `DATA-0000`; an unknown message type and an over-long audio message are skipped
/// and the stream goes on to a clean end.
#[tokio::test]
async fn bad_frames_get_deepgram_answers() {
    let (addr, _) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("listen-frames", None).await;
    let query = "model=deepgram&encoding=linear16&sample_rate=8000";
    let speech = pcm16_bytes(&speech_8k(1.0));

    let mut malformed = open(&setup, query, Some(&key)).await.expect("upgrade");
    malformed.conn.binary(speech[..3_200].to_vec()).await;
    malformed.conn.text("this is not JSON").await;
    let closed = malformed.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "DATA-0000"));

    let mut oversized = open(&setup, query, Some(&key)).await.expect("upgrade");
    oversized.conn.binary(speech[..3_200].to_vec()).await;
    let _ = oversized
        .conn
        .send(tungstenite::Message::binary(vec![0u8; 70 * 1024]))
        .await;
    let closed = oversized.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1008, "DATA-0000"));

    let mut skipped = open(&setup, query, Some(&key)).await.expect("upgrade");
    skipped.conn.text(r#"{"type":"Configure"}"#).await;
    // 600 ms in one message: over the 500 ms limit, skipped.
    skipped.conn.binary(vec![0u8; 9_600]).await;
    for chunk in speech.chunks(1_600) {
        skipped.conn.binary(chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    skipped.conn.text(r#"{"type":"Finalize"}"#).await;
    skipped.conn.text(r#"{"type":"CloseStream"}"#).await;
    let closed = skipped.conn.wait_closed(WAIT).await;
    assert_eq!(closed.code, 1000, "{closed:?}");
    let metadata = skipped
        .conn
        .wait_event("Metadata", |e| e["type"] == "Metadata")
        .await;
    // Only the good audio counts.
    assert_eq!(metadata["duration"].as_f64(), Some(1.0), "{metadata}");
    assert!(
        skipped
            .conn
            .events()
            .iter()
            .any(|e| e["type"] == "Results" && e["is_final"] == true),
        "the stream kept transcribing"
    );

    let records = setup.ended_for_key(key_id, 3).await;
    let mut reasons: Vec<&str> = records
        .iter()
        .map(|r| r.close_reason.as_deref().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["CLIENT_ERROR", "CLIENT_ERROR", "CLIENT_HANGUP"]);
}

/// `Finalize` reaches Deepgram: the audio so far comes back as a final result at once,
/// before the stream ends (without it the stand-in finalizes only whole seconds).
#[tokio::test]
async fn finalize_flushes_deepgram() {
    let (addr, _) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (_, key) = setup.key("listen-finalize", None).await;
    let query = "model=deepgram&encoding=linear16&sample_rate=8000";
    let mut caller = open(&setup, query, Some(&key)).await.expect("upgrade");
    for chunk in pcm16_bytes(&speech_8k(0.5)).chunks(1_600) {
        caller.conn.binary(chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caller.conn.text(r#"{"type":"Finalize"}"#).await;
    let result = caller
        .conn
        .wait_event("a final result", |e| {
            e["type"] == "Results" && e["is_final"] == true
        })
        .await;
    assert_eq!(
        result["channel"]["alternatives"][0]["transcript"],
        "audio 0.0-0.5s"
    );
    assert!(caller.conn.inbox(|inbox| inbox.closed.is_none()));
    caller.conn.text(r#"{"type":"CloseStream"}"#).await;
    assert_eq!(caller.conn.wait_closed(WAIT).await.code, 1000);
}

/// A client that sends nothing is closed after Deepgram's 10 s with `NET-0001`; one that
/// sends `KeepAlive` stays.
#[tokio::test]
async fn idle_streams_close_unless_kept_alive() {
    let (addr, _) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("listen-idle", None).await;
    let query = "model=deepgram&encoding=mulaw&sample_rate=8000";

    let idle = open(&setup, query, Some(&key)).await.expect("upgrade");
    let mut kept = open(&setup, query, Some(&key)).await.expect("upgrade");
    let keepalive = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            kept.conn.text(r#"{"type":"KeepAlive"}"#).await;
        }
    };
    let (closed, ()) = tokio::join!(idle.conn.wait_closed(Duration::from_secs(15)), keepalive);
    assert_eq!((closed.code, closed.reason.as_str()), (1011, "NET-0001"));
    let waited = closed.at - idle.conn.opened_at;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(13),
        "{waited:?}"
    );
    // 15 s without audio, kept alive: still open, and ends cleanly.
    assert!(kept.conn.inbox(|inbox| inbox.closed.is_none()));
    kept.conn.text(r#"{"type":"CloseStream"}"#).await;
    let closed = kept.conn.wait_closed(WAIT).await;
    assert_eq!(closed.code, 1000);

    let records = setup.ended_for_key(key_id, 2).await;
    let mut reasons: Vec<&str> = records
        .iter()
        .map(|r| r.close_reason.as_deref().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["CLIENT_HANGUP", "IDLE_TIMEOUT"]);
}
