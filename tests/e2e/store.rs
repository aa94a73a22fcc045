//! The SQL store, end to end, on both backends.
//!
//! Every test body here is written once, as an async fn taking a fresh [`Store`], and run
//! twice by `on_both_backends!`: on PostgreSQL (a fresh database per test from
//! `#[sqlx::test]`, which needs `DATABASE_URL`; without it the test fails, it is never skipped)
//! and on SQLite (a new file in a temporary directory, opened through the same
//! `sqlite://` URL path the CLI uses). Test names read `store::<body>::postgres` and
//! `store::<body>::sqlite`.
//!
//! What they prove: the migrations create the contract's tables, columns and indexes; API
//! keys are stored as prefix + hash only and authenticate (or not) as they should; session
//! records round-trip every field, are idempotent, and reject an end without a start; an
//! outage is reported as retryable; retention deletes and anonymises exactly the right rows;
//! usage per provider is written with a session's end (summed per provider, set not added on a
//! replay), read back per key and day, and deleted with its session (retention, erasure).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SubsecRound as _, TimeDelta, TimeZone as _, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;
use voxroute::config::RetentionConfig;
use voxroute::keys;
use voxroute::store::{AuthError, Backend, QueryError, RetentionReport, SessionRow, Store};
use voxroute_actors::close_reason::SessionCloseReason;
use voxroute_actors::record::{ProviderUsage, SessionEnd, SessionStart, Transport};
use voxroute_actors::store::{SessionStore, StoreError};

/// A directory under the system's temp dir, removed (with its content) on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty, uniquely named directory.
    pub(crate) fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("voxroute-e2e-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The URL of a SQLite database file (not yet created) in this directory.
    pub(crate) fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.join("voxroute.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing (or double-panicking) over.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the async fn `$name(Store)` once per backend, as `$name::postgres` and
/// `$name::sqlite`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[sqlx::test(migrations = false)]
            async fn postgres(pool: PgPool) {
                let store = Store::from_postgres(pool).await.expect("migrations run on PostgreSQL");
                super::$name(store).await;
            }

            #[tokio::test]
            async fn sqlite() {
                let dir = TempDir::new();
                let store = Store::open(&dir.sqlite_url()).await.expect("SQLite store opens");
                super::$name(store.clone()).await;
                store.close().await;
            }
        }
    )*};
}

on_both_backends!(
    migrations_create_the_contract_schema,
    keys_authenticate_only_when_valid,
    keys_are_stored_as_prefix_and_hash_only,
    session_records_round_trip_every_field,
    session_writes_are_idempotent,
    session_end_without_start_is_rejected,
    closed_store_is_unavailable_and_retryable,
    retention_deletes_and_anonymises_the_right_rows,
    session_usage_is_set_per_provider_and_read_per_key_and_day,
    session_usage_goes_with_its_session,
);

/// The columns DESIGN.md names, in order.
pub(crate) const SESSION_COLUMNS: [&str; 16] = [
    "id",
    "api_key_id",
    "endpoint",
    "transport",
    "route",
    "provider",
    "providers_tried",
    "client_ip",
    "started_at",
    "ended_at",
    "duration_ms",
    "close_reason",
    "audio_in_ms",
    "audio_out_ms",
    "failovers",
    "first_response_ms",
];
const API_KEY_COLUMNS: [&str; 7] = [
    "id",
    "name",
    "prefix",
    "hash",
    "created_at",
    "revoked_at",
    "max_sessions",
];

/// The column names of `table`, in table order.
async fn columns(store: &Store, table: &str) -> Vec<String> {
    match store.backend() {
        Backend::Postgres(pool) => sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("reading information_schema"),
        Backend::Sqlite(pool) => {
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(pool)
                .await
                .expect("reading pragma_table_info")
        }
        _ => unreachable!("a backend without test support"),
    }
}

/// The index names on `table`.
async fn indexes(store: &Store, table: &str) -> Vec<String> {
    match store.backend() {
        Backend::Postgres(pool) => sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes \
             WHERE schemaname = current_schema() AND tablename = $1",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("reading pg_indexes"),
        Backend::Sqlite(pool) => sqlx::query_scalar("SELECT name FROM pragma_index_list($1)")
            .bind(table)
            .fetch_all(pool)
            .await
            .expect("reading pragma_index_list"),
        _ => unreachable!("a backend without test support"),
    }
}

/// Every value of every column of every table, as text (blobs as hex), one string per row.
async fn dump_database(store: &Store) -> Vec<String> {
    let mut dump = Vec::new();
    match store.backend() {
        Backend::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(pool)
            .await
            .expect("listing tables");
            for table in tables {
                let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT to_jsonb(t)::text FROM \"{table}\" t"
                )))
                .fetch_all(pool)
                .await
                .expect("dumping a table");
                dump.extend(rows.into_iter().map(|row| format!("{table}: {row}")));
            }
        }
        Backend::Sqlite(pool) => {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(pool)
                    .await
                    .expect("listing tables");
            for table in tables {
                let cols: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                        .bind(&table)
                        .fetch_all(pool)
                        .await
                        .expect("listing columns");
                if cols.is_empty() {
                    continue;
                }
                // quote() renders any value as SQL text: strings verbatim, blobs as X'..'.
                let select = cols
                    .iter()
                    .map(|c| format!("quote(\"{c}\")"))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                let rows: Vec<String> =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT {select} FROM \"{table}\"")))
                        .fetch_all(pool)
                        .await
                        .expect("dumping a table");
                dump.extend(rows.into_iter().map(|row| format!("{table}: {row}")));
            }
        }
        _ => unreachable!("a backend without test support"),
    }
    dump
}

/// The SQLite database file (and its WAL) on disk, if the store is SQLite.
fn sqlite_files(store: &Store) -> Vec<PathBuf> {
    match store.backend() {
        Backend::Sqlite(pool) => {
            let db = pool.connect_options().get_filename().to_owned();
            let wal = PathBuf::from(format!("{}-wal", db.display()));
            vec![db, wal]
        }
        _ => Vec::new(),
    }
}

/// A fixed instant with sub-microsecond digits, to see the store's microsecond truncation.
fn instant(days_ago: i64) -> DateTime<Utc> {
    let base = Utc
        .with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("a valid date")
        + TimeDelta::nanoseconds(123_456_789);
    base - TimeDelta::days(days_ago)
}

fn start_record(id: Uuid, started_at: DateTime<Utc>, client_ip: Option<&str>) -> SessionStart {
    SessionStart {
        id,
        api_key_id: Some(Uuid::now_v7()),
        endpoint: "/v1/telephony/twilio".to_owned(),
        transport: Transport::Telephony,
        route: Some("support-line".to_owned()),
        provider: "deepgram".to_owned(),
        client_ip: client_ip.map(|ip| ip.parse::<IpAddr>().expect("a test IP")),
        started_at,
    }
}

fn end_record(id: Uuid, started_at: DateTime<Utc>) -> SessionEnd {
    SessionEnd {
        id,
        ended_at: started_at + TimeDelta::milliseconds(61_250),
        duration_ms: 61_250,
        close_reason: SessionCloseReason::ProviderError,
        provider: "openai".to_owned(),
        providers_tried: vec!["deepgram".to_owned(), "openai".to_owned()],
        audio_in_ms: 58_000,
        audio_out_ms: 31_020,
        failovers: 1,
        first_response_ms: Some(412),
        usage: vec![
            segment("deepgram", 20_000, 0),
            segment("openai", 38_000, 31_020),
        ],
    }
}

fn segment(provider: &str, audio_in_ms: i64, audio_out_ms: i64) -> ProviderUsage {
    ProviderUsage {
        provider: provider.to_owned(),
        audio_in_ms,
        audio_out_ms,
    }
}

/// Every `session_usage` row as (session, provider, in, out), by session then provider.
async fn usage_rows(store: &Store) -> Vec<(Uuid, String, i64, i64)> {
    const SQL: &str = "SELECT session_id, provider, audio_in_ms, audio_out_ms \
         FROM session_usage ORDER BY session_id, provider";
    match store.backend() {
        Backend::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Backend::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        _ => unreachable!("a backend without test support"),
    }
    .expect("reading session_usage")
}

/// Proves the migrations, run on a fresh database at open, create `sessions` and `api_keys`
/// with exactly the contract's columns, in its order, plus the listing and prefix indexes;
/// that running them again is a no-op; and that `ping` answers.
async fn migrations_create_the_contract_schema(store: Store) {
    assert_eq!(columns(&store, "sessions").await, SESSION_COLUMNS);
    assert_eq!(columns(&store, "api_keys").await, API_KEY_COLUMNS);
    assert!(
        indexes(&store, "sessions")
            .await
            .contains(&"sessions_started_at_idx".to_owned())
    );
    assert!(
        indexes(&store, "api_keys")
            .await
            .contains(&"api_keys_prefix_idx".to_owned())
    );

    // Opening again (every `voxroute` command does) finds nothing to migrate.
    let again = match store.backend() {
        Backend::Postgres(pool) => Store::from_postgres(pool.clone()).await,
        Backend::Sqlite(pool) => Store::from_sqlite(pool.clone()).await,
        _ => unreachable!("a backend without test support"),
    };
    again.expect("migrations are idempotent");
    store.ping().await.expect("the store answers");
    assert!(store.list_sessions(10).await.unwrap().is_empty());
    assert!(store.list_keys().await.unwrap().is_empty());
}

/// Proves a created key authenticates and returns its stored record; that malformed,
/// unknown (including a same-prefix forgery) and revoked keys are refused with the right
/// error; that revoking is reported once; and that bad creation input is refused.
async fn keys_authenticate_only_when_valid(store: Store) {
    let (key, plaintext) = store.create_key("  billing bot ", Some(3)).await.unwrap();
    assert_eq!(keys::check_format(&plaintext), Ok(()));
    assert_eq!(key.name, "billing bot");
    assert_eq!(key.max_sessions, Some(3));
    assert_eq!(key.prefix, plaintext[..keys::PREFIX_LEN]);
    assert_eq!(key.revoked_at, None);
    assert_eq!(store.authenticate(&plaintext).await.unwrap(), key);

    let (other, other_plaintext) = store.create_key("unlimited", None).await.unwrap();
    assert_eq!(other.max_sessions, None);
    assert_eq!(store.authenticate(&other_plaintext).await.unwrap(), other);

    for garbage in [
        "",
        "Bearer",
        "vxr_",
        "vxr_tooshort",
        &format!("{plaintext}x"),
        &format!("{}!", &plaintext[..plaintext.len() - 1]),
        &plaintext.replace("vxr_", "VXR_"),
    ] {
        assert!(
            matches!(
                store.authenticate(garbage).await,
                Err(AuthError::Malformed(_))
            ),
            "{garbage:?} must be malformed"
        );
    }

    let never_stored = keys::generate().unwrap().plaintext;
    assert!(matches!(
        store.authenticate(&never_stored).await,
        Err(AuthError::Unknown)
    ));
    // Same prefix, different secret: the prefix alone must not authenticate.
    let last = if plaintext.ends_with('A') { "B" } else { "A" };
    let forged = format!("{}{last}", &plaintext[..plaintext.len() - 1]);
    assert!(matches!(
        store.authenticate(&forged).await,
        Err(AuthError::Unknown)
    ));

    assert!(store.revoke_key(key.id).await.unwrap());
    assert!(matches!(
        store.authenticate(&plaintext).await,
        Err(AuthError::Revoked)
    ));
    assert!(!store.revoke_key(key.id).await.unwrap(), "already revoked");
    assert!(!store.revoke_key(Uuid::now_v7()).await.unwrap(), "unknown");
    // The other key is unaffected.
    assert_eq!(store.authenticate(&other_plaintext).await.unwrap(), other);

    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, key.id);
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(listed[1], other);
    assert_eq!(
        store.get_key(key.id).await.unwrap(),
        Some(listed[0].clone())
    );

    for (name, max) in [("ok", Some(0)), ("", None), ("   ", None), ("a\nb", None)] {
        assert!(
            matches!(
                store.create_key(name, max).await,
                Err(QueryError::InvalidInput(_))
            ),
            "{name:?} / {max:?} must be refused"
        );
    }
    assert!(matches!(
        store.create_key("big", Some(u32::MAX)).await,
        Err(QueryError::InvalidInput(_))
    ));
    assert_eq!(store.list_keys().await.unwrap().len(), 2);
}

/// Proves that the plaintext key is stored nowhere: a dump of every column of every table (and,
/// on SQLite, the raw database and WAL files) holds neither the key nor its secret part, while
/// the stored prefix and hash are the key's first 12 characters and its SHA-256.
async fn keys_are_stored_as_prefix_and_hash_only(store: Store) {
    let (key, plaintext) = store.create_key("dump check", None).await.unwrap();
    let secret = &plaintext[keys::PREFIX_LEN..];
    let secret_hex: String = secret.bytes().map(|b| format!("{b:02X}")).collect();

    let dump = dump_database(&store).await;
    let api_key_rows: Vec<&String> = dump.iter().filter(|r| r.starts_with("api_keys:")).collect();
    assert_eq!(api_key_rows.len(), 1, "{dump:?}");
    let row = api_key_rows[0];
    assert!(
        row.contains(&keys::hash_key(&plaintext)),
        "hash stored: {row}"
    );
    assert!(row.contains(&key.prefix), "prefix stored: {row}");
    for line in &dump {
        assert!(
            !line.contains(secret),
            "the key's secret is in the database: {line}"
        );
        assert!(!line.to_uppercase().contains(&secret_hex), "as hex: {line}");
    }

    for file in sqlite_files(&store) {
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the key's secret is in {}",
                file.display()
            );
        }
    }
}

/// Proves `record_start` then `record_end` store every field, and `list_sessions` returns them
/// as written (timestamps at microsecond precision, `providers_tried` in order, the close
/// reason's contract string), newest first, honouring the limit; and that a start alone is
/// listed with the end fields empty and `providers_tried` holding the first provider.
async fn session_records_round_trip_every_field(store: Store) {
    let older_id = Uuid::now_v7();
    let older_start = start_record(older_id, instant(2), Some("2001:db8:abcd:12::1"));
    store.record_start(&older_start).await.unwrap();

    let listed = store.list_sessions(10).await.unwrap();
    assert_eq!(
        listed,
        vec![SessionRow {
            id: older_id,
            api_key_id: older_start.api_key_id,
            endpoint: "/v1/telephony/twilio".to_owned(),
            transport: "telephony".to_owned(),
            route: Some("support-line".to_owned()),
            provider: "deepgram".to_owned(),
            providers_tried: vec!["deepgram".to_owned()],
            client_ip: Some("2001:db8:abcd:12::1".to_owned()),
            started_at: instant(2).trunc_subsecs(6),
            ended_at: None,
            duration_ms: None,
            close_reason: None,
            audio_in_ms: 0,
            audio_out_ms: 0,
            failovers: 0,
            first_response_ms: None,
        }]
    );

    let end = end_record(older_id, instant(2));
    store.record_end(&end).await.unwrap();

    // A keyless, routeless, IP-less WebRTC session, started later.
    let newer_id = Uuid::now_v7();
    let newer_start = SessionStart {
        id: newer_id,
        api_key_id: None,
        endpoint: "/v1/webrtc".to_owned(),
        transport: Transport::WebRtc,
        route: None,
        provider: "echo".to_owned(),
        client_ip: None,
        started_at: instant(1),
    };
    store.record_start(&newer_start).await.unwrap();
    let newer_end = SessionEnd {
        id: newer_id,
        ended_at: instant(1) + TimeDelta::seconds(5),
        duration_ms: 5_000,
        close_reason: SessionCloseReason::ClientHangup,
        provider: "echo".to_owned(),
        providers_tried: vec!["echo".to_owned()],
        audio_in_ms: 4_980,
        audio_out_ms: 4_960,
        failovers: 0,
        first_response_ms: None,
        usage: vec![segment("echo", 4_980, 4_960)],
    };
    store.record_end(&newer_end).await.unwrap();

    let listed = store.list_sessions(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, newer_id, "newest first");
    assert_eq!(
        listed[1],
        SessionRow {
            id: older_id,
            api_key_id: older_start.api_key_id,
            endpoint: "/v1/telephony/twilio".to_owned(),
            transport: "telephony".to_owned(),
            route: Some("support-line".to_owned()),
            provider: "openai".to_owned(),
            providers_tried: vec!["deepgram".to_owned(), "openai".to_owned()],
            client_ip: Some("2001:db8:abcd:12::1".to_owned()),
            started_at: instant(2).trunc_subsecs(6),
            ended_at: Some(end.ended_at.trunc_subsecs(6)),
            duration_ms: Some(61_250),
            close_reason: Some("PROVIDER_ERROR".to_owned()),
            audio_in_ms: 58_000,
            audio_out_ms: 31_020,
            failovers: 1,
            first_response_ms: Some(412),
        }
    );
    let newer = &listed[0];
    assert_eq!(newer.api_key_id, None);
    assert_eq!(newer.transport, "webrtc");
    assert_eq!(newer.route, None);
    assert_eq!(newer.client_ip, None);
    assert_eq!(newer.close_reason.as_deref(), Some("CLIENT_HANGUP"));
    assert_eq!(newer.first_response_ms, None);
    assert_eq!(newer.ended_at, Some(newer_end.ended_at.trunc_subsecs(6)));

    let limited = store.list_sessions(1).await.unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].id, newer_id);
    assert_eq!(
        store.get_session(older_id).await.unwrap().as_ref(),
        Some(&listed[1])
    );
    assert_eq!(store.get_session(Uuid::now_v7()).await.unwrap(), None);
}

/// Proves both writes are idempotent, as the supervisor's retries need: a repeated start is
/// ignored (the first one's values stay), a repeated end leaves the same values, and there is
/// still one row.
async fn session_writes_are_idempotent(store: Store) {
    let id = Uuid::now_v7();
    let start = start_record(id, instant(3), Some("192.0.2.1"));
    store.record_start(&start).await.unwrap();
    let mut repeated = start.clone();
    repeated.endpoint = "/v1/ws".to_owned();
    store.record_start(&repeated).await.unwrap();
    store.record_start(&start).await.unwrap();

    let end = end_record(id, instant(3));
    store.record_end(&end).await.unwrap();
    let after_first_end = store.list_sessions(10).await.unwrap();
    store.record_end(&end).await.unwrap();
    let after_second_end = store.list_sessions(10).await.unwrap();

    assert_eq!(after_first_end, after_second_end);
    assert_eq!(after_second_end.len(), 1);
    assert_eq!(after_second_end[0].endpoint, "/v1/telephony/twilio");
    assert_eq!(
        after_second_end[0].close_reason.as_deref(),
        Some("PROVIDER_ERROR")
    );
}

/// Proves an end for a session with no record is `Rejected` (not retryable) and writes
/// nothing.
async fn session_end_without_start_is_rejected(store: Store) {
    let result = store
        .record_end(&end_record(Uuid::now_v7(), instant(0)))
        .await;
    match result {
        Err(error @ StoreError::Rejected(_)) => assert!(!error.is_retryable()),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(store.list_sessions(10).await.unwrap().is_empty());
}

/// Proves that when the store cannot be reached (here: its pool is closed) writes fail with
/// the retryable `Unavailable`, and `ping` fails, rather than hanging or `Rejected`.
async fn closed_store_is_unavailable_and_retryable(store: Store) {
    store.close().await;
    let result = store
        .record_start(&start_record(Uuid::now_v7(), instant(0), None))
        .await;
    match result {
        Err(error @ StoreError::Unavailable(_)) => assert!(error.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        store.ping().await,
        Err(QueryError::Unavailable(_))
    ));
}

/// Proves retention deletes exactly the sessions that started before now − delete window,
/// anonymises the client IP (IPv4 → /24, IPv6 → /48, IPv4-mapped → IPv4 /24) of exactly the
/// remaining sessions that started before now − anonymise window (a session at the cutoff
/// itself is kept as is), leaves newer rows and NULL IPs alone, and is idempotent.
async fn retention_deletes_and_anonymises_the_right_rows(store: Store) {
    let now = instant(0);
    let policy = RetentionConfig {
        delete_after_days: 30,
        anonymise_ip_after_days: 7,
    };
    let cases: [(&str, DateTime<Utc>, Option<&str>); 9] = [
        (
            "deleted v4",
            now - TimeDelta::days(40),
            Some("203.0.113.77"),
        ),
        (
            "deleted just",
            now - TimeDelta::days(30) - TimeDelta::microseconds(1),
            None,
        ),
        (
            "kept at delete cutoff",
            now - TimeDelta::days(30),
            Some("198.51.100.200"),
        ),
        ("old v4", now - TimeDelta::days(10), Some("203.0.113.77")),
        (
            "old v6",
            now - TimeDelta::days(10),
            Some("2001:db8:abcd:12:3456::1"),
        ),
        (
            "old mapped",
            now - TimeDelta::days(8),
            Some("::ffff:192.0.2.33"),
        ),
        ("old no ip", now - TimeDelta::days(8), None),
        (
            "at anonymise cutoff",
            now - TimeDelta::days(7),
            Some("192.0.2.99"),
        ),
        (
            "recent v6",
            now - TimeDelta::days(1),
            Some("2001:db8:ffff:1::2"),
        ),
    ];
    let mut ids = Vec::new();
    for (_, started_at, ip) in &cases {
        let id = Uuid::now_v7();
        store
            .record_start(&start_record(id, *started_at, *ip))
            .await
            .unwrap();
        ids.push(id);
    }

    let report = store.run_retention(now, &policy).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            deleted: 2,
            anonymised: 4
        }
    );

    let expected: [Option<Option<&str>>; 9] = [
        None,
        None,
        Some(Some("198.51.100.0")),
        Some(Some("203.0.113.0")),
        Some(Some("2001:db8:abcd::")),
        Some(Some("192.0.2.0")),
        Some(None),
        Some(Some("192.0.2.99")),
        Some(Some("2001:db8:ffff:1::2")),
    ];
    for ((id, (label, _, _)), want) in ids.iter().zip(&cases).zip(expected) {
        let row = store.get_session(*id).await.unwrap();
        assert_eq!(
            row.map(|r| r.client_ip),
            want.map(|ip| ip.map(str::to_owned)),
            "{label}"
        );
    }

    let before = store.list_sessions(100).await.unwrap();
    let again = store.run_retention(now, &policy).await.unwrap();
    assert_eq!(
        again,
        RetentionReport::default(),
        "a second run does nothing"
    );
    assert_eq!(store.list_sessions(100).await.unwrap(), before);
}

/// Proves an unreachable PostgreSQL server gives a prompt `Connect` error naming the target,
/// never the password, and an unknown scheme a clear `UnsupportedScheme`.
#[tokio::test]
async fn open_errors_are_clear_and_keep_secrets() {
    let error = Store::open("postgres://voxroute:hunter2secret@127.0.0.1:1/voxroute")
        .await
        .expect_err("nothing listens on port 1");
    let message = error.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2secret"), "{message}");

    let error = Store::open("mysql://root:hunter2secret@localhost/db")
        .await
        .expect_err("MySQL is not supported");
    let message = error.to_string();
    assert!(message.contains("\"mysql\""), "{message}");
    assert!(!message.contains("hunter2secret"), "{message}");
}

/// Proves `sqlite://PATH` creates a missing file, puts it in WAL mode, and that a reopened
/// file keeps its data.
#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_persists() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let store = Store::open(&url).await.unwrap();
    assert!(dir.path().join("voxroute.db").exists());
    let Backend::Sqlite(pool) = store.backend() else {
        panic!("a sqlite:// URL opens SQLite");
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (key, _) = store.create_key("persisted", None).await.unwrap();
    store.close().await;

    let reopened = Store::open(&url).await.unwrap();
    assert_eq!(reopened.list_keys().await.unwrap(), vec![key]);
    reopened.close().await;
}

/// Proves usage is written with a session's end, one row per provider (a provider tried twice
/// in one session has the sum of its segments), with the migration's columns; that a replayed
/// end sets the same values rather than adding (and an end without usage, like the
/// supervisor's placeholder for a vanished session, keeps them); and that `key_usage` sums a
/// key's sessions per UTC day and provider, counts distinct sessions, leaves out other keys,
/// keyless sessions and sessions outside the range.
async fn session_usage_is_set_per_provider_and_read_per_key_and_day(store: Store) {
    assert_eq!(
        columns(&store, "session_usage").await,
        ["session_id", "provider", "audio_in_ms", "audio_out_ms"]
    );
    let key = Uuid::now_v7();
    let day = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    let record = async |started_at: DateTime<Utc>, api_key_id: Option<Uuid>, usage| {
        let id = Uuid::now_v7();
        let mut start = start_record(id, started_at, None);
        start.api_key_id = api_key_id;
        store.record_start(&start).await.unwrap();
        let mut end = end_record(id, started_at);
        end.usage = usage;
        store.record_end(&end).await.unwrap();
        (id, end)
    };

    // A session that went deepgram → openai → deepgram (each provider once in the table).
    let (failed_over, end) = record(
        day + TimeDelta::hours(9),
        Some(key),
        vec![
            segment("deepgram", 20_000, 0),
            segment("openai", 30_000, 31_020),
            segment("deepgram", 8_000, 0),
        ],
    )
    .await;
    let rows = vec![
        (failed_over, "deepgram".to_owned(), 28_000, 0),
        (failed_over, "openai".to_owned(), 30_000, 31_020),
    ];
    assert_eq!(usage_rows(&store).await, rows);
    store.record_end(&end).await.unwrap();
    assert_eq!(
        usage_rows(&store).await,
        rows,
        "a replayed end is not added"
    );
    let mut placeholder = end.clone();
    placeholder.usage.clear();
    store.record_end(&placeholder).await.unwrap();
    assert_eq!(
        usage_rows(&store).await,
        rows,
        "an end without usage keeps it"
    );

    // Same day, last second; the next day; another key; no key; the day before the range.
    record(
        day + TimeDelta::hours(24) - TimeDelta::seconds(1),
        Some(key),
        vec![segment("openai", 1_000, 500)],
    )
    .await;
    record(
        day + TimeDelta::hours(30),
        Some(key),
        vec![segment("echo", 3_000, 2_980)],
    )
    .await;
    record(
        day + TimeDelta::hours(10),
        Some(Uuid::now_v7()),
        vec![segment("openai", 99_000, 99_000)],
    )
    .await;
    record(
        day + TimeDelta::hours(11),
        None,
        vec![segment("openai", 77_000, 77_000)],
    )
    .await;
    record(
        day - TimeDelta::seconds(1),
        Some(key),
        vec![segment("openai", 55_000, 55_000)],
    )
    .await;

    let usage = store
        .key_usage(key, day, day + TimeDelta::days(2))
        .await
        .unwrap();
    let lines: Vec<(String, &str, u64, i64, i64)> = usage
        .days
        .iter()
        .map(|d| {
            (
                d.day.to_string(),
                d.provider.as_str(),
                d.sessions,
                d.audio_in_ms,
                d.audio_out_ms,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("2026-11-20".to_owned(), "deepgram", 1, 28_000, 0),
            ("2026-11-20".to_owned(), "openai", 2, 31_000, 31_520),
            ("2026-11-21".to_owned(), "echo", 1, 3_000, 2_980),
        ]
    );
    assert_eq!(usage.sessions, 3, "the failed-over session counts once");
    let nobody = store
        .key_usage(Uuid::now_v7(), day, day + TimeDelta::days(2))
        .await
        .unwrap();
    assert!(nobody.days.is_empty() && nobody.sessions == 0);
}

/// Proves a session's usage rows are deleted with it: by retention (old sessions' rows go,
/// recent ones' stay) and by a key's GDPR erasure (all of that key's rows go, no other key's).
async fn session_usage_goes_with_its_session(store: Store) {
    let now = instant(0);
    let erased_key = Uuid::now_v7();
    let kept_key = Uuid::now_v7();
    let mut ids = Vec::new();
    for (days_ago, key) in [
        (40, kept_key),
        (2, kept_key),
        (40, erased_key),
        (1, erased_key),
    ] {
        let id = Uuid::now_v7();
        let mut start = start_record(id, now - TimeDelta::days(days_ago), None);
        start.api_key_id = Some(key);
        store.record_start(&start).await.unwrap();
        store
            .record_end(&end_record(id, now - TimeDelta::days(days_ago)))
            .await
            .unwrap();
        ids.push(id);
    }
    assert_eq!(usage_rows(&store).await.len(), 8);

    let policy = RetentionConfig {
        delete_after_days: 30,
        anonymise_ip_after_days: 30,
    };
    let report = store.run_retention(now, &policy).await.unwrap();
    assert_eq!(report.deleted, 2);
    let left: Vec<Uuid> = usage_rows(&store).await.iter().map(|r| r.0).collect();
    let mut expected = vec![ids[1], ids[1], ids[3], ids[3]];
    expected.sort();
    assert_eq!(left, expected, "the deleted sessions' usage went with them");

    let (sessions, keys) = store.erase_key(erased_key).await.unwrap();
    assert_eq!((sessions, keys), (1, 0));
    let left: Vec<Uuid> = usage_rows(&store).await.iter().map(|r| r.0).collect();
    assert_eq!(left, [ids[1], ids[1]], "the erased key's usage is gone");
}
