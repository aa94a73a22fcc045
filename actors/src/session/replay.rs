//! [`ReplayRing`]: the last few seconds of caller audio, as 20 ms frames at the provider's
//! rate, kept so that a failover can replay them to the next provider.
//!
//! The ring is allocated once, when the session goes live (or when a failover moves it to
//! another rate); recording a frame copies it into place and never allocates. When the ring
//! is full the oldest frame is overwritten: the ring bounds memory, not the call's length.
//!
//! During a failover the ring is also the queue of caller audio that arrives while the next
//! provider connects, so that audio and the replay go out together, oldest first, once the
//! provider is ready.

use voxroute_codecs::{AudioFormat, CodecError, IngressChain, SampleRate};

/// A fixed-size ring of whole frames; see the [module documentation](self).
pub(super) struct ReplayRing {
    /// `capacity_frames * frame_samples` samples; frame `i` lives at `i * frame_samples`.
    samples: Box<[i16]>,
    /// Samples per frame (20 ms at `rate`).
    frame_samples: usize,
    /// The rate of the frames held.
    rate: SampleRate,
    /// Slot of the oldest frame held.
    head: usize,
    /// Frames held, at most the capacity.
    len: usize,
    /// How many of the newest frames held have not been sent to the provider (a failover's
    /// replay and the audio held while it connects); at most `len`.
    unsent: usize,
}

impl ReplayRing {
    /// A ring holding up to `duration_ms` of 20 ms frames at `rate` (at least one frame).
    pub(super) fn new(rate: SampleRate, duration_ms: u32) -> Self {
        let frame_samples = rate.samples_per_frame();
        let capacity_frames = (duration_ms / voxroute_codecs::FRAME_MS).max(1) as usize;
        ReplayRing {
            samples: vec![0; capacity_frames * frame_samples].into_boxed_slice(),
            frame_samples,
            rate,
            head: 0,
            len: 0,
            unsent: 0,
        }
    }

    fn capacity_frames(&self) -> usize {
        self.samples.len() / self.frame_samples
    }

    /// Frames held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The rate of the frames held.
    #[cfg(test)]
    pub(super) fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Records one frame, overwriting the oldest when full. A frame of the wrong length (a
    /// caller bug, never produced by the ingress chain) is cut or padded with silence.
    /// `unsent`: the frame is held for the provider (see [`drain_unsent`](Self::drain_unsent)).
    pub(super) fn push(&mut self, frame: &[i16], unsent: bool) {
        self.record(frame);
        if unsent {
            self.unsent = (self.unsent + 1).min(self.len);
        }
    }

    /// Marks every frame held as not yet sent: a failover replays them all.
    pub(super) fn hold_all(&mut self) {
        self.unsent = self.len;
    }

    /// Frames held and not yet sent.
    pub(super) fn unsent(&self) -> usize {
        self.unsent
    }

    /// Hands up to `max` of the oldest unsent frames to `send`, oldest first, and counts them
    /// as sent. Returns how many went.
    pub(super) fn drain_unsent(&mut self, max: usize, mut send: impl FnMut(&[i16])) -> usize {
        let capacity = self.capacity_frames();
        let count = self.unsent.min(max);
        let first = self.len - self.unsent;
        for i in first..first + count {
            let start = ((self.head + i) % capacity) * self.frame_samples;
            send(&self.samples[start..start + self.frame_samples]);
        }
        self.unsent -= count;
        count
    }

    fn record(&mut self, frame: &[i16]) {
        let capacity = self.capacity_frames();
        let slot = (self.head + self.len) % capacity;
        let start = slot * self.frame_samples;
        let dst = &mut self.samples[start..start + self.frame_samples];
        let n = frame.len().min(dst.len());
        dst[..n].copy_from_slice(&frame[..n]);
        dst[n..].fill(0);
        if self.len == capacity {
            self.head = (self.head + 1) % capacity;
        } else {
            self.len += 1;
        }
    }

    /// The frames held, oldest first.
    #[cfg(test)]
    pub(super) fn frames(&self) -> impl Iterator<Item = &[i16]> + '_ {
        self.all_frames()
    }

    fn all_frames(&self) -> impl Iterator<Item = &[i16]> + '_ {
        let capacity = self.capacity_frames();
        (0..self.len).map(move |i| {
            let start = ((self.head + i) % capacity) * self.frame_samples;
            &self.samples[start..start + self.frame_samples]
        })
    }

    /// The same audio at `rate`, in a ring of the same duration (for a failover to a provider
    /// that takes another rate). Allocates: it runs once per failover, not per frame.
    ///
    /// # Errors
    /// [`CodecError`] if the resampler cannot be built (a validated rate never causes it).
    pub(super) fn resampled(&self, rate: SampleRate) -> Result<ReplayRing, CodecError> {
        let duration_ms = (self.capacity_frames() as u32) * voxroute_codecs::FRAME_MS;
        let mut ring = ReplayRing::new(rate, duration_ms);
        if rate == self.rate {
            for frame in self.all_frames() {
                ring.record(frame);
            }
            return Ok(ring);
        }
        let mut chain = IngressChain::new(AudioFormat::pcm16_mono(self.rate), rate)?;
        let mut bytes = Vec::with_capacity(2 * self.frame_samples);
        for frame in self.all_frames() {
            bytes.clear();
            bytes.extend(frame.iter().flat_map(|s| s.to_le_bytes()));
            chain.push(&bytes)?;
            while let Some(out) = chain.pop_frame() {
                ring.record(out);
            }
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring keeps the newest frames, hands them out oldest first, and its storage is
    /// never reallocated by recording.
    #[test]
    fn keeps_the_newest_frames_in_order_without_reallocating() {
        let mut ring = ReplayRing::new(SampleRate::HZ_8000, 60);
        let storage = ring.samples.as_ptr();
        for i in 0..5i16 {
            ring.push(&[i; 160], false);
        }
        assert_eq!(ring.len(), 3);
        let firsts: Vec<i16> = ring.frames().map(|f| f[0]).collect();
        assert_eq!(firsts, vec![2, 3, 4]);
        assert_eq!(ring.samples.as_ptr(), storage);
    }

    /// Moving to another rate keeps the duration: 3 frames at 8 kHz become about 3 frames at
    /// 16 kHz (the resampler's delay may hold back part of one).
    #[test]
    fn resampling_keeps_the_duration() {
        let mut ring = ReplayRing::new(SampleRate::HZ_8000, 1_000);
        for _ in 0..10 {
            ring.push(&[1_000; 160], false);
        }
        let moved = ring.resampled(SampleRate::HZ_16000).unwrap();
        assert_eq!(moved.rate(), SampleRate::HZ_16000);
        assert!((8..=10).contains(&moved.len()), "{}", moved.len());
        assert!(moved.frames().all(|f| f.len() == 320));
        let same = ring.resampled(SampleRate::HZ_8000).unwrap();
        assert_eq!(same.len(), 10);
    }

    /// Unsent frames go out oldest first, in pieces; the ring overwriting its oldest frame
    /// keeps the count of unsent frames within what it holds.
    #[test]
    fn unsent_frames_drain_in_order() {
        let mut ring = ReplayRing::new(SampleRate::HZ_8000, 80);
        ring.push(&[1; 160], false);
        ring.push(&[2; 160], false);
        ring.hold_all();
        ring.push(&[3; 160], true);
        let mut sent = Vec::new();
        assert_eq!(ring.drain_unsent(2, |f| sent.push(f[0])), 2);
        assert_eq!(sent, vec![1, 2]);
        for v in 4..=8 {
            ring.push(&[v; 160], true);
        }
        assert_eq!(ring.unsent(), 4, "the ring holds four frames");
        sent.clear();
        ring.drain_unsent(usize::MAX, |f| sent.push(f[0]));
        assert_eq!(sent, vec![5, 6, 7, 8]);
        assert_eq!(ring.unsent(), 0);
    }
}
