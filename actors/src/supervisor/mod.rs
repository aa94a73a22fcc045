//! The supervisor: one per process. It owns the registry of live sessions, enforces each API
//! key's concurrent-session limit, and writes every session's record through a
//! [`SessionStore`](crate::store::SessionStore).
//!
//! # Records never touch the audio path
//!
//! Sessions hand their records to the supervisor as messages and never wait for the store.
//! The supervisor queues writes (bounded by [`SupervisorConfig::max_queued_writes`]) and
//! writes them one at a time, in order, so a session's end is never written before its start.
//! A write that fails with a retryable error stays at the head of the queue and is retried
//! with exponential backoff (from [`RETRY_BACKOFF_MIN`] to [`RETRY_BACKOFF_MAX`]); one the store
//! rejects is dropped and counted. When the queue is full the newest write is dropped and
//! counted; calls go on regardless. [`Flush`] waits for the queue to drain (shutdown); if the
//! store is still away, [`TakeQueued`] hands what is left to the server to spool to a file, and
//! [`Replay`] queues a spool's writes at the next start.
//!
//! # Limits across replicas: leases
//!
//! Alone, the supervisor enforces a key's `max_sessions` by counting the sessions of its own
//! process. Given a [`SessionLeases`](crate::store::SessionLeases)
//! ([`Supervisor::with_leases`]; the app does this on PostgreSQL), every admission also takes
//! a lease shared by all replicas, atomically with the check of the key's unexpired leases, so
//! the limit holds across replicas. The supervisor then:
//!
//! - waits at most [`LEASE_ACQUIRE_TIMEOUT`] for the lease; if the leases are out of reach
//!   (error or timeout) it admits on its own count, logs it, and for
//!   [`LEASE_RETRY_AFTER`] admits on its own count without asking (so an outage costs one
//!   short wait, not one per call). A store outage never refuses or blocks a call;
//! - renews the leases of all its live sessions every renew interval (taking one for any
//!   session admitted without), which also marks the replica alive;
//! - releases a session's lease when it leaves the registry. Releases and renewals run one at
//!   a time, in order, so a renewal never resurrects a lease released after it; a release that
//!   fails is not retried: the lease expires with the TTL, as a dead replica's do.
//!
//! # What callers must keep
//!
//! - A session asks [`Admit`] before it starts its provider and, if admitted, sends exactly one
//!   [`SessionEnded`] when it ends, whatever the reason. A session that was never admitted
//!   (bad key, over its limit) sends [`RecordUnadmitted`] so that it is on record too.
//! - A session that ends while its [`Admit`] is in flight sends [`RecordUnadmitted`]; the
//!   supervisor then frees the slot the admission took. Any registered session whose actor
//!   stops without a word is ended on record (`INTERNAL_ERROR`) within
//!   [`LIVENESS_SWEEP_INTERVAL`], so a key's slots never leak.
//! - Sessions handle [`EndSession`]: the supervisor sends it on [`Drain`] (shutdown) and on
//!   [`EndOne`] (the admin API ending one session).

mod actor;
mod messages;

pub use actor::{Supervisor, SupervisorConfig};
pub use messages::{
    Admit, AdmitError, Drain, EndOne, EndSession, Flush, FlushReport, ListLive, LiveSession,
    RecordUnadmitted, Replay, SessionEnded, Stats, StopAdmitting, SupervisorStats, TakeQueued,
};

use std::time::Duration;

/// First wait before retrying a write the store could not take.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between retries of a write.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often the supervisor looks for sessions whose actor is gone without having ended on
/// record (see [`Supervisor`]'s sweep).
pub const LIVENESS_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How long one store call may take before it counts as failed (and is retried).
pub const STORE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a lease at admission before admitting on the process's own count.
pub const LEASE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// After the leases failed to answer, how long admissions use the process's own count
/// without asking them (a renewal that succeeds ends it sooner).
pub const LEASE_RETRY_AFTER: Duration = Duration::from_secs(5);
