//! The stand-in's "model": audio formats, the echo resampler, the speech detector and the
//! transcript clock, shared by every protocol.
//!
//! Everything here is pure and deterministic (no clock, no I/O): the same audio in gives the
//! same audio, transcripts and speech events out, which is what lets tests assert them.
//!
//! - [`WireFormat`]: PCM16 little-endian, G.711 mu-law or A-law at a rate, with decoding that
//!   tolerates a PCM16 sample split across two messages.
//! - [`LinearResampler`]: a streaming linear-interpolation resampler. It is **sample-exact**:
//!   output sample `k` sits at input position `k * from_hz / to_hz`, so whenever that position
//!   is a whole number the output equals the input sample there (16 kHz → 24 kHz: output
//!   `3j` is input `2j`). It is not band-limited; the stand-in needs predictability, not
//!   fidelity (voxroute's own rubato resampler is what gets measured).
//! - [`SpeechDetector`]: speech is any sample at or above [`SPEECH_THRESHOLD`] in magnitude;
//!   it stops after [`SPEECH_STOP_SILENCE_MS`] of quieter samples.
//! - [`TranscriptClock`]: one final transcript per whole second of received audio (text
//!   [`transcript_text`], e.g. `"audio 0.0-1.0s"`) and, optionally, one interim at each half
//!   second.

use voxroute_codecs::g711::G711Law;

/// Sample magnitude at or above which the stand-in hears speech.
pub const SPEECH_THRESHOLD: i16 = 1_000;

/// Audio time of continuous silence after which speech counts as stopped, in milliseconds
/// (OpenAI's `server_vad` default `silence_duration_ms`).
pub const SPEECH_STOP_SILENCE_MS: u64 = 500;

/// How the bytes of one audio message encode samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 16-bit signed little-endian PCM.
    Pcm16,
    /// G.711 mu-law, one byte per sample.
    Mulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
}

/// An audio format on a provider's wire: an encoding at a rate, mono.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFormat {
    /// How samples are encoded.
    pub encoding: Encoding,
    /// Samples per second.
    pub sample_rate_hz: u32,
}

impl WireFormat {
    /// PCM16 mono at `sample_rate_hz`.
    pub const fn pcm16(sample_rate_hz: u32) -> Self {
        WireFormat {
            encoding: Encoding::Pcm16,
            sample_rate_hz,
        }
    }

    /// Appends the samples in `bytes` to `out`. A PCM16 byte left over at the end is kept in
    /// `carry` and completed by the next call (a stream may split a sample).
    pub fn decode_into(&self, bytes: &[u8], carry: &mut Option<u8>, out: &mut Vec<i16>) {
        match self.encoding {
            Encoding::Pcm16 => {
                let mut rest = bytes;
                if let Some(low) = carry.take() {
                    match rest.split_first() {
                        Some((&high, tail)) => {
                            out.push(i16::from_le_bytes([low, high]));
                            rest = tail;
                        }
                        None => {
                            *carry = Some(low);
                            return;
                        }
                    }
                }
                let mut pairs = rest.chunks_exact(2);
                out.extend(
                    pairs
                        .by_ref()
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
                );
                if let [odd] = pairs.remainder() {
                    *carry = Some(*odd);
                }
            }
            Encoding::Mulaw => out.extend(bytes.iter().map(|&c| G711Law::Mulaw.decode_sample(c))),
            Encoding::Alaw => out.extend(bytes.iter().map(|&c| G711Law::Alaw.decode_sample(c))),
        }
    }

    /// The bytes of `samples` in this format.
    pub fn encode(&self, samples: &[i16]) -> Vec<u8> {
        match self.encoding {
            Encoding::Pcm16 => samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            Encoding::Mulaw => samples
                .iter()
                .map(|&s| G711Law::Mulaw.encode_sample(s))
                .collect(),
            Encoding::Alaw => samples
                .iter()
                .map(|&s| G711Law::Alaw.encode_sample(s))
                .collect(),
        }
    }
}

/// Milliseconds of audio in `samples` samples at `sample_rate_hz`, rounded down.
pub fn ms_of_samples(samples: u64, sample_rate_hz: u32) -> u64 {
    samples.saturating_mul(1000) / u64::from(sample_rate_hz.max(1))
}

/// A streaming linear-interpolation resampler (see the [module docs](self) for why linear).
///
/// Output sample `k` is the input interpolated at position `k * from_hz / to_hz`. An output
/// is produced as soon as both input samples around its position have arrived, so the output
/// lags the input by at most one input sample and no sample is lost between calls.
#[derive(Debug, Clone)]
pub struct LinearResampler {
    /// Input rate in Hz (at least 1).
    from_hz: u64,
    /// Output rate in Hz (at least 1).
    to_hz: u64,
    /// Index of the next output sample.
    next_out: u64,
    /// Input samples consumed by earlier calls.
    consumed: u64,
    /// The last input sample of the earlier calls: the left neighbour of the next output.
    last: i16,
}

impl LinearResampler {
    /// A resampler from `from_hz` to `to_hz` (identity when they are equal).
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        LinearResampler {
            from_hz: u64::from(from_hz.max(1)),
            to_hz: u64::from(to_hz.max(1)),
            next_out: 0,
            consumed: 0,
            last: 0,
        }
    }

    /// Resamples the next `input` samples of the stream.
    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        if self.from_hz == self.to_hz {
            return input.to_vec();
        }
        let total = self.consumed + input.len() as u64;
        let expected = (input.len() as u64 * self.to_hz / self.from_hz + 2) as usize;
        let mut output = Vec::with_capacity(expected);
        let sample_at = |index: u64, consumed: u64, last: i16| -> i16 {
            if index + 1 == consumed {
                last
            } else {
                // The index is at or past `consumed - 1` (see `process`'s loop invariant) and
                // below `total`, so it lies in this call's input.
                index
                    .checked_sub(consumed)
                    .and_then(|offset| input.get(offset as usize))
                    .copied()
                    .unwrap_or(last)
            }
        };
        loop {
            let position = self.next_out * self.from_hz;
            let index = position / self.to_hz;
            let remainder = position % self.to_hz;
            let needed = if remainder == 0 { index } else { index + 1 };
            if needed >= total {
                break;
            }
            let left = i64::from(sample_at(index, self.consumed, self.last));
            let value = if remainder == 0 {
                left
            } else {
                let right = i64::from(sample_at(index + 1, self.consumed, self.last));
                left + (right - left) * remainder as i64 / self.to_hz as i64
            };
            // Interpolating between two i16 values stays within i16.
            output.push(value as i16);
            self.next_out += 1;
        }
        if let Some(&last) = input.last() {
            self.last = last;
        }
        self.consumed = total;
        output
    }
}

/// A change of speech state, at a time on the audio clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    /// The first loud sample after silence (or at the start).
    Started {
        /// Audio time of that sample, in milliseconds since the connection's first sample.
        at_ms: u64,
    },
    /// [`SPEECH_STOP_SILENCE_MS`] of silence followed speech.
    Stopped {
        /// Audio time just after the last loud sample, in milliseconds.
        at_ms: u64,
    },
}

/// The stand-in's voice-activity detector: a magnitude threshold with a silence hangover.
#[derive(Debug, Clone)]
pub struct SpeechDetector {
    /// Rate of the samples pushed, in Hz.
    sample_rate_hz: u32,
    /// Samples pushed so far: the audio clock.
    samples_seen: u64,
    /// Whether speech is in progress.
    in_speech: bool,
    /// Index just past the last loud sample.
    last_loud_end: u64,
}

impl SpeechDetector {
    /// A detector for samples at `sample_rate_hz`, starting in silence.
    pub fn new(sample_rate_hz: u32) -> Self {
        SpeechDetector {
            sample_rate_hz: sample_rate_hz.max(1),
            samples_seen: 0,
            in_speech: false,
            last_loud_end: 0,
        }
    }

    /// Whether speech is in progress.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Feeds the next samples; returns the state changes they cause, in order.
    pub fn push(&mut self, samples: &[i16]) -> Vec<SpeechEvent> {
        let mut events = Vec::new();
        let stop_after = SPEECH_STOP_SILENCE_MS * u64::from(self.sample_rate_hz) / 1000;
        for &sample in samples {
            let index = self.samples_seen;
            self.samples_seen += 1;
            if sample.unsigned_abs() >= SPEECH_THRESHOLD.unsigned_abs() {
                if !self.in_speech {
                    self.in_speech = true;
                    events.push(SpeechEvent::Started {
                        at_ms: ms_of_samples(index, self.sample_rate_hz),
                    });
                }
                self.last_loud_end = index + 1;
            } else if self.in_speech && self.samples_seen - self.last_loud_end >= stop_after {
                self.in_speech = false;
                events.push(SpeechEvent::Stopped {
                    at_ms: ms_of_samples(self.last_loud_end, self.sample_rate_hz),
                });
            }
        }
        events
    }
}

/// A transcript the stand-in "recognised": a span of the audio clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// Start of the span, in milliseconds of audio since the connection's first sample.
    pub start_ms: u64,
    /// End of the span, in milliseconds of audio.
    pub end_ms: u64,
    /// Whether this span is final (`false`: an interim result the next one will replace).
    pub is_final: bool,
    /// The text, [`transcript_text`] of the span.
    pub text: String,
}

impl Transcript {
    fn new(start_ms: u64, end_ms: u64, is_final: bool) -> Self {
        Transcript {
            start_ms,
            end_ms,
            is_final,
            text: transcript_text(start_ms, end_ms),
        }
    }

    /// Span length in seconds.
    pub fn duration_secs(&self) -> f64 {
        (self.end_ms - self.start_ms) as f64 / 1000.0
    }

    /// Span start in seconds.
    pub fn start_secs(&self) -> f64 {
        self.start_ms as f64 / 1000.0
    }
}

/// The deterministic transcript text for the audio span `start_ms..end_ms`:
/// `"audio 0.0-1.0s"` (tenths of a second, rounded down).
pub fn transcript_text(start_ms: u64, end_ms: u64) -> String {
    format!(
        "audio {}.{}-{}.{}s",
        start_ms / 1000,
        start_ms % 1000 / 100,
        end_ms / 1000,
        end_ms % 1000 / 100
    )
}

/// Produces transcripts from the amount of audio received (its content does not matter).
#[derive(Debug, Clone)]
pub struct TranscriptClock {
    /// Rate of the audio counted, in Hz.
    sample_rate_hz: u32,
    /// Whether to produce an interim transcript at each half second.
    interim: bool,
    /// Samples counted so far.
    samples_seen: u64,
    /// Start of the span not yet covered by a final transcript, in samples.
    final_from: u64,
    /// Whether the interim of the current second was already produced.
    interim_done: bool,
}

impl TranscriptClock {
    /// A clock for audio at `sample_rate_hz`; `interim` adds a result at each half second.
    pub fn new(sample_rate_hz: u32, interim: bool) -> Self {
        TranscriptClock {
            sample_rate_hz: sample_rate_hz.max(1),
            interim,
            samples_seen: 0,
            final_from: 0,
            interim_done: false,
        }
    }

    /// Milliseconds of audio counted so far.
    pub fn audio_ms(&self) -> u64 {
        ms_of_samples(self.samples_seen, self.sample_rate_hz)
    }

    /// Counts `samples` more samples; returns the transcripts that became due, in order.
    pub fn advance(&mut self, samples: u64) -> Vec<Transcript> {
        let mut due = Vec::new();
        let rate = u64::from(self.sample_rate_hz);
        let half = rate / 2;
        let target = self.samples_seen + samples;
        loop {
            let interim_at = self.final_from + half;
            let final_at = self.final_from + rate;
            if self.interim && !self.interim_done && interim_at <= target {
                self.interim_done = true;
                due.push(self.span(self.final_from, interim_at, false));
            } else if final_at <= target {
                due.push(self.span(self.final_from, final_at, true));
                self.final_from = final_at;
                self.interim_done = false;
            } else {
                break;
            }
        }
        self.samples_seen = target;
        due
    }

    /// The final transcript of the audio counted since the last final one, if any (Deepgram
    /// `Finalize`, end of stream). The clock then continues from there.
    pub fn flush(&mut self) -> Option<Transcript> {
        if self.samples_seen == self.final_from {
            return None;
        }
        let span = self.span(self.final_from, self.samples_seen, true);
        self.final_from = self.samples_seen;
        self.interim_done = false;
        Some(span)
    }

    fn span(&self, from: u64, to: u64, is_final: bool) -> Transcript {
        Transcript::new(
            ms_of_samples(from, self.sample_rate_hz),
            ms_of_samples(to, self.sample_rate_hz),
            is_final,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PCM16 split at an odd byte decodes the same as in one piece.
    #[test]
    fn pcm16_carry_across_messages() {
        let samples: Vec<i16> = vec![1, -2, 300, i16::MIN, i16::MAX];
        let bytes = WireFormat::pcm16(16_000).encode(&samples);
        let mut carry = None;
        let mut out = Vec::new();
        let format = WireFormat::pcm16(16_000);
        format.decode_into(&bytes[..3], &mut carry, &mut out);
        format.decode_into(&bytes[3..4], &mut carry, &mut out);
        format.decode_into(&[], &mut carry, &mut out);
        format.decode_into(&bytes[4..], &mut carry, &mut out);
        assert_eq!(out, samples);
        assert_eq!(carry, None);
    }

    /// 16 → 24 kHz is sample-exact at every third output and keeps the stream's length.
    #[test]
    fn upsampling_is_sample_exact() {
        let input: Vec<i16> = (0..3200).map(|i| ((i * 37) % 2000 - 1000) as i16).collect();
        let mut resampler = LinearResampler::new(16_000, 24_000);
        let mut output = Vec::new();
        for chunk in input.chunks(317) {
            output.extend(resampler.process(chunk));
        }
        assert!((4798..=4800).contains(&output.len()), "{}", output.len());
        for (j, &sample) in output.iter().step_by(3).enumerate() {
            assert_eq!(sample, input[2 * j]);
        }
        // Midpoints interpolate: output 1 is a third of the way from input 0 to input 1.
        let expected = input[0] as i64 + (input[1] as i64 - input[0] as i64) * 2 / 3;
        assert_eq!(output[1] as i64, expected);
    }

    /// Equal rates are the identity; downsampling keeps every third sample at 24 → 8 kHz.
    #[test]
    fn identity_and_decimation() {
        let input: Vec<i16> = (0..240).collect();
        assert_eq!(LinearResampler::new(8_000, 8_000).process(&input), input);
        let out = LinearResampler::new(24_000, 8_000).process(&input);
        assert_eq!(out, (0..80).map(|i| i * 3).collect::<Vec<i16>>());
    }

    /// Silence, then a loud second, then silence: one start and one stop, at audio times.
    #[test]
    fn speech_detector_start_and_stop() {
        let mut vad = SpeechDetector::new(16_000);
        assert!(vad.push(&[0; 1600]).is_empty());
        let events = vad.push(&[5_000; 16_000]);
        assert_eq!(events, vec![SpeechEvent::Started { at_ms: 100 }]);
        assert!(vad.push(&[0; 7_999]).is_empty());
        assert_eq!(
            vad.push(&[0; 1]),
            vec![SpeechEvent::Stopped { at_ms: 1100 }]
        );
        assert!(!vad.in_speech());
    }

    /// Interims at each half second, finals at each second, a flush for the rest.
    #[test]
    fn transcript_clock_timing() {
        let mut clock = TranscriptClock::new(16_000, true);
        assert!(clock.advance(7_999).is_empty());
        let due = clock.advance(1);
        assert_eq!(due, vec![Transcript::new(0, 500, false)]);
        assert_eq!(due[0].text, "audio 0.0-0.5s");
        let due = clock.advance(8_000 + 16_000 + 100);
        assert_eq!(
            due,
            vec![
                Transcript::new(0, 1000, true),
                Transcript::new(1000, 1500, false),
                Transcript::new(1000, 2000, true),
            ]
        );
        assert_eq!(clock.flush(), Some(Transcript::new(2000, 2006, true)));
        assert_eq!(clock.flush(), None);
        assert_eq!(transcript_text(12_345, 13_999), "audio 12.3-13.9s");
    }
}
