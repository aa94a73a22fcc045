//! Fuzzes the Opus decoder with arbitrary packets and losses; it must never panic.
//!
//! The input is a sequence of records, each a length byte `L` then `L` bytes of packet (the
//! last packet takes what is left if the input is short). `L == 0` is a lost packet and calls
//! `conceal`. Errors are expected (most fuzz packets are garbage); a panic, or a sample count
//! larger than the buffer, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxroute_codecs::Channels;
use voxroute_codecs::opus::OpusDecoder;

/// 120 ms at 48 kHz, the longest an Opus packet can decode to.
const MAX_SAMPLES: usize = 5760;

fuzz_target!(|data: &[u8]| {
    let Ok(mut decoder) = OpusDecoder::new(Channels::Mono) else {
        return;
    };
    let mut pcm = vec![0i16; MAX_SAMPLES];
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let result = if packet.is_empty() {
            decoder.conceal(&mut pcm)
        } else {
            decoder.decode(packet, &mut pcm)
        };
        if let Ok(samples) = result {
            assert!(
                samples <= pcm.len(),
                "{samples} samples from a {MAX_SAMPLES} buffer"
            );
        }
    }
});
