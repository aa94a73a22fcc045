//! Signal measurements for tests, benchmarks and the load test: test tones, tone amplitude
//! and phase, alignment by cross-correlation, and SNR after alignment.
//!
//! Nothing here runs on the per-frame path; these functions allocate freely and favour
//! clarity over speed. They live in the library (not in a test helper) because the codec
//! tests, the resampler study, the end-to-end echo tests and the load test all judge audio
//! the same way, and one definition of "the audio came back" keeps their verdicts comparable.

use std::f64::consts::PI;

/// `len` samples of a sine at `freq_hz`, peak `amplitude` (of full scale, 0–1).
pub fn sine(freq_hz: f64, sample_rate_hz: u32, amplitude: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| {
            let t = n as f64 / f64::from(sample_rate_hz);
            to_i16(amplitude * (2.0 * PI * freq_hz * t).sin())
        })
        .collect()
}

/// `len` samples of a logarithmic sweep from `start_hz` to `end_hz`, peak `amplitude`.
pub fn log_sweep(
    start_hz: f64,
    end_hz: f64,
    sample_rate_hz: u32,
    amplitude: f64,
    len: usize,
) -> Vec<i16> {
    let duration_s = len as f64 / f64::from(sample_rate_hz);
    let k = (end_hz / start_hz).ln();
    (0..len)
        .map(|n| {
            let t = n as f64 / f64::from(sample_rate_hz);
            let phase = 2.0 * PI * start_hz * duration_s / k * ((t / duration_s * k).exp() - 1.0);
            to_i16(amplitude * phase.sin())
        })
        .collect()
}

/// Amplitude (of full scale) and phase (radians) of the component at `freq_hz`, measured
/// with a Hann window over the whole signal. Use signals of many periods of `freq_hz`.
pub fn tone(signal: &[i16], sample_rate_hz: u32, freq_hz: f64) -> (f64, f64) {
    let n = signal.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let (mut re, mut im, mut window_sum) = (0.0, 0.0, 0.0);
    for (i, &s) in signal.iter().enumerate() {
        let w = 0.5 - 0.5 * (2.0 * PI * i as f64 / (n - 1) as f64).cos();
        let x = f64::from(s) / 32_768.0 * w;
        let arg = 2.0 * PI * freq_hz * i as f64 / f64::from(sample_rate_hz);
        re += x * arg.cos();
        im += x * arg.sin();
        window_sum += w;
    }
    let amplitude = 2.0 * (re * re + im * im).sqrt() / window_sum;
    (amplitude, im.atan2(re))
}

/// Root-mean-square level of `signal`, as a fraction of full scale.
pub fn rms(signal: &[i16]) -> f64 {
    if signal.is_empty() {
        return 0.0;
    }
    let sum: f64 = signal
        .iter()
        .map(|&s| (f64::from(s) / 32_768.0).powi(2))
        .sum();
    (sum / signal.len() as f64).sqrt()
}

/// Decibels of an amplitude ratio.
pub fn db(ratio: f64) -> f64 {
    20.0 * ratio.max(1e-12).log10()
}

/// The lag (in samples, `0..=max_lag`) by which `signal` trails `reference`, chosen to
/// maximise their normalised cross-correlation, with that correlation (−1 to 1).
pub fn best_lag(reference: &[i16], signal: &[i16], max_lag: usize) -> (usize, f64) {
    let mut best = (0, f64::MIN);
    for lag in 0..=max_lag.min(signal.len()) {
        let c = correlation(reference, &signal[lag..]);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// Normalised correlation of the overlapping parts of `a` and `b` (0 when either is silent).
pub fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa * bb).sqrt()
}

/// Signal-to-noise ratio in dB of `signal` against `reference`, after shifting `signal` back
/// by `lag` samples and scaling it by the least-squares gain. Only the overlap counts.
pub fn snr_db(reference: &[i16], signal: &[i16], lag: usize) -> f64 {
    let signal = signal.get(lag..).unwrap_or(&[]);
    let (mut rs, mut ss) = (0.0, 0.0);
    for (&r, &s) in reference.iter().zip(signal) {
        rs += f64::from(r) * f64::from(s);
        ss += f64::from(s) * f64::from(s);
    }
    let gain = if ss > 0.0 { rs / ss } else { 0.0 };
    let (mut power, mut noise) = (0.0, 0.0);
    for (&r, &s) in reference.iter().zip(signal) {
        let r = f64::from(r);
        power += r * r;
        noise += (r - gain * f64::from(s)).powi(2);
    }
    10.0 * (power.max(1e-12) / noise.max(1e-12)).log10()
}

/// Log-spectral distance in dB between `reference` and `signal` (already aligned), a
/// perceptual-codec quality proxy where waveform SNR says little: both are cut into 20 ms
/// Hann-windowed frames, the power at `BANDS` log-spaced frequencies from 100 Hz to `top_hz`
/// (keep it within the band the reference actually has) is taken per frame, and the RMS of the dB differences is averaged over the frames
/// in which the reference is within 40 dB of its loudest frame (silence would dominate
/// otherwise). 0 for identical signals; about 1 dB is transparent, above 3 dB audible.
pub fn log_spectral_distance_db(
    reference: &[i16],
    signal: &[i16],
    sample_rate_hz: u32,
    top_hz: f64,
) -> f64 {
    const BANDS: usize = 48;
    let frame = sample_rate_hz as usize / 50;
    let freqs: Vec<f64> = (0..BANDS)
        .map(|b| 100.0 * (top_hz / 100.0).powf(b as f64 / (BANDS - 1) as f64))
        .collect();
    let spectrum = |chunk: &[i16]| -> Vec<f64> {
        freqs
            .iter()
            .map(|&f| tone(chunk, sample_rate_hz, f).0.powi(2) + 1e-12)
            .collect()
    };
    let frames: Vec<(f64, Vec<f64>, Vec<f64>)> = reference
        .chunks_exact(frame)
        .zip(signal.chunks_exact(frame))
        .map(|(r, s)| (rms(r), spectrum(r), spectrum(s)))
        .collect();
    let loudest = frames.iter().map(|f| f.0).fold(0.0, f64::max);
    let (mut total, mut counted) = (0.0, 0);
    for (level, r, s) in &frames {
        if *level < loudest * 0.01 {
            continue;
        }
        let mean_sq: f64 = r
            .iter()
            .zip(s)
            .map(|(a, b)| (10.0 * (a / b).log10()).powi(2))
            .sum::<f64>()
            / BANDS as f64;
        total += mean_sq.sqrt();
        counted += 1;
    }
    if counted == 0 {
        0.0
    } else {
        total / f64::from(counted)
    }
}

fn to_i16(x: f64) -> i16 {
    (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_reads_back_amplitude_and_lag_is_found() {
        let s = sine(1_000.0, 16_000, 0.5, 16_000);
        let (amplitude, _) = tone(&s, 16_000, 1_000.0);
        assert!((amplitude - 0.5).abs() < 1e-3, "{amplitude}");
        let sweep = log_sweep(100.0, 7_000.0, 16_000, 0.5, 8_000);
        let mut delayed = vec![0i16; 37];
        delayed.extend_from_slice(&sweep);
        let (lag, c) = best_lag(&sweep, &delayed, 100);
        assert_eq!(lag, 37);
        assert!(c > 0.999);
        assert!(snr_db(&sweep, &delayed, 37) > 90.0);
    }

    #[test]
    fn spectral_distance_is_zero_for_identity_and_grows_with_damage() {
        // Broadband noise, so that every band of every frame has energy.
        let mut state = 0x9e37_79b9_u32;
        let noise: Vec<i16> = (0..16_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 20) as i16 - 2_048
            })
            .collect();
        assert!(log_spectral_distance_db(&noise, &noise, 16_000, 7_000.0) < 1e-6);
        let quieter: Vec<i16> = noise.iter().map(|&s| s / 2).collect();
        let lsd = log_spectral_distance_db(&noise, &quieter, 16_000, 7_000.0);
        assert!(
            (lsd - 6.02).abs() < 0.1,
            "halving is 6 dB everywhere: {lsd}"
        );
    }
}
