//! The provider side end to end: a [`ProviderActor`] driven the way a session drives it,
//! against `echo` and against a real WebSocket server started in each test on 127.0.0.1:0.
//!
//! Proves that audio crosses the wire as exact PCM16 LE both ways, that provider events and
//! bad frames become the right `ProviderEvent`s, and that every way a connection ends (refused,
//! dropped, closed by the provider, finished by the session, abandoned by the session) ends with
//! exactly the documented events and a closed socket. Every wait is bounded by [`WAIT`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use voxroute_actors::codecs::SampleRate;
use voxroute_actors::provider::actor::PRE_READY_BUFFER_MS;
use voxroute_actors::provider::ws_pcm::SAMPLE_RATE_HEADER;
use voxroute_actors::provider::{
    GetProviderStats, ProviderActor, ProviderCommand, ProviderEvent, ProviderInput, ProviderKind,
    ProviderOutput, ProviderSpec, ProviderStats,
};

/// The longest any single step may take before the test fails (rather than hangs).
const WAIT: Duration = Duration::from_secs(3);

/// A stand-in session: forwards every `ProviderOutput` to the test.
struct TestSession {
    events: mpsc::UnboundedSender<ProviderOutput>,
}

impl Actor for TestSession {
    type Context = Context<Self>;
}

impl Handler<ProviderOutput> for TestSession {
    type Result = ();

    fn handle(&mut self, output: ProviderOutput, _: &mut Self::Context) {
        let _ = self.events.send(output);
    }
}

/// Ends the stand-in session, as a hung-up call would.
#[derive(Message)]
#[rtype(result = "()")]
struct EndSession;

impl Handler<EndSession> for TestSession {
    type Result = ();

    fn handle(&mut self, _: EndSession, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// A provider actor and the session end of it.
struct Harness {
    provider: Addr<ProviderActor>,
    session: Addr<TestSession>,
    events: mpsc::UnboundedReceiver<ProviderOutput>,
}

impl Harness {
    fn start(spec: ProviderSpec) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let session = TestSession { events: tx }.start();
        let provider = ProviderActor::new(spec, 7, session.clone().recipient()).start();
        Harness {
            provider,
            session,
            events,
        }
    }

    fn send(&self, command: ProviderCommand) {
        self.provider.do_send(ProviderInput(command));
    }

    async fn next(&mut self) -> ProviderEvent {
        let output = timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a provider event")
            .expect("the session's event channel closed");
        assert_eq!(output.attempt, 7, "the attempt number is echoed");
        output.event
    }

    async fn stats(&self) -> ProviderStats {
        timeout(WAIT, self.provider.send(GetProviderStats))
            .await
            .expect("timed out asking for stats")
            .expect("the provider actor is gone")
    }

    /// Waits until the provider actor has stopped.
    async fn stopped(&self) {
        let deadline = Instant::now() + WAIT;
        while self.provider.connected() {
            assert!(Instant::now() < deadline, "the provider actor did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn spec(kind: ProviderKind) -> ProviderSpec {
    ProviderSpec {
        name: "test".into(),
        sample_rate: SampleRate::HZ_16000,
        output_sample_rate: SampleRate::HZ_16000,
        kind,
    }
}

fn ws_pcm(url: &str) -> ProviderSpec {
    spec(ProviderKind::WsPcm { url: url.into() })
}

/// 20 ms at 16 kHz, every sample `value`.
fn frame(value: i16) -> Vec<i16> {
    vec![value; SampleRate::HZ_16000.samples_per_frame()]
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// The server side of one accepted connection.
struct Upstream {
    ws: WebSocketStream<TcpStream>,
    /// The `X-Voxroute-Sample-Rate` header of the upgrade request.
    sample_rate_header: Option<String>,
}

impl Upstream {
    /// The next message the provider actor sent (`None`: the connection ended).
    async fn next(&mut self) -> Option<Message> {
        match timeout(WAIT, self.ws.next())
            .await
            .expect("timed out waiting for the client")
        {
            Some(Ok(message)) => Some(message),
            Some(Err(_)) | None => None,
        }
    }

    async fn send(&mut self, message: Message) {
        timeout(WAIT, self.ws.send(message))
            .await
            .expect("timed out sending")
            .expect("send failed");
    }
}

/// A WebSocket server for one connection on 127.0.0.1:0, answering the upgrade after
/// `handshake_delay`. Returns its URL and the accepted connection.
async fn start_server(handshake_delay: Duration) -> (String, oneshot::Receiver<Upstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/model", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    actix_rt::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::time::sleep(handshake_delay).await;
        let header = Arc::new(Mutex::new(None));
        let seen = header.clone();
        // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
        #[allow(clippy::result_large_err)]
        let callback = move |request: &Request, response: Response| {
            *seen.lock().unwrap() = request
                .headers()
                .get(SAMPLE_RATE_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            Ok(response)
        };
        if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
            let sample_rate_header = header.lock().unwrap().take();
            let _ = tx.send(Upstream {
                ws,
                sample_rate_header,
            });
        }
    });
    (url, rx)
}

async fn accepted(rx: oneshot::Receiver<Upstream>) -> Upstream {
    timeout(WAIT, rx)
        .await
        .expect("timed out waiting for the provider to connect")
        .expect("the server task ended")
}

/// Starts a ws-pcm provider against a fresh server and waits until it is ready.
async fn connected_ws_pcm() -> (Harness, Upstream) {
    let (url, rx) = start_server(Duration::ZERO).await;
    let mut harness = Harness::start(ws_pcm(&url));
    let upstream = accepted(rx).await;
    assert_eq!(harness.next().await, ProviderEvent::Ready);
    (harness, upstream)
}

/// Echo: `Ready`, then every frame back unchanged and in order, then `Finish` gives
/// `Closed { error: false }` and the actor stops.
#[actix_rt::test]
async fn echo_returns_frames_unchanged_and_closes_on_finish() {
    let mut h = Harness::start(spec(ProviderKind::Echo));
    assert_eq!(h.next().await, ProviderEvent::Ready);
    for value in [1, -2, i16::MAX] {
        h.send(ProviderCommand::Audio(frame(value)));
    }
    for value in [1, -2, i16::MAX] {
        assert_eq!(h.next().await, ProviderEvent::Audio(frame(value)));
    }
    h.send(ProviderCommand::Finish);
    assert_eq!(h.next().await, ProviderEvent::Closed { error: false });
    h.stopped().await;
}

/// ws-pcm: a frame reaches the server as exactly its PCM16 little-endian bytes (the rate is
/// announced in the upgrade), and the server's binary frames come back as `Audio`.
#[actix_rt::test]
async fn ws_pcm_audio_is_exact_pcm16_le_both_ways() {
    let (mut h, mut server) = connected_ws_pcm().await;
    assert_eq!(server.sample_rate_header.as_deref(), Some("16000"));

    let samples: Vec<i16> = (0..320).map(|i: i16| (i - 160).wrapping_mul(203)).collect();
    h.send(ProviderCommand::Audio(samples.clone()));
    assert_eq!(
        server.next().await,
        Some(Message::Binary(le_bytes(&samples).into()))
    );

    server
        .send(Message::Binary(
            vec![0x34, 0x12, 0xff, 0xff, 0x00, 0x80].into(),
        ))
        .await;
    assert_eq!(
        h.next().await,
        ProviderEvent::Audio(vec![0x1234, -1, i16::MIN])
    );
}

/// ws-pcm: the convention's JSON text events become `Transcript` and `SpeechStarted`.
#[actix_rt::test]
async fn ws_pcm_json_events_become_provider_events() {
    let (mut h, mut server) = connected_ws_pcm().await;
    server
        .send(Message::text(r#"{"type":"speech_started"}"#))
        .await;
    server
        .send(Message::text(
            r#"{"type":"transcript","text":"hello there","final":true}"#,
        ))
        .await;
    assert_eq!(h.next().await, ProviderEvent::SpeechStarted);
    assert_eq!(
        h.next().await,
        ProviderEvent::Transcript {
            text: "hello there".into(),
            is_final: true
        }
    );
}

/// ws-pcm: an odd-length binary frame gives a non-fatal `Error`, is dropped, and the
/// connection goes on: the next frame still arrives.
#[actix_rt::test]
async fn ws_pcm_odd_length_frame_is_a_non_fatal_error() {
    let (mut h, mut server) = connected_ws_pcm().await;
    server.send(Message::Binary(vec![1, 2, 3].into())).await;
    server.send(Message::Binary(vec![5, 0].into())).await;
    match h.next().await {
        ProviderEvent::Error { fatal: false, .. } => {}
        other => panic!("expected a non-fatal error, got {other:?}"),
    }
    assert_eq!(h.next().await, ProviderEvent::Audio(vec![5]));
    assert_eq!(h.stats().await.decode_errors, 1);
}

/// ws-pcm: text that is not one of the convention's events is ignored (no event) and counted.
#[actix_rt::test]
async fn ws_pcm_garbage_text_is_ignored_and_counted() {
    let (mut h, mut server) = connected_ws_pcm().await;
    server.send(Message::text("this is not json {")).await;
    server.send(Message::text(r#"{"type":"mystery"}"#)).await;
    server.send(Message::Binary(vec![9, 0].into())).await;
    assert_eq!(h.next().await, ProviderEvent::Audio(vec![9]));
    let stats = h.stats().await;
    assert_eq!(stats.frames_ignored, 2);
    assert_eq!(stats.frames_received, 3);
}

/// A port that refuses connections gives `Error { fatal: true }` then `Closed { error: true }`
/// at once (well under the connect timeout), and the actor stops.
#[actix_rt::test]
async fn refused_connection_fails_fast() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);

    let started = Instant::now();
    let mut h = Harness::start(ws_pcm(&format!("ws://127.0.0.1:{port}/model")));
    h.send(ProviderCommand::Audio(frame(1)));
    match h.next().await {
        ProviderEvent::Error {
            fatal: true,
            message,
        } => assert!(message.contains("could not connect"), "{message}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert_eq!(h.next().await, ProviderEvent::Closed { error: true });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    h.stopped().await;
}

/// `wss://` is dialled with TLS: against a server that answers the TLS hello with garbage,
/// the failure is a (retryable) connection error from the TLS layer, not a configuration
/// error saying TLS is missing.
#[actix_rt::test]
async fn wss_is_dialled_with_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut hello)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut socket, b"HTTP/1.1 400 not tls\r\n\r\n")
            .await
            .unwrap();
        hello
    });
    let mut h = Harness::start(ws_pcm(&format!("wss://localhost:{port}/model")));
    match h.next().await {
        ProviderEvent::Error {
            fatal: true,
            message,
        } => assert!(message.contains("could not connect"), "{message}"),
        other => panic!("expected a fatal connect error, got {other:?}"),
    }
    assert_eq!(h.next().await, ProviderEvent::Closed { error: true });
    let hello = server.await.unwrap();
    assert_eq!(hello[0], 0x16, "a TLS handshake record arrived");
    h.stopped().await;
}

/// The server dropping the TCP connection mid-call (no close frame) is a failure:
/// `Error { fatal: true }` then `Closed { error: true }`.
#[actix_rt::test]
async fn server_dropping_mid_call_is_closed_with_error() {
    let (mut h, mut server) = connected_ws_pcm().await;
    h.send(ProviderCommand::Audio(frame(3)));
    assert!(matches!(server.next().await, Some(Message::Binary(_))));
    drop(server);
    match h.next().await {
        ProviderEvent::Error { fatal: true, .. } => {}
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert_eq!(h.next().await, ProviderEvent::Closed { error: true });
    h.stopped().await;
}

/// A close from the server: 1000 ends the conversation (`Closed { error: false }`, no error);
/// 1011 is a provider failure (`Error { fatal: true }`, `Closed { error: true }`).
#[actix_rt::test]
async fn server_close_code_decides_normal_end_or_failure() {
    let (mut h, mut server) = connected_ws_pcm().await;
    server.ws.close(None).await.unwrap();
    assert_eq!(h.next().await, ProviderEvent::Closed { error: false });
    // The client answers the close; the server then ends the connection.
    assert!(matches!(server.next().await, Some(Message::Close(_))));
    assert_eq!(server.next().await, None);
    drop(server);
    h.stopped().await;

    let (mut h, mut server) = connected_ws_pcm().await;
    server
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "model crashed".into(),
        }))
        .await
        .unwrap();
    match h.next().await {
        ProviderEvent::Error {
            fatal: true,
            message,
        } => assert!(message.contains("1011") && message.contains("model crashed")),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert_eq!(h.next().await, ProviderEvent::Closed { error: true });
    assert!(matches!(server.next().await, Some(Message::Close(_))));
    drop(server);
    h.stopped().await;
}

/// `Finish` closes the socket politely: the server sees a close frame with 1000 after the
/// audio, and the session gets `Closed { error: false }`.
#[actix_rt::test]
async fn finish_closes_the_socket() {
    let (mut h, mut server) = connected_ws_pcm().await;
    h.send(ProviderCommand::Audio(frame(4)));
    h.send(ProviderCommand::Finish);
    h.send(ProviderCommand::Audio(frame(5)));
    assert_eq!(
        server.next().await,
        Some(Message::Binary(le_bytes(&frame(4)).into()))
    );
    match server.next().await {
        Some(Message::Close(Some(close))) => assert_eq!(close.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Reading on lets the server answer the close; then the connection ends.
    assert_eq!(server.next().await, None);
    assert_eq!(h.next().await, ProviderEvent::Closed { error: false });
    h.stopped().await;
}

/// Audio sent before the provider is ready is kept up to `PRE_READY_BUFFER_MS` (the oldest is
/// dropped and counted) and sent, in order, once it is; a `Finish` sent meanwhile still
/// arrives after that audio.
#[actix_rt::test]
async fn audio_before_ready_is_bounded_and_sent_in_order() {
    let (url, rx) = start_server(Duration::from_millis(200)).await;
    let mut h = Harness::start(ws_pcm(&url));
    let sent = 50;
    let kept = (PRE_READY_BUFFER_MS / 20) as i16;
    for value in 0..sent {
        h.send(ProviderCommand::Audio(frame(value)));
    }
    let mut server = accepted(rx).await;
    assert_eq!(h.next().await, ProviderEvent::Ready);
    let stats = h.stats().await;
    assert_eq!(stats.dropped_before_ready, (sent - kept) as u64);
    assert_eq!(stats.frames_sent, kept as u64);
    h.send(ProviderCommand::Finish);

    for value in sent - kept..sent {
        assert_eq!(
            server.next().await,
            Some(Message::Binary(le_bytes(&frame(value)).into())),
            "frame {value}"
        );
    }
    assert!(matches!(server.next().await, Some(Message::Close(_))));
    assert_eq!(server.next().await, None);
    assert_eq!(h.next().await, ProviderEvent::Closed { error: false });
}

/// When the session goes away without `Finish` (its actor stops, its handle is dropped), the
/// provider actor closes the socket (1001, going away) and stops.
#[actix_rt::test]
async fn session_going_away_closes_the_socket() {
    let (h, mut server) = connected_ws_pcm().await;
    h.session.do_send(EndSession);
    let Harness { provider, .. } = h;
    match server.next().await {
        Some(Message::Close(Some(close))) => assert_eq!(close.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(server.next().await, None);
    let deadline = Instant::now() + WAIT;
    while provider.connected() {
        assert!(Instant::now() < deadline, "the provider actor did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
