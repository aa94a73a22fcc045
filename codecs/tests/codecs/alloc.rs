//! Proves the hot path allocates nothing: once a session's chains are warm, pushing,
//! popping, resampling and encoding frames makes no heap allocation.
//!
//! A counting global allocator wraps the system one and counts, per thread, every allocation
//! made while counting is switched on; tests run on their own threads, so other tests running
//! at the same time do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use voxroute_codecs::g711::G711Law;
use voxroute_codecs::opus::{FRAME_SAMPLES, OpusEncoder, OpusEncoderConfig};
use voxroute_codecs::{AudioFormat, Channels, EgressChain, IngressChain, SampleRate};

use crate::fixture::{speech_8k, speech_48k};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations `work` makes on this thread.
fn allocations_in(work: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Runs every payload through ingress and, as an echo, back through egress.
fn run(ingress: &mut IngressChain, egress: &mut EgressChain, payloads: &[Vec<u8>]) -> usize {
    let mut bytes_out = 0;
    for payload in payloads {
        ingress.push(payload).unwrap();
        while let Some(frame) = ingress.pop_frame() {
            bytes_out += egress.encode_frame(frame).unwrap().len();
        }
    }
    bytes_out
}

/// The telephony chain pair (mu-law 8 kHz ↔ 16 kHz) allocates nothing per frame once warm.
#[test]
fn telephony_chains_do_not_allocate_per_frame() {
    let payloads: Vec<Vec<u8>> = speech_8k()
        .chunks_exact(160)
        .map(|frame| {
            let mut codes = vec![0u8; 160];
            G711Law::Mulaw.encode(frame, &mut codes).unwrap();
            codes
        })
        .collect();
    let format = AudioFormat::telephony_mulaw();
    let mut ingress = IngressChain::new(format, SampleRate::HZ_16000).unwrap();
    let mut egress =
        EgressChain::new(SampleRate::HZ_16000, format, OpusEncoderConfig::default()).unwrap();
    let (warm, hot) = payloads.split_at(5);
    run(&mut ingress, &mut egress, warm);
    let mut bytes = 0;
    let count = allocations_in(|| bytes = run(&mut ingress, &mut egress, hot));
    assert_eq!(count, 0, "allocations over {} frames", hot.len());
    assert_eq!(bytes, hot.len() * 160);
}

/// The WebRTC chain pair (Opus 48 kHz ↔ 24 kHz), including concealment of a lost packet,
/// allocates nothing per frame once warm.
#[test]
fn webrtc_chains_do_not_allocate_per_frame() {
    let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let payloads: Vec<Vec<u8>> = speech_48k()
        .chunks_exact(FRAME_SAMPLES)
        .map(|frame| encoder.encode(frame).unwrap().to_vec())
        .collect();
    let format = AudioFormat::opus(Channels::Mono);
    let mut ingress = IngressChain::new(format, SampleRate::HZ_24000).unwrap();
    let mut egress =
        EgressChain::new(SampleRate::HZ_24000, format, OpusEncoderConfig::default()).unwrap();
    let (warm, hot) = payloads.split_at(5);
    run(&mut ingress, &mut egress, warm);
    let count = allocations_in(|| {
        run(&mut ingress, &mut egress, hot);
        ingress.push_lost().unwrap();
        ingress.push_recovered(&hot[0]).unwrap();
        while ingress.pop_frame().is_some() {}
    });
    assert_eq!(count, 0, "allocations over {} frames", hot.len());
}

/// The counter works: a `Vec` made while counting is seen.
#[test]
fn the_counter_sees_allocations() {
    let count = allocations_in(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert!(count >= 1);
}
