//! Session records in the `sessions` table: written by the supervisor through
//! [`SessionStore`], read by `voxroute sessions list` and the admin API.

use std::future::Future;

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;
use voxroute_actors::record::{SessionEnd, SessionStart};
use voxroute_actors::store::{SessionStore, StoreError, StoreFuture};

use super::types::ProviderList;
use super::{QueryError, Store, WRITE_TIMEOUT};

/// One row of `sessions`, every column, named as in the table (and so in
/// `voxroute sessions list --json`).
///
/// Timestamps come back with microsecond precision on both backends (the store truncates
/// what it writes to microseconds, PostgreSQL's resolution).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRow {
    /// Session id, a UUID v7.
    pub id: Uuid,
    /// The caller's key; `None` for keyless (`--dev`) sessions.
    pub api_key_id: Option<Uuid>,
    /// The endpoint path used, e.g. `/v1/telephony/twilio`.
    pub endpoint: String,
    /// [`Transport::as_str`](voxroute_actors::record::Transport::as_str): `telephony`,
    /// `websocket` or `webrtc`.
    pub transport: String,
    /// The route the caller named, if any.
    pub route: Option<String>,
    /// The provider last used (the first one until the session ends).
    pub provider: String,
    /// Every provider tried, in order; just the first one until the session ends.
    pub providers_tried: Vec<String>,
    /// The caller's address as text; anonymised by retention (IPv4 /24, IPv6 /48).
    pub client_ip: Option<String>,
    /// When the connection was accepted.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while live (or if the router died without recording the end).
    pub ended_at: Option<DateTime<Utc>>,
    /// Wall time from accept to end.
    pub duration_ms: Option<i64>,
    /// [`SessionCloseReason::as_str`](voxroute_actors::close_reason::SessionCloseReason::as_str),
    /// e.g. `CLIENT_HANGUP`; kept as the stored string so that rows written by a newer
    /// release still list.
    pub close_reason: Option<String>,
    /// Caller audio forwarded to providers.
    pub audio_in_ms: i64,
    /// Provider audio sent back to the caller.
    pub audio_out_ms: i64,
    /// How many times the session moved to another provider.
    pub failovers: i32,
    /// From the first caller audio to the first provider response.
    pub first_response_ms: Option<i64>,
}

/// `SessionRow` as decoded: the list column in its per-backend wrapper.
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    api_key_id: Option<Uuid>,
    endpoint: String,
    transport: String,
    route: Option<String>,
    provider: String,
    providers_tried: ProviderList,
    client_ip: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    close_reason: Option<String>,
    audio_in_ms: i64,
    audio_out_ms: i64,
    failovers: i32,
    first_response_ms: Option<i64>,
}

impl From<Row> for SessionRow {
    fn from(r: Row) -> Self {
        SessionRow {
            id: r.id,
            api_key_id: r.api_key_id,
            endpoint: r.endpoint,
            transport: r.transport,
            route: r.route,
            provider: r.provider,
            providers_tried: r.providers_tried.into(),
            client_ip: r.client_ip,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            close_reason: r.close_reason,
            audio_in_ms: r.audio_in_ms,
            audio_out_ms: r.audio_out_ms,
            failovers: r.failovers,
            first_response_ms: r.first_response_ms,
        }
    }
}

/// Every column of `sessions`, as a literal for `concat!` (sqlx takes only `&'static str` SQL
/// unless told otherwise, a guard against injection we keep).
macro_rules! session_columns {
    () => {
        "id, api_key_id, endpoint, transport, route, provider, providers_tried, client_ip, \
         started_at, ended_at, duration_ms, close_reason, audio_in_ms, audio_out_ms, failovers, \
         first_response_ms"
    };
}

impl Store {
    /// The `limit` most recent sessions, newest first (by `started_at`, then id).
    ///
    /// # Errors
    ///
    /// The database's error; [`QueryError::Corrupt`] if a row does not decode.
    pub async fn list_sessions(&self, limit: u32) -> Result<Vec<SessionRow>, QueryError> {
        const SQL: &str = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions ORDER BY started_at DESC, id DESC LIMIT $1"
        );
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(SessionRow::from).collect())
    }

    /// The record of session `id`, if it was written (and not yet deleted by retention).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn get_session(&self, id: Uuid) -> Result<Option<SessionRow>, QueryError> {
        const SQL: &str = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        let row: Option<Row> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(SessionRow::from))
    }

    /// Inserts the start of a record; a second start for the same id is ignored.
    async fn write_start(&self, start: &SessionStart) -> Result<(), QueryError> {
        let providers_tried = ProviderList(vec![start.provider.clone()]);
        let client_ip = start.client_ip.map(|ip| ip.to_string());
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO sessions (id, api_key_id, endpoint, transport, route, provider, \
             providers_tried, client_ip, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO NOTHING"
        )
        .bind(start.id)
        .bind(start.api_key_id)
        .bind(&start.endpoint)
        .bind(start.transport.as_str())
        .bind(&start.route)
        .bind(&start.provider)
        .bind(&providers_tried)
        .bind(&client_ip)
        .bind(start.started_at.trunc_subsecs(6))
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Completes a record; returns `false` if no record `end.id` exists. Writing the same end
    /// twice leaves the same values.
    async fn write_end(&self, end: &SessionEnd) -> Result<bool, QueryError> {
        let providers_tried = ProviderList(end.providers_tried.clone());
        let result = with_pool!(self, |pool| sqlx::query(
            "UPDATE sessions SET ended_at = $2, duration_ms = $3, close_reason = $4, \
             provider = $5, providers_tried = $6, audio_in_ms = $7, audio_out_ms = $8, \
             failovers = $9, first_response_ms = $10 \
             WHERE id = $1"
        )
        .bind(end.id)
        .bind(end.ended_at.trunc_subsecs(6))
        .bind(end.duration_ms)
        .bind(end.close_reason.as_str())
        .bind(&end.provider)
        .bind(&providers_tried)
        .bind(end.audio_in_ms)
        .bind(end.audio_out_ms)
        .bind(end.failovers)
        .bind(end.first_response_ms)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(result > 0)
    }
}

/// Runs a write with [`WRITE_TIMEOUT`]; a timeout is [`StoreError::Unavailable`].
async fn within_write_timeout<T>(
    write: impl Future<Output = Result<T, QueryError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from the database within {} s",
            WRITE_TIMEOUT.as_secs()
        ))),
    }
}

/// Both writes are idempotent, as the trait requires: a repeated start is ignored (the first
/// one wins), a repeated end overwrites the same columns with the same values. Connection
/// failures, busy databases and [`WRITE_TIMEOUT`] are [`StoreError::Unavailable`]; an end for
/// a session that has no record is [`StoreError::Rejected`].
impl SessionStore for Store {
    fn record_start<'a>(&'a self, start: &'a SessionStart) -> StoreFuture<'a, ()> {
        Box::pin(within_write_timeout(self.write_start(start)))
    }

    fn record_end<'a>(&'a self, end: &'a SessionEnd) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if within_write_timeout(self.write_end(end)).await? {
                Ok(())
            } else {
                Err(StoreError::Rejected(format!(
                    "no session record {} to complete",
                    end.id
                )))
            }
        })
    }
}
