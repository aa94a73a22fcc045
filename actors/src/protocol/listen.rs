//! Deepgram-compatible live transcription, served on `GET /v1/listen`: the query string, the
//! caller's frames and the `Results`/`Metadata` messages, as a sans-IO codec.
//!
//! This module owns what a Deepgram live-streaming client sees of voxroute (protocols.md §4):
//! [`ListenOptions::parse`] validates the query string (before the upgrade; a bad value is
//! a [`ListenQueryError`], answered with HTTP 400), and a [`ListenCodec`] turns the client's
//! frames into [`ListenInbound`] messages and writes `Results` and `Metadata` into a buffer it
//! reuses. It does no I/O and reads no clock.
//!
//! # The protocol as voxroute speaks it
//!
//! - **Query** (Deepgram's names): `encoding` (required: `linear16`, `mulaw` or `alaw`;
//!   Deepgram's other encodings are refused as unsupported), `sample_rate` (required for
//!   `linear16`, 8000–96000 and a multiple of 50; G.711 is 8000 only and defaults to it),
//!   `channels` (`1` only), `multichannel` (`false` only), `interim_results` (`true`/`false`,
//!   default `false`, as Deepgram's). Every other parameter (`model`, `punctuate`,
//!   `endpointing`, `tag`, ...) is accepted and ignored here; the edge reads `model` for the
//!   route.
//! - **Audio**: binary frames of raw audio in the declared encoding, 1 byte to
//!   [`MAX_AUDIO_MESSAGE_MS`] of audio each. Deepgram reads audio as a byte stream, so a
//!   `linear16` message may end inside a sample: its odd byte is kept and completed by the next
//!   message's first byte ([`ListenAudio`]), so no audio is lost or shifted. The session core
//!   cuts a frame into pieces of at most [`PIECE_MS`] ([`ListenCodec::piece_bytes`]) and its
//!   ingress chain re-frames them to 20 ms at the provider's rate. An empty frame is refused
//!   (Deepgram documents that it can close the stream; here it is only skipped and counted).
//! - **Control** (JSON text): `{"type":"KeepAlive"}`, `{"type":"Finalize"}` (an optional
//!   `channel` is allowed; the session passes it on as a provider flush, which only the
//!   Deepgram adapter acts on), `{"type":"CloseStream"}`. A text frame that is not a JSON object
//!   with a string `type`, or longer than [`MAX_TEXT_FRAME`](super::MAX_TEXT_FRAME), cannot be understood: Deepgram
//!   closes the stream with `DATA-0000` for it, and so does voxroute
//!   ([`ListenCodec::ends_stream`]). A well-formed message of a type this codec does not know
//!   (a newer SDK's, such as `Configure`) is skipped and counted, so that such clients keep
//!   their stream.
//! - **`Results`** ([`ListenCodec::encode_results`]): one per provider transcript, with
//!   `channel_index: [0, 1]`, `start` and `duration` in seconds of the caller's audio (a result
//!   spans from the end of the last final result to the audio received so far),
//!   `is_final` and `speech_final` both from the provider's finality (voxroute does not know
//!   the provider's endpoints), `from_finalize: false`, one alternative with the transcript,
//!   `confidence: 1.0` and no `words` (providers other than Deepgram give none, and the
//!   session passes text only), and `metadata` with the session id as `request_id` and the
//!   provider's name as the model's `name` and `arch`.
//! - **`Metadata`** ([`ListenCodec::encode_metadata`]) after `CloseStream`: the session id as
//!   `request_id`, the `sha256` of every audio byte accepted, `created` (the session's start),
//!   `duration` in seconds of audio accepted, `channels: 1`.
//!
//! # What callers (the session core) must keep
//!
//! One codec per session, fed every frame in order. Errors are [`ProtocolError`]s; skippable
//! ones leave the codec unchanged except for nothing (audio is hashed only when accepted).
//!
//! # Allocation
//!
//! Decoding a control message or an audio frame allocates nothing; `Results` and `Metadata`
//! are written into one `String` the codec reuses.

use std::fmt::{self, Write as _};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use voxroute_codecs::{AudioFormat, Channels, Codec, CodecError, SampleRate};

use super::{ProtocolError, Text, parse_frame, push_json_str};

/// Most audio one binary frame may carry, in milliseconds. Larger frames are refused
/// ([`ProtocolError::PayloadSize`]): the session forwards a frame's audio at once, and the
/// provider connection's queue holds about a second, so clients must stream, not upload.
pub const MAX_AUDIO_MESSAGE_MS: u32 = 500;

/// The pieces a binary frame is cut into for the ingress chain, in milliseconds (the chain
/// takes up to 120 ms at a time).
pub const PIECE_MS: u32 = 100;

/// `Results` and `Metadata` start at this capacity; the buffer grows only for a longer one.
const OUT_CAPACITY: usize = 512;

/// Why a query string was refused: each variant names the parameter and is answered with
/// HTTP 400 before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenQueryError {
    /// No `encoding`: raw audio needs one (containerised audio is not supported).
    #[error("the encoding parameter is required (linear16, mulaw or alaw)")]
    MissingEncoding,
    /// An `encoding` Deepgram knows but voxroute does not decode (`opus`, `flac`, ...).
    #[error("unsupported encoding: use linear16, mulaw or alaw")]
    UnsupportedEncoding,
    /// An `encoding` that is no Deepgram encoding.
    #[error("unknown encoding: use linear16, mulaw or alaw")]
    UnknownEncoding,
    /// No `sample_rate` for `linear16`.
    #[error("the sample_rate parameter is required for linear16")]
    MissingSampleRate,
    /// A `sample_rate` that is not a whole number.
    #[error("sample_rate must be a whole number of Hz")]
    BadSampleRate,
    /// A rate the encoding cannot run at (G.711 at anything but 8000, PCM off the grid).
    #[error("unsupported audio format: {0}")]
    BadAudioFormat(CodecError),
    /// `channels` other than 1, or `multichannel=true`: one channel only.
    #[error("only one channel is supported (channels=1, multichannel=false)")]
    Channels,
    /// A boolean parameter that is neither `true` nor `false`.
    #[error("the {0} parameter must be true or false")]
    BadBoolean(&'static str),
}

impl ListenQueryError {
    /// A stable snake_case name for the error (part of the external contract).
    pub const fn code(&self) -> &'static str {
        match self {
            ListenQueryError::MissingEncoding => "missing_encoding",
            ListenQueryError::UnsupportedEncoding => "unsupported_encoding",
            ListenQueryError::UnknownEncoding => "unknown_encoding",
            ListenQueryError::MissingSampleRate => "missing_sample_rate",
            ListenQueryError::BadSampleRate => "bad_sample_rate",
            ListenQueryError::BadAudioFormat(_) => "bad_audio_format",
            ListenQueryError::Channels => "unsupported_channels",
            ListenQueryError::BadBoolean(_) => "bad_boolean",
        }
    }
}

/// The query parameters this codec reads, as the client sent them (already percent-decoded).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenQuery<'a> {
    /// `encoding`.
    pub encoding: Option<&'a str>,
    /// `sample_rate`.
    pub sample_rate: Option<&'a str>,
    /// `channels`.
    pub channels: Option<&'a str>,
    /// `multichannel`.
    pub multichannel: Option<&'a str>,
    /// `interim_results`.
    pub interim_results: Option<&'a str>,
}

/// What a `/v1/listen` session was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// The caller's audio (mono).
    pub format: AudioFormat,
    /// Whether interim (not final) results are sent.
    pub interim_results: bool,
}

/// Deepgram's encodings that voxroute does not decode (protocols.md §4).
const OTHER_DEEPGRAM_ENCODINGS: [&str; 8] = [
    "linear32", "flac", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729",
];

impl ListenOptions {
    /// Validates the query string's audio parameters.
    ///
    /// # Errors
    /// A [`ListenQueryError`] naming the first bad parameter.
    pub fn parse(query: &ListenQuery<'_>) -> Result<Self, ListenQueryError> {
        let codec = match query.encoding {
            None | Some("") => return Err(ListenQueryError::MissingEncoding),
            Some("linear16") => Codec::Pcm16,
            Some("mulaw") => Codec::Mulaw,
            Some("alaw") => Codec::Alaw,
            Some(other) if OTHER_DEEPGRAM_ENCODINGS.contains(&other) => {
                return Err(ListenQueryError::UnsupportedEncoding);
            }
            Some(_) => return Err(ListenQueryError::UnknownEncoding),
        };
        let sample_rate_hz = match (query.sample_rate, codec) {
            (None, Codec::Pcm16) => return Err(ListenQueryError::MissingSampleRate),
            (None, _) => SampleRate::HZ_8000.hz(),
            (Some(text), _) => text
                .parse::<u32>()
                .map_err(|_| ListenQueryError::BadSampleRate)?,
        };
        let sample_rate =
            SampleRate::new(sample_rate_hz).map_err(ListenQueryError::BadAudioFormat)?;
        if !matches!(query.channels, None | Some("1")) {
            return Err(ListenQueryError::Channels);
        }
        if parse_bool(query.multichannel, "multichannel")? {
            return Err(ListenQueryError::Channels);
        }
        let format = AudioFormat::new(codec, sample_rate, Channels::Mono)
            .map_err(ListenQueryError::BadAudioFormat)?;
        Ok(ListenOptions {
            format,
            interim_results: parse_bool(query.interim_results, "interim_results")?,
        })
    }
}

/// `true`/`false` (absent is `false`).
fn parse_bool(value: Option<&str>, name: &'static str) -> Result<bool, ListenQueryError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ListenQueryError::BadBoolean(name)),
    }
}

/// A frame from the client, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenInbound {
    /// `KeepAlive`: the client is there; no reply.
    KeepAlive,
    /// `Finalize`: flush what can be flushed.
    Finalize,
    /// `CloseStream`: finish the results, send `Metadata`, close.
    CloseStream,
}

/// One result to write, from a provider transcript.
#[derive(Debug, Clone, Copy)]
pub struct ResultsMessage<'a> {
    /// The transcript.
    pub transcript: &'a str,
    /// Whether the provider will not revise it.
    pub is_final: bool,
    /// Caller audio forwarded so far, in milliseconds: the result's span ends here.
    pub audio_ms: u64,
    /// The session id (`metadata.request_id`).
    pub session_id: Uuid,
    /// The provider that produced it (`metadata.model_info.name`).
    pub provider: &'a str,
}

/// The sans-IO codec of one `/v1/listen` session.
pub struct ListenCodec {
    options: ListenOptions,
    /// The hash of every audio byte accepted, for `Metadata.sha256`.
    audio_sha256: Sha256,
    /// Audio bytes accepted.
    audio_bytes: u64,
    /// Where the last final result's span ended, in milliseconds of audio.
    final_until_ms: u64,
    /// `linear16`: the first byte of a sample the last message ended inside.
    carry: Option<u8>,
    /// The last outbound message; reused.
    out: String,
}

/// The whole samples of one audio message (see [`ListenCodec::decode_binary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAudio<'a> {
    /// A `linear16` sample that began in the previous message and ends in this one.
    pub joined: Option<[u8; 2]>,
    /// The message's other whole samples, borrowed from it (a trailing odd byte is kept for
    /// the next message).
    pub body: &'a [u8],
}

impl fmt::Debug for ListenCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenCodec")
            .field("options", &self.options)
            .field("audio_bytes", &self.audio_bytes)
            .field("final_until_ms", &self.final_until_ms)
            .finish_non_exhaustive()
    }
}

impl ListenCodec {
    /// A codec for a session started with `options`.
    pub fn new(options: ListenOptions) -> Self {
        ListenCodec {
            options,
            audio_sha256: Sha256::new(),
            audio_bytes: 0,
            final_until_ms: 0,
            carry: None,
            out: String::with_capacity(OUT_CAPACITY),
        }
    }

    /// What the session was started with.
    pub fn options(&self) -> ListenOptions {
        self.options
    }

    /// Bytes of the caller's audio in [`PIECE_MS`]: the most the core hands the ingress chain
    /// at once (whole samples).
    pub fn piece_bytes(&self) -> usize {
        bytes_in_ms(self.options.format, PIECE_MS)
    }

    /// Whether `error` (from [`decode_text`](Self::decode_text)) ends the stream, as Deepgram's
    /// `DATA-0000` does: a text frame that cannot be understood at all. A well-formed message
    /// of an unknown type does not.
    pub const fn ends_stream(error: &ProtocolError) -> bool {
        matches!(
            error,
            ProtocolError::MalformedJson
                | ProtocolError::MissingField(_)
                | ProtocolError::FrameTooLarge { .. }
        )
    }

    /// Decodes one text frame (a control message).
    ///
    /// # Errors
    /// [`ProtocolError::FrameTooLarge`], [`ProtocolError::MalformedJson`] (not a JSON object,
    /// or `type` not a string), [`ProtocolError::MissingField`] (`type`), or
    /// [`ProtocolError::UnknownEvent`].
    pub fn decode_text(&mut self, text: &str) -> Result<ListenInbound, ProtocolError> {
        let envelope: Envelope<'_> = parse_frame(text)?;
        let kind = envelope.kind.ok_or(ProtocolError::MissingField("type"))?;
        match &*kind.0 {
            "KeepAlive" => Ok(ListenInbound::KeepAlive),
            "Finalize" => Ok(ListenInbound::Finalize),
            "CloseStream" => Ok(ListenInbound::CloseStream),
            _ => Err(ProtocolError::UnknownEvent),
        }
    }

    /// Checks one binary frame (audio), counts it for `Metadata` and returns its whole
    /// samples: a `linear16` sample split across two messages comes out whole with the second.
    ///
    /// # Errors
    /// [`ProtocolError::PayloadSize`] when empty or longer than [`MAX_AUDIO_MESSAGE_MS`] of
    /// audio (skippable; nothing is counted).
    pub fn decode_binary<'a>(&mut self, frame: &'a [u8]) -> Result<ListenAudio<'a>, ProtocolError> {
        let max = bytes_in_ms(self.options.format, MAX_AUDIO_MESSAGE_MS);
        if frame.is_empty() || frame.len() > max {
            return Err(ProtocolError::PayloadSize {
                len: frame.len(),
                max,
            });
        }
        self.audio_sha256.update(frame);
        self.audio_bytes += frame.len() as u64;
        let mut body = frame;
        let mut joined = None;
        if let (Some(first), Some((second, rest))) = (self.carry, body.split_first()) {
            joined = Some([first, *second]);
            self.carry = None;
            body = rest;
        }
        if self.options.format.codec == Codec::Pcm16
            && body.len() % 2 == 1
            && let Some((last, whole)) = body.split_last()
        {
            self.carry = Some(*last);
            body = whole;
        }
        Ok(ListenAudio { joined, body })
    }

    /// Whether a transcript of this finality is sent (interim ones only with
    /// `interim_results=true`).
    pub fn wants(&self, is_final: bool) -> bool {
        is_final || self.options.interim_results
    }

    /// Writes one `Results` message.
    pub fn encode_results(&mut self, result: &ResultsMessage<'_>) -> &str {
        let start_ms = self.final_until_ms.min(result.audio_ms);
        let duration_ms = result.audio_ms - start_ms;
        if result.is_final {
            self.final_until_ms = result.audio_ms;
        }
        let out = &mut self.out;
        out.clear();
        let finality = if result.is_final { "true" } else { "false" };
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"type":"Results","channel_index":[0,1],"duration":{},"start":{},"is_final":{finality},"speech_final":{finality},"from_finalize":false,"channel":{{"alternatives":[{{"transcript":"#,
            Seconds(duration_ms),
            Seconds(start_ms),
        );
        push_json_str(out, result.transcript);
        out.push_str(r#","confidence":1.0,"words":[]}]},"metadata":{"request_id":""#);
        let mut id = Uuid::encode_buffer();
        out.push_str(result.session_id.hyphenated().encode_lower(&mut id));
        out.push_str(
            r#"","model_uuid":"00000000-0000-0000-0000-000000000000","model_info":{"name":"#,
        );
        push_json_str(out, result.provider);
        out.push_str(r#","version":"voxroute","arch":"#);
        push_json_str(out, result.provider);
        out.push_str("}}}");
        &self.out
    }

    /// Writes the `Metadata` message that ends a stream (after `CloseStream`). `created` is
    /// taken from the session id (a UUIDv7 holds its creation time).
    pub fn encode_metadata(&mut self, session_id: Uuid) -> &str {
        let digest = self.audio_sha256.clone().finalize();
        let format = self.options.format;
        let bytes_per_second = bytes_in_ms(format, 1_000) as u64;
        let duration_ms = self.audio_bytes * 1_000 / bytes_per_second.max(1);
        let out = &mut self.out;
        out.clear();
        out.push_str(r#"{"type":"Metadata","transaction_key":"deprecated","request_id":""#);
        let mut id = Uuid::encode_buffer();
        out.push_str(session_id.hyphenated().encode_lower(&mut id));
        out.push_str(r#"","sha256":""#);
        for byte in digest {
            let _ = write!(out, "{byte:02x}");
        }
        out.push_str(r#"","created":""#);
        if let Some(created) =
            session_id
                .get_timestamp()
                .map(|ts| ts.to_unix())
                .and_then(|(secs, nanos)| {
                    chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
                })
        {
            let _ = write!(out, "{}", created.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        }
        let _ = write!(
            out,
            r#"","duration":{},"channels":1}}"#,
            Seconds(duration_ms)
        );
        &self.out
    }
}

/// Bytes of `format`'s audio in `duration_ms` (mono; whole samples).
fn bytes_in_ms(format: AudioFormat, duration_ms: u32) -> usize {
    let bytes_per_sample = match format.codec {
        Codec::Pcm16 => 2,
        _ => 1,
    };
    format.sample_rate.samples_in_ms(duration_ms) * bytes_per_sample
}

/// Milliseconds written as seconds with three decimals (`1.02` is `1.020`).
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1_000, self.0 % 1_000)
    }
}

/// The discriminator, borrowed; everything else (e.g. `Finalize`'s `channel`) is skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_TEXT_FRAME;
    use serde_json::Value;

    fn query<'a>(encoding: &'a str, sample_rate: &'a str) -> ListenQuery<'a> {
        ListenQuery {
            encoding: Some(encoding),
            sample_rate: Some(sample_rate),
            ..ListenQuery::default()
        }
    }

    fn codec(interim_results: bool) -> ListenCodec {
        ListenCodec::new(ListenOptions {
            format: AudioFormat::pcm16_mono(SampleRate::HZ_16000),
            interim_results,
        })
    }

    /// The formats voxroute decodes parse, with Deepgram's defaults.
    #[test]
    fn good_queries_parse() {
        let options = ListenOptions::parse(&query("linear16", "16000")).unwrap();
        assert_eq!(
            options.format,
            AudioFormat::pcm16_mono(SampleRate::HZ_16000)
        );
        assert!(!options.interim_results);
        let mulaw = ListenOptions::parse(&ListenQuery {
            encoding: Some("mulaw"),
            channels: Some("1"),
            multichannel: Some("false"),
            interim_results: Some("true"),
            ..ListenQuery::default()
        })
        .unwrap();
        assert_eq!(mulaw.format.codec, Codec::Mulaw);
        assert_eq!(mulaw.format.sample_rate, SampleRate::HZ_8000);
        assert!(mulaw.interim_results);
        let alaw = ListenOptions::parse(&query("alaw", "8000")).unwrap();
        assert_eq!(alaw.format.codec, Codec::Alaw);
    }

    /// Every bad value is refused, naming what is wrong.
    #[test]
    fn bad_queries_are_refused() {
        let cases: [(ListenQuery<'_>, &str); 11] = [
            (ListenQuery::default(), "missing_encoding"),
            (query("", "16000"), "missing_encoding"),
            (query("opus", "48000"), "unsupported_encoding"),
            (query("flac", "16000"), "unsupported_encoding"),
            (query("wav", "16000"), "unknown_encoding"),
            (
                ListenQuery {
                    encoding: Some("linear16"),
                    ..ListenQuery::default()
                },
                "missing_sample_rate",
            ),
            (query("linear16", "fast"), "bad_sample_rate"),
            (query("linear16", "16001"), "bad_audio_format"),
            (query("mulaw", "16000"), "bad_audio_format"),
            (
                ListenQuery {
                    channels: Some("2"),
                    ..query("linear16", "16000")
                },
                "unsupported_channels",
            ),
            (
                ListenQuery {
                    interim_results: Some("yes"),
                    ..query("linear16", "16000")
                },
                "bad_boolean",
            ),
        ];
        for (bad, code) in cases {
            let error = ListenOptions::parse(&bad).unwrap_err();
            assert_eq!(error.code(), code, "{bad:?}: {error}");
        }
        let multichannel = ListenQuery {
            multichannel: Some("true"),
            ..query("linear16", "16000")
        };
        assert_eq!(
            ListenOptions::parse(&multichannel),
            Err(ListenQueryError::Channels)
        );
    }

    /// The three control messages decode, with or without extra fields.
    #[test]
    fn control_messages_decode() {
        let mut codec = codec(false);
        assert_eq!(
            codec.decode_text(r#"{"type":"KeepAlive"}"#),
            Ok(ListenInbound::KeepAlive)
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"Finalize","channel":0}"#),
            Ok(ListenInbound::Finalize)
        );
        assert_eq!(
            codec.decode_text(r#"{"type":"CloseStream"}"#),
            Ok(ListenInbound::CloseStream)
        );
    }

    /// Malformed text ends the stream (Deepgram's DATA-0000); an unknown type is skipped.
    #[test]
    fn bad_text_is_refused() {
        let mut codec = codec(false);
        for (text, error) in [
            ("not json", ProtocolError::MalformedJson),
            ("[1,2]", ProtocolError::MalformedJson),
            (r#"{"type":7}"#, ProtocolError::MalformedJson),
            (
                r#"{"kind":"KeepAlive"}"#,
                ProtocolError::MissingField("type"),
            ),
            (r#"{"type":"Configure"}"#, ProtocolError::UnknownEvent),
            (r#"{"type":"keepalive"}"#, ProtocolError::UnknownEvent),
        ] {
            assert_eq!(codec.decode_text(text), Err(error), "{text}");
            assert_eq!(
                ListenCodec::ends_stream(&error),
                error != ProtocolError::UnknownEvent
            );
        }
        let long = format!(
            r#"{{"type":"KeepAlive","pad":"{}"}}"#,
            "x".repeat(MAX_TEXT_FRAME)
        );
        let error = codec.decode_text(&long).unwrap_err();
        assert!(matches!(error, ProtocolError::FrameTooLarge { .. }));
        assert!(ListenCodec::ends_stream(&error));
    }

    /// Audio frames are bounded; accepted ones are hashed for `Metadata`, refused ones not.
    #[test]
    fn audio_frames_are_bounded_and_hashed() {
        let mut codec = codec(false);
        // 500 ms at 16 kHz PCM16 is 16000 bytes.
        assert_eq!(codec.piece_bytes(), 3_200);
        assert!(matches!(
            codec.decode_binary(&[]),
            Err(ProtocolError::PayloadSize {
                len: 0,
                max: 16_000
            })
        ));
        assert!(matches!(
            codec.decode_binary(&[0; 16_002]),
            Err(ProtocolError::PayloadSize { len: 16_002, .. })
        ));
        let audio = codec.decode_binary(&[0; 16_000]).unwrap();
        assert_eq!((audio.joined, audio.body.len()), (None, 16_000));
        let id = Uuid::now_v7();
        let metadata: Value = serde_json::from_str(codec.encode_metadata(id)).unwrap();
        assert_eq!(metadata["type"], "Metadata");
        assert_eq!(metadata["request_id"], id.to_string());
        assert_eq!(metadata["duration"], 0.5);
        assert_eq!(metadata["channels"], 1);
        let expected: String = Sha256::digest([0u8; 16_000])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(metadata["sha256"], expected);
        let created = metadata["created"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(created).is_ok(),
            "{created}"
        );
    }

    /// `linear16` split inside a sample loses nothing: the odd byte waits for the next
    /// message, whose first byte completes the sample.
    #[test]
    fn linear16_split_inside_a_sample_is_joined() {
        let mut codec = codec(false);
        let audio = codec.decode_binary(&[1, 2, 3]).unwrap();
        assert_eq!((audio.joined, audio.body), (None, &[1, 2][..]));
        let audio = codec.decode_binary(&[4]).unwrap();
        assert_eq!((audio.joined, audio.body), (Some([3, 4]), &[][..]));
        let audio = codec.decode_binary(&[5]).unwrap();
        assert_eq!((audio.joined, audio.body), (None, &[][..]));
        let audio = codec.decode_binary(&[6, 7, 8, 9]).unwrap();
        assert_eq!((audio.joined, audio.body), (Some([5, 6]), &[7, 8][..]));
        let audio = codec.decode_binary(&[10]).unwrap();
        assert_eq!((audio.joined, audio.body), (Some([9, 10]), &[][..]));
    }

    /// `Results` has the fields the SDK requires; spans run from the last final to now.
    #[test]
    fn results_carry_spans_and_metadata() {
        let mut codec = codec(true);
        let id = Uuid::now_v7();
        let result = |codec: &mut ListenCodec, text, is_final, audio_ms| -> Value {
            serde_json::from_str(codec.encode_results(&ResultsMessage {
                transcript: text,
                is_final,
                audio_ms,
                session_id: id,
                provider: "deepgram",
            }))
            .unwrap()
        };
        let interim = result(&mut codec, "hel", false, 500);
        assert_eq!(interim["type"], "Results");
        assert_eq!(interim["is_final"], false);
        assert_eq!(interim["start"], 0.0);
        assert_eq!(interim["duration"], 0.5);
        let first = result(&mut codec, "hello \"there\"", true, 1_020);
        assert_eq!(first["is_final"], true);
        assert_eq!(first["speech_final"], true);
        assert_eq!(first["duration"], 1.02);
        assert_eq!(first["channel_index"], serde_json::json!([0, 1]));
        let alternative = &first["channel"]["alternatives"][0];
        assert_eq!(alternative["transcript"], "hello \"there\"");
        assert_eq!(alternative["words"], serde_json::json!([]));
        assert_eq!(first["metadata"]["request_id"], id.to_string());
        assert_eq!(first["metadata"]["model_info"]["name"], "deepgram");
        let second = result(&mut codec, "again", true, 2_000);
        assert_eq!(second["start"], 1.02);
        assert_eq!(second["duration"], 0.98);
        assert!(codec.wants(false));
        assert!(!self::codec(false).wants(false));
        assert!(self::codec(false).wants(true));
    }
}
