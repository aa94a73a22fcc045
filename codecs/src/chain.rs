//! The two per-session DSP chains: ingress (client codec → 20 ms PCM16 frames at the
//! provider's rate) and egress (20 ms PCM16 frames at the provider's rate → client codec).
//!
//! Each chain owns every buffer it needs, sized once at construction from the two formats;
//! once a chain has processed its first frame, no call allocates. Buffers are dropped with the
//! chain, i.e. when the session ends.
//!
//! # What callers must keep
//!
//! - Ingress: [`IngressChain::push`] one payload as it arrives (up to [`MAX_PAYLOAD_MS`] of
//!   audio), then drain [`IngressChain::pop_frame`] until it returns `None`. For a packet known
//!   lost, call [`IngressChain::push_lost`], or [`IngressChain::push_recovered`] when the
//!   packet after it is at hand, then push that packet.
//! - Egress: hand [`EgressChain::encode_frame`] exactly one 20 ms frame at the provider rate;
//!   framing provider audio of other lengths is the caller's job ([`crate::FrameAssembler`]).
//! - After a barge-in flush, [`EgressChain::reset`] so that no tail of the flushed audio is
//!   played in front of the next reply.

use crate::error::CodecError;
use crate::frame::{AudioFormat, Channels, Codec, FrameAssembler, SampleRate};
use crate::g711::G711Law;
use crate::opus::{MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use crate::resample::StreamResampler;

/// Longest payload one [`IngressChain::push`] accepts, in milliseconds of audio: the longest
/// Opus packet (120 ms). Carriers send 20 ms; longer payloads are refused whole.
pub const MAX_PAYLOAD_MS: u32 = 120;

enum Decoder {
    Pcm16(Channels),
    G711(G711Law),
    Opus {
        decoder: Box<OpusDecoder>,
        /// Decoded samples of one packet, before they are queued.
        scratch: Box<[i16]>,
    },
}

/// Client audio in, provider frames out.
pub struct IngressChain {
    client: AudioFormat,
    decoder: Decoder,
    /// Decoded mono samples at the client rate waiting to fill a frame.
    client_samples: FrameAssembler,
    resampler: StreamResampler,
    /// The frame last handed out by [`pop_frame`](Self::pop_frame).
    provider_frame: Box<[i16]>,
}

impl std::fmt::Debug for IngressChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressChain")
            .field("client", &self.client)
            .field("provider_hz", &self.resampler.to_rate().hz())
            .field("queued_samples", &self.client_samples.len())
            .finish_non_exhaustive()
    }
}

impl IngressChain {
    /// A chain from `client` audio to mono PCM16 frames at `provider_rate`.
    ///
    /// # Errors
    /// [`CodecError::Opus`] or [`CodecError::Resampler`] if a codec or the resampler cannot
    /// be set up (which a validated [`AudioFormat`] should never cause).
    pub fn new(client: AudioFormat, provider_rate: SampleRate) -> Result<Self, CodecError> {
        let decoder = match client.codec {
            Codec::Pcm16 => Decoder::Pcm16(client.channels),
            Codec::Mulaw => Decoder::G711(G711Law::Mulaw),
            Codec::Alaw => Decoder::G711(G711Law::Alaw),
            Codec::Opus => Decoder::Opus {
                decoder: Box::new(OpusDecoder::new(client.channels)?),
                scratch: vec![0; MAX_PACKET_SAMPLES].into_boxed_slice(),
            },
        };
        let rate = client.sample_rate;
        // Room for the longest payload on top of a partial frame left from the last push.
        let capacity = rate.samples_in_ms(MAX_PAYLOAD_MS) + rate.samples_per_frame();
        Ok(IngressChain {
            client,
            decoder,
            client_samples: FrameAssembler::new(rate.samples_per_frame(), capacity),
            resampler: StreamResampler::new(rate, provider_rate)?,
            provider_frame: vec![0; provider_rate.samples_per_frame()].into_boxed_slice(),
        })
    }

    /// What the client sends.
    pub fn client_format(&self) -> AudioFormat {
        self.client
    }

    /// Algorithmic delay of the chain (the resampler's), in milliseconds.
    pub fn delay_ms(&self) -> f64 {
        self.resampler.delay_ms()
    }

    /// Decodes one payload and queues its samples.
    ///
    /// # Errors
    /// Nothing of a refused payload is queued, and what was queued before stays:
    /// [`CodecError::EmptyPayload`]; [`CodecError::OddLengthPcm`] for PCM16 that is not whole
    /// samples; [`CodecError::PayloadTooLarge`] for more than [`MAX_PAYLOAD_MS`] (or more than
    /// fits before the queued frames are popped); [`CodecError::Opus`] for a packet libopus
    /// rejects.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        match &mut self.decoder {
            Decoder::Pcm16(channels) => {
                let channels = *channels;
                let stride = 2 * usize::from(channels.count());
                if !payload.len().is_multiple_of(stride) {
                    return Err(CodecError::OddLengthPcm {
                        len_bytes: payload.len(),
                        channels: channels.count(),
                    });
                }
                self.client_samples
                    .push_with(payload.len() / stride, |slot| {
                        for (dst, src) in slot.iter_mut().zip(payload.chunks_exact(stride)) {
                            *dst = downmix_le(src);
                        }
                        Ok(())
                    })
            }
            Decoder::G711(law) => {
                let law = *law;
                self.client_samples
                    .push_with(payload.len(), |slot| law.decode(payload, slot).map(drop))
            }
            Decoder::Opus { decoder, scratch } => {
                let samples = decoder.decode(payload, scratch)?;
                self.client_samples.push(&scratch[..samples])
            }
        }
    }

    /// Queues a stand-in for one lost 20 ms packet: Opus packet-loss concealment, or silence
    /// for codecs without it.
    ///
    /// # Errors
    /// [`CodecError::PayloadTooLarge`] when the queue is full (pop frames first).
    pub fn push_lost(&mut self) -> Result<(), CodecError> {
        match &mut self.decoder {
            Decoder::Opus { decoder, scratch } => {
                let samples = decoder.conceal(scratch)?;
                self.client_samples.push(&scratch[..samples])
            }
            Decoder::Pcm16(_) | Decoder::G711(_) => {
                let frame = self.client_samples.frame_samples();
                self.client_samples.push_with(frame, |slot| {
                    slot.fill(0);
                    Ok(())
                })
            }
        }
    }

    /// Queues the lost packet just before `next_packet`, rebuilt from the in-band FEC data of
    /// `next_packet` (Opus); push `next_packet` itself afterwards. Other codecs have no FEC
    /// and get [`push_lost`](Self::push_lost)'s silence.
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn push_recovered(&mut self, next_packet: &[u8]) -> Result<(), CodecError> {
        match &mut self.decoder {
            Decoder::Opus { decoder, scratch } => {
                let samples = decoder.recover(next_packet, scratch)?;
                self.client_samples.push(&scratch[..samples])
            }
            Decoder::Pcm16(_) | Decoder::G711(_) => self.push_lost(),
        }
    }

    /// The next 20 ms frame at the provider rate, if a whole client frame is queued. The
    /// slice is valid until the next call.
    pub fn pop_frame(&mut self) -> Option<&[i16]> {
        let input = self.client_samples.pop_frame()?;
        self.resampler
            .process_frame(input, &mut self.provider_frame)
            // Unwrap is OK because both frame lengths were fixed from the resampler's own
            // rates at construction; an error here is a bug in this module.
            .expect("ingress frame sizes match the resampler");
        Some(&self.provider_frame)
    }

    /// Drops queued audio and the resampler's history (a new stream starts).
    pub fn reset(&mut self) {
        self.client_samples.clear();
        self.resampler.reset();
    }
}

/// One interleaved little-endian PCM16 sample frame (1 or 2 channels) to a mono sample.
fn downmix_le(frame: &[u8]) -> i16 {
    match frame {
        [a, b] => i16::from_le_bytes([*a, *b]),
        [a, b, c, d] => {
            let left = i32::from(i16::from_le_bytes([*a, *b]));
            let right = i32::from(i16::from_le_bytes([*c, *d]));
            // The mean of two i16 always fits an i16.
            ((left + right) >> 1) as i16
        }
        _ => unreachable!("stride is 2 or 4 bytes by construction"),
    }
}

enum Encoder {
    Pcm16(Channels),
    G711(G711Law),
    Opus(Box<OpusEncoder>),
}

/// Provider frames in, client audio out.
pub struct EgressChain {
    client: AudioFormat,
    resampler: StreamResampler,
    /// The current frame resampled to the client rate.
    client_frame: Box<[i16]>,
    encoder: Encoder,
    /// Encoded bytes of the current frame (PCM16 and G.711; Opus keeps its own packet).
    encoded: Box<[u8]>,
}

impl std::fmt::Debug for EgressChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressChain")
            .field("client", &self.client)
            .field("provider_hz", &self.resampler.from_rate().hz())
            .finish_non_exhaustive()
    }
}

impl EgressChain {
    /// A chain from mono PCM16 frames at `provider_rate` to `client` audio; `opus` configures
    /// the encoder when the client speaks Opus and is ignored otherwise. The encoder's
    /// `max_audio_hz` is capped at the provider's Nyquist frequency.
    ///
    /// # Errors
    /// [`CodecError::Opus`] for an encoder setting libopus refuses; [`CodecError::Resampler`]
    /// if the resampler cannot be set up.
    pub fn new(
        provider_rate: SampleRate,
        client: AudioFormat,
        opus: OpusEncoderConfig,
    ) -> Result<Self, CodecError> {
        let frame = client.sample_rate.samples_per_frame();
        let (encoder, encoded_len) = match client.codec {
            Codec::Pcm16 => (
                Encoder::Pcm16(client.channels),
                frame * 2 * usize::from(client.channels.count()),
            ),
            Codec::Mulaw => (Encoder::G711(G711Law::Mulaw), frame),
            Codec::Alaw => (Encoder::G711(G711Law::Alaw), frame),
            Codec::Opus => {
                // Provider audio has nothing above the provider's Nyquist frequency; saying
                // so lets libopus code a narrower band: measured 11% cheaper at 16 kHz, and
                // better within the band (docs/performance.md §3).
                let opus = OpusEncoderConfig {
                    max_audio_hz: opus.max_audio_hz.min(provider_rate.hz() / 2),
                    ..opus
                };
                (Encoder::Opus(Box::new(OpusEncoder::new(opus)?)), 0)
            }
        };
        Ok(EgressChain {
            client,
            resampler: StreamResampler::new(provider_rate, client.sample_rate)?,
            client_frame: vec![0; frame].into_boxed_slice(),
            encoder,
            encoded: vec![0; encoded_len].into_boxed_slice(),
        })
    }

    /// What the client receives.
    pub fn client_format(&self) -> AudioFormat {
        self.client
    }

    /// Algorithmic delay of the chain, in milliseconds: the resampler's, plus the Opus
    /// encoder's lookahead when the client speaks Opus (decoding adds none).
    pub fn delay_ms(&self) -> f64 {
        let codec_ms = match &self.encoder {
            Encoder::Opus(encoder) => encoder.lookahead_ms(),
            Encoder::Pcm16(_) | Encoder::G711(_) => 0.0,
        };
        self.resampler.delay_ms() + codec_ms
    }

    /// Resamples and encodes one 20 ms frame at the provider rate. The bytes are valid until
    /// the next call.
    ///
    /// # Errors
    /// [`CodecError::FrameLength`] unless `pcm` is one frame at the provider rate (nothing is
    /// consumed then); [`CodecError::Opus`] if libopus fails.
    pub fn encode_frame(&mut self, pcm: &[i16]) -> Result<&[u8], CodecError> {
        self.resampler.process_frame(pcm, &mut self.client_frame)?;
        match &mut self.encoder {
            Encoder::Pcm16(channels) => {
                let stride = 2 * usize::from(channels.count());
                for (dst, &sample) in self
                    .encoded
                    .chunks_exact_mut(stride)
                    .zip(&*self.client_frame)
                {
                    let bytes = sample.to_le_bytes();
                    for channel in dst.chunks_exact_mut(2) {
                        channel.copy_from_slice(&bytes);
                    }
                }
                Ok(&self.encoded)
            }
            Encoder::G711(law) => {
                law.encode(&self.client_frame, &mut self.encoded)?;
                Ok(&self.encoded)
            }
            Encoder::Opus(encoder) => encoder.encode(&self.client_frame),
        }
    }

    /// Forgets the resampler's history, so audio after a barge-in flush starts clean.
    pub fn reset(&mut self) {
        self.resampler.reset();
    }
}
