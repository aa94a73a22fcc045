//! [`ProviderActor`]: one upstream connection, owning its socket and driving its adapter.
//!
//! # How a session uses it
//!
//! ```text
//! let provider = ProviderActor::new(spec, attempt, session_addr.recipient()).start();
//! provider.do_send(ProviderInput(ProviderCommand::Audio(frame)));   // 20 ms frames
//! // ... the session receives ProviderOutput { attempt, event } messages ...
//! provider.do_send(ProviderInput(ProviderCommand::Finish));         // or drop every handle
//! ```
//!
//! Events arrive in this order: `Ready` once (audio may flow), then any number of `Audio`,
//! `Transcript`, `SpeechStarted` and non-fatal `Error`, then at most one `Error { fatal: true }`,
//! then exactly one `Closed`, always last; after it the actor stops. `Closed { error: false }`
//! means the conversation ended (the session sent `Finish`, or the provider closed normally);
//! `Closed { error: true }` means the connection failed (refused, timed out, dropped, a fatal
//! protocol error) and the session should fail over.
//!
//! # Lifecycle
//!
//! - **Connecting**: on start the actor asks the adapter for its [`Endpoint`] and dials it
//!   (tokio-tungstenite, `TCP_NODELAY`). An in-process provider (`echo`) skips this.
//! - **Opening**: the socket is up; the adapter's `on_open` queues its setup messages. The
//!   adapter emits `Ready` when audio may flow (at once by default). Connecting plus opening
//!   must finish within [`PROVIDER_CONNECT_TIMEOUT`], or the connection fails with
//!   [`ProviderError::Timeout`]. Audio sent before `Ready` is queued, up to
//!   [`PRE_READY_BUFFER_MS`] of it: when more arrives the oldest frame is dropped and counted
//!   ([`ProviderStats::dropped_before_ready`]). On `Ready` the queue is sent, oldest
//!   first.
//! - **Ready**: each command goes through the adapter's `encode` into the writer queue; each
//!   frame read goes through `decode` to the session.
//! - **Finishing**: on `Finish` the adapter ends the conversation its provider's way; the actor
//!   waits up to [`PROVIDER_FINISH_TIMEOUT`] for the provider to close (events still flow),
//!   then closes the socket itself. Commands after `Finish` are dropped and counted.
//! - **Closing**: a close frame has been sent (or received); the actor waits up to
//!   [`PROVIDER_CLOSE_TIMEOUT`] for the close handshake to complete (the provider's reply, or
//!   the end of the connection), then stops. Stopping drops the
//!   socket, the queues and every buffer the actor holds.
//!
//! If the session goes away (its recipient is disconnected, or nobody holds an address of this
//! actor any more), the actor notices within [`SESSION_CHECK_INTERVAL`], closes the socket
//! with 1001 (going away) and stops, sending nothing more.
//!
//! # Backpressure and buffers
//!
//! Outbound frames go to a writer future (in this actor's context, so it dies with the actor)
//! through a queue of [`WRITER_QUEUE_FRAMES`]. When the provider does not read fast enough and
//! the queue is full, new frames are dropped and counted
//! ([`ProviderStats::frames_dropped_unsent`]): outbound audio is never buffered without bound
//! and the actor never waits on the socket. Inbound events go to the session with `do_send`;
//! the session's mailbox is the one queue on the way in (it is drained on the same arbiter,
//! and barge-in empties the session's own outbound queue).
//!
//! # Per-frame allocations (the performance issue will pool these)
//!
//! Out: the session's `Vec<i16>` in [`ProviderCommand::Audio`] and actix's envelope for
//! [`ProviderInput`]; the adapter's encoded frame (ws-pcm: one `Vec<u8>`, handed to the socket
//! without a copy). In: tungstenite's message buffer, the event's `Vec<i16>` (ws-pcm decode) and
//! the envelope for [`ProviderOutput`]. `echo` moves the session's vector back untouched. The
//! actor's own scratch ([`AdapterOutput`]) is reused across frames.
//!
//! # Panics
//!
//! None on anything the provider sends: every frame goes through the adapter's `decode`,
//! whose errors become events, and socket errors end the connection with `Closed`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, UrlError};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, trace};

use super::adapter::{
    AdapterOutput, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, ConnectRequest, Endpoint,
    ProviderAdapter, ProviderError, WsFrame, WsFrameRef,
};
use super::{ProviderCommand, ProviderEvent, ProviderSpec, adapter_for};

/// How long a provider has, from the actor's start, to accept the connection (TCP, TLS,
/// WebSocket upgrade) and get ready (its adapter emits `Ready`, e.g. after a setup
/// acknowledgement). Past it the connection fails with [`ProviderError::Timeout`], which is
/// retryable, so the session fails over. Five seconds covers a cold TLS handshake to a distant
/// region plus a setup round trip, and is still short enough for a caller waiting in silence.
pub const PROVIDER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long, after the session's `Finish`, the actor waits for the provider to close the
/// connection (e.g. Deepgram sends its last results after `CloseStream`, then closes) before
/// closing it itself.
pub const PROVIDER_FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the actor waits for the close handshake once a close frame is sent or received,
/// before it drops the socket anyway.
pub const PROVIDER_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How much caller audio, in milliseconds at the provider's rate, is kept while the provider
/// is not yet ready. Older audio is dropped: a late start should not make the whole call lag.
pub const PRE_READY_BUFFER_MS: u32 = 500;

/// Capacity of the queue between the actor and the socket writer, in frames (about one second
/// of 20 ms audio). When it is full, frames are dropped and counted.
pub const WRITER_QUEUE_FRAMES: usize = 50;

/// How often the actor checks that its session still exists.
pub const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Largest message accepted from a provider. A minute of 48 kHz PCM16 is 5.8 MB; anything
/// larger is a protocol error, not audio.
pub const PROVIDER_MAX_MESSAGE_BYTES: usize = 8 << 20;

/// The provider socket's read buffer, and the most one read asks of the kernel. tungstenite
/// zero-fills the free part of this buffer before every read, so its 128 KiB default cost
/// 13–18% of the router's CPU under load (a 128 KiB memset per provider message) and 128 KiB
/// of memory per session (`docs/performance.md` §4.2). A provider message is 0.3–8 KiB (one
/// 20 ms frame, raw or base64 in JSON); a larger one grows the buffer to its size.
pub const PROVIDER_READ_BUFFER_BYTES: usize = 8 << 10;

/// Longest close reason a WebSocket close frame can carry, in bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Session → provider: one command for the upstream. Send it with `do_send` or `try_send`;
/// there is no reply.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ProviderInput(pub ProviderCommand);

/// Provider → session: one event from the upstream, tagged with the connection's attempt
/// number so that a session running two connections during a failover can tell their events
/// apart.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ProviderOutput {
    /// The number the session gave this connection in [`ProviderActor::new`].
    pub attempt: u32,
    /// What happened.
    pub event: ProviderEvent,
}

/// Anyone → provider: returns the connection's [`ProviderStats`] so far (for metrics and
/// tests).
#[derive(Debug, Message)]
#[rtype(result = "ProviderStats")]
pub struct GetProviderStats;

/// Counters of one provider connection, from its start. The actor logs them at `debug!` when
/// it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Frames handed to the socket writer.
    pub frames_sent: u64,
    /// Text and binary frames read from the provider.
    pub frames_received: u64,
    /// Outbound frames dropped: the writer queue was full, the socket was closing, or the
    /// provider is in process (it has no socket).
    pub frames_dropped_unsent: u64,
    /// Audio commands dropped because more than [`PRE_READY_BUFFER_MS`]
    /// of audio arrived before the provider was ready (the oldest go first).
    pub dropped_before_ready: u64,
    /// Audio commands dropped because they came after `Finish` or after
    /// the connection closed.
    pub dropped_after_finish: u64,
    /// Inbound frames the adapter skipped on purpose (unknown event types, non-JSON text).
    pub frames_ignored: u64,
    /// Inbound frames the adapter rejected with a non-fatal error (each also sent to the
    /// session as `Error { fatal: false }`).
    pub decode_errors: u64,
}

/// Where the connection is in its life; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Dialling the provider.
    Connecting,
    /// The socket is up; waiting for the adapter's `Ready`.
    Opening,
    /// Audio flows both ways.
    Ready,
    /// `Finish` was encoded; waiting for the provider to close.
    Draining,
    /// A close frame was sent or received; waiting for the socket to end.
    Closing,
}

/// The actor owning one upstream connection. See the [module docs](self) for the protocol.
pub struct ProviderActor {
    /// The route's provider, for logs (never the URL: it may hold a key).
    spec: ProviderSpec,
    /// Echoed in every [`ProviderOutput`].
    attempt: u32,
    /// Where events go. When it disconnects, the actor closes and stops.
    events: Recipient<ProviderOutput>,
    /// The provider's protocol. Built for this connection only; dropped with the actor.
    adapter: Box<dyn ProviderAdapter>,
    /// Where the connection is.
    phase: Phase,
    /// The writer queue's sending end: set when the socket opens, taken when the actor starts
    /// closing (the writer then sends what is queued and ends). `None` in process.
    writer: Option<mpsc::Sender<Message>>,
    /// Audio commands received before `Ready`, oldest first, holding at most
    /// `pending_cap_samples` samples of audio. Emptied on `Ready`; dropped with the actor.
    pending: VecDeque<ProviderCommand>,
    /// Samples held in `pending`.
    pending_samples: usize,
    /// [`PRE_READY_BUFFER_MS`] at the provider's rate, in samples.
    pending_cap_samples: usize,
    /// `Finish` arrived before `Ready` with audio queued: finish once that audio is sent.
    finish_after_ready: bool,
    /// The conversation is ending by request (the session's `Finish` or the adapter's close):
    /// the end of the socket is then not a failure.
    finishing: bool,
    /// `Closed` was sent (or there is nobody to send it to): nothing more goes out.
    closed_sent: bool,
    /// Scratch the adapter writes into; drained after every hook, its capacity reused.
    out: AdapterOutput,
    /// Counters, see [`ProviderStats`].
    stats: ProviderStats,
    /// When the actor started, for the connect deadline and logs.
    started_at: Instant,
}

impl ProviderActor {
    /// A connection to the built-in provider `spec` describes. `attempt` is echoed in every
    /// [`ProviderOutput`]; `events` receives them. Start it with [`Actor::start`].
    pub fn new(spec: ProviderSpec, attempt: u32, events: Recipient<ProviderOutput>) -> Self {
        let adapter = adapter_for(&spec);
        Self::with_adapter(spec, adapter, attempt, events)
    }

    /// A connection driven by any adapter (a provider that needs more than the spec, such as an
    /// API key, or a scripted adapter in tests).
    pub fn with_adapter(
        spec: ProviderSpec,
        adapter: Box<dyn ProviderAdapter>,
        attempt: u32,
        events: Recipient<ProviderOutput>,
    ) -> Self {
        let pending_cap_samples = spec.sample_rate.samples_in_ms(PRE_READY_BUFFER_MS);
        ProviderActor {
            spec,
            attempt,
            events,
            adapter,
            phase: Phase::Connecting,
            writer: None,
            pending: VecDeque::new(),
            pending_samples: 0,
            pending_cap_samples,
            finish_after_ready: false,
            finishing: false,
            closed_sent: false,
            out: AdapterOutput::new(),
            stats: ProviderStats::default(),
            started_at: Instant::now(),
        }
    }

    /// Sends an event to the session, unless `Closed` has gone already.
    fn send(&self, event: ProviderEvent) {
        if !self.closed_sent {
            self.events.do_send(ProviderOutput {
                attempt: self.attempt,
                event,
            });
        }
    }

    /// Sends the one `Closed`.
    fn send_closed(&mut self, error: bool) {
        self.send(ProviderEvent::Closed { error });
        self.closed_sent = true;
    }

    /// Reports a connection-ending error: `Error { fatal: true }` then `Closed { error: true }`.
    fn report_fatal(&mut self, err: &ProviderError) {
        if self.closed_sent {
            return;
        }
        info!(
            provider = %self.spec.name,
            attempt = self.attempt,
            error = %err,
            retryable = err.is_retryable(),
            "provider connection failed"
        );
        self.send(ProviderEvent::Error {
            message: err.to_string(),
            fatal: true,
        });
        self.send_closed(true);
    }

    /// Fails the connection while the socket may still work: report, close politely, stop.
    fn fail(&mut self, err: ProviderError, ctx: &mut Context<Self>) {
        self.report_fatal(&err);
        self.close_socket(CLOSE_INTERNAL_ERROR, "", ctx);
    }

    /// Fails the connection whose socket is gone: report and stop at once.
    fn fail_dead(&mut self, err: ProviderError, ctx: &mut Context<Self>) {
        self.report_fatal(&err);
        self.writer = None;
        ctx.stop();
    }

    /// Starts the close handshake (or stops at once if there is no socket to close).
    fn close_socket(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        // Dropping the sender after queueing the close lets the writer send what is queued,
        // then the close, and end.
        match self.writer.take() {
            Some(writer) if writer.try_send(Message::Close(Some(frame))).is_ok() => {
                ctx.run_later(PROVIDER_CLOSE_TIMEOUT, |_, ctx| ctx.stop());
            }
            _ => ctx.stop(),
        }
    }

    /// The socket is up: start the writer and the reader, then open the adapter.
    fn on_connected(&mut self, socket: WsStream, ctx: &mut Context<Self>) {
        debug!(
            provider = %self.spec.name,
            attempt = self.attempt,
            elapsed_ms = self.started_at.elapsed().as_millis() as u64,
            "provider connected"
        );
        let (sink, stream) = socket.split();
        let (writer, queue) = mpsc::channel(WRITER_QUEUE_FRAMES);
        self.writer = Some(writer);
        ctx.spawn(
            write_frames(sink, queue)
                .into_actor(self)
                .map(|result, act, ctx| act.on_writer_done(result, ctx)),
        );
        ctx.add_stream(stream);
        if let Some(interval) = self.adapter.keepalive_interval().filter(|i| !i.is_zero()) {
            ctx.run_interval(interval, |act, ctx| act.keepalive(ctx));
        }
        self.open(ctx);
    }

    /// Runs the adapter's `on_open`.
    fn open(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Opening;
        self.adapter.on_open(&mut self.out);
        self.drain_output(ctx);
    }

    /// Delivers what the last adapter hook produced: frames to the writer, events to the
    /// session, then a requested close. `Ready` moves the actor to `Ready` and sends the queue.
    fn drain_output(&mut self, ctx: &mut Context<Self>) {
        self.stats.frames_ignored += std::mem::take(&mut self.out.ignored);

        let mut frames = std::mem::take(&mut self.out.frames);
        for frame in frames.drain(..) {
            self.write(frame);
        }
        self.out.frames = frames;

        let mut became_ready = false;
        let mut events = std::mem::take(&mut self.out.events);
        for event in events.drain(..) {
            match event {
                ProviderEvent::Ready if self.phase == Phase::Opening => {
                    debug!(
                        provider = %self.spec.name,
                        attempt = self.attempt,
                        elapsed_ms = self.started_at.elapsed().as_millis() as u64,
                        "provider ready"
                    );
                    self.phase = Phase::Ready;
                    became_ready = true;
                    self.send(ProviderEvent::Ready);
                }
                // A second `Ready`, or a `Closed` (the actor owns that one): not the adapter's
                // to send.
                ProviderEvent::Ready | ProviderEvent::Closed { .. } => {
                    trace!(provider = %self.spec.name, ?event, "adapter event dropped");
                }
                event => self.send(event),
            }
        }
        self.out.events = events;

        if let Some(close) = self.out.close.take() {
            self.finishing = true;
            self.close_socket(close.code, &close.reason, ctx);
            return;
        }
        if became_ready {
            self.flush_pending(ctx);
        }
    }

    /// Queues one frame for the socket, or drops and counts it.
    fn write(&mut self, frame: WsFrame) {
        let Some(writer) = &self.writer else {
            self.stats.frames_dropped_unsent += 1;
            return;
        };
        let message = match frame {
            WsFrame::Text(text) => Message::Text(text.into()),
            WsFrame::Binary(bytes) => Message::Binary(bytes.into()),
        };
        if writer.try_send(message).is_ok() {
            self.stats.frames_sent += 1;
        } else {
            if self.stats.frames_dropped_unsent == 0 {
                debug!(
                    provider = %self.spec.name,
                    attempt = self.attempt,
                    "provider is not reading fast enough: dropping outbound frames"
                );
            }
            self.stats.frames_dropped_unsent += 1;
        }
    }

    /// Keeps a command that arrived before `Ready`, dropping the oldest beyond the bound.
    fn queue(&mut self, command: ProviderCommand) {
        let samples = audio_len(&command);
        if samples > self.pending_cap_samples {
            self.stats.dropped_before_ready += 1;
            return;
        }
        while self.pending_samples + samples > self.pending_cap_samples {
            let Some(oldest) = self.pending.pop_front() else {
                break;
            };
            self.pending_samples -= audio_len(&oldest);
            self.stats.dropped_before_ready += 1;
        }
        self.pending_samples += samples;
        self.pending.push_back(command);
    }

    /// Sends the audio queued before `Ready`, then a `Finish` that was waiting for it.
    fn flush_pending(&mut self, ctx: &mut Context<Self>) {
        while self.phase == Phase::Ready
            && let Some(command) = self.pending.pop_front()
        {
            self.pending_samples -= audio_len(&command);
            self.adapter.encode(command, &mut self.out);
            self.drain_output(ctx);
        }
        if self.finish_after_ready && self.phase == Phase::Ready {
            self.finish(ctx);
        }
    }

    /// The session's `Finish` once ready: let the adapter end the conversation, then wait for
    /// the provider to close (bounded).
    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.finishing = true;
        self.phase = Phase::Draining;
        self.adapter.encode(ProviderCommand::Finish, &mut self.out);
        self.drain_output(ctx);
        if self.phase == Phase::Draining {
            ctx.run_later(PROVIDER_FINISH_TIMEOUT, |act, ctx| {
                if act.phase == Phase::Draining {
                    debug!(provider = %act.spec.name, "provider did not close after Finish");
                    act.close_socket(CLOSE_NORMAL, "", ctx);
                }
            });
        }
    }

    /// One text or binary frame from the provider.
    fn decode(&mut self, frame: WsFrameRef<'_>, ctx: &mut Context<Self>) {
        self.stats.frames_received += 1;
        let result = self.adapter.decode(frame, &mut self.out);
        self.drain_output(ctx);
        match result {
            Ok(()) => {}
            Err(err) if err.is_fatal() => self.fail(err, ctx),
            Err(err) => {
                self.stats.decode_errors += 1;
                trace!(provider = %self.spec.name, error = %err, "provider frame dropped");
                self.send(ProviderEvent::Error {
                    message: err.to_string(),
                    fatal: false,
                });
            }
        }
    }

    /// The provider sent a close frame.
    fn on_peer_close(&mut self, frame: Option<CloseFrame>, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            // The reply to our close: the handshake is complete. (RFC 6455 lets the server
            // close TCP first, but nothing more can arrive; waiting would only delay `Closed`.)
            ctx.stop();
            return;
        }
        let (code, reason) = match &frame {
            Some(frame) => (Some(u16::from(frame.code)), frame.reason.as_str()),
            None => (None, ""),
        };
        let result = self.adapter.on_close(code, reason, &mut self.out);
        self.drain_output(ctx);
        match result {
            Ok(()) => {
                debug!(provider = %self.spec.name, attempt = self.attempt, ?code, "provider closed");
                self.send_closed(false);
            }
            Err(err) => self.report_fatal(&err),
        }
        // The socket answers the close itself; nothing more is written.
        self.phase = Phase::Closing;
        self.writer = None;
        ctx.run_later(PROVIDER_CLOSE_TIMEOUT, |_, ctx| ctx.stop());
    }

    /// The socket failed while reading.
    fn on_socket_error(&mut self, err: WsError, ctx: &mut Context<Self>) {
        if self.finishing || self.closed_sent {
            debug!(provider = %self.spec.name, error = %err, "socket error while closing");
            ctx.stop();
            return;
        }
        let err = match err {
            WsError::Io(_)
            | WsError::Tls(_)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                ProviderError::Closed {
                    code: None,
                    reason: err.to_string(),
                    source: Some(Box::new(err)),
                }
            }
            other => ProviderError::Protocol {
                detail: Cow::Owned(other.to_string()),
                fatal: true,
            },
        };
        self.fail_dead(err, ctx);
    }

    /// The writer future ended.
    fn on_writer_done(&mut self, result: Result<(), WsError>, ctx: &mut Context<Self>) {
        let Err(err) = result else {
            // It sent our close, or its queue was closed: the reader or a timer ends the actor.
            return;
        };
        if self.finishing || self.closed_sent {
            ctx.stop();
        } else {
            self.fail_dead(
                ProviderError::Closed {
                    code: None,
                    reason: err.to_string(),
                    source: Some(Box::new(err)),
                },
                ctx,
            );
        }
    }

    /// Time for the adapter's keep-alive.
    fn keepalive(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Opening | Phase::Ready) {
            self.adapter.on_keepalive(&mut self.out);
            self.drain_output(ctx);
        }
    }

    /// Ends the connection if nobody can receive its events or send it commands.
    fn check_session(&mut self, ctx: &mut Context<Self>) {
        if self.events.connected() && ctx.connected() {
            return;
        }
        if !self.closed_sent {
            debug!(provider = %self.spec.name, attempt = self.attempt, "session gone: closing");
        }
        // Nobody to tell.
        self.closed_sent = true;
        self.close_socket(CLOSE_GOING_AWAY, "", ctx);
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.started_at = Instant::now();
        ctx.run_interval(SESSION_CHECK_INTERVAL, |act, ctx| act.check_session(ctx));
        ctx.run_later(PROVIDER_CONNECT_TIMEOUT, |act, ctx| {
            if matches!(act.phase, Phase::Connecting | Phase::Opening) {
                let waited_ms = PROVIDER_CONNECT_TIMEOUT.as_millis() as u64;
                act.fail(ProviderError::Timeout { waited_ms }, ctx);
            }
        });
        match self.adapter.endpoint() {
            Endpoint::InProcess => self.open(ctx),
            Endpoint::WebSocket(request) => {
                debug!(provider = %self.spec.name, attempt = self.attempt, ?request, "connecting");
                ctx.spawn(
                    connect(request)
                        .into_actor(self)
                        .map(|result, act, ctx| match result {
                            Ok(socket) => act.on_connected(socket, ctx),
                            Err(err) => act.fail_dead(err, ctx),
                        }),
                );
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !self.closed_sent {
            self.send_closed(!self.finishing);
        }
        debug!(provider = %self.spec.name, attempt = self.attempt, stats = ?self.stats, "provider connection ended");
    }
}

impl Handler<ProviderInput> for ProviderActor {
    type Result = ();

    fn handle(&mut self, ProviderInput(command): ProviderInput, ctx: &mut Self::Context) {
        match (self.phase, command) {
            (Phase::Ready, ProviderCommand::Finish) => self.finish(ctx),
            (Phase::Ready, command) => {
                self.adapter.encode(command, &mut self.out);
                self.drain_output(ctx);
            }
            (Phase::Connecting | Phase::Opening, command @ ProviderCommand::Audio(_)) => {
                self.queue(command);
            }
            (Phase::Connecting | Phase::Opening, ProviderCommand::Finish) => {
                if self.pending.is_empty() {
                    // Nothing to flush: end now (politely, if the socket is already up).
                    self.finishing = true;
                    self.close_socket(CLOSE_NORMAL, "", ctx);
                } else {
                    self.finish_after_ready = true;
                }
            }
            (Phase::Draining | Phase::Closing, ProviderCommand::Audio(_)) => {
                self.stats.dropped_after_finish += 1;
            }
            (Phase::Draining | Phase::Closing, ProviderCommand::Finish) => {}
            // A key press means something only in the conversation as it is now: before the
            // provider is ready or once it is finishing there is no one to tell.
            // The same for a flush: before ready nothing was sent, once finishing all is.
            (
                Phase::Connecting | Phase::Opening | Phase::Draining | Phase::Closing,
                ProviderCommand::Dtmf { .. } | ProviderCommand::Flush,
            ) => {}
        }
    }
}

impl Handler<GetProviderStats> for ProviderActor {
    type Result = MessageResult<GetProviderStats>;

    fn handle(&mut self, _: GetProviderStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats)
    }
}

impl StreamHandler<Result<Message, WsError>> for ProviderActor {
    fn handle(&mut self, item: Result<Message, WsError>, ctx: &mut Self::Context) {
        if self.closed_sent {
            // Failed, or the session is gone: only the end of the connection matters now.
            if matches!(item, Ok(Message::Close(_)) | Err(_)) {
                ctx.stop();
            }
            return;
        }
        match item {
            Ok(Message::Text(text)) => self.decode(WsFrameRef::Text(text.as_str()), ctx),
            Ok(Message::Binary(bytes)) => self.decode(WsFrameRef::Binary(&bytes), ctx),
            Ok(Message::Close(frame)) => self.on_peer_close(frame, ctx),
            // The socket answers pings itself; raw frames are never produced by reads.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(err) => self.on_socket_error(err, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.closed_sent && !self.finishing {
            self.fail_dead(
                ProviderError::Closed {
                    code: None,
                    reason: "the connection ended without a close frame".into(),
                    source: None,
                },
                ctx,
            );
        }
        // `stopped` sends `Closed { error: false }` if the conversation was finishing.
        ctx.stop();
    }
}

/// Dials the provider. The deadline is the actor's ([`PROVIDER_CONNECT_TIMEOUT`]): when it
/// passes, the actor stops and this future is dropped.
async fn connect(request: ConnectRequest) -> Result<WsStream, ProviderError> {
    let mut http = request
        .url
        .as_str()
        .into_client_request()
        .map_err(config_error)?;
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ProviderError::Config {
            detail: format!("invalid header name {name:?}").into(),
        })?;
        // The value may be a key: never echo it.
        let value = HeaderValue::from_str(value).map_err(|_| ProviderError::Config {
            detail: format!("invalid value for header {name}").into(),
        })?;
        http.headers_mut().insert(name, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(PROVIDER_MAX_MESSAGE_BYTES))
        .read_buffer_size(PROVIDER_READ_BUFFER_BYTES);
    match tokio_tungstenite::connect_async_with_config(http, Some(config), true).await {
        Ok((socket, _response)) => Ok(socket),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            Err(if status == 401 || status == 403 {
                ProviderError::AuthRefused { status }
            } else {
                ProviderError::Rejected { status }
            })
        }
        Err(err @ (WsError::Url(_) | WsError::HttpFormat(_))) => Err(config_error(err)),
        Err(err) => Err(ProviderError::Connect {
            source: Box::new(err),
        }),
    }
}

/// A configuration error from a URL or request error, without echoing the URL.
fn config_error(err: WsError) -> ProviderError {
    let detail: Cow<'static, str> = match err {
        // The one URL error whose text contains the URL.
        WsError::Url(UrlError::UnableToConnect(_)) => "unable to connect".into(),
        WsError::Url(err) => err.to_string().into(),
        WsError::HttpFormat(_) => "malformed provider URL or header".into(),
        other => other.to_string().into(),
    };
    ProviderError::Config { detail }
}

/// Writes queued frames to the socket until a close frame is sent or the queue is closed.
/// Runs in the actor's context: it is dropped (and the socket with it) when the actor stops.
async fn write_frames(
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::Receiver<Message>,
) -> Result<(), WsError> {
    while let Some(message) = queue.recv().await {
        let is_close = matches!(message, Message::Close(_));
        match sink.send(message).await {
            Ok(()) => {}
            // The provider closed first; the reader reports it.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return Ok(()),
            Err(err) => return Err(err),
        }
        if is_close {
            break;
        }
    }
    Ok(())
}

/// Samples of audio a command holds (0 for anything but audio).
fn audio_len(command: &ProviderCommand) -> usize {
    match command {
        ProviderCommand::Audio(samples) => samples.len(),
        ProviderCommand::Dtmf { .. } | ProviderCommand::Flush | ProviderCommand::Finish => 0,
    }
}

/// Cuts a close reason to what a close frame can carry, on a character boundary.
fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Close reasons longer than a close frame allows are cut on a character boundary.
    #[test]
    fn close_reasons_are_truncated_safely() {
        assert_eq!(truncate_reason("bye"), "bye");
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES && cut.len() == 122);
    }

    /// Messages cross threads in actix (`Recipient` requires `Send`); keep them small.
    #[test]
    fn messages_are_send_and_small() {
        fn is_send<T: Send>() {}
        is_send::<ProviderInput>();
        is_send::<ProviderOutput>();
        assert!(std::mem::size_of::<ProviderOutput>() <= 48);
    }
}
