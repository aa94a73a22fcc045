//! What the end-to-end tests of a running router share: the router as a child process on a
//! fresh database, WebSocket callers that speak Twilio Media Streams and the native protocol,
//! speech fixtures and the DSP checks, and waits that always end.
//!
//! - [`TestDb`]: a fresh database per test. SQLite is a file in a [`TempDir`] (as in
//!   [`crate::store`]); PostgreSQL is the database `#[sqlx::test]` creates for the test (and
//!   drops after it), handed to the router by URL. [`on_both_backends!`](crate::harness) runs
//!   one test body on each.
//! - [`Router`]: `voxroute serve --listen 127.0.0.1:0` built by cargo for this test binary; its
//!   stdout and stderr are captured (the data-promise tests search them), the bound address is
//!   read from its `voxroute listening on http://ADDR` line, and it is killed on drop (or sent
//!   SIGTERM by [`Router::terminate`]).
//! - [`Setup`]: a router, its store opened in the test process too (to create keys and read
//!   records), and the database, dropped in that order.
//! - [`Conn`], [`TwilioCaller`], [`NativeCaller`]: a background task reads every frame into an
//!   [`Inbox`] (audio decoded, events kept, the close frame and its arrival time noted), so a
//!   test sends at its own pace and asserts on what came back.
//! - [`eventually`] and [`within`]: every wait is bounded and fails with what it waited for
//!   (LiveKit's `WithTimeout`); records are written asynchronously by the supervisor, so tests
//!   poll for them ([`Setup::ended`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::SinkExt as _;
use futures_util::stream::{SplitSink, StreamExt as _};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};
use uuid::Uuid;
use voxroute::store::{SessionRow, Store};
use voxroute_codecs::g711::G711Law;
use voxroute_codecs::measure::best_lag;

pub(crate) use crate::store::TempDir;

/// The default bound of a wait for something the router does promptly (a record, an echo).
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How long the router may take to start (migrations included) before the test fails.
const ROUTER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// 20 ms of 8 kHz mu-law: one Twilio `media` payload.
pub(crate) const MULAW_FRAME: usize = 160;

/// Twilio endpoint path.
pub(crate) const TWILIO: &str = "/v1/telephony/twilio";
/// Native endpoint path.
pub(crate) const NATIVE: &str = "/v1/ws";

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `probe` every 20 ms until it returns `Some`, and returns that; fails the test with
/// `what` once `timeout` has passed.
pub(crate) async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `timeout`.
pub(crate) async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

/// A fresh database for one test.
pub(crate) enum TestDb {
    /// A SQLite file in a temporary directory (removed on drop).
    Sqlite(TempDir),
    /// The database `#[sqlx::test]` created for this test.
    Postgres {
        /// A pool on it, for the test's own queries.
        pool: PgPool,
        /// Its URL, for the router.
        url: String,
    },
}

impl TestDb {
    /// A new SQLite database file (created by the first process that opens it).
    pub(crate) fn sqlite() -> TestDb {
        TestDb::Sqlite(TempDir::new())
    }

    /// The test database of `#[sqlx::test]`: `DATABASE_URL` with the database name replaced.
    pub(crate) fn postgres(pool: PgPool) -> TestDb {
        let name = pool
            .connect_options()
            .get_database()
            .expect("#[sqlx::test] names its database")
            .to_owned();
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL names a PostgreSQL server");
        let parts = PgUrl::parse(&base);
        TestDb::Postgres {
            url: parts.with(None, Some(&name)),
            pool,
        }
    }

    /// The URL the router is given.
    pub(crate) fn url(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => dir.sqlite_url(),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }

    /// The URL with the server's host and port replaced by `addr` (PostgreSQL only: to reach
    /// it through a proxy).
    pub(crate) fn url_via(&self, addr: SocketAddr) -> String {
        match self {
            TestDb::Sqlite(_) => panic!("a SQLite file has no server to proxy"),
            TestDb::Postgres { url, .. } => PgUrl::parse(url).with(Some(addr), None),
        }
    }

    /// `HOST:PORT` of the PostgreSQL server (port 5432 if the URL names none).
    pub(crate) fn server(&self) -> String {
        match self {
            TestDb::Sqlite(_) => panic!("a SQLite file has no server"),
            TestDb::Postgres { url, .. } => {
                let parts = PgUrl::parse(url);
                let host_port = &url[parts.host_start..parts.host_end];
                if host_port
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    host_port.to_owned()
                } else {
                    format!("{host_port}:5432")
                }
            }
        }
    }

    /// `sqlite` or `postgres`, for messages.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TestDb::Sqlite(_) => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// The store, opened in the test process (migrations run if the router has not yet).
    pub(crate) async fn store(&self) -> Store {
        match self {
            TestDb::Sqlite(dir) => Store::open(&dir.sqlite_url())
                .await
                .expect("the test opens the SQLite store"),
            TestDb::Postgres { pool, .. } => Store::from_postgres(pool.clone())
                .await
                .expect("the test opens the PostgreSQL store"),
        }
    }
}

/// A `postgres://` URL, cut where a test replaces the server or the database.
struct PgUrl<'a> {
    url: &'a str,
    /// Where the host starts (after the user info's `@`, if any).
    host_start: usize,
    /// Where the host and port end (at the path's `/`, the query's `?`, or the end).
    host_end: usize,
}

impl<'a> PgUrl<'a> {
    fn parse(url: &'a str) -> PgUrl<'a> {
        let after_scheme = url.find("://").expect("a URL with a scheme") + 3;
        let rest = &url[after_scheme..];
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        PgUrl {
            url,
            host_start: after_scheme + authority.rfind('@').map_or(0, |at| at + 1),
            host_end: after_scheme + authority.len(),
        }
    }

    /// The URL with the server replaced by `addr` and/or the database by `database`.
    fn with(&self, addr: Option<SocketAddr>, database: Option<&str>) -> String {
        let prefix = &self.url[..self.host_start];
        let host = addr.map_or_else(
            || self.url[self.host_start..self.host_end].to_owned(),
            |a| a.to_string(),
        );
        let tail = &self.url[self.host_end..];
        match database {
            None => format!("{prefix}{host}{tail}"),
            Some(db) => {
                let query = tail.find('?').map_or("", |q| &tail[q..]);
                format!("{prefix}{host}/{db}{query}")
            }
        }
    }
}

/// Runs the async fn `$name(TestDb)` once per backend, as `$name::postgres` (a fresh database
/// from `#[sqlx::test]`, which needs `DATABASE_URL`: without it the test fails, it is never
/// skipped) and `$name::sqlite` (a new file).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[sqlx::test(migrations = false)]
            async fn postgres(pool: sqlx::PgPool) {
                super::$name($crate::harness::TestDb::postgres(pool)).await;
            }

            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::harness::TestDb::sqlite()).await;
            }
        }
    )*};
}
pub(crate) use on_both_backends;

// ---------------------------------------------------------------------------------------------
// The router process

/// How to start a router.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouterOptions {
    /// TOML configuration (written to a file and passed with `--config`).
    pub(crate) config: Option<String>,
    /// `--dev`: keyless callers on loopback.
    pub(crate) dev: bool,
    /// `RUST_LOG` for the router (default `info`).
    pub(crate) rust_log: Option<&'static str>,
    /// The router's working directory (default: a temporary directory of its own, so that
    /// nothing it writes lands in the repository).
    pub(crate) workdir: Option<std::path::PathBuf>,
    /// Extra environment variables (provider keys, `VOXROUTE_*_URL` pointing at a stand-in).
    /// The hosted providers' variables are otherwise removed, so the host's never leak in.
    pub(crate) env: Vec<(String, String)>,
    /// Extra `serve` arguments (e.g. `--tls-cert FILE`). Unless they set `--drain-grace-secs`,
    /// the router gets `--drain-grace-secs 0`, so a SIGTERM ends live calls at once.
    pub(crate) args: Vec<String>,
}

/// A `voxroute serve` child process; killed (SIGKILL) on drop unless it has exited.
pub(crate) struct Router {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    exited: Option<ExitStatus>,
    _config_dir: TempDir,
}

impl Router {
    /// Starts the router on `database_url` and waits until it listens.
    pub(crate) async fn start(database_url: &str, options: RouterOptions) -> Router {
        let config_dir = TempDir::new();
        let mut command = Command::new(env!("CARGO_BIN_EXE_voxroute"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
            .arg(database_url)
            .env_remove("DATABASE_URL")
            .env_remove("VOXROUTE_CONFIG")
            .env_remove("VOXROUTE_LISTEN")
            .env_remove("VOXROUTE_ADMIN_TOKEN")
            .env_remove("VOXROUTE_SPOOL_FILE")
            .env_remove("VOXROUTE_LOG_FORMAT")
            // No collector of the host's: a test that wants one names it in `env`.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env("RUST_LOG", options.rust_log.unwrap_or("info"))
            .current_dir(options.workdir.as_deref().unwrap_or(config_dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(config) = &options.config {
            let path = config_dir.path().join("voxroute.toml");
            std::fs::write(&path, config).expect("writing the router's config");
            command.arg("--config").arg(path);
        }
        if options.dev {
            command.arg("--dev");
        }
        for kind in voxroute::hosted::Hosted::ALL {
            command
                .env_remove(kind.key_var())
                .env_remove(kind.url_var());
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        command.args(&options.args);
        if !options.args.iter().any(|a| a == "--drain-grace-secs") {
            command.args(["--drain-grace-secs", "0"]);
        }
        let mut child = command.spawn().expect("the voxroute binary starts");

        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let out_pipe = child.stdout.take().expect("stdout is piped");
        let err_pipe = child.stderr.take().expect("stderr is piped");
        let out_buf = Arc::clone(&stdout);
        std::thread::spawn(move || capture(out_pipe, &out_buf, Some(addr_tx)));
        let err_buf = Arc::clone(&stderr);
        std::thread::spawn(move || capture(err_pipe, &err_buf, None));

        let addr = match tokio::time::timeout(ROUTER_START_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr,
            outcome => {
                // Give the stderr reader a moment to catch the reason.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = child.kill();
                let _ = child.wait();
                let why = if outcome.is_err() {
                    "timed out"
                } else {
                    "exited"
                };
                panic!(
                    "the router {why} before listening; stderr:\n{}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
        };
        Router {
            child,
            addr,
            stdout,
            stderr,
            exited: None,
            _config_dir: config_dir,
        }
    }

    /// `ws://ADDR{path}`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `http://host:port{path}` of the router (plain HTTP).
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the router printed so far: (stdout, stderr).
    pub(crate) fn output(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// Its stderr so far, as text (for failure messages).
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The resident set size, from `/proc/PID/status`, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(timeout).await
    }

    /// Sends SIGTERM (a graceful shutdown begins) without waiting.
    pub(crate) fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (up to `timeout`) for the process to exit on its own.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = eventually(timeout, "the router to exit", async || {
            child.try_wait().expect("polling the router process")
        })
        .await;
        self.exited = Some(status);
        status
    }

    /// `GET path` over plain HTTP/1.1: (status, body).
    pub(crate) async fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, &[], "").await
    }

    /// One HTTP/1.1 request (`Connection: close`) with extra `headers` and a `body` (sent with
    /// its length when not empty): (status, body).
    pub(crate) async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self.http_with_head(method, path, headers, body).await;
        (status, body)
    }

    /// As [`http`](Self::http), also returning the response head (status line and headers).
    pub(crate) async fn http_with_head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        within(WAIT, "an HTTP answer from the router", async {
            let mut stream = TcpStream::connect(self.addr).await.expect("connecting");
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
                self.addr
            );
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            if !body.is_empty() {
                request.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            request.push_str("\r\n");
            request.push_str(body);
            stream.write_all(request.as_bytes()).await.expect("sending");
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.expect("reading");
            let text = String::from_utf8_lossy(&response).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("an HTTP status line");
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            (status, head.to_owned(), body.to_owned())
        })
        .await
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies `pipe` into `buf` until EOF; on stdout, sends the address of the first
/// `voxroute listening on http[s]://ADDR` line.
fn capture(
    mut pipe: impl std::io::Read,
    buf: &Mutex<Vec<u8>>,
    mut addr_tx: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) {
    const LISTENING: &str = "voxroute listening on ";
    let mut chunk = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut all = buf.lock().unwrap();
        all.extend_from_slice(&chunk[..n]);
        if addr_tx.is_some() {
            let text = String::from_utf8_lossy(&all);
            if let Some(addr) = text
                .lines()
                .filter(|_| text.contains('\n'))
                .find_map(|line| line.strip_prefix(LISTENING))
                .and_then(|url| url.split_once("://"))
                .and_then(|(_, addr)| addr.trim().parse::<SocketAddr>().ok())
            {
                let _ = addr_tx.take().expect("checked").send(addr);
            }
        }
    }
}

/// The record of session `id` in `store` once it has ended (polled: records are written
/// asynchronously, by whichever router held the session).
pub(crate) async fn ended_record(store: &Store, id: Uuid) -> SessionRow {
    eventually(
        WAIT,
        &format!("the end record of session {id}"),
        async || {
            store
                .get_session(id)
                .await
                .ok()
                .flatten()
                .filter(|row| row.close_reason.is_some())
        },
    )
    .await
}

/// A stand-in provider server (all four hosted protocols, `voxroute-standin`) on its own
/// loopback port in this process, and its counters.
pub(crate) async fn standin_with(
    knobs: voxroute_loadtest::standin::Knobs,
) -> (SocketAddr, voxroute_loadtest::standin::Stats) {
    let stats = voxroute_loadtest::standin::Stats::new();
    let (addr, _task) = voxroute_loadtest::standin::spawn_with_stats(knobs, stats.clone())
        .await
        .expect("the stand-in binds");
    (addr, stats)
}

// ---------------------------------------------------------------------------------------------
// Setup: router + store + database

/// A router on a fresh database, with the store opened in the test process too. Fields drop
/// in order: the router is killed before the database goes.
pub(crate) struct Setup {
    pub(crate) router: Router,
    pub(crate) store: Store,
    pub(crate) db: TestDb,
}

impl Setup {
    /// Starts a router on `db` with `options`.
    pub(crate) async fn new(db: TestDb, options: RouterOptions) -> Setup {
        let router = Router::start(&db.url(), options).await;
        let store = db.store().await;
        Setup { router, store, db }
    }

    /// Starts a router that reaches `db` at `router_url` (the same database by another way,
    /// e.g. through a proxy), while the test's store connects directly.
    pub(crate) async fn new_via(db: TestDb, router_url: &str, options: RouterOptions) -> Setup {
        let router = Router::start(router_url, options).await;
        let store = db.store().await;
        Setup { router, store, db }
    }

    /// A router on a new SQLite file with default options.
    pub(crate) async fn sqlite() -> Setup {
        Setup::new(TestDb::sqlite(), RouterOptions::default()).await
    }

    /// A new API key: (id, plaintext).
    pub(crate) async fn key(&self, name: &str, max_sessions: Option<u32>) -> (Uuid, String) {
        let (key, plaintext) = self
            .store
            .create_key(name, max_sessions)
            .await
            .expect("creating a key");
        (key.id, plaintext)
    }

    /// A Twilio caller that has sent `connected` and a `start` carrying `api_key`.
    pub(crate) async fn twilio(&self, api_key: &str) -> TwilioCaller {
        let mut caller = TwilioCaller::connect(&self.router.ws_url(TWILIO), None)
            .await
            .expect("the Twilio upgrade succeeds");
        caller.start(&[("api_key", api_key)]).await;
        caller
    }

    /// A native caller whose session has started (pcm16 at 8 kHz, key in `start`).
    pub(crate) async fn native(&self, api_key: &str) -> NativeCaller {
        let mut caller = NativeCaller::connect(&self.router.ws_url(NATIVE), None)
            .await
            .expect("the native upgrade succeeds");
        caller
            .start(json!({"codec": "pcm16", "sample_rate": 8000, "api_key": api_key}))
            .await;
        caller.wait_started().await;
        caller
    }

    /// The record of session `id` once it has ended (polled: records are written
    /// asynchronously).
    pub(crate) async fn ended(&self, id: Uuid) -> SessionRow {
        ended_record(&self.store, id).await
    }

    /// The ended records of key `key_id`, once there are `count` (fails if there are more);
    /// oldest first.
    pub(crate) async fn ended_for_key(&self, key_id: Uuid, count: usize) -> Vec<SessionRow> {
        self.ended_for_key_within(key_id, count, WAIT).await
    }

    /// [`ended_for_key`](Self::ended_for_key) with another bound.
    pub(crate) async fn ended_for_key_within(
        &self,
        key_id: Uuid,
        count: usize,
        timeout: Duration,
    ) -> Vec<SessionRow> {
        let store = &self.store;
        let what = format!("{count} ended record(s) of key {key_id}");
        let mut rows = eventually(timeout, &what, async || {
            let rows: Vec<SessionRow> = store
                .list_sessions(10_000)
                .await
                .ok()?
                .into_iter()
                .filter(|row| row.api_key_id == Some(key_id) && row.close_reason.is_some())
                .collect();
            (rows.len() >= count).then_some(rows)
        })
        .await;
        assert_eq!(
            rows.len(),
            count,
            "ended records of key {key_id}: {rows:#?}"
        );
        rows.reverse();
        rows
    }

    /// Every record in the store.
    pub(crate) async fn all_sessions(&self) -> Vec<SessionRow> {
        self.store
            .list_sessions(100_000)
            .await
            .expect("listing sessions")
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket callers

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the server closed the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closed {
    /// The close code (1005 when the frame had none).
    pub(crate) code: u16,
    /// The close reason (for voxroute: the session's close reason).
    pub(crate) reason: String,
    /// When the close frame arrived.
    pub(crate) at: Instant,
}

/// Everything a caller received, filled by its reader task.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Audio: Twilio `media` payloads (mu-law) or native binary frames, concatenated.
    pub(crate) audio: Vec<u8>,
    /// Audio messages received.
    pub(crate) audio_messages: usize,
    /// The distinct sizes of the audio messages received, in bytes.
    pub(crate) audio_sizes: std::collections::BTreeSet<usize>,
    /// Every other text frame, parsed (a frame that is not JSON is kept as a JSON string).
    pub(crate) events: Vec<Value>,
    /// The close frame, if one came.
    pub(crate) closed: Option<Closed>,
    /// The stream ended (after a close frame, or not): when, and the error if any.
    pub(crate) ended: Option<(Instant, Option<String>)>,
}

/// Which protocol a [`Conn`]'s reader parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// Audio in JSON text (base64 `media.payload` of Twilio and Telnyx `media`, Plivo
    /// `playAudio`), events in other text frames.
    Twilio,
    /// Audio in binary frames (native, Vonage), events in text frames.
    Native,
}

/// One WebSocket to the router, with a reader task filling an [`Inbox`].
pub(crate) struct Conn {
    sink: SplitSink<WsStream, Message>,
    inbox: Arc<Mutex<Inbox>>,
    reader: tokio::task::JoinHandle<()>,
    /// Taken just before the upgrade request was sent.
    pub(crate) opened_at: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    pub(crate) async fn connect(
        url: &str,
        bearer: Option<&str>,
        speaks: Speaks,
    ) -> Result<Conn, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(key) = bearer {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {key}")).expect("a header value"),
            );
        }
        let opened_at = Instant::now();
        let (ws, _response) = within(
            WAIT,
            "the WebSocket upgrade",
            tokio_tungstenite::connect_async(request),
        )
        .await?;
        let (sink, mut stream) = ws.split();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let filled = Arc::clone(&inbox);
        let reader = tokio::spawn(async move {
            loop {
                let message = stream.next().await;
                let mut inbox = filled.lock().unwrap();
                match message {
                    None => {
                        inbox.ended = Some((Instant::now(), None));
                        return;
                    }
                    Some(Err(error)) => {
                        inbox.ended = Some((Instant::now(), Some(error.to_string())));
                        return;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let value: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| Value::String(text.to_string()));
                        if speaks == Speaks::Twilio
                            && (value["event"] == "media" || value["event"] == "playAudio")
                        {
                            let payload = value["media"]["payload"].as_str().unwrap_or_default();
                            let bytes =
                                BASE64.decode(payload).expect("the router's base64 decodes");
                            inbox.audio.extend_from_slice(&bytes);
                            inbox.audio_messages += 1;
                            inbox.audio_sizes.insert(bytes.len());
                        } else {
                            inbox.events.push(value);
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        inbox.audio.extend_from_slice(&bytes);
                        inbox.audio_messages += 1;
                        inbox.audio_sizes.insert(bytes.len());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        inbox.closed = Some(Closed {
                            code: frame.as_ref().map_or(1005, |f| u16::from(f.code)),
                            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                            at: Instant::now(),
                        });
                    }
                    Some(Ok(_)) => {}
                }
            }
        });
        Ok(Conn {
            sink,
            inbox,
            reader,
            opened_at,
        })
    }

    /// Sends one message; the error (a socket the server closed) is returned, not a panic.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        within(WAIT, "sending a frame", self.sink.send(message)).await
    }

    /// Sends a text frame, which must go out.
    pub(crate) async fn text(&mut self, text: impl Into<String>) {
        self.send(Message::text(text.into()))
            .await
            .expect("sending a text frame");
    }

    /// Sends a binary frame, which must go out.
    pub(crate) async fn binary(&mut self, bytes: impl Into<Vec<u8>>) {
        self.send(Message::binary(bytes.into()))
            .await
            .expect("sending a binary frame");
    }

    /// Looks at the inbox.
    pub(crate) fn inbox<T>(&self, look: impl FnOnce(&Inbox) -> T) -> T {
        look(&self.inbox.lock().unwrap())
    }

    /// Audio bytes received so far.
    pub(crate) fn audio_len(&self) -> usize {
        self.inbox(|i| i.audio.len())
    }

    /// A copy of the audio received so far.
    pub(crate) fn audio(&self) -> Vec<u8> {
        self.inbox(|i| i.audio.clone())
    }

    /// The events received so far.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.inbox(|i| i.events.clone())
    }

    /// Waits until at least `bytes` bytes of audio have come back in all.
    pub(crate) async fn wait_audio(&self, bytes: usize, timeout: Duration) {
        let inbox = &self.inbox;
        let what = format!("{bytes} bytes of audio back");
        eventually(timeout, &what, async || {
            let inbox = inbox.lock().unwrap();
            assert!(
                inbox.closed.is_none(),
                "closed while waiting for audio: {:?}",
                inbox.closed
            );
            (inbox.audio.len() >= bytes).then_some(())
        })
        .await;
    }

    /// Waits until no audio has arrived for `quiet` (or `timeout` passes: then fails).
    pub(crate) async fn wait_quiet(&self, quiet: Duration, timeout: Duration) {
        let inbox = &self.inbox;
        let mut last = (usize::MAX, Instant::now());
        eventually(timeout, "the audio to stop coming", async || {
            let len = inbox.lock().unwrap().audio.len();
            if len != last.0 {
                last = (len, Instant::now());
            }
            (last.1.elapsed() >= quiet).then_some(())
        })
        .await;
    }

    /// Waits for the server's close frame.
    pub(crate) async fn wait_closed(&self, timeout: Duration) -> Closed {
        let inbox = &self.inbox;
        eventually(timeout, "the server's close frame", async || {
            let inbox = inbox.lock().unwrap();
            if let Some(closed) = &inbox.closed {
                return Some(closed.clone());
            }
            if let Some((_, error)) = &inbox.ended {
                panic!("the connection ended without a close frame: {error:?}");
            }
            None
        })
        .await
    }

    /// Waits for the first event for which `matches` holds.
    pub(crate) async fn wait_event(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let inbox = &self.inbox;
        eventually(WAIT, what, async || {
            inbox
                .lock()
                .unwrap()
                .events
                .iter()
                .find(|e| matches(e))
                .cloned()
        })
        .await
    }
}

/// A caller speaking Twilio Media Streams as Twilio does (`reference/protocols.md` §1).
pub(crate) struct TwilioCaller {
    pub(crate) conn: Conn,
    stream_sid: String,
    sequence: u64,
    chunk: u64,
}

impl TwilioCaller {
    /// Opens the socket (nothing sent yet); `bearer` goes in an `Authorization` header.
    pub(crate) async fn connect(
        url: &str,
        bearer: Option<&str>,
    ) -> Result<TwilioCaller, tungstenite::Error> {
        let conn = Conn::connect(url, bearer, Speaks::Twilio).await?;
        Ok(TwilioCaller {
            conn,
            stream_sid: format!("MZ{}", Uuid::now_v7().simple()),
            sequence: 0,
            chunk: 0,
        })
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    /// `connected`, then `start` with these custom parameters.
    pub(crate) async fn start(&mut self, custom_parameters: &[(&str, &str)]) {
        self.conn
            .text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string())
            .await;
        let params: serde_json::Map<String, Value> = custom_parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let sequence = self.next_sequence();
        let start = json!({
            "event": "start",
            "sequenceNumber": sequence,
            "start": {
                "accountSid": format!("AC{}", Uuid::now_v7().simple()),
                "streamSid": self.stream_sid,
                "callSid": format!("CA{}", Uuid::now_v7().simple()),
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            },
            "streamSid": self.stream_sid,
        });
        self.conn.text(start.to_string()).await;
    }

    /// One `media` message whose payload is this base64 text, as is.
    pub(crate) async fn media_payload(&mut self, payload: &str) {
        self.chunk += 1;
        let sequence = self.next_sequence();
        let message = json!({
            "event": "media",
            "sequenceNumber": sequence,
            "media": {
                "track": "inbound",
                "chunk": self.chunk.to_string(),
                "timestamp": ((self.chunk - 1) * 20).to_string(),
                "payload": payload,
            },
            "streamSid": self.stream_sid,
        });
        self.conn.text(message.to_string()).await;
    }

    /// One `media` message carrying these mu-law bytes.
    pub(crate) async fn media(&mut self, mulaw: &[u8]) {
        let payload = BASE64.encode(mulaw);
        self.media_payload(&payload).await;
    }

    /// `mulaw` as 20 ms `media` messages, one every `interval` (zero: as fast as possible).
    pub(crate) async fn stream(&mut self, mulaw: &[u8], interval: Duration) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_micros(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for frame in mulaw.chunks(MULAW_FRAME) {
            if !interval.is_zero() {
                tick.tick().await;
            }
            self.media(frame).await;
        }
    }

    /// `stop`, as Twilio sends when the call ends.
    pub(crate) async fn stop(&mut self) {
        let sequence = self.next_sequence();
        let message = json!({
            "event": "stop",
            "sequenceNumber": sequence,
            "stop": {"accountSid": "AC00000000000000000000000000000000", "callSid": "CA00000000000000000000000000000000"},
            "streamSid": self.stream_sid,
        });
        self.conn.text(message.to_string()).await;
    }

    /// Proves the call is still live and echoing: 200 ms of tone in, at least 100 ms of it
    /// back.
    pub(crate) async fn assert_echoes(&mut self, what: &str) {
        let before = self.conn.audio_len();
        let tone = mulaw(&voxroute_codecs::measure::sine(
            440.0, 8_000, 8_000.0, 1_600,
        ));
        self.stream(&tone, Duration::ZERO).await;
        let inbox = &self.conn.inbox;
        eventually(WAIT, &format!("{what}: echo of a tone"), async || {
            (inbox.lock().unwrap().audio.len() >= before + 800).then_some(())
        })
        .await;
    }

    /// Ends the call the way Twilio does (`stop`) and waits for the router's close.
    pub(crate) async fn hang_up(&mut self) -> Closed {
        self.stop().await;
        self.conn.wait_closed(WAIT).await
    }
}

/// A caller speaking voxroute's native protocol (`/v1/ws`).
pub(crate) struct NativeCaller {
    pub(crate) conn: Conn,
}

impl NativeCaller {
    /// Opens the socket (nothing sent yet).
    pub(crate) async fn connect(
        url: &str,
        bearer: Option<&str>,
    ) -> Result<NativeCaller, tungstenite::Error> {
        Ok(NativeCaller {
            conn: Conn::connect(url, bearer, Speaks::Native).await?,
        })
    }

    /// Sends `{"type":"start", ...fields}`.
    pub(crate) async fn start(&mut self, fields: Value) {
        let mut start = json!({"type": "start"});
        for (k, v) in fields.as_object().expect("start fields are an object") {
            start[k] = v.clone();
        }
        self.conn.text(start.to_string()).await;
    }

    /// Waits for `session.started` and returns its session id.
    pub(crate) async fn wait_started(&self) -> Uuid {
        let event = self
            .conn
            .wait_event("session.started", |e| e["type"] == "session.started")
            .await;
        event["session_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("session.started carries a UUID session_id")
    }

    /// `pcm` (8 kHz PCM16) as 20 ms binary frames, one every `interval` (zero: at once).
    pub(crate) async fn stream_pcm(&mut self, pcm: &[i16], interval: Duration) {
        for frame in pcm.chunks(160) {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            self.conn.binary(pcm16_bytes(frame)).await;
        }
    }

    /// `{"type":"stop"}`: the caller hangs up.
    pub(crate) async fn stop(&mut self) {
        self.conn.text(json!({"type": "stop"}).to_string()).await;
    }

    /// The reason of the `session.ended` event, once it has come.
    pub(crate) async fn wait_ended(&self) -> String {
        let event = self
            .conn
            .wait_event("session.ended", |e| e["type"] == "session.ended")
            .await;
        event["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// The `code`s of the `error` events so far.
    pub(crate) fn error_codes(&self) -> Vec<String> {
        self.conn
            .events()
            .iter()
            .filter(|e| e["type"] == "error")
            .map(|e| e["code"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits for an `error` event with this code.
    pub(crate) async fn wait_error(&self, code: &str) -> Value {
        self.conn
            .wait_event(&format!("an error event `{code}`"), |e| {
                e["type"] == "error" && e["code"] == code
            })
            .await
    }

    /// Proves the session is still live and echoing: 200 ms of tone in, at least 100 ms back.
    pub(crate) async fn assert_echoes(&mut self, what: &str) {
        let before = self.conn.audio_len();
        let tone = voxroute_codecs::measure::sine(440.0, 8_000, 8_000.0, 1_600);
        self.stream_pcm(&tone, Duration::ZERO).await;
        let inbox = &self.conn.inbox;
        eventually(WAIT, &format!("{what}: echo of a tone"), async || {
            (inbox.lock().unwrap().audio.len() >= before + 1_600).then_some(())
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Audio

/// The first `seconds` of the 8 kHz speech fixture, cut to whole 20 ms frames.
pub(crate) fn speech_8k(seconds: f64) -> Vec<i16> {
    speech_fixture(8_000, seconds)
}

/// The whole 48 kHz speech fixture (the WebRTC tests' microphone), cut to whole 20 ms frames.
pub(crate) fn speech_48k() -> Vec<i16> {
    speech_fixture(48_000, f64::INFINITY)
}

/// The first `seconds` of the speech fixture at `rate_hz` (8 or 48 kHz), cut to whole
/// 20 ms frames.
fn speech_fixture(rate_hz: u32, seconds: f64) -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "codecs/tests/fixtures/speech/speech-{}k.wav",
        rate_hz / 1_000
    ));
    let mut reader = hound::WavReader::open(&path).expect("the speech fixture opens");
    assert_eq!(reader.spec().sample_rate, rate_hz);
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("a valid sample"))
        .collect();
    let frame = rate_hz as usize / 50;
    let want = (seconds * f64::from(rate_hz)).min(samples.len() as f64) as usize / frame * frame;
    samples[..want].to_vec()
}

/// mu-law codes of `pcm`.
pub(crate) fn mulaw(pcm: &[i16]) -> Vec<u8> {
    pcm.iter()
        .map(|&s| G711Law::Mulaw.encode_sample(s))
        .collect()
}

/// PCM of mu-law `codes`.
pub(crate) fn unmulaw(codes: &[u8]) -> Vec<i16> {
    codes
        .iter()
        .map(|&c| G711Law::Mulaw.decode_sample(c))
        .collect()
}

/// Little-endian PCM16 bytes of `pcm`.
pub(crate) fn pcm16_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Samples of little-endian PCM16 `bytes`.
pub(crate) fn pcm16_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Asserts `received` is `sent` delayed by at most 100 ms: the correlation after alignment is
/// above 0.9. Returns (lag in samples, correlation).
pub(crate) fn assert_same_audio(sent: &[i16], received: &[i16], what: &str) -> (usize, f64) {
    assert!(
        received.len() >= sent.len() / 2,
        "{what}: {} samples back for {} sent",
        received.len(),
        sent.len()
    );
    let (lag, corr) = best_lag(sent, received, 800);
    assert!(
        corr > 0.9,
        "{what}: correlation {corr:.3} at lag {lag} (want > 0.9)"
    );
    (lag, corr)
}
