//! The benchmark cases shared by `chains` (criterion, absolute cost) and `paired` (ABBA-
//! interleaved ratio): each per-session chain next to the raw library calls it wraps, on the
//! speech fixtures, one 20 ms frame per call.

use std::hint::black_box;
use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, Resampler};
use voxroute_codecs::g711::G711Law;
use voxroute_codecs::opus::{FRAME_SAMPLES, MAX_PACKET_BYTES, OpusEncoder, OpusEncoderConfig};
use voxroute_codecs::resample::{DEFAULT_SINC_LEN, sinc_parameters};
use voxroute_codecs::{AudioFormat, Channels, EgressChain, IngressChain, SampleRate};

/// One chain and its raw calls; each closure processes the next 20 ms frame.
pub struct Case {
    /// e.g. `ingress mulaw 8k to 16k`.
    pub name: String,
    /// One frame through the voxroute chain.
    pub chain: Box<dyn FnMut()>,
    /// One frame through the raw calls the chain wraps.
    pub raw: Box<dyn FnMut()>,
}

pub fn speech(name: &str) -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/speech")
        .join(name);
    hound::WavReader::open(path)
        .expect("speech fixture")
        .samples::<i16>()
        .map(|s| s.expect("fixture decodes"))
        .collect()
}

/// rubato alone, configured exactly as `StreamResampler` configures it, on f32 frames.
struct RawResampler {
    resampler: Async<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl RawResampler {
    fn new(from: SampleRate, to: SampleRate) -> Self {
        let resampler = Async::<f32>::new_sinc(
            f64::from(to.hz()) / f64::from(from.hz()),
            1.0,
            &sinc_parameters(from, to, DEFAULT_SINC_LEN),
            from.samples_per_frame(),
            1,
            FixedAsync::Input,
        )
        .expect("valid configuration");
        let output = vec![0.0; resampler.output_frames_max()];
        RawResampler {
            resampler,
            input: vec![0.0; from.samples_per_frame()],
            output,
        }
    }

    fn process(&mut self) -> usize {
        let frames_in = self.input.len();
        let frames_out = self.output.len();
        let input = InterleavedSlice::new(&self.input[..], 1, frames_in).unwrap();
        let mut output = InterleavedSlice::new_mut(&mut self.output[..], 1, frames_out).unwrap();
        self.resampler
            .process_into_buffer(&input, &mut output, None)
            .unwrap()
            .1
    }
}

/// libopus configured as the egress chain configures it, called directly.
fn raw_opus_encoder(config: OpusEncoderConfig, max_audio_hz: u32) -> opus::Encoder {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    encoder
        .set_bitrate(opus::Bitrate::Bits(config.bitrate_bps))
        .unwrap();
    encoder.set_complexity(config.complexity).unwrap();
    encoder.set_inband_fec(config.inband_fec).unwrap();
    encoder
        .set_packet_loss_perc(config.expected_loss_percent)
        .unwrap();
    encoder.set_signal(opus::Signal::Voice).unwrap();
    let bandwidth = if max_audio_hz <= 8_000 {
        opus::Bandwidth::Wideband
    } else {
        opus::Bandwidth::Superwideband
    };
    encoder.set_max_bandwidth(bandwidth).unwrap();
    encoder
}

/// Cycles through `items`, one per call.
fn cycle<T: 'static>(items: Vec<T>) -> impl FnMut() -> &'static T {
    let items: &'static [T] = Vec::leak(items);
    let mut i = 0;
    move || {
        i = (i + 1) % items.len();
        &items[i]
    }
}

/// Provider frames at `provider` made from the 8 kHz speech (for the egress cases).
fn provider_frames(speech_8k: &[i16], provider: SampleRate) -> Vec<Vec<i16>> {
    let mut up = IngressChain::new(AudioFormat::pcm16_mono(SampleRate::HZ_8000), provider).unwrap();
    speech_8k
        .chunks_exact(160)
        .map(|f| {
            let bytes: Vec<u8> = f.iter().flat_map(|s| s.to_le_bytes()).collect();
            up.push(&bytes).unwrap();
            up.pop_frame().unwrap().to_vec()
        })
        .collect()
}

/// Every chain at 16 and 24 kHz provider rates: telephony (mu-law 8 kHz) and WebRTC (Opus
/// 48 kHz), each way.
pub fn cases() -> Vec<Case> {
    let speech_8k = speech("speech-8k.wav");
    let speech_48k = speech("speech-48k.wav");
    let law = G711Law::Mulaw;
    let mulaw: Vec<Vec<u8>> = speech_8k
        .chunks_exact(160)
        .map(|frame| {
            let mut codes = vec![0; 160];
            law.encode(frame, &mut codes).unwrap();
            codes
        })
        .collect();
    let opus_config = OpusEncoderConfig::default();
    let mut encoder = OpusEncoder::new(opus_config).unwrap();
    let packets: Vec<Vec<u8>> = speech_48k
        .chunks_exact(FRAME_SAMPLES)
        .map(|f| encoder.encode(f).unwrap().to_vec())
        .collect();
    let pcm48: Vec<Vec<i16>> = speech_48k
        .chunks_exact(FRAME_SAMPLES)
        .map(<[i16]>::to_vec)
        .collect();
    let telephony = AudioFormat::telephony_mulaw();
    let webrtc = AudioFormat::opus(Channels::Mono);

    let mut cases = Vec::new();
    for provider in [SampleRate::HZ_16000, SampleRate::HZ_24000] {
        let khz = provider.hz() / 1000;
        let frames = provider_frames(&speech_8k, provider);

        let (mut next_a, mut next_b) = (cycle(mulaw.clone()), cycle(mulaw.clone()));
        let mut chain = IngressChain::new(telephony, provider).unwrap();
        let mut raw = RawResampler::new(SampleRate::HZ_8000, provider);
        let mut pcm = vec![0i16; 160];
        cases.push(Case {
            name: format!("ingress mulaw 8k to {khz}k"),
            chain: Box::new(move || {
                chain.push(black_box(next_a())).unwrap();
                black_box(chain.pop_frame().unwrap()[0]);
            }),
            raw: Box::new(move || {
                law.decode(black_box(next_b()), &mut pcm).unwrap();
                black_box(raw.process());
            }),
        });

        let (mut next_a, mut next_b) = (cycle(frames.clone()), cycle(frames.clone()));
        let mut chain = EgressChain::new(provider, telephony, opus_config).unwrap();
        let mut raw = RawResampler::new(provider, SampleRate::HZ_8000);
        let mut codes = vec![0u8; 160];
        cases.push(Case {
            name: format!("egress {khz}k to mulaw 8k"),
            chain: Box::new(move || {
                black_box(chain.encode_frame(black_box(next_a())).unwrap()[0]);
            }),
            raw: Box::new(move || {
                black_box(raw.process());
                law.encode(black_box(&next_b()[..160]), &mut codes).unwrap();
            }),
        });

        let (mut next_a, mut next_b) = (cycle(packets.clone()), cycle(packets.clone()));
        let mut chain = IngressChain::new(webrtc, provider).unwrap();
        let mut raw = RawResampler::new(SampleRate::HZ_48000, provider);
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; 5_760];
        cases.push(Case {
            name: format!("ingress opus 48k to {khz}k"),
            chain: Box::new(move || {
                chain.push(black_box(next_a())).unwrap();
                black_box(chain.pop_frame().unwrap()[0]);
            }),
            raw: Box::new(move || {
                black_box(
                    decoder
                        .decode(black_box(next_b()), &mut pcm, false)
                        .unwrap(),
                );
                black_box(raw.process());
            }),
        });

        let (mut next_a, mut next_b) = (cycle(frames.clone()), cycle(pcm48.clone()));
        let mut chain = EgressChain::new(provider, webrtc, opus_config).unwrap();
        let mut raw = RawResampler::new(provider, SampleRate::HZ_48000);
        // The chain caps the coded band at the provider's Nyquist; the raw encoder must too.
        let mut raw_encoder = raw_opus_encoder(opus_config, provider.hz() / 2);
        let mut packet = vec![0u8; MAX_PACKET_BYTES];
        cases.push(Case {
            name: format!("egress {khz}k to opus 48k"),
            chain: Box::new(move || {
                black_box(chain.encode_frame(black_box(next_a())).unwrap()[0]);
            }),
            raw: Box::new(move || {
                black_box(raw.process());
                black_box(
                    raw_encoder
                        .encode(black_box(next_b()), &mut packet)
                        .unwrap(),
                );
            }),
        });
    }
    cases
}
