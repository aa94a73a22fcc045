//! [`SessionActor`]: the WebSocket actor of one live session, a thin driver of the sans-IO
//! [`SessionCore`].
//!
//! It lives in the app, not in `voxroute-actors`, because an actix-web-actors WebSocket actor
//! is tied to actix-web, which the actors crate must not know; everything the session decides
//! is in the core. The driver's one rule: after every input, carry out the core's outputs in
//! order until it asks for a timer (see `voxroute_actors::session`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::actor::{ProviderActor, ProviderInput, ProviderOutput};
use voxroute_actors::record::{SessionEnd, SessionStart, Transport};
use voxroute_actors::session::{
    Admission, AuthorizeRequest, ClientProtocol, Input, Output, SessionCore, SessionOutcome,
};
use voxroute_actors::supervisor::{Admit, EndSession, RecordUnadmitted, SessionEnded};

use super::AppState;
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
    provider: Option<Addr<ProviderActor>>,
    timer: Option<SpawnHandle>,
}

impl SessionActor {
    pub(super) fn new(params: SessionParams) -> Self {
        let now = Instant::now();
        let core = SessionCore::new(params.protocol, params.state.session, now);
        SessionActor {
            params,
            core,
            accepted_wall: Utc::now(),
            start_record: None,
            admitted: false,
            provider: None,
            timer: None,
        }
    }

    /// One input into the core, then its outputs.
    fn feed(&mut self, input: Input<'_>, ctx: &mut ws::WebsocketContext<Self>) {
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
                    let events = ctx.address().recipient::<ProviderOutput>();
                    self.provider = Some(ProviderActor::new(spec, 0, events).start());
                }
                Output::ToProvider(command) => {
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
            act.start_record = Some(start.clone());
            let admit = Admit {
                start,
                max_sessions: key.and_then(|k| k.max_sessions),
                session: ctx.address().recipient(),
            };
            let session_id = admit.start.id;
            let provider = resolved.provider;
            let admitted = act.params.state.supervisor.send(admit);
            ctx.spawn(admitted.into_actor(act).map(
                    move |admitted, act, ctx| match admitted {
                        Ok(Ok(())) => {
                            act.admitted = true;
                            act.feed(Input::Admitted(Admission { session_id, provider }), ctx);
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
            "session ended"
        );
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
            failovers: 0,
            first_response_ms: outcome.first_response_ms,
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
        self.feed(Input::Provider(message.event), ctx);
    }
}

impl Handler<EndSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, message: EndSession, ctx: &mut Self::Context) {
        self.feed(Input::End(message.reason), ctx);
    }
}
