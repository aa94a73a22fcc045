//! The [`Supervisor`] actor: registry, limits, and the record-write queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::messages::{
    Admit, AdmitError, Drain, EndOne, EndSession, Flush, FlushReport, ListLive, LiveSession,
    RecordUnadmitted, Replay, SessionEnded, Stats, StopAdmitting, SupervisorStats, TakeQueued,
};
use super::{
    LEASE_ACQUIRE_TIMEOUT, LEASE_RETRY_AFTER, LIVENESS_SWEEP_INTERVAL, RETRY_BACKOFF_MAX,
    RETRY_BACKOFF_MIN, STORE_WRITE_TIMEOUT,
};
use crate::close_reason::SessionCloseReason;
use crate::record::{RecordWrite, SessionEnd};
use crate::store::{LeaseEntry, LeaseGrant, LeaseRequest, SessionLeases, SessionStore, StoreError};

/// Settings of the [`Supervisor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Most record writes held while the store is slow or down (each session makes two).
    /// Beyond it, new writes are dropped and counted; calls are never affected.
    pub max_queued_writes: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_queued_writes: 20_000,
        }
    }
}

/// One step of the lease lane (see [`Supervisor::pump_leases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseOp {
    /// Drop the lease of a session that left the registry.
    Release(Uuid),
    /// Renew the leases of every live session (snapshot taken when the step starts).
    Renew,
}

/// The shared leases of a supervisor that runs as one of several replicas.
struct Leases {
    /// Where leases live (the app's PostgreSQL implementation).
    store: Arc<dyn SessionLeases>,
    /// How often every live session's lease is renewed.
    renew_interval: Duration,
    /// Admissions waiting for their lease: session id → cancelled (the session ended, with
    /// [`RecordUnadmitted`], before the answer came).
    pending: HashMap<Uuid, bool>,
    /// Releases and renewals, run one at a time in order.
    ops: VecDeque<LeaseOp>,
    /// A lease op is in flight.
    busy: bool,
    /// Until then, admissions use the process's own count without asking (set when the
    /// leases fail to answer, cleared by a renewal that succeeds).
    down_until: Option<std::time::Instant>,
}

/// A live session in the registry.
struct Live {
    info: LiveSession,
    session: Recipient<EndSession>,
}

/// The per-process supervisor: see the [module documentation](super).
pub struct Supervisor {
    store: Arc<dyn SessionStore>,
    config: SupervisorConfig,
    live: HashMap<Uuid, Live>,
    /// Live sessions per API key, for the concurrent-session limit.
    live_per_key: HashMap<Uuid, u32>,
    /// Set by [`Drain`]: no new session is admitted.
    draining: bool,
    /// Writes not yet accepted by the store, oldest first; the head may be in flight.
    queue: VecDeque<RecordWrite>,
    /// A write is in flight, or a retry of the head is scheduled.
    busy: bool,
    /// Wait before the next retry; doubles on each failure, resets on success.
    backoff: Duration,
    /// Everyone waiting in [`Flush`] for the queue to empty.
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Set by [`TakeQueued`]: the queue was handed over (to the spool); nothing is written
    /// any more and the result of a write in flight is ignored.
    handed_over: bool,
    /// Set by [`Supervisor::with_leases`]: this process is one of several replicas.
    leases: Option<Leases>,
    stats: SupervisorStats,
}

impl Supervisor {
    /// A supervisor writing records to `store`.
    pub fn new(store: Arc<dyn SessionStore>, config: SupervisorConfig) -> Self {
        Supervisor {
            store,
            config,
            live: HashMap::new(),
            live_per_key: HashMap::new(),
            draining: false,
            queue: VecDeque::new(),
            busy: false,
            backoff: RETRY_BACKOFF_MIN,
            flush_waiters: Vec::new(),
            handed_over: false,
            leases: None,
            stats: SupervisorStats::default(),
        }
    }

    /// Makes this supervisor one of several replicas: every admission also takes a lease in
    /// `leases`, and the leases of live sessions are renewed every `renew_interval` (see the
    /// [module documentation](super#limits-across-replicas-leases)). Call before starting it.
    pub fn with_leases(mut self, leases: Arc<dyn SessionLeases>, renew_interval: Duration) -> Self {
        self.leases = Some(Leases {
            store: leases,
            renew_interval,
            pending: HashMap::new(),
            ops: VecDeque::new(),
            busy: false,
            down_until: None,
        });
        self
    }

    fn enqueue(&mut self, write: RecordWrite, ctx: &mut Context<Self>) {
        if self.queue.len() >= self.config.max_queued_writes {
            self.stats.dropped_queue_full += 1;
            tracing::error!(
                queued = self.queue.len(),
                "session store backlog full: dropping a record write"
            );
            return;
        }
        self.queue.push_back(write);
        self.pump(ctx);
    }

    /// Starts writing the head of the queue, unless a write is already under way.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.handed_over {
            return;
        }
        let Some(write) = self.queue.front().cloned() else {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        };
        self.busy = true;
        let store = Arc::clone(&self.store);
        let attempt = async move {
            let call = async {
                match &write {
                    RecordWrite::Start(start) => store.record_start(start).await,
                    RecordWrite::End(end) => store.record_end(end).await,
                }
            };
            match tokio::time::timeout(STORE_WRITE_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable("write timed out".into())),
            }
        };
        ctx.spawn(attempt.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            if act.handed_over {
                // The queue (this write included) now belongs to the spool.
                return;
            }
            match result {
                Ok(()) => {
                    act.queue.pop_front();
                    act.stats.written += 1;
                    act.backoff = RETRY_BACKOFF_MIN;
                    act.pump(ctx);
                }
                Err(err) if err.is_retryable() => {
                    act.stats.retries += 1;
                    let wait = act.backoff;
                    act.backoff = (wait * 2).min(RETRY_BACKOFF_MAX);
                    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, queued = act.queue.len(), "session store write failed; will retry");
                    act.busy = true;
                    ctx.run_later(wait, |act, ctx| {
                        act.busy = false;
                        act.pump(ctx);
                    });
                }
                Err(err) => {
                    act.queue.pop_front();
                    act.stats.rejected += 1;
                    tracing::error!(error = %err, "session store rejected a record write");
                    act.pump(ctx);
                }
            }
        }));
    }
}

impl Supervisor {
    /// Takes a session out of the registry (if it is there), frees its key's slot and
    /// releases its lease.
    fn unregister(&mut self, id: Uuid, ctx: &mut Context<Self>) -> Option<Live> {
        let live = self.live.remove(&id)?;
        self.queue_lease_op(LeaseOp::Release(id), ctx);
        if let Some(key) = live.info.api_key_id
            && let Some(count) = self.live_per_key.get_mut(&key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.live_per_key.remove(&key);
            }
        }
        Some(live)
    }

    /// Ends, on record, every registered session whose actor is gone without having sent
    /// [`SessionEnded`] (it crashed, or stopped while its admission was in flight), so that
    /// no key's slot leaks. If its own end arrives later, it overwrites this one.
    fn sweep_vanished(&mut self, ctx: &mut Context<Self>) {
        let vanished: Vec<Uuid> = self
            .live
            .iter()
            .filter(|(_, live)| !live.session.connected())
            .map(|(id, _)| *id)
            .collect();
        for id in vanished {
            let Some(live) = self.unregister(id, ctx) else {
                continue;
            };
            let now = chrono::Utc::now();
            tracing::warn!(session_id = %id, "session vanished without ending; recording its end");
            self.enqueue(
                RecordWrite::End(SessionEnd {
                    id,
                    ended_at: now,
                    duration_ms: (now - live.info.started_at).num_milliseconds().max(0),
                    close_reason: SessionCloseReason::InternalError,
                    provider: live.info.provider.clone(),
                    providers_tried: vec![live.info.provider],
                    audio_in_ms: 0,
                    audio_out_ms: 0,
                    failovers: 0,
                    first_response_ms: None,
                    // Unknown: the session's own end, if it comes, brings its usage.
                    usage: Vec::new(),
                }),
                ctx,
            );
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(LIVENESS_SWEEP_INTERVAL, Self::sweep_vanished);
        if let Some(leases) = &self.leases {
            ctx.run_interval(leases.renew_interval, |act, ctx| {
                let queued = act
                    .leases
                    .as_ref()
                    .is_some_and(|leases| leases.ops.contains(&LeaseOp::Renew));
                if !queued {
                    act.queue_lease_op(LeaseOp::Renew, ctx);
                }
            });
        }
    }
}

impl Handler<Admit> for Supervisor {
    type Result = ResponseActFuture<Self, Result<(), AdmitError>>;

    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(fut::ready(Err(AdmitError::Draining)));
        }
        if let Err(refused) = self.check_local_limit(&msg) {
            return Box::pin(fut::ready(Err(refused)));
        }
        let Some(leases) = self.leases.as_mut() else {
            self.register(msg, ctx);
            return Box::pin(fut::ready(Ok(())));
        };
        if leases
            .down_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            self.stats.lease_fallbacks += 1;
            tracing::debug!(session_id = %msg.start.id, "session leases out of reach: admitting on this replica's own count");
            self.register(msg, ctx);
            return Box::pin(fut::ready(Ok(())));
        }
        let request = LeaseRequest {
            session_id: msg.start.id,
            api_key_id: msg.start.api_key_id,
            max_sessions: msg.max_sessions,
        };
        leases.pending.insert(request.session_id, false);
        let store = Arc::clone(&leases.store);
        let call = async move {
            match tokio::time::timeout(LEASE_ACQUIRE_TIMEOUT, store.acquire(&request)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(
                    "lease acquisition timed out".into(),
                )),
            }
        };
        Box::pin(call.into_actor(self).map(move |result, act, ctx| {
            let id = msg.start.id;
            let cancelled = act
                .leases
                .as_mut()
                .and_then(|leases| leases.pending.remove(&id))
                .unwrap_or(false);
            let leased = match result {
                Ok(LeaseGrant::Granted) => true,
                Ok(LeaseGrant::Refused { live }) => {
                    return Err(AdmitError::LimitExceeded {
                        live,
                        max: msg.max_sessions.unwrap_or(0),
                    });
                }
                Err(error) => {
                    act.stats.lease_fallbacks += 1;
                    if let Some(leases) = act.leases.as_mut() {
                        leases.down_until = Some(std::time::Instant::now() + LEASE_RETRY_AFTER);
                    }
                    tracing::warn!(%error, session_id = %id, "session leases out of reach: admitting on this replica's own count");
                    false
                }
            };
            // The session hung up while waiting: it is on record already (RecordUnadmitted).
            let outcome = if cancelled {
                Ok(())
            } else if act.draining {
                Err(AdmitError::Draining)
            } else {
                // Others of this process may have been admitted while the lease was taken.
                act.check_local_limit(&msg)
            };
            match outcome {
                Ok(()) if !cancelled => act.register(msg, ctx),
                _ if leased => act.queue_lease_op(LeaseOp::Release(id), ctx),
                _ => {}
            }
            outcome
        }))
    }
}

impl Supervisor {
    /// Refuses `msg` if its key already has `max_sessions` sessions live in this process.
    fn check_local_limit(&self, msg: &Admit) -> Result<(), AdmitError> {
        if let (Some(key), Some(max)) = (msg.start.api_key_id, msg.max_sessions) {
            let live = self.live_per_key.get(&key).copied().unwrap_or(0);
            if live >= max {
                return Err(AdmitError::LimitExceeded { live, max });
            }
        }
        Ok(())
    }

    /// Registers an admitted session as live and queues its start record.
    fn register(&mut self, msg: Admit, ctx: &mut Context<Self>) {
        if let Some(key) = msg.start.api_key_id {
            *self.live_per_key.entry(key).or_insert(0) += 1;
        }
        let info = LiveSession {
            id: msg.start.id,
            api_key_id: msg.start.api_key_id,
            endpoint: msg.start.endpoint.clone(),
            provider: msg.start.provider.clone(),
            started_at: msg.start.started_at,
        };
        self.live.insert(
            info.id,
            Live {
                info,
                session: msg.session,
            },
        );
        self.enqueue(RecordWrite::Start(msg.start), ctx);
    }

    /// Queues a release or renewal on the lease lane (nothing without leases).
    fn queue_lease_op(&mut self, op: LeaseOp, ctx: &mut Context<Self>) {
        let Some(leases) = self.leases.as_mut() else {
            return;
        };
        leases.ops.push_back(op);
        self.pump_leases(ctx);
    }

    /// Runs the next lease op, unless one is in flight. Ops run one at a time, in order, so
    /// that a renewal (which snapshots the live sessions when it starts) never re-creates a
    /// lease whose release was queued after it. A failed op is logged and dropped: a lease
    /// not released expires with the TTL, and the next renewal retries the rest.
    fn pump_leases(&mut self, ctx: &mut Context<Self>) {
        let Some(leases) = self.leases.as_mut() else {
            return;
        };
        if leases.busy {
            return;
        }
        let Some(op) = leases.ops.pop_front() else {
            return;
        };
        leases.busy = true;
        let store = Arc::clone(&leases.store);
        let snapshot: Vec<LeaseEntry> = match op {
            LeaseOp::Renew => self
                .live
                .values()
                .map(|live| LeaseEntry {
                    session_id: live.info.id,
                    api_key_id: live.info.api_key_id,
                })
                .collect(),
            LeaseOp::Release(_) => Vec::new(),
        };
        let call = async move {
            let call = async {
                match op {
                    LeaseOp::Release(id) => store.release(id).await,
                    LeaseOp::Renew => store.renew(&snapshot).await,
                }
            };
            match tokio::time::timeout(STORE_WRITE_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable("lease call timed out".into())),
            }
        };
        ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            if let Some(leases) = act.leases.as_mut() {
                leases.busy = false;
                match (&result, op) {
                    (Ok(()), LeaseOp::Renew) => leases.down_until = None,
                    (Ok(()), LeaseOp::Release(_)) => {}
                    (Err(error), LeaseOp::Renew) => {
                        leases.down_until = Some(std::time::Instant::now() + LEASE_RETRY_AFTER);
                        tracing::warn!(%error, "cannot renew session leases; will try again");
                    }
                    (Err(error), LeaseOp::Release(id)) => {
                        tracing::warn!(%error, session_id = %id, "cannot release a session lease; it expires with the TTL");
                    }
                }
            }
            act.pump_leases(ctx);
        }));
    }
}

impl Handler<SessionEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, ctx: &mut Context<Self>) {
        self.unregister(msg.end.id, ctx);
        self.enqueue(RecordWrite::End(msg.end), ctx);
    }
}

impl Handler<RecordUnadmitted> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RecordUnadmitted, ctx: &mut Context<Self>) {
        // A session that hung up while its admission was in flight was admitted after all:
        // free its slot. (Writing its start again is harmless: starts are idempotent.)
        self.unregister(msg.start.id, ctx);
        // Still waiting for its lease: the answer, when it comes, must not register it.
        if let Some(cancelled) = self
            .leases
            .as_mut()
            .and_then(|leases| leases.pending.get_mut(&msg.start.id))
        {
            *cancelled = true;
        }
        self.enqueue(RecordWrite::Start(msg.start), ctx);
        self.enqueue(RecordWrite::End(msg.end), ctx);
    }
}

impl Handler<ListLive> for Supervisor {
    type Result = MessageResult<ListLive>;

    fn handle(&mut self, _: ListLive, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.live.values().map(|l| l.info.clone()).collect())
    }
}

impl Handler<StopAdmitting> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: StopAdmitting, _: &mut Context<Self>) -> usize {
        self.draining = true;
        self.live.len()
    }
}

impl Handler<Drain> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> usize {
        self.draining = true;
        for live in self.live.values() {
            live.session.do_send(EndSession {
                reason: SessionCloseReason::Shutdown,
            });
        }
        self.live.len()
    }
}

impl Handler<EndOne> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: EndOne, _: &mut Context<Self>) -> bool {
        match self.live.get(&msg.id) {
            Some(live) => {
                live.session.do_send(EndSession { reason: msg.reason });
                true
            }
            None => false,
        }
    }
}

impl Handler<Flush> for Supervisor {
    type Result = ResponseActFuture<Self, FlushReport>;

    fn handle(&mut self, msg: Flush, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.queue.is_empty() {
            let _ = tx.send(());
        } else {
            self.flush_waiters.push(tx);
        }
        Box::pin(
            async move {
                let _ = tokio::time::timeout(msg.timeout, rx).await;
            }
            .into_actor(self)
            .map(|_, act, _| FlushReport {
                still_queued: act.queue.len(),
            }),
        )
    }
}

impl Handler<TakeQueued> for Supervisor {
    type Result = MessageResult<TakeQueued>;

    fn handle(&mut self, _: TakeQueued, _: &mut Context<Self>) -> Self::Result {
        self.handed_over = true;
        for waiter in self.flush_waiters.drain(..) {
            let _ = waiter.send(());
        }
        MessageResult(self.queue.drain(..).collect())
    }
}

impl Handler<Replay> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Replay, ctx: &mut Context<Self>) {
        for write in msg.writes {
            self.enqueue(write, ctx);
        }
    }
}

impl Handler<Stats> for Supervisor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SupervisorStats {
            live_sessions: self.live.len(),
            queued_writes: self.queue.len(),
            ..self.stats
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;

    use chrono::Utc;

    use super::*;
    use crate::record::{SessionStart, Transport};
    use crate::store::InMemorySessionStore;

    /// Stands in for a session: remembers the [`EndSession`] messages it gets.
    struct FakeSession(Arc<Mutex<Vec<SessionCloseReason>>>);

    impl Actor for FakeSession {
        type Context = Context<Self>;
    }

    impl Handler<EndSession> for FakeSession {
        type Result = ();
        fn handle(&mut self, msg: EndSession, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.reason);
        }
    }

    fn start(api_key_id: Option<Uuid>) -> SessionStart {
        SessionStart {
            id: Uuid::now_v7(),
            api_key_id,
            endpoint: "/v1/ws".into(),
            transport: Transport::WebSocket,
            route: None,
            provider: "echo".into(),
            client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            started_at: Utc::now(),
        }
    }

    fn end(id: Uuid) -> SessionEnd {
        SessionEnd {
            id,
            ended_at: Utc::now(),
            duration_ms: 1_234,
            close_reason: SessionCloseReason::ClientHangup,
            provider: "echo".into(),
            providers_tried: vec!["echo".into()],
            audio_in_ms: 1_000,
            audio_out_ms: 980,
            failovers: 0,
            first_response_ms: Some(21),
            usage: Vec::new(),
        }
    }

    /// Makes a [`FakeSession`] stop, as a session actor does when its socket goes.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Vanish;

    impl Handler<Vanish> for FakeSession {
        type Result = ();
        fn handle(&mut self, _: Vanish, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    fn fake_session() -> (Recipient<EndSession>, Arc<Mutex<Vec<SessionCloseReason>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (FakeSession(Arc::clone(&seen)).start().recipient(), seen)
    }

    /// Asks `supervisor` to admit `start` for a fake session; returns the answer and what the
    /// session is later told.
    async fn admit(
        supervisor: &Addr<Supervisor>,
        start: SessionStart,
        max_sessions: Option<u32>,
    ) -> (Result<(), AdmitError>, Arc<Mutex<Vec<SessionCloseReason>>>) {
        let (session, seen) = fake_session();
        let answer = supervisor
            .send(Admit {
                start,
                max_sessions,
                session,
            })
            .await
            .expect("the supervisor is running");
        (answer, seen)
    }

    /// An admitted session that ends is on record, start and end, once flushed.
    #[actix_rt::test]
    async fn admitted_session_is_recorded_start_and_end() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store.clone(), SupervisorConfig::default()).start();
        let s = start(None);
        let id = s.id;
        admit(&supervisor, s, None).await.0.unwrap();
        assert_eq!(supervisor.send(ListLive).await.unwrap().len(), 1);
        supervisor
            .send(SessionEnded { end: end(id) })
            .await
            .unwrap();
        let report = supervisor
            .send(Flush {
                timeout: Duration::from_secs(2),
            })
            .await
            .unwrap();
        assert_eq!(report.still_queued, 0);
        let (_, recorded_end) = store.get(id).expect("start recorded");
        assert_eq!(recorded_end.unwrap().audio_in_ms, 1_000);
        assert!(supervisor.send(ListLive).await.unwrap().is_empty());
    }

    /// A key at its limit is refused until one of its sessions ends; other keys are not.
    #[actix_rt::test]
    async fn per_key_limit_holds_and_frees() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store, SupervisorConfig::default()).start();
        let key = Uuid::now_v7();
        let first = start(Some(key));
        let first_id = first.id;
        admit(&supervisor, first, Some(1)).await.0.unwrap();
        assert_eq!(
            admit(&supervisor, start(Some(key)), Some(1)).await.0,
            Err(AdmitError::LimitExceeded { live: 1, max: 1 })
        );
        let other_key = Some(Uuid::now_v7());
        admit(&supervisor, start(other_key), Some(1))
            .await
            .0
            .unwrap();
        supervisor
            .send(SessionEnded { end: end(first_id) })
            .await
            .unwrap();
        admit(&supervisor, start(Some(key)), Some(1))
            .await
            .0
            .unwrap();
    }

    /// With the store down, sessions are still admitted and end normally; their records wait
    /// in the queue, are retried, and land once the store is back.
    #[actix_rt::test]
    async fn store_outage_queues_and_retries_until_records_land() {
        let store = Arc::new(InMemorySessionStore::new());
        store.set_down(true);
        let supervisor = Supervisor::new(store.clone(), SupervisorConfig::default()).start();
        let s = start(None);
        let id = s.id;
        admit(&supervisor, s, None).await.0.unwrap();
        supervisor
            .send(SessionEnded { end: end(id) })
            .await
            .unwrap();
        let report = supervisor
            .send(Flush {
                timeout: Duration::from_millis(300),
            })
            .await
            .unwrap();
        assert_eq!(
            report.still_queued, 2,
            "both writes wait while the store is down"
        );
        assert!(store.get(id).is_none());
        let stats = supervisor.send(Stats).await.unwrap();
        assert!(stats.retries >= 1, "{stats:?}");

        store.set_down(false);
        let report = supervisor
            .send(Flush {
                timeout: Duration::from_secs(10),
            })
            .await
            .unwrap();
        assert_eq!(report.still_queued, 0);
        assert!(
            store.get(id).unwrap().1.is_some(),
            "start and end landed, in order"
        );
    }

    /// What the store could not take by shutdown is handed over whole, oldest first, and the
    /// supervisor stops writing; a new supervisor given those writes lands them.
    #[actix_rt::test]
    async fn queued_writes_are_handed_over_and_replay_lands_them() {
        let store = Arc::new(InMemorySessionStore::new());
        store.set_down(true);
        let supervisor = Supervisor::new(store.clone(), SupervisorConfig::default()).start();
        let s = start(None);
        let id = s.id;
        admit(&supervisor, s, None).await.0.unwrap();
        supervisor
            .send(SessionEnded { end: end(id) })
            .await
            .unwrap();
        let writes = supervisor.send(TakeQueued).await.unwrap();
        assert!(
            matches!(writes.as_slice(), [RecordWrite::Start(s), RecordWrite::End(e)] if s.id == id && e.id == id),
            "{writes:?}"
        );
        store.set_down(false);
        tokio::time::sleep(RETRY_BACKOFF_MIN * 3).await;
        assert!(
            store.get(id).is_none(),
            "a handed-over queue is not written"
        );
        assert_eq!(supervisor.send(Stats).await.unwrap().queued_writes, 0);

        let next = Supervisor::new(store.clone(), SupervisorConfig::default()).start();
        next.send(Replay { writes }).await.unwrap();
        let report = next
            .send(Flush {
                timeout: Duration::from_secs(10),
            })
            .await
            .unwrap();
        assert_eq!(report.still_queued, 0);
        assert!(store.get(id).unwrap().1.is_some(), "start and end landed");
    }

    /// EndOne tells exactly the named live session to end, with the given reason, and says
    /// whether it was live here.
    #[actix_rt::test]
    async fn end_one_reaches_only_that_session() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store, SupervisorConfig::default()).start();
        let first = start(None);
        let first_id = first.id;
        let (answer, first_seen) = admit(&supervisor, first, None).await;
        answer.unwrap();
        let (answer, second_seen) = admit(&supervisor, start(None), None).await;
        answer.unwrap();
        let reason = SessionCloseReason::KilledByAdmin;
        assert!(
            supervisor
                .send(EndOne {
                    id: first_id,
                    reason
                })
                .await
                .unwrap()
        );
        let unknown = EndOne {
            id: Uuid::now_v7(),
            reason,
        };
        assert!(!supervisor.send(unknown).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*first_seen.lock().unwrap(), [reason]);
        assert!(second_seen.lock().unwrap().is_empty());
    }

    /// StopAdmitting refuses new sessions but leaves the live ones alone.
    #[actix_rt::test]
    async fn stop_admitting_refuses_new_sessions_only() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store, SupervisorConfig::default()).start();
        let (answer, seen) = admit(&supervisor, start(None), None).await;
        answer.unwrap();
        assert_eq!(supervisor.send(StopAdmitting).await.unwrap(), 1);
        let (refused, _) = admit(&supervisor, start(None), None).await;
        assert_eq!(refused, Err(AdmitError::Draining));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "the live session was not told to end"
        );
        assert_eq!(supervisor.send(ListLive).await.unwrap().len(), 1);
    }

    /// Drain refuses new sessions and tells every live one to end with SHUTDOWN.
    #[actix_rt::test]
    async fn drain_ends_live_sessions_and_refuses_new_ones() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store, SupervisorConfig::default()).start();
        let (answer, seen) = admit(&supervisor, start(None), None).await;
        answer.unwrap();
        assert_eq!(supervisor.send(Drain).await.unwrap(), 1);
        assert_eq!(
            admit(&supervisor, start(None), None).await.0,
            Err(AdmitError::Draining)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*seen.lock().unwrap(), vec![SessionCloseReason::Shutdown]);
    }

    /// A session whose actor is gone without a word is ended on record (INTERNAL_ERROR) by
    /// the sweep, and its key's slot is free again.
    #[actix_rt::test]
    async fn vanished_session_is_swept_and_frees_its_slot() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store.clone(), SupervisorConfig::default()).start();
        let key = Some(Uuid::now_v7());
        let doomed = FakeSession(Arc::default()).start();
        let s = start(key);
        let id = s.id;
        supervisor
            .send(Admit {
                start: s,
                max_sessions: Some(1),
                session: doomed.clone().recipient(),
            })
            .await
            .unwrap()
            .unwrap();
        // The actor stops without sending SessionEnded.
        doomed.send(Vanish).await.unwrap();
        tokio::time::sleep(LIVENESS_SWEEP_INTERVAL + Duration::from_millis(300)).await;
        supervisor
            .send(Flush {
                timeout: Duration::from_secs(2),
            })
            .await
            .unwrap();
        let (_, recorded_end) = store.get(id).expect("start recorded");
        assert_eq!(
            recorded_end.expect("end recorded").close_reason,
            SessionCloseReason::InternalError
        );
        admit(&supervisor, start(key), Some(1)).await.0.unwrap();
    }

    /// A session admitted while its caller hung up sends RecordUnadmitted: its slot is freed.
    #[actix_rt::test]
    async fn record_unadmitted_frees_a_slot_admitted_in_flight() {
        let store = Arc::new(InMemorySessionStore::new());
        let supervisor = Supervisor::new(store, SupervisorConfig::default()).start();
        let key = Some(Uuid::now_v7());
        let s = start(key);
        let e = end(s.id);
        admit(&supervisor, s.clone(), Some(1)).await.0.unwrap();
        supervisor
            .send(RecordUnadmitted { start: s, end: e })
            .await
            .unwrap();
        admit(&supervisor, start(key), Some(1)).await.0.unwrap();
    }

    /// A full backlog drops (and counts) new writes instead of growing without bound.
    #[actix_rt::test]
    async fn backlog_is_bounded() {
        let store = Arc::new(InMemorySessionStore::new());
        store.set_down(true);
        let config = SupervisorConfig {
            max_queued_writes: 3,
        };
        let supervisor = Supervisor::new(store, config).start();
        for _ in 0..2 {
            let s = start(None);
            supervisor
                .send(RecordUnadmitted {
                    end: end(s.id),
                    start: s,
                })
                .await
                .unwrap();
        }
        let stats = supervisor.send(Stats).await.unwrap();
        assert_eq!((stats.queued_writes, stats.dropped_queue_full), (3, 1));
    }

    /// Two supervisors sharing leases stand for two replicas on one database: a key with
    /// `max_sessions = 1` admitted on one is refused on the other, the lease goes when the
    /// session ends, and the slot is then free on the other.
    #[actix_rt::test]
    async fn leases_hold_a_key_limit_across_supervisors() {
        let leases = Arc::new(crate::store::InMemoryLeases::new());
        let renew = Duration::from_secs(60);
        let a = Supervisor::new(
            Arc::new(InMemorySessionStore::new()),
            SupervisorConfig::default(),
        )
        .with_leases(leases.clone(), renew)
        .start();
        let b = Supervisor::new(
            Arc::new(InMemorySessionStore::new()),
            SupervisorConfig::default(),
        )
        .with_leases(leases.clone(), renew)
        .start();
        let key = Some(Uuid::now_v7());
        let first = start(key);
        let first_id = first.id;
        admit(&a, first, Some(1)).await.0.unwrap();
        assert!(leases.holds(first_id));
        assert_eq!(
            admit(&b, start(key), Some(1)).await.0,
            Err(AdmitError::LimitExceeded { live: 1, max: 1 })
        );
        admit(&b, start(None), None).await.0.unwrap();
        a.send(SessionEnded { end: end(first_id) }).await.unwrap();
        // The release runs on the lease lane, after the end is handled.
        let mut admitted = Err(AdmitError::Draining);
        for _ in 0..50 {
            admitted = admit(&b, start(key), Some(1)).await.0;
            if admitted.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        admitted.unwrap();
        assert!(!leases.holds(first_id));
    }

    /// With the leases down, sessions are admitted at once on the process's own count (which
    /// still holds the key's limit), and the next renewal once they are back leases them.
    #[actix_rt::test]
    async fn leases_down_falls_back_to_the_process_count_then_renews() {
        let leases = Arc::new(crate::store::InMemoryLeases::new());
        leases.set_down(true);
        let supervisor = Supervisor::new(
            Arc::new(InMemorySessionStore::new()),
            SupervisorConfig::default(),
        )
        .with_leases(leases.clone(), Duration::from_millis(100))
        .start();
        let key = Some(Uuid::now_v7());
        let first = start(key);
        let first_id = first.id;
        let began = std::time::Instant::now();
        admit(&supervisor, first, Some(1)).await.0.unwrap();
        assert_eq!(
            admit(&supervisor, start(key), Some(1)).await.0,
            Err(AdmitError::LimitExceeded { live: 1, max: 1 })
        );
        admit(&supervisor, start(None), None).await.0.unwrap();
        assert!(
            began.elapsed() < LEASE_ACQUIRE_TIMEOUT + Duration::from_millis(500),
            "an outage costs at most one short wait"
        );
        assert!(supervisor.send(Stats).await.unwrap().lease_fallbacks >= 1);
        leases.set_down(false);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            leases.holds(first_id),
            "the renewal leased the fallback session"
        );
    }

    /// Leases that answer after a delay, to catch a session ending while its admission waits.
    struct SlowLeases(Arc<crate::store::InMemoryLeases>, Duration);

    impl SessionLeases for SlowLeases {
        fn acquire<'a>(
            &'a self,
            request: &'a LeaseRequest,
        ) -> crate::store::StoreFuture<'a, LeaseGrant> {
            Box::pin(async move {
                tokio::time::sleep(self.1).await;
                self.0.acquire(request).await
            })
        }
        fn release<'a>(&'a self, session_id: Uuid) -> crate::store::StoreFuture<'a, ()> {
            self.0.release(session_id)
        }
        fn renew<'a>(&'a self, live: &'a [LeaseEntry]) -> crate::store::StoreFuture<'a, ()> {
            self.0.renew(live)
        }
    }

    /// A session that ends (RecordUnadmitted) while its lease is being taken is not
    /// registered when the lease comes, and its lease is given back: the key's slot is free.
    #[actix_rt::test]
    async fn a_session_ending_while_its_lease_is_taken_gives_the_lease_back() {
        let leases = Arc::new(crate::store::InMemoryLeases::new());
        let slow = Arc::new(SlowLeases(leases.clone(), Duration::from_millis(200)));
        let supervisor = Supervisor::new(
            Arc::new(InMemorySessionStore::new()),
            SupervisorConfig::default(),
        )
        .with_leases(slow, Duration::from_secs(60))
        .start();
        let key = Some(Uuid::now_v7());
        let s = start(key);
        let id = s.id;
        let (session, _) = fake_session();
        let admitting = supervisor.send(Admit {
            start: s.clone(),
            max_sessions: Some(1),
            session,
        });
        let ending = supervisor.send(RecordUnadmitted {
            end: end(id),
            start: s,
        });
        let (admitted, ended) = tokio::join!(admitting, ending);
        ended.unwrap();
        assert!(admitted.unwrap().is_ok(), "it was admitted, then ended");
        assert!(supervisor.send(ListLive).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!leases.holds(id), "the lease was given back");
        admit(&supervisor, start(key), Some(1)).await.0.unwrap();
    }
}
