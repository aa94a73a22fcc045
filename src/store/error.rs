//! The store's errors. None holds a key, a hash, an IP address or a database password:
//! sqlx's messages name the failure, never the bound values.

use sqlx::error::DatabaseError as _;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;
use voxroute_actors::store::StoreError;

use crate::keys::{EntropyError, FormatError};

/// Why [`Store::open`](super::Store::open) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreOpenError {
    /// The URL's scheme is neither `sqlite` nor `postgres`/`postgresql`.
    #[error(
        "unsupported database URL scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedScheme {
        /// The scheme as given (only the part before the first `:`).
        scheme: String,
    },
    /// The URL has a supported scheme but cannot be parsed.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// A `sqlite:` URL without a file path.
    #[error("the SQLite URL has no file path: use sqlite://PATH, e.g. sqlite://voxroute.db")]
    MissingPath,
    /// The database did not answer in time.
    #[error("cannot open the database ({target}): no answer within {} s", timeout.as_secs())]
    ConnectTimeout {
        /// Which database, without credentials.
        target: String,
        /// How long we waited.
        timeout: std::time::Duration,
    },
    /// The database could not be opened or reached.
    #[error("cannot open the database ({target}): {source}")]
    Connect {
        /// Which database, without credentials: `SQLite file PATH` or
        /// `PostgreSQL at HOST:PORT/DB`.
        target: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date (e.g. a migration already applied was
    /// edited, or this database belongs to a newer voxroute).
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Why a store call (other than opening) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The database cannot be reached, timed out, or is busy: retrying later can succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the statement (a constraint, a type); retrying will not help.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// An argument is out of range; the message says which and why.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// A stored row does not fit voxroute's types (written by something else, or damaged).
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
    /// The operating system's random number generator failed (making a key).
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

impl QueryError {
    /// Whether the same call may succeed later ([`QueryError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueryError::Unavailable(_))
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            QueryError::Unavailable(error)
        } else {
            QueryError::Database(error)
        }
    }
}

/// Maps to the supervisor's two cases: retry later, or give up on this record.
impl From<QueryError> for StoreError {
    fn from(error: QueryError) -> Self {
        if error.is_retryable() {
            StoreError::Unavailable(error.to_string())
        } else {
            StoreError::Rejected(error.to_string())
        }
    }
}

/// Why a presented API key was not accepted by
/// [`Store::authenticate`](super::Store::authenticate).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not shaped like a voxroute key; the database was not consulted.
    #[error("malformed API key: {0}")]
    Malformed(#[from] FormatError),
    /// Well-formed, but no key with this hash exists.
    #[error("unknown API key")]
    Unknown,
    /// The key exists but was revoked.
    #[error("revoked API key")]
    Revoked,
    /// The store could not answer; the key's validity is unknown (answer 503, not 401).
    #[error(transparent)]
    Store(#[from] QueryError),
}

/// Whether `error` means the database is (perhaps briefly) out of reach rather than that it
/// refused the statement.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                let code = pg.code();
                // 08: connection exception; 53: insufficient resources; 57P0x: the server is
                // shutting down or starting; 40001/40P01: serialization failure and deadlock,
                // which PostgreSQL documents as "retry the transaction".
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P0")
                    || code == "40001"
                    || code == "40P01"
            } else if let Some(sqlite) = db.try_downcast_ref::<SqliteError>() {
                // The primary result code is the low byte of the extended one: BUSY (5),
                // LOCKED (6), IOERR (10), FULL (13), CANTOPEN (14).
                let primary = sqlite
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                matches!(primary, Some(5 | 6 | 10 | 13 | 14))
            } else {
                false
            }
        }
        _ => false,
    }
}
