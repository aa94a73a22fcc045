//! Measures libopus encoder complexity 0–10, full band and capped at 8 kHz of audio, on the
//! speech fixture: quality (waveform SNR after alignment, and log-spectral distance, a
//! perceptual proxy) against encode cost per 20 ms frame, with all configurations' timings
//! interleaved round-robin in one run so machine noise hits them alike. Chooses `voxroute_codecs::opus::DEFAULT_COMPLEXITY`; figures in
//! `docs/performance.md`.
//!
//! Run: `cargo run --release -p voxroute-codecs --example opus_complexity_study`

use std::path::Path;
use std::time::Instant;

use voxroute_codecs::Channels;
use voxroute_codecs::measure::{best_lag, log_spectral_distance_db, snr_db};
use voxroute_codecs::opus::{
    FRAME_SAMPLES, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder, OpusEncoderConfig,
};

const ROUNDS: usize = 15;

/// Judge quality up to the top of wideband speech: what a 16 kHz provider hears. (The
/// fixture, synthesised at 22.05 kHz, has nothing above 11 kHz to judge.)
const SPEECH_TOP_HZ: f64 = 7_000.0;

/// The band caps compared: full band, and what the egress chain sets for a 16 kHz provider.
const MAX_AUDIO_HZ: [u32; 2] = [20_000, 8_000];

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/speech/speech-48k.wav");
    let speech: Vec<i16> = hound::WavReader::open(path)
        .expect("speech fixture")
        .samples::<i16>()
        .map(|s| s.expect("fixture decodes"))
        .collect();
    let frames: Vec<&[i16]> = speech.chunks_exact(FRAME_SAMPLES).collect();
    let configs: Vec<OpusEncoderConfig> = MAX_AUDIO_HZ
        .iter()
        .flat_map(|&max_audio_hz| {
            (0..=10).map(move |complexity| OpusEncoderConfig {
                complexity,
                max_audio_hz,
                ..OpusEncoderConfig::default()
            })
        })
        .collect();

    // Every configuration once per round, so drift of the machine hits all of them alike.
    let mut cost_us = vec![Vec::new(); configs.len()];
    for _ in 0..ROUNDS {
        for (config, costs) in configs.iter().zip(&mut cost_us) {
            let mut encoder = OpusEncoder::new(*config).unwrap();
            let started = Instant::now();
            for frame in &frames {
                std::hint::black_box(encoder.encode(frame).unwrap().len());
            }
            costs.push(started.elapsed().as_secs_f64() * 1e6 / frames.len() as f64);
        }
    }

    println!(
        "| max audio Hz | complexity | encode µs / 20 ms (median of {ROUNDS}) | SNR dB | log-spectral distance dB (100 Hz–7 kHz) | mean packet bytes |"
    );
    println!("|---|---|---|---|---|---|");
    for (config, costs) in configs.iter().zip(&mut cost_us) {
        costs.sort_by(f64::total_cmp);
        let mut encoder = OpusEncoder::new(*config).unwrap();
        let mut decoder = OpusDecoder::new(Channels::Mono).unwrap();
        let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
        let (mut decoded, mut bytes) = (Vec::new(), 0);
        for frame in &frames {
            let packet = encoder.encode(frame).unwrap();
            bytes += packet.len();
            let n = decoder.decode(packet, &mut pcm).unwrap();
            decoded.extend_from_slice(&pcm[..n]);
        }
        let (lag, _) = best_lag(&speech, &decoded, 960);
        let snr = snr_db(&speech, &decoded, lag);
        let lsd = log_spectral_distance_db(&speech, &decoded[lag..], 48_000, SPEECH_TOP_HZ);
        println!(
            "| {} | {} | {:.0} | {snr:.1} | {lsd:.2} | {:.0} |",
            config.max_audio_hz,
            config.complexity,
            costs[ROUNDS / 2],
            bytes as f64 / frames.len() as f64
        );
    }
}
