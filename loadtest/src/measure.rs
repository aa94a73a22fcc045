//! Measuring: latency histograms, the router's CPU time and memory from `/proc`, and the
//! DSP-only cost of the same chains, timed in this process with `voxroute-codecs`.
//!
//! Nothing here talks to the router; [`drive`](crate::drive) decides when to sample.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use voxroute_codecs::opus::{OpusEncoder, OpusEncoderConfig};
use voxroute_codecs::{
    AudioFormat, Channels, CodecError, EgressChain, IngressChain, SampleRate, StreamResampler,
};

use crate::config::Transport;
use crate::signal::{CALLER_FRAME_SAMPLES, CallerSignal, Speech};

/// Width of the fine histogram buckets, in microseconds (up to [`FINE_LIMIT_US`]).
const FINE_BUCKET_US: u64 = 10;
/// Values up to this many microseconds get fine buckets; above, 1 ms buckets.
const FINE_LIMIT_US: u64 = 100_000;
/// Width of the coarse buckets, in microseconds.
const COARSE_BUCKET_US: u64 = 1_000;
/// Values above this (10 s) share the last bucket; the exact maximum is kept apart.
const COARSE_LIMIT_US: u64 = 10_000_000;

/// A latency histogram: 10 µs buckets to 100 ms, 1 ms buckets to 10 s, plus the exact
/// maximum. Percentiles are the upper edge of the bucket that holds them (never above the
/// maximum), so they are exact to 10 µs where the targets are.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        let buckets = FINE_LIMIT_US / FINE_BUCKET_US
            + (COARSE_LIMIT_US - FINE_LIMIT_US) / COARSE_BUCKET_US
            + 1;
        Histogram {
            buckets: vec![0; buckets as usize],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Adds one value.
    pub fn record(&mut self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let index = if us < FINE_LIMIT_US {
            us / FINE_BUCKET_US
        } else {
            FINE_LIMIT_US / FINE_BUCKET_US
                + ((us.min(COARSE_LIMIT_US) - FINE_LIMIT_US) / COARSE_BUCKET_US)
        };
        let index = (index as usize).min(self.buckets.len() - 1);
        self.buckets[index] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q`-quantile (0–1, nearest rank) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let index = index as u64;
                let upper = if index < FINE_LIMIT_US / FINE_BUCKET_US {
                    (index + 1) * FINE_BUCKET_US
                } else {
                    FINE_LIMIT_US + (index + 1 - FINE_LIMIT_US / FINE_BUCKET_US) * COARSE_BUCKET_US
                };
                return upper.min(self.max_us);
            }
        }
        self.max_us
    }

    /// The summary the report keeps.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: self.count,
            p50_ms: ms(self.quantile_us(0.5)),
            p99_ms: ms(self.quantile_us(0.99)),
            max_ms: ms(self.max_us),
        }
    }
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values measured (frames, or sessions for set-up times).
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

/// The kernel's clock ticks per second in `/proc/PID/stat` (`USER_HZ`): 100 on every Linux
/// architecture this tool runs on (the ABI fixes it, whatever the kernel's own `HZ`).
const USER_HZ: f64 = 100.0;

/// CPU time and resident memory of a process at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time so far, in seconds (10 ms resolution).
    pub cpu_seconds: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// When it was read.
    pub at: Instant,
}

impl ProcSample {
    /// Reads `/proc/PID/stat` and `/proc/PID/status` (`pid` `None`: this process).
    ///
    /// # Errors
    /// A message when a file cannot be read or parsed (no such process, not Linux).
    pub fn read(pid: Option<u32>) -> Result<ProcSample, String> {
        let dir = pid.map_or_else(|| "/proc/self".to_owned(), |pid| format!("/proc/{pid}"));
        let stat = std::fs::read_to_string(format!("{dir}/stat"))
            .map_err(|e| format!("{dir}/stat: {e}"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))
            .map_err(|e| format!("{dir}/status: {e}"))?;
        let cpu_seconds =
            parse_cpu_seconds(&stat).ok_or_else(|| format!("{dir}/stat: unparsable"))?;
        let rss_kib = parse_rss_kib(&status).ok_or_else(|| format!("{dir}/status: no VmRSS"))?;
        Ok(ProcSample {
            cpu_seconds,
            rss_kib,
            at: Instant::now(),
        })
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field N is index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS:` of `/proc/PID/status`, in KiB.
fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The DSP-only cost of one session's chains, measured in this process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DspCost {
    /// The provider rate the chains were built for.
    pub provider_sample_rate_hz: u32,
    /// Median cost of one 20 ms frame through the ingress chain, in microseconds.
    pub ingress_us_per_frame: f64,
    /// Median cost of one 20 ms frame through the egress chain, in microseconds.
    pub egress_us_per_frame: f64,
    /// Both directions for one second of one session (50 frames each way), in CPU seconds.
    pub cpu_seconds_per_session_second: f64,
    /// Algorithmic delay of the ingress chain (its resampler; decoding adds none), in
    /// milliseconds.
    pub ingress_delay_ms: f64,
    /// Algorithmic delay of the egress chain (its resampler, and Opus's lookahead for
    /// WebRTC), in milliseconds.
    pub egress_delay_ms: f64,
}

/// Rounds of [`DSP_FRAMES_PER_ROUND`] frames each way; the median round is kept.
const DSP_ROUNDS: usize = 7;
/// Frames per timing round.
const DSP_FRAMES_PER_ROUND: usize = 200;

/// Times the chains a `transport` session runs in the router (caller format ↔ PCM16 at
/// `provider_rate`) on the load test's own signal: [`IngressChain`] and [`EgressChain`], as
/// `codecs/benches` does, rounds interleaved, medians kept.
///
/// # Errors
/// A [`CodecError`] if a chain cannot be built (an unsupported provider rate).
pub fn dsp_cost(
    transport: Transport,
    provider_rate: SampleRate,
    speech: &Speech,
) -> Result<DspCost, CodecError> {
    let client = match transport {
        Transport::Twilio => AudioFormat::telephony_mulaw(),
        Transport::Native => AudioFormat::pcm16_mono(SampleRate::HZ_8000),
        Transport::WebRtc => AudioFormat::opus(Channels::Mono),
    };
    let signal = CallerSignal::new(speech.clone(), 1);
    let law = voxroute_codecs::g711::G711Law::Mulaw;
    // What a WebRTC caller sends: the signal at 48 kHz, coded by the caller's own encoder.
    let mut opus_caller = match transport {
        Transport::WebRtc => Some((
            StreamResampler::new(SampleRate::HZ_8000, SampleRate::HZ_48000)?,
            OpusEncoder::new(OpusEncoderConfig::default())?,
            vec![0i16; voxroute_codecs::opus::FRAME_SAMPLES],
        )),
        Transport::Twilio | Transport::Native => None,
    };
    // The payloads as the router receives them, prepared outside the timing.
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(DSP_FRAMES_PER_ROUND);
    for seq in 0..DSP_FRAMES_PER_ROUND as u64 {
        let frame = signal.frame(seq);
        payloads.push(match (transport, &mut opus_caller) {
            (Transport::WebRtc, Some((upsampler, encoder, pcm_48k))) => {
                upsampler.process_frame(frame, pcm_48k)?;
                encoder.encode(pcm_48k)?.to_vec()
            }
            (Transport::Twilio, _) => {
                let mut codes = vec![0u8; CALLER_FRAME_SAMPLES];
                law.encode(frame, &mut codes)?;
                codes
            }
            _ => frame.iter().flat_map(|s| s.to_le_bytes()).collect(),
        });
    }
    let mut ingress = IngressChain::new(client, provider_rate)?;
    let mut egress = EgressChain::new(provider_rate, client, OpusEncoderConfig::default())?;
    let mut provider_frames = Vec::with_capacity(payloads.len());
    for payload in &payloads {
        ingress.push(payload)?;
        if let Some(frame) = ingress.pop_frame() {
            provider_frames.push(frame.to_vec());
        }
    }
    let (mut ingress_us, mut egress_us) = (Vec::new(), Vec::new());
    for _ in 0..DSP_ROUNDS {
        let started = Instant::now();
        for payload in &payloads {
            ingress.push(std::hint::black_box(payload))?;
            std::hint::black_box(ingress.pop_frame());
        }
        ingress_us.push(started.elapsed().as_secs_f64() * 1e6 / payloads.len() as f64);
        let started = Instant::now();
        for frame in &provider_frames {
            std::hint::black_box(egress.encode_frame(std::hint::black_box(frame))?);
        }
        egress_us.push(started.elapsed().as_secs_f64() * 1e6 / provider_frames.len().max(1) as f64);
    }
    let ingress_us_per_frame = median(&mut ingress_us);
    let egress_us_per_frame = median(&mut egress_us);
    let frames_per_second = f64::from(1_000 / voxroute_codecs::FRAME_MS);
    Ok(DspCost {
        provider_sample_rate_hz: provider_rate.hz(),
        ingress_us_per_frame,
        egress_us_per_frame,
        cpu_seconds_per_session_second: (ingress_us_per_frame + egress_us_per_frame)
            * frames_per_second
            / 1e6,
        ingress_delay_ms: ingress.delay_ms(),
        egress_delay_ms: egress.delay_ms(),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.summary().p99_ms, 0.0);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        h.record(Duration::from_secs(20));
        let s = h.summary();
        assert_eq!(s.count, 101);
        assert!((s.p50_ms - 51.0).abs() < 0.02, "{s:?}");
        assert!((s.p99_ms - 100.0).abs() < 1.01, "{s:?}");
        assert_eq!(s.max_ms, 20_000.0);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (voxroute (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2_048));
        let own = ProcSample::read(None).unwrap();
        assert!(own.rss_kib > 0);
    }

    #[test]
    fn dsp_cost_is_measured_for_both_transports() {
        for transport in [Transport::Twilio, Transport::Native, Transport::WebRtc] {
            let cost = dsp_cost(transport, SampleRate::HZ_16000, &Speech::synthetic()).unwrap();
            assert!(cost.ingress_us_per_frame > 0.0 && cost.egress_us_per_frame > 0.0);
            assert!(cost.cpu_seconds_per_session_second < 0.5, "{cost:?}");
            assert!(cost.ingress_delay_ms > 1.0 && cost.ingress_delay_ms < 5.0);
        }
    }
}
