//! The stand-in provider server, over real sockets: each protocol's handshake, audio echo
//! and transcript timing as a WebSocket client sees them, every knob, HTTP errors on the
//! upgrade, and the `voxroute-standin` binary's startup line.
//!
//! Timing assertions are loose on purpose (the machine is shared and noisy): they check that
//! an effect happens and in which order, not how many milliseconds it took.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxroute_loadtest::standin::{self, Knobs, Provider, Stats, gemini};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected message may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const DEEPGRAM_QUERY: &str =
    "/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000&channels=1&interim_results=true";

async fn start(knobs: Knobs) -> (SocketAddr, Stats) {
    let stats = Stats::new();
    let (addr, _task) = standin::spawn_with_stats(knobs, stats.clone())
        .await
        .expect("bind the stand-in");
    (addr, stats)
}

/// Opens `path` (with query) with extra request headers.
async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).expect("header value"));
    }
    tokio_tungstenite::connect_async(request).await
}

async fn connect_ok(addr: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> Ws {
    connect(addr, path, headers)
        .await
        .unwrap_or_else(|error| panic!("upgrade of {path} failed: {error}"))
        .0
}

/// The HTTP status an upgrade was refused with.
async fn refused_status(addr: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> u16 {
    match connect(addr, path, headers).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{path}: expected an HTTP error, got {other}"),
        Ok(_) => panic!("{path}: expected an HTTP error, got an upgrade"),
    }
}

/// The next data message (text, or JSON in a binary frame) as JSON; panics on close.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|_| panic!("not JSON: {text}"));
            }
            Message::Binary(bytes) => {
                return serde_json::from_slice(&bytes).expect("JSON in a binary frame");
            }
            Message::Close(frame) => panic!("closed early: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server's close frame, then lets the socket answer it (the closing
/// handshake); returns the frame's code and reason (data before it is skipped).
async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let close = loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .expect("a close in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                break (frame.code.into(), frame.reason.as_str().to_owned());
            }
            Some(Ok(Message::Close(None))) => break (1005, String::new()),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    // Polling on sends our close reply; the stream then ends.
    let _ = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await;
    close
}

/// Reads JSON messages until one satisfies `done`; returns them all (that one last).
async fn read_until(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = next_json(ws).await;
        let stop = done(&message);
        seen.push(message);
        if stop {
            return seen;
        }
    }
}

/// A 440 Hz tone at `rate_hz`, loud enough to count as speech.
fn tone(rate_hz: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = i as f64 / f64::from(rate_hz);
            (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn pcm_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// OpenAI: `session.created` on connect, `session.updated` after `session.update`; audio
/// comes back byte for byte in `response.output_audio.delta` inside `response.created`,
/// after `speech_started`; a transcript arrives after one second of audio; malformed JSON is
/// an `invalid_request_error` event and the session continues.
#[tokio::test]
async fn openai_handshake_echo_and_transcript() {
    let (addr, stats) = start(Knobs::default()).await;
    let mut ws = connect_ok(
        addr,
        "/v1/realtime?model=gpt-realtime",
        &[("authorization", "Bearer sk-test")],
    )
    .await;
    let created = next_json(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(
        created["session"]["audio"]["output"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
            "instructions": "be brief", "audio": {"output": {"voice": "marin"}}}}),
    )
    .await;
    let updated = next_json(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["instructions"], "be brief");

    let audio = tone(24_000, 24_000 * 6 / 5); // 1.2 s
    for frame in audio.chunks(480) {
        let b64 = B64.encode(pcm_bytes(frame));
        send_json(
            &mut ws,
            json!({"type": "input_audio_buffer.append", "audio": b64}),
        )
        .await;
    }
    let events = read_until(&mut ws, |e| {
        e["type"] == "conversation.item.input_audio_transcription.completed"
    })
    .await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        &types[..3],
        [
            "input_audio_buffer.speech_started",
            "response.created",
            "response.output_audio.delta"
        ]
    );
    assert_eq!(events.last().unwrap()["transcript"], "audio 0.0-1.0s");
    let echoed: Vec<u8> = events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .flat_map(|e| B64.decode(e["delta"].as_str().unwrap()).unwrap())
        .collect();
    let sent = pcm_bytes(&audio);
    assert!(
        echoed.len() >= 48_000,
        "a second of echo, got {} bytes",
        echoed.len()
    );
    assert_eq!(echoed, sent[..echoed.len()]);

    ws.send(Message::text("{not json")).await.unwrap();
    let error = read_until(&mut ws, |e| e["type"] == "error").await;
    assert_eq!(
        error.last().unwrap()["error"]["type"],
        "invalid_request_error"
    );
    send_json(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    read_until(&mut ws, |e| e["type"] == "input_audio_buffer.cleared").await;
    ws.close(None).await.unwrap();

    let counted = stats.provider(Provider::OpenAi);
    assert_eq!(counted.connections, 1);
    assert_eq!(counted.audio_received_ms, 1200);
}

/// OpenAI: the browser subprotocol form of the key is accepted and answered with `realtime`;
/// a missing key or model is refused before the upgrade.
#[tokio::test]
async fn openai_subprotocol_auth_and_refusals() {
    let (addr, _) = start(Knobs::default()).await;
    let (mut ws, response) = connect(
        addr,
        "/v1/realtime?model=gpt-realtime",
        &[(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-test",
        )],
    )
    .await
    .expect("subprotocol auth");
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    assert_eq!(
        refused_status(addr, "/v1/realtime?model=gpt-realtime", &[]).await,
        401
    );
    assert_eq!(
        refused_status(addr, "/v1/realtime", &[("authorization", "Bearer k")]).await,
        400
    );
}

/// Deepgram: interim at 0.5 s and final at 1 s (with start/duration), `Finalize` flushes the
/// rest with `from_finalize`, `CloseStream` gives `Metadata` then close 1000.
#[tokio::test]
async fn deepgram_results_finalize_and_close_stream() {
    let (addr, stats) = start(Knobs::default()).await;
    let (mut ws, response) = connect(addr, DEEPGRAM_QUERY, &[("authorization", "Token dg-test")])
        .await
        .expect("upgrade");
    assert!(response.headers().contains_key("dg-request-id"));
    let audio = tone(16_000, 16_000 * 13 / 10); // 1.3 s
    for frame in audio.chunks(320) {
        ws.send(Message::binary(pcm_bytes(frame))).await.unwrap();
    }
    let interim = next_json(&mut ws).await;
    assert_eq!(interim["type"], "Results");
    assert_eq!(interim["is_final"], false);
    assert_eq!(interim["duration"], 0.5);
    assert_eq!(
        interim["channel"]["alternatives"][0]["transcript"],
        "audio 0.0-0.5s"
    );
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["is_final"], true);
    assert_eq!(fin["start"], 0.0);
    assert_eq!(fin["duration"], 1.0);
    assert_eq!(
        fin["channel"]["alternatives"][0]["transcript"],
        "audio 0.0-1.0s"
    );
    send_json(&mut ws, json!({"type": "KeepAlive"})).await;
    send_json(&mut ws, json!({"type": "Finalize"})).await;
    let flushed = next_json(&mut ws).await;
    assert_eq!(flushed["from_finalize"], true);
    assert_eq!(flushed["start"], 1.0);
    assert_eq!(
        flushed["channel"]["alternatives"][0]["transcript"],
        "audio 1.0-1.3s"
    );
    send_json(&mut ws, json!({"type": "CloseStream"})).await;
    let metadata = next_json(&mut ws).await;
    assert_eq!(metadata["type"], "Metadata");
    assert_eq!(metadata["duration"], 1.3);
    assert_eq!(metadata["channels"], 1);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    assert_eq!(stats.provider(Provider::Deepgram).audio_received_ms, 1300);
}

/// Deepgram: bad parameters and a missing key are refused on the upgrade; a control message
/// sent as binary closes 1008 `DATA-0000`; silence past the idle timeout closes 1011
/// `NET-0001`.
#[tokio::test]
async fn deepgram_refusals_bad_audio_and_idle_timeout() {
    let (addr, stats) = start(Knobs::default()).await;
    let auth = [("authorization", "Token dg-test")];
    assert_eq!(refused_status(addr, DEEPGRAM_QUERY, &[]).await, 401);
    assert_eq!(
        refused_status(addr, "/v1/listen?encoding=opus&sample_rate=48000", &auth).await,
        400
    );
    assert_eq!(
        refused_status(addr, "/v1/listen?encoding=linear16", &auth).await,
        400
    );
    assert_eq!(
        refused_status(
            addr,
            "/v1/listen?encoding=linear16&sample_rate=16000&channels=2",
            &auth
        )
        .await,
        400
    );
    assert_eq!(stats.provider(Provider::Deepgram).rejected_upgrades, 4);

    let mut ws = connect_ok(addr, DEEPGRAM_QUERY, &auth).await;
    ws.send(Message::binary(br#"{"type":"KeepAlive"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await, (1008, "DATA-0000".into()));

    let idle = format!("{DEEPGRAM_QUERY}&standin=idle_timeout_ms:300");
    let mut ws = connect_ok(addr, &idle, &auth).await;
    assert_eq!(expect_close(&mut ws).await, (1011, "NET-0001".into()));
}

/// ElevenLabs: `conversation_initiation_metadata` after the client's initiation, audio
/// echoed in `audio` events in the announced format, a `user_transcript` per second, and
/// pings that the stand-in counts when answered.
#[tokio::test]
async fn elevenlabs_metadata_echo_transcript_and_ping() {
    let (addr, stats) = start(Knobs::default()).await;
    let mut ws = connect_ok(
        addr,
        "/v1/convai/conversation?agent_id=agent_1&standin=ping_interval_ms:100",
        &[],
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "conversation_initiation_client_data", "dynamic_variables": {}}),
    )
    .await;
    let metadata = next_json(&mut ws).await;
    assert_eq!(metadata["type"], "conversation_initiation_metadata");
    let event = &metadata["conversation_initiation_metadata_event"];
    assert_eq!(event["agent_output_audio_format"], "pcm_16000");
    assert_eq!(event["user_input_audio_format"], "pcm_16000");

    let audio = tone(16_000, 16_000);
    for chunk in audio.chunks(4_000) {
        send_json(
            &mut ws,
            json!({"user_audio_chunk": B64.encode(pcm_bytes(chunk))}),
        )
        .await;
    }
    let mut echoed = Vec::new();
    let mut pinged = false;
    let mut transcript = None;
    while transcript.is_none() || !pinged {
        let message = next_json(&mut ws).await;
        match message["type"].as_str() {
            Some("audio") => echoed.extend(
                B64.decode(message["audio_event"]["audio_base_64"].as_str().unwrap())
                    .unwrap(),
            ),
            Some("user_transcript") => {
                transcript = Some(message["user_transcription_event"]["user_transcript"].clone())
            }
            Some("ping") => {
                let id = message["ping_event"]["event_id"].clone();
                send_json(&mut ws, json!({"type": "pong", "event_id": id})).await;
                pinged = true;
            }
            _ => {}
        }
    }
    assert_eq!(transcript, Some(json!("audio 0.0-1.0s")));
    assert_eq!(echoed, pcm_bytes(&audio));
    let deadline = Instant::now() + STEP_TIMEOUT;
    while stats.provider(Provider::ElevenLabs).pongs_received == 0 {
        assert!(Instant::now() < deadline, "the pong was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.provider(Provider::ElevenLabs).audio_received_ms, 1000);
    assert_eq!(
        refused_status(addr, "/v1/convai/conversation", &[]).await,
        400,
        "agent_id is required"
    );
}

/// Gemini: audio before `setup` closes 1007; `setup` → `setupComplete`; 16 kHz audio comes
/// back as 24 kHz `inlineData`, sample-exact at every third output sample; transcripts per
/// second; `audioStreamEnd` completes the turn. The binary-frames knob sends the same JSON
/// in binary frames.
#[tokio::test]
async fn gemini_setup_echo_resampled_and_turn() {
    let (addr, stats) = start(Knobs::default()).await;
    let with_key = format!("{}?key=g-test", gemini::PATH);
    let audio = tone(16_000, 16_000);
    let realtime = |samples: &[i16]| {
        json!({"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000",
            "data": B64.encode(pcm_bytes(samples))}}})
    };

    let mut early = connect_ok(addr, &with_key, &[]).await;
    send_json(&mut early, realtime(&audio[..320])).await;
    assert_eq!(expect_close(&mut early).await.0, 1007);

    let mut ws = connect_ok(addr, gemini::PATH, &[("x-goog-api-key", "g-test")]).await;
    send_json(
        &mut ws,
        json!({"setup": {"model": "models/gemini-live-2.5-flash-preview",
        "generationConfig": {"responseModalities": ["AUDIO"]}}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    for frame in audio.chunks(320) {
        send_json(&mut ws, realtime(frame)).await;
    }
    let events = read_until(&mut ws, |e| {
        e["serverContent"]["inputTranscription"]["text"].is_string()
    })
    .await;
    let mut echoed = Vec::new();
    for event in &events[..events.len() - 1] {
        let data = &event["serverContent"]["modelTurn"]["parts"][0]["inlineData"];
        assert_eq!(data["mimeType"], "audio/pcm;rate=24000");
        echoed.extend(pcm_samples(
            &B64.decode(data["data"].as_str().unwrap()).unwrap(),
        ));
    }
    assert!(
        (23_990..=24_000).contains(&echoed.len()),
        "{} samples at 24 kHz",
        echoed.len()
    );
    for (j, sample) in echoed.iter().step_by(3).enumerate() {
        assert_eq!(*sample, audio[2 * j], "output {} is input {}", 3 * j, 2 * j);
    }
    assert_eq!(
        events.last().unwrap()["serverContent"]["inputTranscription"]["text"],
        "audio 0.0-1.0s"
    );
    send_json(
        &mut ws,
        json!({"realtime_input": {"audio_stream_end": true}}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"serverContent": {"turnComplete": true}})
    );
    assert_eq!(stats.provider(Provider::Gemini).audio_received_ms, 1000);

    let binary = format!("{with_key}&standin=gemini_binary_frames");
    let mut ws = connect_ok(addr, &binary, &[]).await;
    send_json(&mut ws, json!({"setup": {"model": "models/m"}})).await;
    let message = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.unwrap();
    assert!(
        matches!(message, Some(Ok(Message::Binary(_)))),
        "{message:?}"
    );
    assert_eq!(refused_status(addr, gemini::PATH, &[]).await, 401);
}

/// Unknown paths get 404 on the upgrade, counted apart from the protocols.
#[tokio::test]
async fn unknown_path_is_404() {
    let (addr, stats) = start(Knobs::default()).await;
    for path in ["/", "/v1/realtime/extra?model=m", "/v2/listen", "/ws/other"] {
        assert_eq!(
            refused_status(addr, path, &[("authorization", "Bearer k")]).await,
            404,
            "{path}"
        );
    }
    assert_eq!(stats.unknown_paths(), 4);
}

/// `refuse_auth` answers 401 on every protocol even with a key; `rate_limit` answers 429;
/// a bad `standin=` override is a 400.
#[tokio::test]
async fn refuse_auth_and_rate_limit_knobs() {
    let (addr, stats) = start(Knobs {
        refuse_auth: true,
        ..Knobs::default()
    })
    .await;
    let gemini_path = format!("{}?key=k", gemini::PATH);
    let cases: [(&str, &[(&'static str, &str)]); 4] = [
        (
            "/v1/realtime?model=gpt-realtime",
            &[("authorization", "Bearer k")],
        ),
        (DEEPGRAM_QUERY, &[("authorization", "Token k")]),
        ("/v1/convai/conversation?agent_id=a", &[("xi-api-key", "k")]),
        (&gemini_path, &[]),
    ];
    for (path, headers) in cases {
        assert_eq!(refused_status(addr, path, headers).await, 401, "{path}");
    }
    for provider in Provider::ALL {
        assert_eq!(stats.provider(provider).rejected_upgrades, 1);
        assert_eq!(stats.provider(provider).connections, 0);
    }

    let (addr, _) = start(Knobs::default()).await;
    let headers = [("authorization", "Bearer k")];
    assert_eq!(
        refused_status(addr, "/v1/realtime?model=m&standin=rate_limit", &headers).await,
        429
    );
    assert_eq!(
        refused_status(
            addr,
            "/v1/realtime?model=m&standin=no_such_knob:1",
            &headers
        )
        .await,
        400
    );
}

/// `fail_after_secs` closes a live connection with 1011; with `fail_mode: drop` the TCP
/// connection ends without a close frame.
#[tokio::test]
async fn fail_after_closes_or_drops() {
    let (addr, stats) = start(Knobs::default()).await;
    let auth = [("authorization", "Bearer k")];
    let mut ws = connect_ok(
        addr,
        "/v1/realtime?model=m&standin=fail_after_secs:0.3",
        &auth,
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    assert_eq!(
        expect_close(&mut ws).await,
        (
            standin::FAIL_CLOSE_CODE,
            standin::FAIL_CLOSE_REASON.to_owned()
        )
    );

    let mut ws = connect_ok(
        addr,
        "/v1/realtime?model=m&standin=fail_after_secs:0.3,fail_mode:drop",
        &auth,
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    let end = tokio::time::timeout(STEP_TIMEOUT, ws.next())
        .await
        .expect("the drop in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected a dropped connection, got {end:?}"
    );
    let deadline = Instant::now() + STEP_TIMEOUT;
    while stats.provider(Provider::OpenAi).connections_ended < 2 {
        assert!(Instant::now() < deadline, "the connections never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `malformed_every: 2` replaces the 2nd, 4th, … server message with broken JSON.
#[tokio::test]
async fn malformed_every_replaces_messages() {
    let (addr, _) = start(Knobs {
        malformed_every: Some(2),
        ..Knobs::default()
    })
    .await;
    let mut ws = connect_ok(
        addr,
        "/v1/realtime?model=m",
        &[("authorization", "Bearer k")],
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    for _ in 0..3 {
        send_json(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    }
    let mut texts = Vec::new();
    while texts.len() < 3 {
        if let Some(Ok(Message::Text(text))) =
            tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.unwrap()
        {
            texts.push(text.as_str().to_owned());
        }
    }
    assert_eq!(texts[0], standin::MALFORMED_MESSAGE);
    assert!(serde_json::from_str::<Value>(&texts[0]).is_err());
    assert_eq!(
        serde_json::from_str::<Value>(&texts[1]).unwrap()["type"],
        "input_audio_buffer.cleared"
    );
    assert_eq!(texts[2], standin::MALFORMED_MESSAGE);
}

/// `latency_ms` delays server messages measurably (loosely: at least most of the delay).
#[tokio::test]
async fn latency_delays_messages() {
    let (addr, _) = start(Knobs::default()).await;
    let auth = [("authorization", "Bearer k")];
    let started = Instant::now();
    let mut ws = connect_ok(addr, "/v1/realtime?model=m&standin=latency_ms:400", &auth).await;
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    let sent = Instant::now();
    send_json(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(
        next_json(&mut ws).await["type"],
        "input_audio_buffer.cleared"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(350),
        "{:?}",
        sent.elapsed()
    );
}

/// Kills the child process when dropped, so a failing assertion leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary prints its address on one stdout line and serves on it.
#[tokio::test]
async fn binary_prints_listen_line_and_serves() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_voxroute-standin"))
        .args(["--listen", "127.0.0.1:0", "--latency-ms", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start voxroute-standin");
    let stdout = child.stdout.take().expect("piped stdout");
    let _guard = KillOnDrop(child);
    let read_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(STEP_TIMEOUT, read_line)
        .await
        .expect("the line in time")
        .expect("the reader task")
        .expect("readable stdout");
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix("voxroute-standin listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .expect("an address");
    let mut ws = connect_ok(
        addr,
        "/v1/realtime?model=m",
        &[("authorization", "Bearer k")],
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "session.created");
    assert_eq!(http_get(addr, "/healthz").await, json!({"status": "ok"}));
    let stats = http_get(addr, "/stats").await;
    assert_eq!(stats["openai"]["connections"], 1);
    assert_eq!(stats["deepgram"]["connections"], 0);
}

/// A plain HTTP/1.1 GET; returns the JSON body of a 200 response.
async fn http_get(addr: SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("read");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    serde_json::from_str(body).expect("a JSON body")
}
