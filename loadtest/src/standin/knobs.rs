//! Failure and timing knobs: how the stand-in misbehaves on purpose.
//!
//! [`Knobs`] is set once for the whole server (the `voxroute-standin` flags, or the value
//! handed to [`serve`](super::serve)) and can be overridden for one connection with the
//! `standin` query parameter of the upgrade request, e.g.
//! `/v1/listen?encoding=linear16&sample_rate=16000&standin=latency_ms:50,fail_after_secs:2`.
//! The override is a comma-separated list of `name:value` items using the field names below
//! (a boolean knob may be given by its name alone); it is parsed by
//! [`Knobs::with_overrides`]. Providers ignore query parameters they do not know, so a
//! voxroute route can carry it in its upstream URL.

use std::str::FromStr;
use std::time::Duration;

/// Default of [`Knobs::idle_timeout_ms`]: Deepgram's documented 10 s window.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 10_000;

/// Default of [`Knobs::ping_interval_ms`]: how often the ElevenLabs stand-in sends `ping`.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 2_000;

/// The longest [`Knobs::latency`] applied: one hour.
pub const MAX_LATENCY: Duration = Duration::from_secs(3_600);

/// How a connection fails when [`Knobs::fail_after_secs`] runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Send a WebSocket close frame with code 1011 (internal error), reason
    /// `standin: fail_after`, at once (messages still held back by `latency_ms` are
    /// discarded), then finish the closing handshake.
    #[default]
    Close,
    /// Reset the TCP connection (zero linger: an RST, no close frame), as a crashed server or
    /// a broken network path would.
    Drop,
}

impl FromStr for FailMode {
    type Err = KnobError;

    fn from_str(text: &str) -> Result<Self, KnobError> {
        match text {
            "close" => Ok(FailMode::Close),
            "drop" => Ok(FailMode::Drop),
            _ => Err(KnobError::BadValue {
                knob: "fail_mode".into(),
                value: text.into(),
            }),
        }
    }
}

/// The stand-in's behaviour knobs. The default is a well-behaved, fast provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Delay added to every server → client message (close frames included), in
    /// milliseconds. Order is kept. 0: none.
    pub latency_ms: u64,
    /// Seconds after the upgrade at which the connection fails (see [`fail_mode`]).
    /// `None`: never.
    ///
    /// [`fail_mode`]: Knobs::fail_mode
    pub fail_after_secs: Option<f64>,
    /// How the connection fails when `fail_after_secs` runs out.
    pub fail_mode: FailMode,
    /// Answer every upgrade with HTTP 401, whatever the key, as the real services do for a
    /// bad key.
    pub refuse_auth: bool,
    /// Replace every Nth server → client text message of a connection (N, 2N, …; counted
    /// from 1) with malformed JSON. `None` (or 0): never.
    pub malformed_every: Option<u64>,
    /// Answer every upgrade with HTTP 429 (rate limited), for every protocol.
    pub rate_limit: bool,
    /// Deepgram only: close with 1011 `NET-0001` when neither audio nor `KeepAlive` arrived
    /// for this long, in milliseconds.
    pub idle_timeout_ms: u64,
    /// ElevenLabs only: interval between `ping` events, in milliseconds. 0: no pings.
    pub ping_interval_ms: u64,
    /// Gemini only: send server messages as JSON in **binary** frames instead of text frames.
    /// Browser examples of the real Live API decode server messages from Blobs, which
    /// suggests binary frames (unverified); this lets tests check an adapter reads both.
    pub gemini_binary_frames: bool,
    /// Gemini only: this many seconds after `setupComplete`, send `goAway` (the connection's
    /// lifetime is ending; the client should resume on a new connection with the handle of
    /// the last `sessionResumptionUpdate`). `None`: never.
    pub gemini_go_away_after_secs: Option<f64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency_ms: 0,
            fail_after_secs: None,
            fail_mode: FailMode::Close,
            refuse_auth: false,
            malformed_every: None,
            rate_limit: false,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            gemini_binary_frames: false,
            gemini_go_away_after_secs: None,
        }
    }
}

/// A knob override that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KnobError {
    /// The name is not a knob.
    #[error("unknown stand-in knob `{0}`")]
    UnknownKnob(String),
    /// The value does not parse for that knob.
    #[error("bad value `{value}` for stand-in knob `{knob}`")]
    BadValue {
        /// The knob's name.
        knob: String,
        /// The value given.
        value: String,
    },
}

impl Knobs {
    /// The extra delay of every server message, capped at [`MAX_LATENCY`] (a per-connection
    /// override is client input and must not overflow the clock).
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms).min(MAX_LATENCY)
    }

    /// When the connection fails, as a time after the upgrade (`None`: never; a negative or
    /// non-finite value counts as never).
    pub fn fail_after(&self) -> Option<Duration> {
        self.fail_after_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    }

    /// When a Gemini connection gets `goAway`, as a time after its `setupComplete` (`None`:
    /// never; a negative or non-finite value counts as never).
    pub fn gemini_go_away_after(&self) -> Option<Duration> {
        self.gemini_go_away_after_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    }

    /// `malformed_every` with 0 read as off.
    pub fn malformed_period(&self) -> Option<u64> {
        self.malformed_every.filter(|&n| n > 0)
    }

    /// These knobs with the overrides of a `standin` query value applied (see the
    /// [module docs](self) for the syntax). An empty spec changes nothing.
    ///
    /// # Errors
    /// [`KnobError`] for an unknown name or a value that does not parse; nothing is applied.
    pub fn with_overrides(&self, spec: &str) -> Result<Knobs, KnobError> {
        let mut knobs = self.clone();
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (name, value) = item.split_once(':').unwrap_or((item, "true"));
            let bad = || KnobError::BadValue {
                knob: name.into(),
                value: value.into(),
            };
            match name {
                "latency_ms" => knobs.latency_ms = value.parse().map_err(|_| bad())?,
                "fail_after_secs" => {
                    knobs.fail_after_secs = match value {
                        "none" | "off" => None,
                        _ => Some(value.parse().map_err(|_| bad())?),
                    }
                }
                "fail_mode" => knobs.fail_mode = value.parse()?,
                "refuse_auth" => knobs.refuse_auth = value.parse().map_err(|_| bad())?,
                "malformed_every" => {
                    knobs.malformed_every = Some(value.parse().map_err(|_| bad())?)
                }
                "rate_limit" => knobs.rate_limit = value.parse().map_err(|_| bad())?,
                "idle_timeout_ms" => knobs.idle_timeout_ms = value.parse().map_err(|_| bad())?,
                "ping_interval_ms" => knobs.ping_interval_ms = value.parse().map_err(|_| bad())?,
                "gemini_binary_frames" => {
                    knobs.gemini_binary_frames = value.parse().map_err(|_| bad())?
                }
                "gemini_go_away_after_secs" => {
                    knobs.gemini_go_away_after_secs = match value {
                        "none" | "off" => None,
                        _ => Some(value.parse().map_err(|_| bad())?),
                    }
                }
                _ => return Err(KnobError::UnknownKnob(name.into())),
            }
        }
        Ok(knobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every knob can be overridden; booleans may be bare names; the rest stays.
    #[test]
    fn overrides_apply() {
        let base = Knobs {
            latency_ms: 7,
            ..Knobs::default()
        };
        let knobs = base
            .with_overrides(
                "fail_after_secs:1.5, fail_mode:drop,refuse_auth,malformed_every:3,\
                 rate_limit:false,idle_timeout_ms:200,ping_interval_ms:0,gemini_binary_frames,\
                 gemini_go_away_after_secs:2.5",
            )
            .unwrap();
        assert_eq!(knobs.latency_ms, 7);
        assert_eq!(knobs.fail_after(), Some(Duration::from_millis(1500)));
        assert_eq!(knobs.fail_mode, FailMode::Drop);
        assert!(knobs.refuse_auth);
        assert_eq!(knobs.malformed_period(), Some(3));
        assert_eq!(
            knobs.gemini_go_away_after(),
            Some(Duration::from_millis(2500))
        );
        assert!(!knobs.rate_limit);
        assert_eq!(knobs.idle_timeout_ms, 200);
        assert_eq!(knobs.ping_interval_ms, 0);
        assert!(knobs.gemini_binary_frames);
        assert_eq!(base.with_overrides("").unwrap(), base);
    }

    /// Unknown names and bad values are errors, not silently ignored.
    #[test]
    fn bad_overrides_are_errors() {
        let knobs = Knobs::default();
        assert_eq!(
            knobs.with_overrides("latency:5"),
            Err(KnobError::UnknownKnob("latency".into()))
        );
        assert!(matches!(
            knobs.with_overrides("latency_ms:fast"),
            Err(KnobError::BadValue { .. })
        ));
        assert!(knobs.with_overrides("fail_mode:explode").is_err());
        let negative = Knobs {
            fail_after_secs: Some(-1.0),
            malformed_every: Some(0),
            ..Knobs::default()
        };
        assert_eq!(negative.fail_after(), None);
        assert_eq!(negative.malformed_period(), None);
        let huge = knobs
            .with_overrides("latency_ms:18446744073709551615,fail_after_secs:1e300")
            .unwrap();
        assert_eq!(huge.latency(), MAX_LATENCY);
        assert!(huge.fail_after().is_none() || huge.fail_after() > Some(MAX_LATENCY));
    }
}
