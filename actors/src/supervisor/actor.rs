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
use super::{LIVENESS_SWEEP_INTERVAL, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN, STORE_WRITE_TIMEOUT};
use crate::close_reason::SessionCloseReason;
use crate::record::{RecordWrite, SessionEnd};
use crate::store::{SessionStore, StoreError};

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
            stats: SupervisorStats::default(),
        }
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
    /// Takes a session out of the registry (if it is there) and frees its key's slot.
    fn unregister(&mut self, id: Uuid) -> Option<Live> {
        let live = self.live.remove(&id)?;
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
            let Some(live) = self.unregister(id) else {
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
    }
}

impl Handler<Admit> for Supervisor {
    type Result = Result<(), AdmitError>;

    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Err(AdmitError::Draining);
        }
        if let (Some(key), Some(max)) = (msg.start.api_key_id, msg.max_sessions) {
            let live = self.live_per_key.get(&key).copied().unwrap_or(0);
            if live >= max {
                return Err(AdmitError::LimitExceeded { live, max });
            }
        }
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
        Ok(())
    }
}

impl Handler<SessionEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, ctx: &mut Context<Self>) {
        self.unregister(msg.end.id);
        self.enqueue(RecordWrite::End(msg.end), ctx);
    }
}

impl Handler<RecordUnadmitted> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RecordUnadmitted, ctx: &mut Context<Self>) {
        // A session that hung up while its admission was in flight was admitted after all:
        // free its slot. (Writing its start again is harmless: starts are idempotent.)
        self.unregister(msg.start.id);
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
}
