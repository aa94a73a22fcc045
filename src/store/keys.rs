//! API keys in the `api_keys` table: create, list, revoke, authenticate. What is stored and
//! how a key is checked is [`crate::keys`]'s business; this file only moves rows.

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

use super::{AuthError, QueryError, Store};
use crate::keys;

/// Longest key name accepted, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 200;

/// An API key as stored, without its hash (which never leaves the store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// UUID v7, shown by `voxroute keys list`, taken by `voxroute keys revoke`, and written to
    /// `sessions.api_key_id` for the sessions it opens.
    pub id: Uuid,
    /// The operator's label.
    pub name: String,
    /// The key's first 12 characters (`vxr_` + 8): enough to tell keys apart, useless to
    /// authenticate.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; `None` while it is valid.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Concurrent live sessions allowed for this key (across replicas); `None`: no limit.
    pub max_sessions: Option<u32>,
}

/// The columns of `api_keys` except `hash`, as a literal for `concat!` (sqlx takes only
/// `&'static str` SQL unless told otherwise, a guard against injection we keep).
macro_rules! key_columns {
    () => {
        "id, name, prefix, created_at, revoked_at, max_sessions"
    };
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    max_sessions: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct KeyRowWithHash {
    #[sqlx(flatten)]
    key: KeyRow,
    hash: String,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = QueryError;

    fn try_from(row: KeyRow) -> Result<Self, QueryError> {
        let max_sessions = row
            .max_sessions
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    QueryError::Corrupt(format!("api key {} has max_sessions {n}", row.id))
                })
            })
            .transpose()?;
        Ok(ApiKey {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
            max_sessions,
        })
    }
}

impl Store {
    /// Creates a key named `name`, allowed `max_sessions` concurrent sessions (`None`: no
    /// limit). Returns the stored key and the plaintext, which exists nowhere else: hand it to
    /// the operator once and drop it.
    ///
    /// # Errors
    ///
    /// [`QueryError::InvalidInput`] for an empty, over-long or control-character name or a
    /// `max_sessions` of 0 or above `i32::MAX`; [`QueryError::Entropy`] if the OS RNG fails;
    /// otherwise the database's error.
    pub async fn create_key(
        &self,
        name: &str,
        max_sessions: Option<u32>,
    ) -> Result<(ApiKey, String), QueryError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(QueryError::InvalidInput("the key name must not be empty"));
        }
        if name.chars().count() > MAX_KEY_NAME_CHARS {
            return Err(QueryError::InvalidInput(
                "the key name must be at most 200 characters",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(QueryError::InvalidInput(
                "the key name must not contain control characters",
            ));
        }
        let max_sessions_db = match max_sessions {
            None => None,
            Some(0) => {
                return Err(QueryError::InvalidInput(
                    "max_sessions must be at least 1 (leave it out for no limit)",
                ));
            }
            Some(n) => Some(i32::try_from(n).map_err(|_| {
                QueryError::InvalidInput("max_sessions must be at most 2147483647")
            })?),
        };

        let generated = keys::generate()?;
        let key = ApiKey {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            prefix: generated.prefix.clone(),
            // Both backends then hold exactly this value (PostgreSQL keeps microseconds).
            created_at: Utc::now().trunc_subsecs(6),
            revoked_at: None,
            max_sessions,
        };
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, hash, created_at, revoked_at, max_sessions) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)"
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&generated.prefix)
        .bind(&generated.hash)
        .bind(key.created_at)
        .bind(max_sessions_db)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok((key, generated.plaintext))
    }

    /// Every key, revoked ones included, oldest first.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, QueryError> {
        const SQL: &str = concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys ORDER BY created_at, id"
        );
        let rows: Vec<KeyRow> = with_pool!(self, |pool| sqlx::query_as(SQL).fetch_all(pool).await)?;
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    /// The key with this id, if any.
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn get_key(&self, id: Uuid) -> Result<Option<ApiKey>, QueryError> {
        const SQL: &str = concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1");
        let row: Option<KeyRow> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        row.map(ApiKey::try_from).transpose()
    }

    /// Revokes key `id` now. Returns `false` if there is no such key or it was already revoked
    /// (its `revoked_at` is then left as it was).
    ///
    /// # Errors
    ///
    /// The database's error.
    pub async fn revoke_key(&self, id: Uuid) -> Result<bool, QueryError> {
        let now = Utc::now().trunc_subsecs(6);
        let result = with_pool!(self, |pool| sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(result == 1)
    }

    /// Checks a key presented by a caller and returns the stored key it matches.
    ///
    /// A malformed string is refused without a query. Otherwise the rows sharing its prefix
    /// are fetched (by index) and the SHA-256 of the presented key is compared with each
    /// stored hash in constant time.
    ///
    /// # Errors
    ///
    /// [`AuthError::Malformed`], [`AuthError::Unknown`], [`AuthError::Revoked`], or
    /// [`AuthError::Store`] when the database cannot answer (the caller should then fail
    /// closed, with a "try again" rather than an "unauthorised").
    pub async fn authenticate(&self, presented: &str) -> Result<ApiKey, AuthError> {
        keys::check_format(presented)?;
        let hash = keys::hash_key(presented);
        const SQL: &str = concat!(
            "SELECT ",
            key_columns!(),
            ", hash FROM api_keys WHERE prefix = $1"
        );
        let rows: Vec<KeyRowWithHash> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(keys::prefix_of(presented))
            .fetch_all(pool)
            .await)
        .map_err(QueryError::from)?;
        // Compare with every candidate, so that the time taken does not depend on which one
        // (if any) matches.
        let mut found = None;
        for row in rows {
            if keys::hashes_match(&row.hash, &hash) {
                found = Some(row.key);
            }
        }
        let key = ApiKey::try_from(found.ok_or(AuthError::Unknown)?)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(key)
    }
}
