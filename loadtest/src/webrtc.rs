//! The WebRTC caller of one load-test session: a peer connection of the `webrtc` crate (a
//! separate peer from the router's, over real UDP, ICE, DTLS and SRTP on loopback) that
//! offers Opus, exchanges SDP with `POST /v1/webrtc`, sends the session's [`CallerSignal`] as
//! one Opus packet every 20 ms and hands back what the router sends, one RTP payload at a
//! time. `DELETE` on the session's location hangs up.
//!
//! # Keeping frames on their boundaries
//!
//! The signal's markers are read per 20 ms frame, so the audio must still sit on the frame
//! grid where it is read. Two things move it: resampling and Opus's lookahead (6.5 ms at the
//! VOIP settings, [`OpusEncoder::lookahead_samples`]). On the way in, this caller sends its
//! audio early by its own share (the 8 → 48 kHz resampler's delay plus its encoder's
//! lookahead), so that the router decodes frame k where frame k belongs, as a telephony
//! caller's would be; the router's resampler then moves it as much as it does for telephony.
//! On the way back the router's resampler and encoder move the echo by
//! [`return_shift_samples`]; the receiver reads frame k's marker that much later in the
//! decoded stream, while frame k's *arrival* is still the arrival of the k-th packet.
//!
//! # Comfort silence
//!
//! The router sends [`silence_packet`] whenever it has nothing to say (before the first echo,
//! and when an echo is late): those packets carry no frame of the session and are skipped.
//!
//! # What callers must keep
//!
//! Call `WebRtcLink::send_frame` once per 20 ms and poll `WebRtcLink::next` between
//! sends; end with `WebRtcLink::hang_up` then `WebRtcLink::close`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc};
use voxroute_codecs::opus::{FRAME_SAMPLES, OpusEncoder, OpusEncoderConfig, silence_packet};
use voxroute_codecs::{AudioFormat, Channels, EgressChain, IngressChain, SampleRate};
use voxroute_codecs::{CodecError, StreamResampler};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, register_default_interceptors,
};

use crate::signal::{CALLER_FRAME_SAMPLES, CALLER_RATE_HZ, CallerSignal};

/// The callers' rate as the codecs crate names it.
const CALLER_RATE: SampleRate = SampleRate::HZ_8000;

const _: () = assert!(CALLER_RATE.hz() == CALLER_RATE_HZ);

/// The Opus payload type this caller offers (the router answers with the offer's).
const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Longest wait for this peer's own ICE candidates (host candidates on loopback: at once).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest HTTP response read from the router (an SDP answer is a few KiB).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Why a WebRTC call could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// The peer connection could not be built or negotiated.
    #[error("peer connection: {0}")]
    Peer(String),
    /// The HTTP exchange with the router failed.
    #[error("HTTP: {0}")]
    Http(#[from] std::io::Error),
    /// The router refused the offer.
    #[error("the router answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem document.
        body: String,
    },
    /// The audio chain could not be built.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

fn peer_error(error: impl std::fmt::Display) -> WebRtcError {
    WebRtcError::Peer(error.to_string())
}

/// What the router sent on one session's link.
#[derive(Debug)]
pub(crate) enum RtpIn {
    /// One RTP payload and when it arrived.
    Packet { payload: Bytes, at: Instant },
    /// The peer connection failed or closed.
    Closed,
}

/// How far the way back moves the echo inside the decoded stream, in 48 kHz samples: the
/// router's resamplers (48 kHz → the provider's rate and back) and its encoder's lookahead.
///
/// # Errors
/// [`CodecError`] if the chains cannot be built (a bad `provider_rate`).
pub fn return_shift_samples(provider_rate: SampleRate) -> Result<usize, CodecError> {
    let client = AudioFormat::opus(Channels::Mono);
    let ingress = IngressChain::new(client, provider_rate)?;
    let egress = EgressChain::new(provider_rate, client, OpusEncoderConfig::default())?;
    Ok(((ingress.delay_ms() + egress.delay_ms()) * 48.0).round() as usize)
}

#[derive(Clone)]
struct Handler {
    inbound: mpsc::UnboundedSender<RtpIn>,
    gathered: Arc<Notify>,
    connected: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => self.connected.notify_one(),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                let _ = self.inbound.send(RtpIn::Closed);
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let at = Instant::now();
                    if inbound
                        .send(RtpIn::Packet {
                            payload: packet.payload,
                            at,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
    }
}

/// One session's peer connection, from its offer to its hang-up.
pub(crate) struct WebRtcLink {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    inbound: mpsc::UnboundedReceiver<RtpIn>,
    /// `HOST:PORT` of the router.
    authority: String,
    /// `/v1/webrtc/{session_id}`.
    location: String,
    api_key: Option<String>,
    audio: CallerAudio,
}

/// What a WebRTC caller says: its signal at 48 kHz, sent early by the caller's own delay
/// (see the module docs), one Opus packet per 20 ms.
pub(crate) struct CallerAudio {
    upsampler: StreamResampler,
    encoder: OpusEncoder,
    /// Upsampled audio not yet sent, already advanced by this caller's own delay.
    pending_48k: Vec<i16>,
    /// Signal frames fed to the upsampler so far.
    frames_fed: u64,
    /// Samples of the upsampled stream still to skip (this caller's delay).
    skip_samples: usize,
}

impl CallerAudio {
    pub(crate) fn new() -> Result<CallerAudio, CodecError> {
        let upsampler = StreamResampler::new(CALLER_RATE, SampleRate::HZ_48000)?;
        let encoder = OpusEncoder::new(OpusEncoderConfig::default())?;
        let skip_samples = upsampler.delay_samples() + encoder.lookahead_samples();
        Ok(CallerAudio {
            upsampler,
            encoder,
            pending_48k: Vec::with_capacity(skip_samples + 2 * FRAME_SAMPLES),
            frames_fed: 0,
            skip_samples,
        })
    }

    /// The next 20 ms of `signal` as one Opus packet, valid until the next call.
    pub(crate) fn next_packet(&mut self, signal: &CallerSignal) -> Result<&[u8], CodecError> {
        let mut upsampled = [0i16; FRAME_SAMPLES];
        while self.pending_48k.len() < self.skip_samples + FRAME_SAMPLES {
            self.upsampler
                .process_frame(signal.frame(self.frames_fed), &mut upsampled)?;
            self.pending_48k.extend_from_slice(&upsampled);
            self.frames_fed += 1;
        }
        if self.skip_samples > 0 {
            self.pending_48k.drain(..self.skip_samples);
            self.skip_samples = 0;
        }
        let frame: [i16; FRAME_SAMPLES] = self.pending_48k[..FRAME_SAMPLES]
            .try_into()
            .expect("one frame is queued");
        self.pending_48k.drain(..FRAME_SAMPLES);
        self.encoder.encode(&frame)
    }
}

impl WebRtcLink {
    /// Negotiates a call with `POST {path}?{query}` on the router at `authority` and waits
    /// until the peer connection is up (within `timeout`).
    pub(crate) async fn connect(
        authority: &str,
        path_and_query: &str,
        api_key: Option<&str>,
        ssrc: u32,
        timeout: Duration,
    ) -> Result<WebRtcLink, WebRtcError> {
        let codec = RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        };
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: codec.clone(),
                    payload_type: OPUS_PAYLOAD_TYPE,
                },
                RtpCodecKind::Audio,
            )
            .map_err(peer_error)?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(peer_error)?;
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let gathered = Arc::new(Notify::new());
        let connected = Arc::new(Notify::new());
        let handler = Arc::new(Handler {
            inbound: inbound_tx,
            gathered: Arc::clone(&gathered),
            connected: Arc::clone(&connected),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await
            .map_err(peer_error)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    format!("loadtest-{ssrc}"),
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
            .map_err(peer_error)?,
        );
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(peer_error)?;
        let offer = pc.create_offer(None).await.map_err(peer_error)?;
        pc.set_local_description(offer).await.map_err(peer_error)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await;
        let offer_sdp = pc
            .local_description()
            .await
            .ok_or_else(|| WebRtcError::Peer("no local description".to_owned()))?
            .sdp;

        let mut headers = vec![("Content-Type", "application/sdp".to_owned())];
        if let Some(key) = api_key {
            headers.push(("Authorization", format!("Bearer {key}")));
        }
        let response = http_exchange(authority, "POST", path_and_query, &headers, &offer_sdp);
        let (status, head, body) = tokio::time::timeout(timeout, response)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if status != 201 {
            let _ = pc.close().await;
            return Err(WebRtcError::Refused { status, body });
        }
        let Some(location) = header(&head, "location") else {
            let _ = pc.close().await;
            return Err(WebRtcError::Peer("201 without a Location".to_owned()));
        };
        let answer = RTCSessionDescription::answer(body).map_err(peer_error)?;
        pc.set_remote_description(answer)
            .await
            .map_err(peer_error)?;
        if tokio::time::timeout(timeout, connected.notified())
            .await
            .is_err()
        {
            let _ = pc.close().await;
            return Err(WebRtcError::Peer("not connected in time".to_owned()));
        }
        // Connected here means this side's DTLS is done; the router's may finish a moment
        // later, and what reaches it before then is dropped (a browser loses its first
        // 20 ms the same way). The router sends comfort silence from its first moment up:
        // its first packet says it can take ours.
        let mut inbound = inbound;
        match tokio::time::timeout(timeout, inbound.recv()).await {
            Ok(Some(RtpIn::Packet { .. })) => {}
            Ok(Some(RtpIn::Closed) | None) | Err(_) => {
                let _ = pc.close().await;
                return Err(WebRtcError::Peer("no media from the router".to_owned()));
            }
        }

        let audio = CallerAudio::new()?;
        Ok(WebRtcLink {
            pc,
            track,
            ssrc,
            inbound,
            authority: authority.to_owned(),
            location: location.to_owned(),
            api_key: api_key.map(str::to_owned),
            audio,
        })
    }

    /// Sends the next 20 ms of `signal` as one Opus packet.
    pub(crate) async fn send_frame(&mut self, signal: &CallerSignal) -> Result<(), WebRtcError> {
        let sample = Sample {
            data: Bytes::copy_from_slice(self.audio.next_packet(signal)?),
            duration: Duration::from_millis(20),
            ..Sample::new(Instant::now())
        };
        self.track
            .sample_writer(self.ssrc, OPUS_PAYLOAD_TYPE)
            .write_sample(&sample)
            .await
            .map_err(peer_error)
    }

    /// What the router sent next; [`RtpIn::Closed`] once the connection is gone.
    pub(crate) async fn next(&mut self) -> RtpIn {
        self.inbound.recv().await.unwrap_or(RtpIn::Closed)
    }

    /// Hangs up with `DELETE` on the session's location; true if the router answered 200
    /// (the session is over).
    pub(crate) async fn hang_up(&mut self, timeout: Duration) -> bool {
        let headers: Vec<(&str, String)> = self
            .api_key
            .iter()
            .map(|key| ("Authorization", format!("Bearer {key}")))
            .collect();
        let exchange = http_exchange(&self.authority, "DELETE", &self.location, &headers, "");
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Ok((200, _, _)))
        )
    }

    /// Closes the peer connection.
    pub(crate) async fn close(self) {
        let _ = self.pc.close().await;
    }
}

/// Whether `payload` is the router's comfort silence rather than a frame of the session.
pub(crate) fn is_comfort_silence(payload: &[u8]) -> bool {
    payload == silence_packet()
}

/// Samples in one 20 ms frame at 48 kHz, for the receiver's framing.
pub(crate) const FRAME_SAMPLES_48K: usize = FRAME_SAMPLES;

const _: () = assert!(FRAME_SAMPLES_48K == 6 * CALLER_FRAME_SAMPLES);

/// One HTTP/1.1 request on its own connection (`Connection: close`): status, head, body.
async fn http_exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await?;
    let text = String::from_utf8_lossy(&response);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The value of header `name` in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_back_moves_the_echo_by_resampling_and_lookahead() {
        let shift = return_shift_samples(SampleRate::HZ_16000).unwrap();
        // Opus's 6.5 ms lookahead plus two resamplers of a few milliseconds at most.
        assert!((312..312 + 2 * 48 * 5).contains(&shift), "{shift}");
    }

    /// What the load test relies on: the markers a WebRTC caller sends are still readable
    /// where they belong once the router has decoded them and resampled them for the provider.
    #[test]
    fn markers_survive_the_callers_opus_and_the_routers_ingress() {
        use crate::signal::{PREAMBLE_FRAMES, Speech, decode_symbol, expected_symbol};
        let speech = Speech::from_wav(&crate::config::default_speech_wav())
            .unwrap_or_else(|_| Speech::synthetic());
        let provider_rate = SampleRate::HZ_16000;
        let mut failures = Vec::new();
        let mut checks = 0;
        for session_id in 0..64 {
            let signal = CallerSignal::new(speech.clone(), session_id);
            let mut audio = CallerAudio::new().unwrap();
            let mut ingress =
                IngressChain::new(AudioFormat::opus(Channels::Mono), provider_rate).unwrap();
            for seq in 0..300 {
                ingress.push(audio.next_packet(&signal).unwrap()).unwrap();
                let frame = ingress.pop_frame().expect("one frame per packet");
                if let Some(symbol) = expected_symbol(session_id, seq) {
                    checks += 1;
                    if decode_symbol(frame, provider_rate.hz()) != Some(symbol) {
                        failures.push((session_id, seq, seq < PREAMBLE_FRAMES));
                    }
                }
            }
        }
        // Opus smears 1,300 Hz into 1,100 Hz now and then: measured 2 of 2,112 markers
        // (0.1%, the same ones every run: coding is deterministic). The preamble must always
        // be read, and the CI smoke run's sessions (0 to 3) must read every marker.
        eprintln!("unreadable: {} of {checks}: {failures:?}", failures.len());
        assert!(failures.len() * 500 <= checks, "{failures:?}");
        assert!(
            failures
                .iter()
                .all(|&(session, _, preamble)| !preamble && session > 3),
            "{failures:?}"
        );
    }

    #[test]
    fn headers_are_found_case_blind() {
        let head =
            "HTTP/1.1 201 Created\r\nlocation: /v1/webrtc/abc\r\nContent-Type: application/sdp";
        assert_eq!(header(head, "Location"), Some("/v1/webrtc/abc"));
        assert_eq!(header(head, "x-missing"), None);
    }
}
