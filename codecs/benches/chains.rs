//! Criterion: the cost of one 20 ms frame through each per-session chain and through the raw
//! library calls it wraps (G.711, libopus, rubato with the identical filter), plus libopus
//! encode cost per complexity. Absolute figures; for the chain/raw ratio on a noisy machine
//! see `benches/paired.rs`, which interleaves the two.
//!
//! Run: `cargo bench -p voxroute-codecs` (add `-- ingress` etc. to filter). Figures and the
//! sessions-per-core bound they imply are recorded in `docs/performance.md`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use voxroute_codecs::opus::{FRAME_SAMPLES, OpusEncoder, OpusEncoderConfig};

fn chains(c: &mut Criterion) {
    for mut case in common::cases() {
        let mut group = c.benchmark_group(&case.name);
        group.bench_function("voxroute chain", |b| b.iter(&mut case.chain));
        group.bench_function("raw calls", |b| b.iter(&mut case.raw));
        group.finish();
    }
}

fn opus_complexity(c: &mut Criterion) {
    let speech = common::speech("speech-48k.wav");
    let frames: Vec<&[i16]> = speech.chunks_exact(FRAME_SAMPLES).collect();
    let mut group = c.benchmark_group("opus encode 20 ms by complexity");
    for complexity in 0..=10 {
        let mut encoder = OpusEncoder::new(OpusEncoderConfig {
            complexity,
            ..OpusEncoderConfig::default()
        })
        .unwrap();
        let mut i = 0;
        group.bench_function(format!("complexity {complexity:>2}"), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                black_box(encoder.encode(black_box(frames[i])).unwrap().len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40);
    targets = chains, opus_complexity
}
criterion_main!(benches);
