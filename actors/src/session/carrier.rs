//! The session side of a carrier ([`CarrierCodec`]): the codec, and the reordering of its
//! audio for carriers that do not guarantee order (Telnyx).
//!
//! Audio that comes with a sequence goes through a [`JitterBuffer`]: in-order frames come
//! straight out, a frame behind a hole waits at most [`JITTER_DELAY_DEFAULT`], and a hole
//! still open by then is released as lost (the core fills it with 20 ms of silence, so the
//! provider's stream keeps its timing). Payloads are copied into buffers taken from a pool
//! that the released ones return to, so once warm nothing allocates.
//!
//! The first sequenced payload fixes where the sequence starts: a payload numbered before it
//! that arrives after it is late and dropped (counted by the jitter buffer), so a stream whose
//! very first frames are swapped loses one 20 ms frame.

use std::time::Instant;

use crate::jitter::{JITTER_CAPACITY_DEFAULT, JITTER_DELAY_DEFAULT, JitterBuffer, Released};
use crate::protocol::carrier::{CarrierCodec, CarrierOutbound};

use super::core::Output;

/// A carrier's codec and the reordering of its audio.
#[derive(Debug)]
pub(super) struct CarrierLink {
    pub(super) codec: Box<dyn CarrierCodec>,
    pub(super) reorder: Reorder,
    /// An in-order payload copied out of the codec while the core handles it; reused.
    pub(super) scratch: Vec<u8>,
}

impl CarrierLink {
    pub(super) fn new(codec: Box<dyn CarrierCodec>) -> Self {
        CarrierLink {
            codec,
            reorder: Reorder::new(),
            scratch: Vec::new(),
        }
    }
}

/// What [`Reorder::pop`] releases.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reordered {
    /// The next payload in sequence; hand it back with [`Reorder::recycle`] once used.
    Payload(Vec<u8>),
    /// The next payload is lost.
    Lost,
}

/// Sequenced caller audio put back in order, with a pool of payload buffers.
pub(super) struct Reorder {
    jitter: JitterBuffer<Vec<u8>>,
    /// Buffers free for the next payloads.
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Reorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reorder")
            .field("jitter", &self.jitter)
            .field("spare", &self.spare.len())
            .finish()
    }
}

impl Reorder {
    fn new() -> Self {
        // Every buffer can be out at once: the held ones and the one being handled.
        let buffers = usize::from(JITTER_CAPACITY_DEFAULT) + 1;
        Reorder {
            jitter: JitterBuffer::new(JITTER_CAPACITY_DEFAULT, JITTER_DELAY_DEFAULT),
            spare: Vec::with_capacity(buffers),
        }
    }

    /// Holds a copy of `payload`, which arrived at `now` with sequence number `sequence`.
    pub(super) fn push(&mut self, now: Instant, sequence: u16, payload: &[u8]) {
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(payload);
        self.jitter.push(now, sequence, buffer);
    }

    /// The next release due at `now`, if any.
    pub(super) fn pop(&mut self, now: Instant) -> Option<Reordered> {
        match self.jitter.pop(now)? {
            Released::Packet(buffer) => Some(Reordered::Payload(buffer)),
            Released::Lost { .. } => Some(Reordered::Lost),
        }
    }

    /// Returns a released payload's buffer to the pool.
    pub(super) fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < self.spare.capacity() {
            self.spare.push(buffer);
        }
    }

    /// When [`pop`](Self::pop) must be called next, if a payload is held.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.jitter.deadline()
    }

    /// How many payloads are held.
    pub(super) fn held(&self) -> usize {
        self.jitter.len()
    }

    /// Payloads dropped so far because they came too late or twice.
    pub(super) fn dropped(&self) -> u64 {
        let stats = self.jitter.stats();
        stats.late + stats.duplicates
    }
}

/// A carrier frame as the driver sends it.
pub(super) fn output(frame: CarrierOutbound<'_>) -> Output {
    match frame {
        CarrierOutbound::Text(text) => Output::ToClientText(text.to_owned()),
        CarrierOutbound::Binary(bytes) => Output::ToClientBinary(bytes.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;
    use uuid::Uuid;
    use voxroute_codecs::SampleRate;

    use super::*;
    use crate::protocol::RouteTarget;
    use crate::provider::{ProviderCommand, ProviderEvent, ProviderKind, ProviderSpec};
    use crate::session::{Admission, ClientProtocol, Input, SessionConfig, SessionCore};

    /// Drains the core's outputs up to its timeout.
    fn outputs(core: &mut SessionCore) -> (Vec<Output>, Instant) {
        let mut outputs = Vec::new();
        loop {
            match core.poll_output() {
                Output::Timeout(at) => return (outputs, at),
                output => outputs.push(output),
            }
        }
    }

    /// A core on `protocol`, started with `first` and admitted to an echo provider at 8 kHz.
    fn admitted(protocol: ClientProtocol, first: &str, t0: Instant) -> SessionCore {
        let mut core = SessionCore::new(protocol, SessionConfig::default(), t0);
        core.handle_input(t0, Input::ClientText(first));
        let (out, _) = outputs(&mut core);
        let [Output::Authorize(request)] = out.as_slice() else {
            panic!("expected one Authorize, got {out:?}");
        };
        assert_eq!(request.api_key.as_deref(), Some("vxr_secret"));
        assert_eq!(request.target, RouteTarget::Provider("echo".into()));
        let spec = ProviderSpec {
            name: "echo".into(),
            sample_rate: SampleRate::HZ_8000,
            output_sample_rate: SampleRate::HZ_8000,
            kind: ProviderKind::Echo,
        };
        core.handle_input(
            t0,
            Input::Admitted(Admission {
                session_id: Uuid::now_v7(),
                provider: spec,
                fallbacks: Vec::new(),
            }),
        );
        outputs(&mut core);
        core
    }

    /// The first sample of each 20 ms frame sent to the provider.
    fn provider_frames(outputs: &[Output]) -> Vec<i16> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::ToProvider(ProviderCommand::Audio(frame)) => Some(frame[80]),
                _ => None,
            })
            .collect()
    }

    fn telnyx_media(chunk: u16, value: i16) -> String {
        let pcm: Vec<u8> = std::iter::repeat_n(value.to_be_bytes(), 160)
            .flatten()
            .collect();
        let payload = crate::protocol::BASE64.encode(pcm);
        format!(
            r#"{{"event":"media","sequence_number":"{}","media":{{"chunk":"{chunk}","payload":"{payload}"}}}}"#,
            chunk + 1
        )
    }

    /// Through the core, Telnyx audio is reordered before it reaches the provider, and a hole
    /// is filled with a silent frame once its wait is over (counted as concealed).
    #[test]
    fn telnyx_audio_reaches_the_provider_in_order() {
        let t0 = Instant::now();
        let start = r#"{"event":"start","sequence_number":"1","stream_id":"s","start":{"custom_parameters":{"api_key":"vxr_secret","provider":"echo"},"media_format":{"encoding":"L16","sample_rate":8000,"channels":1}}}"#;
        let mut core = admitted(ClientProtocol::Telnyx, start, t0);
        core.handle_input(t0, Input::ClientText(&telnyx_media(1, 100)));
        core.handle_input(t0, Input::ClientText(&telnyx_media(3, 300)));
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out), [100], "3 waits for 2");
        let t1 = t0 + Duration::from_millis(20);
        core.handle_input(t1, Input::ClientText(&telnyx_media(2, 200)));
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out), [200, 300]);
        // 5 comes, 4 never does: after the wait, silence for 4, then 5.
        core.handle_input(t1, Input::ClientText(&telnyx_media(5, 500)));
        let (out, deadline) = outputs(&mut core);
        assert!(provider_frames(&out).is_empty());
        assert_eq!(deadline, t1 + JITTER_DELAY_DEFAULT);
        core.handle_input(deadline, Input::Timeout);
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out), [0, 500]);
        core.handle_input(deadline, Input::ClientText(r#"{"event":"stop"}"#));
        let (out, _) = outputs(&mut core);
        let Some(Output::Close(outcome)) = out.last() else {
            panic!("expected a close, got {out:?}");
        };
        assert_eq!((outcome.audio_in_ms, outcome.concealed_frames), (100, 1));
    }

    /// A Telnyx `stop` with payloads held behind two holes: everything held reaches the
    /// provider before the end, each hole as a silent frame; a payload that came twice is
    /// counted as dropped.
    #[test]
    fn telnyx_stop_flushes_everything_held() {
        let t0 = Instant::now();
        let start = r#"{"event":"start","sequence_number":"1","stream_id":"s","start":{"custom_parameters":{"api_key":"vxr_secret","provider":"echo"},"media_format":{"encoding":"L16","sample_rate":8000,"channels":1}}}"#;
        let mut core = admitted(ClientProtocol::Telnyx, start, t0);
        for (chunk, value) in [(1, 100), (1, 100), (3, 300), (5, 500)] {
            core.handle_input(t0, Input::ClientText(&telnyx_media(chunk, value)));
        }
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out), [100]);
        core.handle_input(t0, Input::ClientText(r#"{"event":"stop"}"#));
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out), [0, 300, 0, 500]);
        let Some(Output::Close(outcome)) = out.last() else {
            panic!("expected a close, got {out:?}");
        };
        assert_eq!(outcome.concealed_frames, 2);
        assert_eq!(outcome.dropped_payloads, 1, "the duplicate");
    }

    /// Through the core, Vonage reply audio leaves in exact 20 ms binary frames, a barge-in
    /// sends the `clear` action, and a binary frame of the wrong size is counted and skipped.
    #[test]
    fn vonage_frames_both_ways() {
        let t0 = Instant::now();
        let first = r#"{"event":"websocket:connected","content-type":"audio/l16;rate=16000","api_key":"vxr_secret","provider":"echo"}"#;
        let mut core = admitted(ClientProtocol::Vonage, first, t0);
        core.handle_input(t0, Input::ClientBinary(&[0; 640]));
        core.handle_input(t0, Input::ClientBinary(&[0; 100]));
        core.handle_input(t0, Input::ClientBinary(&[0; 640]));
        let (out, _) = outputs(&mut core);
        assert_eq!(provider_frames(&out).len(), 2);
        core.handle_input(t0, Input::Provider(ProviderEvent::Audio(vec![1_000; 560])));
        let (out, _) = outputs(&mut core);
        let sizes: Vec<usize> = out
            .iter()
            .map(|o| match o {
                Output::ToClientBinary(frame) => frame.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // 560 samples at 8 kHz are 3 whole 20 ms frames (the rest waits), 640 bytes each at 16 kHz.
        assert_eq!(sizes, [640, 640, 640]);
        core.handle_input(t0, Input::Provider(ProviderEvent::SpeechStarted));
        let (out, _) = outputs(&mut core);
        assert!(
            matches!(out.as_slice(), [Output::ToClientText(text)] if text == r#"{"action":"clear"}"#),
            "{out:?}"
        );
        core.handle_input(t0, Input::ClientClosed);
        let (out, _) = outputs(&mut core);
        let Some(Output::Close(outcome)) = out.last() else {
            panic!("expected a close, got {out:?}");
        };
        assert_eq!((outcome.audio_in_ms, outcome.bad_frames), (40, 1));
    }

    fn drain(reorder: &mut Reorder, now: Instant) -> Vec<Option<u8>> {
        let mut out = Vec::new();
        while let Some(released) = reorder.pop(now) {
            match released {
                Reordered::Payload(buffer) => {
                    out.push(Some(buffer[0]));
                    reorder.recycle(buffer);
                }
                Reordered::Lost => out.push(None),
            }
        }
        out
    }

    /// Swapped payloads come out in order; a hole is lost only after the delay; buffers are
    /// reused, so the pool never grows past the buffer's capacity.
    #[test]
    fn reorders_and_reuses_buffers() {
        let t0 = Instant::now();
        let mut reorder = Reorder::new();
        reorder.push(t0, 1, &[1]);
        reorder.push(t0, 3, &[3]);
        assert_eq!(drain(&mut reorder, t0), [Some(1)]);
        reorder.push(t0, 2, &[2]);
        assert_eq!(drain(&mut reorder, t0), [Some(2), Some(3)]);
        reorder.push(t0, 5, &[5]);
        assert!(drain(&mut reorder, t0).is_empty());
        assert_eq!(reorder.deadline(), Some(t0 + JITTER_DELAY_DEFAULT));
        assert_eq!(
            drain(&mut reorder, t0 + Duration::from_millis(60)),
            [None, Some(5)]
        );
        assert!(reorder.deadline().is_none());
        for seq in 6..1_000u16 {
            reorder.push(t0, seq, &[seq as u8]);
            drain(&mut reorder, t0);
        }
        assert!(reorder.spare.len() <= usize::from(JITTER_CAPACITY_DEFAULT) + 1);
    }
}
