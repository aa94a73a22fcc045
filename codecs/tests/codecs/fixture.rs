//! Loads the shipped speech fixtures (see `fixtures/speech/README.md`).

use std::path::Path;

fn load(name: &str) -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/speech")
        .join(name);
    let mut reader = hound::WavReader::open(&path).expect("speech fixture is shipped");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.bits_per_sample),
        (1, 16),
        "{name} is mono PCM16"
    );
    reader
        .samples::<i16>()
        .map(|s| s.expect("fixture decodes"))
        .collect()
}

/// About 3.4 s of synthetic speech at 48 kHz.
pub fn speech_48k() -> Vec<i16> {
    load("speech-48k.wav")
}

/// The same sentence at 8 kHz.
pub fn speech_8k() -> Vec<i16> {
    load("speech-8k.wav")
}
