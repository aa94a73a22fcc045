//! The other carriers end to end: Telnyx (`/v1/telephony/telnyx`), Vonage
//! (`/v1/telephony/vonage`) and Plivo (`/v1/telephony/plivo`), each caller speaking its
//! carrier's real wire format (`reference/protocols.md` §2a–2c) over a real WebSocket to a
//! running router.
//!
//! What they prove, per carrier: a speech fixture sent at real time comes back through the
//! echo route (at least 90% of its voiced 20 ms windows), and through a hosted provider's
//! stand-in (OpenAI); the record says transport `telephony`, the carrier's endpoint, and
//! `audio_in_ms` covering the audio sent. Telnyx frames sent out of order come back in order
//! (the whole reply correlates with the fixture, and no frame had to be concealed); Vonage's
//! reply comes in exact 20 ms binary frames. And bad input gets a clear answer: malformed
//! JSON, bad base64 and oversized payloads are skipped while the call goes on, a Vonage frame
//! of the wrong size is counted and skipped, a `start` in a format voxroute does not speak and
//! a frame over the WebSocket limit close with 1008 `CLIENT_ERROR`, and a bad key gets 401
//! before the upgrade (or `AUTH_FAILED` after it, when it comes inside the protocol).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};
use voxroute::store::SessionRow;
use voxroute_loadtest::standin::{Knobs, Provider};

use crate::harness::{
    Closed, Conn, Setup, Speaks, WAIT, assert_same_audio, eventually, mulaw, speech_8k,
    standin_with, unmulaw,
};
use crate::providers::{matching_windows, router_for};

const TELNYX: &str = "/v1/telephony/telnyx";
const VONAGE: &str = "/v1/telephony/vonage";
const PLIVO: &str = "/v1/telephony/plivo";

/// No reply audio for this long means the reply is complete.
const REPLY_DONE: Duration = Duration::from_millis(500);

/// Which carrier a caller plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Telnyx,
    Vonage,
    Plivo,
}

impl Carrier {
    fn path(self) -> &'static str {
        match self {
            Carrier::Telnyx => TELNYX,
            Carrier::Vonage => VONAGE,
            Carrier::Plivo => PLIVO,
        }
    }
}

/// How audio is carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// G.711 mu-law, 8 kHz.
    Mulaw,
    /// 16-bit PCM, big-endian (Telnyx L16), at this rate.
    L16Be(u32),
    /// 16-bit PCM, little-endian (Vonage, Plivo), at this rate.
    L16Le(u32),
}

impl Wire {
    fn rate_hz(self) -> u32 {
        match self {
            Wire::Mulaw => 8_000,
            Wire::L16Be(rate) | Wire::L16Le(rate) => rate,
        }
    }

    /// Bytes of 20 ms.
    fn frame_bytes(self) -> usize {
        let samples = self.rate_hz() as usize / 50;
        match self {
            Wire::Mulaw => samples,
            _ => 2 * samples,
        }
    }

    fn encode(self, pcm: &[i16]) -> Vec<u8> {
        match self {
            Wire::Mulaw => mulaw(pcm),
            Wire::L16Be(_) => pcm.iter().flat_map(|s| s.to_be_bytes()).collect(),
            Wire::L16Le(_) => pcm.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    fn decode(self, bytes: &[u8]) -> Vec<i16> {
        match self {
            Wire::Mulaw => unmulaw(bytes),
            Wire::L16Be(_) => bytes
                .chunks_exact(2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .collect(),
            Wire::L16Le(_) => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
        }
    }
}

/// The speech fixture at `rate_hz` (8 kHz as recorded, 16 kHz by linear interpolation).
fn speech(rate_hz: u32, seconds: f64) -> Vec<i16> {
    let speech = speech_8k(seconds);
    match rate_hz {
        8_000 => speech,
        16_000 => speech
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| {
                let next = speech.get(i + 1).copied().unwrap_or(s);
                [s, ((i32::from(s) + i32::from(next)) / 2) as i16]
            })
            .collect(),
        other => panic!("no fixture at {other} Hz"),
    }
}

/// A caller speaking one carrier's wire format.
struct Caller {
    conn: Conn,
    carrier: Carrier,
    wire: Wire,
    /// Telnyx `sequence_number` of the last message sent.
    sequence: u64,
    /// Media messages sent.
    chunks: u64,
    stream_id: String,
}

impl Caller {
    /// Opens the socket to the carrier's endpoint with `query` (e.g. `?api_key=…`) and an
    /// optional `Authorization: Bearer`; nothing is sent yet.
    async fn connect(
        setup: &Setup,
        carrier: Carrier,
        wire: Wire,
        query: &str,
        bearer: Option<&str>,
    ) -> Result<Caller, tungstenite::Error> {
        let speaks = match carrier {
            Carrier::Vonage => Speaks::Native,
            Carrier::Telnyx | Carrier::Plivo => Speaks::Twilio,
        };
        let url = format!("{}{query}", setup.router.ws_url(carrier.path()));
        Ok(Caller {
            conn: Conn::connect(&url, bearer, speaks).await?,
            carrier,
            wire,
            sequence: 0,
            chunks: 0,
            stream_id: uuid::Uuid::now_v7().to_string(),
        })
    }

    /// Connects and starts with these parameters (Telnyx `custom_parameters`, Vonage NCCO
    /// headers, Plivo `extra_headers`).
    async fn started(
        setup: &Setup,
        carrier: Carrier,
        wire: Wire,
        query: &str,
        params: &[(&str, &str)],
    ) -> Caller {
        let mut caller = Caller::connect(setup, carrier, wire, query, None)
            .await
            .expect("the upgrade succeeds");
        caller.start(params).await;
        caller
    }

    /// The carrier's opening message(s), announcing the wire format.
    async fn start(&mut self, params: &[(&str, &str)]) {
        let encoding = match self.wire {
            Wire::Mulaw => "mulaw",
            _ => "l16",
        };
        self.start_with_format(encoding, self.wire.rate_hz(), params)
            .await;
    }

    /// The opening message with this codec (`mulaw`/`l16`, or any other name) and rate.
    async fn start_with_format(&mut self, encoding: &str, rate_hz: u32, params: &[(&str, &str)]) {
        let map: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        match self.carrier {
            Carrier::Telnyx => {
                self.conn
                    .text(json!({"event": "connected", "version": "1.0.0"}).to_string())
                    .await;
                let encoding = match encoding {
                    "mulaw" => "PCMU",
                    "l16" => "L16",
                    other => other,
                };
                self.sequence += 1;
                let start = json!({
                    "event": "start",
                    "sequence_number": self.sequence.to_string(),
                    "stream_id": self.stream_id,
                    "start": {
                        "user_id": "3E6F995F-0000",
                        "call_control_id": format!("v2:{}", self.stream_id),
                        "call_session_id": "ff55a038-0000",
                        "from": "+13122010094",
                        "to": "+13122123456",
                        "custom_parameters": map,
                        "media_format": {"encoding": encoding, "sample_rate": rate_hz, "channels": 1},
                    },
                });
                self.conn.text(start.to_string()).await;
            }
            Carrier::Vonage => {
                let kind = match encoding {
                    "l16" => "audio/l16",
                    other => other,
                };
                let mut first = json!({
                    "event": "websocket:connected",
                    "content-type": format!("{kind};rate={rate_hz}"),
                });
                for (k, v) in map {
                    first[k] = v;
                }
                self.conn.text(first.to_string()).await;
            }
            Carrier::Plivo => {
                let encoding = match encoding {
                    "mulaw" => "audio/x-mulaw",
                    "l16" => "audio/x-l16",
                    other => other,
                };
                let extra: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let start = json!({
                    "event": "start",
                    "sequenceNumber": 1,
                    "start": {
                        "callId": format!("call-{}", self.stream_id),
                        "streamId": self.stream_id,
                        "accountId": "MAXXXXXXXXXXXXXXXXXX",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": encoding, "sampleRate": rate_hz},
                    },
                    "extra_headers": extra.join(";"),
                });
                self.conn.text(start.to_string()).await;
            }
        }
    }

    /// One media message whose payload is this base64 text (Telnyx and Plivo), numbered
    /// `chunk` (Telnyx: 1 for the first media message).
    fn media_text(&mut self, chunk: u64, payload: &str) -> String {
        self.sequence += 1;
        match self.carrier {
            Carrier::Telnyx => json!({
                "event": "media",
                "sequence_number": self.sequence.to_string(),
                "stream_id": self.stream_id,
                "media": {
                    "track": "inbound",
                    "chunk": chunk.to_string(),
                    "timestamp": ((chunk - 1) * 20).to_string(),
                    "payload": payload,
                },
            })
            .to_string(),
            Carrier::Plivo => json!({
                "event": "media",
                "sequenceNumber": self.sequence,
                "streamId": self.stream_id,
                "media": {
                    "track": "inbound",
                    "timestamp": ((chunk - 1) * 20).to_string(),
                    "chunk": chunk,
                    "payload": payload,
                },
            })
            .to_string(),
            Carrier::Vonage => panic!("Vonage audio is binary"),
        }
    }

    /// One audio message carrying `bytes` (already in the wire format), numbered `chunk`.
    async fn send_media(&mut self, chunk: u64, bytes: &[u8]) {
        match self.carrier {
            Carrier::Vonage => self.conn.binary(bytes.to_vec()).await,
            _ => {
                let text = self.media_text(chunk, &BASE64.encode(bytes));
                self.conn.text(text).await;
            }
        }
    }

    /// `pcm` as 20 ms audio messages, one every `interval` (zero: at once), in the order
    /// `order` gives (indices into the frames).
    async fn stream(&mut self, pcm: &[i16], interval: Duration, order: &[usize]) {
        let frames: Vec<Vec<u8>> = self
            .wire
            .encode(pcm)
            .chunks(self.wire.frame_bytes())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(order.len(), frames.len());
        let mut tick = tokio::time::interval(interval.max(Duration::from_micros(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let first = self.chunks;
        for &index in order {
            if !interval.is_zero() {
                tick.tick().await;
            }
            self.send_media(first + index as u64 + 1, &frames[index])
                .await;
        }
        self.chunks += frames.len() as u64;
    }

    /// `pcm` in order.
    async fn stream_in_order(&mut self, pcm: &[i16], interval: Duration) {
        let frames = pcm.len() / (self.wire.rate_hz() as usize / 50);
        let order: Vec<usize> = (0..frames).collect();
        self.stream(pcm, interval, &order).await;
    }

    /// The audio received so far, decoded.
    fn back(&self) -> Vec<i16> {
        self.wire.decode(&self.conn.audio())
    }

    /// Proves the call is live and echoing: 200 ms of tone in, at least 100 ms back.
    async fn assert_echoes(&mut self, what: &str) {
        let before = self.conn.audio_len();
        let tone = voxroute_codecs::measure::sine(
            440.0,
            self.wire.rate_hz(),
            8_000.0,
            self.wire.rate_hz() as usize / 5,
        );
        self.stream_in_order(&tone, Duration::ZERO).await;
        let want = before + self.wire.frame_bytes() * 5;
        let conn = &self.conn;
        eventually(WAIT, &format!("{what}: echo of a tone"), async || {
            (conn.audio_len() >= want).then_some(())
        })
        .await;
    }

    /// Ends the call as the carrier does (Telnyx and Plivo `stop`, Vonage closes the socket)
    /// and waits for the router's close.
    async fn hang_up(&mut self) -> Closed {
        match self.carrier {
            Carrier::Telnyx => {
                self.sequence += 1;
                let stop = json!({"event": "stop", "sequence_number": self.sequence.to_string(), "stream_id": self.stream_id});
                self.conn.text(stop.to_string()).await;
            }
            Carrier::Plivo => {
                self.conn
                    .text(json!({"event": "stop", "streamId": self.stream_id}).to_string())
                    .await;
            }
            Carrier::Vonage => {
                let _ = self.conn.send(Message::Close(None)).await;
            }
        }
        self.conn.wait_closed(WAIT).await
    }
}

/// Asserts what every carrier record says: the endpoint, transport `telephony`,
/// `CLIENT_HANGUP`, the provider, and `audio_in_ms` within 40 ms of `audio_ms`.
fn assert_record(row: &SessionRow, carrier: Carrier, provider: &str, audio_ms: i64) {
    assert_eq!(row.endpoint, carrier.path(), "{row:#?}");
    assert_eq!(row.transport, "telephony", "{row:#?}");
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
    assert_eq!(row.provider, provider, "{row:#?}");
    assert!(
        (row.audio_in_ms - audio_ms).abs() <= 40,
        "audio_in_ms {} for {audio_ms} ms sent: {row:#?}",
        row.audio_in_ms
    );
}

/// The value of a counter line of `/metrics` (0 when absent).
async fn metric(setup: &Setup, line_prefix: &str) -> u64 {
    let (status, body) = setup.router.http_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends 2 s of speech at real time in `order`, waits for the whole reply, and returns the
/// sent and received audio at the wire's rate.
async fn speak(caller: &mut Caller, order: Option<&[usize]>) -> (Vec<i16>, Vec<i16>) {
    let sent = speech(caller.wire.rate_hz(), 2.0);
    match order {
        Some(order) => caller.stream(&sent, Duration::from_millis(20), order).await,
        None => {
            caller
                .stream_in_order(&sent, Duration::from_millis(20))
                .await
        }
    }
    let bytes = caller.wire.encode(&sent).len();
    caller.conn.wait_audio(bytes * 9 / 10, WAIT).await;
    caller.conn.wait_quiet(REPLY_DONE, WAIT).await;
    (sent, caller.back())
}

/// Proves a Telnyx call whose media frames arrive out of order (every pair after the first
/// frame swapped, as Telnyx may deliver them) is put back in order: PCMU speech at real time
/// through the echo route comes back whole (90% of the voiced windows) and in order (the
/// whole reply correlates with the fixture above 0.9 at one lag, which swapped 20 ms frames
/// would break), nothing had to be concealed, and the record is a `telephony` session on
/// `/v1/telephony/telnyx` covering the 2 s sent.
#[tokio::test]
async fn telnyx_out_of_order_frames_come_back_in_order() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("telnyx", None).await;
    let mut caller = Caller::started(
        &setup,
        Carrier::Telnyx,
        Wire::Mulaw,
        "",
        &[("api_key", &key)],
    )
    .await;
    let frames = speech(8_000, 2.0).len() / 160;
    let mut order = vec![0];
    for pair in (1..frames).collect::<Vec<_>>().chunks(2) {
        order.extend(pair.iter().rev());
    }
    assert_ne!(order, (0..frames).collect::<Vec<_>>());
    let (sent, back) = speak(&mut caller, Some(&order)).await;
    let matching = matching_windows(&sent, &back);
    let (lag, corr) = assert_same_audio(&sent, &back, "Telnyx, reordered");
    println!(
        "telnyx reordered: {:.0}% of voiced windows, correlation {corr:.3} at lag {lag}",
        matching * 100.0
    );
    assert!(
        matching >= 0.9,
        "{:.0}% of the voiced windows came back",
        matching * 100.0
    );
    let closed = caller.hang_up().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_record(&row, Carrier::Telnyx, "echo", 2_000);
    assert_eq!(metric(&setup, "voxroute_frames_concealed_total ").await, 0);
}

/// Proves a Vonage call end to end: L16 16 kHz speech in 640-byte binary frames at real time
/// comes back through the echo route (90% of the voiced windows), every reply frame exactly
/// 640 bytes, and the record is a `telephony` session on `/v1/telephony/vonage`. The key and
/// the provider come as NCCO headers in the first frame.
#[tokio::test]
async fn vonage_speech_echoes_in_exact_frames() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("vonage", None).await;
    let mut caller = Caller::started(
        &setup,
        Carrier::Vonage,
        Wire::L16Le(16_000),
        "",
        &[
            ("api_key", &key),
            ("provider", "echo"),
            ("caller-id", "447700900123"),
        ],
    )
    .await;
    let (sent, back) = speak(&mut caller, None).await;
    let matching = matching_windows(&sent, &back);
    println!("vonage: {:.0}% of voiced windows", matching * 100.0);
    assert!(
        matching >= 0.9,
        "{:.0}% of the voiced windows came back",
        matching * 100.0
    );
    let sizes = caller.conn.inbox(|i| i.audio_sizes.clone());
    assert_eq!(
        sizes.into_iter().collect::<Vec<_>>(),
        [640],
        "reply frame sizes"
    );
    caller.hang_up().await;
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_record(&row, Carrier::Vonage, "echo", 2_000);
}

/// Proves a Plivo call end to end: mu-law speech at real time comes back as `playAudio`
/// through the echo route (90% of the voiced windows), with the key in the stream URL's query
/// string (Plivo's `extraHeaders` cannot carry it) and the provider in `extra_headers`; the
/// record is a `telephony` session on `/v1/telephony/plivo`.
#[tokio::test]
async fn plivo_speech_echoes() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("plivo", None).await;
    let mut caller = Caller::started(
        &setup,
        Carrier::Plivo,
        Wire::Mulaw,
        &format!("?api_key={key}"),
        &[("provider", "echo"), ("userId", "12345")],
    )
    .await;
    let (sent, back) = speak(&mut caller, None).await;
    let matching = matching_windows(&sent, &back);
    println!("plivo: {:.0}% of voiced windows", matching * 100.0);
    assert!(
        matching >= 0.9,
        "{:.0}% of the voiced windows came back",
        matching * 100.0
    );
    let closed = caller.hang_up().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let row = setup.ended_for_key(key_id, 1).await.remove(0);
    assert_record(&row, Carrier::Plivo, "echo", 2_000);
}

/// Proves the carriers work through a hosted provider (the OpenAI stand-in over its real
/// protocol, 24 kHz): Telnyx L16 16 kHz (big-endian on the wire), Plivo L16 8 kHz and Vonage
/// L16 8 kHz speech at real time come back (90% of the voiced windows), the stand-in counted
/// the audio, and the records name `openai`.
#[tokio::test]
async fn carriers_work_through_a_hosted_provider() {
    let (addr, stats) = standin_with(Knobs::default()).await;
    let setup = router_for(addr, None).await;
    let (key_id, key) = setup.key("hosted", None).await;
    for (carrier, wire) in [
        (Carrier::Telnyx, Wire::L16Be(16_000)),
        (Carrier::Plivo, Wire::L16Le(8_000)),
        (Carrier::Vonage, Wire::L16Le(8_000)),
    ] {
        let mut caller = Caller::started(
            &setup,
            carrier,
            wire,
            &format!("?api_key={key}"),
            &[("provider", "openai")],
        )
        .await;
        let (sent, back) = speak(&mut caller, None).await;
        let matching = matching_windows(&sent, &back);
        println!(
            "{carrier:?} {wire:?} via openai: {:.0}% of voiced windows",
            matching * 100.0
        );
        assert!(
            matching >= 0.9,
            "{carrier:?}: {:.0}% of the voiced windows came back",
            matching * 100.0
        );
        caller.hang_up().await;
    }
    let seen = stats.provider(Provider::OpenAi);
    assert_eq!(seen.connections, 3, "{seen:?}");
    assert!(seen.audio_received_ms >= 5_700, "{seen:?}");
    let rows = setup.ended_for_key(key_id, 3).await;
    for (row, carrier) in rows
        .iter()
        .zip([Carrier::Telnyx, Carrier::Plivo, Carrier::Vonage])
    {
        assert_record(row, carrier, "openai", 2_000);
    }
}

/// Proves bad frames are skipped per carrier while the call goes on echoing, and count for
/// no audio: malformed JSON (all three), bad base64 and payloads over 120 ms (Telnyx, Plivo),
/// unknown events, and Vonage binary frames of the wrong size, which are counted as bad
/// frames (`voxroute_frames_dropped_total{cause="bad_payload"}`).
#[tokio::test]
async fn bad_frames_are_skipped_per_carrier() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("bad frames", None).await;
    let query = format!("?api_key={key}");
    let mut expected_bad = 0;
    for (carrier, wire) in [
        (Carrier::Telnyx, Wire::Mulaw),
        (Carrier::Plivo, Wire::L16Le(16_000)),
        (Carrier::Vonage, Wire::L16Le(16_000)),
    ] {
        let mut caller = Caller::started(&setup, carrier, wire, &query, &[]).await;
        caller
            .assert_echoes(&format!("{carrier:?}, at first"))
            .await;
        for bad in ["{not json", "[1, 2, 3]", "{\"event\": 5}", "", "null"] {
            caller.conn.text(bad).await;
            expected_bad += 1;
        }
        caller
            .conn
            .text(json!({"event": "hello"}).to_string())
            .await;
        expected_bad += 1;
        match carrier {
            Carrier::Telnyx | Carrier::Plivo => {
                for bad in ["@@@@not*base64!!", "////====", "a"] {
                    let text = caller.media_text(1_000, bad);
                    caller.conn.text(text).await;
                    expected_bad += 1;
                }
                let over = BASE64.encode(vec![0x7f_u8; wire.frame_bytes() * 6 + 2]);
                let text = caller.media_text(1_001, &over);
                caller.conn.text(text).await;
                expected_bad += 1;
            }
            Carrier::Vonage => {
                for len in [639, 641, 320, 1, 1_280] {
                    caller.conn.binary(vec![0u8; len]).await;
                    expected_bad += 1;
                }
            }
        }
        caller
            .assert_echoes(&format!("{carrier:?}, after bad frames"))
            .await;
        let closed = caller.hang_up().await;
        if carrier != Carrier::Vonage {
            assert_eq!(
                (closed.code, closed.reason.as_str()),
                (1000, "CLIENT_HANGUP")
            );
        }
    }
    let rows = setup.ended_for_key(key_id, 3).await;
    for (row, carrier) in rows
        .iter()
        .zip([Carrier::Telnyx, Carrier::Plivo, Carrier::Vonage])
    {
        assert_record(row, carrier, "echo", 400);
    }
    let bad = metric(
        &setup,
        r#"voxroute_frames_dropped_total{cause="bad_payload"} "#,
    )
    .await;
    assert_eq!(bad, expected_bad, "bad frames counted");
}

/// Proves a start in a format voxroute does not speak ends the call with close 1008
/// `CLIENT_ERROR` (Telnyx `OPUS`, Telnyx PCMU at 16 kHz, Vonage L16 at 24 kHz, Plivo A-law),
/// and a frame over the 64 KiB WebSocket limit does too, mid-call, on record.
#[tokio::test]
async fn unsupported_formats_and_huge_frames_end_with_client_error() {
    let setup = Setup::sqlite().await;
    let (key_id, key) = setup.key("formats", None).await;
    let query = format!("?api_key={key}");
    for (carrier, encoding, rate_hz) in [
        (Carrier::Telnyx, "OPUS", 16_000),
        (Carrier::Telnyx, "mulaw", 16_000),
        (Carrier::Vonage, "l16", 24_000),
        (Carrier::Plivo, "audio/x-alaw", 8_000),
    ] {
        let mut caller = Caller::connect(&setup, carrier, Wire::Mulaw, &query, None)
            .await
            .expect("upgrade");
        caller.start_with_format(encoding, rate_hz, &[]).await;
        let closed = caller.conn.wait_closed(WAIT).await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "CLIENT_ERROR"),
            "{carrier:?} {encoding} at {rate_hz} Hz"
        );
    }
    for (carrier, wire) in [
        (Carrier::Telnyx, Wire::Mulaw),
        (Carrier::Vonage, Wire::L16Le(8_000)),
        (Carrier::Plivo, Wire::Mulaw),
    ] {
        let mut caller = Caller::started(&setup, carrier, wire, &query, &[]).await;
        caller
            .assert_echoes(&format!("{carrier:?}, before the huge frame"))
            .await;
        let huge = match carrier {
            Carrier::Vonage => Message::binary(vec![0u8; 1 << 20]),
            _ => Message::text(caller.media_text(99, &"A".repeat(1 << 20))),
        };
        // The router may stop reading mid-frame: a failed send is not the test's concern.
        let _ = caller.conn.send(huge).await;
        let closed = caller.conn.wait_closed(WAIT).await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "CLIENT_ERROR"),
            "{carrier:?}"
        );
    }
    let rows = setup.ended_for_key(key_id, 3).await;
    for row in &rows {
        assert_eq!(
            row.close_reason.as_deref(),
            Some("CLIENT_ERROR"),
            "{row:#?}"
        );
        assert_eq!(row.transport, "telephony", "{row:#?}");
    }
}

/// Proves a bad key is refused on every carrier endpoint: 401 `application/problem+json`
/// before the upgrade when presented there (header or query), and close 1008 `AUTH_FAILED`
/// when it comes inside the protocol (Telnyx `custom_parameters`, Vonage headers, Plivo
/// `extra_headers`) or no key comes at all.
#[tokio::test]
async fn bad_keys_are_refused_per_carrier() {
    let setup = Setup::sqlite().await;
    let unknown = format!("vxr_{}", "A".repeat(40));
    for carrier in [Carrier::Telnyx, Carrier::Vonage, Carrier::Plivo] {
        for wrong in ["not-a-key", unknown.as_str()] {
            let by_header = Caller::connect(&setup, carrier, Wire::Mulaw, "", Some(wrong))
                .await
                .err();
            let by_query = Caller::connect(
                &setup,
                carrier,
                Wire::Mulaw,
                &format!("?api_key={wrong}"),
                None,
            )
            .await
            .err();
            for (how, error) in [("header", by_header), ("query", by_query)] {
                let Some(tungstenite::Error::Http(response)) = error else {
                    panic!("{carrier:?} by {how}: expected HTTP 401, got {error:?}");
                };
                assert_eq!(response.status(), 401, "{carrier:?} by {how}");
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json",
                    "{carrier:?} by {how}"
                );
            }
        }
        for params in [vec![("api_key", unknown.as_str())], Vec::new()] {
            let wire = match carrier {
                Carrier::Vonage => Wire::L16Le(16_000),
                _ => Wire::Mulaw,
            };
            let caller = Caller::started(&setup, carrier, wire, "", &params).await;
            let closed = caller.conn.wait_closed(WAIT).await;
            assert_eq!(
                (closed.code, closed.reason.as_str()),
                (1008, "AUTH_FAILED"),
                "{carrier:?} with {params:?}"
            );
        }
    }
    let store = setup.store.clone();
    eventually(WAIT, "six AUTH_FAILED records", async || {
        let rows = store.list_sessions(100).await.ok()?;
        let failed: Vec<_> = rows
            .iter()
            .filter(|r| r.close_reason.as_deref() == Some("AUTH_FAILED"))
            .collect();
        (failed.len() == 6 && failed.iter().all(|r| r.transport == "telephony")).then_some(())
    })
    .await;
}
