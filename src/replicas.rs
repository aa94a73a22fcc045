//! Several replicas on one PostgreSQL: the replica registry, the session leases that make a
//! key's concurrent-session limit hold across replicas, and the cross-replica admin kill.
//!
//! # What it owns
//!
//! - [`Cluster::join`]: at start, a replica draws a node id (UUID v7) and registers in the
//!   `replicas` table; with a SQLite store it returns `None` and everything stays in the
//!   process (SQLite is a single-node store).
//! - [`Cluster`] implements [`SessionLeases`] for the supervisor
//!   ([`Supervisor::with_leases`](voxroute_actors::supervisor::Supervisor::with_leases)):
//!   one row of `session_leases` per live session (keyed or not), taken at admission in one
//!   transaction with the count of the key's unexpired leases, serialised per key by a
//!   transaction-scoped advisory lock; renewed, with the replica's heartbeat, every
//!   [`Cluster::heartbeat_interval`] (a third of the TTL); deleted when the session ends.
//!   A replica killed with SIGKILL stops renewing: its leases expire after the TTL and its
//!   slots are free again.
//! - [`Cluster::live_sessions`], [`Cluster::holder`] and [`Cluster::request_end`] serve the
//!   admin API; [`Cluster::listen_for_ends`] is the task that `LISTEN`s on
//!   [`END_SESSION_CHANNEL`] and ends the sessions this replica holds.
//!
//! # What callers must keep
//!
//! - Every time compared or stored here is the database server's `now()`: replicas' clocks
//!   never meet, so a replica with a skewed clock expires on the same clock as the others, and
//!   a lease whose `expires_at` is past is ignored whoever wrote it.
//! - Every replica of one database should run with the same TTL (`VOXROUTE_REPLICA_TTL_SECS`,
//!   default [`DEFAULT_TTL`]): a lease expires on its holder's TTL.
//! - [`Cluster::leave`] at the end of a graceful shutdown, after the last session ended.
//! - A `NOTIFY` is delivered at most once, to replicas listening at the time: a replica whose
//!   listening connection is being re-established misses it (the admin may ask again).

use std::net::SocketAddr;
use std::time::Duration;

use actix::Addr;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::{PgListener, PgPool};
use uuid::Uuid;
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::store::{LeaseEntry, LeaseGrant, LeaseRequest, SessionLeases, StoreFuture};
use voxroute_actors::supervisor::{EndOne, Supervisor};

use crate::store::{Backend, QueryError, Store};

/// How long a replica's heartbeat and its sessions' leases stay valid without renewal, unless
/// `VOXROUTE_REPLICA_TTL_SECS` says otherwise: a replica silent for longer is dead and its
/// sessions' slots are free.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// The environment variable that sets the TTL, in whole seconds (1 to [`MAX_TTL_SECS`]).
pub const TTL_ENV: &str = "VOXROUTE_REPLICA_TTL_SECS";

/// The longest TTL accepted.
pub const MAX_TTL_SECS: u64 = 3_600;

/// The PostgreSQL channel every replica `LISTEN`s on; the payload is a session id.
pub const END_SESSION_CHANNEL: &str = "voxroute_end_session";

/// Expired leases, and replicas dead for longer than this, are deleted by the heartbeats.
const GARBAGE_AFTER_SECS: f64 = 3_600.0;

/// First and longest wait before re-establishing the `LISTEN` connection after a failure.
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(500);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Salt of the advisory-lock key derived from an API key id, so voxroute's locks do not
/// collide with another application's on the same database.
const LEASE_LOCK_SEED: i64 = 0x766f_7872_6f75_7465; // "voxroute"

/// Why the replica settings are unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaConfigError {
    /// `VOXROUTE_REPLICA_TTL_SECS` is not a whole number of seconds in range.
    #[error("{TTL_ENV} must be a whole number of seconds from 1 to {MAX_TTL_SECS}, got {0:?}")]
    InvalidTtl(String),
}

/// The TTL from `VOXROUTE_REPLICA_TTL_SECS`, or [`DEFAULT_TTL`] when unset.
///
/// # Errors
///
/// [`ReplicaConfigError::InvalidTtl`] for a value that is not 1 to [`MAX_TTL_SECS`].
pub fn ttl_from_env() -> Result<Duration, ReplicaConfigError> {
    match std::env::var(TTL_ENV) {
        Err(_) => Ok(DEFAULT_TTL),
        Ok(raw) => match raw.trim().parse::<u64>() {
            Ok(secs @ 1..=MAX_TTL_SECS) => Ok(Duration::from_secs(secs)),
            _ => Err(ReplicaConfigError::InvalidTtl(
                raw.chars().take(40).collect(),
            )),
        },
    }
}

/// One live session of the deployment, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterSession {
    /// Session id.
    pub id: Uuid,
    /// The caller's key, if any.
    pub api_key_id: Option<Uuid>,
    /// The endpoint it came in on (`None` until its start record is written).
    pub endpoint: Option<String>,
    /// The provider it started on (`None` until its start record is written).
    pub provider: Option<String>,
    /// When it was accepted (its lease's time until its start record is written).
    pub started_at: DateTime<Utc>,
    /// The replica holding it.
    pub node_id: Uuid,
}

/// This replica's membership of the deployment. Cheap to clone (a pool handle and ids).
#[derive(Debug, Clone)]
pub struct Cluster {
    pool: PgPool,
    node_id: Uuid,
    ttl: Duration,
}

impl Cluster {
    /// Registers this process as a replica (a new node id) if `store` is PostgreSQL;
    /// `Ok(None)` for SQLite.
    ///
    /// # Errors
    ///
    /// [`QueryError`] if the registration cannot be written.
    pub async fn join(
        store: &Store,
        ttl: Duration,
        address: Option<SocketAddr>,
    ) -> Result<Option<Cluster>, QueryError> {
        let pool = match store.backend() {
            Backend::Postgres(pool) => pool.clone(),
            _ => return Ok(None),
        };
        let cluster = Cluster {
            pool,
            node_id: Uuid::now_v7(),
            ttl,
        };
        sqlx::query(
            "INSERT INTO replicas (node_id, started_at, heartbeat_at, expires_at, address) \
             VALUES ($1, now(), now(), now() + make_interval(secs => $2), $3)",
        )
        .bind(cluster.node_id)
        .bind(cluster.ttl_secs())
        .bind(address.map(|a| a.to_string()))
        .execute(&cluster.pool)
        .await?;
        Ok(Some(cluster))
    }

    /// This replica's node id.
    pub fn node_id(&self) -> Uuid {
        self.node_id
    }

    /// How long a heartbeat or lease stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the heartbeat (and lease renewal) runs: a third of the TTL, so that two
    /// missed beats still leave the leases valid.
    pub fn heartbeat_interval(&self) -> Duration {
        self.ttl / 3
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Every session with an unexpired lease, on any replica, oldest first. Sessions whose
    /// record says they ended (a lease whose release was lost) are left out.
    ///
    /// # Errors
    ///
    /// [`QueryError`] if the database cannot answer.
    pub async fn live_sessions(&self) -> Result<Vec<ClusterSession>, QueryError> {
        let rows = sqlx::query(
            "SELECT l.session_id, l.api_key_id, l.node_id, l.acquired_at, \
                    s.endpoint, s.provider, s.started_at \
             FROM session_leases l LEFT JOIN sessions s ON s.id = l.session_id \
             WHERE l.expires_at > now() AND s.ended_at IS NULL \
             ORDER BY l.acquired_at, l.session_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let acquired_at: DateTime<Utc> = row.try_get("acquired_at")?;
                let started_at: Option<DateTime<Utc>> = row.try_get("started_at")?;
                Ok(ClusterSession {
                    id: row.try_get("session_id")?,
                    api_key_id: row.try_get("api_key_id")?,
                    endpoint: row.try_get("endpoint")?,
                    provider: row.try_get("provider")?,
                    started_at: started_at.unwrap_or(acquired_at),
                    node_id: row.try_get("node_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|error| QueryError::Corrupt(error.to_string()))
    }

    /// The replica holding live session `id` (an unexpired lease), if any.
    ///
    /// # Errors
    ///
    /// [`QueryError`] if the database cannot answer.
    pub async fn holder(&self, id: Uuid) -> Result<Option<Uuid>, QueryError> {
        let node = sqlx::query_scalar(
            "SELECT node_id FROM session_leases WHERE session_id = $1 AND expires_at > now()",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(node)
    }

    /// Asks every replica (`NOTIFY` on [`END_SESSION_CHANNEL`]) to end session `id` with
    /// `KILLED_BY_ADMIN`; the one holding it does.
    ///
    /// # Errors
    ///
    /// [`QueryError`] if the database cannot take the notification.
    pub async fn request_end(&self, id: Uuid) -> Result<(), QueryError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(END_SESSION_CHANNEL)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs until the store's pool closes: `LISTEN`s on [`END_SESSION_CHANNEL`] and tells
    /// `supervisor` to end each named session (it does if the session is live here). The
    /// connection is re-established after a failure, with backoff.
    pub async fn listen_for_ends(self, supervisor: Addr<Supervisor>) {
        let mut backoff = LISTEN_BACKOFF_MIN;
        loop {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(listener) => listener,
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for admin kills; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                    continue;
                }
            };
            if let Err(error) = listener.listen(END_SESSION_CHANNEL).await {
                tracing::warn!(%error, "cannot listen for admin kills; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                continue;
            }
            tracing::debug!(node_id = %self.node_id, "listening for admin kills");
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        backoff = LISTEN_BACKOFF_MIN;
                        let Ok(id) = notification.payload().trim().parse::<Uuid>() else {
                            tracing::warn!(
                                "ignoring an admin kill whose payload is not a session id"
                            );
                            continue;
                        };
                        let reason = SessionCloseReason::KilledByAdmin;
                        if let Ok(true) = supervisor.send(EndOne { id, reason }).await {
                            tracing::info!(session_id = %id, "session ended at another replica's request");
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(error) => {
                        tracing::warn!(%error, "lost the admin-kill listener; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
        }
    }

    /// Leaves the deployment at the end of a graceful shutdown: drops this replica's leases
    /// (a session still live loses its slot, which is right: it is about to end) and its row.
    ///
    /// # Errors
    ///
    /// [`QueryError`] if the database cannot answer (the rows then expire with the TTL).
    pub async fn leave(&self) -> Result<(), QueryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM session_leases WHERE node_id = $1")
            .bind(self.node_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE node_id = $1")
            .bind(self.node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<LeaseGrant, QueryError> {
        let mut tx = self.pool.begin().await?;
        if let (Some(key), Some(max)) = (request.api_key_id, request.max_sessions) {
            // One admission of this key at a time, on every replica, until the commit: the
            // count and the insert below cannot interleave with another replica's.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))")
                .bind(key)
                .bind(LEASE_LOCK_SEED)
                .execute(&mut *tx)
                .await?;
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM session_leases \
                 WHERE api_key_id = $1 AND expires_at > now() AND session_id <> $2",
            )
            .bind(key)
            .bind(request.session_id)
            .fetch_one(&mut *tx)
            .await?;
            if live >= i64::from(max) {
                tx.rollback().await?;
                return Ok(LeaseGrant::Refused {
                    live: u32::try_from(live).unwrap_or(u32::MAX),
                });
            }
        }
        sqlx::query(
            "INSERT INTO session_leases (session_id, api_key_id, node_id, acquired_at, expires_at) \
             VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4)) \
             ON CONFLICT (session_id) DO UPDATE \
             SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at",
        )
        .bind(request.session_id)
        .bind(request.api_key_id)
        .bind(self.node_id)
        .bind(self.ttl_secs())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LeaseGrant::Granted)
    }

    async fn release_lease(&self, session_id: Uuid) -> Result<(), QueryError> {
        sqlx::query("DELETE FROM session_leases WHERE session_id = $1 AND node_id = $2")
            .bind(session_id)
            .bind(self.node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The heartbeat: marks the replica alive (re-registering it if its row was cleaned up
    /// during a long outage), renews or takes the leases of `live`, and deletes long-expired
    /// leases and replicas.
    async fn heartbeat(&self, live: &[LeaseEntry]) -> Result<(), QueryError> {
        let ids: Vec<Uuid> = live.iter().map(|entry| entry.session_id).collect();
        let keys: Vec<Option<Uuid>> = live.iter().map(|entry| entry.api_key_id).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (node_id, started_at, heartbeat_at, expires_at) \
             VALUES ($1, now(), now(), now() + make_interval(secs => $2)) \
             ON CONFLICT (node_id) DO UPDATE \
             SET heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at",
        )
        .bind(self.node_id)
        .bind(self.ttl_secs())
        .execute(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO session_leases (session_id, api_key_id, node_id, acquired_at, expires_at) \
                 SELECT t.session_id, t.api_key_id, $3, now(), now() + make_interval(secs => $4) \
                 FROM UNNEST($1::uuid[], $2::uuid[]) AS t(session_id, api_key_id) \
                 ON CONFLICT (session_id) DO UPDATE \
                 SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at",
            )
            .bind(&ids)
            .bind(&keys)
            .bind(self.node_id)
            .bind(self.ttl_secs())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM session_leases WHERE expires_at < now() - make_interval(secs => $1)",
        )
        .bind(GARBAGE_AFTER_SECS)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE expires_at < now() - make_interval(secs => $1)")
            .bind(GARBAGE_AFTER_SECS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl SessionLeases for Cluster {
    fn acquire<'a>(&'a self, request: &'a LeaseRequest) -> StoreFuture<'a, LeaseGrant> {
        Box::pin(async move { Ok(self.acquire_lease(request).await?) })
    }

    fn release<'a>(&'a self, session_id: Uuid) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(self.release_lease(session_id).await?) })
    }

    fn renew<'a>(&'a self, live: &'a [LeaseEntry]) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(self.heartbeat(live).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cluster(pool: &PgPool, ttl: Duration) -> Cluster {
        let store = Store::from_postgres(pool.clone()).await.unwrap();
        Cluster::join(&store, ttl, None)
            .await
            .unwrap()
            .expect("PostgreSQL joins")
    }

    fn request(key: Option<Uuid>, max_sessions: Option<u32>) -> LeaseRequest {
        LeaseRequest {
            session_id: Uuid::now_v7(),
            api_key_id: key,
            max_sessions,
        }
    }

    /// Two replicas' leases on one database: a key's limit holds across them, a release
    /// frees the slot, and a lease whose `expires_at` is past (a dead replica, or a clock
    /// skewed writer) neither counts nor lists.
    #[sqlx::test(migrations = false)]
    async fn leases_hold_across_replicas_and_expired_ones_are_ignored(pool: PgPool) {
        let a = cluster(&pool, Duration::from_secs(30)).await;
        let b = cluster(&pool, Duration::from_secs(30)).await;
        assert_ne!(a.node_id(), b.node_id());
        let key = Some(Uuid::now_v7());
        let first = request(key, Some(1));
        assert_eq!(a.acquire_lease(&first).await.unwrap(), LeaseGrant::Granted);
        assert_eq!(
            b.acquire_lease(&request(key, Some(1))).await.unwrap(),
            LeaseGrant::Refused { live: 1 }
        );
        let listed = b.live_sessions().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].id, listed[0].node_id),
            (first.session_id, a.node_id())
        );
        assert_eq!(b.holder(first.session_id).await.unwrap(), Some(a.node_id()));

        a.release_lease(first.session_id).await.unwrap();
        let second = request(key, Some(1));
        assert_eq!(b.acquire_lease(&second).await.unwrap(), LeaseGrant::Granted);

        // A stale lease of the key from a replica that is gone.
        sqlx::query(
            "UPDATE session_leases SET expires_at = now() - interval '1 second' \
             WHERE session_id = $1",
        )
        .bind(second.session_id)
        .execute(&pool)
        .await
        .unwrap();
        assert!(a.live_sessions().await.unwrap().is_empty());
        assert_eq!(a.holder(second.session_id).await.unwrap(), None);
        assert_eq!(
            a.acquire_lease(&request(key, Some(1))).await.unwrap(),
            LeaseGrant::Granted
        );
    }

    /// The heartbeat renews (and takes) the leases of live sessions, and leaving drops them.
    #[sqlx::test(migrations = false)]
    async fn heartbeat_renews_and_leave_drops(pool: PgPool) {
        let a = cluster(&pool, Duration::from_secs(30)).await;
        let unleased = LeaseEntry {
            session_id: Uuid::now_v7(),
            api_key_id: None,
        };
        a.heartbeat(&[unleased]).await.unwrap();
        assert_eq!(
            a.holder(unleased.session_id).await.unwrap(),
            Some(a.node_id())
        );
        a.leave().await.unwrap();
        assert_eq!(a.holder(unleased.session_id).await.unwrap(), None);
        let replicas: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(replicas, 0);
    }
}
