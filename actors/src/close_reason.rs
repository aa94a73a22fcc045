//! Why a session ended: a closed set, persisted as a stable string in
//! `sessions.close_reason`, so that analytics on that column stay reliable across releases.

use std::fmt;

/// Why a session ended. The string forms ([`as_str`](Self::as_str)) are part of the external
/// contract: never rename one, only add. The serde form is the same string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum SessionCloseReason {
    /// The caller hung up: a carrier `stop`, or the client closed its connection.
    ClientHangup,
    /// The caller broke the protocol beyond recovery (e.g. audio before `start`, then silence).
    ClientError,
    /// The caller's key was missing, wrong or revoked (checked after the upgrade, where the
    /// key arrives inside the protocol, as with carriers' custom parameters).
    AuthFailed,
    /// The provider could not be reached, refused us, or failed mid-call.
    ProviderError,
    /// The provider ended the conversation on its own.
    ProviderClosed,
    /// No audio from the caller for the configured idle time.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
    /// An operator ended the session through the admin API.
    KilledByAdmin,
    /// The caller's key is over its concurrent-session or session-rate limit.
    LimitExceeded,
    /// A bug or resource failure inside voxroute.
    InternalError,
}

impl SessionCloseReason {
    /// Every reason, for exhaustive tests and documentation.
    pub const ALL: [SessionCloseReason; 10] = [
        SessionCloseReason::ClientHangup,
        SessionCloseReason::ClientError,
        SessionCloseReason::AuthFailed,
        SessionCloseReason::ProviderError,
        SessionCloseReason::ProviderClosed,
        SessionCloseReason::IdleTimeout,
        SessionCloseReason::Shutdown,
        SessionCloseReason::KilledByAdmin,
        SessionCloseReason::LimitExceeded,
        SessionCloseReason::InternalError,
    ];

    /// The stable string stored in `sessions.close_reason`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionCloseReason::ClientHangup => "CLIENT_HANGUP",
            SessionCloseReason::ClientError => "CLIENT_ERROR",
            SessionCloseReason::AuthFailed => "AUTH_FAILED",
            SessionCloseReason::ProviderError => "PROVIDER_ERROR",
            SessionCloseReason::ProviderClosed => "PROVIDER_CLOSED",
            SessionCloseReason::IdleTimeout => "IDLE_TIMEOUT",
            SessionCloseReason::Shutdown => "SHUTDOWN",
            SessionCloseReason::KilledByAdmin => "KILLED_BY_ADMIN",
            SessionCloseReason::LimitExceeded => "LIMIT_EXCEEDED",
            SessionCloseReason::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The reason stored as `s`, if `s` is one of [`as_str`](Self::as_str)'s strings.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for SessionCloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_are_unique() {
        for reason in SessionCloseReason::ALL {
            assert_eq!(SessionCloseReason::parse(reason.as_str()), Some(reason));
        }
        let mut strings: Vec<_> = SessionCloseReason::ALL.iter().map(|r| r.as_str()).collect();
        strings.dedup();
        assert_eq!(strings.len(), SessionCloseReason::ALL.len());
        assert_eq!(SessionCloseReason::parse("client_hangup"), None);
    }

    #[test]
    fn serde_form_is_the_stored_string() {
        for reason in SessionCloseReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(
                serde_json::from_str::<SessionCloseReason>(&json).unwrap(),
                reason
            );
        }
    }
}
