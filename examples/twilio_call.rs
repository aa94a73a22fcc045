//! `twilio_call`: call a Twilio Media Streams server (voxroute) from a WAV file, the way Twilio
//! does, and record what comes back.
//!
//! ```sh
//! cargo run --release --example twilio_call -- \
//!   --url ws://127.0.0.1:8080/v1/telephony/twilio --key vxr_… \
//!   --in codecs/tests/fixtures/speech/speech-8k.wav --out echo.wav
//! ```
//!
//! It plays Twilio's part of a bidirectional `<Connect><Stream>` (`reference/protocols.md` §1):
//!
//! - sends `connected`, then `start` with 34-character `MZ…`/`AC…`/`CA…` ids, `tracks`
//!   `["inbound"]`, `mediaFormat` mu-law 8000 Hz mono, and `customParameters` holding what
//!   TwiML `<Parameter>`s would (`--key` as `api_key`, `--provider`, `--route`, any `--param`);
//! - sends the file as `media` messages of 20 ms (160 mu-law bytes, base64), paced at real
//!   time, with string `sequenceNumber`, `chunk` and `timestamp` as Twilio writes them (the
//!   file is first mixed to mono and resampled to 8 kHz with voxroute's own codec chain, so
//!   any 8–96 kHz WAV will do);
//! - "plays" what comes back at real time, as Twilio's media buffer does: each `mark` is
//!   echoed once the audio queued before it has played, and `clear` empties the queue and
//!   echoes every pending mark at once;
//! - once the file has been sent and the replies have been quiet for `--linger-ms`, sends
//!   `stop` and closes the socket, as Twilio does when the call ends.
//!
//! Every `media` payload received is written to `--out` (8 kHz mono 16-bit WAV). It exits 0
//! when it hung up itself, 1 if the server ended the call first (the close reason is printed)
//! or anything failed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use voxroute_codecs::g711::G711Law;
use voxroute_codecs::{AudioFormat, Channels, Codec, IngressChain, SampleRate};

/// Stream a WAV file to a Twilio Media Streams endpoint as Twilio would, and record the reply.
#[derive(Debug, Parser)]
struct Args {
    /// The router's Twilio endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/telephony/twilio")]
    url: String,
    /// API key, sent as the `api_key` custom parameter (omit against `voxroute serve --dev`).
    #[arg(long)]
    key: Option<String>,
    /// Provider to ask for (custom parameter `provider`).
    #[arg(long, conflicts_with = "route")]
    provider: Option<String>,
    /// Route to ask for (custom parameter `route`).
    #[arg(long)]
    route: Option<String>,
    /// Any other custom parameter, as NAME=VALUE (repeatable), like a TwiML `<Parameter>`.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// WAV file to send: 16-bit or 32-bit float, mono or stereo, 8–96 kHz.
    #[arg(long = "in", value_name = "WAV")]
    input: PathBuf,
    /// WAV file to write what comes back to (8 kHz mono 16-bit).
    #[arg(long = "out", value_name = "WAV")]
    output: PathBuf,
    /// After the file is sent, hang up once no audio has come back for this long.
    #[arg(long, default_value_t = 1_000)]
    linger_ms: u64,
}

/// 20 ms of 8 kHz mu-law.
const FRAME_BYTES: usize = 160;

/// The longest the call goes on after the file is sent, however much audio keeps coming.
const MAX_LINGER: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("twilio_call: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Makes the call. `Ok(true)`: we hung up; `Ok(false)`: the server ended the call.
async fn run(args: Args) -> anyhow::Result<bool> {
    let frames = read_wav_as_mulaw(&args.input)?;
    let mut custom = serde_json::Map::new();
    for (name, value) in [
        ("api_key", &args.key),
        ("provider", &args.provider),
        ("route", &args.route),
    ] {
        if let Some(value) = value {
            custom.insert(name.to_owned(), Value::from(value.as_str()));
        }
    }
    for param in &args.params {
        let (name, value) = param
            .split_once('=')
            .with_context(|| format!("--param {param:?} is not NAME=VALUE"))?;
        custom.insert(name.to_owned(), Value::from(value));
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let mut call = Call::new();
    ws.send(Message::text(call.connected())).await?;
    ws.send(Message::text(call.start(custom))).await?;
    eprintln!(
        "twilio_call: streaming {} ms of audio to {}",
        frames.len() * 20,
        args.url
    );

    let mut received: Vec<u8> = Vec::new();
    let mut playback = Playback::default();
    let mut pending = frames.iter();
    let mut pacing = tokio::time::interval(Duration::from_millis(20));
    pacing.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let linger = Duration::from_millis(args.linger_ms);
    let mut sent_all_at: Option<Instant> = None;
    let mut last_audio_at = Instant::now();

    let server_closed = loop {
        let sending = sent_all_at.is_none();
        let next_mark = playback.next_due();
        tokio::select! {
            _ = pacing.tick(), if sending => match pending.next() {
                Some(frame) => ws.send(Message::text(call.media(frame))).await?,
                None => sent_all_at = Some(Instant::now()),
            },
            _ = tokio::time::sleep_until(next_mark.unwrap_or_else(Instant::now)), if next_mark.is_some() => {
                for name in playback.due_marks(Instant::now()) {
                    ws.send(Message::text(call.mark(&name))).await?;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(50)), if !sending => {
                let now = Instant::now();
                let done_at = sent_all_at.expect("set once sending ends");
                if now - last_audio_at.max(done_at) >= linger || now - done_at >= MAX_LINGER {
                    break None;
                }
            },
            message = ws.next() => match message {
                None => break Some("the connection ended without a close frame".to_owned()),
                Some(Err(error)) => break Some(format!("the connection failed: {error}")),
                Some(Ok(Message::Close(frame))) => {
                    break Some(match frame {
                        Some(frame) => format!("close {} {}", u16::from(frame.code), frame.reason),
                        None => "close without a reason".to_owned(),
                    });
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).context("a text frame that is not JSON")?;
                    match value["event"].as_str() {
                        Some("media") => {
                            let payload = value["media"]["payload"].as_str().unwrap_or_default();
                            let audio = BASE64.decode(payload).context("a media payload that is not base64")?;
                            playback.queue_audio(audio.len());
                            received.extend_from_slice(&audio);
                            last_audio_at = Instant::now();
                        }
                        Some("mark") => {
                            let name = value["mark"]["name"].as_str().unwrap_or_default();
                            playback.queue_mark(name.to_owned());
                        }
                        Some("clear") => {
                            for name in playback.clear() {
                                ws.send(Message::text(call.mark(&name))).await?;
                            }
                        }
                        other => eprintln!("twilio_call: ignoring event {other:?}"),
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    };

    if server_closed.is_none() {
        ws.send(Message::text(call.stop())).await?;
        // Twilio closes the socket after `stop`; the router answers with its own close.
        let _ = ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    write_wav(&args.output, &received)?;
    eprintln!(
        "twilio_call: sent {} ms, received {} ms, wrote {}",
        call.chunk * 20,
        received.len() / 8,
        args.output.display()
    );
    match server_closed {
        None => Ok(true),
        Some(how) => {
            eprintln!("twilio_call: the server ended the call: {how}");
            Ok(false)
        }
    }
}

/// The identifiers and counters of one stream, and the JSON of each message Twilio sends.
struct Call {
    stream_sid: String,
    call_sid: String,
    account_sid: String,
    sequence: u64,
    chunk: u64,
}

impl Call {
    fn new() -> Call {
        // Twilio's SIDs: two letters and 32 hex digits.
        let sid = |prefix: &str| format!("{prefix}{}", uuid::Uuid::now_v7().simple());
        Call {
            stream_sid: sid("MZ"),
            call_sid: sid("CA"),
            account_sid: sid("AC"),
            sequence: 0,
            chunk: 0,
        }
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    fn connected(&self) -> String {
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
    }

    fn start(&mut self, custom_parameters: serde_json::Map<String, Value>) -> String {
        json!({
            "event": "start",
            "sequenceNumber": self.next_sequence(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": custom_parameters,
            },
            "streamSid": self.stream_sid,
        })
        .to_string()
    }

    fn media(&mut self, mulaw: &[u8]) -> String {
        self.chunk += 1;
        json!({
            "event": "media",
            "sequenceNumber": self.next_sequence(),
            "media": {
                "track": "inbound",
                "chunk": self.chunk.to_string(),
                "timestamp": ((self.chunk - 1) * 20).to_string(),
                "payload": BASE64.encode(mulaw),
            },
            "streamSid": self.stream_sid,
        })
        .to_string()
    }

    fn mark(&mut self, name: &str) -> String {
        json!({
            "event": "mark",
            "sequenceNumber": self.next_sequence(),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        })
        .to_string()
    }

    fn stop(&mut self) -> String {
        json!({
            "event": "stop",
            "sequenceNumber": self.next_sequence(),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        })
        .to_string()
    }
}

/// Twilio's side of outbound audio: a buffer played at real time, with marks in it.
#[derive(Debug, Default)]
struct Playback {
    /// When the audio queued so far will have played.
    played_until: Option<Instant>,
    /// Marks, each with the instant the audio before it will have played.
    marks: VecDeque<(String, Instant)>,
}

impl Playback {
    fn queue_audio(&mut self, mulaw_bytes: usize) {
        let now = Instant::now();
        let from = self.played_until.map_or(now, |t| t.max(now));
        // 8 bytes of 8 kHz mu-law per millisecond.
        self.played_until = Some(from + Duration::from_micros(mulaw_bytes as u64 * 125));
    }

    fn queue_mark(&mut self, name: String) {
        let now = Instant::now();
        let due = self.played_until.map_or(now, |t| t.max(now));
        self.marks.push_back((name, due));
    }

    fn next_due(&self) -> Option<Instant> {
        self.marks.front().map(|(_, due)| *due)
    }

    /// The marks whose audio has played by `now`, in order.
    fn due_marks(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while self.marks.front().is_some_and(|(_, at)| *at <= now) {
            due.extend(self.marks.pop_front().map(|(name, _)| name));
        }
        due
    }

    /// `clear`: the queued audio is dropped and every pending mark comes back now.
    fn clear(&mut self) -> Vec<String> {
        self.played_until = None;
        self.marks.drain(..).map(|(name, _)| name).collect()
    }
}

/// The WAV file as 20 ms frames of 8 kHz mono mu-law (the last one padded with silence).
fn read_wav_as_mulaw(path: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = reader.spec();
    let channels = match spec.channels {
        1 => Channels::Mono,
        2 => Channels::Stereo,
        n => bail!("{}: {n} channels (mono or stereo only)", path.display()),
    };
    let rate = SampleRate::new(spec.sample_rate).map_err(|error| {
        anyhow::anyhow!(
            "{}: sample rate {}: {error}",
            path.display(),
            spec.sample_rate
        )
    })?;
    let samples: Vec<i16> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader.samples::<i16>().collect::<Result<_, _>>()?,
        (hound::SampleFormat::Int, bits @ 17..=32) => reader
            .samples::<i32>()
            .map(|s| s.map(|s| (s >> (bits - 16)) as i16))
            .collect::<Result<_, _>>()?,
        (hound::SampleFormat::Float, 32) => reader
            .samples::<f32>()
            .map(|s| s.map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16))
            .collect::<Result<_, _>>()?,
        (format, bits) => bail!(
            "{}: {bits}-bit {format:?} samples are not supported",
            path.display()
        ),
    };

    let format = AudioFormat::new(Codec::Pcm16, rate, channels)?;
    let mut chain = IngressChain::new(format, SampleRate::HZ_8000)?;
    let per_push = rate.samples_per_frame() * usize::from(channels.count());
    let mut frames = Vec::new();
    // One frame of silence after the file flushes what the resampler holds.
    let tail = vec![0i16; per_push];
    for chunk in samples
        .chunks(per_push)
        .chain(std::iter::once(tail.as_slice()))
    {
        let mut bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        bytes.resize(per_push * 2, 0);
        chain.push(&bytes)?;
        while let Some(frame) = chain.pop_frame() {
            let mut mulaw = vec![0u8; FRAME_BYTES];
            G711Law::Mulaw.encode(frame, &mut mulaw)?;
            frames.push(mulaw);
        }
    }
    Ok(frames)
}

/// Writes mu-law bytes as an 8 kHz mono 16-bit WAV.
fn write_wav(path: &PathBuf, mulaw: &[u8]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for &code in mulaw {
        writer.write_sample(G711Law::Mulaw.decode_sample(code))?;
    }
    writer.finalize()?;
    Ok(())
}
