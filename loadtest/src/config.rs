//! [`LoadConfig`]: what a load-test run does, its bounds, and [`LoadError`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// At most this many sessions per run: the preamble carries 12 bits of session id.
pub const MAX_SESSIONS: u32 = crate::signal::MAX_SESSION_ID + 1;

/// The longest `duration` and `ramp` accepted: one hour each.
pub const MAX_PHASE: Duration = Duration::from_secs(3_600);

/// The default address of the in-process provider (what `--print-config` tells the router).
pub const DEFAULT_PROVIDER_ADDR: &str = "127.0.0.1:9310";

/// The provider name the printed router configuration defines, and the default target.
pub const DEFAULT_PROVIDER_NAME: &str = "loadtest";

/// The caller protocol the sessions speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Twilio Media Streams on `/v1/telephony/twilio`: JSON text frames, base64 mu-law 8 kHz.
    Twilio,
    /// voxroute's native protocol on `/v1/ws`: binary PCM16 8 kHz frames.
    Native,
    /// WebRTC with `POST /v1/webrtc`: Opus 48 kHz both ways over SRTP
    /// ([`crate::webrtc`]).
    #[serde(rename = "webrtc")]
    WebRtc,
}

impl Transport {
    /// The router's endpoint path for this transport.
    pub fn path(self) -> &'static str {
        match self {
            Transport::Twilio => "/v1/telephony/twilio",
            Transport::Native => "/v1/ws",
            Transport::WebRtc => "/v1/webrtc",
        }
    }

    /// `twilio`, `native` or `webrtc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Twilio => "twilio",
            Transport::Native => "native",
            Transport::WebRtc => "webrtc",
        }
    }
}

/// What the sessions ask the router for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Target {
    /// A provider by name (`provider` parameter).
    Provider(String),
    /// A configured route by name (`route` parameter).
    Route(String),
}

impl Target {
    /// The query parameter (or start-message field) that asks for it, and its value.
    pub fn query_pair(&self) -> (&'static str, &str) {
        match self {
            Target::Provider(name) => ("provider", name.as_str()),
            Target::Route(name) => ("route", name.as_str()),
        }
    }
}

/// One run: N sessions against a running router, ramped, held for a fixed time.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The router's base URL, `ws://HOST:PORT` on loopback; the transport's path is added.
    pub router_url: String,
    /// Caller protocol.
    pub transport: Transport,
    /// Concurrent sessions (1 to [`MAX_SESSIONS`]).
    pub sessions: u32,
    /// Sessions start evenly spread over this time.
    pub ramp: Duration,
    /// Once the ramp is over, every session streams for this long more (the steady window,
    /// over which CPU is measured).
    pub duration: Duration,
    /// The caller's API key (omit for a router in `--dev` mode).
    pub api_key: Option<String>,
    /// Provider or route the sessions ask for.
    pub target: Target,
    /// Where the in-process provider listens (loopback); used by [`run`](crate::run).
    pub provider_addr: SocketAddr,
    /// The router's process id, to read its CPU time and memory from `/proc`.
    pub router_pid: Option<u32>,
    /// 8 kHz mono 16-bit speech to send; synthetic speech if `None` or unreadable.
    pub speech_wav: Option<PathBuf>,
}

impl LoadConfig {
    /// A configuration with the defaults of the command line: the default provider target,
    /// provider on [`DEFAULT_PROVIDER_ADDR`], the speech fixture of this repository.
    pub fn new(router_url: impl Into<String>, transport: Transport, sessions: u32) -> Self {
        LoadConfig {
            router_url: router_url.into(),
            transport,
            sessions,
            ramp: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            api_key: None,
            target: Target::Provider(DEFAULT_PROVIDER_NAME.to_owned()),
            // Unwrap is OK because the constant is a valid socket address.
            provider_addr: DEFAULT_PROVIDER_ADDR.parse().expect("a valid address"),
            router_pid: None,
            speech_wav: Some(default_speech_wav()),
        }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`LoadError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Err(LoadError::Invalid(format!(
                "sessions must be 1 to {MAX_SESSIONS}, not {}",
                self.sessions
            )));
        }
        if self.duration.is_zero() || self.duration > MAX_PHASE {
            return Err(LoadError::Invalid(
                "duration must be more than 0 and at most 3600 s".into(),
            ));
        }
        if self.ramp > MAX_PHASE {
            return Err(LoadError::Invalid("ramp must be at most 3600 s".into()));
        }
        if !self.provider_addr.ip().is_loopback() {
            return Err(LoadError::NotLoopback(self.provider_addr.to_string()));
        }
        let name = match &self.target {
            Target::Provider(name) | Target::Route(name) => name,
        };
        if name.is_empty() {
            return Err(LoadError::Invalid(
                "the provider or route name is empty".into(),
            ));
        }
        Ok(())
    }
}

/// The speech fixture of this repository (8 kHz), as built.
pub fn default_speech_wav() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../codecs/tests/fixtures/speech/speech-8k.wav")
}

/// Why a run could not be made (failures of individual sessions are counted in the report,
/// not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A setting is out of bounds or malformed.
    #[error("invalid load test configuration: {0}")]
    Invalid(String),
    /// The router (or the provider address) is not on this machine: the load test only drives
    /// loopback.
    #[error("refusing a non-loopback address `{0}`: the load test drives loopback only")]
    NotLoopback(String),
    /// The in-process provider could not listen.
    #[error("the in-process provider cannot listen on {addr}: {source}")]
    ProviderBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Another run is using this provider.
    #[error("another load-test run is using this provider")]
    ProviderBusy,
    /// The router's process cannot be read from `/proc`.
    #[error("cannot read the router process: {0}")]
    RouterProcess(String),
    /// The DSP reference measurement failed.
    #[error("DSP measurement failed: {0}")]
    Dsp(#[from] voxroute_codecs::CodecError),
    /// The JSON report could not be written.
    #[error("cannot write the report: {0}")]
    Report(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        let ok = LoadConfig::new("ws://127.0.0.1:8080", Transport::Twilio, 4);
        assert!(ok.validate().is_ok());
        for sessions in [0, MAX_SESSIONS + 1] {
            let mut c = ok.clone();
            c.sessions = sessions;
            assert!(matches!(c.validate(), Err(LoadError::Invalid(_))));
        }
        let mut c = ok.clone();
        c.duration = Duration::from_secs(3_601);
        assert!(c.validate().is_err());
        let mut c = ok;
        c.provider_addr = "10.0.0.1:9310".parse().unwrap();
        assert!(matches!(c.validate(), Err(LoadError::NotLoopback(_))));
    }
}
