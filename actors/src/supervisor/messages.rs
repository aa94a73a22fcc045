//! Messages to and from the [`Supervisor`](super::Supervisor). Each says which way it travels.

use actix::{Message, Recipient};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::close_reason::SessionCloseReason;
use crate::record::{RecordWrite, SessionEnd, SessionStart};

/// Session → supervisor: may this session start? On `Ok` it is registered as live and its
/// start record is queued; the session must later send [`SessionEnded`].
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AdmitError>")]
pub struct Admit {
    /// The record of the session as it starts.
    pub start: SessionStart,
    /// The key's concurrent-session limit (`None`: unlimited).
    pub max_sessions: Option<u32>,
    /// Where to send [`EndSession`] (shutdown, admin kill).
    pub session: Recipient<EndSession>,
}

/// Why [`Admit`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// The key already has `max_sessions` live sessions.
    #[error("the key already has {live} of its {max} concurrent sessions")]
    LimitExceeded {
        /// Live sessions of the key.
        live: u32,
        /// The key's limit.
        max: u32,
    },
    /// The server is shutting down and admits no new session.
    #[error("the server is shutting down")]
    Draining,
}

impl AdmitError {
    /// The close reason a refused session is recorded with.
    pub fn close_reason(self) -> SessionCloseReason {
        match self {
            AdmitError::LimitExceeded { .. } => SessionCloseReason::LimitExceeded,
            AdmitError::Draining => SessionCloseReason::Shutdown,
        }
    }
}

/// Session → supervisor: an admitted session ended; complete its record.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    /// The fields that complete the record.
    pub end: SessionEnd,
}

/// Session → supervisor: a session that was never admitted (bad key, over its limit) ended;
/// write its whole record.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RecordUnadmitted {
    /// The record as it would have started.
    pub start: SessionStart,
    /// How it ended.
    pub end: SessionEnd,
}

/// Supervisor → session: end now, for this reason.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct EndSession {
    /// Why.
    pub reason: SessionCloseReason,
}

/// Anyone → supervisor: the live sessions of this process.
#[derive(Debug, Message)]
#[rtype(result = "Vec<LiveSession>")]
pub struct ListLive;

/// One live session, as [`ListLive`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveSession {
    /// Session id.
    pub id: Uuid,
    /// The caller's key, if any.
    pub api_key_id: Option<Uuid>,
    /// The endpoint it came in on.
    pub endpoint: String,
    /// The provider it started on.
    pub provider: String,
    /// When it was accepted.
    pub started_at: DateTime<Utc>,
}

/// Admin API → supervisor: end live session `id` with `reason` (`KILLED_BY_ADMIN`). Returns
/// whether the session was live in this process.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct EndOne {
    /// Which session.
    pub id: Uuid,
    /// Why.
    pub reason: SessionCloseReason,
}

/// Server → supervisor, first step of a graceful shutdown: admit no new session (they are
/// refused with [`AdmitError::Draining`]) and leave the live ones be. Returns how many are
/// live.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct StopAdmitting;

/// Server → supervisor: stop admitting and end every live session with
/// [`SessionCloseReason::Shutdown`]. Returns how many sessions were told to end.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Drain;

/// Server → supervisor: wait until every queued record is written, or `timeout` passes.
#[derive(Debug, Message)]
#[rtype(result = "FlushReport")]
pub struct Flush {
    /// Longest wait.
    pub timeout: std::time::Duration,
}

/// What [`Flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Writes still queued when it returned (0: everything is on record).
    pub still_queued: usize,
}

/// Server → supervisor, last thing on shutdown after [`Flush`] left writes queued: hand the
/// queue over (oldest first) to be spooled. From then on the supervisor writes nothing; a
/// write in flight may still land, which is harmless because writes are idempotent.
#[derive(Debug, Message)]
#[rtype(result = "Vec<RecordWrite>")]
pub struct TakeQueued;

/// Server → supervisor, at start: queue these writes (from the spool of an earlier run)
/// ahead of any new ones.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Replay {
    /// Oldest first.
    pub writes: Vec<RecordWrite>,
}

/// Anyone → supervisor: counters, for metrics and tests.
#[derive(Debug, Message)]
#[rtype(result = "SupervisorStats")]
pub struct Stats;

/// The supervisor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Sessions live now.
    pub live_sessions: usize,
    /// Record writes waiting (including one in flight).
    pub queued_writes: usize,
    /// Record writes the store accepted.
    pub written: u64,
    /// Store calls that failed and were retried.
    pub retries: u64,
    /// Writes dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Writes the store rejected (not retried).
    pub rejected: u64,
    /// Sessions admitted on this process's own count because the shared leases (several
    /// replicas) were out of reach.
    pub lease_fallbacks: u64,
}
