//! `POST /v1/webrtc` driven by a real WebRTC peer in the test process (the `webrtc` crate,
//! the same stack as the server but a separate peer over real UDP, DTLS and SRTP): speech
//! goes in as Opus and comes back through the `echo` route; with packets dropped before
//! they leave, the provider still gets a gap-free 20 ms stream (FEC/PLC), and the router
//! counts what it concealed. Also every bad input of the endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;
use voxroute_codecs::Channels;
use voxroute_codecs::measure::{best_lag, rms};
use voxroute_codecs::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use webrtc::data_channel::DataChannelEvent;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, register_default_interceptors,
};

use crate::harness::{RouterOptions, Setup, TestDb, speech_48k, within};

const OPUS_PT: u8 = 111;
const FRAME_SAMPLES_48K: usize = 960;
const WAIT: Duration = Duration::from_secs(15);

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[derive(Clone)]
struct ClientHandler {
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    gathered: Arc<Notify>,
    connected: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
}

/// What one call saw.
struct Call {
    session_id: Uuid,
    /// What came back, decoded, at 48 kHz.
    received: Vec<i16>,
    /// Texts on the `events` data channel.
    events: Vec<Value>,
    /// Packets encoded (sent or dropped).
    frames: usize,
    /// Packets dropped before sending.
    dropped: usize,
}

/// A caller's peer connection with its offer made (audio sendrecv, the `events` channel).
struct Caller {
    pc: Box<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    channel: Arc<dyn webrtc::data_channel::DataChannel>,
    tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    connected: Arc<Notify>,
    offer_sdp: String,
}

async fn caller() -> Caller {
    let mut media_engine = MediaEngine::default();
    let codec = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    };
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec.clone(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .expect("Opus registers");
    let registry =
        register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors");
    let (tracks_tx, tracks) = mpsc::unbounded_channel();
    let gathered = Arc::new(Notify::new());
    let connected = Arc::new(Notify::new());
    let handler = Arc::new(ClientHandler {
        tracks: tracks_tx,
        gathered: Arc::clone(&gathered),
        connected: Arc::clone(&connected),
    });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec!["0.0.0.0:0"])
        .build()
        .await
        .expect("a peer connection");
    let ssrc = rand::random::<u32>();
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "caller".to_owned(),
                "caller-audio".to_owned(),
                "caller".to_owned(),
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
        )
        .expect("a track"),
    );
    pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .expect("the track is added");
    let channel = pc
        .create_data_channel("events", None)
        .await
        .expect("the events channel");
    let offer = pc.create_offer(None).await.expect("an offer");
    pc.set_local_description(offer).await.expect("set offer");
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.notified()).await;
    let offer_sdp = pc.local_description().await.expect("the offer").sdp;
    Caller {
        pc: Box::new(pc),
        track,
        ssrc,
        channel,
        tracks,
        connected,
        offer_sdp,
    }
}

/// One call through `POST /v1/webrtc?provider=echo`: the speech fixture at real time, packet
/// `i` dropped when `drop(i)`, then a second of listening, then `DELETE`.
async fn call(setup: &Setup, key: &str, drop: impl Fn(usize) -> bool) -> Call {
    let Caller {
        pc,
        track,
        ssrc,
        channel,
        mut tracks,
        connected,
        offer_sdp,
    } = caller().await;
    let bearer = format!("Bearer {key}");
    let (status, head, answer) = setup
        .router
        .http_with_head(
            "POST",
            "/v1/webrtc?provider=echo",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            &offer_sdp,
        )
        .await;
    assert_eq!(status, 201, "{head}\n{answer}");
    let location = header(&head, "location").expect("a Location").to_owned();
    let session_id: Uuid = location
        .strip_prefix("/v1/webrtc/")
        .and_then(|id| id.parse().ok())
        .expect("Location names the session");
    pc.set_remote_description(RTCSessionDescription::answer(answer).expect("an answer"))
        .await
        .expect("set answer");
    within(WAIT, "the peer connection to connect", connected.notified()).await;

    // What comes back: decoded as it arrives.
    let received = Arc::new(Mutex::new(Vec::new()));
    let incoming = within(WAIT, "the router's audio track", tracks.recv())
        .await
        .expect("a track");
    let sink = Arc::clone(&received);
    let reader = tokio::spawn(async move {
        let mut decoder = OpusDecoder::new(Channels::Mono).expect("a decoder");
        let mut pcm = vec![0i16; 5_760];
        while let Some(event) = incoming.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(packet) = event
                && let Ok(samples) = decoder.decode(&packet.payload, &mut pcm)
            {
                sink.lock().unwrap().extend_from_slice(&pcm[..samples]);
            }
        }
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let event_sink = Arc::clone(&events);
    let events_reader = tokio::spawn(async move {
        while let Some(event) = channel.poll().await {
            if let DataChannelEvent::OnMessage(message) = event
                && let Ok(value) = serde_json::from_slice::<Value>(&message.data)
            {
                event_sink.lock().unwrap().push(value);
            }
        }
    });

    // The speech, at real time, as a browser would send it (FEC on).
    let speech = speech_48k();
    let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).expect("an encoder");
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let (mut dropped, mut pending_drops) = (0, 0u16);
    let frames = speech.len() / FRAME_SAMPLES_48K;
    for (i, frame) in speech.chunks_exact(FRAME_SAMPLES_48K).enumerate() {
        ticker.tick().await;
        let packet = encoder.encode(frame).expect("encoded").to_vec();
        if drop(i) {
            dropped += 1;
            pending_drops += 1;
            continue;
        }
        let sample = Sample {
            data: packet.into(),
            duration: Duration::from_millis(20),
            prev_dropped_packets: pending_drops,
            ..Sample::new(Instant::now())
        };
        pending_drops = 0;
        track
            .sample_writer(ssrc, OPUS_PT)
            .write_sample(&sample)
            .await
            .expect("a packet written");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, head, _) = setup
        .router
        .http_with_head("DELETE", &location, &[("Authorization", &bearer)], "")
        .await;
    assert_eq!(status, 200, "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = pc.close().await;
    reader.abort();
    events_reader.abort();
    let received = received.lock().unwrap().clone();
    let events = events.lock().unwrap().clone();
    Call {
        session_id,
        received,
        events,
        frames,
        dropped,
    }
}

/// Averages blocks of six samples: 48 kHz to 8 kHz, enough to line speech up.
fn to_8k(signal: &[i16]) -> Vec<i16> {
    signal
        .chunks_exact(6)
        .map(|block| (block.iter().map(|&s| i32::from(s)).sum::<i32>() / 6) as i16)
        .collect()
}

/// The share of `reference`'s voiced 500 ms segments (8 kHz) that correlate above 0.6 with
/// `signal` within 50 ms of where the whole-call alignment `lag` puts them: robust to a
/// mid-call shift (a late packet concealed moves the rest of the echo by 20 ms).
fn matching_segments(reference: &[i16], signal: &[i16], lag: usize) -> f64 {
    const SEGMENT: usize = 4_000;
    const SLACK: usize = 400;
    let (mut voiced, mut matched) = (0usize, 0usize);
    for (index, segment) in reference.chunks_exact(SEGMENT).enumerate() {
        // About -40 dBFS: below it a segment is a pause, not speech.
        if rms(segment) < 0.01 {
            continue;
        }
        voiced += 1;
        let from = (lag + index * SEGMENT).saturating_sub(SLACK);
        if let Some(near) = signal.get(from..) {
            let (_, correlation) = best_lag(segment, near, 2 * SLACK);
            matched += usize::from(correlation > 0.6);
        }
    }
    assert!(voiced > 0, "the fixture has speech");
    matched as f64 / voiced as f64
}

/// The index of the first 20 ms block louder than -40 dBFS.
fn onset(signal: &[i16], block: usize) -> usize {
    signal
        .chunks(block)
        .position(|chunk| rms(chunk) > 327.0)
        .map_or(0, |i| i * block)
}

fn router_options() -> RouterOptions {
    RouterOptions {
        rust_log: Some("info,voxroute=debug"),
        ..RouterOptions::default()
    }
}

#[tokio::test]
async fn speech_over_webrtc_comes_back_through_echo() {
    let setup = Setup::new(TestDb::sqlite(), router_options()).await;
    let (_, key) = setup.key("webrtc", None).await;
    let call = call(&setup, &key, |_| false).await;

    // The events channel carried the native events.
    let types: Vec<&str> = call
        .events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"session.started"), "{:?}", call.events);
    assert_eq!(
        call.events[0]["session_id"].as_str(),
        Some(call.session_id.to_string().as_str())
    );

    // The echo is the speech: aligned on its onset, it correlates.
    let sent = to_8k(&speech_48k());
    let got = to_8k(&call.received);
    let (sent_at, got_at) = (onset(&sent, 160), onset(&got, 160));
    assert!(got.len() > got_at + sent.len() / 2, "too little came back");
    let reference = &sent[sent_at..];
    let window = &got[got_at.saturating_sub(400)..];
    let (lag, correlation) = best_lag(reference, window, 8_000);
    // Segment by segment: on a loaded machine a late packet may be concealed and the rest
    // of the echo shifted by 20 ms, which one correlation over the whole call would punish.
    let matched = matching_segments(reference, window, lag);
    eprintln!(
        "echo: onset {got_at} samples at 8 kHz, lag {lag}, correlation {correlation:.3}, \
         {:.0}% of voiced segments matched",
        matched * 100.0
    );
    assert!(
        matched >= 0.75,
        "{:.0}% of voiced segments matched (whole-call correlation {correlation:.3} at lag {lag})",
        matched * 100.0
    );
    // The measure tells speech from other speech: the echo played backwards does not match.
    let backwards: Vec<i16> = window.iter().rev().copied().collect();
    assert!(matching_segments(reference, &backwards, lag) < 0.5);

    let row = setup.ended(call.session_id).await;
    assert_eq!(row.transport, "webrtc");
    assert_eq!(row.close_reason.as_deref(), Some("CLIENT_HANGUP"));
    let sent_ms = i64::try_from(call.frames * 20).unwrap();
    assert!(
        (sent_ms - 200..=sent_ms).contains(&row.audio_in_ms),
        "audio_in_ms {} for {sent_ms} ms sent",
        row.audio_in_ms
    );
}

#[tokio::test]
async fn lost_packets_are_concealed_and_the_provider_stream_has_no_gap() {
    let setup = Setup::new(TestDb::sqlite(), router_options()).await;
    let (_, key) = setup.key("webrtc-loss", None).await;
    // 5% loss: every twentieth packet, never the last.
    let call = call(&setup, &key, |i| i % 20 == 7).await;
    assert!(call.dropped >= 8, "{} dropped", call.dropped);

    let row = setup.ended(call.session_id).await;
    let sent_ms = i64::try_from(call.frames * 20).unwrap();
    // Every 20 ms slot reached the provider, the lost ones rebuilt: no gap.
    assert!(
        (sent_ms - 200..=sent_ms).contains(&row.audio_in_ms),
        "audio_in_ms {} for {sent_ms} ms encoded ({} dropped)",
        row.audio_in_ms,
        call.dropped
    );
    let (_, metrics) = setup.router.http_get("/metrics").await;
    let concealed: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("voxroute_frames_concealed_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the concealment counter");
    assert_eq!(concealed, u64::try_from(call.dropped).unwrap(), "{metrics}");
}

#[tokio::test]
async fn bad_offers_and_sessions_get_clear_errors() {
    let setup = Setup::new(TestDb::sqlite(), RouterOptions::default()).await;
    let (_, key) = setup.key("webrtc-bad", None).await;
    let bearer = format!("Bearer {key}");
    let sdp = [
        ("Content-Type", "application/sdp"),
        ("Authorization", bearer.as_str()),
    ];
    let post = |body: &'static str, headers: Vec<(&'static str, String)>| {
        let router = &setup.router;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            router
                .http_with_head("POST", "/v1/webrtc", &headers, body)
                .await
        }
    };
    let owned = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };

    // Not SDP: 400 problem+json.
    let (status, head, body) = post("hello, router", owned(&sdp)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("application/problem+json")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "malformed_sdp"
    );
    // SDP without audio, and audio without Opus: 422.
    let video = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    let (status, _, body) = post(video, owned(&sdp)).await;
    assert_eq!(status, 422, "{body}");
    let pcmu = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let (status, _, body) = post(pcmu, owned(&sdp)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "no_opus_audio"
    );
    // SDP that names Opus but is garbage for the WebRTC stack: 400.
    let broken = "v=0\r\nm=audio x y 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let (status, _, body) = post(broken, owned(&sdp)).await;
    assert_eq!(status, 400, "{body}");
    // A wrong key: 401; no key (not --dev): 401; the wrong content type: 415.
    let (status, _, _) = post(
        pcmu,
        owned(&[
            ("Content-Type", "application/sdp"),
            ("Authorization", "Bearer vxr_nope"),
        ]),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = post(pcmu, owned(&[("Content-Type", "application/sdp")])).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(
        pcmu,
        owned(&[
            ("Content-Type", "text/plain"),
            ("Authorization", bearer.as_str()),
        ]),
    )
    .await;
    assert_eq!(status, 415);
    // DELETE of a session that does not exist, or is not an id: 404.
    let unknown = format!("/v1/webrtc/{}", Uuid::now_v7());
    let (status, _, _) = setup
        .router
        .http_with_head("DELETE", &unknown, &[("Authorization", &bearer)], "")
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = setup
        .router
        .http_with_head(
            "DELETE",
            "/v1/webrtc/not-an-id",
            &[("Authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(status, 404);
    // The CORS preflight.
    let (status, head, _) = setup
        .router
        .http_with_head("OPTIONS", "/v1/webrtc", &[], "")
        .await;
    assert_eq!(status, 204);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-methods: post, delete, options"),
        "{head}"
    );
    // The router is still well.
    let (status, _) = setup.router.http_get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_caller_that_never_connects_is_ended_with_client_error() {
    let options = RouterOptions {
        config: Some("[webrtc]\nconnect_timeout_secs = 1\n".to_owned()),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (_, key) = setup.key("webrtc-silent", None).await;
    let caller = caller().await;
    let bearer = format!("Bearer {key}");
    let (status, head, _) = setup
        .router
        .http_with_head(
            "POST",
            "/v1/webrtc?provider=echo",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &bearer),
            ],
            &caller.offer_sdp,
        )
        .await;
    assert_eq!(status, 201, "{head}");
    // The answer is never applied: no ICE, no DTLS, nothing connects.
    let _ = caller.pc.close().await;
    let session_id: Uuid = header(&head, "location")
        .and_then(|l| l.strip_prefix("/v1/webrtc/"))
        .and_then(|id| id.parse().ok())
        .expect("Location names the session");
    let row = setup.ended(session_id).await;
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_ERROR"),
        "{row:#?}"
    );
    assert!(row.duration_ms.is_some_and(|ms| ms < 5_000), "{row:#?}");
    assert_eq!(row.audio_in_ms, 0);
}
