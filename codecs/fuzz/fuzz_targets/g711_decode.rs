//! Fuzzes G.711 decode and encode on arbitrary bytes, both laws.
//!
//! The input is decoded as codes, 20 ms (160 codes) at a time, then re-encoded and decoded
//! again: decode → encode → decode must give back the same samples (mu-law's -0, 0x7F, comes
//! back as +0, 0xFF, which decodes to the same 0). The same bytes read as little-endian i16 are
//! encoded too: encode → decode → encode must give back the same codes. Neither direction may
//! panic, and the bulk calls must agree with the per-sample ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxroute_codecs::g711::G711Law;

/// Samples (and codes) in one 20 ms frame at 8 kHz.
const FRAME: usize = 160;

fuzz_target!(|data: &[u8]| {
    for law in [G711Law::Mulaw, G711Law::Alaw] {
        let mut pcm = [0i16; FRAME];
        let mut codes = [0u8; FRAME];
        let mut pcm_again = [0i16; FRAME];
        for chunk in data.chunks(FRAME) {
            let n = chunk.len();
            assert_eq!(law.decode(chunk, &mut pcm), Ok(n));
            assert_eq!(law.encode(&pcm[..n], &mut codes), Ok(n));
            assert_eq!(law.decode(&codes[..n], &mut pcm_again), Ok(n));
            assert_eq!(pcm[..n], pcm_again[..n], "{law:?}: decode→encode→decode");
            for i in 0..n {
                assert_eq!(pcm[i], law.decode_sample(chunk[i]), "{law:?}");
                assert_eq!(codes[i], law.encode_sample(pcm[i]), "{law:?}");
            }
        }

        let samples: Vec<i16> = data
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        for frame in samples.chunks(FRAME) {
            let n = frame.len();
            assert_eq!(law.encode(frame, &mut codes), Ok(n));
            assert_eq!(law.decode(&codes[..n], &mut pcm), Ok(n));
            let mut codes_again = [0u8; FRAME];
            assert_eq!(law.encode(&pcm[..n], &mut codes_again), Ok(n));
            assert_eq!(
                codes[..n],
                codes_again[..n],
                "{law:?}: encode→decode→encode"
            );
        }
    }
});
