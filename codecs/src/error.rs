//! The one error type of the DSP layer.
//!
//! Every variant is bad input or a bad configuration handed in by a caller: the codecs never
//! panic on what a client or provider sends. Variants carry only `Copy` data so that building
//! one on the per-frame path neither allocates nor formats.

use crate::frame::Codec;

/// What went wrong in a codec, resampler or chain call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The rate is outside what voxroute handles (8–96 kHz), or 20 ms of it is not a whole
    /// number of samples.
    #[error("unsupported sample rate {sample_rate_hz} Hz (8000–96000 Hz, a multiple of 50)")]
    UnsupportedSampleRate {
        /// The rate that was asked for.
        sample_rate_hz: u32,
    },
    /// The codec exists but not at this rate (G.711 is 8 kHz only; Opus runs at 48 kHz here).
    #[error("{codec:?} is not supported at {sample_rate_hz} Hz")]
    UnsupportedCodecRate {
        /// The codec that was asked for.
        codec: Codec,
        /// The rate that was asked for.
        sample_rate_hz: u32,
    },
    /// A PCM16 payload whose length is not a whole number of samples (of all channels).
    #[error(
        "PCM16 payload of {len_bytes} bytes is not a whole number of {channels}-channel samples"
    )]
    OddLengthPcm {
        /// Length of the payload.
        len_bytes: usize,
        /// Channels the format declared.
        channels: u8,
    },
    /// An empty payload where audio was expected.
    #[error("empty audio payload")]
    EmptyPayload,
    /// A payload longer than a chain accepts in one call; nothing of it was kept.
    #[error("payload of {len_samples} samples exceeds the {max_samples}-sample limit of one push")]
    PayloadTooLarge {
        /// Samples (per channel) the payload holds.
        len_samples: usize,
        /// Samples (per channel) that one call accepts.
        max_samples: usize,
    },
    /// A frame of the wrong length was handed to a call that takes exactly 20 ms.
    #[error("frame of {actual_samples} samples where {expected_samples} were expected")]
    FrameLength {
        /// The frame length the call takes.
        expected_samples: usize,
        /// The length it was given.
        actual_samples: usize,
    },
    /// An output buffer too small for the result.
    #[error("output buffer of {actual} elements where {needed} are needed")]
    BufferTooSmall {
        /// Elements the result needs.
        needed: usize,
        /// Elements the buffer holds.
        actual: usize,
    },
    /// libopus refused a packet or a setting (a garbage packet lands here).
    #[error("opus: {0}")]
    Opus(#[from] OpusFailure),
    /// The resampler refused a configuration or a call.
    #[error("resampler: {0}")]
    Resampler(&'static str),
}

/// A failed libopus call: which function, and the code it returned (both `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{function}: {code:?}")]
pub struct OpusFailure {
    /// The libopus function that failed.
    pub function: &'static str,
    /// What libopus said.
    pub code: opus::ErrorCode,
}

impl From<opus::Error> for OpusFailure {
    fn from(err: opus::Error) -> Self {
        OpusFailure {
            function: err.function(),
            code: err.code(),
        }
    }
}

impl From<opus::Error> for CodecError {
    fn from(err: opus::Error) -> Self {
        CodecError::Opus(err.into())
    }
}
