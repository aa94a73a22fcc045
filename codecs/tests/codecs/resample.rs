//! Proves that streaming resampling keeps speech-band audio intact across round trips, that
//! its reported delay is its real delay, and that frame edges leave no clicks.

use voxroute_codecs::measure::{best_lag, log_sweep, sine, snr_db};
use voxroute_codecs::{SampleRate, StreamResampler};

/// Runs `input` through `resampler` frame by frame (a trailing partial frame is dropped).
fn stream(resampler: &mut StreamResampler, input: &[i16]) -> Vec<i16> {
    let (fi, fo) = (
        resampler.from_rate().samples_per_frame(),
        resampler.to_rate().samples_per_frame(),
    );
    let mut out = vec![0; input.len() / fi * fo];
    for (i, o) in input.chunks_exact(fi).zip(out.chunks_exact_mut(fo)) {
        resampler.process_frame(i, o).unwrap();
    }
    out
}

/// Sweeps `100 Hz..=0.8 × low Nyquist` through `outer → inner → outer` and checks the round
/// trip: the signal returns with `min_snr_db` after alignment, and the lag found by
/// correlation equals the sum of the two reported delays to within a quarter millisecond.
fn round_trip(outer_hz: u32, inner_hz: u32, min_snr_db: f64) {
    let (outer, inner) = (
        SampleRate::new(outer_hz).unwrap(),
        SampleRate::new(inner_hz).unwrap(),
    );
    let top_hz = 0.8 * f64::from(outer_hz.min(inner_hz)) / 2.0;
    let sweep = log_sweep(100.0, top_hz, outer_hz, 0.5, outer_hz as usize * 2);
    let mut there = StreamResampler::new(outer, inner).unwrap();
    let mut back = StreamResampler::new(inner, outer).unwrap();
    let returned = stream(&mut back, &stream(&mut there, &sweep));

    let reported =
        there.delay_samples() * outer_hz as usize / inner_hz as usize + back.delay_samples();
    let (lag, correlation) = best_lag(&sweep, &returned, outer_hz as usize / 50);
    let tolerance = outer_hz as usize / 4_000;
    assert!(
        lag.abs_diff(reported) <= tolerance,
        "{outer_hz}->{inner_hz}->{outer_hz}: measured lag {lag}, reported {reported}"
    );
    assert!(correlation > 0.99, "correlation {correlation}");
    let snr = snr_db(&sweep, &returned, lag);
    eprintln!(
        "{outer_hz}->{inner_hz}->{outer_hz}: SNR {snr:.1} dB, lag {lag} (reported {reported})"
    );
    assert!(
        snr >= min_snr_db,
        "{outer_hz}->{inner_hz}->{outer_hz}: SNR {snr:.1} dB"
    );
    // Speech-grade latency: the whole round trip stays within the 2–4 ms per hop budget.
    let delay_ms = there.delay_ms() + back.delay_ms();
    assert!(delay_ms < 5.0, "round-trip delay {delay_ms:.2} ms");
}

/// 48 → 16 → 48 kHz (WebRTC to a 16 kHz provider and back).
#[test]
fn sweep_48k_16k_48k_keeps_the_passband() {
    round_trip(48_000, 16_000, 60.0);
}

/// 8 → 16 → 8 kHz (telephony to a 16 kHz provider and back).
#[test]
fn sweep_8k_16k_8k_keeps_the_passband() {
    round_trip(8_000, 16_000, 60.0);
}

/// A steady tone streamed in 20 ms frames is a clean tone: after a least-squares fit of a
/// sine at its frequency (any amplitude and phase, so fractional-sample delays do not matter),
/// the residual is 60 dB down. A discontinuity at any frame edge would be broadband error far
/// above that.
#[test]
fn frame_edges_leave_no_clicks() {
    for (from_hz, to_hz) in [
        (8_000, 16_000),
        (48_000, 24_000),
        (16_000, 48_000),
        (44_100, 16_000),
    ] {
        let mut resampler = StreamResampler::new(
            SampleRate::new(from_hz).unwrap(),
            SampleRate::new(to_hz).unwrap(),
        )
        .unwrap();
        let out = stream(
            &mut resampler,
            &sine(1_000.0, from_hz, 0.5, from_hz as usize),
        );
        // Skip the filter's start-up (10 ms) and judge the rest.
        let settled = &out[to_hz as usize / 100..];
        let residual_db = sine_fit_residual_db(settled, f64::from(to_hz), 1_000.0);
        eprintln!("{from_hz}->{to_hz}: residual {residual_db:.1} dB");
        assert!(
            residual_db < -60.0,
            "{from_hz}->{to_hz}: residual {residual_db:.1} dB"
        );
    }
}

/// Power of what is left of `signal` after subtracting its least-squares fit `a·sin + b·cos`
/// at `freq_hz`, relative to the power of `signal`, in dB.
fn sine_fit_residual_db(signal: &[i16], sample_rate_hz: f64, freq_hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq_hz / sample_rate_hz;
    let (mut ss, mut cc, mut sc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (n, &y) in signal.iter().enumerate() {
        let (s, c, y) = ((w * n as f64).sin(), (w * n as f64).cos(), f64::from(y));
        ss += s * s;
        cc += c * c;
        sc += s * c;
        ys += y * s;
        yc += y * c;
    }
    let det = ss * cc - sc * sc;
    let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
    let (mut power, mut residual) = (0.0, 0.0);
    for (n, &y) in signal.iter().enumerate() {
        let y = f64::from(y);
        power += y * y;
        residual += (y - a * (w * n as f64).sin() - b * (w * n as f64).cos()).powi(2);
    }
    10.0 * (residual / power).log10()
}
