//! The SQL store: API keys, session records and their usage per provider, on SQLite or
//! PostgreSQL.
//!
//! [`Store`] is a cheap-to-clone handle over a connection pool of either backend, chosen by
//! the URL's scheme in [`Store::open`], which also runs the embedded migrations
//! (`migrations/postgres`, `migrations/sqlite`: the same tables and column names on both).
//! It implements [`voxroute_actors::store::SessionStore`] for the supervisor, and offers what
//! the CLI, authentication, the admin API and readiness need.
//!
//! # One implementation, two backends
//!
//! Every query is written once, with `$1`-style parameters (PostgreSQL's syntax, which sqlx's
//! SQLite driver binds by number too), and run through `with_pool!`, which expands the same
//! code once per pool type. Values are bound with types both drivers encode (`Uuid`,
//! `DateTime<Utc>`, `i64`, `String`); the one column whose natural type differs,
//! `providers_tried` (`text[]` on PostgreSQL, a JSON array in `TEXT` on SQLite), goes through
//! `ProviderList` (in `types.rs`), a type that encodes itself per backend. SQL differs
//! per backend only in the migrations.
//!
//! # What it does not do
//!
//! It does not queue or retry: the supervisor does, on [`StoreError::Unavailable`]. It never
//! logs, and its errors never hold a key, a hash or an IP address.
//!
//! [`StoreError::Unavailable`]: voxroute_actors::store::StoreError::Unavailable

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection as _};

/// Runs one expression against whichever pool the store holds: `$pool` is bound to a
/// `&PgPool` in one arm and a `&SqlitePool` in the other, so the same query text and binds are
/// type-checked and compiled once per backend. Defined before the submodules that use it.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Postgres($pool) => $body,
            $crate::store::Backend::Sqlite($pool) => $body,
        }
    };
}

mod error;
mod keys;
mod retention;
mod sessions;
mod types;
mod usage;

pub use error::{AuthError, QueryError, StoreOpenError};
pub use keys::{ApiKey, MAX_KEY_NAME_CHARS};
pub use retention::{RetentionReport, anonymise_ip};
pub use sessions::{SessionFilter, SessionRow};
pub use usage::{DailyUsage, KeyUsage};

/// How long opening a pool, or waiting for a free connection, may take before the store counts
/// as unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session-record write may take in total before it is reported as
/// [`Unavailable`](voxroute_actors::store::StoreError::Unavailable) (and retried later by the
/// supervisor).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SQLite waits for another connection's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per pool. SQLite allows one writer at a time anyway; PostgreSQL connections are
/// expensive on the server, and replicas share it.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Opens and closes one connection, to report why the database cannot be reached: a pool
/// retries refused connections until its timeout and then reports only the timeout.
async fn probe<O>(options: &O, target: &str) -> Result<(), StoreOpenError>
where
    O: ConnectOptions,
    O::Connection: Sized,
{
    match tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            // Closing politely is a courtesy to the server; a failure here changes nothing.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(source)) => Err(StoreOpenError::Connect {
            target: target.to_owned(),
            source,
        }),
        Err(_) => Err(StoreOpenError::ConnectTimeout {
            target: target.to_owned(),
            timeout: ACQUIRE_TIMEOUT,
        }),
    }
}

/// The pool a [`Store`] runs on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// A PostgreSQL server (`postgres://`, `postgresql://`): for production and replicas.
    Postgres(PgPool),
    /// A SQLite file (`sqlite://path`), in WAL mode: for a single instance and the demo.
    Sqlite(SqlitePool),
}

/// voxroute's SQL store. Clones share one pool.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

impl Store {
    /// Opens the store at `database_url` and brings its schema up to date.
    ///
    /// - `sqlite://PATH` (or `sqlite:PATH`): the file is created if missing and put in WAL
    ///   mode; a relative path is relative to the working directory.
    /// - `postgres://...` or `postgresql://...`: the database must exist.
    ///
    /// # Errors
    ///
    /// [`StoreOpenError`]: an unsupported scheme or unparsable URL, a database that cannot be
    /// reached within [`ACQUIRE_TIMEOUT`], or a failed migration. The messages never contain
    /// the URL's password.
    pub async fn open(database_url: &str) -> Result<Store, StoreOpenError> {
        let scheme = database_url
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .unwrap_or_default();
        match scheme {
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(database_url)
                    .map_err(StoreOpenError::InvalidUrl)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                if options.get_filename().as_os_str().is_empty() {
                    return Err(StoreOpenError::MissingPath);
                }
                let target = format!("SQLite file {}", options.get_filename().display());
                probe(&options, &target).await?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(SQLITE_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreOpenError::Connect { target, source })?;
                Self::from_sqlite(pool).await
            }
            "postgres" | "postgresql" => {
                let options =
                    PgConnectOptions::from_str(database_url).map_err(StoreOpenError::InvalidUrl)?;
                let target = format!(
                    "PostgreSQL at {}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                );
                probe(&options, &target).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(|source| StoreOpenError::Connect { target, source })?;
                Self::from_postgres(pool).await
            }
            _ => Err(StoreOpenError::UnsupportedScheme {
                // Only the scheme: the rest of a URL may hold a password.
                scheme: scheme
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c))
                    .take(20)
                    .collect(),
            }),
        }
    }

    /// A store over an existing PostgreSQL pool (e.g. `#[sqlx::test]`'s); runs the migrations.
    ///
    /// # Errors
    ///
    /// [`StoreOpenError::Migrate`] if the schema cannot be brought up to date.
    pub async fn from_postgres(pool: PgPool) -> Result<Store, StoreOpenError> {
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            backend: Backend::Postgres(pool),
        })
    }

    /// A store over an existing SQLite pool; runs the migrations.
    ///
    /// # Errors
    ///
    /// [`StoreOpenError::Migrate`] if the schema cannot be brought up to date.
    pub async fn from_sqlite(pool: SqlitePool) -> Result<Store, StoreOpenError> {
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// The pool underneath, for tests and one-off queries. Prefer adding a method here: it
    /// keeps SQL in one module and every query running on both backends.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether the database answers a trivial query: the store half of `/readyz`.
    ///
    /// # Errors
    ///
    /// [`QueryError::Unavailable`] if it cannot be reached within [`ACQUIRE_TIMEOUT`].
    pub async fn ping(&self) -> Result<(), QueryError> {
        with_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Closes every connection; later calls fail with [`QueryError::Unavailable`]. Waits for
    /// connections in use to be returned (SQLite checkpoints its WAL on the last close).
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await);
    }
}
