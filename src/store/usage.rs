//! Reading metered usage: a key's sessions summed per day and provider, for `GET /v1/usage`.
//!
//! The rows are written by `sessions.rs` (with each session's end) into `session_usage`; this
//! module only reads them, joined to `sessions` for the key and the start time. A session
//! belongs to the UTC day it started on. Only ended sessions have usage rows, and keyless
//! (`--dev`) sessions belong to no key, so they are never anyone's usage.
//!
//! Summing happens here rather than in SQL because the day of a timestamp is computed
//! differently per backend (the store keeps SQL identical on both); rows are streamed, so
//! memory holds one row and the per-day totals, not the key's sessions.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt as _;
use uuid::Uuid;

use super::{QueryError, Store};

/// One provider's usage by one key on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    /// The UTC day the sessions started on.
    pub day: NaiveDate,
    /// The provider, as recorded.
    pub provider: String,
    /// Sessions that used the provider (a session that failed over counts for each provider).
    pub sessions: u64,
    /// Caller audio counted for the provider, in milliseconds.
    pub audio_in_ms: i64,
    /// The provider's audio sent to the callers, in milliseconds.
    pub audio_out_ms: i64,
}

/// What [`Store::key_usage`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Per day and provider, by day then provider name.
    pub days: Vec<DailyUsage>,
    /// Distinct sessions (a session that used two providers counts once here).
    pub sessions: u64,
}

impl Store {
    /// The usage of key `api_key_id`'s ended sessions that started in `[from, until)`, summed
    /// per UTC day and provider.
    ///
    /// # Errors
    ///
    /// The database's error; [`QueryError::Corrupt`] if a row does not decode.
    pub async fn key_usage(
        &self,
        api_key_id: Uuid,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<KeyUsage, QueryError> {
        const SQL: &str = "SELECT s.started_at, s.id, u.provider, u.audio_in_ms, u.audio_out_ms \
             FROM session_usage u JOIN sessions s ON s.id = u.session_id \
             WHERE s.api_key_id = $1 AND s.started_at >= $2 AND s.started_at < $3 \
             ORDER BY s.started_at, s.id";
        let mut sums: BTreeMap<(NaiveDate, String), DailyUsage> = BTreeMap::new();
        let mut sessions = 0;
        let mut last_session: Option<Uuid> = None;
        let mut add = |(started_at, id, provider, audio_in_ms, audio_out_ms): UsageRow| {
            // Rows come ordered by session: a new id is a new session.
            if last_session != Some(id) {
                last_session = Some(id);
                sessions += 1;
            }
            let day = started_at.date_naive();
            let entry = sums
                .entry((day, provider))
                .or_insert_with_key(|(day, provider)| DailyUsage {
                    day: *day,
                    provider: provider.clone(),
                    sessions: 0,
                    audio_in_ms: 0,
                    audio_out_ms: 0,
                });
            entry.sessions += 1;
            entry.audio_in_ms = entry.audio_in_ms.saturating_add(audio_in_ms.max(0));
            entry.audio_out_ms = entry.audio_out_ms.saturating_add(audio_out_ms.max(0));
        };
        with_pool!(self, |pool| {
            let mut rows = sqlx::query_as::<_, UsageRow>(SQL)
                .bind(api_key_id)
                .bind(from)
                .bind(until)
                .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                add(row);
            }
            Ok::<_, QueryError>(())
        })?;
        Ok(KeyUsage {
            days: sums.into_values().collect(),
            sessions,
        })
    }
}

/// One `session_usage` row with its session's start: (started_at, session id, provider,
/// audio_in_ms, audio_out_ms).
type UsageRow = (DateTime<Utc>, Uuid, String, i64, i64);
