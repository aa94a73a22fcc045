//! Measures resampler candidates side by side, to choose the one sessions use.
//!
//! For each rate pair and candidate it prints: algorithmic delay (reported, and measured by
//! cross-correlating a passband sweep with the same sweep made at the output rate), passband gain (worst deviation from 0 dB between 100 Hz and
//! 85% of the lower Nyquist frequency), alias/image rejection (worst case over tones that
//! would fold into the output band), and the cost of one 20 ms frame.
//!
//! Run: `cargo run --release -p voxroute-codecs --example resampler_study`

use std::time::Instant;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use voxroute_codecs::measure::{best_lag, db, log_sweep, rms, sine, tone};
use voxroute_codecs::{SampleRate, StreamResampler};

const SECONDS: usize = 2;

/// A candidate turned into "whole signal in, whole signal out" plus its reported delay.
trait Candidate {
    fn name(&self) -> String;
    fn delay_samples(&self) -> usize;
    fn run(&mut self, input: &[i16]) -> Vec<i16>;
}

struct Sinc(StreamResampler);

impl Candidate for Sinc {
    fn name(&self) -> String {
        format!("sinc {:>3} taps", self.0.sinc_len())
    }
    fn delay_samples(&self) -> usize {
        self.0.delay_samples()
    }
    fn run(&mut self, input: &[i16]) -> Vec<i16> {
        self.0.reset();
        let (fi, fo) = (
            self.0.from_rate().samples_per_frame(),
            self.0.to_rate().samples_per_frame(),
        );
        let mut out = vec![0i16; input.len() / fi * fo];
        for (i, o) in input.chunks_exact(fi).zip(out.chunks_exact_mut(fo)) {
            self.0.process_frame(i, o).expect("frames are whole");
        }
        out
    }
}

struct FftCandidate {
    resampler: Fft<f32>,
}

impl Candidate for FftCandidate {
    fn name(&self) -> String {
        "rubato Fft (sync)".into()
    }
    fn delay_samples(&self) -> usize {
        self.resampler.output_delay()
    }
    fn run(&mut self, input: &[i16]) -> Vec<i16> {
        self.resampler.reset();
        let input: Vec<f32> = input.iter().map(|&s| f32::from(s) / 32_768.0).collect();
        let mut out = Vec::new();
        let mut produced = vec![0f32; self.resampler.output_frames_max()];
        let mut pos = 0;
        while pos + self.resampler.input_frames_next() <= input.len() {
            let need = self.resampler.input_frames_next();
            let a = InterleavedSlice::new(&input[pos..pos + need], 1, need).unwrap();
            let n = produced.len();
            let mut b = InterleavedSlice::new_mut(&mut produced[..], 1, n).unwrap();
            let (_, written) = self
                .resampler
                .process_into_buffer(&a, &mut b, None)
                .unwrap();
            out.extend(produced[..written].iter().map(|&x| (x * 32_768.0) as i16));
            pos += need;
        }
        out
    }
}

fn main() {
    let pairs = [
        (8_000, 16_000),
        (16_000, 8_000),
        (48_000, 16_000),
        (16_000, 48_000),
        (8_000, 24_000),
    ];
    println!(
        "| from → to | candidate | delay reported | delay measured | passband worst | rejection worst | µs / 20 ms frame |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (from_hz, to_hz) in pairs {
        let (from, to) = (
            SampleRate::new(from_hz).unwrap(),
            SampleRate::new(to_hz).unwrap(),
        );
        let mut candidates: Vec<Box<dyn Candidate>> = [16, 24, 32, 48, 64]
            .into_iter()
            .map(|taps| {
                Box::new(Sinc(
                    StreamResampler::with_sinc_len(from, to, taps).unwrap(),
                )) as Box<dyn Candidate>
            })
            .collect();
        candidates.push(Box::new(FftCandidate {
            resampler: Fft::new(
                from_hz as usize,
                to_hz as usize,
                from.samples_per_frame(),
                1,
                FixedSync::Both,
            )
            .unwrap(),
        }));
        for candidate in &mut candidates {
            let row = study(candidate.as_mut(), from_hz, to_hz);
            println!(
                "| {} → {} kHz | {} | {:.2} ms | {:.2} ms | {:+.2} dB | {:.1} dB | {:.1} |",
                from_hz / 1000,
                to_hz / 1000,
                candidate.name(),
                candidate.delay_samples() as f64 * 1000.0 / f64::from(to_hz),
                row.delay_ms,
                row.passband_worst_db,
                row.rejection_worst_db,
                row.frame_us
            );
        }
    }
}

struct Row {
    delay_ms: f64,
    passband_worst_db: f64,
    rejection_worst_db: f64,
    frame_us: f64,
}

fn study(candidate: &mut dyn Candidate, from_hz: u32, to_hz: u32) -> Row {
    let len = from_hz as usize * SECONDS;
    // Skip the first 100 ms of output: the filter's start-up transient.
    let settle = to_hz as usize / 10;
    let low_nyquist = f64::from(from_hz.min(to_hz)) / 2.0;

    let sweep_end_hz = 0.8 * low_nyquist;
    let out = candidate.run(&log_sweep(100.0, sweep_end_hz, from_hz, 0.5, len));
    let reference = log_sweep(100.0, sweep_end_hz, to_hz, 0.5, out.len());
    let (lag, _) = best_lag(&reference, &out, to_hz as usize / 50);
    let delay_ms = lag as f64 * 1000.0 / f64::from(to_hz);

    let mut passband_worst_db: f64 = 0.0;
    let mut f = 100.0;
    while f <= 0.85 * low_nyquist {
        let out = candidate.run(&sine(f, from_hz, 0.5, len));
        let (amplitude, _) = tone(&out[settle..], to_hz, f);
        let gain_db = db(amplitude / 0.5);
        if gain_db.abs() > passband_worst_db.abs() {
            passband_worst_db = gain_db;
        }
        f += 100.0;
    }

    // Downsampling: tones above the output Nyquist must not fold back in. Upsampling: the
    // image of an in-band tone (at from - f) must not appear in the output.
    let mut rejection_worst_db = f64::MIN;
    if to_hz < from_hz {
        let out_nyquist = f64::from(to_hz) / 2.0;
        let mut f = 1.15 * out_nyquist;
        while f < 0.95 * f64::from(from_hz) / 2.0 {
            let out = candidate.run(&sine(f, from_hz, 0.5, len));
            rejection_worst_db =
                rejection_worst_db.max(db(rms(&out[settle..]) * 2f64.sqrt() / 0.5));
            f += 250.0;
        }
    } else {
        let mut f = 0.5 * low_nyquist;
        while f < 0.85 * low_nyquist {
            let out = candidate.run(&sine(f, from_hz, 0.5, len));
            let (image, _) = tone(&out[settle..], to_hz, f64::from(from_hz) - f);
            rejection_worst_db = rejection_worst_db.max(db(image / 0.5));
            f += 250.0;
        }
    }

    let input = sine(440.0, from_hz, 0.5, from_hz as usize * 10);
    let started = Instant::now();
    let out = candidate.run(&input);
    let frame_us =
        started.elapsed().as_secs_f64() * 1e6 / (out.len() as f64 / (f64::from(to_hz) / 50.0));

    Row {
        delay_ms,
        passband_worst_db,
        rejection_worst_db: -rejection_worst_db,
        frame_us,
    }
}
