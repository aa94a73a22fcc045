//! The run: N callers against the router, ramped and held, each streaming its
//! [`CallerSignal`] at real time, with the provider of [`crate::provider`] at the far end;
//! then the measurements are read and the [`Report`] built.
//!
//! # Timeline of a run
//!
//! `t0` is the run's start. Session `i` (0-based) opens its WebSocket at
//! `t0 + ramp × i / N`, sends its `start` and then one 20 ms frame every 20 ms (on a clock
//! that catches up if it runs late, so the audio rate holds) until `t0 + ramp + duration`:
//! every session is live through the **steady window** `[t0 + ramp, t0 + ramp + duration]`,
//! over which the router's CPU time is measured. After its last frame a caller waits up to
//! [`DRAIN_TIMEOUT`] for every echo, hangs up (Twilio `stop`, native `stop`), and waits up to
//! [`CLOSE_TIMEOUT`] for the router's close. Nothing outlives
//! `t0 + ramp + duration + `[`RUN_GRACE`]: sessions still running then are aborted and
//! counted as failed (`timeout`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxroute_codecs::g711::G711Law;
use voxroute_codecs::opus::{MAX_PACKET_SAMPLES, OpusDecoder};
use voxroute_codecs::{Channels, CodecError, SampleRate};

use crate::config::{LoadConfig, LoadError, Target, Transport};
use crate::measure::{ProcSample, dsp_cost};
use crate::provider::{
    PROVIDER_SAMPLE_RATE, Provider, RunState, SessionShared, lock, websocket_config,
};
use crate::report::{
    FrameCounts, Latencies, LoadGeneratorUsage, Report, ReportConfig, RouterUsage, SCHEMA,
    SessionCounts,
};
use crate::signal::{
    CALLER_FRAME_SAMPLES, CallerSignal, PREAMBLE_FRAMES, Speech, decode_symbol, expected_symbol,
};
use crate::webrtc::{
    FRAME_SAMPLES_48K, RtpIn, WebRtcLink, is_comfort_silence, return_shift_samples,
};

/// How long a caller's WebSocket upgrade may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a caller waits for the last echoes after its last frame.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a caller waits for the router's close after hanging up.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the steady window, how long the run may take to wind down before the remaining
/// sessions are aborted.
pub const RUN_GRACE: Duration = Duration::from_secs(30);

/// How long after the last session ended the router's memory is read again.
const SETTLE: Duration = Duration::from_secs(1);

/// The callers' frame period.
const FRAME_PERIOD: Duration = Duration::from_millis(20);

/// Runs `config` with its own provider, bound on `config.provider_addr` (the router must
/// already be configured to dial it: see [`Provider::router_config`]).
///
/// # Errors
/// See [`run_with_provider`]; also [`LoadError::ProviderBind`].
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    config.validate()?;
    let provider = Provider::bind(config.provider_addr).await?;
    run_with_provider(config, &provider).await
}

/// Runs `config` against the router with `provider` at the far end
/// (`config.provider_addr` is ignored). Sessions that fail are counted in the report; only
/// a run that cannot be made is an error.
///
/// # Errors
/// [`LoadError::Invalid`] or [`LoadError::NotLoopback`] for the configuration,
/// [`LoadError::ProviderBusy`] if another run uses `provider`,
/// [`LoadError::RouterProcess`] if `router_pid` cannot be read, [`LoadError::Dsp`] if the
/// reference chains cannot be built.
pub async fn run_with_provider(
    config: LoadConfig,
    provider: &Provider,
) -> Result<Report, LoadError> {
    config.validate()?;
    let endpoint = endpoint_url(&config).await?;
    let (speech, speech_label) = match &config.speech_wav {
        Some(path) => match Speech::from_wav(path) {
            Ok(speech) => (speech, path.display().to_string()),
            Err(error) => {
                tracing::warn!(%error, "speech fixture unavailable; using synthetic speech");
                (Speech::synthetic(), "synthetic".to_owned())
            }
        },
        None => (Speech::synthetic(), "synthetic".to_owned()),
    };
    let run = Arc::new(RunState::default());
    let sessions: Vec<Arc<SessionShared>> = (0..config.sessions)
        .map(|id| Arc::new(SessionShared::new(id)))
        .collect();
    {
        let mut registry = lock(&run.sessions);
        for session in &sessions {
            registry.insert(session.id, Arc::clone(session));
        }
    }
    let _guard = provider.begin(Arc::clone(&run))?;
    let read_router = |pid: Option<u32>| -> Result<Option<ProcSample>, LoadError> {
        pid.map(|pid| ProcSample::read(Some(pid)))
            .transpose()
            .map_err(LoadError::RouterProcess)
    };
    let router_before = read_router(config.router_pid)?;

    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    let steady_start = t0 + config.ramp;
    let end = steady_start + config.duration;
    let context = Arc::new(CallerContext {
        endpoint,
        transport: config.transport,
        api_key: config.api_key.clone(),
        target: config.target.clone(),
        run: Arc::clone(&run),
    });
    let mut callers = tokio::task::JoinSet::new();
    let count = u64::from(config.sessions);
    for (i, session) in sessions.iter().enumerate() {
        let offset = config.ramp.mul_f64(i as f64 / count as f64);
        let signal = CallerSignal::new(speech.clone(), session.id);
        callers.spawn(caller(
            Arc::clone(&context),
            Arc::clone(session),
            signal,
            t0 + offset,
            end,
        ));
    }

    tokio::time::sleep_until(steady_start.into()).await;
    let router_steady_start = read_router(config.router_pid)?;
    let self_steady_start = ProcSample::read(None).ok();
    tokio::time::sleep_until(end.into()).await;
    let router_steady_end = read_router(config.router_pid)?;
    let self_steady_end = ProcSample::read(None).ok();

    let mut outcomes = Vec::with_capacity(sessions.len());
    let deadline = tokio::time::Instant::from(end + RUN_GRACE);
    while !callers.is_empty() {
        match tokio::time::timeout_at(deadline, callers.join_next()).await {
            Ok(Some(Ok(outcome))) => outcomes.push(outcome),
            Ok(Some(Err(_))) | Ok(None) => {}
            Err(_) => {
                callers.abort_all();
                break;
            }
        }
    }
    tokio::time::sleep(SETTLE).await;
    let router_after = read_router(config.router_pid)?;
    let wall_secs = t0.elapsed().as_secs_f64();

    // The counts.
    let mut counts = SessionCounts {
        attempted: count,
        provider_connections: run.provider_connections.load(Ordering::Relaxed),
        unidentified_connections: run.unidentified_connections.load(Ordering::Relaxed),
        ..SessionCounts::default()
    };
    let mut frames = FrameCounts::default();
    let mut pacing_late_max = Duration::ZERO;
    for outcome in &outcomes {
        if outcome.established {
            counts.established += 1;
        }
        if outcome.dropped {
            counts.dropped += 1;
        }
        if let Some(reason) = outcome.failure {
            *counts.failures.entry(reason.to_owned()).or_default() += 1;
        }
        frames.sent += outcome.frames_sent;
        frames.received += outcome.frames_received;
        frames.marker_checks += outcome.marker_checks;
        frames.marker_mismatches += outcome.marker_mismatches;
        frames.late += outcome.late_frames;
        pacing_late_max = pacing_late_max.max(outcome.pacing_late_max);
    }
    let unfinished = count.saturating_sub(outcomes.len() as u64);
    if unfinished > 0 {
        *counts.failures.entry("timeout".to_owned()).or_default() += unfinished;
    }
    counts.failed = count - counts.established;
    for session in &sessions {
        let times = lock(&session.times);
        frames.received_by_provider += times.provider_frames;
        frames.marker_checks += times.marker_checks;
        frames.marker_mismatches += times.marker_mismatches;
        frames.late += times.late_frames;
    }
    for outcome in &outcomes {
        let at_provider = lock(&outcome.session.times).provider_frames;
        frames.lost_to_provider += outcome.frames_sent.saturating_sub(at_provider);
        frames.lost_to_caller += at_provider.saturating_sub(outcome.frames_received);
        frames.lost += outcome.frames_sent.saturating_sub(outcome.frames_received);
    }
    frames.pacing_late_max_ms = pacing_late_max.as_secs_f64() * 1_000.0;

    let recorder = &run.recorder;
    let latency_ms = Latencies {
        caller_to_provider: lock(&recorder.caller_to_provider).summary(),
        provider_to_caller: lock(&recorder.provider_to_caller).summary(),
        round_trip: lock(&recorder.round_trip).summary(),
    };
    let setup_ms = lock(&recorder.setup).summary();

    let steady_secs = config.duration.as_secs_f64();
    let session_seconds_steady = counts.established as f64 * steady_secs;
    let per_session_second = |cpu: f64| {
        if session_seconds_steady > 0.0 {
            cpu / session_seconds_steady
        } else {
            0.0
        }
    };
    let router = match (
        router_before,
        router_steady_start,
        router_steady_end,
        router_after,
    ) {
        (Some(before), Some(start), Some(steady), Some(after)) => {
            let cpu_seconds_steady = (steady.cpu_seconds - start.cpu_seconds).max(0.0);
            Some(RouterUsage {
                cpu_seconds_steady,
                session_seconds_steady,
                cpu_seconds_per_session_second: per_session_second(cpu_seconds_steady),
                cpu_seconds_total: (after.cpu_seconds - before.cpu_seconds).max(0.0),
                rss_before_kib: before.rss_kib,
                rss_steady_kib: steady.rss_kib,
                rss_after_kib: after.rss_kib,
                rss_per_session_kib: if counts.established > 0 {
                    (steady.rss_kib as f64 - before.rss_kib as f64) / counts.established as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let load_generator = LoadGeneratorUsage {
        cpu_seconds_per_session_second: match (self_steady_start, self_steady_end) {
            (Some(a), Some(b)) => per_session_second((b.cpu_seconds - a.cpu_seconds).max(0.0)),
            _ => 0.0,
        },
    };

    let provider_rate_hz = run.provider_rate_hz.load(Ordering::Relaxed);
    let dsp_rate = SampleRate::new(provider_rate_hz).unwrap_or(SampleRate::HZ_16000);
    let dsp = dsp_cost(config.transport, dsp_rate, &speech)?;
    let efficiency = router
        .as_ref()
        .filter(|r| r.cpu_seconds_per_session_second > 0.0)
        .map(|r| dsp.cpu_seconds_per_session_second / r.cpu_seconds_per_session_second);

    Ok(Report {
        schema: SCHEMA.to_owned(),
        config: ReportConfig {
            router_url: context.endpoint.clone(),
            transport: config.transport,
            sessions: config.sessions,
            ramp_secs: config.ramp.as_secs_f64(),
            duration_secs: steady_secs,
            target: config.target.clone(),
            provider_url: provider.url(),
            provider_sample_rate_hz: provider_rate_hz,
            router_pid: config.router_pid,
            speech: speech_label,
        },
        started_at: started_at.to_rfc3339(),
        wall_secs,
        sessions: counts,
        frames,
        latency_ms,
        setup_ms,
        router,
        dsp: Some(dsp),
        efficiency,
        load_generator,
    })
}

/// The full endpoint URL for `config`, after checking that the router is on loopback.
async fn endpoint_url(config: &LoadConfig) -> Result<String, LoadError> {
    let url = config.router_url.trim();
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        LoadError::Invalid(format!(
            "the router URL must be ws://HOST:PORT on loopback, not `{url}`"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(LoadError::Invalid(format!("bad router URL `{url}`")));
    }
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| LoadError::Invalid(format!("cannot resolve `{authority}`: {e}")))?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|addr| !addr.ip().is_loopback()) {
        return Err(LoadError::NotLoopback(authority.to_owned()));
    }
    let path = if path.is_empty() || path == "/" {
        config.transport.path()
    } else {
        path
    };
    let scheme = match config.transport {
        Transport::WebRtc => "http",
        Transport::Twilio | Transport::Native => "ws",
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// What every caller of a run shares.
struct CallerContext {
    /// The full endpoint URL.
    endpoint: String,
    transport: Transport,
    api_key: Option<String>,
    target: Target,
    run: Arc<RunState>,
}

/// How one session went, from the caller's side.
struct SessionOutcome {
    session: Arc<SessionShared>,
    established: bool,
    /// Closed by the router before the caller hung up, after being established.
    dropped: bool,
    failure: Option<&'static str>,
    frames_sent: u64,
    frames_received: u64,
    marker_checks: u64,
    marker_mismatches: u64,
    late_frames: u64,
    pacing_late_max: Duration,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The caller's half of one session's accounting: frames back, in order.
struct Receiver {
    session: Arc<SessionShared>,
    run: Arc<RunState>,
    transport: Transport,
    /// Samples received and not yet a whole frame.
    pending: Vec<i16>,
    /// WebRTC only: the way back's Opus decoding and marker alignment.
    opus: Option<OpusReturn>,
    /// Frames received so far: the position of the next one.
    received: u64,
    marker_checks: u64,
    marker_mismatches: u64,
    late_frames: u64,
    /// No marker mismatch seen: positions still match sequences.
    aligned: bool,
    /// The router's close frame (or the end of the stream) has come.
    closed: bool,
}

/// A WebRTC caller's way back: each RTP packet is one frame (its arrival is the frame's),
/// but the echo sits [`return_shift_samples`] later in the decoded stream, where its marker is
/// read (see [`crate::webrtc`]).
struct OpusReturn {
    decoder: OpusDecoder,
    /// One packet decoded.
    decoded: Vec<i16>,
    /// Decoded 48 kHz audio from the start of frame `checked` on.
    history: Vec<i16>,
    /// Frames whose marker position has been read.
    checked: u64,
    /// How far the echo sits into the decoded stream, in samples.
    shift_samples: usize,
}

impl OpusReturn {
    fn new(provider_rate: SampleRate) -> Result<OpusReturn, CodecError> {
        Ok(OpusReturn {
            decoder: OpusDecoder::new(Channels::Mono)?,
            decoded: vec![0; MAX_PACKET_SAMPLES],
            history: Vec::new(),
            checked: 0,
            shift_samples: return_shift_samples(provider_rate)?,
        })
    }
}

/// What a caller's link brought.
enum Inbound {
    /// A WebSocket message.
    Message(Message),
    /// One RTP payload (WebRTC) and its arrival.
    Rtp { payload: Bytes, at: Instant },
    /// The connection is gone.
    Closed,
}

impl Receiver {
    /// Takes what the link brought.
    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(message) => self.on_message(message),
            Inbound::Rtp { payload, at } => self.on_rtp(&payload, at),
            Inbound::Closed => self.closed = true,
        }
    }

    /// One RTP payload: comfort silence is no frame; anything else is the next frame back.
    fn on_rtp(&mut self, payload: &[u8], received_at: Instant) {
        let Some(mut opus) = self.opus.take() else {
            return;
        };
        if !is_comfort_silence(payload)
            && let Ok(samples) = opus.decoder.decode(payload, &mut opus.decoded)
        {
            let seq = self.received;
            self.received += 1;
            opus.history.extend_from_slice(&opus.decoded[..samples]);
            let window = opus.shift_samples..opus.shift_samples + FRAME_SAMPLES_48K;
            while opus.history.len() >= window.end {
                self.check_marker(opus.checked, &opus.history[window.clone()], 48_000);
                opus.history.drain(..FRAME_SAMPLES_48K);
                opus.checked += 1;
            }
            self.time_frame(seq, received_at);
        }
        self.opus = Some(opus);
    }

    /// Takes one message from the router.
    fn on_message(&mut self, message: Message) {
        let received_at = Instant::now();
        match (self.transport, message) {
            (Transport::Twilio, Message::Text(text)) => {
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    return;
                };
                if value["event"] != "media" {
                    return;
                }
                let Some(payload) = value["media"]["payload"].as_str() else {
                    return;
                };
                let Ok(codes) = BASE64.decode(payload) else {
                    return;
                };
                let law = G711Law::Mulaw;
                self.pending
                    .extend(codes.iter().map(|&code| law.decode_sample(code)));
            }
            (Transport::Native, Message::Binary(bytes)) => {
                self.pending.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
                );
            }
            (_, Message::Close(_)) => self.closed = true,
            _ => {}
        }
        while self.pending.len() >= CALLER_FRAME_SAMPLES {
            let frame: Vec<i16> = self.pending.drain(..CALLER_FRAME_SAMPLES).collect();
            self.on_frame(&frame, received_at);
        }
    }

    /// Frame number `self.received` has come back at `received_at`.
    fn on_frame(&mut self, frame: &[i16], received_at: Instant) {
        let seq = self.received;
        self.received += 1;
        self.check_marker(seq, frame, crate::signal::CALLER_RATE_HZ);
        self.time_frame(seq, received_at);
    }

    /// Reads the marker frame `seq` should carry, if it is a marker position.
    fn check_marker(&mut self, seq: u64, frame: &[i16], sample_rate_hz: u32) {
        if seq >= PREAMBLE_FRAMES
            && let Some(symbol) = expected_symbol(self.session.id, seq)
        {
            self.marker_checks += 1;
            if decode_symbol(frame, sample_rate_hz) != Some(symbol) {
                tracing::debug!(
                    session = self.session.id,
                    seq,
                    "marker mismatch at the caller"
                );
                self.marker_mismatches += 1;
                self.aligned = false;
            }
        }
    }

    /// Frame `seq` came back at `received_at`: its latencies, while positions still match.
    fn time_frame(&mut self, seq: u64, received_at: Instant) {
        if !self.aligned {
            return;
        }
        let (sent_at, echoed_at) = {
            let times = lock(&self.session.times);
            (times.caller_sent.get(seq), times.provider_sent.get(seq))
        };
        let recorder = &self.run.recorder;
        match sent_at {
            Some(sent_at) => {
                lock(&recorder.round_trip).record(received_at.saturating_duration_since(sent_at))
            }
            None => self.late_frames += 1,
        }
        // The provider notes the preamble's echo instants only once it has read the whole
        // preamble, which may be after those echoes came back: they give no sample.
        if seq >= PREAMBLE_FRAMES
            && let Some(echoed_at) = echoed_at
        {
            lock(&recorder.provider_to_caller)
                .record(received_at.saturating_duration_since(echoed_at));
        }
    }
}

/// One session's connection to the router, whatever its transport.
enum Link {
    /// Twilio or native: one WebSocket.
    Ws {
        sink: SplitSink<Ws, Message>,
        stream: SplitStream<Ws>,
        encoder: FrameEncoder,
    },
    /// A peer connection.
    WebRtc(Box<WebRtcLink>),
}

impl Link {
    /// Opens the session (upgrade and opening messages, or the SDP exchange), noting when
    /// it started; `None` if it cannot be opened.
    async fn open(context: &CallerContext, session: &SessionShared) -> Option<Link> {
        if context.transport == Transport::WebRtc {
            let rest = context.endpoint.strip_prefix("http://")?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (target_key, target_name) = context.target.query_pair();
            let path_and_query = format!("{path}?{target_key}={target_name}");
            lock(&session.times).upgrade_started_at = Some(Instant::now());
            let ssrc = 0x5000_0000 | session.id;
            return match WebRtcLink::connect(
                authority,
                &path_and_query,
                context.api_key.as_deref(),
                ssrc,
                CONNECT_TIMEOUT,
            )
            .await
            {
                Ok(link) => Some(Link::WebRtc(Box::new(link))),
                Err(error) => {
                    tracing::debug!(%error, session = session.id, "WebRTC call failed");
                    None
                }
            };
        }
        let ws = connect(context, session).await?;
        let (mut sink, stream) = ws.split();
        let mut encoder = FrameEncoder::new(context.transport, session.id);
        for message in encoder.start_messages(context) {
            sink.send(message).await.ok()?;
        }
        Some(Link::Ws {
            sink,
            stream,
            encoder,
        })
    }

    /// Sends frame `seq` of `signal`; false if the connection is gone.
    async fn send_frame(&mut self, seq: u64, signal: &CallerSignal) -> bool {
        match self {
            Link::Ws { sink, encoder, .. } => sink
                .send(encoder.frame(seq, signal.frame(seq)))
                .await
                .is_ok(),
            Link::WebRtc(link) => link.send_frame(signal).await.is_ok(),
        }
    }

    /// What the router sent next.
    async fn next(&mut self) -> Inbound {
        match self {
            Link::Ws { stream, .. } => match stream.next().await {
                Some(Ok(message)) => Inbound::Message(message),
                Some(Err(_)) | None => Inbound::Closed,
            },
            Link::WebRtc(link) => match link.next().await {
                RtpIn::Packet { payload, at } => Inbound::Rtp { payload, at },
                RtpIn::Closed => Inbound::Closed,
            },
        }
    }

    /// Hangs up; true if the router's close is still to be waited for.
    async fn hang_up(&mut self) -> bool {
        match self {
            Link::Ws { sink, encoder, .. } => {
                let _ = sink.send(encoder.stop_message()).await;
                true
            }
            // The router answers DELETE once the session is over.
            Link::WebRtc(link) => !link.hang_up(CLOSE_TIMEOUT).await,
        }
    }

    async fn close(self) {
        match self {
            Link::Ws { mut sink, .. } => {
                let _ = sink.close().await;
            }
            Link::WebRtc(link) => link.close().await,
        }
    }
}

/// One session, from its start instant to its hang-up.
async fn caller(
    context: Arc<CallerContext>,
    session: Arc<SessionShared>,
    signal: CallerSignal,
    start_at: Instant,
    end_at: Instant,
) -> SessionOutcome {
    tokio::time::sleep_until(start_at.into()).await;
    let mut outcome = SessionOutcome {
        session: Arc::clone(&session),
        established: false,
        dropped: false,
        failure: None,
        frames_sent: 0,
        frames_received: 0,
        marker_checks: 0,
        marker_mismatches: 0,
        late_frames: 0,
        pacing_late_max: Duration::ZERO,
    };
    let opus = match context.transport {
        Transport::WebRtc => match OpusReturn::new(PROVIDER_SAMPLE_RATE) {
            Ok(opus) => Some(opus),
            Err(_) => {
                outcome.failure = Some("codec");
                return outcome;
            }
        },
        Transport::Twilio | Transport::Native => None,
    };
    let Some(mut link) = Link::open(&context, &session).await else {
        outcome.failure = Some("connect");
        return outcome;
    };
    let mut receiver = Receiver {
        session: Arc::clone(&session),
        run: Arc::clone(&context.run),
        transport: context.transport,
        pending: Vec::with_capacity(2 * CALLER_FRAME_SAMPLES),
        opus,
        received: 0,
        marker_checks: 0,
        marker_mismatches: 0,
        late_frames: 0,
        aligned: true,
        closed: false,
    };
    let mut write_failed = false;

    // Stream at real time until the end of the steady window.
    let mut clock = tokio::time::interval(FRAME_PERIOD);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0u64;
    while !write_failed && !receiver.closed {
        tokio::select! {
            scheduled = clock.tick() => {
                let now = Instant::now();
                if now >= end_at {
                    break;
                }
                outcome.pacing_late_max = outcome
                    .pacing_late_max
                    .max(now.saturating_duration_since(scheduled.into_std()));
                lock(&session.times).caller_sent.put(seq, Instant::now());
                if !link.send_frame(seq, &signal).await {
                    write_failed = true;
                }
                seq += 1;
            }
            inbound = link.next() => receiver.on_inbound(inbound),
        }
    }
    outcome.frames_sent = seq;
    let closed_early = receiver.closed || write_failed;

    // Drain: wait for the echoes still on their way.
    if !closed_early {
        let drain_until = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while receiver.received < seq && !receiver.closed {
            match tokio::time::timeout_at(drain_until, link.next()).await {
                Ok(inbound) => receiver.on_inbound(inbound),
                Err(_) => break,
            }
        }
    }
    // Hang up and wait for the router's close.
    if !receiver.closed && !write_failed && link.hang_up().await {
        let close_until = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while !receiver.closed {
            match tokio::time::timeout_at(close_until, link.next()).await {
                Ok(inbound) => receiver.on_inbound(inbound),
                Err(_) => break,
            }
        }
    }
    link.close().await;

    outcome.established = lock(&session.times).provider_first_frame_at.is_some();
    outcome.frames_received = receiver.received.min(seq);
    outcome.marker_checks = receiver.marker_checks;
    outcome.marker_mismatches = receiver.marker_mismatches;
    outcome.late_frames = receiver.late_frames;
    if closed_early {
        // Established and closed by the router: dropped; never established: failed.
        outcome.dropped = outcome.established;
        outcome.failure = Some("closed_early");
    } else if !outcome.established {
        outcome.failure = Some("no_provider_frame");
    }
    outcome
}

/// Opens the session's WebSocket, noting when the upgrade started.
async fn connect(context: &CallerContext, session: &SessionShared) -> Option<Ws> {
    let request = context.endpoint.as_str().into_client_request().ok()?;
    lock(&session.times).upgrade_started_at = Some(Instant::now());
    let connecting =
        tokio_tungstenite::connect_async_with_config(request, Some(websocket_config()), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _response))) => Some(ws),
        Ok(Err(error)) => {
            tracing::debug!(%error, session = session.id, "upgrade failed");
            None
        }
        Err(_) => None,
    }
}

/// Writes one session's messages in its transport's format.
struct FrameEncoder {
    transport: Transport,
    /// Twilio's stream id, on every message.
    stream_sid: String,
    /// Twilio `sequenceNumber` of the last message.
    sequence: u64,
    /// mu-law codes of the current frame.
    codes: Vec<u8>,
}

impl FrameEncoder {
    fn new(transport: Transport, session_id: u32) -> FrameEncoder {
        FrameEncoder {
            transport,
            stream_sid: format!("MZloadtest{session_id:024}"),
            sequence: 0,
            codes: vec![0; CALLER_FRAME_SAMPLES],
        }
    }

    /// What opens the session: Twilio `connected` and `start`, or the native `start`.
    fn start_messages(&mut self, context: &CallerContext) -> Vec<Message> {
        let (target_key, target_name) = context.target.query_pair();
        match self.transport {
            Transport::Twilio => {
                let mut parameters = serde_json::Map::new();
                parameters.insert(target_key.to_owned(), target_name.into());
                if let Some(key) = &context.api_key {
                    parameters.insert("api_key".to_owned(), key.as_str().into());
                }
                self.sequence += 1;
                let start = json!({
                    "event": "start",
                    "sequenceNumber": self.sequence.to_string(),
                    "streamSid": self.stream_sid,
                    "start": {
                        "accountSid": "AC00000000000000000000000000000000",
                        "streamSid": self.stream_sid,
                        "callSid": "CA00000000000000000000000000000000",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        "customParameters": parameters,
                    },
                });
                vec![
                    Message::text(
                        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                            .to_string(),
                    ),
                    Message::text(start.to_string()),
                ]
            }
            // WebRTC sessions have no FrameEncoder (see `Link`).
            Transport::Native | Transport::WebRtc => {
                let mut start = json!({"type": "start", "codec": "pcm16", "sample_rate": 8000});
                start[target_key] = target_name.into();
                if let Some(key) = &context.api_key {
                    start["api_key"] = key.as_str().into();
                }
                vec![Message::text(start.to_string())]
            }
        }
    }

    /// Frame `seq` as one message.
    fn frame(&mut self, seq: u64, pcm: &[i16]) -> Message {
        match self.transport {
            Transport::Twilio => {
                let law = G711Law::Mulaw;
                for (code, &sample) in self.codes.iter_mut().zip(pcm) {
                    *code = law.encode_sample(sample);
                }
                self.sequence += 1;
                let text = format!(
                    r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{}"}},"streamSid":"{}"}}"#,
                    self.sequence,
                    seq + 1,
                    seq * 20,
                    BASE64.encode(&self.codes),
                    self.stream_sid
                );
                Message::text(text)
            }
            // WebRTC sessions have no FrameEncoder (see `Link`).
            Transport::Native | Transport::WebRtc => {
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                Message::Binary(Bytes::from(bytes))
            }
        }
    }

    /// The hang-up.
    fn stop_message(&mut self) -> Message {
        match self.transport {
            Transport::Twilio => {
                self.sequence += 1;
                Message::text(
                    json!({
                        "event": "stop",
                        "sequenceNumber": self.sequence.to_string(),
                        "streamSid": self.stream_sid,
                        "stop": {
                            "accountSid": "AC00000000000000000000000000000000",
                            "callSid": "CA00000000000000000000000000000000",
                        },
                    })
                    .to_string(),
                )
            }
            Transport::Native | Transport::WebRtc => {
                Message::text(json!({"type": "stop"}).to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_routers_are_driven() {
        let mut config = LoadConfig::new("ws://127.0.0.1:8080", Transport::Twilio, 1);
        assert_eq!(
            endpoint_url(&config).await.unwrap(),
            "ws://127.0.0.1:8080/v1/telephony/twilio"
        );
        config.router_url = "ws://localhost:8080/custom".into();
        config.transport = Transport::Native;
        assert!(
            endpoint_url(&config)
                .await
                .unwrap()
                .ends_with(":8080/custom")
        );
        for bad in [
            "ws://10.1.2.3:8080",
            "ws://192.0.2.1:80",
            "http://127.0.0.1:8080",
        ] {
            config.router_url = bad.into();
            assert!(endpoint_url(&config).await.is_err(), "{bad}");
        }
    }
}
