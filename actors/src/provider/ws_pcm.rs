//! `ws-pcm`: the adapter for a generic self-hosted model that speaks raw PCM16 over a
//! WebSocket ([`ProviderKind::WsPcm`](super::ProviderKind::WsPcm)).
//!
//! # voxroute's ws-pcm convention (what a self-hosted server implements)
//!
//! - voxroute dials the configured `ws://` / `wss://` URL. The upgrade request carries
//!   [`SAMPLE_RATE_HEADER`] (`X-Voxroute-Sample-Rate: 16000`), the rate of the route's spec,
//!   so one server can serve several rates.
//! - **Audio, both ways**: binary frames of 16-bit signed little-endian mono PCM at that rate.
//!   voxroute sends one 20 ms frame per message (640 bytes at 16 kHz); the server may send
//!   chunks of any even length. An odd-length frame is a protocol error: voxroute drops it and
//!   reports a non-fatal error; the connection continues. An empty frame is ignored.
//! - **Events, server → voxroute** (optional): text frames holding one JSON object.
//!   - `{"type":"transcript","text":"hello","final":true}`: recognised or produced text;
//!     `final` (default `false`) says the server will not revise it.
//!   - `{"type":"speech_started"}`: the caller started speaking; voxroute drops the audio it
//!     has queued for the caller (barge-in).
//!
//!   Unknown fields are ignored. Any other text frame (another `type`, not JSON) is ignored
//!   and counted.
//! - **Events, voxroute → server**: `{"type":"dtmf","digit":"5"}` when a telephone caller
//!   presses a key (`0`–`9`, `*`, `#`, `A`–`D`). A server may ignore it.
//! - **Ending**: when the caller is done, voxroute closes the WebSocket with code 1000. A server
//!   that ends the conversation closes with 1000 too; any other close code (or a dropped
//!   connection) is a provider failure, and the session fails over.
//!
//! Per-frame allocations: one `Vec<u8>` per outbound frame (it becomes the socket's message
//! without a further copy) and one `Vec<i16>` per inbound audio chunk (the event's payload).

use serde::Deserialize;
use voxroute_codecs::SampleRate;

use super::adapter::{
    AdapterOutput, CLOSE_NORMAL, ConnectRequest, Endpoint, ProviderAdapter, ProviderError, WsFrame,
    WsFrameRef,
};
use super::wire::{OddLength, pcm16_le_samples, send_pcm16_binary};
use super::{ProviderCommand, ProviderEvent};

/// Upgrade-request header telling a ws-pcm server the sample rate of the PCM16 both ways.
pub const SAMPLE_RATE_HEADER: &str = "X-Voxroute-Sample-Rate";

/// The ws-pcm adapter. It keeps no per-connection state: frames map one to one.
#[derive(Debug, Clone)]
pub struct WsPcmAdapter {
    /// The server's URL, from the route's spec.
    url: String,
    /// The PCM rate both ways, announced in [`SAMPLE_RATE_HEADER`].
    sample_rate: SampleRate,
}

impl WsPcmAdapter {
    /// An adapter for the server at `url` (`ws://` or `wss://`) taking and giving PCM16 at
    /// `sample_rate`.
    pub fn new(url: impl Into<String>, sample_rate: SampleRate) -> Self {
        WsPcmAdapter {
            url: url.into(),
            sample_rate,
        }
    }
}

/// The JSON events of the convention; unknown fields are skipped, only `text` is allocated.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerEvent {
    Transcript {
        text: String,
        #[serde(default, rename = "final")]
        is_final: bool,
    },
    SpeechStarted,
}

impl ProviderAdapter for WsPcmAdapter {
    fn endpoint(&self) -> Endpoint {
        Endpoint::WebSocket(
            ConnectRequest::new(self.url.clone())
                .header(SAMPLE_RATE_HEADER, self.sample_rate.hz().to_string()),
        )
    }

    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput) {
        match command {
            ProviderCommand::Audio(samples) => {
                send_pcm16_binary(&samples, out);
            }
            ProviderCommand::Dtmf { digit } => {
                let mut text = String::with_capacity(32);
                text.push_str(r#"{"type":"dtmf","digit":""#);
                text.push(digit);
                text.push_str(r#""}"#);
                out.send(WsFrame::Text(text));
            }
            // The convention has no flush message.
            ProviderCommand::Flush => {}
            ProviderCommand::Finish => out.close(CLOSE_NORMAL, ""),
        }
    }

    fn decode(
        &mut self,
        frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        match frame {
            WsFrameRef::Binary(bytes) => {
                let samples = pcm16_le_samples(bytes).map_err(|OddLength| {
                    ProviderError::bad_frame("ws-pcm binary frame of odd length is not PCM16")
                })?;
                if samples.is_empty() {
                    out.ignore();
                } else {
                    out.emit(ProviderEvent::Audio(samples));
                }
            }
            WsFrameRef::Text(text) => match serde_json::from_str::<ServerEvent>(text) {
                Ok(ServerEvent::Transcript { text, is_final }) => {
                    out.emit(ProviderEvent::Transcript { text, is_final });
                }
                Ok(ServerEvent::SpeechStarted) => out.emit(ProviderEvent::SpeechStarted),
                Err(_) => out.ignore(),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::testing::{GOLDEN_PCM16_LE, GOLDEN_SAMPLES, close_code};
    use super::*;

    fn adapter() -> WsPcmAdapter {
        WsPcmAdapter::new("ws://127.0.0.1:9/model?token=abc", SampleRate::HZ_16000)
    }

    /// Audio leaves as exact little-endian PCM16 bytes, extremes included.
    #[test]
    fn encode_is_pcm16_little_endian() {
        let mut out = AdapterOutput::new();
        adapter().encode(ProviderCommand::Audio(GOLDEN_SAMPLES.to_vec()), &mut out);
        assert_eq!(out.frames(), &[WsFrame::Binary(GOLDEN_PCM16_LE.to_vec())]);
        assert!(out.events().is_empty());
    }

    /// A caller's key press reaches the server as the documented JSON text frame.
    #[test]
    fn dtmf_is_a_json_text_frame() {
        let mut out = AdapterOutput::new();
        adapter().encode(ProviderCommand::Dtmf { digit: '#' }, &mut out);
        assert_eq!(
            out.frames(),
            &[WsFrame::Text(r##"{"type":"dtmf","digit":"#"}"##.into())]
        );
    }

    /// Encoding then decoding gives back the same samples (the codec is its own inverse).
    #[test]
    fn decode_inverts_encode() {
        let samples: Vec<i16> = (-320..320).map(|i: i16| i.wrapping_mul(97)).collect();
        let mut adapter = adapter();
        let mut out = AdapterOutput::new();
        adapter.encode(ProviderCommand::Audio(samples.clone()), &mut out);
        let frame = out.frames()[0].clone();
        out.clear();
        adapter.decode(frame.borrowed(), &mut out).unwrap();
        assert_eq!(out.events(), &[ProviderEvent::Audio(samples)]);
    }

    /// An odd-length frame is a non-fatal error and produces no event; an empty one is ignored.
    #[test]
    fn odd_length_is_a_non_fatal_error() {
        let mut out = AdapterOutput::new();
        let err = adapter()
            .decode(WsFrameRef::Binary(&[1, 2, 3]), &mut out)
            .unwrap_err();
        assert!(!err.is_fatal());
        assert!(out.events().is_empty());
        adapter().decode(WsFrameRef::Binary(&[]), &mut out).unwrap();
        assert!(out.events().is_empty());
        assert_eq!(out.ignored(), 1);
    }

    /// The two JSON events of the convention, with `final` defaulting to false and unknown
    /// fields allowed; everything else is ignored and counted.
    #[test]
    fn text_events_and_garbage() {
        let mut adapter = adapter();
        let mut out = AdapterOutput::new();
        for text in [
            r#"{"type":"transcript","text":"hello","final":true}"#,
            r#"{"type":"transcript","text":"hel","confidence":0.5}"#,
            r#"{"type":"speech_started"}"#,
            "not json",
            r#"{"type":"something_else"}"#,
            r#"{"type":"transcript"}"#,
            "[1,2,3]",
        ] {
            adapter.decode(WsFrameRef::Text(text), &mut out).unwrap();
        }
        assert_eq!(
            out.events(),
            &[
                ProviderEvent::Transcript {
                    text: "hello".into(),
                    is_final: true
                },
                ProviderEvent::Transcript {
                    text: "hel".into(),
                    is_final: false
                },
                ProviderEvent::SpeechStarted,
            ]
        );
        assert_eq!(out.ignored(), 4);
    }

    /// Finish closes politely with 1000 and sends nothing else.
    #[test]
    fn finish_requests_a_normal_close() {
        let mut out = AdapterOutput::new();
        adapter().encode(ProviderCommand::Finish, &mut out);
        assert!(out.frames().is_empty());
        assert_eq!(close_code(&out), Some(CLOSE_NORMAL));
    }

    /// The endpoint is the configured URL, with the rate announced in a header.
    #[test]
    fn endpoint_announces_the_rate() {
        let Endpoint::WebSocket(request) = adapter().endpoint() else {
            panic!("ws-pcm must dial a WebSocket");
        };
        assert_eq!(request.url, "ws://127.0.0.1:9/model?token=abc");
        assert_eq!(
            request.headers,
            vec![(SAMPLE_RATE_HEADER.to_owned(), "16000".to_owned())]
        );
    }
}
