//! Streaming sample-rate conversion, 20 ms in and 20 ms out, with rubato.
//!
//! [`StreamResampler`] converts one mono stream between two [`SampleRate`]s frame by frame:
//! every call takes exactly one 20 ms frame at the input rate and returns exactly one 20 ms
//! frame at the output rate. The filter state is kept across calls, so frame edges are
//! seamless (no clicks), and the cost of building the filter is paid once per session.
//!
//! # The resampler, and why
//!
//! rubato's asynchronous sinc resampler ([`rubato::Async::new_sinc`]) with a short
//! Blackman-windowed sinc, [`DEFAULT_SINC_LEN`] taps at the lower of the two rates, cut off at
//! [`CUTOFF`] of the lower Nyquist frequency. Measured (8 ↔ 16 kHz): 2.0 ms algorithmic delay,
//! passband gain within −0.34 dB up to 85% of the lower Nyquist frequency (3.4 kHz at 8 kHz),
//! alias and image rejection of 77 dB or more. Latency matters more than the last dB of
//! stop-band here: rubato's FFT resampler is cheaper per sample but holds a whole FFT block,
//! 10 ms at these chunk sizes, before it can emit anything; a 128-tap sinc is flat to 0.01 dB
//! but costs 8 ms. rubato's automatic cutoff (and its default Blackman-Harris² window) is
//! tuned for long filters and would cut speech at a quarter of the band with 32 taps, hence
//! the explicit window and cutoff. Every candidate's figures are in `docs/performance.md`,
//! from `cargo run --release -p voxroute-codecs --example resampler_study`.
//!
//! For the ratios between 8, 16, 24 and 48 kHz (and any ratio whose output step is a whole
//! fraction `1/q` of an input sample with small `q`), every output sample falls exactly on
//! one of `q` sub-sample phases. The sinc table is then built at exactly those phases and
//! read with nearest-phase lookup: one dot product per output sample, with no interpolation
//! error, i.e. a plain polyphase FIR. Other ratios (44.1 kHz, say) use cubic interpolation
//! between 128 phases, rubato's high-quality default.
//!
//! # What callers must keep
//!
//! - One resampler per stream and direction; call [`StreamResampler::process_frame`] with
//!   consecutive frames. [`StreamResampler::reset`] starts a new stream (after a barge-in
//!   flush the old tail must not leak into new audio).
//! - The output lags the input by [`StreamResampler::delay_samples`] samples at the output
//!   rate: the filter's group delay plus a few samples queued ahead so that every call can
//!   hand out a whole frame.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::error::CodecError;
use crate::frame::SampleRate;

/// Sinc filter length (taps at the lower of the two rates) used by [`StreamResampler::new`],
/// chosen by measurement: see the module documentation.
pub const DEFAULT_SINC_LEN: usize = 32;

/// Cut-off of the anti-alias filter, relative to the lower of the two Nyquist frequencies.
pub const CUTOFF: f32 = 0.95;

/// Window of the sinc filter: Blackman keeps 77 dB of rejection at 32 taps with a flat
/// passband, where rubato's default (Blackman-Harris²) needs far longer filters.
const WINDOW: WindowFunction = WindowFunction::Blackman;

/// Largest number of exact sub-sample phases built into a polyphase table; ratios that need
/// more fall back to cubic interpolation between [`INTERPOLATED_PHASES`] phases.
const MAX_EXACT_PHASES: usize = 64;

/// Phases of the sinc table for ratios that are not a small whole fraction.
const INTERPOLATED_PHASES: usize = 128;

/// Extra zero samples queued ahead of the output, beyond what the first call falls short by,
/// so that the ±1-sample variation of later calls around the exact ratio never leaves a frame
/// short.
const JITTER_MARGIN_SAMPLES: usize = 1;

/// Converts one mono stream of 20 ms PCM16 frames between two rates.
pub struct StreamResampler {
    from: SampleRate,
    to: SampleRate,
    /// `None` when both rates are equal: frames are copied through.
    engine: Option<Engine>,
}

struct Engine {
    resampler: Async<f32>,
    /// One input frame converted to f32.
    input: Box<[f32]>,
    /// Output samples produced but not handed out yet: `pending[..pending_len]`. Sized for
    /// the margin, a frame's worth of leftovers and rubato's largest single output.
    pending: Box<[f32]>,
    pending_len: usize,
    /// Zero samples queued ahead of the stream, at start and after each reset: what rubato's
    /// first call falls short of a frame by (its lookahead) plus [`JITTER_MARGIN_SAMPLES`].
    margin_samples: usize,
    sinc_len: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from_hz", &self.from.hz())
            .field("to_hz", &self.to.hz())
            .field("delay_samples", &self.delay_samples())
            .finish()
    }
}

impl StreamResampler {
    /// A resampler from `from` to `to` with the default filter ([`DEFAULT_SINC_LEN`]).
    ///
    /// # Errors
    /// [`CodecError::Resampler`] if rubato refuses the configuration.
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, CodecError> {
        Self::with_sinc_len(from, to, DEFAULT_SINC_LEN)
    }

    /// A resampler with a sinc filter `sinc_len` taps long at the lower of the two rates
    /// (rubato rounds it up to a multiple of 8): longer filters keep more of the passband and
    /// reject more aliasing, at a longer delay and a higher cost. For measurement and tuning;
    /// sessions use [`new`](Self::new).
    ///
    /// # Errors
    /// [`CodecError::Resampler`] if rubato refuses the configuration (e.g. `sinc_len` 0).
    pub fn with_sinc_len(
        from: SampleRate,
        to: SampleRate,
        sinc_len: usize,
    ) -> Result<Self, CodecError> {
        if from == to {
            return Ok(StreamResampler {
                from,
                to,
                engine: None,
            });
        }
        if sinc_len == 0 {
            return Err(CodecError::Resampler("sinc length must be positive"));
        }
        let ratio = to.hz() as f64 / from.hz() as f64;
        let parameters = sinc_parameters(from, to, sinc_len);
        let resampler = Async::<f32>::new_sinc(
            ratio,
            1.0,
            &parameters,
            from.samples_per_frame(),
            1,
            FixedAsync::Input,
        )
        .map_err(|_| CodecError::Resampler("rubato refused the sinc configuration"))?;
        let out_frame = to.samples_per_frame();
        let margin_samples =
            out_frame.saturating_sub(resampler.output_frames_next()) + JITTER_MARGIN_SAMPLES;
        let pending = vec![0.0; out_frame + resampler.output_frames_max() + margin_samples];
        Ok(StreamResampler {
            from,
            to,
            engine: Some(Engine {
                resampler,
                input: vec![0.0; from.samples_per_frame()].into_boxed_slice(),
                pending: pending.into_boxed_slice(),
                pending_len: margin_samples,
                margin_samples,
                sinc_len,
            }),
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Sinc filter length in taps, or 0 when rates are equal and frames pass through.
    pub fn sinc_len(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.sinc_len)
    }

    /// How far the output lags the input, in samples at the output rate: the sinc filter's
    /// group delay as rubato reports it, plus the zeros queued ahead of the stream. Zero for
    /// pass-through.
    pub fn delay_samples(&self) -> usize {
        self.engine
            .as_ref()
            .map_or(0, |e| e.resampler.output_delay() + e.margin_samples)
    }

    /// [`delay_samples`](Self::delay_samples) in milliseconds.
    pub fn delay_ms(&self) -> f64 {
        self.delay_samples() as f64 * 1000.0 / self.to.hz() as f64
    }

    /// Converts one 20 ms frame at the input rate into one 20 ms frame at the output rate.
    ///
    /// # Errors
    /// [`CodecError::FrameLength`] unless `input` and `output` are exactly one frame at their
    /// rates; nothing is consumed then. [`CodecError::Resampler`] if rubato fails a call,
    /// which would be a bug in the sizes computed here.
    pub fn process_frame(&mut self, input: &[i16], output: &mut [i16]) -> Result<(), CodecError> {
        check_frame(input.len(), self.from.samples_per_frame())?;
        check_frame(output.len(), self.to.samples_per_frame())?;
        let Some(engine) = self.engine.as_mut() else {
            output.copy_from_slice(input);
            return Ok(());
        };
        for (dst, &src) in engine.input.iter_mut().zip(input) {
            *dst = f32::from(src) * (1.0 / 32_768.0);
        }
        let frames_in = engine.input.len();
        let adapter_in = InterleavedSlice::new(&engine.input[..], 1, frames_in)
            .map_err(|_| CodecError::Resampler("input adapter size"))?;
        // rubato writes straight behind what is already pending: no intermediate copy.
        let start = engine.pending_len;
        let room = engine.pending.len() - start;
        let mut adapter_out = InterleavedSlice::new_mut(&mut engine.pending[start..], 1, room)
            .map_err(|_| CodecError::Resampler("output adapter size"))?;
        let (_, written) = engine
            .resampler
            .process_into_buffer(&adapter_in, &mut adapter_out, None)
            .map_err(|_| CodecError::Resampler("rubato failed to process a frame"))?;
        engine.pending_len += written;
        let out_len = output.len();
        if engine.pending_len < out_len {
            // The margin covers rubato's ±1-sample variation; running dry means the margin
            // is wrong, and that is this module's bug, not the caller's input.
            debug_assert!(false, "resampler ran dry: margin too small");
            return Err(CodecError::Resampler("resampler output ran dry"));
        }
        for (dst, &src) in output.iter_mut().zip(&engine.pending[..out_len]) {
            // Clamp, then round half away from zero by truncating `x ± 0.5`. Clamping in float
            // first keeps the casts in range, so the loop vectorises; `f32::round` would be a
            // libm call per sample on baseline x86-64 (no SSE4.1), and a saturating cast
            // straight to i16 does not vectorise: either cost up to a third of the telephony
            // chains (benches/paired.rs).
            let scaled = (src * 32_768.0).clamp(-32_768.0, 32_767.0);
            *dst = (scaled + 0.5f32.copysign(scaled)) as i32 as i16;
        }
        engine.pending.copy_within(out_len..engine.pending_len, 0);
        engine.pending_len -= out_len;
        Ok(())
    }

    /// Forgets the stream so far: filter history and queued output. The next frame is
    /// treated as the start of a new stream.
    pub fn reset(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.resampler.reset();
            engine.pending[..engine.margin_samples].fill(0.0);
            engine.pending_len = engine.margin_samples;
        }
    }
}

/// The rubato sinc configuration [`StreamResampler`] builds for `from → to` with a filter of
/// `sinc_len` taps at the lower rate. Public so that benchmarks can time rubato alone with
/// exactly the filter sessions use; sessions themselves just call [`StreamResampler::new`].
pub fn sinc_parameters(
    from: SampleRate,
    to: SampleRate,
    sinc_len: usize,
) -> SincInterpolationParameters {
    // The output step in input samples is from/to = p/q in lowest terms; q phases suffice.
    let phases = to.hz() / gcd(from.hz(), to.hz());
    let (phases, interpolation) = if phases as usize <= MAX_EXACT_PHASES {
        (phases as usize, SincInterpolationType::Nearest)
    } else {
        (INTERPOLATED_PHASES, SincInterpolationType::Cubic)
    };
    // rubato counts taps at the input rate; when downsampling, the band edge that matters
    // is the output's, so the filter must be longer by the ratio to be as sharp there.
    let taps_at_input = if to < from {
        (sinc_len as u64 * from.hz() as u64).div_ceil(to.hz() as u64) as usize
    } else {
        sinc_len
    };
    SincInterpolationParameters::new(taps_at_input, WINDOW)
        .f_cutoff(CUTOFF)
        .oversampling_factor(phases)
        .interpolation(interpolation)
}

fn check_frame(actual_samples: usize, expected_samples: usize) -> Result<(), CodecError> {
    if actual_samples != expected_samples {
        return Err(CodecError::FrameLength {
            expected_samples,
            actual_samples,
        });
    }
    Ok(())
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(hz: u32) -> SampleRate {
        SampleRate::new(hz).unwrap()
    }

    #[test]
    fn every_call_is_exactly_one_frame_over_a_long_run() {
        for (from, to) in [
            (8_000, 16_000),
            (48_000, 16_000),
            (16_000, 24_000),
            (44_100, 16_000),
            (24_000, 8_000),
        ] {
            let mut resampler = StreamResampler::new(rate(from), rate(to)).unwrap();
            let input = vec![1_000i16; rate(from).samples_per_frame()];
            let mut output = vec![0i16; rate(to).samples_per_frame()];
            for _ in 0..3_000 {
                resampler.process_frame(&input, &mut output).unwrap();
            }
            // After the delay a constant input comes out as the same constant.
            assert!(
                output.iter().all(|&s| (s - 1_000).abs() <= 20),
                "{from}->{to}"
            );
        }
    }

    #[test]
    fn wrong_frame_lengths_are_refused_and_consume_nothing() {
        let mut resampler = StreamResampler::new(rate(8_000), rate(16_000)).unwrap();
        let mut output = [0i16; 320];
        assert_eq!(
            resampler.process_frame(&[0; 159], &mut output),
            Err(CodecError::FrameLength {
                expected_samples: 160,
                actual_samples: 159
            })
        );
        assert_eq!(
            resampler.process_frame(&[0; 160], &mut output[..300]),
            Err(CodecError::FrameLength {
                expected_samples: 320,
                actual_samples: 300
            })
        );
        assert!(resampler.process_frame(&[0; 160], &mut output).is_ok());
    }

    #[test]
    fn equal_rates_pass_through_without_delay() {
        let mut resampler = StreamResampler::new(rate(16_000), rate(16_000)).unwrap();
        let input: Vec<i16> = (0..320).map(|i| i as i16).collect();
        let mut output = vec![0; 320];
        resampler.process_frame(&input, &mut output).unwrap();
        assert_eq!(input, output);
        assert_eq!(resampler.delay_samples(), 0);
    }

    #[test]
    fn zero_sinc_len_is_an_error() {
        assert!(StreamResampler::with_sinc_len(rate(8_000), rate(16_000), 0).is_err());
    }
}
