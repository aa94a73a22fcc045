//! Wire helpers shared by the provider adapters: the small pieces of protocol plumbing that
//! are the same for every provider, kept in one place so that a fix reaches all of them.
//!
//! What it owns:
//!
//! - **PCM16 little-endian** to and from `i16` samples ([`extend_pcm16_le`],
//!   [`pcm16_le_bytes`], [`pcm16_le_samples`]), and the same through **base64**
//!   ([`Base64Pcm16`], with the one base64 engine [`BASE64`]: standard alphabet, padded on
//!   output, padding optional on input); audio frames out, as binary
//!   ([`send_pcm16_binary`]) or as base64 in a JSON text frame ([`Base64Pcm16::send_text`]);
//! - **URLs**: percent-encoding of query values ([`push_query_value`]), a base URL with one
//!   query parameter added ([`url_with_query`]) or a path appended ([`url_with_path`]), and
//!   a `Debug` view that hides the query string ([`ShowUrl`]);
//! - **lenient JSON fields** ([`Lenient`], [`LenientStr`]): a field of an unexpected JSON
//!   type reads as absent instead of failing the whole frame;
//! - **errors and events** that read the same in every adapter: the clipping of provider
//!   error messages ([`clip`], [`MAX_ERROR_MESSAGE_BYTES`]), the default close rule
//!   ([`default_on_close`]) and a final transcript that counts as ignored when empty
//!   ([`emit_final_or_ignore`]);
//! - under `cfg(test)`, the golden tests' plumbing (`testing`): feeding frames, collecting
//!   events, reading outbound frames as JSON.
//!
//! What callers must keep:
//!
//! - **Error texts are the caller's.** The helpers that can fail return small typed errors
//!   ([`OddLength`], [`AudioError`]); each adapter picks the [`ProviderError`] text it
//!   documents (and its tests pin). [`AudioError::bad_frame`] is the generic text, for
//!   adapters that have no text of their own.
//! - **Per-frame code stays allocation-free where it was.** Keep one [`Base64Pcm16`] per
//!   connection and reuse it for every frame: its buffer grows to the largest chunk seen, then
//!   stays. Each audio call then allocates only what leaves the adapter (the message, or the
//!   event's samples), at its exact size.
//! - **No empty audio frame goes out.** [`send_pcm16_binary`] and [`Base64Pcm16::send_text`]
//!   send nothing for no samples (Deepgram may take an empty frame as the end of the stream;
//!   the others have no use for one); send audio through them.
//! - **Leniency is a per-field choice.** Only fields declared [`Lenient`] forgive a wrong
//!   JSON type; a plain `String` or `bool` field still fails the frame, and some adapters rely
//!   on that (their "unexpected shape" errors).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::adapter::{
    AdapterOutput, Endpoint, ProviderAdapter, ProviderError, WsFrame, WsFrameRef,
};
use super::{ProviderCommand, ProviderEvent};

/// Longest provider error message passed on, in bytes; longer ones are cut at a character
/// boundary (they go to the caller's `error` event and to the logs).
pub(super) const MAX_ERROR_MESSAGE_BYTES: usize = 300;

/// Appends `samples` to `bytes` as PCM16 little-endian (two bytes a sample).
pub(super) fn extend_pcm16_le(bytes: &mut Vec<u8>, samples: &[i16]) {
    bytes.reserve(samples.len() * 2);
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
}

/// `samples` as PCM16 little-endian, in a vector allocated once at its exact length (for a
/// binary frame: the vector becomes the socket's message without a further copy).
pub(super) fn pcm16_le_bytes(samples: &[i16]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    extend_pcm16_le(&mut bytes, samples);
    bytes
}

/// Sends `samples` as one binary frame of PCM16 little-endian (allocated once, at its exact
/// size), or nothing when there are none: an empty audio frame is never sent (some providers
/// take one as the end of the stream). Returns whether a frame went out.
pub(super) fn send_pcm16_binary(samples: &[i16], out: &mut AdapterOutput) -> bool {
    if samples.is_empty() {
        return false;
    }
    out.send(WsFrame::Binary(pcm16_le_bytes(samples)));
    true
}

/// Bytes that cannot be PCM16: their number is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OddLength;

/// The samples of PCM16 little-endian `bytes`, in a vector allocated once at its exact length
/// (none for empty input).
///
/// # Errors
/// [`OddLength`] if `bytes` has an odd length; the caller chooses the error text.
pub(super) fn pcm16_le_samples(bytes: &[u8]) -> Result<Vec<i16>, OddLength> {
    let (pairs, rest) = bytes.as_chunks::<2>();
    if !rest.is_empty() {
        return Err(OddLength);
    }
    Ok(pairs.iter().map(|&pair| i16::from_le_bytes(pair)).collect())
}

/// Standard alphabet, padded on output; on input, padding is optional (proto3 JSON and most
/// encoders pad, some do not; accepting both costs nothing).
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why base64 audio could not be read as PCM16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AudioError {
    /// The text is not base64.
    NotBase64,
    /// The bytes are an odd number, so not PCM16.
    OddLength,
}

impl AudioError {
    /// The generic non-fatal `bad_frame` for this error, for adapters without texts of their
    /// own (OpenAI, ElevenLabs).
    pub(super) const fn bad_frame(self) -> ProviderError {
        match self {
            AudioError::NotBase64 => ProviderError::bad_frame("provider audio is not valid base64"),
            AudioError::OddLength => ProviderError::bad_frame(
                "provider audio has an odd number of bytes, so it is not PCM16",
            ),
        }
    }
}

/// PCM16 little-endian to and from base64, through one byte buffer kept across frames (it
/// grows to the largest chunk seen, then stays). Keep one per connection.
#[derive(Debug, Default)]
pub(super) struct Base64Pcm16 {
    /// The PCM bytes of the last frame, on their way to or from base64.
    bytes: Vec<u8>,
}

impl Base64Pcm16 {
    /// A converter whose buffer starts with room for `bytes` bytes of PCM.
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Base64Pcm16 {
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Sends `prefix`, the base64 of `samples` as PCM16 little-endian, then `suffix`, as one
    /// text frame allocated once at its exact length; nothing when there are no samples (an
    /// empty audio frame is never sent). `prefix` and `suffix` are JSON around a string
    /// value; base64 needs no escaping.
    pub(super) fn send_text(
        &mut self,
        prefix: &str,
        samples: &[i16],
        suffix: &str,
        out: &mut AdapterOutput,
    ) {
        if !samples.is_empty() {
            out.send(WsFrame::Text(self.message(prefix, samples, suffix)));
        }
    }

    /// The text [`send_text`](Self::send_text) sends, for any number of samples.
    fn message(&mut self, prefix: &str, samples: &[i16], suffix: &str) -> String {
        self.bytes.clear();
        extend_pcm16_le(&mut self.bytes, samples);
        // `None` only if the length overflows `usize`, which a frame in memory cannot; 0 is
        // then just a smaller capacity hint.
        let b64_len = base64::encoded_len(self.bytes.len(), true).unwrap_or(0);
        let mut text = String::with_capacity(prefix.len() + b64_len + suffix.len());
        text.push_str(prefix);
        BASE64.encode_string(&self.bytes, &mut text);
        text.push_str(suffix);
        text
    }

    /// The samples of base64 PCM16 little-endian (none for empty input), decoded through the
    /// kept buffer; only the returned vector is allocated.
    ///
    /// # Errors
    /// [`AudioError`] if `b64` is not base64 or decodes to an odd number of bytes.
    pub(super) fn decode(&mut self, b64: &str) -> Result<Vec<i16>, AudioError> {
        self.bytes.clear();
        BASE64
            .decode_vec(b64, &mut self.bytes)
            .map_err(|_| AudioError::NotBase64)?;
        pcm16_le_samples(&self.bytes).map_err(|OddLength| AudioError::OddLength)
    }
}

/// Appends `value` percent-encoded for a query string: RFC 3986 unreserved characters
/// (`A`–`Z`, `a`–`z`, `0`–`9`, `-`, `.`, `_`, `~`) stay, every other byte becomes `%XX`
/// (upper-case hex), UTF-8 bytes one by one.
pub(super) fn push_query_value(url: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            url.push('%');
            url.push(char::from(HEX[usize::from(byte >> 4)]));
            url.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// `base` with `name=value` added to its query string (`value` percent-encoded, `name` as it
/// is), and an `https://` or `http://` scheme turned into `wss://` or `ws://`.
pub(super) fn url_with_query(base: &str, name: &str, value: &str) -> String {
    let mut url = String::with_capacity(base.len() + name.len() + value.len() + 8);
    if let Some(rest) = base.strip_prefix("https://") {
        url.push_str("wss://");
        url.push_str(rest);
    } else if let Some(rest) = base.strip_prefix("http://") {
        url.push_str("ws://");
        url.push_str(rest);
    } else {
        url.push_str(base);
    }
    url.push(if base.contains('?') { '&' } else { '?' });
    url.push_str(name);
    url.push('=');
    push_query_value(&mut url, value);
    url
}

/// `base` without its trailing slashes, then `path` (which starts with `/`). The scheme is
/// kept as it is.
pub(super) fn url_with_path(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base);
    url.push_str(path);
    url
}

/// `Debug` of a URL without its query string (which may hold a key or a signature).
pub(super) struct ShowUrl<'a>(pub(super) &'a str);

impl fmt::Debug for ShowUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('?') {
            Some((base, _)) => write!(f, "\"{base}?…\""),
            None => write!(f, "\"{}\"", self.0),
        }
    }
}

/// A JSON field read leniently: `Some` when the value is of a kind `T` accepts (see
/// [`LenientValue`]), `None` for any other JSON value (which is skipped without allocating)
/// and, with `#[serde(default)]`, for a missing field. A field whose type differs in some
/// event then never fails the whole frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

/// A string field read leniently, borrowed from the frame when it holds no escapes (the
/// normal case, allocation-free); any other JSON type reads as absent.
pub(super) type LenientStr<'a> = Lenient<Cow<'a, str>>;

impl Lenient<Cow<'_, str>> {
    /// The string, if the value was one.
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl Lenient<u64> {
    /// The number, if the value was a non-negative integer or a string holding one.
    pub(super) fn get(&self) -> Option<u64> {
        self.0
    }
}

/// What a [`Lenient`] field accepts: each hook says what a JSON value of its kind reads as.
/// Every hook defaults to `None` (absent); floats, booleans, `null`, arrays and objects are
/// always absent.
pub(super) trait LenientValue<'de>: Sized {
    /// A string the deserializer could not lend (it held escapes).
    fn read_str(value: &str) -> Option<Self> {
        let _ = value;
        None
    }
    /// A string borrowed from the input.
    fn read_borrowed_str(value: &'de str) -> Option<Self> {
        Self::read_str(value)
    }
    /// A string the deserializer owns.
    fn read_string(value: String) -> Option<Self> {
        Self::read_str(&value)
    }
    /// A non-negative integer.
    fn read_u64(value: u64) -> Option<Self> {
        let _ = value;
        None
    }
    /// A negative integer.
    fn read_i64(value: i64) -> Option<Self> {
        let _ = value;
        None
    }
}

/// Strings only, borrowed when possible.
impl<'de: 'a, 'a> LenientValue<'de> for Cow<'a, str> {
    fn read_str(value: &str) -> Option<Self> {
        Some(Cow::Owned(value.to_owned()))
    }
    fn read_borrowed_str(value: &'de str) -> Option<Self> {
        Some(Cow::Borrowed(value))
    }
    fn read_string(value: String) -> Option<Self> {
        Some(Cow::Owned(value))
    }
}

/// A non-negative integer, or a string holding one (event ids some servers quote).
impl LenientValue<'_> for u64 {
    fn read_str(value: &str) -> Option<Self> {
        value.parse().ok()
    }
    fn read_u64(value: u64) -> Option<Self> {
        Some(value)
    }
    fn read_i64(value: i64) -> Option<Self> {
        u64::try_from(value).ok()
    }
}

impl<'de, T: LenientValue<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(PhantomData<T>);
        impl<'de, T: LenientValue<'de>> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(T::read_borrowed_str(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::read_str(v)))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(T::read_string(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(T::read_u64(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(T::read_i64(v)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

/// `text`, cut to at most `max_bytes` at a character boundary.
pub(super) fn clip(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The default close rule of [`ProviderAdapter::on_close`], for adapters that explain some
/// closes first and fall back to it: a normal close (1000) or none is the end of the
/// conversation; any other code is a retryable [`ProviderError::Closed`] carrying `reason`.
///
/// It is the trait's own default body, reached through [`DefaultClose`] (Rust has no way to
/// call a default method from an override), so the two cannot drift apart. That default
/// writes nothing to its output, so it gets an empty one of its own (no allocation) and
/// callers need not pass theirs.
pub(super) fn default_on_close(code: Option<u16>, reason: &str) -> Result<(), ProviderError> {
    let mut unused = AdapterOutput::new();
    let result = DefaultClose.on_close(code, reason, &mut unused);
    debug_assert!(
        unused.frames().is_empty()
            && unused.events().is_empty()
            && unused.close_request().is_none(),
        "the default on_close has started to produce output: pass the caller's through"
    );
    result
}

/// An adapter that overrides nothing but what the trait requires: the carrier of the trait's
/// default [`on_close`](ProviderAdapter::on_close) for [`default_on_close`]. Never connected.
struct DefaultClose;

impl ProviderAdapter for DefaultClose {
    fn endpoint(&self) -> Endpoint {
        Endpoint::InProcess
    }

    fn encode(&mut self, _: ProviderCommand, _: &mut AdapterOutput) {}

    fn decode(&mut self, _: WsFrameRef<'_>, _: &mut AdapterOutput) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// A final transcript of `text`, unless it is empty: then the frame counts as ignored. (Text
/// is not trimmed: a transcript of spaces is passed on.)
pub(super) fn emit_final_or_ignore(text: String, out: &mut AdapterOutput) {
    if text.is_empty() {
        out.ignore();
    } else {
        out.emit(ProviderEvent::Transcript {
            text,
            is_final: true,
        });
    }
}

/// The plumbing of the adapters' golden tests: feeding frames, collecting what came out,
/// reading outbound frames as JSON.
#[cfg(test)]
pub(crate) mod testing {
    use base64::Engine as _;
    use base64::engine::general_purpose;
    use serde_json::Value;

    use super::super::adapter::{
        AdapterOutput, ProviderAdapter, ProviderError, WsFrame, WsFrameRef,
    };
    use super::super::{ProviderCommand, ProviderEvent};

    /// The samples the adapters' golden tests send: zero, ±1, both extremes, and a value whose
    /// two bytes differ (byte order).
    pub(crate) const GOLDEN_SAMPLES: [i16; 6] = [0, 1, -1, i16::MAX, i16::MIN, 0x1234];
    /// [`GOLDEN_SAMPLES`] as PCM16 little-endian.
    pub(crate) const GOLDEN_PCM16_LE: [u8; 12] =
        [0, 0, 1, 0, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x80, 0x34, 0x12];
    /// [`GOLDEN_PCM16_LE`] in padded standard base64.
    pub(crate) const GOLDEN_B64: &str = "AAABAP///38AgDQS";

    /// The JSON of an outbound frame, which must be a text frame.
    pub(crate) fn text_json(frame: &WsFrame) -> Value {
        match frame {
            WsFrame::Text(text) => serde_json::from_str(text).expect("outbound text is JSON"),
            WsFrame::Binary(_) => panic!("expected a text frame, got binary"),
        }
    }

    /// The JSON of every frame in `out`, which must all be text.
    pub(crate) fn sent_json(out: &AdapterOutput) -> Vec<Value> {
        out.frames().iter().map(text_json).collect()
    }

    /// `adapter` after `on_open` and the provider's `reply` to it (its setup acknowledgement),
    /// which must be accepted.
    pub(crate) fn opened<A: ProviderAdapter>(mut adapter: A, reply: &str) -> A {
        let mut out = AdapterOutput::new();
        adapter.on_open(&mut out);
        adapter.decode(WsFrameRef::Text(reply), &mut out).unwrap();
        adapter
    }

    /// The JSON of the one text frame `adapter` sends for `samples`, which must be allocated
    /// once, at its exact size.
    pub(crate) fn sent_audio_json(adapter: &mut impl ProviderAdapter, samples: &[i16]) -> Value {
        let mut out = AdapterOutput::new();
        adapter.encode(ProviderCommand::Audio(samples.to_vec()), &mut out);
        let [WsFrame::Text(text)] = out.frames() else {
            panic!("one text frame per audio frame");
        };
        assert_eq!(text.len(), text.capacity(), "the message is allocated once");
        serde_json::from_str(text).unwrap()
    }

    /// The close code `out` asks for, if it asks for a close.
    pub(crate) fn close_code(out: &AdapterOutput) -> Option<u16> {
        out.close_request().map(|close| close.code)
    }

    /// Decodes `frame`, expecting success; returns what it produced.
    pub(crate) fn decode_frame_ok(
        adapter: &mut impl ProviderAdapter,
        frame: WsFrameRef<'_>,
    ) -> AdapterOutput {
        let mut out = AdapterOutput::new();
        if let Err(err) = adapter.decode(frame, &mut out) {
            panic!("{frame:?} was refused: {err}");
        }
        out
    }

    /// Decodes the text frame `text`, expecting success; returns what it produced.
    pub(crate) fn decode_ok(adapter: &mut impl ProviderAdapter, text: &str) -> AdapterOutput {
        decode_frame_ok(adapter, WsFrameRef::Text(text))
    }

    /// Decodes the text frame `text`, expecting an error and no events; returns the error and
    /// the output (for further checks).
    pub(crate) fn decode_err_output(
        adapter: &mut impl ProviderAdapter,
        text: &str,
    ) -> (ProviderError, AdapterOutput) {
        let mut out = AdapterOutput::new();
        let err = adapter
            .decode(WsFrameRef::Text(text), &mut out)
            .unwrap_err();
        assert!(out.events().is_empty(), "{:?}", out.events());
        (err, out)
    }

    /// Decodes the text frame `text`, expecting an error and no events; returns the error.
    pub(crate) fn decode_err(adapter: &mut impl ProviderAdapter, text: &str) -> ProviderError {
        decode_err_output(adapter, text).0
    }

    /// Decodes `frame`, expecting a non-fatal, non-retryable protocol violation reading
    /// `detail`, and no events.
    pub(crate) fn assert_bad_frame(
        adapter: &mut impl ProviderAdapter,
        frame: WsFrameRef<'_>,
        detail: &str,
    ) {
        let mut out = AdapterOutput::new();
        let err = adapter.decode(frame, &mut out).unwrap_err();
        assert!(!err.is_fatal() && !err.is_retryable(), "{err}");
        assert_eq!(
            err.to_string(),
            format!("provider protocol violation: {detail}")
        );
        assert!(out.events().is_empty(), "{detail}");
    }

    /// The events in `out` and how many frames it ignored.
    pub(crate) fn events_and_ignored(out: &AdapterOutput) -> (Vec<ProviderEvent>, u64) {
        (out.events().to_vec(), out.ignored())
    }

    /// Base64 of PCM16 little-endian samples, the way providers send audio; written without
    /// the helpers under test.
    pub(crate) fn b64_pcm(samples: &[i16]) -> String {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        general_purpose::STANDARD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Samples leave as exact little-endian bytes, extremes included, and come back the same.
    #[test]
    fn pcm16_round_trip() {
        let samples = testing::GOLDEN_SAMPLES;
        let bytes = pcm16_le_bytes(&samples);
        assert_eq!(
            bytes,
            [0, 0, 1, 0, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x80, 0x34, 0x12]
        );
        assert_eq!(bytes, testing::GOLDEN_PCM16_LE);
        assert_eq!(bytes.len(), bytes.capacity(), "allocated once, exactly");
        assert_eq!(pcm16_le_samples(&bytes), Ok(samples.to_vec()));

        let all: Vec<i16> = (i16::MIN..=i16::MAX).step_by(7).collect();
        assert_eq!(pcm16_le_samples(&pcm16_le_bytes(&all)), Ok(all));

        let mut kept = vec![9];
        extend_pcm16_le(&mut kept, &[0x0102]);
        assert_eq!(kept, [9, 2, 1], "appends");
        assert_eq!(pcm16_le_bytes(&[]), Vec::<u8>::new());
        assert_eq!(pcm16_le_samples(&[]), Ok(Vec::new()));
    }

    /// An odd number of bytes is not PCM16, whatever its length.
    #[test]
    fn pcm16_odd_length() {
        for bytes in [&[1u8][..], &[1, 2, 3], &[0; 641]] {
            assert_eq!(pcm16_le_samples(bytes), Err(OddLength), "{}", bytes.len());
        }
    }

    /// A message is prefix, padded standard base64, suffix, allocated at its exact size; its
    /// base64 decodes back to the samples through the same kept buffer.
    #[test]
    fn base64_round_trip() {
        let mut pcm = Base64Pcm16::with_capacity(4);
        let text = pcm.message(
            r#"{"a":""#,
            &[0, 1, -1, i16::MAX, i16::MIN, 0x1234],
            r#""}"#,
        );
        assert_eq!(text, r#"{"a":"AAABAP///38AgDQS"}"#);
        assert_eq!(testing::GOLDEN_B64, "AAABAP///38AgDQS");
        assert_eq!(text.len(), text.capacity());
        assert_eq!(pcm.message("", &[7], ""), "BwA=");
        assert_eq!(pcm.message("<", &[], ">"), "<>");

        for len in [0_i16, 1, 2, 3, 160, 481] {
            let samples: Vec<i16> = (0..len).map(|i| i.wrapping_mul(-211)).collect();
            let b64 = pcm.message("", &samples, "");
            assert_eq!(pcm.decode(&b64), Ok(samples), "{len} samples");
        }
        // Padding is optional on input.
        assert_eq!(pcm.decode("ZACc/9AHMPg"), Ok(vec![100, -100, 2000, -2000]));
        assert_eq!(pcm.decode("BwA"), Ok(vec![7]));
        // The test helper agrees with the encoder.
        assert_eq!(testing::b64_pcm(&[5, -6]), pcm.message("", &[5, -6], ""));
    }

    /// Text that is not base64, and base64 of an odd number of bytes, are told apart; their
    /// generic errors are non-fatal bad frames.
    #[test]
    fn base64_bad_input() {
        let mut pcm = Base64Pcm16::default();
        for bad in ["@@not base64@@", "AAA-", "A", "AA=A", "ZACc/9AHMPg=="] {
            assert_eq!(pcm.decode(bad), Err(AudioError::NotBase64), "{bad}");
        }
        for odd in ["AQID", "AQ==", "AQ"] {
            assert_eq!(pcm.decode(odd), Err(AudioError::OddLength), "{odd}");
        }
        // A failure leaves the converter usable.
        assert_eq!(pcm.decode("BwA="), Ok(vec![7]));

        let err = AudioError::NotBase64.bad_frame();
        assert!(!err.is_fatal() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "provider protocol violation: provider audio is not valid base64"
        );
        assert_eq!(
            AudioError::OddLength.bad_frame().to_string(),
            "provider protocol violation: provider audio has an odd number of bytes, so it is \
             not PCM16"
        );
    }

    /// Unreserved characters stay; reserved ones, `%`, spaces, controls and UTF-8 bytes are
    /// percent-encoded in upper-case hex.
    #[test]
    fn query_values_are_percent_encoded() {
        let mut url = String::from("x=");
        push_query_value(&mut url, "AZaz09-._~");
        assert_eq!(url, "x=AZaz09-._~");
        for (value, encoded) in [
            (":/?#[]@", "%3A%2F%3F%23%5B%5D%40"),
            ("!$&'()*+,;=", "%21%24%26%27%28%29%2A%2B%2C%3B%3D"),
            ("a b%c\n", "a%20b%25c%0A"),
            ("é€", "%C3%A9%E2%82%AC"),
            ("", ""),
        ] {
            let mut url = String::new();
            push_query_value(&mut url, value);
            assert_eq!(url, encoded, "{value:?}");
        }
    }

    /// A parameter joins with `?` or `&`, an http(s) scheme becomes ws(s), a ws(s) one stays;
    /// a path goes after the base's trailing slashes, the scheme untouched.
    #[test]
    fn urls_with_query_and_path() {
        for (base, name, value, url) in [
            (
                "wss://a.test/rt",
                "model",
                "gpt-realtime",
                "wss://a.test/rt?model=gpt-realtime",
            ),
            (
                "https://p.test/rt?t=1",
                "model",
                "m o/1",
                "wss://p.test/rt?t=1&model=m%20o%2F1",
            ),
            (
                "http://127.0.0.1:9/x",
                "agent_id",
                "a&b",
                "ws://127.0.0.1:9/x?agent_id=a%26b",
            ),
            ("ws://local.test", "id", "", "ws://local.test?id="),
        ] {
            assert_eq!(url_with_query(base, name, value), url, "{base}");
        }
        for (base, path, url) in [
            ("wss://dg.test//", "/v1/listen", "wss://dg.test/v1/listen"),
            ("https://keep.test", "/p", "https://keep.test/p"),
        ] {
            assert_eq!(url_with_path(base, path), url, "{base}");
        }
    }

    /// `ShowUrl` hides the query string and only it.
    #[test]
    fn show_url_hides_the_query() {
        assert_eq!(
            format!("{:?}", ShowUrl("wss://a.test/p?key=SECRET&x=1")),
            "\"wss://a.test/p?…\""
        );
        assert_eq!(
            format!("{:?}", ShowUrl("wss://a.test/p")),
            "\"wss://a.test/p\""
        );
    }

    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow, default)]
        text: LenientStr<'a>,
        #[serde(default)]
        id: Lenient<u64>,
    }

    fn fields(json: &str) -> (Option<String>, Option<u64>) {
        let fields: Fields<'_> = serde_json::from_str(json).unwrap();
        (fields.text.get().map(str::to_owned), fields.id.get())
    }

    /// A lenient string is a string (borrowed when unescaped); every other JSON type, nested
    /// ones included, reads as absent without failing the frame.
    #[test]
    fn lenient_strings() {
        let json = r#"{"text": "plain"}"#;
        let parsed: Fields<'_> = serde_json::from_str(json).unwrap();
        assert!(matches!(parsed.text.0, Some(Cow::Borrowed("plain"))));
        assert_eq!(fields(r#"{"text": "a\"b"}"#).0.as_deref(), Some("a\"b"));
        assert_eq!(fields(r#"{"text": ""}"#).0.as_deref(), Some(""));
        for other in [
            "7",
            "-7",
            "1.5",
            "true",
            "null",
            "[1, [2], {\"a\": 3}]",
            "{\"a\": [\"b\"]}",
        ] {
            let json = format!(r#"{{"text": {other}, "id": 1}}"#);
            assert_eq!(fields(&json), (None, Some(1)), "{other}");
        }
        assert_eq!(fields("{}"), (None, None));
    }

    /// A lenient id is a non-negative integer or a string holding one; anything else is
    /// absent.
    #[test]
    fn lenient_ids() {
        for (value, id) in [
            ("0", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("\"13\"", Some(13)),
            ("\"a\\u0031\"", None),
            ("\"1\\u0032\"", Some(12)),
            ("-1", None),
            ("\"-1\"", None),
            ("\"x\"", None),
            ("2.0", None),
            ("false", None),
            ("null", None),
            ("[1]", None),
            ("{\"id\": 1}", None),
        ] {
            let json = format!(r#"{{"id": {value}}}"#);
            assert_eq!(fields(&json).1, id, "{value}");
        }
    }

    /// Clipping keeps whole characters and never exceeds the limit.
    #[test]
    fn clip_at_a_character_boundary() {
        assert_eq!(clip("short", MAX_ERROR_MESSAGE_BYTES), "short");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("ééé", 5), "éé");
        assert_eq!(clip("€", 2), "");
        assert_eq!(clip("", 0), "");
        let long = "é".repeat(400);
        assert_eq!(
            clip(&long, MAX_ERROR_MESSAGE_BYTES),
            "é".repeat(MAX_ERROR_MESSAGE_BYTES / 2)
        );
    }

    /// A normal or status-less close ends the conversation; any other code is a retryable
    /// failure that keeps the reason.
    #[test]
    fn default_close_rule() {
        assert!(default_on_close(Some(1000), "bye").is_ok());
        assert!(default_on_close(None, "").is_ok());
        let err = default_on_close(Some(1011), "overloaded").unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the provider closed the connection (code 1011: overloaded)"
        );
    }

    /// Audio goes out as one frame of the right kind, and never as an empty one.
    #[test]
    fn audio_frames_are_never_empty() {
        let mut out = AdapterOutput::new();
        assert!(!send_pcm16_binary(&[], &mut out));
        Base64Pcm16::default().send_text("[", &[], "]", &mut out);
        assert!(out.frames().is_empty());
        assert!(send_pcm16_binary(&[0x0102], &mut out));
        Base64Pcm16::default().send_text(r#"[""#, &[7], r#""]"#, &mut out);
        assert_eq!(
            out.frames(),
            &[
                WsFrame::Binary(vec![2, 1]),
                WsFrame::Text(r#"["BwA="]"#.into())
            ]
        );
    }

    /// An empty final transcript counts as ignored; any other is emitted as it is.
    #[test]
    fn final_transcripts() {
        let mut out = AdapterOutput::new();
        emit_final_or_ignore(String::new(), &mut out);
        assert!(out.events().is_empty());
        assert_eq!(out.ignored(), 1);
        emit_final_or_ignore(" hi ".to_owned(), &mut out);
        assert_eq!(
            out.events(),
            &[ProviderEvent::Transcript {
                text: " hi ".into(),
                is_final: true
            }]
        );
        assert_eq!(out.ignored(), 1);
    }

    /// The test plumbing reads outbound text frames as JSON.
    #[test]
    fn testing_reads_outbound_json() {
        let mut out = AdapterOutput::new();
        out.send(WsFrame::Text(r#"{"a": 1}"#.into()));
        out.send(WsFrame::Text("[]".into()));
        assert_eq!(testing::sent_json(&out), vec![json!({"a": 1}), json!([])]);
    }
}
