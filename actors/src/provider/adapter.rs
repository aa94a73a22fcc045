//! The sans-IO provider adapter: one provider's wire protocol, with no socket, clock or task.
//!
//! A [`ProviderAdapter`] turns the session's [`ProviderCommand`]s into WebSocket frames and the
//! provider's frames into [`ProviderEvent`]s. The [`ProviderActor`](super::actor::ProviderActor)
//! owns everything with I/O in it (connecting, the socket, the writer queue, timers, the close
//! handshake) and calls the adapter's hooks in a fixed order:
//!
//! 1. [`endpoint`](ProviderAdapter::endpoint), once, to learn where to connect;
//! 2. [`on_open`](ProviderAdapter::on_open), once, when the socket is up (setup messages);
//! 3. then, in any order: [`encode`](ProviderAdapter::encode) for each command once the
//!    adapter has said [`ProviderEvent::Ready`], [`decode`](ProviderAdapter::decode) for each
//!    text or binary frame the provider sends, [`on_keepalive`](ProviderAdapter::on_keepalive)
//!    on its interval, and [`on_close`](ProviderAdapter::on_close) if the provider closes first.
//!
//! Every hook writes what it produces into an [`AdapterOutput`]: frames to send, events for the
//! session, a request to close, a count of frames skipped on purpose. The actor drains it after
//! every call, so one adapter never sees another connection's state and a hook never blocks.
//!
//! What an adapter must keep:
//! - **Never panic on provider input.** Bad input is a [`ProviderError`] from `decode`
//!   (non-fatal: the frame is dropped and counted; fatal: the connection ends).
//! - **Never emit [`ProviderEvent::Closed`]**: the actor owns the connection's lifecycle and
//!   sends exactly one `Closed`, always last. An adapter ends a conversation with
//!   [`AdapterOutput::close`] (or a protocol message after which the provider closes).
//! - **Say when audio may flow** by emitting [`ProviderEvent::Ready`] exactly once: the default
//!   `on_open` does it at once; a provider that acknowledges a setup message (Gemini
//!   `setupComplete`, OpenAI `session.created`) emits it from `decode` instead. The actor queues
//!   audio until then, within [`PROVIDER_CONNECT_TIMEOUT`](super::actor::PROVIDER_CONNECT_TIMEOUT).
//! - **Keep secrets out of `Debug` and errors.** API keys go in [`ConnectRequest`] headers or
//!   URL, whose `Debug` hides header values and the query string.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use super::{ProviderCommand, ProviderEvent};

/// WebSocket close code 1000: the purpose of the connection was fulfilled.
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code 1001: the endpoint is going away (the session ended without `Finish`).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1011: an unexpected condition ended the connection (our side failed).
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// The boxed underlying error a [`ProviderError`] may carry as its `source()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One protocol of one provider, without I/O. See the [module docs](self) for the call order.
///
/// One adapter value serves one connection: the actor builds a fresh one for every
/// connection (a failover or reconnect starts from a new adapter), so per-connection state
/// (event ids, "audio since the last keep-alive", a resumption handle) lives in `self`.
pub trait ProviderAdapter: Send + 'static {
    /// Where and how to connect.
    ///
    /// Called once, when the actor starts, before any other hook. There is no default: every
    /// provider says whether it is a WebSocket ([`Endpoint::WebSocket`]) or runs inside the
    /// process ([`Endpoint::InProcess`], e.g. `echo`).
    fn endpoint(&self) -> Endpoint;

    /// The connection is up: queue setup messages (session configuration, a start message).
    ///
    /// Called once, right after the WebSocket handshake (for [`Endpoint::InProcess`], at
    /// once). Frames put in `out` are sent before any audio. The default sends nothing and
    /// emits [`ProviderEvent::Ready`]; an adapter that must wait for the provider to
    /// acknowledge its setup does not emit `Ready` here but from [`decode`](Self::decode).
    fn on_open(&mut self, out: &mut AdapterOutput) {
        out.emit(ProviderEvent::Ready);
    }

    /// Turns one session command into frames (and, rarely, events).
    ///
    /// Called for every [`ProviderCommand`] once the adapter has emitted `Ready` (audio sent
    /// earlier is queued by the actor and handed over here, oldest first, as soon as it has),
    /// never after `Finish`. There is no default.
    ///
    /// On [`ProviderCommand::Finish`], put whatever ends the conversation politely in `out`:
    /// a protocol message after which the provider closes (Deepgram `CloseStream`), and/or
    /// [`AdapterOutput::close`] to close the socket now. If the provider has not closed within
    /// [`PROVIDER_FINISH_TIMEOUT`](super::actor::PROVIDER_FINISH_TIMEOUT), the actor closes it.
    fn encode(&mut self, command: ProviderCommand, out: &mut AdapterOutput);

    /// Turns one frame from the provider into events (and, for protocols with application
    /// pings, reply frames: ElevenLabs `ping` → `pong`).
    ///
    /// Called for every text and binary frame the provider sends, from the moment the socket
    /// is open until the actor has sent `Closed`. WebSocket pings and close frames never come
    /// here (the socket answers pings itself; closes go to [`on_close`](Self::on_close)). A
    /// frame the adapter skips on purpose (an event type it does not use) should be counted
    /// with [`AdapterOutput::ignore`]. There is no default.
    ///
    /// # Errors
    /// A [`ProviderError`] for a frame that breaks the protocol or reports an error. If it is
    /// not [fatal](ProviderError::is_fatal), the actor sends the session a non-fatal
    /// [`ProviderEvent::Error`], counts it, and keeps the connection; events already put in
    /// `out` are still delivered. A fatal error ends the connection (`Error { fatal: true }`,
    /// then `Closed { error: true }`).
    fn decode(
        &mut self,
        frame: WsFrameRef<'_>,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError>;

    /// How often the provider needs a keep-alive message, if at all.
    ///
    /// Called once, when the socket is up. The default is `None`: no timer. Deepgram, for
    /// example, closes a socket that has seen neither audio nor `KeepAlive` for 10 s.
    fn keepalive_interval(&self) -> Option<Duration> {
        None
    }

    /// Time for a keep-alive: put the message in `out`.
    ///
    /// Called every [`keepalive_interval`](Self::keepalive_interval) while the socket is open
    /// and the conversation has not been finished. The adapter decides whether one is needed
    /// (it sees every `encode`, so it knows whether audio flowed since the last call). The
    /// default does nothing.
    fn on_keepalive(&mut self, out: &mut AdapterOutput) {
        let _ = out;
    }

    /// The provider closed the socket before the conversation was finished by us.
    ///
    /// Called once when a close frame arrives, unless the actor itself started the close (then
    /// the provider's close frame is only the reply). `code` is `None` for a close frame
    /// without a status. Events put in `out` are delivered before `Closed`.
    ///
    /// # Errors
    /// Return `Ok(())` when the close ends the conversation normally (the session then gets
    /// `Closed { error: false }`), or the error it means (`Error { fatal: true }` and
    /// `Closed { error: true }`, so the session fails over). The default accepts
    /// [`CLOSE_NORMAL`] and a close without a status; any other code is
    /// [`ProviderError::Closed`]. Providers that report errors as close reasons (Deepgram
    /// `DATA-0000`) override it to explain them.
    fn on_close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        out: &mut AdapterOutput,
    ) -> Result<(), ProviderError> {
        let _ = out;
        match code {
            None | Some(CLOSE_NORMAL) => Ok(()),
            Some(_) => Err(ProviderError::Closed {
                code,
                reason: reason.to_owned(),
                source: None,
            }),
        }
    }
}

/// Where a provider lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// A WebSocket the actor dials.
    WebSocket(ConnectRequest),
    /// No socket: the adapter answers by itself (the built-in `echo`). The actor runs the same
    /// state machine as for a socket that opens at once; frames the adapter produces have
    /// nowhere to go and are dropped and counted, and [`AdapterOutput::close`] ends the
    /// connection immediately with `Closed { error: false }`.
    InProcess,
}

/// How to open a provider's WebSocket: the URL and extra handshake headers.
///
/// `Debug` shows the URL without its query string and the header names without their values,
/// because both may carry API keys (Gemini takes `?key=`, OpenAI an `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `ws://` or `wss://` URL, including any query parameters the provider takes.
    pub url: String,
    /// Extra HTTP headers for the upgrade request (`Authorization`, `Sec-WebSocket-Protocol`,
    /// vendor headers), added in order; a later header of the same name replaces an earlier.
    pub headers: Vec<(String, String)>,
}

impl ConnectRequest {
    /// A request for `url` with no extra headers.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectRequest {
            url: url.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the upgrade request.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (base, query) = match self.url.split_once('?') {
            Some((base, _)) => (base, "?…"),
            None => (self.url.as_str(), ""),
        };
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ConnectRequest")
            .field("url", &format_args!("{base}{query}"))
            .field("headers", &names)
            .finish()
    }
}

/// A frame to send to the provider (owned: it moves into the socket's writer queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame, usually JSON.
    Text(String),
    /// A binary frame, e.g. raw PCM16.
    Binary(Vec<u8>),
}

impl WsFrame {
    /// A borrowed view of the frame, as [`ProviderAdapter::decode`] takes it (for tests that
    /// feed an adapter the frames another one produced).
    pub fn borrowed(&self) -> WsFrameRef<'_> {
        match self {
            WsFrame::Text(text) => WsFrameRef::Text(text),
            WsFrame::Binary(bytes) => WsFrameRef::Binary(bytes),
        }
    }
}

/// A frame from the provider, borrowed from the socket's read buffer: decoding it copies only
/// what the resulting event keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFrameRef<'a> {
    /// A text frame (the socket has checked it is UTF-8).
    Text(&'a str),
    /// A binary frame.
    Binary(&'a [u8]),
}

/// A request to close the socket politely, with this close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The WebSocket close code, usually [`CLOSE_NORMAL`].
    pub code: u16,
    /// A short reason (at most 123 bytes on the wire; the actor truncates longer ones).
    pub reason: Cow<'static, str>,
}

/// What one adapter hook produced. The actor owns one and reuses it (its vectors keep their
/// capacity), draining it after every hook; golden tests read it with the accessors.
#[derive(Debug, Default)]
pub struct AdapterOutput {
    /// Frames for the provider, in order. Drained by the actor into the writer queue.
    pub(crate) frames: Vec<WsFrame>,
    /// Events for the session, in order. Drained by the actor into `ProviderOutput`s.
    pub(crate) events: Vec<ProviderEvent>,
    /// Set by [`close`](Self::close); taken by the actor after the frames are queued.
    pub(crate) close: Option<CloseRequest>,
    /// Inbound frames skipped on purpose since the last drain; added to the actor's stats.
    pub(crate) ignored: u64,
}

impl AdapterOutput {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame for the provider.
    pub fn send(&mut self, frame: WsFrame) {
        self.frames.push(frame);
    }

    /// Queues an event for the session.
    pub fn emit(&mut self, event: ProviderEvent) {
        self.events.push(event);
    }

    /// Asks the actor to close the socket politely once the queued frames are sent. No audio
    /// is sent after it. A second call replaces the code and reason.
    pub fn close(&mut self, code: u16, reason: impl Into<Cow<'static, str>>) {
        self.close = Some(CloseRequest {
            code,
            reason: reason.into(),
        });
    }

    /// Counts one inbound frame the adapter skipped on purpose (an event type voxroute does
    /// not use, text it does not understand).
    pub fn ignore(&mut self) {
        self.ignored += 1;
    }

    /// The frames queued so far.
    pub fn frames(&self) -> &[WsFrame] {
        &self.frames
    }

    /// The events queued so far.
    pub fn events(&self) -> &[ProviderEvent] {
        &self.events
    }

    /// The close requested, if any.
    pub fn close_request(&self) -> Option<&CloseRequest> {
        self.close.as_ref()
    }

    /// How many inbound frames were skipped on purpose.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Empties the output, keeping the vectors' capacity.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.events.clear();
        self.close = None;
        self.ignored = 0;
    }
}

/// Why a provider connection failed, or why one frame could not be used.
///
/// Two properties drive what happens next: [`is_fatal`](Self::is_fatal) (the connection cannot
/// continue: the session fails over or ends) and [`is_retryable`](Self::is_retryable) (trying
/// the *same* provider again may work; a session fails over to the next provider either way).
/// Display texts never contain the URL, headers or keys: they go to the caller's `error` event
/// and to the logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider could not be reached: name resolution, TCP (refused, unreachable, reset),
    /// TLS, or the WebSocket handshake failed. Fatal; retryable.
    #[error("could not connect to the provider: {source}")]
    Connect {
        /// What the socket layer said.
        #[source]
        source: BoxError,
    },
    /// The provider did not get ready (connect, handshake, setup acknowledgement) in time.
    /// Fatal; retryable.
    #[error("the provider did not get ready within {waited_ms} ms")]
    Timeout {
        /// How long we waited, in milliseconds.
        waited_ms: u64,
    },
    /// The provider refused our credentials: HTTP 401 or 403 on the upgrade, or an
    /// authentication error in its protocol. Fatal; not retryable (the same key fails again).
    #[error("the provider refused our credentials (HTTP {status})")]
    AuthRefused {
        /// The HTTP status (401 or 403; adapters reporting an in-protocol refusal use 401).
        status: u16,
    },
    /// The provider answered the upgrade with another HTTP status (404, 429, 5xx...). Fatal;
    /// retryable for 429 and 5xx only.
    #[error("the provider refused the connection (HTTP {status})")]
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// A frame broke the provider's protocol: odd-length PCM16, JSON missing a required field,
    /// a WebSocket protocol error. Not retryable; fatal only if `fatal` says so (a bad frame
    /// is normally dropped and counted).
    #[error("provider protocol violation: {detail}")]
    Protocol {
        /// What was wrong (no payload bytes: they may hold a caller's words).
        detail: Cow<'static, str>,
        /// Whether the connection cannot continue.
        fatal: bool,
    },
    /// The provider reported an error in its own protocol (an `error` event). Not retryable;
    /// fatal if the provider says the session is over.
    #[error("provider error: {message}")]
    Provider {
        /// What the provider said.
        message: String,
        /// Whether the connection cannot continue.
        fatal: bool,
    },
    /// The connection closed before the conversation was finished: a close frame with an
    /// error code, or the TCP connection dropped. Fatal; retryable.
    #[error("the provider closed the connection{}", close_suffix(*.code, .reason))]
    Closed {
        /// The close code, if a close frame arrived.
        code: Option<u16>,
        /// The close reason or what the socket said.
        reason: String,
        /// The socket error, if the connection dropped.
        #[source]
        source: Option<BoxError>,
    },
    /// The provider's configuration cannot work: a malformed URL or header, `wss://` without
    /// TLS support built in. Fatal; not retryable.
    #[error("invalid provider configuration: {detail}")]
    Config {
        /// What is wrong (never the URL itself: it may hold a key).
        detail: Cow<'static, str>,
    },
}

fn close_suffix(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (Some(code), true) => format!(" (code {code})"),
        (Some(code), false) => format!(" (code {code}: {reason})"),
        (None, true) => String::new(),
        (None, false) => format!(" ({reason})"),
    }
}

impl ProviderError {
    /// A non-fatal protocol violation with a fixed description: the per-frame error, built
    /// without allocating.
    pub const fn bad_frame(detail: &'static str) -> Self {
        ProviderError::Protocol {
            detail: Cow::Borrowed(detail),
            fatal: false,
        }
    }

    /// Whether the connection cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        match self {
            ProviderError::Protocol { fatal, .. } | ProviderError::Provider { fatal, .. } => *fatal,
            ProviderError::Connect { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::AuthRefused { .. }
            | ProviderError::Rejected { .. }
            | ProviderError::Closed { .. }
            | ProviderError::Config { .. } => true,
        }
    }

    /// Whether connecting to the same provider again may succeed (the failure was transient).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::Closed { .. } => true,
            ProviderError::Rejected { status } => *status == 429 || (500..600).contains(status),
            ProviderError::AuthRefused { .. }
            | ProviderError::Protocol { .. }
            | ProviderError::Provider { .. }
            | ProviderError::Config { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fatal/retryable are what the session's failover relies on: pin them per variant.
    #[test]
    fn error_flags_per_variant() {
        let connect = ProviderError::Connect {
            source: "refused".into(),
        };
        assert!(connect.is_fatal() && connect.is_retryable());
        let timeout = ProviderError::Timeout { waited_ms: 5000 };
        assert!(timeout.is_fatal() && timeout.is_retryable());
        let auth = ProviderError::AuthRefused { status: 401 };
        assert!(auth.is_fatal() && !auth.is_retryable());
        assert!(ProviderError::Rejected { status: 503 }.is_retryable());
        assert!(ProviderError::Rejected { status: 429 }.is_retryable());
        assert!(!ProviderError::Rejected { status: 404 }.is_retryable());
        let bad = ProviderError::bad_frame("odd");
        assert!(!bad.is_fatal() && !bad.is_retryable());
        let closed = ProviderError::Closed {
            code: Some(1011),
            reason: "overloaded".into(),
            source: None,
        };
        assert!(closed.is_fatal() && closed.is_retryable());
        assert_eq!(
            closed.to_string(),
            "the provider closed the connection (code 1011: overloaded)"
        );
        let config = ProviderError::Config {
            detail: "bad url".into(),
        };
        assert!(config.is_fatal() && !config.is_retryable());
    }

    /// Keys travel in URL queries and headers; `Debug` (and so any `{:?}` log) must hide them.
    #[test]
    fn connect_request_debug_hides_query_and_header_values() {
        let request = ConnectRequest::new("wss://example.test/v1/live?key=SECRET1")
            .header("Authorization", "Bearer SECRET2");
        let shown = format!("{request:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("wss://example.test/v1/live?…"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
    }

    /// The default `on_close` treats a normal or status-less close as the end of the
    /// conversation and any other code as a retryable failure.
    #[test]
    fn default_on_close_accepts_only_normal_closes() {
        struct Minimal;
        impl ProviderAdapter for Minimal {
            fn endpoint(&self) -> Endpoint {
                Endpoint::InProcess
            }
            fn encode(&mut self, _: ProviderCommand, _: &mut AdapterOutput) {}
            fn decode(
                &mut self,
                _: WsFrameRef<'_>,
                out: &mut AdapterOutput,
            ) -> Result<(), ProviderError> {
                out.ignore();
                Ok(())
            }
        }
        let mut out = AdapterOutput::new();
        let mut adapter = Minimal;
        adapter.on_open(&mut out);
        assert_eq!(out.events(), &[ProviderEvent::Ready]);
        assert!(adapter.on_close(Some(CLOSE_NORMAL), "", &mut out).is_ok());
        assert!(adapter.on_close(None, "", &mut out).is_ok());
        let err = adapter
            .on_close(Some(1001), "restart", &mut out)
            .unwrap_err();
        assert!(err.is_fatal() && err.is_retryable());
        out.clear();
        assert!(out.events().is_empty() && out.close_request().is_none());
    }
}
