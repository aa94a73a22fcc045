//! Where session records go: the [`SessionStore`] trait the supervisor writes through, and
//! [`InMemorySessionStore`] for tests; and, with several replicas, where live sessions are
//! leased: the [`SessionLeases`] trait, and [`InMemoryLeases`] for tests.
//!
//! The app implements the trait with SQL (sqlx, SQLite or PostgreSQL); this crate never sees
//! SQL. Callers of the trait (the supervisor) must keep store latency off the audio path:
//! writes are queued and retried there, never awaited by a session.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use crate::record::{SessionEnd, SessionStart};

/// A boxed future returned by [`SessionStore`] methods (the trait must be object-safe).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or timed out; the write may be retried later.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the write (a constraint, a bad value); retrying will not help.
    #[error("session store rejected the write: {0}")]
    Rejected(String),
}

impl StoreError {
    /// Whether retrying the same write later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Persists session records. Both methods must be idempotent: the supervisor retries a
/// write after [`StoreError::Unavailable`], so one may arrive twice, and an end may arrive
/// for a start that is itself still queued (write both in order; the supervisor does).
pub trait SessionStore: Send + Sync + 'static {
    /// Writes the record of an admitted session.
    fn record_start<'a>(&'a self, start: &'a SessionStart) -> StoreFuture<'a, ()>;
    /// Completes the record of an ended session.
    fn record_end<'a>(&'a self, end: &'a SessionEnd) -> StoreFuture<'a, ()>;
}

/// What [`SessionLeases::acquire`] is asked for: a lease on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The session to lease.
    pub session_id: Uuid,
    /// The caller's key, if any: its unexpired leases count against `max_sessions`.
    pub api_key_id: Option<Uuid>,
    /// The key's concurrent-session limit (`None`: unlimited, the lease is always granted).
    pub max_sessions: Option<u32>,
}

/// The answer of [`SessionLeases::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The lease is taken: the session may start.
    Granted,
    /// The key already holds `live` unexpired leases (at least its limit): nothing was taken.
    Refused {
        /// The key's unexpired leases, across every replica.
        live: u32,
    },
}

/// One live session as [`SessionLeases::renew`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The session.
    pub session_id: Uuid,
    /// Its key, if any.
    pub api_key_id: Option<Uuid>,
}

/// Leases on live sessions shared by every replica of a deployment: what makes a key's
/// concurrent-session limit hold across replicas. The app implements it on PostgreSQL; a
/// supervisor without one (SQLite, tests) counts sessions in its own process only.
///
/// The supervisor calls these methods off the audio path and bounds each call with a short
/// timeout: an implementation may be slow or down, and sessions go on regardless (the
/// supervisor falls back to its own count).
pub trait SessionLeases: Send + Sync + 'static {
    /// Called at admission: takes a lease on the session, atomically with the check that the
    /// key holds fewer than `max_sessions` unexpired leases across every replica. Taking a
    /// lease the session already holds renews it.
    fn acquire<'a>(&'a self, request: &'a LeaseRequest) -> StoreFuture<'a, LeaseGrant>;
    /// Called when an admitted session ends: drops its lease (no error if there is none).
    fn release<'a>(&'a self, session_id: Uuid) -> StoreFuture<'a, ()>;
    /// Called every renew interval with every session live in this process: extends their
    /// leases, taking one for any session without (admitted while the leases were out of
    /// reach), and marks this replica alive. Leases not renewed expire, which is how a dead
    /// replica's (or a lost release's) slots come free.
    fn renew<'a>(&'a self, live: &'a [LeaseEntry]) -> StoreFuture<'a, ()>;
}

/// Leases in memory, for tests: one instance shared by several supervisors stands for the
/// database their replicas share. Leases never expire; [`set_down`](Self::set_down) makes
/// every call fail like an outage.
#[derive(Debug, Default)]
pub struct InMemoryLeases {
    leases: Mutex<HashMap<Uuid, Option<Uuid>>>,
    down: AtomicBool,
}

impl InMemoryLeases {
    /// No lease, up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`true`) or succeed again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Whether session `id` holds a lease.
    pub fn holds(&self, id: Uuid) -> bool {
        self.lock().contains_key(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Option<Uuid>>> {
        // Every change is a single insert or remove: a poisoned map is still consistent.
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("in-memory leases are down".into()));
        }
        Ok(())
    }
}

impl SessionLeases for InMemoryLeases {
    fn acquire<'a>(&'a self, request: &'a LeaseRequest) -> StoreFuture<'a, LeaseGrant> {
        Box::pin(async move {
            self.check_up()?;
            let mut leases = self.lock();
            if let (Some(key), Some(max)) = (request.api_key_id, request.max_sessions) {
                let live = leases
                    .iter()
                    .filter(|(id, k)| **k == Some(key) && **id != request.session_id)
                    .count();
                let live = u32::try_from(live).unwrap_or(u32::MAX);
                if live >= max {
                    return Ok(LeaseGrant::Refused { live });
                }
            }
            leases.insert(request.session_id, request.api_key_id);
            Ok(LeaseGrant::Granted)
        })
    }

    fn release<'a>(&'a self, session_id: Uuid) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check_up()?;
            self.lock().remove(&session_id);
            Ok(())
        })
    }

    fn renew<'a>(&'a self, live: &'a [LeaseEntry]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check_up()?;
            let mut leases = self.lock();
            for entry in live {
                leases.insert(entry.session_id, entry.api_key_id);
            }
            Ok(())
        })
    }
}

/// A store in memory, for tests: keeps every record, and can be switched "down" to return
/// [`StoreError::Unavailable`] like a database outage.
#[derive(Debug, Default)]
pub struct InMemorySessionStore {
    records: Mutex<HashMap<Uuid, (SessionStart, Option<SessionEnd>)>>,
    down: AtomicBool,
}

impl InMemorySessionStore {
    /// An empty store that is up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`true`) or succeed again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The record of session `id`, if its start was written.
    pub fn get(&self, id: Uuid) -> Option<(SessionStart, Option<SessionEnd>)> {
        self.lock().get(&id).cloned()
    }

    /// How many session records are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (SessionStart, Option<SessionEnd>)>> {
        // A panic while holding this lock can only come from a test assertion; the data is
        // still consistent (every write is a single insert), so take it over.
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("in-memory store is down".into()));
        }
        Ok(())
    }
}

impl SessionStore for InMemorySessionStore {
    fn record_start<'a>(&'a self, start: &'a SessionStart) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check_up()?;
            self.lock()
                .entry(start.id)
                .or_insert_with(|| (start.clone(), None));
            Ok(())
        })
    }

    fn record_end<'a>(&'a self, end: &'a SessionEnd) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check_up()?;
            match self.lock().get_mut(&end.id) {
                Some(record) => {
                    record.1 = Some(end.clone());
                    Ok(())
                }
                None => Err(StoreError::Rejected(format!("no session {}", end.id))),
            }
        })
    }
}
