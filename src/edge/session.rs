//! [`SessionActor`]: the WebSocket actor of one live session, a thin driver of the sans-IO
//! [`SessionCore`].
//!
//! It lives in the app, not in `voxroute-actors`, because an actix-web-actors WebSocket actor
//! is tied to actix-web, which the actors crate must not know; everything the session decides
//! is in the core. The driver's one rule: after every input, carry out the core's outputs in
//! order until it asks for a timer (see `voxroute_actors::session`).
//!
//! # Failover and health
//!
//! Each provider connection gets the next attempt number. On a failover the core asks for a
//! new provider; the driver starts a new [`ProviderActor`] with the next number and drops the
//! old one's address (which stops it), and from then on passes the core only the events whose
//! attempt is the current one (the old connection's trailing `Closed` must not reach it). The
//! driver also reports each connection's outcome to the router's shared
//! [`Health`](crate::health::Health): ready (with the connect time), first answer (with its
//! latency), failure.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
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
use voxroute_actors::supervisor::{Admit, EndSession, RecordUnadmitted, SessionEnded};

use super::AppState;
use crate::metrics::SessionCounts;
use crate::store::{ApiKey, AuthError};

/// What the upgrade handler learned before the session started.
pub(super) struct SessionParams {
    pub state: Arc<AppState>,
    pub protocol: ClientProtocol,
    pub endpoint: &'static str,
    pub transport: Transport,
    pub peer_ip: Option<IpAddr>,
    /// The key checked before the upgrade, if one was presented there.
    pub key: Option<ApiKey>,
    /// Provider or route named in the upgrade's query string.
    pub query_target: RouteTarget,
}

/// One caller's WebSocket: a thin driver of the sans-IO [`SessionCore`], which decides
/// everything; this actor only carries out the core's outputs.
pub struct SessionActor {
    params: SessionParams,
    core: SessionCore,
    accepted_wall: DateTime<Utc>,
    /// The record as written at admission; set once `start` has been resolved.
    start_record: Option<SessionStart>,
    /// The supervisor admitted the session and expects its [`SessionEnded`].
    admitted: bool,
    /// The current provider connection; replaced on failover (dropping the old address stops
    /// the old actor), dropped at the end.
    provider: Option<Addr<ProviderActor>>,
    /// The current connection's attempt number (1 for the first); events of other attempts
    /// are dropped.
    attempt: u32,
    /// What the current connection has shown so far, for the health registry.
    connection: Option<ConnectionWatch>,
    timer: Option<SpawnHandle>,
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

impl SessionActor {
    pub(super) fn new(params: SessionParams) -> Self {
        let now = Instant::now();
        let params_transport = params.transport.as_str();
        let core = SessionCore::new(params.protocol, params.state.session, now);
        SessionActor {
            params,
            core,
            accepted_wall: Utc::now(),
            start_record: None,
            admitted: false,
            provider: None,
            attempt: 0,
            connection: None,
            timer: None,
            admitted_provider: None,
            // Exported as it is with the `otel` feature (crate::telemetry finds it by this name and
            // this module's path): only ids and names on it, never audio, text, keys or IPs.
            span: tracing::info_span!(
                crate::telemetry::SESSION_SPAN,
                session_id = tracing::field::Empty,
                transport = params_transport,
                provider = tracing::field::Empty,
            ),
        }
    }

    /// One input into the core, then its outputs.
    fn feed(&mut self, input: Input<'_>, ctx: &mut ws::WebsocketContext<Self>) {
        let span = self.span.clone();
        let _in_session = span.enter();
        self.core.handle_input(Instant::now(), input);
        self.drive(ctx);
    }

    /// Carries out the core's outputs until it asks for a timer.
    fn drive(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        loop {
            match self.core.poll_output() {
                Output::ToClientText(text) => ctx.text(text),
                Output::ToClientBinary(bytes) => ctx.binary(bytes),
                Output::Authorize(request) => self.authorize(request, ctx),
                Output::StartProvider(spec) => {
                    self.attempt += 1;
                    self.connection = Some(ConnectionWatch {
                        provider: spec.name.clone(),
                        started_at: Instant::now(),
                        ready_at: None,
                        first_audio_at: None,
                        answered: false,
                        failed: false,
                    });
                    let events = ctx.address().recipient::<ProviderOutput>();
                    // Replacing the address drops the old connection's last handle: it
                    // notices and closes (if its failure has not already ended it).
                    self.provider = Some(ProviderActor::new(spec, self.attempt, events).start());
                }
                Output::ToProvider(command) => {
                    if let (ProviderCommand::Audio(_), Some(watch)) =
                        (&command, &mut self.connection)
                        && watch.ready_at.is_some()
                        && watch.first_audio_at.is_none()
                    {
                        watch.first_audio_at = Some(Instant::now());
                    }
                    if let Some(provider) = &self.provider {
                        provider.do_send(ProviderInput(command));
                    }
                }
                Output::Close(outcome) => {
                    self.finish(outcome, ctx);
                    return;
                }
                Output::Timeout(at) => {
                    if let Some(timer) = self.timer.take() {
                        ctx.cancel_future(timer);
                    }
                    let wait = at.saturating_duration_since(Instant::now());
                    self.timer = Some(ctx.run_later(wait, |act, ctx| {
                        act.timer = None;
                        act.feed(Input::Timeout, ctx);
                    }));
                    return;
                }
                // `Output` is non-exhaustive upstream; nothing else exists today.
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }

    /// Checks the key and the route, then asks the supervisor to admit the session.
    fn authorize(&mut self, request: AuthorizeRequest, ctx: &mut ws::WebsocketContext<Self>) {
        let state = Arc::clone(&self.params.state);
        let pre_checked = self.params.key.clone();
        let keyless_ok = state.dev && self.params.peer_ip.is_some_and(|ip| ip.is_loopback());
        let target = match request.target {
            RouteTarget::Default => self.params.query_target.clone(),
            named => named,
        };
        let check = async move {
            let key = match (pre_checked, request.api_key) {
                (Some(key), _) => Some(key),
                (None, Some(presented)) => match state.store.authenticate(&presented).await {
                    Ok(key) => {
                        // A key checked before the upgrade took its token there.
                        if state
                            .rate_limiter
                            .try_acquire(key.id, Instant::now())
                            .is_err()
                        {
                            return Err((
                                SessionCloseReason::LimitExceeded,
                                "the key is opening sessions faster than its limit",
                                Some(key.id),
                            ));
                        }
                        Some(key)
                    }
                    Err(AuthError::Store(_)) => {
                        return Err((
                            SessionCloseReason::InternalError,
                            "cannot check the API key now",
                            None,
                        ));
                    }
                    Err(_) => {
                        return Err((
                            SessionCloseReason::AuthFailed,
                            "the API key is malformed, unknown or revoked",
                            None,
                        ));
                    }
                },
                (None, None) if keyless_ok => None,
                (None, None) => {
                    return Err((
                        SessionCloseReason::AuthFailed,
                        "an API key is required",
                        None,
                    ));
                }
            };
            match state.router.resolve(&target) {
                Ok(resolved) => Ok((key, resolved)),
                Err(_) => Err((
                    SessionCloseReason::ClientError,
                    "unknown provider or route",
                    key.map(|k| k.id),
                )),
            }
        };
        ctx.spawn(check.into_actor(self).map(|checked, act, ctx| {
            let (key, resolved) = match checked {
                Ok(ok) => ok,
                Err((reason, message, api_key_id)) => {
                    act.start_record = Some(act.record_start(api_key_id, None, String::new()));
                    act.feed(Input::Refused { reason, message }, ctx);
                    return;
                }
            };
            let start = act.record_start(
                key.as_ref().map(|k| k.id),
                resolved.route.clone(),
                resolved.provider.name.clone(),
            );
            let fallbacks = resolved.fallbacks;
            act.start_record = Some(start.clone());
            let admit = Admit {
                start,
                max_sessions: key.and_then(|k| k.max_sessions),
                session: ctx.address().recipient(),
            };
            let session_id = admit.start.id;
            let provider = resolved.provider;
            act.span.record("session_id", tracing::field::display(session_id));
            act.span.record("provider", provider.name.as_str());
            let admitted = act.params.state.supervisor.send(admit);
            ctx.spawn(admitted.into_actor(act).map(
                    move |admitted, act, ctx| match admitted {
                        Ok(Ok(())) => {
                            act.admitted = true;
                            act.params
                                .state
                                .metrics
                                .session_admitted(act.params.transport.as_str(), &provider.name);
                            act.admitted_provider = Some(provider.name.clone());
                            act.feed(
                                Input::Admitted(Admission {
                                    session_id,
                                    provider,
                                    fallbacks,
                                }),
                                ctx,
                            );
                        }
                        Ok(Err(refusal)) => act.feed(
                            Input::Refused {
                                reason: refusal.close_reason(),
                                message: "refused: the key is over its session limit, or the server is draining",
                            },
                            ctx,
                        ),
                        Err(_) => act.feed(
                            Input::Refused {
                                reason: SessionCloseReason::InternalError,
                                message: "the supervisor is unavailable",
                            },
                            ctx,
                        ),
                    },
                ));
        }));
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

    /// The session is over: record it, stop the provider, close the socket.
    fn finish(&mut self, outcome: SessionOutcome, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let reason = outcome.reason;
        self.record(outcome);
        ctx.close(Some(ws::CloseReason {
            code: close_code(reason),
            description: Some(reason.as_str().to_owned()),
        }));
        ctx.stop();
    }

    /// Hands the session's record to the supervisor (if a `start` was ever resolved) and lets
    /// the provider go: dropping its address stops it once it has passed `Finish` on.
    fn record(&mut self, outcome: SessionOutcome) {
        self.provider = None;
        tracing::info!(
            reason = outcome.reason.as_str(),
            duration_ms = outcome.duration_ms,
            audio_in_ms = outcome.audio_in_ms,
            audio_out_ms = outcome.audio_out_ms,
            bad_frames = outcome.bad_frames,
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
}

/// The WebSocket close code for a close reason (the reason string goes in the description).
fn close_code(reason: SessionCloseReason) -> ws::CloseCode {
    match reason {
        SessionCloseReason::Shutdown => ws::CloseCode::Away,
        SessionCloseReason::ClientError
        | SessionCloseReason::AuthFailed
        | SessionCloseReason::LimitExceeded => ws::CloseCode::Policy,
        SessionCloseReason::ProviderError | SessionCloseReason::InternalError => {
            ws::CloseCode::Error
        }
        _ => ws::CloseCode::Normal,
    }
}

impl Actor for SessionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Arms the start timer.
        self.drive(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A socket that vanished without a close frame still ends the session on record. The
        // socket is gone, so only the provider and the record outputs matter now.
        if self.core.is_ended() {
            return;
        }
        let span = self.span.clone();
        let _in_session = span.enter();
        self.core.handle_input(Instant::now(), Input::ClientClosed);
        loop {
            match self.core.poll_output() {
                Output::ToProvider(command) => {
                    if let Some(provider) = &self.provider {
                        provider.do_send(ProviderInput(command));
                    }
                }
                Output::Close(outcome) => return self.record(outcome),
                Output::Timeout(_) => return,
                _ => {}
            }
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match message {
            Ok(ws::Message::Text(text)) => self.feed(Input::ClientText(&text), ctx),
            Ok(ws::Message::Binary(bytes)) => self.feed(Input::ClientBinary(&bytes), ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(_)) => self.feed(Input::ClientClosed, ctx),
            Ok(ws::Message::Continuation(_)) => {
                // Fragmented messages are not part of either protocol: a bad frame.
                self.feed(Input::ClientBinary(&[]), ctx);
            }
            Err(error) => {
                // The WebSocket codec refused the frame (e.g. larger than MAX_FRAME_BYTES);
                // the connection cannot be trusted any more.
                tracing::debug!(%error, "websocket protocol error");
                self.feed(Input::End(SessionCloseReason::ClientError), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.feed(Input::ClientClosed, ctx);
    }
}

impl Handler<ProviderOutput> for SessionActor {
    type Result = ();

    fn handle(&mut self, message: ProviderOutput, ctx: &mut Self::Context) {
        if message.attempt != self.attempt {
            // A connection the session has already left (its trailing `Closed`, or events
            // that crossed the failover).
            tracing::trace!(
                attempt = message.attempt,
                current = self.attempt,
                "stale provider event dropped"
            );
            return;
        }
        self.watch(&message.event);
        self.feed(Input::Provider(message.event), ctx);
    }
}

impl SessionActor {
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
            ProviderEvent::Audio(_) | ProviderEvent::Transcript { .. } if !watch.answered => {
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

impl Handler<EndSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, message: EndSession, ctx: &mut Self::Context) {
        self.feed(Input::End(message.reason), ctx);
    }
}
