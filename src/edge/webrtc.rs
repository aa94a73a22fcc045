//! Browser voice over WebRTC: `POST /v1/webrtc` (an SDP offer in, the answer out, as WHIP's
//! exchange but two-way), `DELETE /v1/webrtc/{id}`, and [`WebRtcSession`], the actor of one
//! such session.
//!
//! # The exchange
//!
//! The caller POSTs an `application/sdp` offer with one audio section offering Opus (and,
//! to get events, a data channel labelled `events`, created before the offer). voxroute checks
//! the key and the route as for the WebSocket endpoints, answers with the Opus payload type
//! the offer used, waits for its own ICE candidates (no trickle: host candidates come at once,
//! a STUN/TURN server within [`GATHER_TIMEOUT`]) and, once the supervisor has admitted the
//! session, returns `201 Created` with the SDP answer and `Location: /v1/webrtc/{session_id}`.
//! `DELETE` on that location hangs up (`CLIENT_HANGUP`).
//!
//! # Media
//!
//! Caller packets go through a [`JitterBuffer`] (reordered by sequence number, a missing one
//! waited for at most [`JITTER_DELAY_DEFAULT`]) into the session core, which decodes them —
//! rebuilding a lost packet from the next one's in-band FEC, or concealing it — so the
//! provider gets a gap-free 20 ms stream. Provider audio comes back from the core as Opus
//! packets of 20 ms; the session's link task sends each as soon as its 20 ms slot has come
//! (at once for audio streamed at real time; a faster burst waits its turns), fills a slot
//! whose audio is over 20 ms late with comfort silence so the browser's clock never stalls,
//! and drops what is queued on barge-in. Events (`session.started`, `transcript`, …) go out
//! on the `events` data channel as the native protocol's JSON, held until it opens.
//!
//! # Ending
//!
//! A peer connection that fails (ICE or DTLS) or closes ends the session (`CLIENT_ERROR` or
//! `CLIENT_HANGUP`; a disconnected one gets 5 s to come back); one that is not connected within `[webrtc] connect_timeout_secs` ends
//! it with `CLIENT_ERROR`. Audio buffers go with the actor and the link task.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::jitter::{
    JITTER_CAPACITY_DEFAULT, JITTER_DELAY_DEFAULT, JitterBuffer, Released,
};
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::actor::ProviderOutput;
use voxroute_actors::record::Transport;
use voxroute_actors::session::{AuthorizeRequest, ClientProtocol, Input};
use voxroute_actors::supervisor::EndSession;
use voxroute_codecs::{AudioFormat, Channels, Codec, SampleRate};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateType, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use super::driver::{self, Effect, SessionDriver, SessionParams};
use super::{AppState, problem};

/// The endpoint's path.
pub const PATH: &str = "/v1/webrtc";

/// Longest wait for voxroute's own ICE candidates before answering.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest wait for the supervisor's admission before answering `503`.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest SDP offer accepted, in bytes (a browser's is 2–6 KiB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Most provider audio held for pacing, in 20 ms packets (60 s); more is dropped.
const MAX_QUEUED_PACKETS: usize = 3_000;

/// Most events held until the data channel opens; more are dropped.
const MAX_HELD_EVENTS: usize = 64;

/// How long a disconnected peer gets to come back before the session ends
/// (`CLIENT_HANGUP`).
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

/// One RTP packet of Opus carries 20 ms.
const PACKET_DURATION: Duration = Duration::from_millis(20);

/// How late provider audio may be, past its slot, before comfort silence takes the slot.
const SILENCE_GRACE: Duration = PACKET_DURATION;

/// `[webrtc]`: how callers reach the media ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebRtcSettings {
    /// The address the media sockets bind. Default `0.0.0.0`: one socket per interface
    /// (loopback excluded), which gives one host candidate each.
    pub bind_ip: IpAddr,
    /// Public addresses to announce instead of the interfaces' own (1:1 NAT, e.g. a cloud
    /// VM's public IP). Empty by default.
    pub public_ips: Vec<String>,
    /// The first UDP port the media sockets may use (with `udp_port_max`); unset, the
    /// kernel picks ephemeral ports.
    pub udp_port_min: Option<u16>,
    /// The last UDP port the media sockets may use.
    pub udp_port_max: Option<u16>,
    /// STUN/TURN servers, for callers behind NATs that host candidates cannot cross.
    pub ice_servers: Vec<IceServerSettings>,
    /// A session whose peer connection is not connected this many seconds after the answer
    /// ends with `CLIENT_ERROR`. Default 15; at least 1.
    pub connect_timeout_secs: u64,
}

/// `[[webrtc.ice_servers]]`: one STUN or TURN server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceServerSettings {
    /// `stun:host:port`, `turn:host:port?transport=udp`, …
    pub urls: Vec<String>,
    /// TURN user name.
    pub username: String,
    /// TURN credential.
    pub credential: String,
}

impl Default for WebRtcSettings {
    fn default() -> Self {
        WebRtcSettings {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            public_ips: Vec::new(),
            udp_port_min: None,
            udp_port_max: None,
            ice_servers: Vec::new(),
            connect_timeout_secs: 15,
        }
    }
}

impl WebRtcSettings {
    /// Checks the values that have a valid range.
    ///
    /// # Errors
    /// A message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout_secs == 0 {
            return Err("webrtc.connect_timeout_secs must be at least 1".to_owned());
        }
        match (self.udp_port_min, self.udp_port_max) {
            (None, None) => {}
            (Some(min), Some(max)) if min >= 1 && min <= max => {}
            _ => {
                return Err(
                    "webrtc.udp_port_min and udp_port_max go together, 1 <= min <= max".to_owned(),
                );
            }
        }
        if let Some(ip) = self
            .public_ips
            .iter()
            .find(|ip| ip.parse::<IpAddr>().is_err())
        {
            return Err(format!("webrtc.public_ips: `{ip}` is not an IP address"));
        }
        Ok(())
    }

    /// The socket addresses to try for one session's media, in order: the configured port
    /// range starting where the last session left off (so ports are reused last), or one
    /// ephemeral port.
    fn bind_candidates(&self) -> impl Iterator<Item = SocketAddr> + use<> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let ip = self.bind_ip;
        let (first, count) = match (self.udp_port_min, self.udp_port_max) {
            (Some(min), Some(max)) => (u32::from(min), u32::from(max) - u32::from(min) + 1),
            _ => (0, 1),
        };
        let start = NEXT.fetch_add(1, Ordering::Relaxed) % count;
        (0..count).map(move |i| {
            // In range: `first + (start + i) % count` is at most `max`, a u16.
            let port = u16::try_from(first + (start + i) % count).unwrap_or(0);
            SocketAddr::new(ip, port)
        })
    }
}

/// Why an offer was refused before a session started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not SDP at all, or SDP the WebRTC stack cannot parse.
    #[error("malformed SDP offer: {0}")]
    Malformed(&'static str),
    /// No audio section.
    #[error("the offer has no audio section")]
    NoAudio,
    /// An audio section without Opus.
    #[error("the offer's audio section does not offer Opus")]
    NoOpus,
}

/// What voxroute needs from an offer: the Opus payload type and its format parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusOffer {
    /// The payload type the offer gave Opus.
    pub payload_type: u8,
    /// Its `a=fmtp` parameters (e.g. `minptime=10;useinbandfec=1`), empty if none.
    pub fmtp: String,
}

/// Finds Opus in the offer's first audio section.
///
/// # Errors
/// [`OfferError`]: not SDP, no audio section, no Opus in it.
pub fn parse_offer(sdp: &str) -> Result<OpusOffer, OfferError> {
    let mut lines = sdp.lines().map(str::trim_end);
    if lines.next() != Some("v=0") {
        return Err(OfferError::Malformed("an SDP offer starts with `v=0`"));
    }
    if !sdp.lines().any(|line| line.starts_with("m=")) {
        return Err(OfferError::Malformed("no media section"));
    }
    // The first audio section's lines, up to the next `m=`.
    let mut section = sdp
        .lines()
        .map(str::trim_end)
        .skip_while(|line| !line.starts_with("m=audio "));
    let Some(m_line) = section.next() else {
        return Err(OfferError::NoAudio);
    };
    let offered: Vec<&str> = m_line.split(' ').skip(3).collect();
    let attributes: Vec<&str> = section.take_while(|line| !line.starts_with("m=")).collect();
    let payload_type = attributes
        .iter()
        .filter_map(|line| line.strip_prefix("a=rtpmap:"))
        .find_map(|rtpmap| {
            let (pt, codec) = rtpmap.split_once(' ')?;
            let name = codec.split('/').next()?;
            (name.eq_ignore_ascii_case("opus") && offered.contains(&pt))
                .then(|| pt.parse::<u8>().ok())
                .flatten()
        })
        .ok_or(OfferError::NoOpus)?;
    let fmtp_prefix = format!("a=fmtp:{payload_type} ");
    let fmtp = attributes
        .iter()
        .find_map(|line| line.strip_prefix(fmtp_prefix.as_str()))
        .unwrap_or("")
        .to_owned();
    Ok(OpusOffer { payload_type, fmtp })
}

/// A live WebRTC session by id: the key that started it (if any) and its actor.
type LiveMap = HashMap<Uuid, (Option<Uuid>, Addr<WebRtcSession>)>;

/// The live WebRTC sessions of this process, for `DELETE`.
#[derive(Default)]
pub struct WebRtcSessions {
    live: Mutex<LiveMap>,
}

impl WebRtcSessions {
    fn insert(&self, id: Uuid, key_id: Option<Uuid>, addr: Addr<WebRtcSession>) {
        self.lock().insert(id, (key_id, addr));
    }

    fn remove(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn get(&self, id: Uuid) -> Option<(Option<Uuid>, Addr<WebRtcSession>)> {
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveMap> {
        // A panic while holding this lock leaves a map that is still valid.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Registers `POST`, `OPTIONS` and `DELETE` of the endpoint, and `GET /demo`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PATH, web::post().to(post_offer))
        .route(
            PATH,
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        )
        .route(&format!("{PATH}/{{id}}"), web::delete().to(delete_session))
        .route(
            &format!("{PATH}/{{id}}"),
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        )
        .route("/demo", web::get().to(demo_page));
}

/// `GET /demo`: the browser page (see the README).
async fn demo_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("demo.html"))
}

/// CORS: pages on other origins may call the endpoint (the key authenticates, not cookies).
fn cors(mut response: HttpResponse) -> HttpResponse {
    use actix_web::http::header::{
        ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue,
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    response
}

/// `OPTIONS`: the CORS preflight.
async fn preflight() -> HttpResponse {
    cors(
        HttpResponse::NoContent()
            .insert_header(("Access-Control-Allow-Methods", "POST, DELETE, OPTIONS"))
            .insert_header((
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type",
            ))
            .insert_header(("Access-Control-Max-Age", "600"))
            .finish(),
    )
}

/// `POST /v1/webrtc`: see the module docs.
async fn post_offer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<AppState>>,
) -> HttpResponse {
    cors(answer_offer(req, body, state).await)
}

async fn answer_offer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<AppState>>,
) -> HttpResponse {
    let checked = match super::pre_session_checks(&req, &state).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let peer_ip = req.peer_addr().map(|addr| addr.ip());
    if checked.key.is_none() && !state.keyless_allowed(peer_ip) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "an API key is required (Authorization: Bearer, or ?api_key=)",
        );
    }
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/sdp"))
    {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_sdp",
            "the offer must be sent as Content-Type: application/sdp",
        );
    }
    if body.len() > MAX_OFFER_BYTES {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "offer_too_large",
            "the SDP offer is larger than 64 KiB",
        );
    }
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "malformed_sdp",
            "the offer is not UTF-8 text",
        );
    };
    let opus = match parse_offer(sdp) {
        Ok(opus) => opus,
        Err(error @ OfferError::Malformed(_)) => {
            return problem(StatusCode::BAD_REQUEST, "malformed_sdp", &error.to_string());
        }
        Err(error) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_opus_audio",
                &error.to_string(),
            );
        }
    };
    // An unknown route is refused before any media port opens.
    if state.router.resolve(&checked.target).is_err() {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "unknown provider or route",
        );
    }
    let peer = match Peer::negotiate(sdp.to_owned(), &opus, &state.webrtc).await {
        Ok(peer) => peer,
        Err(error) => {
            tracing::debug!(%error, "WebRTC negotiation failed");
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed_sdp",
                "the offer could not be negotiated",
            );
        }
    };
    let answer_sdp = peer.answer_sdp.clone();
    let (admitted_tx, admitted_rx) = oneshot::channel();
    let key_id = checked.key.as_ref().map(|key| key.id);
    let params = SessionParams {
        state: Arc::clone(&state),
        protocol: ClientProtocol::WebRtc,
        endpoint: PATH,
        transport: Transport::WebRtc,
        peer_ip,
        key: checked.key,
        query_target: checked.target,
    };
    let connect_timeout = Duration::from_secs(state.webrtc.connect_timeout_secs);
    let pc = Arc::clone(&peer.pc);
    WebRtcSession::start(params, peer, key_id, connect_timeout, admitted_tx);
    let admitted = tokio::time::timeout(ADMISSION_TIMEOUT, admitted_rx).await;
    let session_id = match admitted {
        Ok(Ok(Ok(session_id))) => session_id,
        refused => {
            let reason = match refused {
                Ok(Ok(Err(reason))) => reason,
                _ => SessionCloseReason::InternalError,
            };
            actix::spawn(async move {
                let _ = pc.close().await;
            });
            return refusal_response(reason);
        }
    };
    HttpResponse::Created()
        .content_type("application/sdp")
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("{PATH}/{session_id}"),
        ))
        .body(answer_sdp)
}

/// The HTTP answer for a session refused at admission.
fn refusal_response(reason: SessionCloseReason) -> HttpResponse {
    match reason {
        SessionCloseReason::AuthFailed => problem(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is malformed, unknown or revoked",
        ),
        SessionCloseReason::LimitExceeded => problem(
            StatusCode::TOO_MANY_REQUESTS,
            "limit_exceeded",
            "the key is over its session limit",
        ),
        SessionCloseReason::Shutdown => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        ),
        SessionCloseReason::ClientError => problem(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "unknown provider or route",
        ),
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_admitted",
            "the session could not be started now",
        ),
    }
}

/// `DELETE /v1/webrtc/{id}`: hangs up, for the key that started the session.
async fn delete_session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Arc<AppState>>,
) -> HttpResponse {
    let query = web::Query::<super::UpgradeQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let key = match super::caller_key(&req, query.api_key, &state.store).await {
        Ok(key) => key,
        Err(response) => return cors(response),
    };
    let not_found = || {
        cors(problem(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no live WebRTC session with this id",
        ))
    };
    let Ok(id) = path.parse::<Uuid>() else {
        return not_found();
    };
    let Some((owner, addr)) = state.webrtc_sessions.get(id) else {
        return not_found();
    };
    // Another key's session looks like no session at all.
    if owner.is_some() && owner != key.as_ref().map(|k| k.id) {
        return not_found();
    }
    addr.do_send(Hangup);
    cors(HttpResponse::Ok().finish())
}

/// What the peer connection reports, in the order it happens.
enum PeerEvent {
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
    State(RTCPeerConnectionState),
}

/// Forwards the peer connection's callbacks to the session.
#[derive(Clone)]
struct PeerHandler {
    events: mpsc::UnboundedSender<PeerEvent>,
    gathered: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(PeerEvent::State(state));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.events.send(PeerEvent::DataChannel(channel));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.events.send(PeerEvent::Track(track));
    }
}

/// A negotiated peer connection, before its session starts.
struct Peer {
    pc: Arc<dyn PeerConnection>,
    answer_sdp: String,
    /// Where voxroute's audio goes.
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
    events: mpsc::UnboundedReceiver<PeerEvent>,
}

/// Why a peer connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum NegotiationError {
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("no UDP port of the configured range could be bound")]
    NoPort,
    #[error("no local description after the answer")]
    NoAnswer,
}

impl Peer {
    async fn negotiate(
        offer_sdp: String,
        opus: &OpusOffer,
        settings: &WebRtcSettings,
    ) -> Result<Peer, NegotiationError> {
        let offer = RTCSessionDescription::offer(offer_sdp)?;
        let codec = RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: opus.fmtp.clone(),
            rtcp_feedback: vec![],
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let gathered = Arc::new(tokio::sync::Notify::new());
        let handler = Arc::new(PeerHandler {
            events: events_tx,
            gathered: Arc::clone(&gathered),
        });
        let ice_servers: Vec<RTCIceServer> = settings
            .ice_servers
            .iter()
            .map(|server| RTCIceServer {
                urls: server.urls.clone(),
                username: server.username.clone(),
                credential: server.credential.clone(),
            })
            .collect();
        let mut pc = None;
        for addr in settings.bind_candidates() {
            let mut media_engine = MediaEngine::default();
            media_engine.register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: codec.clone(),
                    payload_type: opus.payload_type,
                },
                RtpCodecKind::Audio,
            )?;
            let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
            let mut setting_engine = SettingEngineBuilder::new();
            if !settings.public_ips.is_empty() {
                setting_engine = setting_engine
                    .with_nat_1to1_ips(settings.public_ips.clone(), RTCIceCandidateType::Host);
            }
            let built = PeerConnectionBuilder::new()
                .with_configuration(
                    RTCConfigurationBuilder::new()
                        .with_ice_servers(ice_servers.clone())
                        .build(),
                )
                .with_media_engine(media_engine)
                .with_setting_engine(setting_engine.build())
                .with_interceptor_registry(registry)
                .with_handler(handler.clone())
                .with_udp_addrs(vec![addr])
                .build()
                .await;
            match built {
                Ok(built) => {
                    pc = Some(Arc::new(built) as Arc<dyn PeerConnection>);
                    break;
                }
                Err(error) => tracing::debug!(%error, %addr, "cannot bind WebRTC media"),
            }
        }
        let pc = pc.ok_or(NegotiationError::NoPort)?;
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "voxroute".to_owned(),
                "voxroute-audio".to_owned(),
                "voxroute".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            ),
        )?);
        let result = async {
            pc.set_remote_description(offer).await?;
            // After the offer, so the track takes the offer's audio transceiver (sendrecv).
            pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            Ok::<_, NegotiationError>(())
        }
        .await;
        if let Err(error) = result {
            let _ = pc.close().await;
            return Err(error);
        }
        // Non-trickle: the answer carries every candidate gathered in time.
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await;
        let Some(answer) = pc.local_description().await else {
            let _ = pc.close().await;
            return Err(NegotiationError::NoAnswer);
        };
        Ok(Peer {
            pc,
            answer_sdp: answer.sdp,
            track,
            ssrc,
            payload_type: opus.payload_type,
            events,
        })
    }
}

/// What the session sends to its link task.
enum Outbound {
    /// One Opus packet of 20 ms, to send in its turn.
    Audio(Bytes),
    /// Barge-in: drop the audio queued.
    Flush,
    /// An event for the data channel.
    Event(String),
    /// The `events` data channel is open.
    ChannelOpen(Arc<dyn DataChannel>),
}

/// The session's media sender: paces audio at real time, sends events, and closes the peer
/// connection when the session drops its sender (after the last events went out).
///
/// # Pacing
///
/// Packets go out on a 20 ms slot clock (`next_due`): a packet that arrives when its slot has
/// come is sent at once, so audio that the provider streams at real time leaves as it comes,
/// with no wait for a tick; audio that comes faster (a provider's burst) waits in the queue
/// for its slot. A slot whose audio is more than [`SILENCE_GRACE`] late gets comfort silence,
/// so the caller's clock never stalls. A late send does not move the clock later unless it is
/// a whole slot late, so one late packet does not delay the ones after it.
async fn run_link(
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
) {
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    let mut held_events: Vec<String> = Vec::new();
    let mut channel: Option<Arc<dyn DataChannel>> = None;
    let silence = comfort_silence();
    let mut dropped: u64 = 0;
    let mut next_due = tokio::time::Instant::now();
    loop {
        let wake_at = if queue.is_empty() {
            next_due + SILENCE_GRACE
        } else {
            next_due
        };
        tokio::select! {
            message = outbound.recv() => match message {
                Some(Outbound::Audio(packet)) => {
                    if queue.len() < MAX_QUEUED_PACKETS {
                        queue.push_back(packet);
                    } else {
                        dropped += 1;
                    }
                }
                Some(Outbound::Flush) => queue.clear(),
                Some(Outbound::Event(text)) => match &channel {
                    Some(channel) => {
                        let _ = channel.send_text(&text).await;
                    }
                    None if held_events.len() < MAX_HELD_EVENTS => held_events.push(text),
                    None => {}
                },
                Some(Outbound::ChannelOpen(open)) => {
                    for text in held_events.drain(..) {
                        let _ = open.send_text(&text).await;
                    }
                    channel = Some(open);
                }
                None => break,
            },
            () = tokio::time::sleep_until(wake_at) => {}
        }
        let now = tokio::time::Instant::now();
        let due = if queue.is_empty() {
            now >= next_due + SILENCE_GRACE
        } else {
            now >= next_due
        };
        if due {
            let sample = Sample {
                data: queue.pop_front().unwrap_or_else(|| silence.clone()),
                duration: PACKET_DURATION,
                ..Sample::new(Instant::now())
            };
            // Before the connection is up there is nowhere to send: not an error.
            let _ = track
                .sample_writer(ssrc, payload_type)
                .write_sample(&sample)
                .await;
            next_due = (next_due + PACKET_DURATION).max(now);
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "provider audio dropped: more than 60 s queued");
    }
    // Let the last events (`session.ended`) leave before the connection goes.
    if channel.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = pc.close().await;
}

/// One 20 ms Opus packet of digital silence ([`voxroute_codecs::opus::silence_packet`]).
fn comfort_silence() -> Bytes {
    Bytes::from_static(voxroute_codecs::opus::silence_packet())
}

/// Hang up (`DELETE`).
#[derive(Message)]
#[rtype(result = "()")]
struct Hangup;

/// One caller RTP packet.
#[derive(Message)]
#[rtype(result = "()")]
struct RtpIn {
    seq: u16,
    payload: Bytes,
}

/// A text message on the `events` data channel.
#[derive(Message)]
#[rtype(result = "()")]
struct ChannelText(String);

/// One WebRTC session: a thin carrier of its session driver's effects, with the jitter
/// buffer in front of the core (see the module docs).
pub struct WebRtcSession {
    driver: SessionDriver,
    timer: Option<SpawnHandle>,
    jitter: JitterBuffer<Bytes>,
    jitter_timer: Option<SpawnHandle>,
    /// To the link task; dropping it closes the peer connection.
    link: Option<mpsc::UnboundedSender<Outbound>>,
    /// Peer events, until the actor starts.
    peer_events: Option<mpsc::UnboundedReceiver<PeerEvent>>,
    /// The HTTP request waiting for the admission (its answer carries the session id).
    admitted: Option<oneshot::Sender<Result<Uuid, SessionCloseReason>>>,
    key_id: Option<Uuid>,
    session_id: Option<Uuid>,
    connected: bool,
    connect_timeout: Duration,
}

impl WebRtcSession {
    fn start(
        params: SessionParams,
        peer: Peer,
        key_id: Option<Uuid>,
        connect_timeout: Duration,
        admitted: oneshot::Sender<Result<Uuid, SessionCloseReason>>,
    ) {
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        actix::spawn(run_link(
            peer.pc,
            peer.track,
            peer.ssrc,
            peer.payload_type,
            link_rx,
        ));
        WebRtcSession {
            driver: SessionDriver::new(params),
            timer: None,
            jitter: JitterBuffer::new(JITTER_CAPACITY_DEFAULT, JITTER_DELAY_DEFAULT),
            jitter_timer: None,
            link: Some(link_tx),
            peer_events: Some(peer.events),
            admitted: Some(admitted),
            key_id,
            session_id: None,
            connected: false,
            connect_timeout,
        }
        .start();
    }

    fn feed(&mut self, input: Input<'_>, ctx: &mut Context<Self>) {
        self.driver.input(input);
        self.drive(ctx);
    }

    fn send_link(&self, message: Outbound) {
        if let Some(link) = &self.link {
            let _ = link.send(message);
        }
    }

    /// Carries out the driver's effects until it asks for a timer or closes.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        loop {
            match self.driver.next_effect() {
                Effect::Text(text) => self.send_link(Outbound::Event(text)),
                Effect::Binary(packet) => self.send_link(Outbound::Audio(Bytes::from(packet))),
                Effect::FlushAudio => self.send_link(Outbound::Flush),
                Effect::Authorize(request) => self.authorize(request, ctx),
                Effect::Timer(at) => {
                    self.on_admission_known(ctx);
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
                Effect::Close(reason) => {
                    if let Some(admitted) = self.admitted.take() {
                        let _ = admitted.send(Err(reason));
                    }
                    // Dropping the link's sender lets it send the last events and close.
                    self.link = None;
                    self.jitter.clear();
                    ctx.stop();
                    return;
                }
            }
        }
    }

    /// Once admitted: the waiting request learns the session id, and `DELETE` can find it.
    fn on_admission_known(&mut self, ctx: &mut Context<Self>) {
        if self.session_id.is_some() {
            return;
        }
        let Some(id) = self.driver.session_id() else {
            return;
        };
        self.session_id = Some(id);
        self.driver
            .state()
            .webrtc_sessions
            .insert(id, self.key_id, ctx.address());
        if let Some(admitted) = self.admitted.take() {
            let _ = admitted.send(Ok(id));
        }
    }

    fn authorize(&mut self, request: AuthorizeRequest, ctx: &mut Context<Self>) {
        driver::authorize(
            self,
            request,
            ctx,
            |act| &mut act.driver,
            |act, input, ctx| act.feed(input, ctx),
        );
    }

    /// Releases what the jitter buffer has due, then arms its timer.
    fn drain_jitter(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        loop {
            match self.jitter.pop(now) {
                Some(Released::Packet(packet)) => self.feed(Input::ClientBinary(&packet), ctx),
                Some(Released::Lost { next }) => {
                    let next = next.cloned();
                    self.feed(
                        Input::ClientLost {
                            next: next.as_deref(),
                        },
                        ctx,
                    );
                }
                None => break,
            }
            if self.driver.is_ended() {
                return;
            }
        }
        if let Some(timer) = self.jitter_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(at) = self.jitter.deadline() {
            let wait = at.saturating_duration_since(now);
            self.jitter_timer = Some(ctx.run_later(wait, |act, ctx| {
                act.jitter_timer = None;
                act.drain_jitter(ctx);
            }));
        }
    }

    fn on_peer_event(&mut self, event: PeerEvent, ctx: &mut Context<Self>) {
        match event {
            PeerEvent::Track(track) => {
                let session = ctx.address();
                actix::spawn(async move {
                    while let Some(event) = track.poll().await {
                        if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                            let message = RtpIn {
                                seq: packet.header.sequence_number,
                                payload: packet.payload,
                            };
                            if session.try_send(message).is_err() {
                                break;
                            }
                        }
                    }
                });
            }
            PeerEvent::DataChannel(channel) => {
                let session = ctx.address();
                let link = self.link.clone();
                actix::spawn(async move {
                    let events = channel.label().await.is_ok_and(|label| label == "events");
                    while let Some(event) = channel.poll().await {
                        match event {
                            DataChannelEvent::OnOpen if events => {
                                if let Some(link) = &link {
                                    let _ = link.send(Outbound::ChannelOpen(Arc::clone(&channel)));
                                }
                            }
                            DataChannelEvent::OnMessage(message) if events => {
                                let text = String::from_utf8_lossy(&message.data).into_owned();
                                if session.try_send(ChannelText(text)).is_err() {
                                    break;
                                }
                            }
                            DataChannelEvent::OnClose => break,
                            _ => {}
                        }
                    }
                });
            }
            PeerEvent::State(state) => match state {
                RTCPeerConnectionState::Connected => self.connected = true,
                RTCPeerConnectionState::Disconnected => {
                    // A closed tab or a lost network: give ICE a moment to come back.
                    self.connected = false;
                    ctx.run_later(DISCONNECT_GRACE, |act, ctx| {
                        if !act.connected {
                            tracing::info!("WebRTC peer disconnected");
                            act.feed(Input::ClientClosed, ctx);
                        }
                    });
                }
                RTCPeerConnectionState::Failed => {
                    tracing::info!("WebRTC connection failed (ICE or DTLS)");
                    self.feed(Input::End(SessionCloseReason::ClientError), ctx);
                }
                RTCPeerConnectionState::Closed => self.feed(Input::ClientClosed, ctx),
                _ => {}
            },
        }
    }
}

impl Actor for WebRtcSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Caller packets can come in bursts; the mailbox absorbs them.
        ctx.set_mailbox_capacity(1_024);
        self.driver
            .set_provider_events(ctx.address().recipient::<ProviderOutput>());
        if let Some(events) = self.peer_events.take() {
            ctx.add_stream(futures_util::stream::unfold(
                events,
                |mut events| async move { events.recv().await.map(|event| (event, events)) },
            ));
        }
        ctx.run_later(self.connect_timeout, |act, ctx| {
            if !act.connected {
                tracing::info!("WebRTC peer did not connect in time");
                act.feed(Input::End(SessionCloseReason::ClientError), ctx);
            }
        });
        // The start is the HTTP request's: key, route, and Opus at 48 kHz.
        let format = AudioFormat::new(Codec::Opus, SampleRate::HZ_48000, Channels::Mono)
            .expect("Opus at 48 kHz is a valid format");
        self.feed(
            Input::ClientStart(AuthorizeRequest {
                api_key: None,
                target: RouteTarget::Default,
                format,
            }),
            ctx,
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.driver.caller_vanished();
        if let Some(id) = self.session_id {
            self.driver.state().webrtc_sessions.remove(id);
        }
        if let Some(admitted) = self.admitted.take() {
            let _ = admitted.send(Err(SessionCloseReason::InternalError));
        }
    }
}

impl StreamHandler<PeerEvent> for WebRtcSession {
    fn handle(&mut self, event: PeerEvent, ctx: &mut Self::Context) {
        self.on_peer_event(event, ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The peer connection is gone; its `Closed` state already ended the session.
    }
}

impl Handler<RtpIn> for WebRtcSession {
    type Result = ();

    fn handle(&mut self, packet: RtpIn, ctx: &mut Self::Context) {
        self.jitter.push(Instant::now(), packet.seq, packet.payload);
        self.drain_jitter(ctx);
    }
}

impl Handler<ChannelText> for WebRtcSession {
    type Result = ();

    fn handle(&mut self, text: ChannelText, ctx: &mut Self::Context) {
        self.feed(Input::ClientText(&text.0), ctx);
    }
}

impl Handler<Hangup> for WebRtcSession {
    type Result = ();

    fn handle(&mut self, _: Hangup, ctx: &mut Self::Context) {
        self.feed(Input::ClientClosed, ctx);
    }
}

impl Handler<ProviderOutput> for WebRtcSession {
    type Result = ();

    fn handle(&mut self, message: ProviderOutput, ctx: &mut Self::Context) {
        if let Some(input) = self.driver.provider_event(message) {
            self.feed(input, ctx);
        }
    }
}

impl Handler<EndSession> for WebRtcSession {
    type Result = ();

    fn handle(&mut self, message: EndSession, ctx: &mut Self::Context) {
        self.feed(Input::End(message.reason), ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_AUDIO: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0\r\nc=IN IP4 0.0.0.0\r\n\
        a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:63 red/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn opus_is_found_with_its_payload_type_and_parameters() {
        let opus = parse_offer(CHROME_AUDIO).expect("a valid offer");
        assert_eq!(opus.payload_type, 111);
        assert_eq!(opus.fmtp, "minptime=10;useinbandfec=1");
        let renumbered = CHROME_AUDIO.replace("111", "109");
        assert_eq!(parse_offer(&renumbered).unwrap().payload_type, 109);
    }

    #[test]
    fn offers_without_audio_or_opus_or_sdp_are_told_apart() {
        assert_eq!(
            parse_offer("hello"),
            Err(OfferError::Malformed("an SDP offer starts with `v=0`"))
        );
        assert!(matches!(
            parse_offer("v=0\r\ns=-\r\n"),
            Err(OfferError::Malformed(_))
        ));
        let video_only =
            "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(parse_offer(video_only), Err(OfferError::NoAudio));
        let pcmu_only = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(parse_offer(pcmu_only), Err(OfferError::NoOpus));
        // Opus mapped but not offered on the m-line does not count.
        let unlisted = "v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(parse_offer(unlisted), Err(OfferError::NoOpus));
    }

    #[test]
    fn settings_are_checked_and_port_ranges_rotate() {
        let mut settings = WebRtcSettings {
            udp_port_min: Some(50_000),
            udp_port_max: Some(50_002),
            ..WebRtcSettings::default()
        };
        assert_eq!(settings.validate(), Ok(()));
        let ports: Vec<u16> = settings.bind_candidates().map(|a| a.port()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| (50_000..=50_002).contains(p)));
        // The widest range: every port once, no arithmetic overflow.
        let widest = WebRtcSettings {
            udp_port_min: Some(1),
            udp_port_max: Some(u16::MAX),
            ..WebRtcSettings::default()
        };
        widest.bind_candidates().next();
        let mut all: Vec<u16> = widest.bind_candidates().map(|a| a.port()).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=u16::MAX).collect::<Vec<_>>());
        settings.udp_port_max = None;
        assert!(settings.validate().is_err());
        let bad_ip = WebRtcSettings {
            public_ips: vec!["not-an-ip".to_owned()],
            ..WebRtcSettings::default()
        };
        assert!(bad_ip.validate().unwrap_err().contains("not-an-ip"));
    }
}
