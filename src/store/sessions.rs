//! Session records in the `sessions` table, and their usage per provider in `session_usage`:
//! written by the supervisor through [`SessionStore`], read by `voxroute sessions list`, the
//! admin API and `GET /v1/usage`.
//!
//! A session's `session_usage` rows are written with its end, in the same transaction, and
//! deleted with its record (GDPR erasure here, retention in `retention.rs`): whoever deletes
//! `sessions` rows must delete their usage first.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;
use voxroute_actors::record::{ProviderUsage, SessionEnd, SessionStart};
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

/// What [`Store::find_sessions`] selects; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Sessions of this key.
    pub api_key_id: Option<Uuid>,
    /// Sessions whose last provider is this.
    pub provider: Option<String>,
    /// Sessions that ended for this reason (the stored string, e.g. `CLIENT_HANGUP`).
    pub close_reason: Option<String>,
    /// Sessions that started at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Sessions that started before this.
    pub until: Option<DateTime<Utc>>,
    /// At most this many rows.
    pub limit: u32,
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

    /// Sessions matching `filter`, newest first, at most `filter.limit`.
    ///
    /// # Errors
    ///
    /// The database's error; [`QueryError::Corrupt`] if a row does not decode.
    pub async fn find_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRow>, QueryError> {
        // One static statement: each filter is `(param IS NULL OR column = param)`.
        const SQL: &str = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE ($1 IS NULL OR api_key_id = $1) \
             AND ($2 IS NULL OR provider = $2) \
             AND ($3 IS NULL OR close_reason = $3) \
             AND ($4 IS NULL OR started_at >= $4) \
             AND ($5 IS NULL OR started_at < $5) \
             ORDER BY started_at DESC, id DESC LIMIT $6"
        );
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(filter.api_key_id)
            .bind(filter.provider.as_deref())
            .bind(filter.close_reason.as_deref())
            .bind(filter.since)
            .bind(filter.until)
            .bind(i64::from(filter.limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(SessionRow::from).collect())
    }

    /// Deletes every session record of key `api_key_id` (with its usage) and the key itself
    /// (a GDPR erasure). Returns how many session records and keys (0 or 1) were deleted.
    ///
    /// # Errors
    ///
    /// The database's error; nothing is deleted then (one transaction).
    pub async fn erase_key(&self, api_key_id: Uuid) -> Result<(u64, u64), QueryError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM session_usage WHERE session_id IN \
                 (SELECT id FROM sessions WHERE api_key_id = $1)",
            )
            .bind(api_key_id)
            .execute(&mut *tx)
            .await?;
            let sessions = sqlx::query("DELETE FROM sessions WHERE api_key_id = $1")
                .bind(api_key_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let keys = sqlx::query("DELETE FROM api_keys WHERE id = $1")
                .bind(api_key_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok((sessions, keys))
        })
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

    /// Completes a record and writes its usage per provider, in one transaction; returns
    /// `false` (and writes nothing) if no record `end.id` exists. Writing the same end twice
    /// leaves the same values: usage rows are set, never added to. A provider missing from a
    /// later end (e.g. the supervisor's placeholder end of a vanished session, which has no
    /// usage) keeps the row an earlier end wrote.
    async fn write_end(&self, end: &SessionEnd) -> Result<bool, QueryError> {
        const UPSERT_USAGE: &str = "INSERT INTO session_usage \
             (session_id, provider, audio_in_ms, audio_out_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (session_id, provider) DO UPDATE \
             SET audio_in_ms = excluded.audio_in_ms, audio_out_ms = excluded.audio_out_ms";
        let providers_tried = ProviderList(end.providers_tried.clone());
        let usage = usage_per_provider(&end.usage);
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE sessions SET ended_at = $2, duration_ms = $3, close_reason = $4, \
                 provider = $5, providers_tried = $6, audio_in_ms = $7, audio_out_ms = $8, \
                 failovers = $9, first_response_ms = $10 \
                 WHERE id = $1",
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                // Nothing to complete; the transaction rolls back on drop.
                return Ok(false);
            }
            for (provider, (audio_in_ms, audio_out_ms)) in &usage {
                sqlx::query(UPSERT_USAGE)
                    .bind(end.id)
                    .bind(*provider)
                    .bind(*audio_in_ms)
                    .bind(*audio_out_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }
}

/// A session's segments summed per provider (a provider tried twice has one row); negative
/// values, which the core never produces, count as 0.
fn usage_per_provider(segments: &[ProviderUsage]) -> BTreeMap<&str, (i64, i64)> {
    let mut per_provider: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for segment in segments {
        let entry = per_provider.entry(segment.provider.as_str()).or_default();
        entry.0 = entry.0.saturating_add(segment.audio_in_ms.max(0));
        entry.1 = entry.1.saturating_add(segment.audio_out_ms.max(0));
    }
    per_provider
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
