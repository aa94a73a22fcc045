//! [`SessionCore`]: see the [module documentation](super).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use uuid::Uuid;
use voxroute_codecs::opus::OpusEncoderConfig;
use voxroute_codecs::{AudioFormat, EgressChain, FrameAssembler, IngressChain};

use crate::close_reason::SessionCloseReason;
use crate::protocol::carrier::{CarrierInbound, CarrierOutbound};
use crate::protocol::listen::{ListenCodec, ListenInbound, ListenOptions, ResultsMessage};
use crate::protocol::native::{NativeCodec, NativeInbound, ServerEvent};
use crate::protocol::plivo::PlivoCodec;
use crate::protocol::realtime::{RealtimeCodec, RealtimeInbound, SessionEventKind};
use crate::protocol::telnyx::TelnyxCodec;
use crate::protocol::twilio::TwilioCodec;
use crate::protocol::vonage::VonageCodec;
use crate::protocol::{ProtocolError, RouteTarget};
use crate::provider::{ProviderCommand, ProviderEvent, ProviderSpec};
use crate::record::ProviderUsage;

use super::carrier::{self, CarrierLink, Reordered};
use super::replay::ReplayRing;

/// How long a caller may take to send its `start` after the socket opens.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`SessionConfig::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Bad frames in a row after which the caller is treated as broken (a flood of garbage) and
/// the session ends with [`SessionCloseReason::ClientError`].
pub const MAX_CONSECUTIVE_BAD_FRAMES: u32 = 50;

/// Caller payloads held while the key is checked (Twilio sends media right behind `start`):
/// 25 payloads is 500 ms of 20 ms frames (2.5 s of a Deepgram caller's 100 ms pieces). More
/// are dropped and counted.
const MAX_PENDING_PAYLOADS: usize = 25;

/// Native `error` events sent per session for bad frames; later ones are only counted, so a
/// flood of garbage does not become a flood of replies.
const MAX_ERROR_EVENTS: u32 = 10;

/// Outbound audio between two Twilio marks, in 20 ms frames: a mark after every provider
/// chunk would triple the messages when a provider sends 20 ms chunks.
const FRAMES_PER_MARK: u64 = 10;

/// Provider audio held for framing, in milliseconds at the provider's rate. Chunks longer than
/// this are framed in pieces, so this bounds memory, not chunk size.
const PROVIDER_AUDIO_QUEUE_MS: u32 = 200;

/// Caller audio kept for a failover, in milliseconds: the last this-much of the caller's
/// audio is replayed to the next provider, so that a speech-to-text provider loses no speech
/// that the failed one had not yet answered. It also bounds the audio held while the next
/// provider connects (older audio is dropped first). Three seconds covers an utterance in
/// progress plus a slow connect, at 96 KiB per session at 16 kHz, allocated once.
pub const REPLAY_MS: u32 = 3_000;

/// Replayed frames sent at once, then again every [`REPLAY_BURST_INTERVAL`] until the replay
/// is out: 20 frames (400 ms of audio) stay well inside the provider connection's writer
/// queue (`WRITER_QUEUE_FRAMES`, 50), which drops frames when full, while a 3 s replay still
/// goes out in under 100 ms.
const REPLAY_BURST_FRAMES: usize = 20;

/// Pause between two replay bursts (20 times faster than real time).
const REPLAY_BURST_INTERVAL: Duration = Duration::from_millis(10);

/// [`ClientProtocol::Listen`]: the session ends when neither audio nor `KeepAlive` came for
/// this long (or [`SessionConfig::idle_timeout`], if shorter), as Deepgram closes a stream
/// after 10 s (protocols.md §4).
pub const LISTEN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`ClientProtocol::Listen`]: after `CloseStream`, how long the provider may take to send
/// its last transcripts and close before the session ends anyway.
pub const CLOSE_STREAM_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The `reason` of a native `provider.switched` event: the failed provider's failure.
const SWITCH_REASON: &str = "PROVIDER_ERROR";

/// Settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// End the session when the caller sends no audio for this long.
    pub idle_timeout: Duration,
    /// Opus encoder settings for callers that speak Opus.
    pub opus: OpusEncoderConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            opus: OpusEncoderConfig::default(),
        }
    }
}

/// Which caller protocol the socket speaks, fixed by the endpoint it came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    /// Twilio Media Streams (`/v1/telephony/twilio`).
    Twilio,
    /// voxroute's native protocol (`/v1/ws`).
    Native,
    /// WebRTC (`/v1/webrtc`): the start comes from the HTTP request
    /// ([`Input::ClientStart`]), each [`Input::ClientBinary`] is one Opus packet in sequence
    /// order (the driver's jitter buffer has reordered them) and a lost packet is
    /// [`Input::ClientLost`]; events are the native protocol's, as data channel text.
    WebRtc,
    /// Telnyx Media Streaming (`/v1/telephony/telnyx`); its audio is reordered by sequence.
    Telnyx,
    /// The Vonage Voice API WebSocket (`/v1/telephony/vonage`).
    Vonage,
    /// Plivo Audio Streams (`/v1/telephony/plivo`).
    Plivo,
    /// OpenAI Realtime, GA shapes (`/v1/realtime`, [`crate::protocol::realtime`]): there is
    /// no `start`: the session asks for authorisation as soon as it is created (the route
    /// comes from the request, the key from the upgrade), in `audio/pcm` at 24 kHz until a
    /// `session.update` changes the format, which may come at any time.
    Realtime,
    /// Deepgram-compatible live transcription (`/v1/listen`): the start comes from the HTTP
    /// request's query string ([`Input::ClientStart`]), binary frames are raw audio, text
    /// frames Deepgram's control messages; provider transcripts go out as `Results`, provider
    /// audio is dropped. See [`crate::protocol::listen`].
    Listen(ListenOptions),
}

/// Something that happened, for [`SessionCore::handle_input`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A text frame from the caller.
    ClientText(&'a str),
    /// A binary frame from the caller.
    ClientBinary(&'a [u8]),
    /// The caller's socket closed.
    ClientClosed,
    /// The caller's start, learned outside the media channel ([`ClientProtocol::WebRtc`]:
    /// the HTTP offer's key, query and negotiated codec; [`ClientProtocol::Listen`]: the
    /// upgrade's query string). Ignored by the other protocols.
    ClientStart(AuthorizeRequest),
    /// [`ClientProtocol::WebRtc`]: the caller's next packet is lost; `next` is the packet
    /// after it when it has already arrived (its in-band FEC rebuilds the lost one), else the
    /// decoder conceals the gap. Either way the provider gets a 20 ms frame for it.
    ClientLost {
        /// The packet after the lost one, if it is here.
        next: Option<&'a [u8]>,
    },
    /// The driver checked the key and the supervisor admitted the session.
    Admitted(Admission),
    /// The driver or the supervisor refused the session.
    Refused {
        /// Recorded as the close reason.
        reason: SessionCloseReason,
        /// For the caller (native `error` event); must hold no secret.
        message: &'static str,
    },
    /// The provider said something.
    Provider(ProviderEvent),
    /// End now (shutdown, admin kill).
    End(SessionCloseReason),
    /// The instant of the last [`Output::Timeout`] has come.
    Timeout,
}

/// What the driver decided on [`Output::Authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The session's id (its record's id).
    pub session_id: Uuid,
    /// The provider to connect to.
    pub provider: ProviderSpec,
    /// Where to go, in order, when a provider fails: the rest of the route's candidates.
    /// Empty when the caller named a single provider (its failure ends the session).
    pub fallbacks: Vec<ProviderSpec>,
}

/// What the caller presented, for the driver to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// The key from inside the protocol (a carrier's custom parameters, native `start`), if
    /// any; `None` for OpenAI Realtime and Deepgram callers (their key comes with the upgrade).
    /// The driver may also hold one from the HTTP upgrade.
    pub api_key: Option<String>,
    /// The provider or route asked for.
    pub target: RouteTarget,
    /// The caller's audio format.
    pub format: AudioFormat,
}

/// What the core asks the driver to do, from [`SessionCore::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// Send this text frame to the caller.
    ToClientText(String),
    /// Send this binary frame to the caller (for [`ClientProtocol::WebRtc`]: one Opus packet
    /// of 20 ms, to be paced at real time).
    ToClientBinary(Vec<u8>),
    /// Barge-in ([`ClientProtocol::WebRtc`]): drop the caller audio queued for pacing and not
    /// yet sent. (WebSocket callers get a `clear` message instead.)
    FlushClientAudio,
    /// Check the caller's key and admit the session; answer with [`Input::Admitted`] or
    /// [`Input::Refused`].
    Authorize(AuthorizeRequest),
    /// Connect to this provider; its events come back as [`Input::Provider`]. When a
    /// provider is already running (a failover), the driver stops it (or drops it) and from
    /// now on passes only the new connection's events: events of an earlier connection must
    /// not reach the core (the driver tells them apart by their attempt number).
    StartProvider(ProviderSpec),
    /// Connect to this provider to resume the current conversation (the provider announced
    /// it will close the current connection: Gemini's `goAway`). Unlike
    /// [`StartProvider`](Self::StartProvider) the current connection is not failing:
    /// make before break, so the driver keeps it and passes on its answers (audio,
    /// transcripts, barge-in) until the new connection answers or the old one closes; its
    /// other events (ready, errors, close) no longer reach the core.
    ResumeProvider(ProviderSpec),
    /// Send this to the provider.
    ToProvider(ProviderCommand),
    /// Close the caller's socket and stop the provider; the session is over. `outcome` is
    /// what its record needs.
    Close(SessionOutcome),
    /// Nothing more to do until this instant (or the next input).
    Timeout(Instant),
}

/// How a session went: the fields its record is completed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    /// Why it ended.
    pub reason: SessionCloseReason,
    /// The session id, if it was admitted.
    pub session_id: Option<Uuid>,
    /// Wall time from accept to end, in milliseconds.
    pub duration_ms: i64,
    /// The provider last used (empty if none was).
    pub provider: String,
    /// Every provider tried, in order.
    pub providers_tried: Vec<String>,
    /// Caller audio forwarded to providers, in milliseconds.
    pub audio_in_ms: i64,
    /// Provider audio sent to the caller, in milliseconds.
    pub audio_out_ms: i64,
    /// From the first caller audio forwarded to the first provider audio, in milliseconds.
    pub first_response_ms: Option<i64>,
    /// Caller frames refused as bad input (skipped).
    pub bad_frames: u64,
    /// Caller payloads dropped because they came too early or too fast to hold, or (a
    /// carrier that reorders) too late or twice.
    pub dropped_payloads: u64,
    /// Lost caller packets ([`ClientProtocol::WebRtc`]) rebuilt by FEC or concealed by PLC,
    /// so the provider's stream had no gap.
    pub concealed_frames: u64,
    /// How many times the session moved to another provider.
    pub failovers: u32,
    /// How many times the session reconnected to the same provider because it was going
    /// away (Gemini `goAway`), resuming the conversation.
    pub reconnects: u32,
    /// The longest failover gap, in milliseconds: from a provider's failure to the first
    /// audio or transcript of the provider that replaced it. `None` without failover (or
    /// when no replacement answered before the end).
    pub failover_gap_ms: Option<i64>,
    /// The audio per provider segment, in order: one entry for the provider the session
    /// started on and one more per failover. Their `audio_in_ms` and `audio_out_ms` add up to
    /// the fields above. Empty if the session was never admitted.
    pub usage: Vec<ProviderUsage>,
}

enum Protocol {
    Native(NativeCodec),
    /// The native codec writes the data channel's events; media does not go through it.
    WebRtc(NativeCodec),
    /// A carrier (Twilio and the others), through its
    /// [`CarrierCodec`](crate::protocol::carrier::CarrierCodec).
    Carrier(Box<CarrierLink>),
    /// Boxed: it holds the append buffer inline with its state.
    Realtime(Box<RealtimeCodec>),
    /// Deepgram's live transcription; boxed, as it holds the audio's running hash.
    Listen(Box<ListenCodec>),
}

impl Protocol {
    /// The codec that writes native events, for the protocols that have an event channel.
    fn events(&mut self) -> Option<&mut NativeCodec> {
        match self {
            Protocol::Native(codec) | Protocol::WebRtc(codec) => Some(codec),
            Protocol::Carrier(_) | Protocol::Realtime(_) | Protocol::Listen(_) => None,
        }
    }
}

/// A caller frame for a carrier codec.
enum CarrierFrame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// The live part of a session: exists from admission to the end, and is dropped (with every
/// audio buffer in it) when the session ends.
struct Live {
    session_id: Uuid,
    /// The provider answering now (or connecting, during a failover).
    provider: ProviderSpec,
    /// The caller's audio format, to rebuild the chains for a provider at another rate.
    format: AudioFormat,
    ingress: IngressChain,
    egress: EgressChain,
    /// Provider audio waiting to fill a 20 ms frame.
    provider_audio: FrameAssembler,
    /// The route's remaining providers, next first; each failover takes one.
    fallbacks: VecDeque<ProviderSpec>,
    /// The last [`REPLAY_MS`] of caller frames at the provider's rate, recorded always.
    replay: ReplayRing,
    /// A failover is under way: caller audio goes only into `replay` (held, unsent) until the
    /// new provider is `Ready` and the ring's unsent frames have all gone to it.
    awaiting_ready: bool,
    /// When the next burst of the replay is due (set from `Ready` until the replay is out).
    replay_next_at: Option<Instant>,
    /// When the provider last failed, until the replacement's first audio or transcript:
    /// the failover gap runs from here.
    failed_at: Option<Instant>,
    /// [`ClientProtocol::Listen`] after `CloseStream`: the provider was told to finish, and
    /// the session ends when it closes or at this instant, whichever comes first.
    closing_until: Option<Instant>,
}

enum Phase {
    /// Waiting for the caller's `start`.
    AwaitingStart,
    /// `start` received; the driver is checking the key. Payloads wait here.
    Authorizing {
        format: AudioFormat,
        pending: VecDeque<Vec<u8>>,
    },
    /// Routed and streaming.
    Live(Box<Live>),
    /// Over; nothing more is emitted.
    Ended,
}

/// One session's state machine: see the [module documentation](super).
pub struct SessionCore {
    config: SessionConfig,
    protocol: Protocol,
    phase: Phase,
    outputs: VecDeque<Output>,
    accepted_at: Instant,
    /// Last caller audio (or admission): the idle timer runs from here.
    last_audio_at: Instant,
    first_audio_at: Option<Instant>,
    first_response_ms: Option<i64>,
    frames_in: u64,
    frames_out: u64,
    bad_frames: u64,
    /// [`ClientProtocol::Listen`]: `CloseStream` came while the key was being checked; the
    /// stream finishes once the audio held for admission has gone to the provider.
    close_stream_when_admitted: bool,
    consecutive_bad_frames: u32,
    error_events_sent: u32,
    dropped_payloads: u64,
    concealed_frames: u64,
    marks_sent: u64,
    /// `frames_out` when the last Twilio mark was sent.
    frames_at_last_mark: u64,
    providers_tried: Vec<String>,
    failovers: u32,
    reconnects: u32,
    failover_gap_ms: Option<i64>,
    /// Audio per provider segment, split from `frames_in`/`frames_out` at each failover.
    metering: Metering,
}

/// The per-provider split of a session's audio counters. It costs nothing per frame: a
/// segment is closed (one push, into room reserved at admission) at each failover and at the
/// end, from the difference of the session's frame counters.
#[derive(Debug, Default)]
struct Metering {
    /// The closed segments, in order.
    usage: Vec<ProviderUsage>,
    /// `(frames_in, frames_out)` when the open segment began.
    segment_started_at: (u64, u64),
}

impl Metering {
    /// Starts metering at admission, with room for `segments` segments.
    fn start(&mut self, segments: usize, frames_in: u64, frames_out: u64) {
        self.usage = Vec::with_capacity(segments);
        self.segment_started_at = (frames_in, frames_out);
    }

    /// Closes the open segment as `provider`'s, given the session's counters now, and opens
    /// the next one there.
    fn close_segment(&mut self, provider: &str, frames_in: u64, frames_out: u64) {
        let (in_at, out_at) = self.segment_started_at;
        self.usage.push(ProviderUsage {
            provider: provider.to_owned(),
            audio_in_ms: frames_to_ms(frames_in.saturating_sub(in_at)),
            audio_out_ms: frames_to_ms(frames_out.saturating_sub(out_at)),
        });
        self.segment_started_at = (frames_in, frames_out);
    }
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("frames_in", &self.frames_in)
            .field("frames_out", &self.frames_out)
            .field("bad_frames", &self.bad_frames)
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    /// A session whose socket was accepted at `accepted_at`, speaking `protocol`.
    pub fn new(protocol: ClientProtocol, config: SessionConfig, accepted_at: Instant) -> Self {
        let mut core = SessionCore {
            config,
            protocol: match protocol {
                ClientProtocol::Twilio => {
                    Protocol::Carrier(Box::new(CarrierLink::new(Box::new(TwilioCodec::new()))))
                }
                ClientProtocol::Native => Protocol::Native(NativeCodec::new()),
                ClientProtocol::WebRtc => Protocol::WebRtc(NativeCodec::new()),
                ClientProtocol::Telnyx => {
                    Protocol::Carrier(Box::new(CarrierLink::new(Box::new(TelnyxCodec::new()))))
                }
                ClientProtocol::Vonage => {
                    Protocol::Carrier(Box::new(CarrierLink::new(Box::new(VonageCodec::new()))))
                }
                ClientProtocol::Plivo => {
                    Protocol::Carrier(Box::new(CarrierLink::new(Box::new(PlivoCodec::new()))))
                }
                ClientProtocol::Realtime => Protocol::Realtime(Box::default()),
                ClientProtocol::Listen(options) => {
                    Protocol::Listen(Box::new(ListenCodec::new(options)))
                }
            },
            phase: Phase::AwaitingStart,
            outputs: VecDeque::new(),
            accepted_at,
            last_audio_at: accepted_at,
            first_audio_at: None,
            first_response_ms: None,
            frames_in: 0,
            frames_out: 0,
            bad_frames: 0,
            close_stream_when_admitted: false,
            consecutive_bad_frames: 0,
            error_events_sent: 0,
            dropped_payloads: 0,
            concealed_frames: 0,
            marks_sent: 0,
            frames_at_last_mark: 0,
            providers_tried: Vec::new(),
            failovers: 0,
            reconnects: 0,
            failover_gap_ms: None,
            metering: Metering::default(),
        };
        if let Protocol::Realtime(codec) = &core.protocol {
            let request = AuthorizeRequest {
                api_key: None,
                target: RouteTarget::Default,
                format: codec.format(),
            };
            core.begin_authorize(request);
        }
        core
    }

    /// Whether the session is over (the driver has been told to close).
    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The session id, once admitted.
    pub fn session_id(&self) -> Option<Uuid> {
        match &self.phase {
            Phase::Live(live) => Some(live.session_id),
            _ => None,
        }
    }

    /// Feeds one input that happened at `now`. Then drain [`poll_output`](Self::poll_output).
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.is_ended() {
            return;
        }
        match input {
            Input::ClientText(text) => self.on_client_text(now, text),
            Input::ClientBinary(bytes) => self.on_client_binary(now, bytes),
            Input::ClientClosed => self.end(now, SessionCloseReason::ClientHangup),
            Input::ClientStart(request) => {
                if matches!(self.protocol, Protocol::WebRtc(_) | Protocol::Listen(_)) {
                    self.begin_authorize(request);
                }
            }
            Input::ClientLost { next } => self.on_audio_lost(now, next),
            Input::Admitted(admission) => self.on_admitted(now, admission),
            Input::Refused { reason, message } => {
                self.send_error("refused", message);
                self.end(now, reason);
            }
            Input::Provider(event) => self.on_provider(now, event),
            Input::End(reason) => self.end(now, reason),
            Input::Timeout => self.on_timeout(now),
        }
    }

    /// The next thing to do; [`Output::Timeout`] when there is nothing until then.
    pub fn poll_output(&mut self) -> Output {
        if let Some(output) = self.outputs.pop_front() {
            return output;
        }
        Output::Timeout(self.next_deadline())
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.phase_deadline();
        if let Protocol::Carrier(link) = &self.protocol
            && let Some(at) = link.reorder.deadline()
        {
            deadline = deadline.min(at);
        }
        match &self.phase {
            Phase::Live(live) => live.replay_next_at.map_or(deadline, |at| at.min(deadline)),
            _ => deadline,
        }
    }

    /// When the phase's own timer ends the session: the start timeout, or the idle timeout.
    fn phase_deadline(&self) -> Instant {
        match &self.phase {
            Phase::AwaitingStart | Phase::Authorizing { .. } => self.accepted_at + START_TIMEOUT,
            Phase::Live(live) => match live.closing_until {
                Some(until) => until,
                None => self.last_audio_at + self.idle_timeout(),
            },
            // Nothing will happen again; any far instant will do.
            Phase::Ended => self.accepted_at + Duration::from_secs(86_400),
        }
    }

    /// How long the caller may send nothing before the session ends.
    fn idle_timeout(&self) -> Duration {
        match self.protocol {
            Protocol::Listen(_) => self.config.idle_timeout.min(LISTEN_IDLE_TIMEOUT),
            _ => self.config.idle_timeout,
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        // Reordered carrier audio whose wait is over (a hole declared lost, what was behind it).
        self.drain_carrier_audio(now);
        if let Phase::Live(live) = &self.phase
            && live.replay_next_at.is_some_and(|at| now >= at)
        {
            self.replay_burst(now);
        }
        if now < self.phase_deadline() {
            return;
        }
        let reason = match &self.phase {
            // The provider did not close in time after `CloseStream`: end the stream anyway.
            Phase::Live(live) if live.closing_until.is_some() => {
                self.finish_stream(now);
                return;
            }
            Phase::Live(_) => SessionCloseReason::IdleTimeout,
            _ => {
                self.send_error("start_timeout", "no start message in time");
                SessionCloseReason::ClientError
            }
        };
        self.end(now, reason);
    }

    fn on_client_text(&mut self, now: Instant, text: &str) {
        match &mut self.protocol {
            Protocol::Native(codec) | Protocol::WebRtc(codec) => match codec.decode_text(text) {
                Ok(NativeInbound::Start(start)) => {
                    self.good_frame();
                    let request = AuthorizeRequest {
                        api_key: start.api_key.clone(),
                        target: start.target.clone(),
                        format: start.format,
                    };
                    self.begin_authorize(request);
                }
                Ok(NativeInbound::Stop) => self.end(now, SessionCloseReason::ClientHangup),
                Ok(NativeInbound::Clear) => {
                    self.good_frame();
                    self.flush_outbound();
                }
                Err(error) => self.bad_frame(now, error),
            },
            Protocol::Carrier(_) => self.on_carrier_frame(now, CarrierFrame::Text(text)),
            Protocol::Realtime(codec) => match codec.decode_text(text) {
                Ok(inbound) => {
                    self.good_frame();
                    self.on_realtime(now, inbound);
                }
                Err(error) => self.bad_frame(now, error),
            },
            Protocol::Listen(codec) => match codec.decode_text(text) {
                Ok(ListenInbound::KeepAlive) => {
                    // Deepgram's idle timer counts KeepAlive like audio.
                    self.good_frame();
                    self.last_audio_at = now;
                }
                // Deepgram gets its own `Finalize`; the other adapters send nothing for it
                // (see the README's limits).
                Ok(ListenInbound::Finalize) => {
                    self.good_frame();
                    if matches!(&self.phase, Phase::Live(live) if !live.awaiting_ready && live.closing_until.is_none())
                    {
                        self.outputs
                            .push_back(Output::ToProvider(ProviderCommand::Flush));
                    }
                }
                Ok(ListenInbound::CloseStream) => {
                    self.good_frame();
                    self.on_close_stream(now);
                }
                Err(error) => {
                    let ends = ListenCodec::ends_stream(&error);
                    self.bad_frame(now, error);
                    if ends {
                        self.end(now, SessionCloseReason::ClientError);
                    }
                }
            },
        }
    }

    /// A good OpenAI Realtime client event.
    fn on_realtime(&mut self, now: Instant, inbound: RealtimeInbound) {
        let Protocol::Realtime(codec) = &mut self.protocol else {
            return;
        };
        match inbound {
            RealtimeInbound::Append { len } => self.on_realtime_append(now, len),
            RealtimeInbound::SessionUpdate { format_changed } => {
                let format = codec.format();
                if matches!(self.phase, Phase::Live(_)) {
                    let text = codec.encode_session(SessionEventKind::Updated);
                    self.outputs
                        .push_back(Output::ToClientText(text.to_owned()));
                } else {
                    codec.defer_session_updated();
                }
                if format_changed {
                    self.set_client_format(now, format);
                }
            }
            RealtimeInbound::Commit => {
                let text = codec.encode_committed();
                self.outputs
                    .push_back(Output::ToClientText(text.to_owned()));
            }
            RealtimeInbound::Clear => {
                let text = codec.encode_cleared();
                self.outputs
                    .push_back(Output::ToClientText(text.to_owned()));
                if let Phase::Live(live) = &mut self.phase {
                    live.ingress.reset();
                }
            }
        }
    }

    /// An `input_audio_buffer.append` of `len` bytes: cut into 20 ms pieces for the ingress
    /// chain (which takes at most 120 ms at once), each frame forwarded as it completes.
    fn on_realtime_append(&mut self, now: Instant, len: usize) {
        let Protocol::Realtime(codec) = &self.protocol else {
            return;
        };
        let audio = &codec.audio()[..len];
        let piece_len = codec.frame_bytes();
        match &mut self.phase {
            Phase::Live(live) => {
                for piece in audio.chunks(piece_len) {
                    if let Err(error) = live.ingress.push(piece) {
                        // The codec checked the length; a refusal here is a bug, not input.
                        tracing::error!(%error, "realtime audio refused by the ingress chain");
                        break;
                    }
                    drain_ingress(live, &mut self.outputs, &mut self.frames_in);
                }
                self.last_audio_at = now;
                self.first_audio_at.get_or_insert(now);
            }
            Phase::Authorizing { pending, .. } => {
                for piece in audio.chunks(piece_len) {
                    if pending.len() < MAX_PENDING_PAYLOADS {
                        pending.push_back(piece.to_vec());
                    } else {
                        self.dropped_payloads += 1;
                    }
                }
            }
            Phase::AwaitingStart | Phase::Ended => self.dropped_payloads += 1,
        }
    }

    /// The caller's audio format changed mid-session (OpenAI Realtime's `session.update`):
    /// payloads held for admission are in the old format and are dropped; a live session's
    /// chains are rebuilt for the new one.
    fn set_client_format(&mut self, now: Instant, format: AudioFormat) {
        match &mut self.phase {
            Phase::Authorizing {
                format: held,
                pending,
            } => {
                *held = format;
                self.dropped_payloads += pending.len() as u64;
                pending.clear();
            }
            Phase::Live(live) => {
                let chains = IngressChain::new(format, live.provider.sample_rate).and_then(|i| {
                    EgressChain::new(live.provider.output_sample_rate, format, self.config.opus)
                        .map(|e| (i, e))
                });
                match chains {
                    Ok((ingress, egress)) => {
                        live.format = format;
                        live.ingress = ingress;
                        live.egress = egress;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot build the codec chains for the new format");
                        self.end(now, SessionCloseReason::InternalError);
                    }
                }
            }
            Phase::AwaitingStart | Phase::Ended => {}
        }
    }

    /// `CloseStream`: the provider finishes (its last transcripts still go out as `Results`),
    /// then `Metadata` and the end. A provider still connecting (a failover, a resumption)
    /// first gets the audio held for it: `Finish` follows the replay (see
    /// [`replay_burst`](Self::replay_burst)). During admission the audio held for it is sent
    /// first (see [`on_admitted`](Self::on_admitted)); before a start there is nothing to
    /// finish.
    fn on_close_stream(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Live(live) => {
                if live.closing_until.is_some() {
                    return;
                }
                live.closing_until = Some(now + CLOSE_STREAM_FLUSH_TIMEOUT);
                if !live.awaiting_ready {
                    self.outputs
                        .push_back(Output::ToProvider(ProviderCommand::Finish));
                }
            }
            Phase::Authorizing { .. } => self.close_stream_when_admitted = true,
            Phase::AwaitingStart | Phase::Ended => self.finish_stream(now),
        }
    }

    /// Ends a [`ClientProtocol::Listen`] stream the way `CloseStream` asks: `Metadata`, then
    /// a normal end.
    fn finish_stream(&mut self, now: Instant) {
        if let (Protocol::Listen(codec), Phase::Live(live)) = (&mut self.protocol, &self.phase) {
            let text = codec.encode_metadata(live.session_id);
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        self.end(now, SessionCloseReason::ClientHangup);
    }

    /// Whether a [`ClientProtocol::Listen`] stream is finishing after `CloseStream`.
    fn is_closing(&self) -> bool {
        matches!(&self.phase, Phase::Live(live) if live.closing_until.is_some())
    }

    fn on_client_binary(&mut self, now: Instant, bytes: &[u8]) {
        if self.is_closing() {
            // After `CloseStream` the stream takes no more audio (nor counts it).
            self.dropped_payloads += 1;
            return;
        }
        let result = match &mut self.protocol {
            Protocol::Carrier(_) => {
                return self.on_carrier_frame(now, CarrierFrame::Binary(bytes));
            }
            Protocol::Listen(codec) => match codec.decode_binary(bytes) {
                Ok(audio) => {
                    // Any length up to the codec's limit: the ingress chain takes it in
                    // pieces and re-frames it to 20 ms.
                    let piece_bytes = codec.piece_bytes();
                    self.good_frame();
                    if let Some(sample) = audio.joined {
                        self.on_audio(now, &sample);
                    }
                    for piece in audio.body.chunks(piece_bytes) {
                        self.on_audio(now, piece);
                    }
                    return;
                }
                Err(error) => Err(error),
            },
            Protocol::Native(codec) => codec.decode_binary(bytes).map(|_| ()),
            // One Opus packet, checked by the decoder in the ingress chain.
            Protocol::WebRtc(_) => Ok(()),
            // Audio travels in `input_audio_buffer.append`, as text.
            Protocol::Realtime(_) => Err(ProtocolError::BinaryFrame { len: bytes.len() }),
        };
        match result {
            Ok(()) => {
                self.good_frame();
                self.on_audio(now, bytes);
            }
            Err(error) => self.bad_frame(now, error),
        }
    }

    /// One frame from a carrier (Twilio included): decoded by its codec; sequenced audio is
    /// reordered, other audio handled at once.
    fn on_carrier_frame(&mut self, now: Instant, frame: CarrierFrame<'_>) {
        let Protocol::Carrier(link) = &mut self.protocol else {
            return;
        };
        let link = &mut **link;
        let decoded = match frame {
            CarrierFrame::Text(text) => link.codec.decode_text(text),
            CarrierFrame::Binary(bytes) => link.codec.decode_binary(bytes),
        };
        match decoded {
            Ok(CarrierInbound::Ignored) => self.good_frame(),
            Ok(CarrierInbound::Start(start)) => {
                tracing::debug!(carrier = link.codec.carrier(), ?start, "carrier start");
                self.good_frame();
                self.begin_authorize(AuthorizeRequest {
                    api_key: start.api_key,
                    target: start.target,
                    format: start.format,
                });
            }
            Ok(CarrierInbound::Media {
                sequence: Some(sequence),
                payload,
            }) => {
                link.reorder.push(now, sequence, payload);
                self.good_frame();
                self.drain_carrier_audio(now);
            }
            Ok(CarrierInbound::Media {
                sequence: None,
                payload,
            }) => {
                // The payload borrows the codec: copy it into the link's reused buffer.
                let mut scratch = std::mem::take(&mut link.scratch);
                scratch.clear();
                scratch.extend_from_slice(payload);
                self.good_frame();
                self.on_audio(now, &scratch);
                if let Protocol::Carrier(link) = &mut self.protocol {
                    link.scratch = scratch;
                }
            }
            Ok(CarrierInbound::Dtmf { digit }) => {
                self.good_frame();
                self.on_dtmf(digit);
            }
            Ok(CarrierInbound::Stop) => {
                // Everything still held goes out before the end, each hole as a lost frame.
                // Every round releases at least one held payload; the bound is a safeguard.
                let mut rounds = link.reorder.held() + 1;
                while rounds > 0 {
                    rounds -= 1;
                    let Protocol::Carrier(link) = &self.protocol else {
                        break;
                    };
                    let Some(at) = link.reorder.deadline() else {
                        break;
                    };
                    self.drain_carrier_audio(at.max(now));
                }
                self.end(now, SessionCloseReason::ClientHangup);
            }
            Err(error) => self.bad_frame(now, error),
        }
    }

    /// Hands the reordered carrier audio due at `now` to the session, a lost payload as a
    /// concealed frame.
    fn drain_carrier_audio(&mut self, now: Instant) {
        loop {
            let Protocol::Carrier(link) = &mut self.protocol else {
                return;
            };
            match link.reorder.pop(now) {
                None => return,
                Some(Reordered::Payload(buffer)) => {
                    self.on_audio(now, &buffer);
                    if let Protocol::Carrier(link) = &mut self.protocol {
                        link.reorder.recycle(buffer);
                    }
                }
                Some(Reordered::Lost) => self.on_audio_lost(now, None),
            }
        }
    }

    /// A telephone caller's key press goes to the provider, if the session is routed.
    fn on_dtmf(&mut self, digit: char) {
        // During a failover there is no conversation to press a key in yet.
        if matches!(&self.phase, Phase::Live(live) if !live.awaiting_ready) {
            self.outputs
                .push_back(Output::ToProvider(ProviderCommand::Dtmf { digit }));
        }
    }

    fn begin_authorize(&mut self, request: AuthorizeRequest) {
        if !matches!(self.phase, Phase::AwaitingStart) {
            // The codecs refuse a second start themselves; nothing to do.
            return;
        }
        self.phase = Phase::Authorizing {
            format: request.format,
            pending: VecDeque::new(),
        };
        self.outputs.push_back(Output::Authorize(request));
    }

    fn on_admitted(&mut self, now: Instant, mut admission: Admission) {
        // Every provider of the session hears voxroute's session id where its protocol has a
        // place for it, so its usage reports can be matched to our records.
        admission.provider = admission.provider.for_session(admission.session_id);
        for fallback in &mut admission.fallbacks {
            *fallback = fallback.for_session(admission.session_id);
        }
        if matches!(self.protocol, Protocol::Listen(_)) {
            // The edge refused routes with a provider that cannot transcribe the caller; what
            // is left is set up to transcribe the caller only.
            if let Some(spec) = admission.provider.for_transcription() {
                admission.provider = spec;
            }
            admission.fallbacks = admission
                .fallbacks
                .iter()
                .filter_map(ProviderSpec::for_transcription)
                .collect();
        }
        let Phase::Authorizing { format, pending } =
            std::mem::replace(&mut self.phase, Phase::AwaitingStart)
        else {
            // Admission without a pending authorisation is a driver bug; ignore it safely.
            tracing::warn!("admission for a session that was not authorizing");
            return;
        };
        let in_rate = admission.provider.sample_rate;
        let out_rate = admission.provider.output_sample_rate;
        let chains = IngressChain::new(format, in_rate).and_then(|ingress| {
            EgressChain::new(out_rate, format, self.config.opus).map(|egress| (ingress, egress))
        });
        let (ingress, egress) = match chains {
            Ok(chains) => chains,
            Err(error) => {
                tracing::error!(%error, "cannot build the codec chains");
                self.end(now, SessionCloseReason::InternalError);
                return;
            }
        };
        let frame = out_rate.samples_per_frame();
        let capacity = out_rate
            .samples_in_ms(PROVIDER_AUDIO_QUEUE_MS)
            .max(2 * frame);
        self.providers_tried.push(admission.provider.name.clone());
        // Room for every segment the route can have, so failovers do not reallocate.
        self.metering.start(
            1 + admission.fallbacks.len(),
            self.frames_in,
            self.frames_out,
        );
        self.outputs
            .push_back(Output::StartProvider(admission.provider.clone()));
        if let Some(codec) = self.protocol.events() {
            let text = codec.encode_event(&ServerEvent::SessionStarted {
                session_id: admission.session_id,
                provider: &admission.provider.name,
                format,
            });
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        if let Protocol::Realtime(codec) = &mut self.protocol {
            let outputs = &mut self.outputs;
            codec.session_created(admission.session_id, &admission.provider.name, |text| {
                outputs.push_back(Output::ToClientText(text.to_owned()));
            });
        }
        self.phase = Phase::Live(Box::new(Live {
            session_id: admission.session_id,
            replay: ReplayRing::new(in_rate, REPLAY_MS),
            provider: admission.provider,
            format,
            ingress,
            egress,
            provider_audio: FrameAssembler::new(frame, capacity),
            fallbacks: admission.fallbacks.into(),
            awaiting_ready: false,
            replay_next_at: None,
            failed_at: None,
            closing_until: None,
        }));
        self.last_audio_at = now;
        for payload in pending {
            self.on_audio(now, &payload);
        }
        if self.close_stream_when_admitted {
            self.on_close_stream(now);
        }
    }

    fn on_audio(&mut self, now: Instant, payload: &[u8]) {
        match &mut self.phase {
            // After `CloseStream` the stream takes no more audio.
            Phase::Live(live) if live.closing_until.is_some() => self.dropped_payloads += 1,
            Phase::Live(live) => {
                if let Err(error) = live.ingress.push(payload) {
                    tracing::debug!(%error, "caller payload refused");
                    self.bad_frames += 1;
                    self.consecutive_bad_frames += 1;
                    self.send_error("bad_audio", "audio payload refused by the codec");
                    if self.consecutive_bad_frames >= MAX_CONSECUTIVE_BAD_FRAMES {
                        self.end(now, SessionCloseReason::ClientError);
                    }
                    return;
                }
                self.forward_ingress(now);
            }
            Phase::Authorizing { pending, .. } => {
                if pending.len() < MAX_PENDING_PAYLOADS {
                    pending.push_back(payload.to_vec());
                } else {
                    self.dropped_payloads += 1;
                }
            }
            // The codecs refuse audio before start; nothing reaches here then.
            Phase::AwaitingStart | Phase::Ended => self.dropped_payloads += 1,
        }
    }

    /// A lost caller packet (WebRTC): FEC from the next packet when it is here, else PLC, so
    /// the provider's frame stream has no gap.
    fn on_audio_lost(&mut self, now: Instant, next: Option<&[u8]>) {
        let Phase::Live(live) = &mut self.phase else {
            // Before admission nothing is decoded yet: there is no gap to fill.
            self.dropped_payloads += 1;
            return;
        };
        let rebuilt = match next {
            Some(next) => live.ingress.push_recovered(next),
            None => live.ingress.push_lost(),
        };
        match rebuilt {
            Ok(()) => {
                self.concealed_frames += 1;
                self.forward_ingress(now);
            }
            Err(error) => tracing::debug!(%error, "cannot conceal a lost packet"),
        }
    }

    /// Sends the ingress chain's complete frames to the provider (or, during a failover, to
    /// the replay ring only).
    fn forward_ingress(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        drain_ingress(live, &mut self.outputs, &mut self.frames_in);
        self.last_audio_at = now;
        self.first_audio_at.get_or_insert(now);
    }

    fn on_provider(&mut self, now: Instant, event: ProviderEvent) {
        if self.is_closing()
            && matches!(
                event,
                ProviderEvent::Closed { .. } | ProviderEvent::Error { fatal: true, .. }
            )
        {
            // The provider has finished after `CloseStream` (or failed while finishing: no
            // failover for a stream that is ending).
            self.finish_stream(now);
            return;
        }
        match event {
            ProviderEvent::Ready => self.on_provider_ready(now),
            // A transcription caller takes no audio (Gemini answers with some).
            ProviderEvent::Audio(_) if matches!(self.protocol, Protocol::Listen(_)) => {}
            ProviderEvent::Audio(pcm) => {
                self.on_provider_answered(now);
                self.on_provider_audio(now, &pcm);
            }
            ProviderEvent::Transcript { text, is_final } => {
                self.on_provider_answered(now);
                match (&mut self.protocol, &self.phase) {
                    // Interim words of the caller are not passed on: the `completed` event
                    // carries them all.
                    (Protocol::Realtime(codec), _) if is_final => {
                        let text = codec.encode_input_transcript(&text);
                        self.outputs
                            .push_back(Output::ToClientText(text.to_owned()));
                    }
                    (Protocol::Listen(codec), Phase::Live(live)) if codec.wants(is_final) => {
                        let text = codec.encode_results(&ResultsMessage {
                            transcript: &text,
                            is_final,
                            audio_ms: self.frames_in * u64::from(voxroute_codecs::FRAME_MS),
                            session_id: live.session_id,
                            provider: &live.provider.name,
                        });
                        self.outputs
                            .push_back(Output::ToClientText(text.to_owned()));
                    }
                    _ => {}
                }
                self.native_transcript(&text, is_final);
            }
            ProviderEvent::ReplyTranscript { text, is_final } => {
                self.on_provider_answered(now);
                if let Protocol::Realtime(codec) = &mut self.protocol {
                    let outputs = &mut self.outputs;
                    codec.reply_transcript(&text, is_final, |text| {
                        outputs.push_back(Output::ToClientText(text.to_owned()));
                    });
                }
                self.native_transcript(&text, is_final);
            }
            ProviderEvent::SpeechStarted => {
                if let Protocol::Realtime(codec) = &mut self.protocol {
                    let outputs = &mut self.outputs;
                    codec.speech_started(|text| {
                        outputs.push_back(Output::ToClientText(text.to_owned()));
                    });
                }
                self.flush_outbound();
            }
            ProviderEvent::SpeechStopped => {
                if let Protocol::Realtime(codec) = &mut self.protocol {
                    let text = codec.encode_speech_stopped();
                    self.outputs
                        .push_back(Output::ToClientText(text.to_owned()));
                }
            }
            ProviderEvent::ReplyDone => {
                if let Protocol::Realtime(codec) = &mut self.protocol {
                    let outputs = &mut self.outputs;
                    codec.reply_done(|text| {
                        outputs.push_back(Output::ToClientText(text.to_owned()));
                    });
                }
            }
            ProviderEvent::Error { message, fatal } => {
                tracing::warn!(fatal, "provider error: {message}");
                if fatal {
                    self.on_provider_failed(now, true);
                } else {
                    self.send_error("provider_error", "the provider reported an error");
                }
            }
            ProviderEvent::GoAway { resumption_handle } => {
                self.on_provider_going_away(resumption_handle.as_deref())
            }
            ProviderEvent::Closed { error: true } => self.on_provider_failed(now, false),
            // The conversation ended on the provider's side: not a failure, no failover.
            ProviderEvent::Closed { error: false } => {
                self.end(now, SessionCloseReason::ProviderClosed)
            }
        }
    }

    /// A transcript for a native (or WebRTC) caller; others have their own events.
    fn native_transcript(&mut self, text: &str, is_final: bool) {
        if let Some(codec) = self.protocol.events() {
            let text = codec.encode_event(&ServerEvent::Transcript { text, is_final });
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
    }

    /// The provider is ready. After a failover, the replay (and the audio that came while it
    /// connected) goes to it now, oldest first, in bursts.
    fn on_provider_ready(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.awaiting_ready && live.replay_next_at.is_none() {
            tracing::debug!(replay_ms = live.replay.unsent() * 20, provider = %live.provider.name, "replaying caller audio");
            self.replay_burst(now);
        }
    }

    /// Sends the next burst of the replay; once it is all out, caller audio flows straight to
    /// the provider again.
    fn replay_burst(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let outputs = &mut self.outputs;
        live.replay.drain_unsent(REPLAY_BURST_FRAMES, |frame| {
            outputs.push_back(Output::ToProvider(ProviderCommand::Audio(frame.to_vec())));
        });
        if live.replay.unsent() == 0 {
            tracing::debug!(provider = %live.provider.name, "replay done");
            live.awaiting_ready = false;
            live.replay_next_at = None;
            if let Some(until) = &mut live.closing_until {
                // `CloseStream` came while this provider connected: it has all the audio now.
                *until = now + CLOSE_STREAM_FLUSH_TIMEOUT;
                outputs.push_back(Output::ToProvider(ProviderCommand::Finish));
            }
        } else {
            live.replay_next_at = Some(now + REPLAY_BURST_INTERVAL);
        }
    }

    /// The provider produced audio or text: a failover gap, if one is open, ends here.
    fn on_provider_answered(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if let Some(failed_at) = live.failed_at.take() {
            let gap_ms = millis(now.saturating_duration_since(failed_at));
            self.failover_gap_ms = Some(self.failover_gap_ms.map_or(gap_ms, |g| g.max(gap_ms)));
            tracing::info!(gap_ms, provider = %live.provider.name, "failover: the new provider answers");
        }
    }

    /// The provider failed (refused, timed out, dropped, fatal error): move to the route's
    /// next provider without ending the caller's session, or end with `PROVIDER_ERROR` when
    /// none is left. `told` says whether the failure came as an error event (the caller then
    /// gets an `error` event when the session ends on it, as before failover existed).
    fn on_provider_failed(&mut self, now: Instant, told: bool) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let Some(next) = live.fallbacks.pop_front() else {
            if told {
                self.send_error("provider_error", "the provider failed");
            }
            self.end(now, SessionCloseReason::ProviderError);
            return;
        };
        let live = &mut **live;
        if let Err(error) = switch_chains(live, &next, self.config.opus) {
            tracing::error!(%error, "cannot build the codec chains for the next provider");
            self.end(now, SessionCloseReason::InternalError);
            return;
        }
        let from = std::mem::replace(&mut live.provider, next);
        // Everything counted so far was the failed provider's; what comes from now on
        // (including audio held while the next one connects) is the next one's.
        self.metering
            .close_segment(&from.name, self.frames_in, self.frames_out);
        live.awaiting_ready = true;
        live.replay_next_at = None;
        live.replay.hold_all();
        live.failed_at.get_or_insert(now);
        self.failovers += 1;
        self.providers_tried.push(live.provider.name.clone());
        tracing::info!(from = %from.name, to = %live.provider.name, failovers = self.failovers, "provider failed: failing over");
        self.outputs
            .push_back(Output::StartProvider(live.provider.clone()));
        if let Some(codec) = self.protocol.events() {
            let text = codec.encode_event(&ServerEvent::ProviderSwitched {
                from: &from.name,
                to: &live.provider.name,
                reason: SWITCH_REASON,
            });
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        if let Protocol::Realtime(codec) = &mut self.protocol {
            let text =
                codec.encode_provider_switched(&from.name, &live.provider.name, SWITCH_REASON);
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        // What the failed provider said and the caller has not heard yet is stale: the next
        // provider knows nothing of it.
        self.flush_outbound();
    }

    /// The provider will close this connection soon but can resume the conversation on a new
    /// one: reconnect to the same provider, resuming. Not a failover (same provider, nothing
    /// replayed, nothing flushed, no event to the caller); caller audio that arrives while
    /// the new connection opens is held and sent to it first.
    fn on_provider_going_away(&mut self, resumption_handle: Option<&str>) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.awaiting_ready || live.closing_until.is_some() {
            // Already switching (a failover or another resumption): that connection will do.
            // Or the stream is finishing (`CloseStream`): the connection closes anyway.
            return;
        }
        live.provider = live.provider.resumed(resumption_handle);
        live.awaiting_ready = true;
        live.replay_next_at = None;
        self.reconnects += 1;
        tracing::info!(
            provider = %live.provider.name,
            resuming = resumption_handle.is_some(),
            "provider going away: reconnecting"
        );
        self.outputs
            .push_back(Output::ResumeProvider(live.provider.clone()));
    }

    fn on_provider_audio(&mut self, now: Instant, mut pcm: &[i16]) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let mut sent_any = false;
        let outputs = &mut self.outputs;
        while !pcm.is_empty() {
            let take = pcm.len().min(live.provider_audio.free());
            let (piece, rest) = pcm.split_at(take);
            pcm = rest;
            // Unwrap is OK because `take` never exceeds the free space.
            live.provider_audio
                .push(piece)
                .expect("a piece no larger than the free space fits");
            while let Some(frame) = live.provider_audio.pop_frame() {
                let encoded = match live.egress.encode_frame(frame) {
                    Ok(encoded) => encoded,
                    Err(error) => {
                        tracing::error!(%error, "egress encode failed");
                        continue;
                    }
                };
                match &mut self.protocol {
                    Protocol::Carrier(link) => {
                        let mut emit =
                            |frame: CarrierOutbound<'_>| outputs.push_back(carrier::output(frame));
                        if let Err(error) = link.codec.encode_media(encoded, &mut emit) {
                            tracing::error!(%error, carrier = link.codec.carrier(), "cannot frame media");
                            continue;
                        }
                    }
                    Protocol::Native(_) | Protocol::WebRtc(_) => {
                        outputs.push_back(Output::ToClientBinary(encoded.to_vec()))
                    }
                    Protocol::Realtime(codec) => {
                        codec.audio_delta(encoded, |text| {
                            outputs.push_back(Output::ToClientText(text.to_owned()));
                        });
                    }
                    // Dropped in `on_provider`: never reached.
                    Protocol::Listen(_) => continue,
                }
                self.frames_out += 1;
                sent_any = true;
            }
        }
        if sent_any {
            if self.first_response_ms.is_none()
                && let Some(first_audio_at) = self.first_audio_at
            {
                self.first_response_ms =
                    Some(millis(now.saturating_duration_since(first_audio_at)));
            }
            // Twilio reports back when the audio before a mark has played: one mark at the
            // end of a chunk, once at least FRAMES_PER_MARK frames went out since the last.
            if let Protocol::Carrier(link) = &mut self.protocol
                && link.codec.has_marks()
                && self.frames_out >= self.frames_at_last_mark + FRAMES_PER_MARK
            {
                self.frames_at_last_mark = self.frames_out;
                self.marks_sent += 1;
                let name = format!("vxr-{}", self.marks_sent);
                let outputs = &mut self.outputs;
                let mut emit =
                    |frame: CarrierOutbound<'_>| outputs.push_back(carrier::output(frame));
                if let Err(error) = link.codec.encode_mark(&name, &mut emit) {
                    tracing::debug!(%error, "no mark before start");
                }
            }
        }
    }

    /// Barge-in: drop provider audio not yet sent, and tell the caller to drop what it holds.
    fn flush_outbound(&mut self) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        live.provider_audio.clear();
        live.egress.reset();
        let text = match &mut self.protocol {
            Protocol::Native(codec) => Some(codec.encode_event(&ServerEvent::Clear)),
            Protocol::WebRtc(codec) => {
                self.outputs.push_back(Output::FlushClientAudio);
                Some(codec.encode_event(&ServerEvent::Clear))
            }
            Protocol::Carrier(link) => {
                let outputs = &mut self.outputs;
                let mut emit =
                    |frame: CarrierOutbound<'_>| outputs.push_back(carrier::output(frame));
                if let Err(error) = link.codec.encode_clear(&mut emit) {
                    tracing::debug!(%error, "no clear before start");
                }
                None
            }
            Protocol::Realtime(codec) => {
                let outputs = &mut self.outputs;
                codec.cancel_response(|text| {
                    outputs.push_back(Output::ToClientText(text.to_owned()));
                });
                None
            }
            // A transcription caller plays nothing.
            Protocol::Listen(_) => None,
        };
        if let Some(text) = text {
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
    }

    fn good_frame(&mut self) {
        self.consecutive_bad_frames = 0;
    }

    fn bad_frame(&mut self, now: Instant, error: ProtocolError) {
        self.bad_frames += 1;
        self.consecutive_bad_frames += 1;
        tracing::debug!(%error, "caller frame refused");
        if self.error_events_sent < MAX_ERROR_EVENTS {
            let text = match &mut self.protocol {
                Protocol::Native(codec) | Protocol::WebRtc(codec) => {
                    Some(codec.encode_protocol_error(&error))
                }
                Protocol::Realtime(codec) => Some(codec.encode_protocol_error(&error)),
                Protocol::Carrier(_) | Protocol::Listen(_) => None,
            };
            if let Some(text) = text {
                self.error_events_sent += 1;
                self.outputs
                    .push_back(Output::ToClientText(text.to_owned()));
            }
        }
        if error.is_fatal() {
            self.end(now, SessionCloseReason::ClientError);
        } else if self.consecutive_bad_frames >= MAX_CONSECUTIVE_BAD_FRAMES {
            self.send_error("too_many_bad_frames", "too many bad frames in a row");
            self.end(now, SessionCloseReason::ClientError);
        }
    }

    /// An `error` event (carriers and Deepgram's protocol have no channel for one), within
    /// the per-session cap.
    fn send_error(&mut self, code: &str, message: &str) {
        if self.error_events_sent >= MAX_ERROR_EVENTS {
            return;
        }
        let text = match &mut self.protocol {
            Protocol::Native(codec) | Protocol::WebRtc(codec) => {
                Some(codec.encode_event(&ServerEvent::Error { code, message }))
            }
            Protocol::Realtime(codec) => Some(codec.encode_error(code, message)),
            Protocol::Carrier(_) | Protocol::Listen(_) => None,
        };
        if let Some(text) = text {
            self.error_events_sent += 1;
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
    }

    fn end(&mut self, now: Instant, reason: SessionCloseReason) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ended);
        if matches!(phase, Phase::Ended) {
            return;
        }
        let (session_id, provider) = match &phase {
            Phase::Live(live) => {
                // After `CloseStream` the provider was told already.
                if live.closing_until.is_none() {
                    self.outputs
                        .push_back(Output::ToProvider(ProviderCommand::Finish));
                }
                self.metering
                    .close_segment(&live.provider.name, self.frames_in, self.frames_out);
                (Some(live.session_id), live.provider.name.clone())
            }
            _ => (None, String::new()),
        };
        // The chains, the framing queue and any held payloads go with the phase.
        drop(phase);
        if let Some(codec) = self.protocol.events() {
            let text = codec.encode_event(&ServerEvent::SessionEnded { reason });
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        if let Protocol::Realtime(codec) = &mut self.protocol {
            let text = codec.encode_session_ended(reason);
            self.outputs
                .push_back(Output::ToClientText(text.to_owned()));
        }
        if let Protocol::Carrier(link) = &self.protocol {
            self.dropped_payloads += link.reorder.dropped();
        }
        self.outputs.push_back(Output::Close(SessionOutcome {
            reason,
            session_id,
            duration_ms: millis(now.saturating_duration_since(self.accepted_at)),
            provider,
            providers_tried: std::mem::take(&mut self.providers_tried),
            audio_in_ms: frames_to_ms(self.frames_in),
            audio_out_ms: frames_to_ms(self.frames_out),
            first_response_ms: self.first_response_ms,
            bad_frames: self.bad_frames,
            dropped_payloads: self.dropped_payloads,
            concealed_frames: self.concealed_frames,
            failovers: self.failovers,
            reconnects: self.reconnects,
            failover_gap_ms: self.failover_gap_ms,
            usage: std::mem::take(&mut self.metering.usage),
        }));
    }
}

/// Rebuilds what depends on the provider's rates for `next`: the ingress chain and the
/// replay ring when it takes another rate, the egress chain and the framing queue when it
/// answers at another rate. Runs once per failover (allocation is fine here).
fn switch_chains(
    live: &mut Live,
    next: &ProviderSpec,
    opus: OpusEncoderConfig,
) -> Result<(), voxroute_codecs::CodecError> {
    if next.sample_rate != live.provider.sample_rate {
        live.ingress = IngressChain::new(live.format, next.sample_rate)?;
        live.replay = live.replay.resampled(next.sample_rate)?;
    }
    if next.output_sample_rate != live.provider.output_sample_rate {
        let out_rate = next.output_sample_rate;
        live.egress = EgressChain::new(out_rate, live.format, opus)?;
        let frame = out_rate.samples_per_frame();
        let capacity = out_rate
            .samples_in_ms(PROVIDER_AUDIO_QUEUE_MS)
            .max(2 * frame);
        live.provider_audio = FrameAssembler::new(frame, capacity);
    }
    Ok(())
}

/// Sends the ingress chain's complete frames to the provider (or, during a failover, only to
/// the replay ring), counting them in `frames_in`.
fn drain_ingress(live: &mut Live, outputs: &mut VecDeque<Output>, frames_in: &mut u64) {
    while let Some(frame) = live.ingress.pop_frame() {
        // During a failover the ring holds the audio until the replay is out.
        live.replay.push(frame, live.awaiting_ready);
        if !live.awaiting_ready {
            outputs.push_back(Output::ToProvider(ProviderCommand::Audio(frame.to_vec())));
        }
        *frames_in += 1;
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn frames_to_ms(frames: u64) -> i64 {
    i64::try_from(frames * u64::from(voxroute_codecs::FRAME_MS)).unwrap_or(i64::MAX)
}
