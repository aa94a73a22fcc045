//! The stand-in provider server: the server side of each provider's real wire protocol, on
//! one port, with a deterministic "model" and failure knobs.
//!
//! Real AI providers cannot be reached from tests, CI or the docker-compose stack, so
//! voxroute's adapters dial this instead (`VOXROUTE_OPENAI_URL=ws://127.0.0.1:9090` and so
//! on). Every protocol is spoken on the wire, from the HTTP upgrade (paths, keys, query
//! parameters, status codes) to the close codes; nothing is short-circuited.
//!
//! # Layout
//!
//! - this module: [`serve`] / [`spawn`], the accept loop, routing of upgrade requests, the
//!   per-connection driver (latency, malformed frames, failure, close handshake) and [`Stats`];
//! - [`knobs`]: [`Knobs`], the failure and timing knobs, and their per-connection override;
//! - `health`: plain-HTTP `GET /healthz` and `GET /stats` (the [`Stats`] as JSON), for the
//!   docker-compose stack and out-of-process load tests;
//! - [`audio`]: the deterministic "model" (formats, echo resampling, speech detection,
//!   transcript timing), shared by all protocols;
//! - [`openai`], [`deepgram`], [`elevenlabs`], [`gemini`]: one file per protocol, each a
//!   sans-IO state machine (messages in, messages and a close out; time passed in), which is
//!   what their unit tests drive.
//!
//! # Routing (real paths; see each protocol module for details)
//!
//! | path | protocol | key |
//! |---|---|---|
//! | `GET /v1/realtime?model=…` | OpenAI Realtime (GA) | `Authorization: Bearer …` (or subprotocol `openai-insecure-api-key.…`) |
//! | `GET /v1/listen?encoding=…&sample_rate=…` | Deepgram live STT | `Authorization: Token …` / `Bearer …` (or subprotocol `token, …`) |
//! | `GET /v1/convai/conversation?agent_id=…` | ElevenLabs Agents | `xi-api-key` optional (public agents) |
//! | `GET /ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent` | Gemini Live | `?key=…` or `x-goog-api-key` |
//!
//! Any other path gets HTTP 404 on the upgrade. A missing key gets 401 (the stand-in accepts
//! any non-empty key); [`Knobs::refuse_auth`] gives 401 and [`Knobs::rate_limit`] 429 on every
//! upgrade; bad protocol parameters give 400. Error bodies are JSON in each provider's style.
//!
//! # What this module does not do
//!
//! No TLS (voxroute's upstream URLs are overridden to `ws://`), no HTTP besides the upgrade,
//! no persistence: the audio received is only counted.

pub mod audio;
pub mod deepgram;
pub mod elevenlabs;
pub mod gemini;
mod health;
pub mod knobs;
pub mod openai;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info, warn};

pub use knobs::{FailMode, KnobError, Knobs};

/// How often a connection's protocol gets [`Session::on_tick`] (pings, idle timeouts).
const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the client's close frame after sending ours.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close code sent when [`Knobs::fail_after_secs`] runs out in [`FailMode::Close`].
pub const FAIL_CLOSE_CODE: u16 = 1011;

/// Close reason sent with [`FAIL_CLOSE_CODE`].
pub const FAIL_CLOSE_REASON: &str = "standin: fail_after";

/// The text that replaces every [`Knobs::malformed_every`]-th server message: JSON cut short.
pub const MALFORMED_MESSAGE: &str = r#"{"type":"standin.malformed","#;

/// The provider protocols the stand-in speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// OpenAI Realtime (GA shapes), `/v1/realtime`.
    OpenAi,
    /// Deepgram live transcription, `/v1/listen`.
    Deepgram,
    /// ElevenLabs Agents Platform conversation, `/v1/convai/conversation`.
    ElevenLabs,
    /// Gemini Live `BidiGenerateContent`.
    Gemini,
}

impl Provider {
    /// All protocols, in [`Stats`] order.
    pub const ALL: [Provider; 4] = [
        Provider::OpenAi,
        Provider::Deepgram,
        Provider::ElevenLabs,
        Provider::Gemini,
    ];

    /// Lower-case name, as in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Deepgram => "deepgram",
            Provider::ElevenLabs => "elevenlabs",
            Provider::Gemini => "gemini",
        }
    }

    /// The protocol served at `path`, if any.
    pub fn for_path(path: &str) -> Option<Provider> {
        match path {
            openai::PATH => Some(Provider::OpenAi),
            deepgram::PATH => Some(Provider::Deepgram),
            elevenlabs::PATH => Some(Provider::ElevenLabs),
            gemini::PATH | gemini::PATH_V1ALPHA => Some(Provider::Gemini),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Provider::OpenAi => 0,
            Provider::Deepgram => 1,
            Provider::ElevenLabs => 2,
            Provider::Gemini => 3,
        }
    }
}

/// A snapshot of one protocol's counters (see [`Stats::provider`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ProviderStats {
    /// Upgrades accepted.
    pub connections: u64,
    /// Upgrades answered with an HTTP error (401, 429, 400).
    pub rejected_upgrades: u64,
    /// Connections that have ended (closed by either side, failed or dropped).
    pub connections_ended: u64,
    /// Audio received from clients, in milliseconds of audio at the declared rate.
    pub audio_received_ms: u64,
    /// Text and binary messages received from clients.
    pub client_messages: u64,
    /// Text and binary messages sent to clients (malformed ones included).
    pub server_messages: u64,
    /// ElevenLabs `pong` replies that matched an outstanding `ping` (0 for the others).
    pub pongs_received: u64,
    /// Gemini connections whose `setup` resumed a session with a handle this stand-in gave
    /// (0 for the others).
    pub resumed_sessions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    rejected_upgrades: AtomicU64,
    connections_ended: AtomicU64,
    audio_received_ms: AtomicU64,
    client_messages: AtomicU64,
    server_messages: AtomicU64,
    pongs_received: AtomicU64,
    resumed_sessions: AtomicU64,
}

#[derive(Debug, Default)]
struct StatsInner {
    providers: [Counters; 4],
    unknown_paths: AtomicU64,
}

/// What the stand-in has received, per protocol: a cheap, cloneable shared handle.
///
/// Pass a clone to [`serve_with_stats`] / [`spawn_with_stats`] and read it from the test while
/// the server runs. Counters only grow.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

impl Stats {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Stats::default()
    }

    /// A snapshot of `provider`'s counters.
    pub fn provider(&self, provider: Provider) -> ProviderStats {
        let c = &self.inner.providers[provider.index()];
        ProviderStats {
            connections: c.connections.load(Ordering::Relaxed),
            rejected_upgrades: c.rejected_upgrades.load(Ordering::Relaxed),
            connections_ended: c.connections_ended.load(Ordering::Relaxed),
            audio_received_ms: c.audio_received_ms.load(Ordering::Relaxed),
            client_messages: c.client_messages.load(Ordering::Relaxed),
            server_messages: c.server_messages.load(Ordering::Relaxed),
            pongs_received: c.pongs_received.load(Ordering::Relaxed),
            resumed_sessions: c.resumed_sessions.load(Ordering::Relaxed),
        }
    }

    /// Upgrade requests for a path no protocol serves (answered 404).
    pub fn unknown_paths(&self) -> u64 {
        self.inner.unknown_paths.load(Ordering::Relaxed)
    }

    /// All counters as JSON, as `GET /stats` serves them:
    /// `{"openai": {ProviderStats fields}, "deepgram": …, "elevenlabs": …, "gemini": …,
    /// "unknown_paths": N}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for provider in Provider::ALL {
            let stats =
                serde_json::to_value(self.provider(provider)).unwrap_or(serde_json::Value::Null);
            object.insert(provider.as_str().to_owned(), stats);
        }
        object.insert("unknown_paths".into(), self.unknown_paths().into());
        serde_json::Value::Object(object)
    }

    fn counters(&self, provider: Provider) -> &Counters {
        &self.inner.providers[provider.index()]
    }
}

/// Serves the stand-in on `listener` until the future is dropped (or the task aborted).
///
/// Each accepted connection runs on its own task; a connection's failure never ends the
/// server. The connection tasks belong to this future: dropping it ends them all (their
/// sockets close without a close frame, as when a real server goes away).
///
/// # Errors
/// Only an error of `accept` that is not per-connection (the listener itself failed).
pub async fn serve(listener: TcpListener, knobs: Knobs) -> std::io::Result<()> {
    serve_with_stats(listener, knobs, Stats::new()).await
}

/// [`serve`], counting into `stats`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with_stats(
    listener: TcpListener,
    knobs: Knobs,
    stats: Stats,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { knobs, stats });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set does not grow with every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Per-connection failures (the peer reset before accept, fd pressure) must not
            // end the server; back off briefly so a persistent one does not spin.
            Err(error) if is_per_connection(&error) => {
                debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            handle_connection(stream, peer, shared).await;
        });
    }
}

fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 23 || code == 24)
}

/// Binds `127.0.0.1:0` and serves the stand-in on a new task: for tests.
///
/// # Errors
/// When binding fails.
pub async fn spawn(knobs: Knobs) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    spawn_with_stats(knobs, Stats::new()).await
}

/// [`spawn`], counting into `stats`.
///
/// # Errors
/// When binding fails.
pub async fn spawn_with_stats(
    knobs: Knobs,
    stats: Stats,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve_with_stats(listener, knobs, stats));
    Ok((addr, task))
}

/// State every connection task shares.
struct Shared {
    /// The server-wide knobs; a connection may override them with `standin=`.
    knobs: Knobs,
    stats: Stats,
}

// ---------------------------------------------------------------------------------------------
// The protocol interface.

/// One server → client message a protocol wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutMessage {
    Text(String),
    Binary(Vec<u8>),
}

/// What a protocol produced in one call: messages in order, then maybe a close.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) messages: Vec<OutMessage>,
    pub(crate) close: Option<(u16, String)>,
}

impl Outbox {
    /// Queues a JSON text message. Ignored once a close is queued.
    pub(crate) fn json(&mut self, value: serde_json::Value) {
        if self.close.is_none() {
            self.messages.push(OutMessage::Text(value.to_string()));
        }
    }

    /// Queues a JSON message in a binary frame (UTF-8 bytes). Ignored once a close is queued.
    pub(crate) fn json_binary(&mut self, value: serde_json::Value) {
        if self.close.is_none() {
            self.messages
                .push(OutMessage::Binary(value.to_string().into_bytes()));
        }
    }

    /// Queues the close frame; the first one wins, later messages are dropped.
    pub(crate) fn close(&mut self, code: u16, reason: impl Into<String>) {
        if self.close.is_none() {
            self.close = Some((code, reason.into()));
        }
    }

    #[cfg(test)]
    pub(crate) fn take_json(&mut self) -> Vec<serde_json::Value> {
        self.messages
            .drain(..)
            .filter_map(|message| match message {
                OutMessage::Text(text) => serde_json::from_str(&text).ok(),
                OutMessage::Binary(bytes) => serde_json::from_slice(&bytes).ok(),
            })
            .collect()
    }
}

/// Counters a protocol keeps about what it received; the driver adds the growth to [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SessionCounters {
    pub(crate) audio_received_ms: u64,
    pub(crate) pongs_received: u64,
    /// 1 once the connection resumed an earlier session (Gemini `sessionResumption`).
    pub(crate) resumed: u64,
}

/// One connection of one protocol, without I/O: the driver calls `on_open` once, then
/// `on_text`/`on_binary` per client message and `on_tick` every [`TICK_INTERVAL`], until a
/// close is queued or the client goes away. No call may panic on client input.
pub(crate) trait Session: Send {
    /// The socket is open (handshake messages such as `session.created`).
    fn on_open(&mut self, out: &mut Outbox);
    /// A text message from the client.
    fn on_text(&mut self, text: &str, out: &mut Outbox);
    /// A binary message from the client.
    fn on_binary(&mut self, bytes: &[u8], out: &mut Outbox);
    /// Time passed: `since_open` is the time since the upgrade.
    fn on_tick(&mut self, since_open: Duration, out: &mut Outbox);
    /// Totals so far.
    fn counters(&self) -> SessionCounters;
}

/// A refused upgrade: the HTTP status, a JSON body and extra headers.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Rejection {
    fn into_response(self) -> ErrorResponse {
        let mut response = ErrorResponse::new(Some(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            insert_header(headers, name, &value);
        }
        response
    }
}

/// Adds a header; a name or value that is not valid HTTP is skipped (values can carry client
/// text, e.g. Deepgram's `dg-error`).
fn insert_header(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

/// An accepted upgrade: the protocol's session and headers to add to the 101 response.
pub(crate) struct Opened {
    pub(crate) session: Box<dyn Session>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// The parts of an upgrade request the protocols read.
pub(crate) struct Upgrade<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: &'a HeaderMap,
}

impl<'a> Upgrade<'a> {
    fn new(request: &'a Request) -> Self {
        Upgrade {
            path: request.uri().path(),
            query: parse_query(request.uri().query().unwrap_or("")),
            headers: request.headers(),
        }
    }

    /// The first value of query parameter `name`.
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Header `name` as text, if present and visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The subprotocols the client offered, in order.
    pub(crate) fn subprotocols(&self) -> Vec<&str> {
        self.headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|protocol| !protocol.is_empty())
            .collect()
    }

    /// The credential after `scheme` (`Bearer`, `Token`; case-insensitive) in `Authorization`,
    /// if non-empty.
    pub(crate) fn authorization(&self, scheme: &str) -> Option<&str> {
        let value = self.header("authorization")?;
        let (given, credential) = value.split_once(' ')?;
        let credential = credential.trim();
        (given.eq_ignore_ascii_case(scheme) && !credential.is_empty()).then_some(credential)
    }
}

/// Splits a query string into decoded `(name, value)` pairs (`+` is a space, `%XX` a byte).
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding, as every provider uses.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (padding optional); `None` if it is not base64.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).ok()
}

/// The protocol-styled rejection of `provider` with `status` and `message`.
fn reject(provider: Provider, status: StatusCode, message: &str) -> Rejection {
    match provider {
        Provider::OpenAi => openai::reject(status, message),
        Provider::Deepgram => deepgram::reject(status, message),
        Provider::ElevenLabs => elevenlabs::reject(status, message),
        Provider::Gemini => gemini::reject(status, message),
    }
}

/// Decides an upgrade: which protocol, with which knobs, or which HTTP error.
fn route(
    request: &Request,
    server_knobs: &Knobs,
) -> Result<(Provider, Knobs, Opened), (Option<Provider>, Rejection)> {
    let upgrade = Upgrade::new(request);
    let Some(provider) = Provider::for_path(upgrade.path) else {
        let rejection = Rejection {
            status: StatusCode::NOT_FOUND,
            body: r#"{"error":{"message":"Not found","code":404}}"#.into(),
            headers: Vec::new(),
        };
        return Err((None, rejection));
    };
    let fail = |status, message: &str| Err((Some(provider), reject(provider, status, message)));
    let knobs = match upgrade.query("standin") {
        Some(spec) => match server_knobs.with_overrides(spec) {
            Ok(knobs) => knobs,
            Err(error) => return fail(StatusCode::BAD_REQUEST, &error.to_string()),
        },
        None => server_knobs.clone(),
    };
    if knobs.refuse_auth {
        return fail(
            StatusCode::UNAUTHORIZED,
            "Invalid API key (refused by the stand-in).",
        );
    }
    let authorized = match provider {
        Provider::OpenAi => openai::authorized(&upgrade),
        Provider::Deepgram => deepgram::authorized(&upgrade),
        Provider::ElevenLabs => true,
        Provider::Gemini => gemini::authorized(&upgrade),
    };
    if !authorized {
        return fail(StatusCode::UNAUTHORIZED, "Missing API key.");
    }
    if knobs.rate_limit {
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded (stand-in rate_limit knob).",
        );
    }
    let opened = match provider {
        Provider::OpenAi => openai::open(&upgrade),
        Provider::Deepgram => deepgram::open(&upgrade, &knobs),
        Provider::ElevenLabs => elevenlabs::open(&upgrade, &knobs),
        Provider::Gemini => gemini::open(&upgrade, &knobs),
    };
    match opened {
        Ok(opened) => Ok((provider, knobs, opened)),
        Err(rejection) => Err((Some(provider), rejection)),
    }
}

// ---------------------------------------------------------------------------------------------
// The per-connection driver.

// The handshake callback's error type is tungstenite's `ErrorResponse`, fixed by its API.
#[allow(clippy::result_large_err)]
async fn handle_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    if let Some(endpoint) = health::peek_endpoint(&stream).await {
        health::respond(stream, endpoint, &shared.stats).await;
        return;
    }
    let mut routed = None;
    let callback = |request: &Request, mut response: Response| match route(request, &shared.knobs) {
        Ok((provider, knobs, opened)) => {
            for (name, value) in &opened.headers {
                insert_header(response.headers_mut(), name, value);
            }
            routed = Some((provider, knobs, opened.session));
            Ok(response)
        }
        Err((provider, rejection)) => {
            match provider {
                Some(provider) => {
                    shared
                        .stats
                        .counters(provider)
                        .rejected_upgrades
                        .fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    shared
                        .stats
                        .inner
                        .unknown_paths
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            debug!(%peer, path = request.uri().path(), status = %rejection.status, "upgrade refused");
            Err(rejection.into_response())
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(crate::provider::websocket_config()),
    );
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            debug!(%peer, %error, "no WebSocket");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let Some((provider, knobs, session)) = routed else {
        return;
    };
    let counters = shared.stats.counters(provider);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    info!(%peer, provider = provider.as_str(), "connection open");
    let driver = Driver {
        knobs,
        counters,
        session,
        reported: SessionCounters::default(),
        pending: VecDeque::new(),
        json_sent: 0,
        close_queued: false,
    };
    driver.run(ws).await;
    counters.connections_ended.fetch_add(1, Ordering::Relaxed);
    info!(%peer, provider = provider.as_str(), "connection ended");
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Runs one accepted connection: feeds the protocol, applies the knobs to what it sends.
struct Driver<'a> {
    knobs: Knobs,
    counters: &'a Counters,
    session: Box<dyn Session>,
    /// The session counters already added to [`Stats`].
    reported: SessionCounters,
    /// Messages waiting for their due time ([`Knobs::latency_ms`]), oldest first.
    pending: VecDeque<(Instant, Message)>,
    /// JSON messages (text frames, or Gemini's binary ones) queued so far, for
    /// [`Knobs::malformed_every`].
    json_sent: u64,
    /// Whether a close frame is in `pending` or sent: the protocol hears nothing more.
    close_queued: bool,
}

impl Driver<'_> {
    async fn run(mut self, ws: Ws) {
        let (mut sink, mut stream) = ws.split();
        let opened_at = Instant::now();
        // A deadline too far to represent is never reached.
        let fail_at = self
            .knobs
            .fail_after()
            .and_then(|after| opened_at.checked_add(after));
        let mut tick = tokio::time::interval(TICK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut close_deadline: Option<Instant> = None;
        let mut out = Outbox::default();
        self.session.on_open(&mut out);
        self.absorb(&mut out);
        loop {
            let next_due = self.pending.front().map(|(due, _)| *due);
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        if !self.close_queued {
                            self.deliver(message, &mut out);
                            self.absorb(&mut out);
                        }
                    }
                    Some(Err(error)) => {
                        debug!(%error, "read failed");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick(), if !self.close_queued => {
                    self.session.on_tick(opened_at.elapsed(), &mut out);
                    self.absorb(&mut out);
                }
                _ = sleep_until(next_due.unwrap_or(opened_at)), if next_due.is_some() => {
                    let now = Instant::now();
                    while self.pending.front().is_some_and(|(due, _)| *due <= now) {
                        let Some((_, message)) = self.pending.pop_front() else { break };
                        let is_close = matches!(message, Message::Close(_));
                        if sink.send(message).await.is_err() {
                            return;
                        }
                        if is_close {
                            close_deadline = Some(now + CLOSE_HANDSHAKE_TIMEOUT);
                        }
                    }
                }
                _ = sleep_until(fail_at.unwrap_or(opened_at)), if fail_at.is_some() && !self.close_queued => {
                    warn!(mode = ?self.knobs.fail_mode, "fail_after: failing the connection");
                    match self.knobs.fail_mode {
                        FailMode::Close => {
                            self.pending.clear();
                            self.close_queued = true;
                            let frame = close_frame(FAIL_CLOSE_CODE, FAIL_CLOSE_REASON);
                            if sink.send(frame).await.is_err() {
                                return;
                            }
                            close_deadline = Some(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
                        }
                        FailMode::Drop => {
                            if let Ok(ws) = sink.reunite(stream) {
                                // Zero linger makes the kernel answer the close with an RST
                                // (no FIN, no close frame) and never blocks the thread.
                                let _ = ws.get_ref().set_zero_linger();
                                drop(ws);
                            }
                            return;
                        }
                    }
                }
                _ = sleep_until(close_deadline.unwrap_or(opened_at)), if close_deadline.is_some() => {
                    debug!("client did not finish the close handshake");
                    break;
                }
            }
        }
    }

    /// Hands one client message to the protocol.
    fn deliver(&mut self, message: Message, out: &mut Outbox) {
        match message {
            Message::Text(text) => {
                self.counters
                    .client_messages
                    .fetch_add(1, Ordering::Relaxed);
                self.session.on_text(text.as_str(), out);
            }
            Message::Binary(bytes) => {
                self.counters
                    .client_messages
                    .fetch_add(1, Ordering::Relaxed);
                self.session.on_binary(&bytes, out);
            }
            // The socket answers pings and the client's close by itself.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }

    /// Whether the message just counted in `json_sent` is to be replaced (malformed_every).
    fn malformed_now(&self) -> bool {
        self.knobs
            .malformed_period()
            .is_some_and(|period| self.json_sent.is_multiple_of(period))
    }

    /// Moves what the protocol produced into the send queue, applying latency and
    /// malformed-frame knobs, and adds its counter growth to the stats.
    fn absorb(&mut self, out: &mut Outbox) {
        let due = Instant::now() + self.knobs.latency();
        for message in out.messages.drain(..) {
            if self.close_queued {
                break;
            }
            let message = match message {
                OutMessage::Text(text) => {
                    self.json_sent += 1;
                    if self.malformed_now() {
                        Message::text(MALFORMED_MESSAGE)
                    } else {
                        Message::text(text)
                    }
                }
                OutMessage::Binary(bytes) => {
                    self.json_sent += 1;
                    if self.malformed_now() {
                        Message::Binary(Bytes::from_static(MALFORMED_MESSAGE.as_bytes()))
                    } else {
                        Message::Binary(Bytes::from(bytes))
                    }
                }
            };
            self.counters
                .server_messages
                .fetch_add(1, Ordering::Relaxed);
            self.pending.push_back((due, message));
        }
        if let Some((code, reason)) = out.close.take()
            && !self.close_queued
        {
            self.close_queued = true;
            self.pending.push_back((due, close_frame(code, &reason)));
        }
        let now = self.session.counters();
        self.counters.audio_received_ms.fetch_add(
            now.audio_received_ms
                .saturating_sub(self.reported.audio_received_ms),
            Ordering::Relaxed,
        );
        self.counters.pongs_received.fetch_add(
            now.pongs_received
                .saturating_sub(self.reported.pongs_received),
            Ordering::Relaxed,
        );
        self.counters.resumed_sessions.fetch_add(
            now.resumed.saturating_sub(self.reported.resumed),
            Ordering::Relaxed,
        );
        self.reported = now;
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query strings decode `+`, `%XX`, missing values and stray `%` without panicking.
    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1&b=x+y%2Cz&c&d=%&e=%zz&f=%4"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y,z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%".into()),
                ("e".into(), "%zz".into()),
                ("f".into(), "%4".into()),
            ]
        );
    }

    /// The real paths route to their protocols; anything else to none.
    #[test]
    fn paths() {
        assert_eq!(Provider::for_path("/v1/realtime"), Some(Provider::OpenAi));
        assert_eq!(Provider::for_path("/v1/listen"), Some(Provider::Deepgram));
        assert_eq!(
            Provider::for_path("/v1/convai/conversation"),
            Some(Provider::ElevenLabs)
        );
        assert_eq!(Provider::for_path(gemini::PATH), Some(Provider::Gemini));
        assert_eq!(Provider::for_path("/v1/realtime/"), None);
        assert_eq!(Provider::for_path("/"), None);
    }
}
