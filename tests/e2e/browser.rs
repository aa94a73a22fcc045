//! A real browser calls the router over WebRTC: headless Chromium opens the `GET /demo` page,
//! which talks to `POST /v1/webrtc` with a fake microphone playing the 48 kHz speech fixture,
//! and the test checks what the page measured and what the router recorded.
//!
//! How: [`run_demo_page`] starts Chromium as a child process with
//! `--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
//! --disable-component-update --disable-sync`, a fresh `--user-data-dir`,
//! `--use-fake-ui-for-media-stream --use-fake-device-for-media-stream
//! --use-file-for-fake-audio-capture=codecs/tests/fixtures/speech/speech-48k.wav` (the file
//! loops), `--autoplay-policy=no-user-gesture-required` and `--enable-logging=stderr --v=0`,
//! on `/demo?autostart=1&seconds=N&...`. The page calls at once, hangs up N seconds after the
//! connection reached `connected`, and prints one console line
//! `VOXROUTE_DEMO_REPORT {json}` (its stats, events and outcome; ok=false with an error on
//! any failure, so the test never waits blindly).
//!
//! Console to stderr: checked by hand with Chromium 156 (Debian bookworm's `chromium`), where
//! plain `--headless` is the new headless mode. `--enable-logging=stderr --v=0` is enough: each
//! `console.log` comes out as one stderr line
//! `[PID:TID:MMDD/HHMMSS.micros:INFO:CONSOLE:LINE] "MESSAGE", source: URL (LINE)`. The
//! message is printed raw, not escaped: the JSON's own quotes and backslashes appear as
//! `JSON.stringify` wrote them, so [`parse_report`] parses the first JSON value after the
//! marker and ignores the `", source: ...` tail. The page writes non-ASCII as `\uXXXX`, so the
//! line is ASCII whatever encoding it passes through. Chromium does not exit by itself in this
//! mode: it is killed (its whole process group) once the report is read.
//!
//! The child is a `std::process` child read by a thread (the workspace's tokio has no
//! `process` feature), killed on drop like the harness's [`Router`](crate::harness::Router).

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::harness::{RouterOptions, Setup, TempDir, TestDb};

/// What the demo page prints before its JSON report.
const MARKER: &str = "VOXROUTE_DEMO_REPORT ";

/// How many of Chromium's last stderr lines a failure shows.
const TAIL_LINES: usize = 50;

/// The Chromium binary: `/usr/bin/chromium`, else `chromium` on `PATH`; `None` if neither.
pub(crate) fn chromium() -> Option<PathBuf> {
    let usual = Path::new("/usr/bin/chromium");
    if usual.is_file() {
        return Some(usual.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    })
}

/// A running Chromium: its process group is killed (SIGKILL) and reaped on drop, then its
/// profile directory is removed.
struct Browser {
    child: Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium forks a zygote, renderers and a GPU process: end the whole group, which
        // `process_group(0)` made this child's own.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON report in one stderr line of Chromium, if the line carries one: the first JSON
/// value after [`MARKER`] (serde's streaming parser stops at its closing brace, braces and
/// quotes inside strings included, and leaves the `", source: ...` tail alone).
pub(crate) fn parse_report(line: &str) -> Option<Value> {
    let start = line.find(MARKER)? + MARKER.len();
    serde_json::Deserializer::from_str(&line[start..])
        .into_iter::<Value>()
        .next()?
        .ok()
        .filter(Value::is_object)
}

/// Opens `url` (the demo page, in its unattended mode) in headless Chromium with a fake
/// microphone playing the speech fixture, and returns the page's report. Panics, with
/// Chromium's last stderr lines, if no report comes within `wait` or Chromium exits first.
pub(crate) async fn run_demo_page(url: &str, wait: Duration) -> Value {
    let binary = chromium().expect("install chromium (scripts/test does)");
    let speech = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("codecs/tests/fixtures/speech/speech-48k.wav")
        .canonicalize()
        .expect("the 48 kHz speech fixture exists");
    let profile = TempDir::new();
    let mut command = Command::new(&binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args([
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}",
            speech.display()
        ))
        .args([
            "--autoplay-policy=no-user-gesture-required",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let _browser = Browser {
        child,
        _profile: profile,
    };

    // A thread reads stderr line by line (lossy: Chromium's lines are not all UTF-8) and hands
    // the lines over; the channel closes when Chromium's stderr does.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let outcome = tokio::time::timeout(wait, async {
        while let Some(line) = rx.recv().await {
            if let Some(report) = parse_report(&line) {
                return Some(report);
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        None
    })
    .await;
    let why = match outcome {
        Ok(Some(report)) => return report,
        Ok(None) => "Chromium exited without printing a report".to_owned(),
        Err(_) => format!("no report within {wait:?}"),
    };
    let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
    panic!(
        "{why} from {url}; Chromium's last {} stderr lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// Proves the whole browser path: the demo page, in headless Chromium with a key in its URL,
/// calls route `echo` over WebRTC; the connection comes up, `session.started` arrives on the
/// data channel, more than 100 packets of audio come back and they are not silence; and the
/// router records a `webrtc` session of the key, ended by the caller's hang-up, with most of
/// the 6 s of speech in and more than 2 s out.
#[tokio::test]
async fn demo_page_talks_through_echo_in_a_real_browser() {
    assert!(chromium().is_some(), "install chromium (scripts/test does)");
    let options = RouterOptions {
        // The page's default route: `echo` is a provider, so name a route after it.
        config: Some("[routes.echo]\nproviders = [\"echo\"]\n".to_owned()),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("browser", None).await;
    let url = format!(
        "{}?autostart=1&seconds=6&route=echo&api_key={key}",
        setup.router.http_url("/demo")
    );

    let report = run_demo_page(&url, Duration::from_secs(60)).await;
    let context = || {
        format!(
            "report: {report:#}\nrouter stderr:\n{}",
            setup.router.stderr_text()
        )
    };
    assert_eq!(report["ok"], true, "{}", context());
    assert_eq!(report["connected"], true, "{}", context());
    let events: Vec<&str> = report["events"]
        .as_array()
        .map(|events| events.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(events.contains(&"session.started"), "{}", context());
    let packets = report["packets_received"].as_u64().unwrap_or_default();
    assert!(packets > 100, "{packets} packets back\n{}", context());
    let energy = report["total_audio_energy"].as_f64().unwrap_or_default();
    assert!(energy > 0.0, "the audio back is silence\n{}", context());

    let session_id: Uuid = report["session_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the report names the session\n{}", context()));
    let row = setup.ended(session_id).await;
    assert_eq!(row.transport, "webrtc", "{row:#?}");
    assert_eq!(row.api_key_id, Some(key_id), "{row:#?}");
    assert_eq!(
        row.close_reason.as_deref(),
        Some("CLIENT_HANGUP"),
        "{row:#?}"
    );
    assert!(row.audio_in_ms >= 3_000, "{row:#?}");
    assert!(row.audio_out_ms > 2_000, "{row:#?}");
}

/// The report is read out of Chromium's console line as it really looks (captured by hand),
/// quotes, backslashes and braces inside strings included.
#[test]
fn the_report_is_parsed_out_of_a_console_line() {
    let line = r#"[14538:14538:1204/180748.888106:INFO:CONSOLE:375] "VOXROUTE_DEMO_REPORT {"ok":false,"error":"he said \"hi\" \\ {back}","events":["a"],"u":"\u00e9"}", source: http://127.0.0.1:8765/demo?autostart=1 (375)"#;
    let report = parse_report(line).expect("a report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["error"], r#"he said "hi" \ {back}"#);
    assert_eq!(report["events"][0], "a");
    assert_eq!(report["u"], "é");
    assert_eq!(
        parse_report("[1:1:INFO:CONSOLE:1] \"hello\", source: x (1)"),
        None
    );
}
