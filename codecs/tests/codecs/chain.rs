//! Proves the per-session chains end to end on real speech (telephony and WebRTC shapes), and
//! that every kind of bad payload is refused with a typed error while losing nothing queued.

use voxroute_codecs::chain::MAX_PAYLOAD_MS;
use voxroute_codecs::g711::G711Law;
use voxroute_codecs::measure::{best_lag, correlation, snr_db};
use voxroute_codecs::opus::{
    FRAME_SAMPLES, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder, OpusEncoderConfig,
};
use voxroute_codecs::{
    AudioFormat, Channels, Codec, CodecError, EgressChain, IngressChain, SampleRate,
};

use crate::fixture::{speech_8k, speech_48k};

/// Caller → provider → caller with an echoing provider: every ingress frame goes straight
/// into the egress chain. Returns the client-format payloads that come back.
fn echo(
    ingress: &mut IngressChain,
    egress: &mut EgressChain,
    payloads: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut back = Vec::new();
    for payload in payloads {
        ingress.push(payload).unwrap();
        while let Some(frame) = ingress.pop_frame() {
            back.push(egress.encode_frame(frame).unwrap().to_vec());
        }
    }
    back
}

/// Twilio's shape: mu-law 8 kHz in 20 ms payloads, a 16 kHz provider, mu-law back. The echoed
/// audio matches the input after alignment, and the lag is the chains' reported delay.
#[test]
fn telephony_echo_through_16k_returns_the_speech() {
    let speech = speech_8k();
    let law = G711Law::Mulaw;
    let payloads: Vec<Vec<u8>> = speech
        .chunks_exact(160)
        .map(|frame| {
            let mut codes = vec![0u8; 160];
            law.encode(frame, &mut codes).unwrap();
            codes
        })
        .collect();
    let mut ingress =
        IngressChain::new(AudioFormat::telephony_mulaw(), SampleRate::HZ_16000).unwrap();
    let mut egress = EgressChain::new(
        SampleRate::HZ_16000,
        AudioFormat::telephony_mulaw(),
        OpusEncoderConfig::default(),
    )
    .unwrap();
    let back = echo(&mut ingress, &mut egress, &payloads);
    assert_eq!(back.len(), payloads.len(), "one frame back per frame in");
    let mut returned = vec![0i16; back.len() * 160];
    for (codes, pcm) in back.iter().zip(returned.chunks_exact_mut(160)) {
        assert_eq!(codes.len(), 160);
        law.decode(codes, pcm).unwrap();
    }
    let (lag, c) = best_lag(&speech, &returned, 160);
    let reported_ms = ingress.delay_ms() + egress.delay_ms();
    assert!(
        (lag as f64 / 8.0 - reported_ms).abs() <= 0.5,
        "lag {lag} vs {reported_ms:.2} ms"
    );
    assert!(c > 0.97, "correlation {c:.3}");
    let snr = snr_db(&speech, &returned, lag);
    eprintln!("telephony echo: SNR {snr:.1} dB, correlation {c:.3}, lag {lag}");
    assert!(snr > 20.0, "SNR {snr:.1} dB");
}

/// WebRTC's shape: Opus 48 kHz, a 24 kHz provider, Opus back. Decoded on the far side, the
/// echo still correlates with what was said.
#[test]
fn webrtc_echo_through_24k_returns_the_speech() {
    let speech = speech_48k();
    let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let payloads: Vec<Vec<u8>> = speech
        .chunks_exact(FRAME_SAMPLES)
        .map(|frame| encoder.encode(frame).unwrap().to_vec())
        .collect();
    let client = AudioFormat::opus(Channels::Mono);
    let mut ingress = IngressChain::new(client, SampleRate::HZ_24000).unwrap();
    let mut egress =
        EgressChain::new(SampleRate::HZ_24000, client, OpusEncoderConfig::default()).unwrap();
    let back = echo(&mut ingress, &mut egress, &payloads);
    assert_eq!(back.len(), payloads.len());
    let mut decoder = OpusDecoder::new(Channels::Mono).unwrap();
    let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
    let mut returned = Vec::new();
    for packet in &back {
        let n = decoder.decode(packet, &mut pcm).unwrap();
        returned.extend_from_slice(&pcm[..n]);
    }
    let (lag, c) = best_lag(&speech, &returned, 2 * 960);
    eprintln!("webrtc echo: correlation {c:.3}, lag {lag}");
    assert!(c > 0.8, "correlation {c:.3}");
    // The chains' stated delays (resamplers and the way back's Opus lookahead) plus the
    // caller's own encoder lookahead account for the whole lag.
    let reported_ms = encoder.lookahead_ms() + ingress.delay_ms() + egress.delay_ms();
    assert!(
        (lag as f64 / 48.0 - reported_ms).abs() <= 0.5,
        "lag {lag} vs {reported_ms:.2} ms"
    );
}

/// Stereo PCM16 is down-mixed to the mean of the channels, and PCM16 at the provider's rate
/// passes through sample-exact.
#[test]
fn stereo_pcm_is_downmixed_exactly() {
    let format = AudioFormat::new(Codec::Pcm16, SampleRate::HZ_16000, Channels::Stereo).unwrap();
    let mut ingress = IngressChain::new(format, SampleRate::HZ_16000).unwrap();
    let mut payload = Vec::new();
    for i in 0..320i16 {
        payload.extend_from_slice(&(i * 10).to_le_bytes());
        payload.extend_from_slice(&(i * 10 + 4).to_le_bytes());
    }
    ingress.push(&payload).unwrap();
    let frame = ingress.pop_frame().unwrap();
    assert!(
        frame
            .iter()
            .enumerate()
            .all(|(i, &s)| s == i as i16 * 10 + 2)
    );
    assert!(ingress.pop_frame().is_none());
}

fn pcm16_bytes(samples: impl IntoIterator<Item = i16>) -> Vec<u8> {
    samples.into_iter().flat_map(i16::to_le_bytes).collect()
}

/// Every bad payload gets its own typed error, and none of them disturbs what was queued: the
/// good halves on either side still make one exact frame.
#[test]
fn bad_payloads_are_refused_and_lose_nothing() {
    let format = AudioFormat::pcm16_mono(SampleRate::HZ_8000);
    let mut ingress = IngressChain::new(format, SampleRate::HZ_8000).unwrap();
    ingress.push(&pcm16_bytes(0..80)).unwrap();

    assert_eq!(ingress.push(&[]), Err(CodecError::EmptyPayload));
    assert_eq!(
        ingress.push(&[1, 2, 3]),
        Err(CodecError::OddLengthPcm {
            len_bytes: 3,
            channels: 1
        })
    );
    let too_long = pcm16_bytes(std::iter::repeat_n(7, 8 * MAX_PAYLOAD_MS as usize + 160));
    assert!(matches!(
        ingress.push(&too_long),
        Err(CodecError::PayloadTooLarge { .. })
    ));
    assert!(
        ingress.pop_frame().is_none(),
        "nothing was added by the refused payloads"
    );

    ingress.push(&pcm16_bytes(80..160)).unwrap();
    let frame = ingress.pop_frame().unwrap();
    assert_eq!(frame, (0..160).collect::<Vec<i16>>());

    let mut opus =
        IngressChain::new(AudioFormat::opus(Channels::Mono), SampleRate::HZ_16000).unwrap();
    assert!(matches!(opus.push(&[0x03]), Err(CodecError::Opus(_))));

    let mut egress = EgressChain::new(
        SampleRate::HZ_16000,
        AudioFormat::telephony_mulaw(),
        OpusEncoderConfig::default(),
    )
    .unwrap();
    assert_eq!(
        egress.encode_frame(&[0; 319]),
        Err(CodecError::FrameLength {
            expected_samples: 320,
            actual_samples: 319
        })
    );
    assert_eq!(egress.encode_frame(&[0; 320]).map(<[u8]>::len), Ok(160));
}

/// A lost packet becomes one frame: Opus conceals or recovers it, G.711 gets silence.
#[test]
fn lost_packets_become_whole_frames() {
    let mut g711 = IngressChain::new(AudioFormat::telephony_mulaw(), SampleRate::HZ_8000).unwrap();
    g711.push_lost().unwrap();
    assert_eq!(g711.pop_frame(), Some(&[0i16; 160][..]));

    let speech = speech_48k();
    let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let packets: Vec<Vec<u8>> = speech
        .chunks_exact(FRAME_SAMPLES)
        .take(30)
        .map(|frame| encoder.encode(frame).unwrap().to_vec())
        .collect();
    let mut opus =
        IngressChain::new(AudioFormat::opus(Channels::Mono), SampleRate::HZ_16000).unwrap();
    let mut frames = 0;
    for (i, packet) in packets.iter().enumerate() {
        match i {
            10 => opus.push_lost().unwrap(),
            20 => opus.push_recovered(&packets[21]).unwrap(),
            _ => opus.push(packet).unwrap(),
        }
        while let Some(frame) = opus.pop_frame() {
            assert_eq!(frame.len(), 320);
            frames += 1;
        }
    }
    assert_eq!(frames, 30);
    // The echo of a G.711 frame of silence is silence.
    assert_eq!(correlation(&[0; 10], &[0; 10]), 0.0);
}
