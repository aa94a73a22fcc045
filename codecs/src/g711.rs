//! ITU-T G.711 companding: mu-law and A-law, bit-exact.
//!
//! This module owns the conversion between 16-bit linear PCM and 8-bit G.711 codes, one code
//! per sample, for both laws ([`G711Law`]). It is bit-exact with sox (SoX 14.4.2), whose output
//! for every 16-bit input and every code is checked in `tests/codecs/g711.rs` against the
//! vectors in `tests/fixtures/g711/`.
//!
//! # The algorithm
//!
//! - **Decode** is one lookup in a 256-entry table per law, built at compile time by a
//!   `const fn` from the segment (exponent) and mantissa of the code.
//! - **Encode** is computed: the sample is rounded to the law's native width (14 bits for
//!   mu-law, 13 for A-law, round half up, as sox does), its magnitude is clipped, the segment
//!   comes from `leading_zeros` and the mantissa is the four bits below the leading one: a
//!   dozen integer operations, no table.
//!
//! Neither direction allocates or panics, on any input.
//!
//! # Details a caller may notice
//!
//! - mu-law has two zeros: 0xFF (+0) and 0x7F (-0) both decode to 0. The encoder, like sox's,
//!   only emits 0xFF for 0 (and for -2..=1), so encoding a decoded 0x7F gives 0xFF. Every other
//!   code survives decode → encode unchanged, and decode → encode → decode is the identity on
//!   samples for all 256 codes of both laws.
//! - The encoder rounds to the nearest 14-bit (mu-law) or 13-bit (A-law) value before
//!   companding, as sox does; an encoder that truncates (`sample >> 2`) differs near step
//!   boundaries. -32768 encodes to 0x00 (mu-law) and 0x2A (A-law), the most negative codes;
//!   there is no "zero-code suppression" (mu-law 0x00 is emitted as is).
//! - A-law codes carry the standard even-bit inversion (XOR 0x55); a silent A-law stream is
//!   0xD5/0x55, a silent mu-law stream 0xFF.
//!
//! # What callers must keep
//!
//! G.711 is 8 kHz only (the format rules in [`crate::frame`] refuse any other rate): resample
//! before encoding and after decoding. Codes carry no framing, so one byte is one sample and
//! 20 ms is 160 bytes. Output buffers are the caller's: size them to the input.

use crate::error::CodecError;

/// Which G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// mu-law (North America, Japan; Twilio).
    Mulaw,
    /// A-law (Europe).
    Alaw,
}

/// mu-law bias in the 14-bit domain (0x84 = 132 at 16 bits, 33 at 14 bits).
const MULAW_BIAS_14: i32 = 0x84 >> 2;
/// Largest biased 14-bit mu-law magnitude: the top of segment 7.
const MULAW_MAX_BIASED: i32 = 0x1FFF;
/// Largest 13-bit A-law magnitude.
const ALAW_MAX_13: i32 = 0x0FFF;

/// Linear value of a mu-law code (ITU-T G.711 table 2, 16-bit scale).
const fn mulaw_decode(code: u8) -> i16 {
    // Codes are sent inverted; below, sign (bit 7), segment (bits 6..4), mantissa (bits 3..0).
    let code = !code;
    let segment = ((code >> 4) & 0x07) as u32;
    let mantissa = (code & 0x0F) as i32;
    // Reconstruction at the middle of the step, bias included, then bias removed.
    let magnitude = (((mantissa << 3) + 0x84) << segment) - 0x84;
    if code & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Linear value of an A-law code (ITU-T G.711 table 1, 16-bit scale).
const fn alaw_decode(code: u8) -> i16 {
    // Even bits are sent inverted; below, sign (bit 7, set = positive), segment, mantissa.
    let code = code ^ 0x55;
    let segment = ((code >> 4) & 0x07) as u32;
    let mantissa = (code & 0x0F) as i32;
    // Segments 0 and 1 share a step of 16 (at 16 bits); from segment 2 on, the step doubles
    // and the implicit leading one appears. The `+ 8` puts the value mid-step.
    let magnitude = if segment == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (segment - 1)
    };
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Decodes all 256 codes of one law at compile time.
const fn decode_table(law: G711Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0usize;
    while code < 256 {
        table[code] = match law {
            G711Law::Mulaw => mulaw_decode(code as u8),
            G711Law::Alaw => alaw_decode(code as u8),
        };
        code += 1;
    }
    table
}

/// mu-law code → 16-bit sample.
static MULAW_DECODE: [i16; 256] = decode_table(G711Law::Mulaw);
/// A-law code → 16-bit sample.
static ALAW_DECODE: [i16; 256] = decode_table(G711Law::Alaw);

/// mu-law code of a 16-bit sample.
#[inline]
const fn mulaw_encode(sample: i16) -> u8 {
    // Round to 14 bits (half up), as sox does: -8192..=8192.
    let value = (sample as i32 + 2) >> 2;
    // The sign is carried by the XOR mask, which also applies the transmission inversion.
    let (magnitude, mask) = if value < 0 {
        (-value, 0x7F)
    } else {
        (value, 0xFF)
    };
    // Bias, then clip to the top of segment 7 (sox clips the unbiased value at 8159 and maps
    // 8159 + 33 = 8192 to the same code as 8191).
    let mut biased = magnitude + MULAW_BIAS_14;
    if biased > MULAW_MAX_BIASED {
        biased = MULAW_MAX_BIASED;
    }
    // biased is in 33..=0x1FFF: its leading one is bit 5 (segment 0) to bit 12 (segment 7).
    let segment = 26 - (biased as u32).leading_zeros();
    let mantissa = (biased >> (segment + 1)) & 0x0F;
    (((segment as i32) << 4 | mantissa) ^ mask) as u8
}

/// A-law code of a 16-bit sample.
#[inline]
const fn alaw_encode(sample: i16) -> u8 {
    // Round to 13 bits (half up), as sox does: -4096..=4096.
    let value = (sample as i32 + 4) >> 3;
    // A-law is sign-magnitude with negatives offset by one (-1 → 0), so no -0 code exists.
    let (magnitude, mask) = if value < 0 {
        (-value - 1, 0x55)
    } else {
        (value, 0xD5)
    };
    let magnitude = if magnitude > ALAW_MAX_13 {
        ALAW_MAX_13
    } else {
        magnitude
    };
    // Segment 0 covers 0..32 like segment 1 (no leading one): OR-ing in 0x1F puts the leading
    // one at bit 4 for both, so `segment` is 0 for 0..32 and 1..=7 from bit 5 to bit 11.
    let segment = 27 - ((magnitude | 0x1F) as u32).leading_zeros();
    let shift = if segment == 0 { 1 } else { segment };
    let mantissa = (magnitude >> shift) & 0x0F;
    (((segment as i32) << 4 | mantissa) ^ mask) as u8
}

/// The error for an output of `actual` elements where `needed` are required.
#[cold]
fn buffer_too_small(needed: usize, actual: usize) -> CodecError {
    CodecError::BufferTooSmall { needed, actual }
}

impl G711Law {
    /// Encodes one 16-bit sample to its G.711 code. Total: every `i16` has a code.
    #[inline]
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            G711Law::Mulaw => mulaw_encode(sample),
            G711Law::Alaw => alaw_encode(sample),
        }
    }

    /// Decodes one G.711 code to a 16-bit sample (a table lookup). Total: every `u8` is a code.
    #[inline]
    pub fn decode_sample(self, code: u8) -> i16 {
        match self {
            G711Law::Mulaw => MULAW_DECODE[code as usize],
            G711Law::Alaw => ALAW_DECODE[code as usize],
        }
    }

    /// Decodes `codes` into the first `codes.len()` samples of `pcm` and returns that count.
    /// Samples of `pcm` past it are left as they were.
    ///
    /// # Errors
    /// [`CodecError::BufferTooSmall`] when `pcm` is shorter than `codes`; `pcm` is unchanged.
    pub fn decode(self, codes: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        let Some(out) = pcm.get_mut(..codes.len()) else {
            return Err(buffer_too_small(codes.len(), pcm.len()));
        };
        let table = match self {
            G711Law::Mulaw => &MULAW_DECODE,
            G711Law::Alaw => &ALAW_DECODE,
        };
        for (sample, &code) in out.iter_mut().zip(codes) {
            *sample = table[code as usize];
        }
        Ok(codes.len())
    }

    /// Encodes `pcm` into the first `pcm.len()` bytes of `codes` and returns that count.
    /// Bytes of `codes` past it are left as they were.
    ///
    /// # Errors
    /// [`CodecError::BufferTooSmall`] when `codes` is shorter than `pcm`; `codes` is unchanged.
    pub fn encode(self, pcm: &[i16], codes: &mut [u8]) -> Result<usize, CodecError> {
        let Some(out) = codes.get_mut(..pcm.len()) else {
            return Err(buffer_too_small(pcm.len(), codes.len()));
        };
        // One match per call, not per sample: each loop is a straight run of one law.
        match self {
            G711Law::Mulaw => {
                for (code, &sample) in out.iter_mut().zip(pcm) {
                    *code = mulaw_encode(sample);
                }
            }
            G711Law::Alaw => {
                for (code, &sample) in out.iter_mut().zip(pcm) {
                    *code = alaw_encode(sample);
                }
            }
        }
        Ok(pcm.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAWS: [G711Law; 2] = [G711Law::Mulaw, G711Law::Alaw];

    /// The code for magnitude step `index` (0..128, increasing) with the given sign.
    fn code_of(law: G711Law, positive: bool, index: u8) -> u8 {
        match law {
            // All bits inverted; after inversion the sign bit is set for negatives.
            G711Law::Mulaw => !(index | if positive { 0x00 } else { 0x80 }),
            // Even bits inverted; after inversion the sign bit is set for positives.
            G711Law::Alaw => (index | if positive { 0x80 } else { 0x00 }) ^ 0x55,
        }
    }

    #[test]
    fn decode_encode_decode_is_identity_on_every_code() {
        for law in LAWS {
            for code in 0..=255u8 {
                let sample = law.decode_sample(code);
                let again = law.encode_sample(sample);
                assert_eq!(law.decode_sample(again), sample, "{law:?} code {code:#04x}");
                // Codes survive too, but for mu-law's -0, which encodes as +0 (sox does too).
                let expected = if law == G711Law::Mulaw && code == 0x7F {
                    0xFF
                } else {
                    code
                };
                assert_eq!(again, expected, "{law:?} code {code:#04x}");
            }
        }
    }

    #[test]
    fn mulaw_has_two_zeros_and_alaw_none() {
        assert_eq!(G711Law::Mulaw.decode_sample(0xFF), 0);
        assert_eq!(G711Law::Mulaw.decode_sample(0x7F), 0);
        assert_eq!(G711Law::Mulaw.encode_sample(0), 0xFF);
        assert_eq!(G711Law::Alaw.decode_sample(0xD5), 8);
        assert_eq!(G711Law::Alaw.decode_sample(0x55), -8);
        assert_eq!(G711Law::Alaw.encode_sample(0), 0xD5);
    }

    #[test]
    fn extremes_encode_to_the_outermost_codes() {
        assert_eq!(G711Law::Mulaw.encode_sample(i16::MIN), 0x00);
        assert_eq!(G711Law::Mulaw.encode_sample(i16::MAX), 0x80);
        assert_eq!(G711Law::Mulaw.decode_sample(0x80), 32124);
        assert_eq!(G711Law::Alaw.encode_sample(i16::MIN), 0x2A);
        assert_eq!(G711Law::Alaw.encode_sample(i16::MAX), 0xAA);
        assert_eq!(G711Law::Alaw.decode_sample(0xAA), 32256);
    }

    #[test]
    fn decode_is_odd_and_strictly_increasing_in_magnitude() {
        for law in LAWS {
            let mut previous = None;
            for index in 0..128u8 {
                let positive = law.decode_sample(code_of(law, true, index));
                let negative = law.decode_sample(code_of(law, false, index));
                assert!(positive >= 0, "{law:?} step {index}");
                assert_eq!(negative, -positive, "{law:?} step {index}");
                if let Some(previous) = previous {
                    assert!(positive > previous, "{law:?} step {index}");
                }
                previous = Some(positive);
            }
        }
    }

    #[test]
    fn encode_then_decode_is_monotonic_over_all_samples() {
        for law in LAWS {
            let mut previous = i16::MIN;
            for sample in i16::MIN..=i16::MAX {
                let decoded = law.decode_sample(law.encode_sample(sample));
                assert!(decoded >= previous, "{law:?} sample {sample}");
                previous = decoded;
            }
        }
    }

    #[test]
    fn short_outputs_are_refused_and_left_untouched() {
        for law in LAWS {
            let mut pcm = [7i16; 2];
            assert_eq!(
                law.decode(&[0, 1, 2], &mut pcm),
                Err(CodecError::BufferTooSmall {
                    needed: 3,
                    actual: 2
                })
            );
            assert_eq!(pcm, [7, 7]);
            let mut codes = [7u8; 1];
            assert_eq!(
                law.encode(&[0, 1], &mut codes),
                Err(CodecError::BufferTooSmall {
                    needed: 2,
                    actual: 1
                })
            );
            assert_eq!(codes, [7]);
        }
    }

    #[test]
    fn longer_outputs_keep_their_tail() {
        let mut pcm = [7i16; 3];
        assert_eq!(G711Law::Mulaw.decode(&[0xFF], &mut pcm), Ok(1));
        assert_eq!(pcm, [0, 7, 7]);
        let mut codes = [7u8; 3];
        assert_eq!(G711Law::Alaw.encode(&[0, 0], &mut codes), Ok(2));
        assert_eq!(codes, [0xD5, 0xD5, 7]);
    }
}
