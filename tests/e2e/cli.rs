//! The `voxroute` commands other than `serve`, run as the built binary against a temporary
//! SQLite file, as an operator would run them.
//!
//! What they prove: `keys create` prints a working key alone on the last line of stdout;
//! `keys list` shows keys but never a key or hash; `keys revoke` revokes; `sessions list`
//! prints newest-first records as a table or as JSON named by the contract's columns;
//! `retention run` applies the configured policy and says what it did; and bad input (unknown
//! or malformed ids, `--max-sessions 0`, unreachable or unsupported databases, a broken config
//! file) fails with a clear message on stderr and a non-zero exit, never a panic.

use std::path::Path;
use std::process::Command;

use chrono::{TimeDelta, Utc};
use uuid::Uuid;
use voxroute::keys;
use voxroute::store::{AuthError, Store};
use voxroute_actors::record::{SessionStart, Transport};
use voxroute_actors::store::SessionStore;

use crate::store::TempDir;

/// What a run of the binary printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts a zero exit, showing stderr if not.
    fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        self
    }

    /// Asserts a failure with `code` and a stderr that mentions `needle` and holds no panic.
    fn failure(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {} stderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

/// Runs `voxroute ARGS`, with the environment's `DATABASE_URL` and `VOXROUTE_CONFIG` removed so
/// that only the flags count.
fn voxroute(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_voxroute"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("VOXROUTE_CONFIG")
        .output()
        .expect("the voxroute binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Creates a key through the CLI and returns (id, plaintext).
fn create_key(url: &str, name: &str) -> (Uuid, String) {
    let run = voxroute(&["keys", "create", "--name", name, "--database-url", url]).success();
    let key = run.last_line().to_owned();
    let id_line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("an id line");
    (id_line.trim().parse().expect("a UUID"), key)
}

/// Proves `keys create` creates the database file on first use, prints id, name and prefix,
/// then the key ALONE on the last line, and that this key authenticates against the store
/// with the requested name and limit.
#[tokio::test]
async fn keys_create_prints_a_working_key_last() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let run = voxroute(&[
        "keys",
        "create",
        "--name",
        "phone bot",
        "--max-sessions",
        "2",
        "--database-url",
        &url,
    ])
    .success();
    assert!(dir.path().join("voxroute.db").exists());

    let key = run.last_line();
    assert_eq!(keys::check_format(key), Ok(()), "last line: {key:?}");
    assert_eq!(
        run.stdout.matches(key).count(),
        1,
        "the key is printed once"
    );
    assert!(run.stdout.contains("phone bot"));
    assert!(run.stdout.contains(&key[..keys::PREFIX_LEN]));

    let store = Store::open(&url).await.unwrap();
    let stored = store
        .authenticate(key)
        .await
        .expect("the printed key works");
    assert_eq!(stored.name, "phone bot");
    assert_eq!(stored.max_sessions, Some(2));
    assert!(run.stdout.contains(&stored.id.to_string()));
    store.close().await;
}

/// Proves `keys list` shows each key's id, name, prefix and limit, but never the key or its
/// hash; and that an empty list says how to create one.
#[tokio::test]
async fn keys_list_never_shows_key_or_hash() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let empty = voxroute(&["keys", "list", "--database-url", &url]).success();
    assert!(empty.stdout.contains("keys create"), "{}", empty.stdout);

    let (id, key) = create_key(&url, "listed");
    let run = voxroute(&["keys", "list", "--database-url", &url]).success();
    assert!(run.stdout.contains("PREFIX"), "{}", run.stdout);
    assert!(run.stdout.contains(&id.to_string()));
    assert!(run.stdout.contains("listed"));
    assert!(run.stdout.contains(&key[..keys::PREFIX_LEN]));
    assert!(run.stdout.contains("unlimited"));
    assert!(!run.stdout.contains(&key), "the key must not be listed");
    assert!(!run.stdout.contains(&keys::hash_key(&key)), "nor its hash");
}

/// Proves `keys revoke ID` revokes (the key stops authenticating, the list shows when), and a
/// second revoke succeeds and says the key was already revoked.
#[tokio::test]
async fn keys_revoke_stops_the_key() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let (id, key) = create_key(&url, "to revoke");
    let id_text = id.to_string();

    let run = voxroute(&["keys", "revoke", &id_text, "--database-url", &url]).success();
    assert!(run.stdout.contains("revoked"), "{}", run.stdout);
    let store = Store::open(&url).await.unwrap();
    assert!(matches!(
        store.authenticate(&key).await,
        Err(AuthError::Revoked)
    ));
    store.close().await;

    let again = voxroute(&["keys", "revoke", &id_text, "--database-url", &url]).success();
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);

    let list = voxroute(&["keys", "list", "--database-url", &url]).success();
    let row = list
        .stdout
        .lines()
        .find(|l| l.contains(&id_text))
        .expect("the key is listed");
    assert_eq!(
        row.matches(&*Utc::now().format("%Y-%m-%d").to_string())
            .count(),
        2,
        "{row}"
    );
}

/// Proves `sessions list --json` prints `[]` for an empty database, and for a non-empty one an
/// array of objects with exactly the `sessions` columns, newest first, honouring `--limit`;
/// and that the table form lists the same sessions.
#[tokio::test]
async fn sessions_list_json_and_table() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let empty = voxroute(&["sessions", "list", "--json", "--database-url", &url]).success();
    let parsed: serde_json::Value = serde_json::from_str(&empty.stdout).expect("JSON");
    assert_eq!(parsed, serde_json::json!([]));

    let store = Store::open(&url).await.unwrap();
    let now = Utc::now();
    let older = Uuid::now_v7();
    let newer = Uuid::now_v7();
    for (id, started_at) in [(older, now - TimeDelta::minutes(5)), (newer, now)] {
        store
            .record_start(&SessionStart {
                id,
                api_key_id: None,
                endpoint: "/v1/ws".to_owned(),
                transport: Transport::WebSocket,
                route: None,
                provider: "echo".to_owned(),
                client_ip: Some("192.0.2.7".parse().unwrap()),
                started_at,
            })
            .await
            .unwrap();
    }
    store.close().await;

    let run = voxroute(&["sessions", "list", "--json", "--database-url", &url]).success();
    let parsed: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&run.stdout).expect("a JSON array of objects");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0]["id"], newer.to_string(), "newest first");
    assert_eq!(parsed[1]["id"], older.to_string());
    let mut keys: Vec<&str> = parsed[0].keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut columns = crate::store::SESSION_COLUMNS.to_vec();
    columns.sort_unstable();
    assert_eq!(keys, columns);
    assert_eq!(parsed[0]["providers_tried"], serde_json::json!(["echo"]));
    assert_eq!(parsed[0]["transport"], "websocket");

    let limited = voxroute(&[
        "sessions",
        "list",
        "--json",
        "--limit",
        "1",
        "--database-url",
        &url,
    ])
    .success();
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&limited.stdout).unwrap();
    assert_eq!(parsed.len(), 1);

    let table = voxroute(&["sessions", "list", "--database-url", &url]).success();
    let newer_line = table.stdout.find(&newer.to_string()).expect("newer listed");
    let older_line = table.stdout.find(&older.to_string()).expect("older listed");
    assert!(newer_line < older_line, "newest first:\n{}", table.stdout);
}

/// Proves `retention run` reads `[retention]` from `--config`, deletes and anonymises the
/// right records, and prints both counts.
#[tokio::test]
async fn retention_run_applies_the_config() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let config = dir.path().join("voxroute.toml");
    std::fs::write(
        &config,
        "[retention]\ndelete_after_days = 30\nanonymise_ip_after_days = 7\n",
    )
    .unwrap();

    let store = Store::open(&url).await.unwrap();
    let now = Utc::now();
    let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    for (id, days) in ids.iter().zip([40, 10, 1]) {
        store
            .record_start(&SessionStart {
                id: *id,
                api_key_id: None,
                endpoint: "/v1/telephony/twilio".to_owned(),
                transport: Transport::Telephony,
                route: None,
                provider: "echo".to_owned(),
                client_ip: Some("203.0.113.77".parse().unwrap()),
                started_at: now - TimeDelta::days(days),
            })
            .await
            .unwrap();
    }

    let run = voxroute(&[
        "retention",
        "run",
        "--database-url",
        &url,
        "--config",
        config.to_str().unwrap(),
    ])
    .success();
    assert!(run.stdout.contains("deleted 1 session"), "{}", run.stdout);
    assert!(
        run.stdout.contains("anonymised 1 client IP"),
        "{}",
        run.stdout
    );

    assert_eq!(store.get_session(ids[0]).await.unwrap(), None);
    let mid = store.get_session(ids[1]).await.unwrap().unwrap();
    assert_eq!(mid.client_ip.as_deref(), Some("203.0.113.0"));
    let recent = store.get_session(ids[2]).await.unwrap().unwrap();
    assert_eq!(recent.client_ip.as_deref(), Some("203.0.113.77"));

    let again = voxroute(&["retention", "run", "--database-url", &url]).success();
    assert!(again.stdout.contains("deleted 0"), "{}", again.stdout);
    store.close().await;
}

/// Proves bad input fails cleanly: unknown and malformed ids, `--max-sessions 0`, an empty
/// name, an unreachable PostgreSQL (its password never echoed), an unsupported scheme, a SQLite
/// path in a missing directory, and a broken config file each give a non-zero exit and a
/// message on stderr that says what is wrong, without a panic.
#[tokio::test]
async fn bad_input_fails_with_a_clear_message() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let unknown = Uuid::now_v7().to_string();
    voxroute(&["keys", "revoke", &unknown, "--database-url", &url])
        .failure(1, &format!("no API key with id {unknown}"));
    voxroute(&["keys", "revoke", "not-a-uuid", "--database-url", &url])
        .failure(2, "invalid value 'not-a-uuid'");
    voxroute(&[
        "keys",
        "create",
        "--name",
        "x",
        "--max-sessions",
        "0",
        "--database-url",
        &url,
    ])
    .failure(2, "--max-sessions");
    voxroute(&["keys", "create", "--name", " ", "--database-url", &url])
        .failure(1, "must not be empty");
    voxroute(&["sessions", "list", "--limit", "0", "--database-url", &url]).failure(2, "--limit");

    let unreachable = voxroute(&[
        "keys",
        "list",
        "--database-url",
        "postgres://voxroute:hunter2secret@127.0.0.1:1/voxroute",
    ])
    .failure(1, "cannot open the database");
    assert!(
        !unreachable.stderr.contains("hunter2secret"),
        "{}",
        unreachable.stderr
    );

    voxroute(&["keys", "list", "--database-url", "mysql://localhost/db"])
        .failure(1, "unsupported database URL scheme");

    voxroute(&["keys", "list", "--database-url", "sqlite://"]).failure(1, "no file path");

    let missing_dir = dir.path().join("no/such/dir/v.db");
    voxroute(&[
        "sessions",
        "list",
        "--database-url",
        &format!("sqlite://{}", missing_dir.display()),
    ])
    .failure(1, "cannot open the database");

    let config = dir.path().join("broken.toml");
    std::fs::write(&config, "[retention]\nkeep_forever = true\n").unwrap();
    voxroute(&[
        "retention",
        "run",
        "--database-url",
        &url,
        "--config",
        config.to_str().unwrap(),
    ])
    .failure(1, "broken.toml");
    let missing = dir.path().join("missing.toml");
    voxroute(&[
        "retention",
        "run",
        "--database-url",
        &url,
        "--config",
        missing.to_str().unwrap(),
    ])
    .failure(1, "missing.toml");
    assert!(!Path::new(&missing).exists());
}
