//! Audio formats and the 20 ms frame.
//!
//! Everything inside voxroute moves in frames of [`FRAME_MS`] milliseconds of mono audio. This
//! module owns the vocabulary for that: [`SampleRate`] (a validated rate in Hz), [`Codec`],
//! [`Channels`], [`AudioFormat`] (what a client or provider speaks), and [`FrameAssembler`],
//! the bounded, preallocated sample queue that turns payloads of any length into whole frames.

use crate::error::CodecError;

/// Length of every internal audio frame, in milliseconds.
pub const FRAME_MS: u32 = 20;

/// Frames per second at [`FRAME_MS`].
pub const FRAMES_PER_SECOND: u32 = 1000 / FRAME_MS;

/// A sample rate that voxroute handles: 8–96 kHz, with 20 ms a whole number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRate {
    hz: u32,
}

impl SampleRate {
    /// Narrowband telephony (G.711).
    pub const HZ_8000: SampleRate = SampleRate { hz: 8_000 };
    /// Wideband speech: Deepgram, ElevenLabs and Gemini input.
    pub const HZ_16000: SampleRate = SampleRate { hz: 16_000 };
    /// OpenAI Realtime PCM and Gemini output.
    pub const HZ_24000: SampleRate = SampleRate { hz: 24_000 };
    /// Opus and WebRTC.
    pub const HZ_48000: SampleRate = SampleRate { hz: 48_000 };

    /// Lowest rate accepted, in Hz.
    pub const MIN_HZ: u32 = 8_000;
    /// Highest rate accepted, in Hz.
    pub const MAX_HZ: u32 = 96_000;

    /// Validates a rate in Hz.
    ///
    /// # Errors
    /// [`CodecError::UnsupportedSampleRate`] outside 8–96 kHz, or when 20 ms of audio would
    /// not be a whole number of samples.
    pub const fn new(sample_rate_hz: u32) -> Result<Self, CodecError> {
        if sample_rate_hz < Self::MIN_HZ
            || sample_rate_hz > Self::MAX_HZ
            || !sample_rate_hz.is_multiple_of(FRAMES_PER_SECOND)
        {
            return Err(CodecError::UnsupportedSampleRate { sample_rate_hz });
        }
        Ok(SampleRate { hz: sample_rate_hz })
    }

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.hz
    }

    /// Samples (per channel) in one [`FRAME_MS`] frame.
    pub const fn samples_per_frame(self) -> usize {
        (self.hz / FRAMES_PER_SECOND) as usize
    }

    /// Samples (per channel) in `duration_ms` milliseconds, rounded down.
    pub const fn samples_in_ms(self, duration_ms: u32) -> usize {
        (self.hz as u64 * duration_ms as u64 / 1000) as usize
    }

    /// Duration of `samples` samples, in whole milliseconds (rounded down).
    pub const fn ms_of_samples(self, samples: usize) -> u64 {
        samples as u64 * 1000 / self.hz as u64
    }
}

/// Interleaved channels of a client's audio. Internally everything is mono; stereo input is
/// down-mixed on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channels {
    /// One channel.
    Mono,
    /// Two interleaved channels, down-mixed to mono on ingress.
    Stereo,
}

impl Channels {
    /// Number of interleaved channels.
    pub const fn count(self) -> u8 {
        match self {
            Channels::Mono => 1,
            Channels::Stereo => 2,
        }
    }
}

/// How audio is encoded on a client or provider connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// 16-bit signed little-endian linear PCM.
    Pcm16,
    /// ITU-T G.711 mu-law (8 kHz).
    Mulaw,
    /// ITU-T G.711 A-law (8 kHz).
    Alaw,
    /// Opus (RFC 6716), decoded and encoded at 48 kHz.
    Opus,
}

/// A codec at a rate with a channel layout: what one side of a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// The encoding.
    pub codec: Codec,
    /// The rate the codec runs at.
    pub sample_rate: SampleRate,
    /// Interleaved channels of the encoded audio.
    pub channels: Channels,
}

impl AudioFormat {
    /// Checks that the codec can run at the rate and layout given.
    ///
    /// # Errors
    /// [`CodecError::UnsupportedCodecRate`] for G.711 at any rate but 8 kHz, or Opus at any rate
    /// but 48 kHz.
    pub fn new(
        codec: Codec,
        sample_rate: SampleRate,
        channels: Channels,
    ) -> Result<Self, CodecError> {
        let required = match codec {
            Codec::Mulaw | Codec::Alaw => Some(SampleRate::HZ_8000),
            Codec::Opus => Some(SampleRate::HZ_48000),
            Codec::Pcm16 => None,
        };
        if let Some(required) = required
            && required != sample_rate
        {
            return Err(CodecError::UnsupportedCodecRate {
                codec,
                sample_rate_hz: sample_rate.hz(),
            });
        }
        Ok(AudioFormat {
            codec,
            sample_rate,
            channels,
        })
    }

    /// Mono mu-law at 8 kHz: what Twilio and most carriers send.
    pub const fn telephony_mulaw() -> Self {
        AudioFormat {
            codec: Codec::Mulaw,
            sample_rate: SampleRate::HZ_8000,
            channels: Channels::Mono,
        }
    }

    /// Mono PCM16 at `sample_rate`: what providers speak.
    pub const fn pcm16_mono(sample_rate: SampleRate) -> Self {
        AudioFormat {
            codec: Codec::Pcm16,
            sample_rate,
            channels: Channels::Mono,
        }
    }

    /// Opus at 48 kHz: what browsers send over WebRTC.
    pub const fn opus(channels: Channels) -> Self {
        AudioFormat {
            codec: Codec::Opus,
            sample_rate: SampleRate::HZ_48000,
            channels,
        }
    }
}

/// A bounded queue of mono samples that hands out whole frames.
///
/// Payloads of any length go in with [`push`](Self::push); whole frames of
/// `frame_samples` come out with [`pop_frame`](Self::pop_frame). The storage is allocated once,
/// at construction: a push that would not fit is refused whole with
/// [`CodecError::PayloadTooLarge`] and leaves the queue as it was, so the caller loses nothing
/// it had queued and can pop frames and retry.
#[derive(Debug)]
pub struct FrameAssembler {
    /// Queued samples live in `buffer[start..end]`; frames are popped from `start`.
    buffer: Box<[i16]>,
    start: usize,
    end: usize,
    frame_samples: usize,
}

impl FrameAssembler {
    /// A queue that emits frames of `frame_samples` and holds at most `capacity_samples`.
    ///
    /// # Panics
    /// If `frame_samples` is zero or larger than `capacity_samples`: both are fixed by the
    /// caller's configuration, not by input.
    pub fn new(frame_samples: usize, capacity_samples: usize) -> Self {
        assert!(
            frame_samples > 0 && frame_samples <= capacity_samples,
            "frame_samples {frame_samples} must be in 1..={capacity_samples}"
        );
        FrameAssembler {
            buffer: vec![0; capacity_samples].into_boxed_slice(),
            start: 0,
            end: 0,
            frame_samples,
        }
    }

    /// Samples per frame handed out by [`pop_frame`](Self::pop_frame).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Samples queued and not yet handed out.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether no sample is queued.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Most samples the queue can hold at once.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// Room left for the next push, in samples.
    pub fn free(&self) -> usize {
        self.capacity() - self.len()
    }

    /// Appends `samples` produced by `fill` into `len` free slots, all or nothing.
    ///
    /// `fill` gets a slice of exactly `len` samples to write; this is how decoders write
    /// straight into the queue without a scratch copy.
    ///
    /// # Errors
    /// [`CodecError::PayloadTooLarge`] when `len` samples do not fit; the queue is unchanged.
    /// Any error of `fill` is passed on, and the samples it wrote are not queued.
    pub fn push_with<F>(&mut self, len: usize, fill: F) -> Result<(), CodecError>
    where
        F: FnOnce(&mut [i16]) -> Result<(), CodecError>,
    {
        if len > self.free() {
            return Err(CodecError::PayloadTooLarge {
                len_samples: len,
                max_samples: self.free(),
            });
        }
        if self.end + len > self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        fill(&mut self.buffer[self.end..self.end + len])?;
        self.end += len;
        Ok(())
    }

    /// Appends `samples`, all or nothing.
    ///
    /// # Errors
    /// [`CodecError::PayloadTooLarge`] when they do not fit; the queue is unchanged.
    pub fn push(&mut self, samples: &[i16]) -> Result<(), CodecError> {
        self.push_with(samples.len(), |slot| {
            slot.copy_from_slice(samples);
            Ok(())
        })
    }

    /// The next whole frame, if one is queued. The slice is valid until the next call.
    pub fn pop_frame(&mut self) -> Option<&[i16]> {
        if self.len() < self.frame_samples {
            return None;
        }
        let frame = self.start..self.start + self.frame_samples;
        self.start += self.frame_samples;
        if self.start == self.end {
            // Empty again: rewind for free so the next push never has to move data.
            self.start = 0;
            self.end = 0;
        }
        Some(&self.buffer[frame])
    }

    /// Drops everything queued (barge-in, or a session ending).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_whole_frames_in_range() {
        assert_eq!(SampleRate::new(16_000), Ok(SampleRate::HZ_16000));
        assert_eq!(
            SampleRate::new(44_100).map(SampleRate::samples_per_frame),
            Ok(882)
        );
        for bad in [0, 7_999, 8_001, 96_050, 1_000_000] {
            assert_eq!(
                SampleRate::new(bad),
                Err(CodecError::UnsupportedSampleRate {
                    sample_rate_hz: bad
                })
            );
        }
    }

    #[test]
    fn g711_and_opus_are_bound_to_their_rates() {
        assert!(AudioFormat::new(Codec::Mulaw, SampleRate::HZ_8000, Channels::Mono).is_ok());
        assert_eq!(
            AudioFormat::new(Codec::Alaw, SampleRate::HZ_16000, Channels::Mono),
            Err(CodecError::UnsupportedCodecRate {
                codec: Codec::Alaw,
                sample_rate_hz: 16_000
            })
        );
        assert!(AudioFormat::new(Codec::Opus, SampleRate::HZ_24000, Channels::Mono).is_err());
        assert!(AudioFormat::new(Codec::Pcm16, SampleRate::HZ_24000, Channels::Stereo).is_ok());
    }

    #[test]
    fn assembler_frames_any_payload_lengths_in_order() {
        let mut queue = FrameAssembler::new(4, 10);
        let input: Vec<i16> = (0..23).collect();
        let mut out = Vec::new();
        for chunk in input.chunks(3) {
            queue.push(chunk).unwrap();
            while let Some(frame) = queue.pop_frame() {
                out.extend_from_slice(frame);
            }
        }
        assert_eq!(out, (0..20).collect::<Vec<i16>>());
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn assembler_refuses_overflow_whole_and_keeps_what_it_had() {
        let mut queue = FrameAssembler::new(4, 6);
        queue.push(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(
            queue.push(&[6, 7]),
            Err(CodecError::PayloadTooLarge {
                len_samples: 2,
                max_samples: 1
            })
        );
        assert_eq!(queue.pop_frame(), Some(&[1, 2, 3, 4][..]));
        queue.push(&[6, 7, 8]).unwrap();
        assert_eq!(queue.pop_frame(), Some(&[5, 6, 7, 8][..]));
        assert!(queue.is_empty());
    }
}
