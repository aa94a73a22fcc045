//! What every load-test caller says: speech at 8 kHz in 20 ms frames, with an in-band code
//! that survives the router's DSP, so that both ends can tell which session and which frame
//! they are looking at.
//!
//! # The signal
//!
//! Frame `seq` (0, 1, 2, ...) of session `id` is:
//!
//! - **a preamble symbol** for `seq < PREAMBLE_FRAMES`: three base-16 digits of `id` (most
//!   significant first) and a check digit. The in-process provider reads them from the first
//!   four frames of each upstream connection, which is how it learns which caller a connection
//!   belongs to (ws-pcm carries no session id);
//! - **a sequence marker** for every [`MARKER_PERIOD_FRAMES`]-th frame after the preamble:
//!   symbol `(seq / MARKER_PERIOD_FRAMES) mod 16`;
//! - **silence** for the frame just before each marker (a guard: the resamplers' delay moves
//!   the end of the previous frame into the marker frame, and loud speech there could drown
//!   the symbol; a duplicated frame also shows, as a silent marker position);
//! - **speech** otherwise: the speech fixture, looped, starting at a per-session offset.
//!
//! A symbol is 20 ms of two simultaneous tones, one from a low group and one from a high
//! group (as DTMF), each a whole number of cycles per frame at 8, 16, 24 and 48 kHz, all
//! within the telephone band (700–2,900 Hz). [`decode_symbol`] finds them with the Goertzel
//! algorithm at whatever rate the frame is. This survives what the router does to audio:
//! mu-law (38 dB SNR), resampling 8 → 16 → 8 kHz (0.34 dB passband ripple) and the
//! resamplers' delay, which moves 2–5 ms of the neighbouring frame into the analysed one.
//!
//! # How frames are matched
//!
//! The router's chains turn each 20 ms caller frame into exactly one 20 ms provider frame and
//! back, and WebSockets keep order, so the k-th frame the provider (or the caller) receives
//! is frame k of the session, unless the router lost, duplicated or invented frames. The
//! markers check that: at every marker position the receiver decodes the symbol and compares
//! it with the one frame k carried. Latency is then measured per frame, on one clock, as the
//! difference of the instants at which frame k left one end and arrived at the other.
//! This is the time the router holds a frame (queues, protocol work, DSP, scheduling); the
//! resamplers' algorithmic delay (about 2.3 ms each way at 8 ↔ 16 kHz) shifts the audio
//! *inside* the frames instead, is not part of it, and is reported beside it.
//!
//! Counting is exact: frames sent, received by the provider and received back are counted
//! per session, and a frame is lost if it never arrives (each must come back).

use std::path::Path;
use std::sync::Arc;

/// Samples in one 20 ms frame at 8 kHz, the callers' rate.
pub const CALLER_FRAME_SAMPLES: usize = 160;

/// The callers' sample rate.
pub const CALLER_RATE_HZ: u32 = 8_000;

/// Frames at the start of every session that carry its id.
pub const PREAMBLE_FRAMES: u64 = 4;

/// A sequence marker every this many frames after the preamble (200 ms).
pub const MARKER_PERIOD_FRAMES: u64 = 10;

/// The largest session id the preamble can carry (three base-16 digits).
pub const MAX_SESSION_ID: u32 = 0xfff;

/// Low-group tone frequencies, Hz: multiples of 50 Hz, so whole cycles per 20 ms frame.
const LOW_HZ: [f64; 4] = [700.0, 900.0, 1_100.0, 1_300.0];

/// High-group tone frequencies, Hz.
const HIGH_HZ: [f64; 4] = [1_700.0, 2_100.0, 2_500.0, 2_900.0];

/// Peak amplitude of each tone, of full scale (the pair peaks at -6 dBFS).
const TONE_AMPLITUDE: f64 = 0.25;

/// A symbol is read only if its two tones hold at least this share of the frame's power.
/// Low because Opus (WebRTC callers) codes a tone pair that starts after silence with much
/// added noise: measured on the speech fixture, the pair kept as little as 20% of the frame's
/// power while still dominating its groups by far (the dominance test below is what tells a
/// symbol from speech).
const MIN_TONE_SHARE: f64 = 0.15;

/// ... and each tone is this many times stronger than the next-strongest of its group.
const MIN_DOMINANCE: f64 = 4.0;

/// Frames quieter than this mean square (of full scale; -40 dBFS) hold no symbol.
const MIN_MEAN_SQUARE: f64 = 1e-4;

/// The 8 kHz samples of one 20 ms frame carrying `symbol` (0–15).
pub fn symbol_frame(symbol: u8, sample_rate_hz: u32) -> Vec<i16> {
    let low = LOW_HZ[usize::from(symbol >> 2) & 3];
    let high = HIGH_HZ[usize::from(symbol) & 3];
    let samples = sample_rate_hz as usize / 50;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(sample_rate_hz);
            let x = TONE_AMPLITUDE
                * ((2.0 * std::f64::consts::PI * low * t).sin()
                    + (2.0 * std::f64::consts::PI * high * t).sin());
            (x * 32_767.0).round() as i16
        })
        .collect()
}

/// The symbol a 20 ms frame at `sample_rate_hz` carries, if it carries one clearly.
pub fn decode_symbol(frame: &[i16], sample_rate_hz: u32) -> Option<u8> {
    if frame.is_empty() || sample_rate_hz == 0 {
        return None;
    }
    let n = frame.len() as f64;
    let mean_square = frame
        .iter()
        .map(|&s| (f64::from(s) / 32_768.0).powi(2))
        .sum::<f64>()
        / n;
    if mean_square < MIN_MEAN_SQUARE {
        return None;
    }
    let power = |freq_hz: f64| goertzel_mean_square(frame, sample_rate_hz, freq_hz);
    let low: Vec<f64> = LOW_HZ.iter().map(|&f| power(f)).collect();
    let high: Vec<f64> = HIGH_HZ.iter().map(|&f| power(f)).collect();
    let (low_index, low_power) = strongest(&low)?;
    let (high_index, high_power) = strongest(&high)?;
    if (low_power + high_power) < MIN_TONE_SHARE * mean_square {
        return None;
    }
    // The groups hold four values each, so the indices fit in two bits.
    Some(((low_index as u8) << 2) | high_index as u8)
}

/// The strongest entry and its value, if it dominates the runner-up by [`MIN_DOMINANCE`].
fn strongest(powers: &[f64]) -> Option<(usize, f64)> {
    let mut order: Vec<usize> = (0..powers.len()).collect();
    order.sort_by(|&a, &b| powers[b].total_cmp(&powers[a]));
    let (best, second) = (*order.first()?, *order.get(1)?);
    (powers[best] >= MIN_DOMINANCE * powers[second]).then_some((best, powers[best]))
}

/// The mean-square power (of full scale) of the component of `frame` at `freq_hz`: a tone of
/// amplitude A, a whole number of cycles long, gives A²/2.
fn goertzel_mean_square(frame: &[i16], sample_rate_hz: u32, freq_hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq_hz / f64::from(sample_rate_hz)).cos();
    let (mut s1, mut s2) = (0.0_f64, 0.0_f64);
    for &sample in frame {
        let s = f64::from(sample) / 32_768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let magnitude_sq = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    let n = frame.len() as f64;
    2.0 * magnitude_sq / (n * n)
}

/// The symbol frame `seq` of session `session_id` carries, or `None` for a speech frame.
pub fn expected_symbol(session_id: u32, seq: u64) -> Option<u8> {
    let digits = preamble(session_id);
    if seq < PREAMBLE_FRAMES {
        // `seq` < 4 here.
        return Some(digits[seq as usize]);
    }
    seq.is_multiple_of(MARKER_PERIOD_FRAMES)
        .then_some(((seq / MARKER_PERIOD_FRAMES) % 16) as u8)
}

/// The preamble symbols of `session_id` (taken modulo 4096): three digits and a check.
pub fn preamble(session_id: u32) -> [u8; 4] {
    let id = session_id & MAX_SESSION_ID;
    let d2 = ((id >> 8) & 0xf) as u8;
    let d1 = ((id >> 4) & 0xf) as u8;
    let d0 = (id & 0xf) as u8;
    [d2, d1, d0, check_digit(d2, d1, d0)]
}

/// The session id a decoded preamble names, if its check digit holds.
pub fn session_from_preamble(symbols: [u8; 4]) -> Option<u32> {
    let [d2, d1, d0, check] = symbols;
    if d2 > 15 || d1 > 15 || d0 > 15 || check != check_digit(d2, d1, d0) {
        return None;
    }
    Some((u32::from(d2) << 8) | (u32::from(d1) << 4) | u32::from(d0))
}

/// Weighted, so that swapped digits fail the check.
fn check_digit(d2: u8, d1: u8, d0: u8) -> u8 {
    let sum = 3 * u32::from(d2) + 7 * u32::from(d1) + 11 * u32::from(d0) + 5;
    // Modulo 16, so it fits.
    (sum % 16) as u8
}

/// One frame of silence.
const SILENCE: [i16; CALLER_FRAME_SAMPLES] = [0; CALLER_FRAME_SAMPLES];

/// Whether frame `seq` is the silent guard frame just before a marker.
pub fn is_guard(seq: u64) -> bool {
    seq >= PREAMBLE_FRAMES && (seq + 1).is_multiple_of(MARKER_PERIOD_FRAMES)
}

/// The speech every caller loops: the fixture's samples (8 kHz mono PCM16).
#[derive(Debug, Clone)]
pub struct Speech {
    /// Whole 20 ms frames of speech, never empty.
    samples: Arc<[i16]>,
}

impl Speech {
    /// The 8 kHz mono 16-bit WAV at `path`, cut to whole frames.
    ///
    /// # Errors
    /// A message when the file cannot be read, is not 8 kHz mono 16-bit, or is shorter than
    /// one frame.
    pub fn from_wav(path: &Path) -> Result<Speech, String> {
        let mut reader =
            hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = reader.spec();
        if spec.sample_rate != CALLER_RATE_HZ
            || spec.channels != 1
            || spec.bits_per_sample != 16
            || spec.sample_format != hound::SampleFormat::Int
        {
            return Err(format!(
                "{}: want 8 kHz mono 16-bit PCM, found {} Hz, {} channel(s), {} bits",
                path.display(),
                spec.sample_rate,
                spec.channels,
                spec.bits_per_sample
            ));
        }
        let samples: Vec<i16> = reader
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Speech::from_samples(samples).ok_or_else(|| format!("{}: too short", path.display()))
    }

    /// Speech made of `samples` (8 kHz), cut to whole frames; `None` if under one frame.
    pub fn from_samples(mut samples: Vec<i16>) -> Option<Speech> {
        samples.truncate(samples.len() / CALLER_FRAME_SAMPLES * CALLER_FRAME_SAMPLES);
        (!samples.is_empty()).then(|| Speech {
            samples: samples.into(),
        })
    }

    /// A speech-like stand-in for when the fixture is unavailable: syllable-length bursts of
    /// a gliding tone with harmonics, and pauses, 3 s long.
    pub fn synthetic() -> Speech {
        let rate = CALLER_RATE_HZ;
        let mut samples = Vec::with_capacity(3 * rate as usize);
        for syllable in 0..12_u32 {
            let pitch_hz = 110.0 + 15.0 * f64::from(syllable % 5);
            let sweep =
                voxroute_codecs::measure::log_sweep(pitch_hz, pitch_hz * 1.4, rate, 0.3, 1_600);
            let harmonic = voxroute_codecs::measure::sine(pitch_hz * 3.0, rate, 0.1, 1_600);
            samples.extend(
                sweep
                    .iter()
                    .zip(&harmonic)
                    .map(|(&a, &b)| a.saturating_add(b)),
            );
            samples.extend(std::iter::repeat_n(0, 400));
        }
        // Unwrap is OK because 12 syllables of 2,000 samples are far more than one frame.
        Speech::from_samples(samples).expect("synthetic speech is longer than a frame")
    }

    /// Length in frames.
    pub fn frames(&self) -> usize {
        self.samples.len() / CALLER_FRAME_SAMPLES
    }
}

/// One session's outgoing audio, frame by frame.
#[derive(Debug, Clone)]
pub struct CallerSignal {
    speech: Speech,
    session_id: u32,
    /// Symbol frames, made once per signal (16 of 160 samples).
    symbols: Arc<[Vec<i16>]>,
}

impl CallerSignal {
    /// The signal of session `session_id` (0 to [`MAX_SESSION_ID`]).
    pub fn new(speech: Speech, session_id: u32) -> CallerSignal {
        let symbols: Vec<Vec<i16>> = (0..16)
            .map(|symbol| symbol_frame(symbol, CALLER_RATE_HZ))
            .collect();
        CallerSignal {
            speech,
            session_id,
            symbols: symbols.into(),
        }
    }

    /// Frame `seq` (8 kHz PCM16, [`CALLER_FRAME_SAMPLES`] samples).
    pub fn frame(&self, seq: u64) -> &[i16] {
        if let Some(symbol) = expected_symbol(self.session_id, seq) {
            return &self.symbols[usize::from(symbol)];
        }
        if is_guard(seq) {
            return &SILENCE;
        }
        // Sessions start at different places in the speech, 7 frames apart.
        let frames = self.speech.frames() as u64;
        let index = (seq + 7 * u64::from(self.session_id)) % frames;
        let start = index as usize * CALLER_FRAME_SAMPLES;
        &self.speech.samples[start..start + CALLER_FRAME_SAMPLES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxroute_codecs::opus::OpusEncoderConfig;
    use voxroute_codecs::{AudioFormat, EgressChain, IngressChain, SampleRate};

    fn fixture() -> Speech {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../codecs/tests/fixtures/speech/speech-8k.wav");
        Speech::from_wav(&path).unwrap_or_else(|_| Speech::synthetic())
    }

    /// Every symbol decodes at every rate; speech frames almost never look like a symbol.
    #[test]
    fn symbols_decode_and_speech_does_not() {
        for rate in [8_000, 16_000, 24_000, 48_000] {
            for symbol in 0..16 {
                assert_eq!(
                    decode_symbol(&symbol_frame(symbol, rate), rate),
                    Some(symbol)
                );
            }
        }
        let speech = fixture();
        let false_symbols = (0..speech.frames())
            .filter(|&f| {
                let frame = &speech.samples[f * 160..(f + 1) * 160];
                decode_symbol(frame, 8_000).is_some()
            })
            .count();
        assert!(
            false_symbols * 20 < speech.frames(),
            "{false_symbols} of {} speech frames decode as symbols",
            speech.frames()
        );
        assert_eq!(decode_symbol(&[0; 160], 8_000), None);
    }

    #[test]
    fn preamble_round_trips_and_checks() {
        for id in [0, 1, 15, 16, 255, 1_000, MAX_SESSION_ID] {
            assert_eq!(session_from_preamble(preamble(id)), Some(id));
        }
        let mut bad = preamble(0x123);
        bad.swap(0, 1);
        assert_eq!(session_from_preamble(bad), None);
        assert_eq!(session_from_preamble([16, 0, 0, 0]), None);
    }

    /// The whole round trip of a Twilio session, through the router's own chains: mu-law
    /// 8 kHz in, 16 kHz at the provider, back to mu-law 8 kHz. Every preamble and marker
    /// decodes at its position at both ends.
    #[test]
    fn markers_survive_the_telephony_round_trip() {
        let signal = CallerSignal::new(fixture(), 0xabc);
        let telephony = AudioFormat::telephony_mulaw();
        let provider = SampleRate::HZ_16000;
        let mut ingress = IngressChain::new(telephony, provider).unwrap();
        let mut egress =
            EgressChain::new(provider, telephony, OpusEncoderConfig::default()).unwrap();
        let law = voxroute_codecs::g711::G711Law::Mulaw;
        let mut provider_symbols = Vec::new();
        for seq in 0..400 {
            let mut codes = vec![0u8; 160];
            law.encode(signal.frame(seq), &mut codes).unwrap();
            ingress.push(&codes).unwrap();
            let at_provider = ingress.pop_frame().unwrap().to_vec();
            let back = egress.encode_frame(&at_provider).unwrap().to_vec();
            let mut back_pcm = vec![0i16; 160];
            law.decode(&back, &mut back_pcm).unwrap();
            if let Some(symbol) = expected_symbol(0xabc, seq) {
                assert_eq!(decode_symbol(&at_provider, 16_000), Some(symbol), "{seq}");
                assert_eq!(decode_symbol(&back_pcm, 8_000), Some(symbol), "{seq}");
                if seq < PREAMBLE_FRAMES {
                    provider_symbols.push(symbol);
                }
            }
        }
        let preamble: [u8; 4] = provider_symbols.try_into().unwrap();
        assert_eq!(session_from_preamble(preamble), Some(0xabc));
    }

    /// A frame lost between the ends shifts what arrives at a marker position: detected.
    #[test]
    fn a_lost_frame_is_seen_at_the_next_marker() {
        let signal = CallerSignal::new(fixture(), 7);
        let received: Vec<&[i16]> = (0..40)
            .filter(|&s| s != 13)
            .map(|s| signal.frame(s))
            .collect();
        let position = 20;
        let expected = expected_symbol(7, position as u64);
        assert!(expected.is_some());
        assert_ne!(decode_symbol(received[position], 8_000), expected);
    }
}
