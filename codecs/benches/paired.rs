//! The chain/raw cost ratio, measured so that machine noise cancels: for each case, rounds of
//! `FRAMES_PER_BLOCK` frames alternate chain and raw calls in ABBA order, and the ratio is the
//! median of the per-round ratios. Also prints each side's median cost per 20 ms frame and the
//! sessions-per-core bound of the chain (20 ms ÷ cost, one direction).
//!
//! Run: `cargo bench -p voxroute-codecs --bench paired`.

mod common;

use std::time::Instant;

const ROUNDS: usize = 101;
const FRAMES_PER_BLOCK: usize = 100;

fn block(step: &mut dyn FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..FRAMES_PER_BLOCK {
        step();
    }
    started.elapsed().as_secs_f64() * 1e6 / FRAMES_PER_BLOCK as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument restricts the cases.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    println!(
        "| case | chain µs/frame | raw µs/frame | chain ÷ raw (median, p10–p90) | sessions per core, this direction alone (20 ms ÷ chain) |"
    );
    println!("|---|---|---|---|---|");
    for mut case in common::cases() {
        if filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        for _ in 0..3 {
            block(&mut case.chain);
            block(&mut case.raw);
        }
        let (mut chain, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (c, r) = if round % 2 == 0 {
                let c = block(&mut case.chain);
                (c, block(&mut case.raw))
            } else {
                let r = block(&mut case.raw);
                (block(&mut case.chain), r)
            };
            chain.push(c);
            raw.push(r);
            ratios.push(c / r);
        }
        let chain_us = median(&mut chain);
        let raw_us = median(&mut raw);
        let ratio = median(&mut ratios);
        let (p10, p90) = (ratios[ROUNDS / 10], ratios[ROUNDS * 9 / 10]);
        println!(
            "| {} | {chain_us:.2} | {raw_us:.2} | {ratio:.3} ({p10:.3}–{p90:.3}) | {:.0} |",
            case.name,
            20_000.0 / chain_us
        );
    }
}
