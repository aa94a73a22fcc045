//! `GET /v1/listen`: Deepgram-compatible live transcription. An unmodified Deepgram SDK whose
//! base URL points at voxroute streams audio here and gets `Results` from whichever
//! speech-to-text provider the route picks (the wire format: [`voxroute_actors::protocol::listen`]).
//!
//! Everything a client can get wrong in the request is refused before the upgrade, so the SDK
//! sees a plain HTTP error: a bad query value (`400`), a route with a provider that cannot
//! transcribe the caller (`400`, `cannot_transcribe`), an unknown provider or route (`400`),
//! a missing or bad key (`401`), the rest of [`pre_session_checks`](super::pre_session_checks).
//! voxroute's own `400`s have Deepgram's shape: a JSON body `{err_code, err_msg, request_id}`
//! and the `dg-error` and `dg-request-id` headers (`err_code` is voxroute's stable snake_case
//! code, e.g. `unsupported_encoding`).
//!
//! # Route choice
//!
//! `provider` or `route` in the query, as on every endpoint; else `model`, when it names a
//! configured route or provider (`model=deepgram`, `model=stt`); else the default route. A
//! Deepgram model name such as `nova-3` names neither and leaves the default route: the model
//! Deepgram runs is the one in voxroute's configuration.
//!
//! # Authentication
//!
//! The key as every endpoint takes it, plus Deepgram's `Authorization: Token <key>` (see
//! [`caller_key`](super::caller_key)). A keyless request is refused with `401` unless
//! `--dev` allows it (there is no `start` message that could bring a key later).

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde::Deserialize;
use uuid::Uuid;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::protocol::listen::{ListenOptions, ListenQuery};
use voxroute_actors::record::Transport;
use voxroute_actors::session::{AuthorizeRequest, ClientProtocol};

use super::{AppState, MAX_FRAME_BYTES, PreChecked, SessionActor, driver, pre_session_checks};
use crate::routing::Router;

/// The endpoint's path.
pub const PATH: &str = "/v1/listen";

/// The query parameters read here; every other one is ignored (as the module doc says).
#[derive(Debug, Default, Deserialize)]
struct ListenParams {
    encoding: Option<String>,
    sample_rate: Option<String>,
    channels: Option<String>,
    multichannel: Option<String>,
    interim_results: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    route: Option<String>,
}

/// `GET /v1/listen`: checks the request, then hands the socket to a [`SessionActor`] started
/// with the query's format and route.
pub(super) async fn listen(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<Arc<AppState>>,
) -> Result<HttpResponse, actix_web::Error> {
    let Ok(params) = web::Query::<ListenParams>::from_query(req.query_string()) else {
        return Ok(deepgram_error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "the query string cannot be read",
        ));
    };
    let params = params.into_inner();
    let options = match ListenOptions::parse(&ListenQuery {
        encoding: params.encoding.as_deref(),
        sample_rate: params.sample_rate.as_deref(),
        channels: params.channels.as_deref(),
        multichannel: params.multichannel.as_deref(),
        interim_results: params.interim_results.as_deref(),
    }) {
        Ok(options) => options,
        Err(error) => {
            return Ok(deepgram_error(
                StatusCode::BAD_REQUEST,
                error.code(),
                &error.to_string(),
            ));
        }
    };
    let target = match RouteTarget::from_parts(params.provider.as_deref(), params.route.as_deref())
    {
        Ok(RouteTarget::Default) => model_target(&state.router, params.model.as_deref()),
        Ok(named) => named,
        Err(_) => {
            return Ok(deepgram_error(
                StatusCode::BAD_REQUEST,
                "provider_and_route",
                "name a provider or a route, not both",
            ));
        }
    };
    if let Some(refusal) = refusal_of_route(&state.router, &target) {
        return Ok(refusal);
    }
    let PreChecked { key, .. } = match pre_session_checks(&req, &state).await {
        Ok(checked) => checked,
        Err(response) => return Ok(response),
    };
    let peer_ip: Option<IpAddr> = req.peer_addr().map(|addr| addr.ip());
    if key.is_none() && !state.keyless_allowed(peer_ip) {
        return Ok(deepgram_error(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "an API key is required: Authorization: Token <voxroute key>",
        ));
    }
    let start = AuthorizeRequest {
        api_key: None,
        target: target.clone(),
        format: options.format,
    };
    let actor = SessionActor::with_start(
        driver::SessionParams {
            state: Arc::clone(&state),
            protocol: ClientProtocol::Listen(options),
            endpoint: PATH,
            transport: Transport::WebSocket,
            peer_ip,
            key,
            query_target: target,
        },
        start,
    );
    ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(MAX_FRAME_BYTES)
        .start()
}

/// The route `model` names, if it names a configured route or provider; else the default.
fn model_target(router: &Router, model: Option<&str>) -> RouteTarget {
    model
        .filter(|m| !m.is_empty())
        .and_then(|model| router.target_for_model(model))
        .unwrap_or_default()
}

/// The refusal of a target that is unknown, or whose route holds a provider that cannot
/// transcribe the caller ([`ProviderSpec::for_transcription`](voxroute_actors::provider::ProviderSpec::for_transcription)):
/// a failover to it would silence the stream.
fn refusal_of_route(router: &Router, target: &RouteTarget) -> Option<HttpResponse> {
    let Ok(resolved) = router.resolve(target) else {
        return Some(deepgram_error(
            StatusCode::BAD_REQUEST,
            "unknown_route",
            "unknown provider or route",
        ));
    };
    resolved
        .candidates()
        .find(|spec| spec.for_transcription().is_none())
        .map(|spec| {
            let message = format!(
                "provider {:?} cannot transcribe the caller: route /v1/listen to {}",
                spec.name, "deepgram, gemini or openai"
            );
            deepgram_error(StatusCode::BAD_REQUEST, "cannot_transcribe", &message)
        })
}

/// A refused upgrade the way Deepgram answers one: the message in the `dg-error` header and
/// in a JSON body with a request id, also in `dg-request-id`.
fn deepgram_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let request_id = Uuid::now_v7().to_string();
    let mut response = HttpResponse::build(status);
    // A message that is not a valid header value (never ours) only loses the header.
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(message) {
        response.insert_header(("dg-error", value));
    }
    response
        .insert_header(("dg-request-id", request_id.as_str()))
        .json(serde_json::json!({
            "err_code": code,
            "err_msg": message,
            "request_id": request_id,
        }))
}
