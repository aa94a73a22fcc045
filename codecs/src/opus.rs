//! Opus (RFC 6716) at 48 kHz: a mono decoder with loss concealment and in-band FEC recovery,
//! and a speech encoder for the way back.
//!
//! This module owns the libopus state of one direction of one session and nothing else: it
//! does not reorder packets or decide when one is lost (the WebRTC jitter buffer does), and it
//! does not resample (see [`crate::resample`]).
//!
//! # What callers must keep
//!
//! - One [`OpusDecoder`] per incoming stream, fed packets in sequence order. For a lost packet
//!   call [`OpusDecoder::conceal`] (packet-loss concealment), or, when the packet after it has
//!   already arrived, [`OpusDecoder::recover`] with that next packet (in-band FEC), then
//!   [`OpusDecoder::decode`] the next packet as usual.
//! - Output buffers must hold [`MAX_PACKET_SAMPLES`] (120 ms at 48 kHz, the longest an Opus
//!   packet can be); decode reports how many samples it wrote.
//! - Decoding is always to mono: libopus down-mixes stereo packets itself.

use crate::error::CodecError;
use crate::frame::{Channels, SampleRate};

/// The rate voxroute runs Opus at, both ways.
pub const OPUS_SAMPLE_RATE: SampleRate = SampleRate::HZ_48000;

/// Samples in the longest Opus packet (120 ms at 48 kHz, RFC 6716 §3.2.1).
pub const MAX_PACKET_SAMPLES: usize = 5_760;

/// Largest encoded packet voxroute asks libopus for, in bytes: the largest one-frame Opus
/// packet (1275 bytes, RFC 6716 §3.4 R2) plus a few bytes of TOC and padding headroom.
pub const MAX_PACKET_BYTES: usize = 1_500;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = OPUS_SAMPLE_RATE.samples_per_frame();

/// One 20 ms packet of digital silence, as an [`OpusEncoder`] with the default
/// [`OpusEncoderConfig`] codes it, made once per process: what a sender puts on the wire when it has
/// nothing to say and must keep the receiver's clock running (comfort silence). Every
/// caller of this gets the same bytes, so a receiver in this process can recognise them.
pub fn silence_packet() -> &'static [u8] {
    static SILENCE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SILENCE.get_or_init(|| {
        OpusEncoder::new(OpusEncoderConfig::default())
            .and_then(|mut encoder| encoder.encode(&[0; FRAME_SAMPLES]).map(<[u8]>::to_vec))
            // The Opus "no audio" TOC byte (CELT 20 ms, zero-length frame) decodes as
            // silence; libopus failing to encode zeros with its default settings would be a bug.
            .unwrap_or_else(|_| vec![0xf8])
    })
}

/// Decodes one stream of Opus packets to 48 kHz mono PCM16.
pub struct OpusDecoder {
    decoder: opus::Decoder,
    /// Samples of the last successfully decoded packet: the length PLC and FEC reproduce.
    last_packet_samples: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("last_packet_samples", &self.last_packet_samples)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A decoder for a stream whose packets may be mono or stereo; output is always mono
    /// (`channels` documents what the sender negotiated and is otherwise informational).
    ///
    /// # Errors
    /// [`CodecError::Opus`] if libopus cannot allocate its state.
    pub fn new(channels: Channels) -> Result<Self, CodecError> {
        // Mono output whatever the packets carry: libopus down-mixes stereo for us.
        let _ = channels;
        let decoder = opus::Decoder::new(OPUS_SAMPLE_RATE.hz(), opus::Channels::Mono)?;
        Ok(OpusDecoder {
            decoder,
            last_packet_samples: FRAME_SAMPLES,
        })
    }

    /// Decodes one packet into `pcm`, returning the samples written.
    ///
    /// # Errors
    /// [`CodecError::EmptyPayload`] for an empty packet (use [`conceal`](Self::conceal) for a
    /// lost one), [`CodecError::BufferTooSmall`] if `pcm` holds less than
    /// [`MAX_PACKET_SAMPLES`], [`CodecError::Opus`] for a packet libopus rejects. The decoder
    /// stays usable after any error.
    pub fn decode(&mut self, packet: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        check_room(pcm, MAX_PACKET_SAMPLES)?;
        let samples = self
            .decoder
            .decode(packet, &mut pcm[..MAX_PACKET_SAMPLES], false)?;
        self.last_packet_samples = samples;
        Ok(samples)
    }

    /// Synthesises the audio of one lost packet (packet-loss concealment): as many samples as
    /// the last packet held, usually 20 ms.
    ///
    /// # Errors
    /// [`CodecError::BufferTooSmall`] if `pcm` is shorter than that.
    pub fn conceal(&mut self, pcm: &mut [i16]) -> Result<usize, CodecError> {
        let samples = self.last_packet_samples;
        check_room(pcm, samples)?;
        Ok(self.decoder.decode(&[], &mut pcm[..samples], false)?)
    }

    /// Recovers the lost packet *before* `next_packet` from the in-band FEC data that
    /// `next_packet` carries; call [`decode`](Self::decode) with `next_packet` afterwards. When
    /// the sender put no FEC data in it, libopus falls back to concealment, so the result is
    /// always a full-length frame.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn recover(&mut self, next_packet: &[u8], pcm: &mut [i16]) -> Result<usize, CodecError> {
        if next_packet.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        let samples = self.last_packet_samples;
        check_room(pcm, samples)?;
        Ok(self
            .decoder
            .decode(next_packet, &mut pcm[..samples], true)?)
    }
}

/// Settings of the Opus encoder for audio going back to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// Target bitrate in bits per second (libopus accepts 500–512000).
    pub bitrate_bps: i32,
    /// Encoder complexity, 0 (cheapest) to 10 (best); see `docs/performance.md` for the
    /// measured cost and quality of each level and why the default is what it is.
    pub complexity: i32,
    /// Put in-band FEC (LBRR) data in every packet so the receiver can recover one loss.
    pub inband_fec: bool,
    /// Expected packet loss in percent; libopus sizes the FEC data by it.
    pub expected_loss_percent: i32,
    /// Highest audio frequency worth coding, in Hz. Audio from a provider at 16 kHz has
    /// nothing above 8 kHz: telling libopus so lets it pick a narrower, cheaper mode
    /// (see `docs/performance.md`). Mapped to the nearest Opus bandwidth at or above it.
    pub max_audio_hz: u32,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        OpusEncoderConfig {
            bitrate_bps: 32_000,
            complexity: DEFAULT_COMPLEXITY,
            inband_fec: true,
            // Measured on the speech fixture: at 32 kb/s and 5% libopus judges the budget too
            // small for FEC and sends no LBRR data at all; from 8% it does. 10% keeps FEC on.
            expected_loss_percent: 10,
            max_audio_hz: 20_000,
        }
    }
}

/// Default encoder complexity, chosen by measurement (`docs/performance.md`).
pub const DEFAULT_COMPLEXITY: i32 = 5;

/// Encodes 20 ms frames of 48 kHz mono PCM16 to Opus (VOIP application).
pub struct OpusEncoder {
    encoder: opus::Encoder,
    packet: Box<[u8]>,
    /// libopus's lookahead at these settings, in 48 kHz samples.
    lookahead_samples: usize,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// A mono VOIP encoder with `config` applied.
    ///
    /// # Errors
    /// [`CodecError::Opus`] for a setting libopus refuses (bitrate or complexity out of range).
    pub fn new(config: OpusEncoderConfig) -> Result<Self, CodecError> {
        let mut encoder = opus::Encoder::new(
            OPUS_SAMPLE_RATE.hz(),
            opus::Channels::Mono,
            opus::Application::Voip,
        )?;
        encoder.set_bitrate(opus::Bitrate::Bits(config.bitrate_bps))?;
        encoder.set_complexity(config.complexity)?;
        encoder.set_inband_fec(config.inband_fec)?;
        encoder.set_packet_loss_perc(config.expected_loss_percent)?;
        encoder.set_signal(opus::Signal::Voice)?;
        encoder.set_max_bandwidth(bandwidth_for(config.max_audio_hz))?;
        // libopus reports a small non-negative count; a negative one would be its bug.
        let lookahead_samples = usize::try_from(encoder.get_lookahead()?).unwrap_or(0);
        Ok(OpusEncoder {
            encoder,
            packet: vec![0; MAX_PACKET_BYTES].into_boxed_slice(),
            lookahead_samples,
        })
    }

    /// The encoder's algorithmic delay (libopus's lookahead), in 48 kHz samples: decoded
    /// audio comes out this much later than it went in.
    pub fn lookahead_samples(&self) -> usize {
        self.lookahead_samples
    }

    /// The same delay in milliseconds.
    pub fn lookahead_ms(&self) -> f64 {
        self.lookahead_samples as f64 * 1_000.0 / f64::from(OPUS_SAMPLE_RATE.hz())
    }

    /// Encodes exactly one 20 ms frame; the packet is valid until the next call.
    ///
    /// # Errors
    /// [`CodecError::FrameLength`] unless `pcm` is [`FRAME_SAMPLES`] long;
    /// [`CodecError::Opus`] if libopus fails.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], CodecError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameLength {
                expected_samples: FRAME_SAMPLES,
                actual_samples: pcm.len(),
            });
        }
        let len = self.encoder.encode(pcm, &mut self.packet)?;
        Ok(&self.packet[..len])
    }
}

/// The narrowest Opus bandwidth that still codes audio up to `max_audio_hz`.
fn bandwidth_for(max_audio_hz: u32) -> opus::Bandwidth {
    match max_audio_hz {
        0..=4_000 => opus::Bandwidth::Narrowband,
        4_001..=6_000 => opus::Bandwidth::Mediumband,
        6_001..=8_000 => opus::Bandwidth::Wideband,
        8_001..=12_000 => opus::Bandwidth::Superwideband,
        _ => opus::Bandwidth::Fullband,
    }
}

fn check_room(pcm: &[i16], needed: usize) -> Result<(), CodecError> {
    if pcm.len() < needed {
        return Err(CodecError::BufferTooSmall {
            needed,
            actual: pcm.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frame_index: usize) -> [i16; FRAME_SAMPLES] {
        let mut pcm = [0i16; FRAME_SAMPLES];
        for (i, s) in pcm.iter_mut().enumerate() {
            let t = (frame_index * FRAME_SAMPLES + i) as f32 / 48_000.0;
            *s = (8_000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16;
        }
        pcm
    }

    #[test]
    fn garbage_packets_are_errors_and_the_decoder_survives() {
        let mut decoder = OpusDecoder::new(Channels::Mono).unwrap();
        let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
        // A TOC byte announcing code 3 (arbitrary frame count) with no frame-count byte.
        assert!(matches!(
            decoder.decode(&[0x03], &mut pcm),
            Err(CodecError::Opus(_))
        ));
        assert_eq!(decoder.decode(&[], &mut pcm), Err(CodecError::EmptyPayload));
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let packet = encoder.encode(&tone(0)).unwrap().to_vec();
        assert_eq!(decoder.decode(&packet, &mut pcm), Ok(FRAME_SAMPLES));
    }

    #[test]
    fn short_buffers_and_wrong_frame_lengths_are_errors() {
        let mut decoder = OpusDecoder::new(Channels::Stereo).unwrap();
        let mut small = [0i16; 100];
        assert_eq!(
            decoder.decode(&[0xfc, 0xff, 0xfe], &mut small),
            Err(CodecError::BufferTooSmall {
                needed: MAX_PACKET_SAMPLES,
                actual: 100
            })
        );
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        assert_eq!(
            encoder.encode(&[0; 959]),
            Err(CodecError::FrameLength {
                expected_samples: 960,
                actual_samples: 959
            })
        );
        let bad = OpusEncoderConfig {
            complexity: 11,
            ..OpusEncoderConfig::default()
        };
        assert!(matches!(OpusEncoder::new(bad), Err(CodecError::Opus(_))));
    }

    #[test]
    fn conceal_and_recover_give_full_frames() {
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let packets: Vec<Vec<u8>> = (0..10)
            .map(|i| encoder.encode(&tone(i)).unwrap().to_vec())
            .collect();
        let mut decoder = OpusDecoder::new(Channels::Mono).unwrap();
        let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
        for packet in &packets[..5] {
            assert_eq!(decoder.decode(packet, &mut pcm), Ok(FRAME_SAMPLES));
        }
        assert_eq!(decoder.conceal(&mut pcm), Ok(FRAME_SAMPLES));
        assert_eq!(decoder.recover(&packets[7], &mut pcm), Ok(FRAME_SAMPLES));
        assert_eq!(decoder.decode(&packets[7], &mut pcm), Ok(FRAME_SAMPLES));
    }
}
