//! DESIGN.md's data promises, tested as product features against a running router.
//!
//! What they prove:
//! - a store outage never drops a call: with PostgreSQL behind a TCP proxy the test cuts
//!   mid-call, the call goes on echoing and ends normally, and its record is written once the
//!   store is back; and a record still queued when the router shuts down during an outage is
//!   written after the next start;
//! - no audio is kept: a whole call of audio carrying a marker pattern, with debug logging,
//!   leaves the marker (raw, base64, hex, as a debug list, or decoded to PCM) nowhere in the
//!   database (SQLite's files including the WAL; every column of every PostgreSQL table) nor
//!   in the router's stdout and stderr; nor is the caller's key in the logs;
//! - memory returns to baseline: 200 short sessions leave the router's resident set within a
//!   bound of where it was after warm-up, and not growing between the 100th and 200th.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;
use voxroute_codecs::g711::G711Law;

use crate::harness::{
    MULAW_FRAME, NATIVE, NativeCaller, RouterOptions, Setup, TestDb, WAIT, eventually, mulaw,
    on_both_backends, speech_8k, within,
};

on_both_backends!(no_audio_is_retained_in_the_database_or_logs);

// ---------------------------------------------------------------------------------------------
// (a) Store outage

/// A TCP proxy to the PostgreSQL server that the test can cut (every connection closed, new
/// ones refused: the port is not listening) and restore (listening again on the same port).
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = listen("127.0.0.1:0".parse().unwrap());
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let connections = Arc::clone(&self.connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(forward);
            }
        });
        *self.accept.lock().unwrap() = Some(accept);
    }

    /// Closes every connection and stops listening.
    async fn cut(&self) {
        let accept = self.accept.lock().unwrap().take();
        let connections: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        for task in accept.into_iter().chain(connections) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    fn restore(&self) {
        self.serve(listen(self.addr));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A listener on `addr`, with `SO_REUSEADDR` so that a restored proxy gets its port back.
fn listen(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).expect("binding the proxy's port");
    socket.listen(128).unwrap()
}

/// Proves a store outage mid-call drops neither the call nor its record: the router reaches
/// PostgreSQL through a proxy; once the call's start is on record the proxy cuts every
/// connection and refuses new ones; the second half of the speech still echoes, `/readyz`
/// says 503, the caller's `stop` ends the call with `CLIENT_HANGUP`, and the record stays open
/// while the store is away; when the proxy is restored the record is completed, with all the
/// audio counted, and `/readyz` is 200 again.
#[sqlx::test(migrations = false)]
async fn store_outage_mid_call_drops_neither_call_nor_record(pool: PgPool) {
    let db = TestDb::postgres(pool);
    let upstream = tokio::net::lookup_host(db.server())
        .await
        .expect("resolving the PostgreSQL server")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = db.url_via(proxy.addr);
    let setup = Setup::new_via(db, &via_proxy, RouterOptions::default()).await;
    let (key_id, key) = setup.key("outage", None).await;

    let speech = mulaw(&speech_8k(2.0));
    let (first_half, second_half) = speech.split_at(speech.len() / 2);
    let mut call = setup.twilio(&key).await;
    call.stream(first_half, Duration::from_millis(10)).await;
    call.conn
        .wait_audio(first_half.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    let store = setup.store.clone();
    let session_id: Uuid = eventually(WAIT, "the call's start record", async || {
        let rows = store.list_sessions(10).await.ok()?;
        rows.iter()
            .find(|r| r.api_key_id == Some(key_id))
            .map(|r| r.id)
    })
    .await;

    proxy.cut().await;
    call.stream(second_half, Duration::from_millis(10)).await;
    call.conn
        .wait_audio(speech.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    call.conn.wait_quiet(Duration::from_millis(200), WAIT).await;
    let closed = call.hang_up().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "CLIENT_HANGUP")
    );
    let router = &setup.router;
    eventually(
        Duration::from_secs(20),
        "/readyz to report the outage",
        async || (router.http_get("/readyz").await.0 == 503).then_some(()),
    )
    .await;
    let open = setup.store.get_session(session_id).await.unwrap().unwrap();
    assert_eq!(open.close_reason, None, "the store was cut: {open:#?}");

    proxy.restore();
    let row = setup
        .ended_for_key_within(key_id, 1, Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(row.id, session_id);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
    assert!((row.audio_in_ms - 2_000).abs() <= 40, "{row:#?}");
    assert!((row.audio_out_ms - 2_000).abs() <= 40, "{row:#?}");
    eventually(Duration::from_secs(20), "/readyz to recover", async || {
        (router.http_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}

/// Proves DESIGN.md's promise for records still queued at shutdown ("flushed or spooled to a
/// local file replayed at next start"): a call on a router whose store (PostgreSQL through the
/// proxy) is cut ends normally; the router is shut down (SIGTERM) while the store is still
/// away, and exits 0; the store comes back and a new router starts in the same working
/// directory on the same database; the call's end record is then written.
#[sqlx::test(migrations = false)]
async fn records_queued_at_shutdown_are_written_after_the_next_start(pool: PgPool) {
    let db = TestDb::postgres(pool);
    let upstream = tokio::net::lookup_host(db.server())
        .await
        .expect("resolving the PostgreSQL server")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = db.url_via(proxy.addr);
    let workdir = crate::harness::TempDir::new();
    let options = RouterOptions {
        workdir: Some(workdir.path().to_owned()),
        ..RouterOptions::default()
    };
    let mut setup = Setup::new_via(db, &via_proxy, options.clone()).await;
    let (key_id, key) = setup.key("spool", None).await;
    let mut call = setup.twilio(&key).await;
    call.assert_echoes("before the outage").await;
    let store = setup.store.clone();
    let session_id: Uuid = eventually(WAIT, "the call's start record", async || {
        let rows = store.list_sessions(10).await.ok()?;
        rows.iter()
            .find(|r| r.api_key_id == Some(key_id))
            .map(|r| r.id)
    })
    .await;

    proxy.cut().await;
    call.assert_echoes("during the outage").await;
    assert_eq!(call.hang_up().await.reason, "CLIENT_HANGUP");
    let status = setup.router.terminate(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "exit {status}: {}",
        setup.router.stderr_text()
    );
    let open = setup.store.get_session(session_id).await.unwrap().unwrap();
    assert_eq!(open.close_reason, None, "the store was cut: {open:#?}");

    proxy.restore();
    let _next = crate::harness::Router::start(&via_proxy, options).await;
    let row = setup
        .ended_for_key_within(key_id, 1, Duration::from_secs(15))
        .await
        .remove(0);
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) No audio retained

/// 16 mu-law codes that no real audio, log line or record would hold by chance.
const MARKER: [u8; 16] = [
    0x5A, 0xA5, 0x3C, 0xC3, 0x69, 0x96, 0x0F, 0xF0, 0x55, 0xAA, 0x33, 0xCC, 0x66, 0x99, 0x12, 0xED,
];

/// Every form in which the marker could be written down, by name: the raw codes; base64 of
/// the repeated marker at every byte phase (so any base64 of a stream containing it contains
/// one of these); hex; a Rust debug list of the codes; the codes decoded to PCM16, raw and as a
/// debug list.
fn marker_forms() -> Vec<(String, Vec<u8>)> {
    let repeated: Vec<u8> = MARKER.iter().copied().cycle().take(64).collect();
    let pcm: Vec<i16> = repeated
        .iter()
        .map(|&c| G711Law::Mulaw.decode_sample(c))
        .collect();
    let pcm_bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut forms = vec![("raw mu-law".to_owned(), MARKER.to_vec())];
    for k in 0..16 {
        forms.push((
            format!("base64 at phase {k}"),
            BASE64.encode(&repeated[k..k + 15]).into_bytes(),
        ));
        let list = |values: Vec<String>| values.join(", ").into_bytes();
        forms.push((
            format!("debug list of codes from {k}"),
            list(repeated[k..k + 6].iter().map(u8::to_string).collect()),
        ));
        forms.push((
            format!("debug list of PCM from {k}"),
            list(pcm[k..k + 6].iter().map(i16::to_string).collect()),
        ));
        forms.push((
            format!("raw PCM16 from {k}"),
            pcm_bytes[2 * k..2 * k + 16].to_vec(),
        ));
    }
    let hex: String = MARKER.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(("hex".to_owned(), hex.clone().into_bytes()));
    forms.push(("HEX".to_owned(), hex.to_uppercase().into_bytes()));
    forms
}

/// Bytes as a string of one char per byte (Latin-1), so that the standard library's fast
/// substring search works on binary haystacks.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Fails if any of `forms` occurs in `haystack`, naming the form, the place and the context.
fn assert_nowhere(place: &str, haystack: &[u8], forms: &[(String, Vec<u8>)]) {
    let text = latin1(haystack);
    for (name, form) in forms {
        if let Some(at) = text.find(&latin1(form)) {
            let context: String = text
                .chars()
                .skip(at.saturating_sub(200))
                .take(400)
                .collect();
            panic!("the marker ({name}) is in {place} at {at}: …{context}…");
        }
    }
}

/// Every row of every table of the current schema, as JSON text.
async fn dump_postgres(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .expect("listing tables");
    assert!(tables.contains(&"sessions".to_owned()), "{tables:?}");
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_jsonb(t)::text FROM \"{table}\" t"
        )))
        .fetch_all(pool)
        .await
        .expect("dumping a table");
        for row in rows {
            dump.push_str(&format!("{table}: {row}\n"));
        }
    }
    dump
}

/// Proves no audio is retained, on both backends: a Twilio call and a native mu-law call whose
/// every frame is the marker pattern, with the router logging at `debug`, and then a graceful
/// shutdown (so that everything it would ever write is written): no form of the marker is in
/// the database (SQLite: the raw bytes of every file, WAL included; PostgreSQL: every column of
/// every table) or in the router's stdout and stderr; and the caller's key is in neither log.
async fn no_audio_is_retained_in_the_database_or_logs(db: TestDb) {
    let backend = db.label();
    let options = RouterOptions {
        rust_log: Some("debug"),
        ..RouterOptions::default()
    };
    let mut setup = Setup::new(db, options).await;
    let (key_id, key) = setup.key("marker", None).await;
    let frame: Vec<u8> = MARKER.iter().copied().cycle().take(MULAW_FRAME).collect();
    let call_audio: Vec<u8> = frame.repeat(50);
    let forms = marker_forms();
    // The forms catch what goes over the wire: the search is not vacuous.
    assert!(forms.iter().any(
        |(_, f)| latin1(BASE64.encode(&frame).as_bytes()).contains(&latin1(f)) && !f.is_empty()
    ));

    let mut twilio = setup.twilio(&key).await;
    twilio.stream(&call_audio, Duration::from_millis(10)).await;
    twilio
        .conn
        .wait_audio(call_audio.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    twilio
        .conn
        .wait_quiet(Duration::from_millis(200), WAIT)
        .await;
    assert_eq!(twilio.hang_up().await.reason, "CLIENT_HANGUP");

    let mut native = NativeCaller::connect(&setup.router.ws_url(NATIVE), None)
        .await
        .expect("upgrade");
    native
        .start(json!({"codec": "mulaw", "sample_rate": 8000, "api_key": key}))
        .await;
    native.wait_started().await;
    for chunk in call_audio.chunks(MULAW_FRAME) {
        native.conn.binary(chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    native
        .conn
        .wait_audio(call_audio.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    native.stop().await;
    assert_eq!(native.wait_ended().await, "CLIENT_HANGUP");

    let rows = setup.ended_for_key(key_id, 2).await;
    assert!(rows.iter().all(|r| r.audio_in_ms >= 960), "{rows:#?}");
    let status = setup.router.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{backend}: exit {status}");

    let (stdout, stderr) = setup.router.output();
    assert!(
        latin1(&stderr).contains("DEBUG"),
        "{backend}: debug logging was on"
    );
    println!(
        "{backend}: searched {} bytes of stdout, {} bytes of stderr",
        stdout.len(),
        stderr.len()
    );
    assert_nowhere(&format!("{backend}: stdout"), &stdout, &forms);
    assert_nowhere(&format!("{backend}: stderr"), &stderr, &forms);
    let secret = [(String::from("the caller's key"), key.as_bytes().to_vec())];
    assert_nowhere(&format!("{backend}: stdout"), &stdout, &secret);
    assert_nowhere(&format!("{backend}: stderr"), &stderr, &secret);

    match &setup.db {
        TestDb::Sqlite(dir) => {
            let mut searched = Vec::new();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                assert_nowhere(&path.display().to_string(), &bytes, &forms);
                searched.push(format!("{} ({} bytes)", path.display(), bytes.len()));
            }
            assert!(searched.iter().any(|f| f.contains("voxroute.db")));
            println!("sqlite: searched {searched:?}");
        }
        TestDb::Postgres { pool, .. } => {
            let dump = dump_postgres(pool).await;
            assert!(
                dump.contains(&key_id.to_string()),
                "the dump holds the records"
            );
            assert_nowhere("postgres: every table", dump.as_bytes(), &forms);
            println!("postgres: searched {} bytes of table dump", dump.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Memory

/// Short Twilio calls run concurrently per batch.
const BATCH: usize = 20;

/// One short call: 400 ms of speech in at once, its echo back, hang up.
async fn short_call(setup: &Setup, key: &str, audio: &[u8]) {
    let mut call = setup.twilio(key).await;
    call.stream(audio, Duration::ZERO).await;
    call.conn
        .wait_audio(audio.len() - 2 * MULAW_FRAME, WAIT)
        .await;
    assert_eq!(call.hang_up().await.reason, "CLIENT_HANGUP");
}

/// Runs `n` short calls, `BATCH` at a time, then waits until all `total` records have ended.
async fn short_calls(setup: &Setup, key: (Uuid, &str), n: usize, total: usize) {
    let audio = mulaw(&speech_8k(0.4));
    for start in (0..n).step_by(BATCH) {
        let calls = (start..n.min(start + BATCH)).map(|_| short_call(setup, key.1, &audio));
        within(
            Duration::from_secs(60),
            "a batch of short calls",
            futures_util::future::join_all(calls),
        )
        .await;
    }
    let store = &setup.store;
    eventually(WAIT, &format!("{total} ended records"), async || {
        let rows = store.list_sessions(10_000).await.ok()?;
        let ended = rows
            .iter()
            .filter(|r| {
                r.api_key_id == Some(key.0) && r.close_reason.as_deref() == Some("CLIENT_HANGUP")
            })
            .count();
        (ended >= total).then_some(())
    })
    .await;
    // Let the last actors stop and their buffers go.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Proves memory returns close to baseline: after 10 warm-up sessions the router's VmRSS is
/// the baseline; 200 more short sessions (echo, 400 ms of speech each, 20 at a time) leave it
/// within 8 MiB of the baseline, and it grows by at most 2 MiB between the 100th and the 200th
/// session, so a session leaves behind less than about 20 KiB (a 400 ms session's audio
/// buffers alone are more). Measured on the 2-core dev machine, debug build: baseline about
/// 15 MiB, +0.9 MiB after 100 sessions, +0.1 MiB more over the second 100.
#[tokio::test]
async fn memory_returns_to_baseline_after_many_sessions() {
    // 210 sessions in a few seconds on one key: above the default new-session rate.
    let options = RouterOptions {
        config: Some(
            "[limits]\nnew_sessions_per_minute = 60000\nnew_sessions_burst = 1000\n".into(),
        ),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("memory", None).await;
    let key = (key_id, key.as_str());
    short_calls(&setup, key, 10, 10).await;
    let baseline = setup.router.rss_kib();
    short_calls(&setup, key, 100, 110).await;
    let after_100 = setup.router.rss_kib();
    short_calls(&setup, key, 100, 210).await;
    let after_200 = setup.router.rss_kib();
    println!(
        "router VmRSS: {baseline} KiB after 10 warm-up sessions, {after_100} KiB after 100 more \
         (+{} KiB), {after_200} KiB after 200 (+{} KiB; +{} KiB over the second 100)",
        after_100.saturating_sub(baseline),
        after_200.saturating_sub(baseline),
        after_200.saturating_sub(after_100),
    );
    assert!(
        after_200 <= baseline + 8 * 1024,
        "VmRSS {after_200} KiB after 200 sessions, baseline {baseline} KiB"
    );
    assert!(
        after_200 <= after_100 + 2 * 1024,
        "VmRSS grew from {after_100} KiB to {after_200} KiB over the second 100 sessions"
    );
}
