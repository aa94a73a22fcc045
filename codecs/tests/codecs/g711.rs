//! G.711 against sox: every 16-bit sample and every code, both laws, bit for bit.
//!
//! The reference vectors in `tests/fixtures/g711/` come from sox, an implementation
//! independent of ours; `generate.sh` there rebuilds them. The inputs are not shipped: they are
//! every `i16` from -32768 up and every `u8` from 0 up, rebuilt here.

use voxroute_codecs::CodecError;
use voxroute_codecs::g711::G711Law;

const MULAW_ENCODE: &[u8] = include_bytes!("../fixtures/g711/mulaw-encode.u8");
const ALAW_ENCODE: &[u8] = include_bytes!("../fixtures/g711/alaw-encode.u8");
const MULAW_DECODE: &[u8] = include_bytes!("../fixtures/g711/mulaw-decode.s16le");
const ALAW_DECODE: &[u8] = include_bytes!("../fixtures/g711/alaw-decode.s16le");

const LAWS: [G711Law; 2] = [G711Law::Mulaw, G711Law::Alaw];

/// Every i16, in the order the fixtures were made from.
fn all_samples() -> Vec<i16> {
    (i16::MIN..=i16::MAX).collect()
}

/// Every code, in the order the fixtures were made from.
fn all_codes() -> Vec<u8> {
    (0..=u8::MAX).collect()
}

/// sox's codes for [`all_samples`].
fn sox_encoded(law: G711Law) -> &'static [u8] {
    let codes = match law {
        G711Law::Mulaw => MULAW_ENCODE,
        G711Law::Alaw => ALAW_ENCODE,
    };
    assert_eq!(codes.len(), 65_536, "{law:?} encode fixture");
    codes
}

/// sox's samples for [`all_codes`].
fn sox_decoded(law: G711Law) -> Vec<i16> {
    let bytes = match law {
        G711Law::Mulaw => MULAW_DECODE,
        G711Law::Alaw => ALAW_DECODE,
    };
    assert_eq!(bytes.len(), 512, "{law:?} decode fixture");
    bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

/// Proves `encode_sample` is bit-exact with sox on the whole input domain of both laws,
/// including the rounding to 14/13 bits, the clipping near ±32767 and the zero codes.
#[test]
fn encode_sample_matches_sox_on_every_i16() {
    for law in LAWS {
        let expected = sox_encoded(law);
        let mismatches: Vec<(i16, u8, u8)> = all_samples()
            .into_iter()
            .zip(expected)
            .map(|(sample, &sox)| (sample, law.encode_sample(sample), sox))
            .filter(|(_, ours, sox)| ours != sox)
            .collect();
        assert!(
            mismatches.is_empty(),
            "{law:?}: {} of 65536 differ; first (sample, ours, sox): {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(8)]
        );
    }
}

/// Proves `decode_sample` is bit-exact with sox on all 256 codes of both laws (mu-law's two
/// zeros, 0x7F and 0xFF, included).
#[test]
fn decode_sample_matches_sox_on_every_code() {
    for law in LAWS {
        let ours: Vec<i16> = all_codes()
            .into_iter()
            .map(|code| law.decode_sample(code))
            .collect();
        assert_eq!(ours, sox_decoded(law), "{law:?}");
    }
}

/// Proves the bulk `encode` gives the same bytes as `encode_sample` (and so as sox), in one
/// call over the whole domain and over 20 ms (160-sample) frames.
#[test]
fn bulk_encode_equals_per_sample_encode() {
    let samples = all_samples();
    for law in LAWS {
        let mut codes = vec![0u8; samples.len()];
        assert_eq!(law.encode(&samples, &mut codes), Ok(samples.len()));
        assert_eq!(codes, sox_encoded(law), "{law:?} in one call");

        let mut frame_codes = [0u8; 160];
        for (frame, expected) in samples.chunks(160).zip(sox_encoded(law).chunks(160)) {
            assert_eq!(law.encode(frame, &mut frame_codes), Ok(frame.len()));
            let per_sample: Vec<u8> = frame.iter().map(|&s| law.encode_sample(s)).collect();
            assert_eq!(&frame_codes[..frame.len()], per_sample, "{law:?} per frame");
            assert_eq!(&frame_codes[..frame.len()], expected, "{law:?} per frame");
        }
    }
}

/// Proves the bulk `decode` gives the same samples as `decode_sample` (and so as sox).
#[test]
fn bulk_decode_equals_per_sample_decode() {
    let codes = all_codes();
    for law in LAWS {
        let mut pcm = vec![0i16; codes.len()];
        assert_eq!(law.decode(&codes, &mut pcm), Ok(codes.len()));
        let per_sample: Vec<i16> = codes.iter().map(|&c| law.decode_sample(c)).collect();
        assert_eq!(pcm, per_sample, "{law:?}");
        assert_eq!(pcm, sox_decoded(law), "{law:?}");
    }
}

/// Proves a short output buffer is an error naming both lengths, never a panic or a partial
/// write.
#[test]
fn short_outputs_are_buffer_too_small() {
    for law in LAWS {
        let mut pcm = [1i16; 159];
        assert_eq!(
            law.decode(&[0xFF; 160], &mut pcm),
            Err(CodecError::BufferTooSmall {
                needed: 160,
                actual: 159
            })
        );
        assert_eq!(pcm, [1; 159], "{law:?} decode wrote into a refused buffer");

        let mut codes = [1u8; 159];
        assert_eq!(
            law.encode(&[0; 160], &mut codes),
            Err(CodecError::BufferTooSmall {
                needed: 160,
                actual: 159
            })
        );
        assert_eq!(
            codes, [1; 159],
            "{law:?} encode wrote into a refused buffer"
        );

        assert!(law.decode(&[0], &mut []).is_err());
        assert!(law.encode(&[0], &mut []).is_err());
    }
}

/// Proves empty input is `Ok(0)` and touches nothing, whatever the output's length.
#[test]
fn empty_input_is_ok_zero() {
    for law in LAWS {
        assert_eq!(law.decode(&[], &mut []), Ok(0));
        assert_eq!(law.encode(&[], &mut []), Ok(0));
        let mut pcm = [5i16; 4];
        assert_eq!(law.decode(&[], &mut pcm), Ok(0));
        assert_eq!(pcm, [5; 4]);
        let mut codes = [5u8; 4];
        assert_eq!(law.encode(&[], &mut codes), Ok(0));
        assert_eq!(codes, [5; 4]);
    }
}
