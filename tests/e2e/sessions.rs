//! Whole calls through a running router (`voxroute serve` as a child process), from the
//! caller's socket to the session record in the database.
//!
//! What they prove: real speech sent over Twilio Media Streams (mu-law 8 kHz) and over the
//! native protocol (PCM16 8 kHz) comes back from the built-in echo provider, through the 16 kHz
//! resampler both ways, as the same audio, on SQLite and on PostgreSQL, and the record holds
//! every field right; and that every way a session ends is told to the caller and recorded:
//! idle timeout, server shutdown (SIGTERM), a provider that cannot be reached, closes normally
//! or drops, and a key over its concurrent-session limit (whose slot frees when a call ends).
//! A `ws-pcm` stand-in provider written here (tokio-tungstenite, echoing PCM16 frames) shows
//! audio crossing a real provider socket both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;
use voxroute::store::SessionRow;

use crate::harness::{
    MULAW_FRAME, NATIVE, NativeCaller, RouterOptions, Setup, TWILIO, TestDb, TwilioCaller, WAIT,
    assert_same_audio, mulaw, on_both_backends, pcm16_samples, speech_8k, unmulaw,
};

on_both_backends!(
    echo_round_trip_is_faithful_and_recorded,
    shutdown_ends_live_calls_on_record
);

/// What a record of a finished call must hold, besides what every test checks.
struct Expected<'a> {
    endpoint: &'a str,
    transport: &'a str,
    route: &'a str,
    provider: &'a str,
    close_reason: &'a str,
    api_key_id: Uuid,
    /// Audio the caller sent (and got back), in ms.
    audio_ms: i64,
    /// Upgrade to close, as the caller measured it, in ms.
    wall_ms: i64,
}

/// Asserts every field of `row` against `expected` (audio within two 20 ms frames, duration
/// within 100 ms of the caller's measure).
fn assert_record(row: &SessionRow, expected: &Expected<'_>, what: &str) {
    assert_eq!(row.endpoint, expected.endpoint, "{what}: {row:#?}");
    assert_eq!(row.transport, expected.transport, "{what}: {row:#?}");
    assert_eq!(
        row.route.as_deref(),
        Some(expected.route),
        "{what}: {row:#?}"
    );
    assert_eq!(row.provider, expected.provider, "{what}: {row:#?}");
    assert_eq!(row.providers_tried, [expected.provider], "{what}: {row:#?}");
    assert_eq!(
        row.close_reason.as_deref(),
        Some(expected.close_reason),
        "{what}: {row:#?}"
    );
    assert_eq!(
        row.api_key_id,
        Some(expected.api_key_id),
        "{what}: {row:#?}"
    );
    assert_eq!(
        row.client_ip.as_deref(),
        Some("127.0.0.1"),
        "{what}: {row:#?}"
    );
    assert_eq!(row.failovers, 0, "{what}: {row:#?}");
    for (name, value) in [
        ("audio_in_ms", row.audio_in_ms),
        ("audio_out_ms", row.audio_out_ms),
    ] {
        assert!(
            (value - expected.audio_ms).abs() <= 40,
            "{what}: {name} = {value}, sent {} ms: {row:#?}",
            expected.audio_ms
        );
    }
    let duration = row.duration_ms.expect("an ended record has a duration");
    assert!(
        (duration - expected.wall_ms).abs() <= 100,
        "{what}: duration_ms = {duration}, the caller measured {} ms from upgrade to close",
        expected.wall_ms
    );
    let first = row.first_response_ms.expect("first_response_ms is set");
    assert!(
        (0..1_000).contains(&first),
        "{what}: first_response_ms = {first}"
    );
    let ended_at = row.ended_at.expect("an ended record has ended_at");
    let span = (ended_at - row.started_at).num_milliseconds();
    assert!(
        (span - duration).abs() <= 50,
        "{what}: ended_at − started_at = {span} ms, duration_ms = {duration}"
    );
}

/// Proves the media path end to end with real speech, on both store backends: 2 s of speech
/// sent as Twilio Media Streams (mu-law 8 kHz, at twice real time) and as native PCM16 8 kHz
/// comes back from `echo` (which runs at 16 kHz, so both resamplers are in the path)
/// correlating above 0.9 with what was sent; the caller's `stop` ends the call with
/// `CLIENT_HANGUP` (close 1000); and each record holds endpoint, transport, route, provider,
/// providers tried, the close reason, audio in and out (the 2 s sent, within two frames), a
/// duration within 100 ms of the caller's own measure, the key's id, the client IP and the
/// first response time.
async fn echo_round_trip_is_faithful_and_recorded(db: TestDb) {
    let backend = db.label();
    let setup = Setup::new(db, RouterOptions::default()).await;
    let speech = speech_8k(2.0);
    let audio_ms = i64::try_from(speech.len() / 8).unwrap();

    // Twilio.
    let (key_id, key) = setup.key("twilio echo", None).await;
    let mut twilio = TwilioCaller::connect(&setup.router.ws_url(TWILIO), None)
        .await
        .expect("upgrade");
    twilio.start(&[("api_key", &key)]).await;
    let sent = mulaw(&speech);
    twilio.stream(&sent, Duration::from_millis(10)).await;
    twilio
        .conn
        .wait_audio(sent.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    twilio
        .conn
        .wait_quiet(Duration::from_millis(200), WAIT)
        .await;
    let closed = twilio.hang_up().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let wall_ms = i64::try_from((closed.at - twilio.conn.opened_at).as_millis()).unwrap();
    let (lag, corr) = assert_same_audio(
        &unmulaw(&sent),
        &unmulaw(&twilio.conn.audio()),
        &format!("{backend}: Twilio echo"),
    );
    println!("{backend}: Twilio echo: lag {lag} samples, correlation {corr:.4}, {wall_ms} ms");
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_record(
        &row,
        &Expected {
            endpoint: TWILIO,
            transport: "telephony",
            route: "default",
            provider: "echo",
            close_reason: "CLIENT_HANGUP",
            api_key_id: key_id,
            audio_ms,
            wall_ms,
        },
        &format!("{backend}: Twilio record"),
    );

    // Native, PCM16 at 8 kHz.
    let (key_id, key) = setup.key("native echo", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": key}))
        .await;
    let session_id = native.wait_started().await;
    native.stream_pcm(&speech, Duration::from_millis(10)).await;
    native.conn.wait_audio(2 * (speech.len() - 320), WAIT).await;
    native
        .conn
        .wait_quiet(Duration::from_millis(200), WAIT)
        .await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let wall_ms = i64::try_from((closed.at - native.conn.opened_at).as_millis()).unwrap();
    let (lag, corr) = assert_same_audio(
        &speech,
        &pcm16_samples(&native.conn.audio()),
        &format!("{backend}: native echo"),
    );
    println!("{backend}: native echo: lag {lag} samples, correlation {corr:.4}, {wall_ms} ms");
    let row = setup.ended(session_id).await;
    assert_record(
        &row,
        &Expected {
            endpoint: NATIVE,
            transport: "websocket",
            route: "default",
            provider: "echo",
            close_reason: "CLIENT_HANGUP",
            api_key_id: key_id,
            audio_ms,
            wall_ms,
        },
        &format!("{backend}: native record"),
    );
    assert_eq!(setup.all_sessions().await.len(), 2);
}

/// Proves a graceful shutdown with calls live, on both backends: on SIGTERM each caller gets
/// close 1001 with reason `SHUTDOWN` (the native one a `session.ended` saying so first), the
/// process exits with status 0, and both records are complete with `SHUTDOWN` by then (flushed
/// before exit, not left to a later start).
async fn shutdown_ends_live_calls_on_record(db: TestDb) {
    let backend = db.label();
    let mut setup = Setup::new(db, RouterOptions::default()).await;
    let (key_id, key) = setup.key("shutdown", None).await;
    let mut twilio = setup.twilio(&key).await;
    twilio.assert_echoes("before shutdown").await;
    let mut native = setup.native(&key).await;
    native.assert_echoes("before shutdown").await;

    let status = setup.router.terminate(Duration::from_secs(20)).await;
    let closed = twilio.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1001, "SHUTDOWN"),
        "{backend}"
    );
    assert_eq!(native.wait_ended().await, "SHUTDOWN", "{backend}");
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1001, "SHUTDOWN"),
        "{backend}"
    );
    assert!(
        status.success(),
        "{backend}: exit status {status}; stderr:\n{}",
        setup.router.stderr_text()
    );

    // The router is gone: what is in the store now is all there will be.
    let rows = setup.all_sessions().await;
    assert_eq!(rows.len(), 2, "{backend}: {rows:#?}");
    for row in rows {
        assert_eq!(row.api_key_id, Some(key_id));
        assert_eq!(
            row.close_reason.as_deref(),
            Some("SHUTDOWN"),
            "{backend}: {row:#?}"
        );
        assert!(row.audio_in_ms >= 200, "{backend}: {row:#?}");
    }
}

/// Proves the idle timeout (`[session] idle_timeout_secs = 1`): a call whose audio stops is
/// ended about a second after its last audio, with close 1000 `IDLE_TIMEOUT`, and recorded so.
#[tokio::test]
async fn idle_call_ends_with_idle_timeout() {
    let options = RouterOptions {
        config: Some("[session]\nidle_timeout_secs = 1\n".to_owned()),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("idle", None).await;
    let mut twilio = setup.twilio(&key).await;
    twilio.assert_echoes("before going quiet").await;
    let quiet_from = std::time::Instant::now();
    let closed = twilio.conn.wait_closed(Duration::from_secs(5)).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "IDLE_TIMEOUT")
    );
    let idle = closed.at - quiet_from;
    assert!(
        idle >= Duration::from_millis(900) && idle <= Duration::from_millis(2_500),
        "ended {idle:?} after the last audio"
    );
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("IDLE_TIMEOUT"),
        "{row:#?}"
    );
    assert!(row.duration_ms.unwrap() >= 1_000, "{row:#?}");
}

/// Proves a route whose provider refuses connections (a `ws-pcm` URL on a closed port) ends
/// the call with `PROVIDER_ERROR`: the native caller gets an `error` event, `session.ended`
/// and close 1011, and the record names the provider tried.
#[tokio::test]
async fn unreachable_provider_ends_with_provider_error() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let setup = Setup::new(TestDb::sqlite(), ws_pcm_options(closed_port, 16_000)).await;
    let (_, key) = setup.key("dead provider", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "route": "model", "api_key": key}))
        .await;
    let session_id = native.wait_started().await;
    assert_eq!(native.wait_ended().await, "PROVIDER_ERROR");
    native.wait_error("provider_error").await;
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1011, "PROVIDER_ERROR")
    );
    let row = setup.ended(session_id).await;
    assert_eq!(
        row.close_reason.as_deref(),
        Some("PROVIDER_ERROR"),
        "{row:#?}"
    );
    assert_eq!(row.route.as_deref(), Some("model"));
    assert_eq!(row.provider, "model");
    assert_eq!(row.providers_tried, ["model"]);
}

/// Proves audio crosses a real provider socket both ways: with a `ws-pcm` provider at 24 kHz
/// (a stand-in that echoes each binary frame), 2 s of speech sent as native PCM16 at 8 kHz
/// comes back correlating above 0.9; the stand-in was told the rate in
/// `X-Voxroute-Sample-Rate` and got PCM16 frames of 20 ms at that rate; the record names the
/// route and provider.
#[tokio::test]
async fn ws_pcm_provider_carries_audio_both_ways() {
    let stand_in = StandIn::start(StandInMode::Echo).await;
    let setup = Setup::new(TestDb::sqlite(), ws_pcm_options(stand_in.addr, 24_000)).await;
    let (key_id, key) = setup.key("ws-pcm", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "route": "model", "api_key": key}))
        .await;
    let session_id = native.wait_started().await;
    let speech = speech_8k(2.0);
    native.stream_pcm(&speech, Duration::from_millis(10)).await;
    native.conn.wait_audio(2 * (speech.len() - 320), WAIT).await;
    native
        .conn
        .wait_quiet(Duration::from_millis(200), WAIT)
        .await;
    native.stop().await;
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let (lag, corr) = assert_same_audio(
        &speech,
        &pcm16_samples(&native.conn.audio()),
        "echo through ws-pcm at 24 kHz",
    );
    println!("ws-pcm echo: lag {lag} samples, correlation {corr:.4}");

    assert_eq!(stand_in.rates(), ["24000"]);
    let frames = stand_in.frames.load(Ordering::SeqCst);
    assert!(
        (98..=100).contains(&frames),
        "{frames} frames reached the provider"
    );
    assert_eq!(
        stand_in.frame_bytes.lock().unwrap().as_slice(),
        [960],
        "20 ms of 24 kHz PCM16 per frame"
    );
    let row = setup.ended(session_id).await;
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
    assert_eq!(row.api_key_id, Some(key_id));
    assert_eq!(
        (row.route.as_deref(), row.provider.as_str()),
        (Some("model"), "model")
    );
    assert_eq!(row.providers_tried, ["model"]);
    assert!((row.audio_in_ms - 2_000).abs() <= 40, "{row:#?}");
    assert!((row.audio_out_ms - 2_000).abs() <= 40, "{row:#?}");
    assert!(row.first_response_ms.is_some(), "{row:#?}");
}

/// Proves a provider that ends the conversation itself (close 1000 after half a second) ends
/// the call with `PROVIDER_CLOSED`: `session.ended`, close 1000 with that reason, and the record.
#[tokio::test]
async fn provider_closing_normally_ends_with_provider_closed() {
    let stand_in = StandIn::start(StandInMode::CloseAfter(25)).await;
    let (session_id, setup) = call_until_provider_ends(&stand_in, "PROVIDER_CLOSED", 1000).await;
    let row = setup.ended(session_id).await;
    assert_eq!(
        row.close_reason.as_deref(),
        Some("PROVIDER_CLOSED"),
        "{row:#?}"
    );
    assert_eq!(row.provider, "model");
}

/// Proves a provider whose connection drops without a close handshake (after half a second)
/// is a provider failure: the call ends with `PROVIDER_ERROR` (close 1011) and is recorded so.
#[tokio::test]
async fn provider_dropping_the_connection_ends_with_provider_error() {
    let stand_in = StandIn::start(StandInMode::DropAfter(25)).await;
    let (session_id, setup) = call_until_provider_ends(&stand_in, "PROVIDER_ERROR", 1011).await;
    let row = setup.ended(session_id).await;
    assert_eq!(
        row.close_reason.as_deref(),
        Some("PROVIDER_ERROR"),
        "{row:#?}"
    );
}

/// Streams audio to the `ws-pcm` stand-in until the provider side ends the call, and checks
/// the caller was told `reason` (event and close frame with `code`).
async fn call_until_provider_ends(stand_in: &StandIn, reason: &str, code: u16) -> (Uuid, Setup) {
    let setup = Setup::new(TestDb::sqlite(), ws_pcm_options(stand_in.addr, 16_000)).await;
    let (_, key) = setup.key("ws-pcm ends", None).await;
    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "pcm16", "sample_rate": 8000, "route": "model", "api_key": key}))
        .await;
    let session_id = native.wait_started().await;
    let speech = speech_8k(2.0);
    for frame in speech.chunks(160) {
        if native.conn.inbox(|i| i.closed.is_some()) {
            break;
        }
        // The router may close while a frame is on its way: a failed send is expected here.
        let _ = native
            .conn
            .send(Message::binary(crate::harness::pcm16_bytes(frame)))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(native.wait_ended().await, reason);
    let closed = native.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (code, reason));
    assert!(
        native.conn.audio_len() > 0,
        "audio came back before the provider ended"
    );
    (session_id, setup)
}

/// Proves the per-key concurrent-session limit: with `max_sessions = 1`, a second call on the
/// key while the first is live is closed with 1008 `LIMIT_EXCEEDED` and recorded so (under the
/// key), the first call is unaffected, and once the first hangs up a new call gets the slot.
#[tokio::test]
async fn over_limit_call_is_refused_recorded_and_the_slot_frees() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("limited", Some(1)).await;
    let mut first = setup.twilio(&key).await;
    first.assert_echoes("first call").await;

    let second = setup.twilio(&key).await;
    let closed = second.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "LIMIT_EXCEEDED")
    );
    let refused = setup.ended_for_key(key_id, 1).await;
    assert_eq!(
        refused[0].close_reason.as_deref(),
        Some("LIMIT_EXCEEDED"),
        "{refused:#?}"
    );
    assert_eq!(refused[0].audio_in_ms, 0);
    first.assert_echoes("first call, after the refusal").await;

    let closed = first.hang_up().await;
    assert_eq!(closed.reason, "CLIENT_HANGUP");
    let mut third = setup.twilio(&key).await;
    third.assert_echoes("a call after the first ended").await;
    assert_eq!(third.hang_up().await.reason, "CLIENT_HANGUP");

    let rows = setup.ended_for_key(key_id, 3).await;
    let reasons: Vec<_> = rows
        .iter()
        .map(|r| r.close_reason.as_deref().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["CLIENT_HANGUP", "LIMIT_EXCEEDED", "CLIENT_HANGUP"],
        "oldest first: {rows:#?}"
    );
}

/// Proves the per-key rate of new sessions (a token bucket): with a burst of 2 and 1 new
/// session a minute, a key's third session in a row is refused: with HTTP 429, a
/// problem+json body and `Retry-After` when the key comes with the upgrade (nothing recorded),
/// and with close 1008 `LIMIT_EXCEEDED` (recorded under the key) when it comes in Twilio's
/// `start`. Another key is unaffected, and the refused key's earlier calls go on.
#[tokio::test]
async fn new_sessions_over_the_key_rate_are_refused() {
    let options = RouterOptions {
        config: Some("[limits]\nnew_sessions_per_minute = 1\nnew_sessions_burst = 2\n".into()),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("bursty", None).await;
    let mut first = setup.twilio(&key).await;
    first.assert_echoes("first call").await;
    let url = setup.router.ws_url(TWILIO);
    let mut second = TwilioCaller::connect(&url, Some(&key))
        .await
        .expect("the second session is within the burst");
    second.start(&[]).await;
    second.assert_echoes("second call").await;

    let refused = TwilioCaller::connect(&url, Some(&key)).await.err();
    let Some(tungstenite::Error::Http(response)) = refused else {
        panic!("expected HTTP 429, got {refused:?}");
    };
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    let in_protocol = setup.twilio(&key).await;
    let closed = in_protocol.conn.wait_closed(WAIT).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "LIMIT_EXCEEDED")
    );
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("LIMIT_EXCEEDED"),
        "{row:#?}"
    );

    let (_, other) = setup.key("calm", None).await;
    let mut calm = setup.twilio(&other).await;
    calm.assert_echoes("another key").await;
    first.assert_echoes("first call, after the refusals").await;
    for call in [&mut first, &mut second, &mut calm] {
        assert_eq!(call.hang_up().await.reason, "CLIENT_HANGUP");
    }
    let rows = setup.ended_for_key(key_id, 3).await;
    assert_eq!(
        rows.len(),
        3,
        "two calls and one refusal, the 429 left none: {rows:#?}"
    );
}

/// Router options with the route `model` = one `ws-pcm` provider `model` at `addr`.
fn ws_pcm_options(addr: SocketAddr, rate_hz: u32) -> RouterOptions {
    RouterOptions {
        config: Some(format!(
            "[providers.model]\nkind = \"ws-pcm\"\nurl = \"ws://{addr}/pcm\"\n\
             sample_rate_hz = {rate_hz}\n\n[routes.model]\nproviders = [\"model\"]\n"
        )),
        ..RouterOptions::default()
    }
}

/// What the stand-in provider does with each connection.
#[derive(Debug, Clone, Copy)]
enum StandInMode {
    /// Echo every binary frame.
    Echo,
    /// Echo this many frames, then close with 1000 (the conversation is over).
    CloseAfter(usize),
    /// Echo this many frames, then drop the TCP connection without a close frame.
    DropAfter(usize),
}

/// A `ws-pcm` provider: a WebSocket server speaking voxroute's ws-pcm convention.
struct StandIn {
    addr: SocketAddr,
    /// `X-Voxroute-Sample-Rate` of each connection.
    rates: Arc<Mutex<Vec<String>>>,
    /// Binary frames received, over all connections.
    frames: Arc<AtomicUsize>,
    /// The distinct sizes of the binary frames received.
    frame_bytes: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    async fn start(mode: StandInMode) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rates = Arc::new(Mutex::new(Vec::new()));
        let frames = Arc::new(AtomicUsize::new(0));
        let frame_bytes = Arc::new(Mutex::new(Vec::new()));
        let (r, f, b) = (
            Arc::clone(&rates),
            Arc::clone(&frames),
            Arc::clone(&frame_bytes),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, f, b) = (Arc::clone(&r), Arc::clone(&f), Arc::clone(&b));
                tokio::spawn(async move {
                    #[expect(
                        clippy::result_large_err,
                        reason = "tungstenite's handshake callback fixes the error type"
                    )]
                    let callback = |request: &Request, response: Response| {
                        let rate = request
                            .headers()
                            .get("X-Voxroute-Sample-Rate")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(none)")
                            .to_owned();
                        r.lock().unwrap().push(rate);
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    let mut n = 0;
                    while let Some(Ok(message)) = ws.next().await {
                        let Message::Binary(bytes) = message else {
                            continue;
                        };
                        n += 1;
                        f.fetch_add(1, Ordering::SeqCst);
                        {
                            let mut sizes = b.lock().unwrap();
                            if !sizes.contains(&bytes.len()) {
                                sizes.push(bytes.len());
                            }
                        }
                        match mode {
                            StandInMode::CloseAfter(k) if n > k => {
                                let _ = ws
                                    .close(Some(CloseFrame {
                                        code: CloseCode::Normal,
                                        reason: "conversation over".into(),
                                    }))
                                    .await;
                                // Read until the router answers the close.
                                while let Some(Ok(_)) = ws.next().await {}
                                return;
                            }
                            StandInMode::DropAfter(k) if n > k => return,
                            _ => {
                                if ws.send(Message::Binary(bytes)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        StandIn {
            addr,
            rates,
            frames,
            frame_bytes,
            task,
        }
    }

    fn rates(&self) -> Vec<String> {
        self.rates.lock().unwrap().clone()
    }
}
