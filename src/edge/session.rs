//! [`SessionActor`]: the WebSocket actor of one live session (a carrier's, native, OpenAI
//! Realtime or Deepgram live transcription), a thin carrier of the session driver's effects.
//!
//! It lives in the app, not in `voxroute-actors`, because an actix-web-actors WebSocket actor
//! is tied to actix-web, which the actors crate must not know; everything the session decides
//! is in the core, and everything that does not depend on the socket is in the driver.

use actix::prelude::*;
use actix_web_actors::ws;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::provider::actor::ProviderOutput;
use voxroute_actors::session::{AuthorizeRequest, ClientProtocol, Input};
use voxroute_actors::supervisor::EndSession;

use super::driver::{self, Effect, SessionDriver, SessionParams};

/// One caller's WebSocket: carries out what its session driver asks.
pub struct SessionActor {
    driver: SessionDriver,
    timer: Option<SpawnHandle>,
    /// The caller's start when the upgrade request carried it (`/v1/listen`'s query string):
    /// fed as [`Input::ClientStart`] when the actor starts.
    start: Option<AuthorizeRequest>,
}

impl SessionActor {
    pub(super) fn new(params: SessionParams) -> Self {
        SessionActor {
            driver: SessionDriver::new(params),
            timer: None,
            start: None,
        }
    }

    /// A session whose start came with the upgrade request.
    pub(super) fn with_start(params: SessionParams, start: AuthorizeRequest) -> Self {
        SessionActor {
            start: Some(start),
            ..SessionActor::new(params)
        }
    }

    /// One input into the core, then its effects.
    fn feed(&mut self, input: Input<'_>, ctx: &mut ws::WebsocketContext<Self>) {
        self.driver.input(input);
        self.drive(ctx);
    }

    /// Carries out the driver's effects until it asks for a timer or closes.
    fn drive(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        loop {
            match self.driver.next_effect() {
                Effect::Text(text) => ctx.text(text),
                Effect::Binary(bytes) => ctx.binary(bytes),
                // WebSocket callers get a `clear` message; nothing is queued here.
                Effect::FlushAudio => {}
                Effect::Authorize(request) => self.authorize(request, ctx),
                Effect::Timer(at) => {
                    if let Some(timer) = self.timer.take() {
                        ctx.cancel_future(timer);
                    }
                    let wait = at.saturating_duration_since(std::time::Instant::now());
                    self.timer = Some(ctx.run_later(wait, |act, ctx| {
                        act.timer = None;
                        act.feed(Input::Timeout, ctx);
                    }));
                    return;
                }
                Effect::Close(reason) => {
                    if let Some(timer) = self.timer.take() {
                        ctx.cancel_future(timer);
                    }
                    ctx.close(Some(close_frame(self.driver.protocol(), reason)));
                    ctx.stop();
                    return;
                }
            }
        }
    }

    fn authorize(&mut self, request: AuthorizeRequest, ctx: &mut ws::WebsocketContext<Self>) {
        driver::authorize(
            self,
            request,
            ctx,
            |act| &mut act.driver,
            |act, input, ctx| act.feed(input, ctx),
        );
    }
}

/// The WebSocket close frame for a close reason: the reason string goes in the description,
/// except where Deepgram's clients expect its own (protocols.md §4): `DATA-0000` (1008) for
/// input that cannot be understood and `NET-0001` (1011) for an idle stream.
fn close_frame(protocol: ClientProtocol, reason: SessionCloseReason) -> ws::CloseReason {
    let description = match (protocol, reason) {
        (ClientProtocol::Listen(_), SessionCloseReason::ClientError) => "DATA-0000",
        (ClientProtocol::Listen(_), SessionCloseReason::IdleTimeout) => "NET-0001",
        _ => reason.as_str(),
    };
    let code = match (protocol, reason) {
        (ClientProtocol::Listen(_), SessionCloseReason::IdleTimeout) => ws::CloseCode::Error,
        _ => close_code(reason),
    };
    ws::CloseReason {
        code,
        description: Some(description.to_owned()),
    }
}

/// The WebSocket close code for a close reason.
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
        self.driver
            .set_provider_events(ctx.address().recipient::<ProviderOutput>());
        match self.start.take() {
            Some(start) => self.feed(Input::ClientStart(start), ctx),
            // Arms the start timer.
            None => self.drive(ctx),
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A socket that vanished without a close frame still ends the session on record.
        self.driver.caller_vanished();
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
        if let Some(input) = self.driver.provider_event(message) {
            self.feed(input, ctx);
        }
    }
}

impl Handler<EndSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, message: EndSession, ctx: &mut Self::Context) {
        self.feed(Input::End(message.reason), ctx);
    }
}
