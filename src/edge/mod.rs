//! The HTTP edge: routes, the WebSocket upgrades of the caller endpoints, health checks.
//!
//! # Authentication
//!
//! A key presented with the upgrade (`Authorization: Bearer vxr_…`, Deepgram's
//! `Authorization: Token vxr_…`, or `?api_key=`) is checked
//! before the upgrade: a malformed, unknown or revoked key gets `401` with an
//! `application/problem+json` body and nothing is routed. Callers that cannot set headers
//! (carriers, browsers) may present the key inside the protocol instead (Twilio's
//! `customParameters.api_key`, Telnyx's `custom_parameters.api_key`, a Vonage NCCO header
//! `api_key`, the native `start.api_key`); it is checked when `start` arrives,
//! and a bad one closes the socket with `AUTH_FAILED`. With `--dev`, callers on loopback may
//! present no key at all.
//!
//! `GET /v1/realtime` (OpenAI-Realtime-compatible) takes the key as the OpenAI SDKs send it,
//! `Authorization: Bearer`, and its `model` query parameter selects the route
//! ([`Router::target_for_model`]); a model that names neither a route nor a provider gets
//! `400` (`unknown_model`) before the upgrade.
//!
//! # Limits
//!
//! Every session of a key takes a token of the key's new-session bucket ([`crate::limits`]):
//! before the upgrade when the key came with it (an empty bucket gets `429` with
//! `Retry-After`), else when `start` brings the key (close `LIMIT_EXCEEDED`, on record). The
//! key's concurrent-session limit is the supervisor's, at admission.
//!
//! # Usage
//!
//! `GET /v1/usage` ([`crate::usage`]) takes the key the same way as the upgrades and through
//! the same check, [`caller_key`]; it never accepts a keyless caller.

mod driver;
mod listen;
mod session;
pub mod webrtc;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde::Deserialize;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::record::Transport;
use voxroute_actors::session::{ClientProtocol, SessionConfig};
use voxroute_actors::supervisor::Supervisor;

use crate::limits::SessionRateLimiter;
use crate::routing::Router;
use crate::store::{ApiKey, AuthError, Store};

pub use session::SessionActor;

/// Largest WebSocket frame a caller may send, in bytes. A Twilio `media` message is about
/// 250 bytes, 120 ms of 48 kHz stereo PCM16 is 23 KiB; anything bigger is refused by the
/// WebSocket codec and ends the session with `CLIENT_ERROR`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What every request handler shares.
pub struct AppState {
    /// The SQL store (keys, records).
    pub store: Store,
    /// The per-process supervisor.
    pub supervisor: Addr<Supervisor>,
    /// Providers and routes.
    pub router: Router,
    /// Settings every session gets.
    pub session: SessionConfig,
    /// `--dev`: keyless callers on loopback are accepted.
    pub dev: bool,
    /// Set on shutdown: readiness fails and new sessions are refused.
    pub draining: AtomicBool,
    /// Per-key rate of new sessions.
    pub rate_limiter: SessionRateLimiter,
    /// What `/metrics` reports.
    pub metrics: crate::metrics::Metrics,
    /// `VOXROUTE_ADMIN_TOKEN`; `None` closes the admin API.
    pub admin_token: Option<String>,
    /// `[prices.PROVIDER]`: the estimated cost of `GET /v1/usage`.
    pub prices: std::collections::BTreeMap<String, crate::usage::ProviderPrice>,
    /// This replica's membership of the deployment (PostgreSQL); `None` on SQLite, where
    /// live sessions are this process's alone.
    pub cluster: Option<crate::replicas::Cluster>,
    /// `[webrtc]`: media ports and ICE servers of `POST /v1/webrtc`.
    pub webrtc: webrtc::WebRtcSettings,
    /// This process's live WebRTC sessions, for `DELETE /v1/webrtc/{id}`.
    pub webrtc_sessions: webrtc::WebRtcSessions,
}

impl AppState {
    /// Whether a caller at `peer_ip` may go without a key: only with `--dev`, on loopback.
    pub fn keyless_allowed(&self, peer_ip: Option<IpAddr>) -> bool {
        self.dev && peer_ip.is_some_and(|ip| ip.is_loopback())
    }
}

/// A WebSocket endpoint callers stream audio to: its path fixes the protocol it speaks and
/// the transport its records show.
#[derive(Debug, Clone, Copy)]
struct CallerEndpoint {
    path: &'static str,
    protocol: ClientProtocol,
    transport: Transport,
}

/// Every caller endpoint of this release.
const CALLER_ENDPOINTS: [CallerEndpoint; 6] = [
    CallerEndpoint {
        path: "/v1/telephony/twilio",
        protocol: ClientProtocol::Twilio,
        transport: Transport::Telephony,
    },
    CallerEndpoint {
        path: "/v1/telephony/telnyx",
        protocol: ClientProtocol::Telnyx,
        transport: Transport::Telephony,
    },
    CallerEndpoint {
        path: "/v1/telephony/vonage",
        protocol: ClientProtocol::Vonage,
        transport: Transport::Telephony,
    },
    CallerEndpoint {
        path: "/v1/telephony/plivo",
        protocol: ClientProtocol::Plivo,
        transport: Transport::Telephony,
    },
    CallerEndpoint {
        path: "/v1/ws",
        protocol: ClientProtocol::Native,
        transport: Transport::WebSocket,
    },
    CallerEndpoint {
        path: "/v1/realtime",
        protocol: ClientProtocol::Realtime,
        transport: Transport::WebSocket,
    },
];

/// Registers every route of the edge.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/v1/usage", web::get().to(crate::usage::get_usage))
        .configure(crate::admin::configure)
        .configure(webrtc::configure)
        .route(listen::PATH, web::get().to(listen::listen));
    for endpoint in CALLER_ENDPOINTS {
        cfg.route(
            endpoint.path,
            web::get().to(
                move |req: HttpRequest, stream: web::Payload, state: web::Data<Arc<AppState>>| {
                    upgrade(req, stream, state, endpoint)
                },
            ),
        );
    }
}

/// `GET /healthz`: the process is up.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// `GET /readyz`: the store answers and the server is not draining.
async fn readyz(state: web::Data<Arc<AppState>>) -> HttpResponse {
    if state.draining.load(Ordering::SeqCst) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        );
    }
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the session store does not answer",
        ),
    }
}

/// `GET /metrics`: the Prometheus scrape (see [`crate::metrics`]). Unauthenticated, like
/// the health checks: it holds counts by provider and close reason, never a key, id or address.
async fn metrics(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let store = state
        .supervisor
        .send(voxroute_actors::supervisor::Stats)
        .await
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render(&store))
}

/// What the upgrade request's query string may carry.
#[derive(Debug, Default, Deserialize)]
pub(super) struct UpgradeQuery {
    pub(super) api_key: Option<String>,
    provider: Option<String>,
    route: Option<String>,
}

/// What a caller endpoint learned from the request before its session starts.
pub(super) struct PreChecked {
    /// The provider or route the query string names.
    pub(super) target: RouteTarget,
    /// The key presented with the request (header or query), checked; its new-session token
    /// is taken.
    pub(super) key: Option<ApiKey>,
}

/// The checks every caller endpoint makes before a session starts: not draining, a query
/// naming at most one of provider and route, a good key if one is presented, and a token
/// of the key's new-session bucket.
///
/// # Errors
/// The response to send instead: `503`, `400`, `401` or `429` (with `Retry-After`).
pub(super) async fn pre_session_checks(
    req: &HttpRequest,
    state: &AppState,
) -> Result<PreChecked, HttpResponse> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        ));
    }
    let query = web::Query::<UpgradeQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let Ok(target) = RouteTarget::from_parts(query.provider.as_deref(), query.route.as_deref())
    else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "provider_and_route",
            "name a provider or a route, not both",
        ));
    };
    let key = caller_key(req, query.api_key, &state.store).await?;
    if let Some(key) = &key
        && let Err(limited) = state
            .rate_limiter
            .try_acquire(key.id, std::time::Instant::now())
    {
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &limited.to_string(),
        );
        let retry_after_secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = retry_after_secs.to_string().parse() {
            response
                .headers_mut()
                .insert(actix_web::http::header::RETRY_AFTER, value);
        }
        return Err(response);
    }
    Ok(PreChecked { target, key })
}

/// Checks what can be checked before the upgrade, then hands the socket to a
/// [`SessionActor`].
async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<Arc<AppState>>,
    endpoint: CallerEndpoint,
) -> Result<HttpResponse, actix_web::Error> {
    let PreChecked {
        target: mut query_target,
        key,
    } = match pre_session_checks(&req, &state).await {
        Ok(checked) => checked,
        Err(response) => return Ok(response),
    };
    // `GET /v1/realtime`: `model` selects the route (else `provider`/`route`, or the default).
    if endpoint.protocol == ClientProtocol::Realtime
        && let Some(model) = realtime_model(&req)
    {
        match state.router.target_for_model(&model) {
            Some(target) => query_target = target,
            None => {
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    "unknown_model",
                    "`model` names neither a route nor a provider of this voxroute",
                ));
            }
        }
    }
    let peer_ip: Option<IpAddr> = req.peer_addr().map(|addr| addr.ip());
    let actor = SessionActor::new(driver::SessionParams {
        state: Arc::clone(&state),
        protocol: endpoint.protocol,
        endpoint: endpoint.path,
        transport: endpoint.transport,
        peer_ip,
        key,
        query_target,
    });
    ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(MAX_FRAME_BYTES)
        .start()
}

/// The non-empty `model` query parameter of `GET /v1/realtime`, if any
/// ([`Router::target_for_model`] says what it selects).
fn realtime_model(req: &HttpRequest) -> Option<String> {
    #[derive(Deserialize)]
    struct ModelQuery {
        model: Option<String>,
    }
    web::Query::<ModelQuery>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.into_inner().model)
        .filter(|model| !model.is_empty())
}

/// Checks the key a caller presented with its HTTP request: the `Authorization: Bearer` (or
/// Deepgram's `Authorization: Token`) header, else `query_key` (the request's `api_key` query
/// parameter). `Ok(None)`: no key was presented (the endpoint decides whether that is
/// allowed).
///
/// # Errors
///
/// The response to send instead: `401` (problem+json, `invalid_api_key`) for a malformed,
/// unknown or revoked key, `503` (`store_unavailable`) when the store cannot check it now.
pub async fn caller_key(
    req: &HttpRequest,
    query_key: Option<String>,
    store: &Store,
) -> Result<Option<ApiKey>, HttpResponse> {
    let presented = authorization_token(req, "bearer")
        .or_else(|| authorization_token(req, "token"))
        .or(query_key);
    let Some(presented) = presented else {
        return Ok(None);
    };
    match store.authenticate(&presented).await {
        Ok(key) => Ok(Some(key)),
        Err(AuthError::Store(_)) => Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "cannot check the API key now",
        )),
        Err(_) => Err(problem(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is malformed, unknown or revoked",
        )),
    }
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive, token trimmed),
/// if any: a caller's API key here, the admin token in [`crate::admin`].
pub(crate) fn bearer_key(req: &HttpRequest) -> Option<String> {
    authorization_token(req, "bearer")
}

/// The token of an `Authorization: <scheme> …` header (scheme case-insensitive, token
/// trimmed), if the header has that scheme.
fn authorization_token(req: &HttpRequest, scheme_wanted: &str) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case(scheme_wanted)
        .then(|| key.trim().to_owned())
}

/// An RFC 9457 `application/problem+json` response, with a stable snake_case `code`
/// extension member for programs.
pub fn problem(status: StatusCode, code: &str, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("error"),
            "code": code,
            "status": status.as_u16(),
            "detail": detail,
        }))
}
