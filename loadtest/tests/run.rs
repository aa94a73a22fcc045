//! `voxroute_loadtest::run_with_provider` against a miniature router in this process: it
//! speaks the two caller protocols just enough (native `start` and binary PCM16; Twilio
//! `start`, base64 mu-law `media` and `stop`), dials the load test's ws-pcm provider, and
//! runs the same `voxroute-codecs` chains as voxroute. A router that drops one frame in
//! every 30 on the way up shows the loss; one that passes everything shows none.
//!
//! What it proves without the voxroute binary: the run's bookkeeping (sessions, frames,
//! markers, latency samples, set-up), the loopback refusal, and one run per provider.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use voxroute_codecs::opus::OpusEncoderConfig;
use voxroute_codecs::{AudioFormat, EgressChain, IngressChain, SampleRate};
use voxroute_loadtest::{LoadConfig, LoadError, Provider, Transport};

/// A miniature router on loopback forwarding to `provider_url`; drops every `drop_every`-th
/// caller frame on the way up (0: none). Returns its `ws://` base URL.
async fn mini_router(provider_url: String, drop_every: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let url = provider_url.clone();
            tokio::spawn(async move {
                let _ = session(stream, url, drop_every).await;
            });
        }
    });
    format!("ws://{addr}")
}

/// One session of the miniature router; errors end it quietly.
async fn session(
    stream: tokio::net::TcpStream,
    provider_url: String,
    drop_every: u64,
) -> Option<()> {
    let client = tokio_tungstenite::accept_async(stream).await.ok()?;
    let (mut client_tx, mut client_rx) = client.split();
    let mut request = provider_url.into_client_request().ok()?;
    request
        .headers_mut()
        .insert("X-Voxroute-Sample-Rate", "16000".parse().ok()?);
    let (upstream, _) = tokio_tungstenite::connect_async(request).await.ok()?;
    let (mut up_tx, mut up_rx) = upstream.split();
    let mut twilio_sid: Option<String> = None;
    let mut format = AudioFormat::pcm16_mono(SampleRate::HZ_8000);
    let mut chains: Option<(IngressChain, EgressChain)> = None;
    let mut frames_in = 0u64;
    loop {
        tokio::select! {
            message = client_rx.next() => {
                let message = message?.ok()?;
                let payload: Vec<u8> = match message {
                    Message::Text(text) => {
                        let value: Value = serde_json::from_str(text.as_str()).ok()?;
                        if value["type"] == "stop" || value["event"] == "stop" {
                            let _ = client_tx.send(Message::Close(None)).await;
                            let _ = up_tx.send(Message::Close(None)).await;
                            return Some(());
                        }
                        if value["event"] == "start" {
                            twilio_sid = value["streamSid"].as_str().map(str::to_owned);
                            format = AudioFormat::telephony_mulaw();
                        }
                        if value["event"] == "start" || value["type"] == "start" {
                            chains = Some((
                                IngressChain::new(format, SampleRate::HZ_16000).ok()?,
                                EgressChain::new(
                                    SampleRate::HZ_16000,
                                    format,
                                    OpusEncoderConfig::default(),
                                )
                                .ok()?,
                            ));
                        }
                        if value["event"] != "media" {
                            continue;
                        }
                        BASE64
                            .decode(value["media"]["payload"].as_str()?)
                            .ok()?
                    }
                    Message::Binary(bytes) => bytes.to_vec(),
                    Message::Close(_) => return Some(()),
                    _ => continue,
                };
                let (ingress, _) = chains.as_mut()?;
                ingress.push(&payload).ok()?;
                while let Some(frame) = ingress.pop_frame() {
                    frames_in += 1;
                    if drop_every > 0 && frames_in.is_multiple_of(drop_every) {
                        continue;
                    }
                    let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
                    up_tx.send(Message::binary(bytes)).await.ok()?;
                }
            }
            message = up_rx.next() => {
                let Message::Binary(bytes) = message?.ok()? else { continue };
                let (_, egress) = chains.as_mut()?;
                let pcm: Vec<i16> = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                let encoded = egress.encode_frame(&pcm).ok()?.to_vec();
                let reply = match &twilio_sid {
                    Some(sid) => Message::text(
                        json!({"event": "media", "streamSid": sid,
                               "media": {"payload": BASE64.encode(&encoded)}})
                        .to_string(),
                    ),
                    None => Message::binary(encoded),
                };
                client_tx.send(reply).await.ok()?;
            }
        }
    }
}

fn config(router: &str, transport: Transport) -> LoadConfig {
    let mut config = LoadConfig::new(router, transport, 3);
    config.ramp = Duration::from_millis(200);
    config.duration = Duration::from_millis(1_500);
    config
}

/// Both transports through a faithful miniature router: every session established, every
/// frame back, every marker in place, a latency sample for (nearly) every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faithful_router_loses_nothing() {
    let provider = Provider::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let router = mini_router(provider.url(), 0).await;
    for transport in [Transport::Twilio, Transport::Native] {
        let report = voxroute_loadtest::run_with_provider(config(&router, transport), &provider)
            .await
            .unwrap();
        println!("{}", report.summary());
        assert_eq!(report.sessions.established, 3, "{:?}", report.sessions);
        assert_eq!(report.sessions.failed, 0);
        let frames = &report.frames;
        assert!(frames.sent >= 3 * 75, "{frames:?}");
        assert_eq!(frames.lost, 0, "{frames:?}");
        assert_eq!(frames.received_by_provider, frames.sent, "{frames:?}");
        assert_eq!(frames.marker_mismatches, 0, "{frames:?}");
        assert!(frames.marker_checks > 0);
        assert_eq!(report.latency_ms.caller_to_provider.count, frames.sent);
        assert_eq!(report.latency_ms.round_trip.count, frames.sent);
        // The four preamble frames of each session give no provider → caller sample.
        assert_eq!(
            report.latency_ms.provider_to_caller.count,
            frames.sent - 3 * 4
        );
        assert_eq!(report.setup_ms.count, 3);
        assert!(report.router.is_none() && report.efficiency.is_none());
        assert!(report.dsp.is_some());
    }
}

/// A router that drops one frame in 30 on the way up: the loss is counted, and the markers
/// catch the misalignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_router_is_caught() {
    let provider = Provider::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let router = mini_router(provider.url(), 30).await;
    let report =
        voxroute_loadtest::run_with_provider(config(&router, Transport::Native), &provider)
            .await
            .unwrap();
    let frames = &report.frames;
    assert!(frames.lost >= 3, "{frames:?}");
    assert_eq!(frames.lost, frames.lost_to_provider, "{frames:?}");
    assert!(frames.marker_mismatches >= 3, "{frames:?}");
}

/// A non-loopback router is refused before anything is sent; a provider serves one run at a
/// time.
#[tokio::test]
async fn refusals() {
    let provider = Provider::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let far = config("ws://192.0.2.7:8080", Transport::Twilio);
    assert!(matches!(
        voxroute_loadtest::run_with_provider(far, &provider).await,
        Err(LoadError::NotLoopback(_))
    ));
    assert!(matches!(
        Provider::bind("192.0.2.7:0".parse().unwrap()).await,
        Err(LoadError::NotLoopback(_))
    ));
}
