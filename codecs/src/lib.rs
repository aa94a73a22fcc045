//! # voxroute-codecs: the DSP layer
//!
//! Pure, synchronous audio processing for voxroute: no actix, no tokio, no I/O. Callers hand
//! in bytes or samples and get bytes or samples back; time, sockets and sessions live above.
//!
//! # Layout
//!
//! - [`frame`]: formats ([`SampleRate`], [`Codec`], [`Channels`], [`AudioFormat`]), the 20 ms
//!   frame ([`FRAME_MS`]) and [`FrameAssembler`], which turns payloads into whole frames.
//! - [`g711`]: ITU-T G.711 mu-law and A-law, bit-exact.
//! - [`opus`]: Opus decode (with PLC and FEC recovery) and encode at 48 kHz.
//! - [`resample`]: [`StreamResampler`], rubato sinc resampling, 20 ms in and 20 ms out.
//! - [`chain`]: [`IngressChain`] (decode → resample → provider PCM16) and [`EgressChain`]
//!   (resample → encode), the per-session pipelines; no allocation per frame once warm.
//! - [`measure`]: test tones, alignment and SNR, shared by tests, benches and the load test.
//! - [`error`]: [`CodecError`], the one error type, `Copy` and allocation-free.
//!
//! # What callers must keep
//!
//! Bad input (a garbage Opus packet, an odd-length PCM payload, an unsupported rate) is a
//! [`CodecError`], never a panic. A panic here means a broken invariant of this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chain;
pub mod error;
pub mod frame;
pub mod g711;
pub mod measure;
pub mod opus;
pub mod resample;

pub use chain::{EgressChain, IngressChain};
pub use error::{CodecError, OpusFailure};
pub use frame::{AudioFormat, Channels, Codec, FRAME_MS, FrameAssembler, SampleRate};
pub use resample::StreamResampler;
