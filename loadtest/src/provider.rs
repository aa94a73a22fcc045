//! The in-process provider: a ws-pcm server (voxroute's convention for self-hosted models,
//! `actors/src/provider/ws_pcm.rs`) that echoes every binary frame at once and timestamps
//! what it receives on the load generator's clock.
//!
//! The router is configured (by whoever starts it) with a `ws-pcm` provider whose `url` is
//! [`Provider::url`]; [`Provider::router_config`] prints the table. The router dials one
//! connection per session and announces the PCM rate in `X-Voxroute-Sample-Rate`. ws-pcm has
//! no place for a session id, so the provider reads it from the audio: the first
//! [`PREAMBLE_FRAMES`] frames of every session carry it ([`crate::signal`]).
//!
//! Why not the stand-in of [`crate::standin`]? Its protocols (OpenAI, Deepgram, ElevenLabs,
//! Gemini) wrap audio in JSON and base64 at both ends, which would be measured as the
//! router's cost, and it has no hook to timestamp frames. ws-pcm is the cheapest upstream the
//! router has, so what is measured is the router's own work.
//!
//! One run at a time uses a provider ([`LoadError::ProviderBusy`] otherwise); a provider can
//! serve several runs one after the other (the end-to-end tests do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;
use voxroute_codecs::SampleRate;

use crate::config::LoadError;
use crate::measure::Histogram;
use crate::signal::{PREAMBLE_FRAMES, decode_symbol, expected_symbol, session_from_preamble};

/// The header in which the router announces the PCM rate (`ws_pcm::SAMPLE_RATE_HEADER`).
const SAMPLE_RATE_HEADER: &str = "x-voxroute-sample-rate";

/// The rate assumed when the router does not say.
const DEFAULT_RATE_HZ: u32 = 16_000;

/// The path of [`Provider::url`] (any path is served; this one names the purpose).
const PATH: &str = "/loadtest";

/// Frames of send/receive instants kept per session and direction: 512 frames, 10 s. A frame
/// that comes back later than that gets no latency sample (it is counted as late).
const RING_FRAMES: usize = 512;

/// Locks `mutex`, ignoring poisoning: every critical section here leaves the data valid.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The in-process ws-pcm provider, serving until dropped.
#[derive(Debug)]
pub struct Provider {
    addr: SocketAddr,
    shared: Arc<ProviderShared>,
    task: JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    /// Listens on `addr` (loopback only; port 0 picks one).
    ///
    /// # Errors
    /// [`LoadError::NotLoopback`], or [`LoadError::ProviderBind`] when the port is taken.
    pub async fn bind(addr: SocketAddr) -> Result<Provider, LoadError> {
        if !addr.ip().is_loopback() {
            return Err(LoadError::NotLoopback(addr.to_string()));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| LoadError::ProviderBind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| LoadError::ProviderBind { addr, source })?;
        let shared = Arc::new(ProviderShared::default());
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Provider { addr, shared, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL the router must dial: `ws://ADDR/loadtest`.
    pub fn url(&self) -> String {
        format!("ws://{}{PATH}", self.addr)
    }

    /// The router configuration (TOML) that defines provider `name` as this server, and
    /// raises the per-key session-rate limits so that `sessions` can start within a run.
    pub fn router_config(&self, name: &str, sessions: u32) -> String {
        router_config(&self.url(), name, sessions)
    }

    /// Installs `run` as the run the provider reports to.
    pub(crate) fn begin(&self, run: Arc<RunState>) -> Result<RunGuard<'_>, LoadError> {
        let mut current = lock(&self.shared.run);
        if current.is_some() {
            return Err(LoadError::ProviderBusy);
        }
        *current = Some(run);
        Ok(RunGuard { provider: self })
    }
}

/// The read buffer of every WebSocket this crate opens or accepts (callers, the provider,
/// the stand-in). tungstenite zero-fills the free part of its read buffer before every read,
/// so its 128 KiB default costs a 128 KiB memset per message (the router's own provider
/// sockets were measured at 13–18% of its CPU before the same change, `docs/performance.md`
/// §4.2); a larger message grows the buffer to its size.
pub const READ_BUFFER_BYTES: usize = 8 << 10;

/// The WebSocket settings of every socket this crate opens or accepts.
pub(crate) fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}

/// The rate the provider asks the router for (`sample_rate_hz` of the printed configuration).
pub const PROVIDER_SAMPLE_RATE: SampleRate = SampleRate::HZ_16000;

/// The TOML that routes provider `name` to `url`, as [`Provider::router_config`].
pub fn router_config(url: &str, name: &str, sessions: u32) -> String {
    let burst = sessions.max(100);
    format!(
        "[providers.{name}]\nkind = \"ws-pcm\"\nurl = \"{url}\"\nsample_rate_hz = {}\n\n\
         [limits]\nnew_sessions_per_minute = {}\nnew_sessions_burst = {burst}\n",
        PROVIDER_SAMPLE_RATE.hz(),
        burst.saturating_mul(60)
    )
}

/// Uninstalls the run when dropped.
pub(crate) struct RunGuard<'a> {
    provider: &'a Provider,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.provider.shared.run) = None;
    }
}

#[derive(Debug, Default)]
struct ProviderShared {
    /// The run in progress, if any; connections take a reference when they open.
    run: Mutex<Option<Arc<RunState>>>,
}

/// What one run's callers and provider connections share.
#[derive(Debug, Default)]
pub(crate) struct RunState {
    /// The run's sessions, by the id their preamble carries.
    pub(crate) sessions: Mutex<HashMap<u32, Arc<SessionShared>>>,
    /// Latency and set-up histograms of the whole run.
    pub(crate) recorder: Recorder,
    /// Upstream connections accepted during the run.
    pub(crate) provider_connections: AtomicU64,
    /// Connections whose preamble named no session of the run.
    pub(crate) unidentified_connections: AtomicU64,
    /// The PCM rate the router announced (the last connection's).
    pub(crate) provider_rate_hz: AtomicU32,
}

/// The run's histograms.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// Frame sent by the caller → the same frame received by the provider.
    pub(crate) caller_to_provider: Mutex<Histogram>,
    /// Frame echoed by the provider → received by the caller.
    pub(crate) provider_to_caller: Mutex<Histogram>,
    /// Frame sent by the caller → its echo received by the caller.
    pub(crate) round_trip: Mutex<Histogram>,
    /// WebSocket upgrade started by the caller → first frame received by the provider.
    pub(crate) setup: Mutex<Histogram>,
}

/// The send/receive instants of the last [`RING_FRAMES`] frames of one direction, by sequence.
#[derive(Debug)]
pub(crate) struct Ring {
    slots: Vec<Option<(u64, Instant)>>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            slots: vec![None; RING_FRAMES],
        }
    }
}

impl Ring {
    /// Notes frame `seq` at `at`.
    pub(crate) fn put(&mut self, seq: u64, at: Instant) {
        self.slots[(seq % RING_FRAMES as u64) as usize] = Some((seq, at));
    }

    /// The instant of frame `seq`, if still held.
    pub(crate) fn get(&self, seq: u64) -> Option<Instant> {
        match self.slots[(seq % RING_FRAMES as u64) as usize] {
            Some((held, at)) if held == seq => Some(at),
            _ => None,
        }
    }
}

/// One session, shared by its caller task and its provider connection.
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// The id its preamble carries.
    pub(crate) id: u32,
    /// Everything both ends note, behind one lock (held for microseconds).
    pub(crate) times: Mutex<SessionTimes>,
}

/// What both ends of one session note.
#[derive(Debug, Default)]
pub(crate) struct SessionTimes {
    /// When the caller started the WebSocket upgrade.
    pub(crate) upgrade_started_at: Option<Instant>,
    /// When the caller sent each frame.
    pub(crate) caller_sent: Ring,
    /// When the provider echoed each frame.
    pub(crate) provider_sent: Ring,
    /// When the provider received frame 0.
    pub(crate) provider_first_frame_at: Option<Instant>,
    /// Upstream connections identified as this session (more than one: the router
    /// reconnected, and positions no longer match sequences).
    pub(crate) provider_connections: u32,
    /// Frames the provider received (and echoed).
    pub(crate) provider_frames: u64,
    /// Marker positions checked, at either end.
    pub(crate) marker_checks: u64,
    /// Marker positions that did not hold the expected symbol, at either end.
    pub(crate) marker_mismatches: u64,
    /// Frames whose sent instant had left the ring when they arrived (over 10 s late).
    pub(crate) late_frames: u64,
    /// Whether positions at the provider still match sequences (no mismatch seen).
    pub(crate) provider_aligned: bool,
}

impl SessionShared {
    pub(crate) fn new(id: u32) -> SessionShared {
        SessionShared {
            id,
            times: Mutex::new(SessionTimes {
                provider_aligned: true,
                ..SessionTimes::default()
            }),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<ProviderShared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let run = lock(&shared.run).clone();
                connections.spawn(connection(stream, run));
            }
            Err(error) => {
                // Per-connection failures (reset before accept, fd pressure): back off a
                // little so a persistent one does not spin.
                debug!(%error, "provider accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Where an upstream connection stands in identifying its session.
enum Binding {
    /// Reading the preamble: (received at, symbol) of each frame so far.
    Preamble(Vec<(Instant, Option<u8>)>),
    /// The session it belongs to.
    Bound(Arc<SessionShared>),
    /// Not a session of this run: echoed, not measured.
    Unknown,
}

/// Serves one upstream connection: echo every binary frame at once, account per 20 ms frame.
// The handshake callback's error type is tungstenite's `ErrorResponse`, fixed by its API.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, run: Option<Arc<RunState>>) {
    let _ = stream.set_nodelay(true);
    let mut announced_hz: Option<u32> = None;
    let callback = |request: &Request, response: Response| {
        announced_hz = request
            .headers()
            .get(SAMPLE_RATE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(response)
    };
    let accepting =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config()));
    let ws = match accepting.await {
        Ok(ws) => ws,
        Err(error) => {
            debug!(%error, "provider handshake failed");
            return;
        }
    };
    let rate_hz = announced_hz
        .filter(|&hz| voxroute_codecs::SampleRate::new(hz).is_ok())
        .unwrap_or(DEFAULT_RATE_HZ);
    let frame_samples = rate_hz as usize / 50;
    if let Some(run) = &run {
        run.provider_connections.fetch_add(1, Ordering::Relaxed);
        run.provider_rate_hz.store(rate_hz, Ordering::Relaxed);
    }
    let (mut sink, mut stream) = ws.split();
    let mut samples: Vec<i16> = Vec::with_capacity(frame_samples * 2);
    let mut position = 0u64;
    let mut binding = Binding::Preamble(Vec::with_capacity(PREAMBLE_FRAMES as usize));
    while let Some(message) = stream.next().await {
        let bytes = match message {
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Close(_)) => continue,
            Ok(_) => continue,
            Err(error) => {
                debug!(%error, "provider read failed");
                break;
            }
        };
        let received_at = Instant::now();
        if bytes.is_empty() || bytes.len() % 2 != 0 {
            continue;
        }
        samples.extend(
            bytes
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
        );
        // Account first, then stamp the echo instant and send: a caller can never see an
        // echo whose instant is not noted yet, and the bookkeeping (microseconds) is not
        // counted as the router's.
        let mut echoed = Vec::new();
        while samples.len() >= frame_samples {
            let frame: Vec<i16> = samples.drain(..frame_samples).collect();
            if let Some(run) = &run
                && let Some(stamp) =
                    on_frame(run, &mut binding, position, &frame, rate_hz, received_at)
            {
                echoed.push(stamp);
            }
            position += 1;
        }
        let echoed_at = Instant::now();
        for (session, seq) in echoed {
            lock(&session.times).provider_sent.put(seq, echoed_at);
        }
        if sink.send(Message::Binary(bytes)).await.is_err() {
            break;
        }
    }
}

/// Accounts for one 20 ms frame at `position` of an upstream connection; returns the
/// session and sequence whose echo instant is to be noted (once bound).
fn on_frame(
    run: &RunState,
    binding: &mut Binding,
    position: u64,
    frame: &[i16],
    rate_hz: u32,
    received_at: Instant,
) -> Option<(Arc<SessionShared>, u64)> {
    match binding {
        Binding::Preamble(held) => {
            held.push((received_at, decode_symbol(frame, rate_hz)));
            if held.len() < PREAMBLE_FRAMES as usize {
                return None;
            }
            let symbols: Option<Vec<u8>> = held.iter().map(|(_, s)| *s).collect();
            let session = symbols
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .and_then(session_from_preamble)
                .and_then(|id| lock(&run.sessions).get(&id).cloned());
            let Some(session) = session else {
                run.unidentified_connections.fetch_add(1, Ordering::Relaxed);
                *binding = Binding::Unknown;
                return None;
            };
            {
                let mut times = lock(&session.times);
                times.provider_connections += 1;
                if times.provider_connections > 1 {
                    times.provider_aligned = false;
                }
            }
            let held = std::mem::take(held);
            for (seq, (received_at, _)) in held.into_iter().enumerate() {
                account(run, &session, seq as u64, None, rate_hz, received_at);
            }
            // The preamble's echoes have gone already; no echo instant is noted for them.
            *binding = Binding::Bound(session);
            None
        }
        Binding::Bound(session) => {
            account(run, session, position, Some(frame), rate_hz, received_at);
            Some((Arc::clone(session), position))
        }
        Binding::Unknown => None,
    }
}

/// Notes frame `seq` of `session` at the provider; checks its marker if `frame` is given and
/// `seq` is a marker position.
fn account(
    run: &RunState,
    session: &SessionShared,
    seq: u64,
    frame: Option<&[i16]>,
    rate_hz: u32,
    received_at: Instant,
) {
    let mut times = lock(&session.times);
    times.provider_frames += 1;
    if seq == 0 {
        times.provider_first_frame_at = Some(received_at);
        if let Some(started) = times.upgrade_started_at {
            lock(&run.recorder.setup).record(received_at.saturating_duration_since(started));
        }
    }
    if let Some(frame) = frame
        && seq >= PREAMBLE_FRAMES
        && let Some(symbol) = expected_symbol(session.id, seq)
    {
        times.marker_checks += 1;
        if decode_symbol(frame, rate_hz) != Some(symbol) {
            debug!(session = session.id, seq, "marker mismatch at the provider");
            times.marker_mismatches += 1;
            times.provider_aligned = false;
        }
    }
    if !times.provider_aligned {
        return;
    }
    match times.caller_sent.get(seq) {
        Some(sent_at) => lock(&run.recorder.caller_to_provider)
            .record(received_at.saturating_duration_since(sent_at)),
        None => times.late_frames += 1,
    }
}
