//! Providers: the upstream side of a session.
//!
//! A provider is reached through a [`ProviderActor`] (one per upstream connection) that owns
//! the socket, and speaks through a sans-IO [`ProviderAdapter`] that
//! turns [`ProviderCommand`]s into wire frames and wire frames into [`ProviderEvent`]s. A new
//! provider is one adapter file plus its golden tests.
//!
//! What callers (the session) must keep: audio goes in as 20 ms mono PCM16 frames at the
//! provider's [`ProviderSpec::sample_rate`]; audio comes back as PCM16 at
//! [`ProviderSpec::output_sample_rate`], in chunks of any length (the session frames them).
//!
//! # Layout
//!
//! - [`adapter`]: the [`ProviderAdapter`] trait (sans-IO hooks, when each is called), the
//!   frames and output it works with, and [`ProviderError`];
//! - [`actor`]: [`ProviderActor`] and its messages ([`ProviderInput`] in, [`ProviderOutput`]
//!   out), the connect/close timeouts and the bounded queues;
//! - [`echo`]: the built-in echo, an in-process adapter;
//! - [`ws_pcm`]: a self-hosted model speaking PCM16 over a WebSocket, and voxroute's
//!   convention for such servers;
//! - [`openai`], [`deepgram`], [`elevenlabs`], [`gemini`]: the hosted providers' protocols
//!   (OpenAI Realtime, Deepgram live STT, ElevenLabs Agents, Gemini Live).

pub mod actor;
pub mod adapter;
pub mod deepgram;
pub mod echo;
pub mod elevenlabs;
pub mod gemini;
pub mod openai;
mod wire;
pub mod ws_pcm;

pub use actor::{GetProviderStats, ProviderActor, ProviderInput, ProviderOutput, ProviderStats};
pub use adapter::{AdapterOutput, Endpoint, ProviderAdapter, ProviderError, WsFrame, WsFrameRef};

use voxroute_codecs::SampleRate;

/// The adapter for a built-in provider kind, fresh for one connection.
pub fn adapter_for(spec: &ProviderSpec) -> Box<dyn ProviderAdapter> {
    match &spec.kind {
        ProviderKind::Echo => Box::new(echo::EchoAdapter::new()),
        ProviderKind::WsPcm { url } => {
            Box::new(ws_pcm::WsPcmAdapter::new(url.clone(), spec.sample_rate))
        }
        ProviderKind::OpenAi(settings) => {
            Box::new(openai::OpenAiAdapter::new((**settings).clone()))
        }
        ProviderKind::Deepgram(settings) => {
            Box::new(deepgram::DeepgramAdapter::new((**settings).clone()))
        }
        ProviderKind::ElevenLabs(settings) => {
            Box::new(elevenlabs::ElevenLabsAdapter::new((**settings).clone()))
        }
        ProviderKind::Gemini(settings) => {
            Box::new(gemini::GeminiAdapter::new((**settings).clone()))
        }
    }
}

/// What a session asks of its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderCommand {
    /// One 20 ms frame of caller audio, mono PCM16 at the provider's rate.
    Audio(Vec<i16>),
    /// The caller pressed a key (telephony DTMF: `0`–`9`, `*`, `#`, `A`–`D`); providers
    /// whose protocol has a place for it forward it, the others ignore it.
    Dtmf {
        /// The key.
        digit: char,
    },
    /// The caller asks for the audio sent so far to be transcribed now (Deepgram's
    /// `Finalize`, from a `/v1/listen` caller): Deepgram's adapter sends its `Finalize`, the
    /// others send nothing. The conversation goes on.
    Flush,
    /// The caller stopped (or hung up): flush anything pending, then close politely.
    Finish,
}

/// What a provider tells its session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// The upstream connection is up and configured; audio may flow.
    Ready,
    /// Audio for the caller: mono PCM16 at the provider's rate, any length.
    Audio(Vec<i16>),
    /// Text the provider recognised from the caller (for a speech-to-text provider, all its
    /// text).
    Transcript {
        /// The text.
        text: String,
        /// Whether the provider will not revise it.
        is_final: bool,
    },
    /// The words of the provider's own spoken reply (a speech-to-speech model's transcript
    /// of what it says). Interim ones hold the reply's words so far, like interim
    /// [`Transcript`](Self::Transcript)s.
    ReplyTranscript {
        /// The text.
        text: String,
        /// Whether the provider will not revise it (the reply's words are complete).
        is_final: bool,
    },
    /// The provider heard the caller start speaking: drop queued outbound audio (barge-in).
    SpeechStarted,
    /// The provider heard the caller stop speaking (its turn detection ended the turn).
    SpeechStopped,
    /// The provider finished its reply: no more audio or reply words for this turn.
    ReplyDone,
    /// The provider reported an error; `fatal` errors end (or fail over) the session.
    Error {
        /// What the provider said, for the caller's `error` event and the logs.
        message: String,
        /// Whether the connection cannot continue.
        fatal: bool,
    },
    /// The provider will close this connection soon (Gemini's `goAway`: its connections have
    /// a lifetime) and can resume the conversation on a new one: the session reconnects to
    /// the same provider with [`ProviderSpec::resumed`], without counting a failover.
    GoAway {
        /// The provider's latest handle to resume the conversation with, if it gave one
        /// (without one the new connection starts a fresh conversation).
        resumption_handle: Option<String>,
    },
    /// The upstream connection closed.
    Closed {
        /// Whether it closed because of a failure (as opposed to the conversation ending).
        error: bool,
    },
}

/// Which provider, at which rate: what a session needs to know before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    /// The provider's name as routes and records use it (`echo`, `ws-pcm`, ...).
    pub name: String,
    /// The rate of the PCM16 the provider takes (caller audio, [`ProviderCommand::Audio`]).
    pub sample_rate: SampleRate,
    /// The rate of the PCM16 the provider gives ([`ProviderEvent::Audio`]); the same as
    /// `sample_rate` for most providers (Gemini Live takes 16 kHz and answers at 24 kHz).
    pub output_sample_rate: SampleRate,
    /// How to reach it.
    pub kind: ProviderKind,
}

impl ProviderSpec {
    /// The same provider, labelled with voxroute's session id where its protocol has a place
    /// for it (DESIGN.md: Deepgram's `tag` query parameter, ElevenLabs' conversation
    /// `user_id`), so the provider's usage reports can be matched to voxroute's records.
    pub fn for_session(&self, session_id: uuid::Uuid) -> ProviderSpec {
        let mut spec = self.clone();
        match &mut spec.kind {
            ProviderKind::Deepgram(settings) => settings.tag = Some(session_id.to_string()),
            ProviderKind::ElevenLabs(settings) => {
                settings.user_id = Some(session_id.to_string());
            }
            _ => {}
        }
        spec
    }

    /// The same provider set up to transcribe the caller only, for a transcription session
    /// (`/v1/listen`), or `None` when it cannot deliver the caller's words apart from its own:
    /// Deepgram as it is (it transcribes the caller and says nothing); Gemini with input
    /// transcription on and output transcription off, so that every transcript it sends is
    /// the caller's; OpenAI Realtime with input transcription on (its default model when the
    /// configuration turned it off) and no answers (its caller transcripts are
    /// [`ProviderEvent::Transcript`], its own words [`ProviderEvent::ReplyTranscript`]).
    /// Echo, ws-pcm and ElevenLabs are `None`.
    pub fn for_transcription(&self) -> Option<ProviderSpec> {
        let mut spec = self.clone();
        match &mut spec.kind {
            ProviderKind::Deepgram(_) => {}
            ProviderKind::Gemini(settings) => {
                settings.transcribe_input = true;
                settings.transcribe_output = false;
            }
            ProviderKind::OpenAi(settings) => {
                settings.reply = false;
                settings
                    .transcription_model
                    .get_or_insert_with(|| openai::DEFAULT_TRANSCRIPTION_MODEL.to_owned());
            }
            _ => return None,
        }
        Some(spec)
    }

    /// The same provider for a new connection that resumes the conversation of `handle`
    /// (after [`ProviderEvent::GoAway`]): for Gemini the handle goes in the setup's
    /// `sessionResumption`; providers without resumption get an unchanged copy.
    pub fn resumed(&self, handle: Option<&str>) -> ProviderSpec {
        let mut spec = self.clone();
        if let ProviderKind::Gemini(settings) = &mut spec.kind {
            settings.resumption_handle = handle.map(str::to_owned);
        }
        spec
    }
}

/// The provider kinds voxroute speaks. The hosted providers' settings are boxed: they are
/// large, and a spec travels in session messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderKind {
    /// Sends every caller frame straight back, through the session's whole codec chain.
    Echo,
    /// A self-hosted model: PCM16 little-endian binary WebSocket frames both ways.
    WsPcm {
        /// `ws://` or `wss://` URL of the model.
        url: String,
    },
    /// OpenAI Realtime.
    OpenAi(Box<openai::OpenAiSettings>),
    /// Deepgram live transcription.
    Deepgram(Box<deepgram::DeepgramSettings>),
    /// ElevenLabs Agents conversation.
    ElevenLabs(Box<elevenlabs::ElevenLabsSettings>),
    /// Gemini Live.
    Gemini(Box<gemini::GeminiSettings>),
}
