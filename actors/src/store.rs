//! Where session records go: the [`SessionStore`] trait the supervisor writes through, and
//! [`InMemorySessionStore`] for tests.
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
