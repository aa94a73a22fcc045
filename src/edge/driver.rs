//! [`SessionDriver`]: everything a session's actor does that does not depend on how the
//! caller is connected — the sans-IO [`SessionCore`], the key and route check, admission,
//! the provider connection, the health reports and the record.
//!
//! Two actors drive it: the WebSocket [`SessionActor`](super::SessionActor) and the WebRTC
//! [`WebRtcSession`](super::webrtc::WebRtcSession). Each feeds it inputs and carries out the
//! few [`Effect`]s that need its own context (send to the caller, arm a timer, spawn the
//! authorisation, close). The rule is the core's: after every input, take effects until one
//! is [`Effect::Timer`] or [`Effect::Close`].
//!
//! # Failover and health
//!
//! Each provider connection gets the next attempt number. On a failover the core asks for a
//! new provider; the driver starts a new [`ProviderActor`] with the next number and drops the
//! old one's address (which stops it), and from then on passes the core only the events whose
//! attempt is the current one (the old connection's trailing `Closed` must not reach it).
//!
//! A resumption ([`Output::ResumeProvider`], after the provider's `goAway`) makes before it
//! breaks: the old connection is kept as the *draining* one, and its answers (audio,
//! transcripts, barge-in) still reach the core until the new connection answers, fails, or
//! the old one closes; then the old address is dropped. So audio the provider was already
//! sending when it announced its close is not cut.
//!
//! The driver also reports each connection's outcome to the router's shared
//! [`Health`](crate::health::Health): ready (with the connect time), first answer (with its
//! latency), failure.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::actor::{ProviderActor, ProviderInput, ProviderOutput};
use voxroute_actors::provider::{ProviderCommand, ProviderEvent};
use voxroute_actors::record::{SessionEnd, SessionStart, Transport};
use voxroute_actors::session::{
    Admission, AuthorizeRequest, ClientProtocol, Input, Output, SessionCore, SessionOutcome,
};
use voxroute_actors::supervisor::{Admit, AdmitError, EndSession, RecordUnadmitted, SessionEnded};

use super::AppState;
use crate::metrics::SessionCounts;
use crate::routing::Resolved;
use crate::store::{ApiKey, AuthError};

/// What the endpoint learned before the session started.
pub(super) struct SessionParams {
    pub state: Arc<AppState>,
    pub protocol: ClientProtocol,
    pub endpoint: &'static str,
    pub transport: Transport,
    pub peer_ip: Option<IpAddr>,
    /// The key checked before the session started, if one was presented there.
    pub key: Option<ApiKey>,
    /// Provider or route named in the request's query string.
    pub query_target: RouteTarget,
}

/// What the driving actor must do, in order: see the module docs.
pub(super) enum Effect {
    /// Send this text to the caller.
    Text(String),
    /// Send this audio to the caller.
    Binary(Vec<u8>),
    /// Drop the caller audio queued and not yet sent (barge-in).
    FlushAudio,
    /// Run [`SessionDriver::check`] for this request, then [`SessionDriver::admit`].
    Authorize(AuthorizeRequest),
    /// Feed [`Input::Timeout`] at this instant; nothing more to do until then.
    Timer(Instant),
    /// The session is over and on record: close the caller's connection.
    Close(SessionCloseReason),
}

/// Why the check before admission refused a caller: the close reason, a message for the
/// caller, and the key if one was identified.
pub(super) struct Refusal {
    reason: SessionCloseReason,
    message: &'static str,
    api_key_id: Option<Uuid>,
}

/// The outcome of [`SessionDriver::check`].
pub(super) type Checked = Result<(Option<ApiKey>, Resolved), Refusal>;

/// A session's transport-independent state: see the module docs.
pub(super) struct SessionDriver {
    params: SessionParams,
    core: SessionCore,
    accepted_wall: DateTime<Utc>,
    /// The record as written at admission; set once `start` has been resolved.
    start_record: Option<SessionStart>,
    /// The supervisor admitted the session and expects its [`SessionEnded`].
    admitted: bool,
    /// Where provider connections send their events: the driving actor.
    provider_events: Option<Recipient<ProviderOutput>>,
    /// The current provider connection; replaced on failover (dropping the old address stops
    /// the old actor), dropped at the end.
    provider: Option<Addr<ProviderActor>>,
    /// The connection being replaced by a resumption, with its attempt number: kept open,
    /// its answers passed on, until the current one answers (see the module docs).
    draining: Option<(u32, Addr<ProviderActor>)>,
    /// The current connection's attempt number (1 for the first); events of other attempts
    /// are dropped (but for the draining connection's answers).
    attempt: u32,
    /// What the current connection has shown so far, for the health registry.
    connection: Option<ConnectionWatch>,
    /// The provider the session was admitted with (the metrics' live gauge is keyed by it).
    admitted_provider: Option<String>,
    /// Every log line of the session is inside it: `session_id`, `transport`, `provider`
    /// (the first two once `start` is resolved).
    span: tracing::Span,
}

/// One provider connection as the health registry sees it.
struct ConnectionWatch {
    /// The provider's name.
    provider: String,
    /// When the driver started the connection.
    started_at: Instant,
    /// When it became ready.
    ready_at: Option<Instant>,
    /// When it got its first caller audio after being ready (audio sent earlier waits in the
    /// actor until then).
    first_audio_at: Option<Instant>,
    /// Its first answer (audio or transcript) was reported.
    answered: bool,
    /// Its failure was reported (an error event and the `Closed` after it are one failure).
    failed: bool,
}

impl SessionDriver {
    pub(super) fn new(params: SessionParams) -> Self {
        let now = Instant::now();
        let transport = params.transport.as_str();
        let core = SessionCore::new(params.protocol, params.state.session, now);
        SessionDriver {
            params,
            core,
            accepted_wall: Utc::now(),
            start_record: None,
            admitted: false,
            provider_events: None,
            provider: None,
            draining: None,
            attempt: 0,
            connection: None,
            admitted_provider: None,
            // Exported as it is with the `otel` feature (crate::telemetry finds it by this name
            // and this module's path): only ids and names on it, never audio, text, keys or IPs.
            span: tracing::info_span!(
                crate::telemetry::SESSION_SPAN,
                session_id = tracing::field::Empty,
                transport,
                provider = tracing::field::Empty,
            ),
        }
    }

    /// The shared state of the edge.
    pub(super) fn state(&self) -> &Arc<AppState> {
        &self.params.state
    }

    /// The caller protocol of the session.
    pub(super) fn protocol(&self) -> ClientProtocol {
        self.params.protocol
    }

    /// The session id, once admitted.
    pub(super) fn session_id(&self) -> Option<Uuid> {
        self.core.session_id()
    }

    /// Whether the core has ended the session.
    pub(super) fn is_ended(&self) -> bool {
        self.core.is_ended()
    }

    /// Sets where provider connections report (the driving actor); call once, at start.
    pub(super) fn set_provider_events(&mut self, events: Recipient<ProviderOutput>) {
        self.provider_events = Some(events);
    }

    /// One input into the core; then take [`next_effect`](Self::next_effect) until it
    /// returns [`Effect::Timer`] or [`Effect::Close`].
    pub(super) fn input(&mut self, input: Input<'_>) {
        let _in_session = self.span.enter();
        self.core.handle_input(Instant::now(), input);
    }

    /// The next thing the actor must do. Provider commands are carried out here.
    ///
    /// Only the rare outputs that log (a provider starting, the end) enter the session span
    /// here: the per-frame ones (audio to the provider or the caller, the timer) do not, so a
    /// frame costs one span entry, in [`input`](Self::input).
    pub(super) fn next_effect(&mut self) -> Effect {
        loop {
            match self.core.poll_output() {
                Output::ToClientText(text) => return Effect::Text(text),
                Output::ToClientBinary(bytes) => return Effect::Binary(bytes),
                Output::FlushClientAudio => return Effect::FlushAudio,
                Output::Authorize(request) => return Effect::Authorize(request),
                Output::StartProvider(spec) => {
                    let span = self.span.clone();
                    let _in_session = span.enter();
                    self.draining = None;
                    self.start_provider(spec);
                }
                Output::ResumeProvider(spec) => {
                    let span = self.span.clone();
                    let _in_session = span.enter();
                    self.draining = self.provider.take().map(|old| (self.attempt, old));
                    self.start_provider(spec);
                }
                Output::ToProvider(command) => self.send_to_provider(command),
                Output::Close(outcome) => {
                    let span = self.span.clone();
                    let _in_session = span.enter();
                    let reason = outcome.reason;
                    self.record(outcome);
                    return Effect::Close(reason);
                }
                Output::Timeout(at) => return Effect::Timer(at),
            }
        }
    }

    fn start_provider(&mut self, spec: voxroute_actors::provider::ProviderSpec) {
        self.attempt += 1;
        self.connection = Some(ConnectionWatch {
            provider: spec.name.clone(),
            started_at: Instant::now(),
            ready_at: None,
            first_audio_at: None,
            answered: false,
            failed: false,
        });
        let Some(events) = self.provider_events.clone() else {
            // The actor sets it when it starts, before any input: a bug if missing.
            tracing::error!("provider started before the session's actor did");
            return;
        };
        // Replacing the address drops the old connection's last handle: it notices and
        // closes (if its failure has not already ended it).
        self.provider = Some(ProviderActor::new(spec, self.attempt, events).start());
    }

    fn send_to_provider(&mut self, command: ProviderCommand) {
        if let (ProviderCommand::Audio(_), Some(watch)) = (&command, &mut self.connection)
            && watch.ready_at.is_some()
            && watch.first_audio_at.is_none()
        {
            watch.first_audio_at = Some(Instant::now());
        }
        if let Some(provider) = &self.provider {
            provider.do_send(ProviderInput(command));
        }
    }

    /// The caller is gone without a goodbye: ends the session on record. Only the provider
    /// and the record matter now, so the caller-facing effects are dropped.
    pub(super) fn caller_vanished(&mut self) {
        if self.core.is_ended() {
            return;
        }
        self.input(Input::ClientClosed);
        loop {
            match self.next_effect() {
                Effect::Close(_) | Effect::Timer(_) => return,
                _ => {}
            }
        }
    }

    /// The key and route check for `request`, to run on the actor's context; hand its
    /// result to [`admit`](Self::admit).
    pub(super) fn check(&self, request: AuthorizeRequest) -> impl Future<Output = Checked> + use<> {
        let state = Arc::clone(&self.params.state);
        let pre_checked = self.params.key.clone();
        let keyless_ok = state.keyless_allowed(self.params.peer_ip);
        let target = match request.target {
            RouteTarget::Default => self.params.query_target.clone(),
            named => named,
        };
        let refuse = |reason, message, api_key_id| Refusal {
            reason,
            message,
            api_key_id,
        };
        async move {
            let key = match (pre_checked, request.api_key) {
                (Some(key), _) => Some(key),
                (None, Some(presented)) => match state.store.authenticate(&presented).await {
                    Ok(key) => {
                        // A key checked before the session started took its token there.
                        if state
                            .rate_limiter
                            .try_acquire(key.id, Instant::now())
                            .is_err()
                        {
                            return Err(refuse(
                                SessionCloseReason::LimitExceeded,
                                "the key is opening sessions faster than its limit",
                                Some(key.id),
                            ));
                        }
                        Some(key)
                    }
                    Err(AuthError::Store(_)) => {
                        return Err(refuse(
                            SessionCloseReason::InternalError,
                            "cannot check the API key now",
                            None,
                        ));
                    }
                    Err(_) => {
                        return Err(refuse(
                            SessionCloseReason::AuthFailed,
                            "the API key is malformed, unknown or revoked",
                            None,
                        ));
                    }
                },
                (None, None) if keyless_ok => None,
                (None, None) => {
                    return Err(refuse(
                        SessionCloseReason::AuthFailed,
                        "an API key is required",
                        None,
                    ));
                }
            };
            match state.router.resolve(&target) {
                Ok(resolved) => Ok((key, resolved)),
                Err(_) => Err(refuse(
                    SessionCloseReason::ClientError,
                    "unknown provider or route",
                    key.map(|k| k.id),
                )),
            }
        }
    }

    /// After the check: either the input that refuses the caller (feed it), or the
    /// supervisor's admission to await, whose result goes to [`admitted`](Self::admitted).
    /// `session` is where the supervisor sends [`EndSession`].
    #[allow(clippy::type_complexity)]
    pub(super) fn admit(
        &mut self,
        checked: Checked,
        session: Recipient<EndSession>,
    ) -> Result<
        (
            Admission,
            impl Future<Output = Result<Result<(), AdmitError>, MailboxError>> + use<>,
        ),
        Input<'static>,
    > {
        let (key, resolved) = match checked {
            Ok(ok) => ok,
            Err(refusal) => {
                self.start_record =
                    Some(self.record_start(refusal.api_key_id, None, String::new()));
                return Err(Input::Refused {
                    reason: refusal.reason,
                    message: refusal.message,
                });
            }
        };
        let start = self.record_start(
            key.as_ref().map(|k| k.id),
            resolved.route.clone(),
            resolved.provider.name.clone(),
        );
        self.start_record = Some(start.clone());
        let session_id = start.id;
        self.span
            .record("session_id", tracing::field::display(session_id));
        self.span
            .record("provider", resolved.provider.name.as_str());
        let admit = Admit {
            start,
            max_sessions: key.and_then(|k| k.max_sessions),
            session,
        };
        let admission = Admission {
            session_id,
            provider: resolved.provider,
            fallbacks: resolved.fallbacks,
        };
        Ok((admission, self.params.state.supervisor.send(admit)))
    }

    /// The supervisor's answer to [`admit`](Self::admit): the input to feed.
    pub(super) fn admitted(
        &mut self,
        admission: Admission,
        answer: Result<Result<(), AdmitError>, MailboxError>,
    ) -> Input<'static> {
        match answer {
            Ok(Ok(())) => {
                self.admitted = true;
                self.params
                    .state
                    .metrics
                    .session_admitted(self.params.transport.as_str(), &admission.provider.name);
                self.admitted_provider = Some(admission.provider.name.clone());
                Input::Admitted(admission)
            }
            Ok(Err(refusal)) => Input::Refused {
                reason: refusal.close_reason(),
                message: "refused: the key is over its session limit, or the server is draining",
            },
            Err(_) => Input::Refused {
                reason: SessionCloseReason::InternalError,
                message: "the supervisor is unavailable",
            },
        }
    }

    fn record_start(
        &self,
        api_key_id: Option<Uuid>,
        route: Option<String>,
        provider: String,
    ) -> SessionStart {
        SessionStart {
            id: Uuid::now_v7(),
            api_key_id,
            endpoint: self.params.endpoint.to_owned(),
            transport: self.params.transport,
            route,
            provider,
            client_ip: self.params.peer_ip,
            started_at: self.accepted_wall,
        }
    }

    /// Hands the session's record to the supervisor (if a `start` was ever resolved) and lets
    /// the provider go: dropping its address stops it once it has passed `Finish` on.
    fn record(&mut self, outcome: SessionOutcome) {
        self.provider = None;
        self.draining = None;
        tracing::info!(
            reason = outcome.reason.as_str(),
            duration_ms = outcome.duration_ms,
            audio_in_ms = outcome.audio_in_ms,
            audio_out_ms = outcome.audio_out_ms,
            bad_frames = outcome.bad_frames,
            concealed_frames = outcome.concealed_frames,
            failovers = outcome.failovers,
            reconnects = outcome.reconnects,
            failover_gap_ms = outcome.failover_gap_ms,
            "session ended"
        );
        let metrics = &self.params.state.metrics;
        match &self.admitted_provider {
            Some(provider) if self.admitted => {
                let ms_to_frames = |ms: i64| u64::try_from(ms / 20).unwrap_or(0);
                metrics.session_ended(&SessionCounts {
                    transport: self.params.transport.as_str(),
                    provider,
                    close_reason: outcome.reason.as_str(),
                    frames_in: ms_to_frames(outcome.audio_in_ms),
                    frames_out: ms_to_frames(outcome.audio_out_ms),
                    frames_bad: outcome.bad_frames,
                    frames_dropped_early: outcome.dropped_payloads,
                    frames_concealed: outcome.concealed_frames,
                    failovers: u64::from(outcome.failovers),
                });
            }
            // A socket that never sent `start` is not a session (no record either).
            _ if self.start_record.is_some() => metrics.session_closed(outcome.reason.as_str()),
            _ => {}
        }
        let Some(start) = self.start_record.take() else {
            return;
        };
        let end = SessionEnd {
            id: start.id,
            ended_at: Utc::now(),
            duration_ms: outcome.duration_ms,
            close_reason: outcome.reason,
            provider: if outcome.provider.is_empty() {
                start.provider.clone()
            } else {
                outcome.provider
            },
            providers_tried: outcome.providers_tried,
            audio_in_ms: outcome.audio_in_ms,
            audio_out_ms: outcome.audio_out_ms,
            failovers: i32::try_from(outcome.failovers).unwrap_or(i32::MAX),
            first_response_ms: outcome.first_response_ms,
            usage: outcome.usage,
        };
        let supervisor = &self.params.state.supervisor;
        if self.admitted {
            supervisor.do_send(SessionEnded { end });
        } else {
            supervisor.do_send(RecordUnadmitted { start, end });
        }
    }

    /// A provider connection's event: the input to feed, unless it is from a connection
    /// the session has already left.
    pub(super) fn provider_event(&mut self, message: ProviderOutput) -> Option<Input<'static>> {
        if let Some((draining, _)) = self.draining
            && message.attempt == draining
        {
            return match message.event {
                ProviderEvent::Audio(_)
                | ProviderEvent::Transcript { .. }
                | ProviderEvent::ReplyTranscript { .. }
                | ProviderEvent::SpeechStarted
                | ProviderEvent::SpeechStopped
                | ProviderEvent::ReplyDone => Some(Input::Provider(message.event)),
                // Closing (as announced) or failing: nothing more will come from it.
                ProviderEvent::Closed { .. } | ProviderEvent::Error { fatal: true, .. } => {
                    self.draining = None;
                    None
                }
                _ => None,
            };
        }
        if message.attempt != self.attempt {
            // A connection the session has already left (its trailing `Closed`, or events
            // that crossed the failover).
            tracing::trace!(
                attempt = message.attempt,
                current = self.attempt,
                "stale provider event dropped"
            );
            return None;
        }
        self.watch(&message.event);
        if self.draining.is_some()
            && matches!(
                message.event,
                ProviderEvent::Audio(_)
                    | ProviderEvent::Transcript { .. }
                    | ProviderEvent::ReplyTranscript { .. }
                    | ProviderEvent::Error { fatal: true, .. }
                    | ProviderEvent::Closed { .. }
            )
        {
            // The new connection answers (or fails): the old one has had its time.
            self.draining = None;
        }
        Some(Input::Provider(message.event))
    }

    /// Reports what the current connection's event says about the provider's health.
    fn watch(&mut self, event: &ProviderEvent) {
        let Some(watch) = &mut self.connection else {
            return;
        };
        let health = self.params.state.router.health();
        let metrics = &self.params.state.metrics;
        let now = Instant::now();
        match event {
            ProviderEvent::Ready if watch.ready_at.is_none() => {
                watch.ready_at = Some(now);
                let connect = now - watch.started_at;
                health.report_connected(&watch.provider, connect);
                metrics.provider_ready(&watch.provider, connect.as_secs_f64());
            }
            ProviderEvent::Audio(_)
            | ProviderEvent::Transcript { .. }
            | ProviderEvent::ReplyTranscript { .. }
                if !watch.answered =>
            {
                watch.answered = true;
                let since = watch.first_audio_at.or(watch.ready_at);
                if let Some(since) = since {
                    let latency: Duration = now.saturating_duration_since(since);
                    health.report_first_response(&watch.provider, latency);
                    metrics.provider_first_response(&watch.provider, latency.as_secs_f64());
                }
            }
            ProviderEvent::Error { fatal: true, .. } | ProviderEvent::Closed { error: true }
                if !watch.failed =>
            {
                watch.failed = true;
                health.report_failure(&watch.provider, now);
                metrics.provider_failed(&watch.provider);
            }
            _ => {}
        }
    }
}

/// The authorisation of [`Effect::Authorize`], run on the actor `A`'s context: the check,
/// then the admission, each answer fed back through `feed`. Shared by both session actors.
pub(super) fn authorize<A>(
    act: &mut A,
    request: AuthorizeRequest,
    ctx: &mut A::Context,
    driver: fn(&mut A) -> &mut SessionDriver,
    feed: fn(&mut A, Input<'_>, &mut A::Context),
) where
    A: Actor + Handler<EndSession>,
    A::Context: AsyncContext<A> + actix::dev::ToEnvelope<A, EndSession>,
{
    let check = driver(act).check(request);
    ctx.spawn(check.into_actor(act).map(move |checked, act, ctx| {
        let session = ctx.address().recipient();
        match driver(act).admit(checked, session) {
            Err(refused) => feed(act, refused, ctx),
            Ok((admission, answer)) => {
                ctx.spawn(answer.into_actor(act).map(move |answer, act, ctx| {
                    let input = driver(act).admitted(admission, answer);
                    feed(act, input, ctx);
                }));
            }
        }
    }));
}
