//! What an operator sees: `GET /metrics` and JSON logs (`--log-format json`).
//!
//! What they prove: after real calls, the Prometheus text counts the sessions started and
//! ended (by close reason), the frames, the provider's connect and first-response latencies,
//! the store queue and the process's CPU and memory; and every line the router logs is one
//! JSON object, the session's lines carry its id, transport and provider, and no line holds
//! the caller's key.

use serde_json::Value;

use crate::harness::{RouterOptions, Setup, TestDb, WAIT, eventually};

/// The value of the sample `name` (exact text before the value) in a Prometheus scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Proves `/metrics` after two calls (one hung up, one refused for a bad key): sessions
/// started and ended by reason, no session left live, frames in and out, one provider
/// connect and first-response observation per call, the store queue empty and written to,
/// and process CPU and memory present; the text is OpenMetrics (`# EOF`).
#[tokio::test]
async fn metrics_count_sessions_frames_and_latencies() {
    let setup = Setup::sqlite().await;
    let (_, key) = setup.key("metrics", None).await;
    for _ in 0..2 {
        let mut call = setup.twilio(&key).await;
        call.assert_echoes("a call").await;
        assert_eq!(call.hang_up().await.reason, "CLIENT_HANGUP");
    }
    let refused = setup.twilio("vxr_not-a-real-key").await;
    assert_eq!(refused.conn.wait_closed(WAIT).await.reason, "AUTH_FAILED");

    let router = &setup.router;
    let text = eventually(WAIT, "both calls ended in /metrics", async || {
        let (status, text) = router.http_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        let ended = sample(
            &text,
            r#"voxroute_sessions_ended_total{close_reason="CLIENT_HANGUP"}"#,
        )?;
        // The records are written after the sessions end: wait for the queue too.
        let queued = sample(&text, "voxroute_store_queue_depth")?;
        (ended == 2.0 && queued == 0.0).then_some(text)
    })
    .await;
    let labels = r#"{transport="telephony",provider="echo"}"#;
    assert_eq!(
        sample(&text, &format!("voxroute_sessions_started_total{labels}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("voxroute_sessions_live{labels}")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"voxroute_sessions_ended_total{close_reason="AUTH_FAILED"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for direction in ["in", "out"] {
        let frames = sample(
            &text,
            &format!(r#"voxroute_frames_total{{direction="{direction}"}}"#),
        )
        .unwrap_or_default();
        assert!(frames >= 20.0, "{direction}: {frames} frames\n{text}");
    }
    for histogram in ["provider_connect", "provider_first_response"] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"voxroute_{histogram}_seconds_count{{provider="echo"}}"#)
            ),
            Some(2.0),
            "{histogram}\n{text}"
        );
    }
    assert_eq!(sample(&text, "voxroute_store_queue_depth"), Some(0.0));
    assert!(sample(&text, "voxroute_store_writes").unwrap_or_default() >= 4.0);
    assert!(sample(&text, "process_resident_memory_bytes").unwrap_or_default() > 1e6);
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(!text.contains(&key), "no key in the metrics");
}

/// Proves `--log-format json`: every stderr line of a router that served a call is a JSON
/// object with a level and a message; the session's end is logged inside a span carrying the
/// session id, transport and provider; and the caller's key appears nowhere.
#[tokio::test]
async fn json_logs_carry_the_session_span_and_no_key() {
    let options = RouterOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (_, key) = setup.key("logs", None).await;
    let mut call = setup.twilio(&key).await;
    call.assert_echoes("a call").await;
    assert_eq!(call.hang_up().await.reason, "CLIENT_HANGUP");
    let router = &setup.router;
    let lines: Vec<Value> = eventually(WAIT, "the session's end in the logs", async || {
        let text = router.stderr_text();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        lines
            .iter()
            .any(|l| l["span"]["session_id"].is_string())
            .then_some(lines)
    })
    .await;
    let in_session: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["session_id"].is_string())
        .collect();
    for line in &in_session {
        assert_eq!(line["span"]["transport"], "telephony", "{line}");
        assert_eq!(line["span"]["provider"], "echo", "{line}");
    }
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(
            !line.to_string().contains(&key),
            "a key in the logs: {line}"
        );
    }
}

/// Proves the graceful drain: after SIGTERM, with a 3 s grace, `/readyz` answers 503 and a new
/// upgrade is refused with 503 while a live call goes on echoing; a call that hangs up within
/// the grace is recorded `CLIENT_HANGUP`; the one still live when the grace runs out is ended
/// with close 1001 `SHUTDOWN` no sooner than the grace; the process exits 0 with every record
/// complete.
#[tokio::test]
async fn sigterm_drains_live_calls_within_the_grace() {
    let options = RouterOptions {
        args: vec!["--drain-grace-secs".into(), "3".into()],
        ..RouterOptions::default()
    };
    let mut setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("drain", None).await;
    let mut leaving = setup.twilio(&key).await;
    leaving.assert_echoes("a call that will hang up").await;
    let mut staying = setup.twilio(&key).await;
    staying
        .assert_echoes("a call that will outlive the grace")
        .await;

    let signalled = std::time::Instant::now();
    setup.router.sigterm();
    let router = &setup.router;
    eventually(WAIT, "/readyz to say 503", async || {
        (router.http_get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    let refused =
        crate::harness::TwilioCaller::connect(&router.ws_url(crate::harness::TWILIO), Some(&key))
            .await
            .err();
    let Some(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected HTTP 503 during the drain, got {refused:?}");
    };
    assert_eq!(response.status(), 503);
    staying.assert_echoes("during the drain").await;
    assert_eq!(leaving.hang_up().await.reason, "CLIENT_HANGUP");

    let closed = staying.conn.wait_closed(WAIT).await;
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "SHUTDOWN"));
    let waited = signalled.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(2_900),
        "ended {waited:?} after SIGTERM, before the 3 s grace"
    );
    let status = setup.router.wait_exit(WAIT).await;
    assert!(status.success(), "{}", setup.router.stderr_text());
    let rows = setup.ended_for_key(key_id, 2).await;
    let reasons: Vec<_> = rows.iter().map(|r| r.close_reason.as_deref()).collect();
    assert_eq!(
        reasons,
        [Some("CLIENT_HANGUP"), Some("SHUTDOWN")],
        "{rows:#?}"
    );
}

/// Proves that a binary built without the `otel` feature says so, once, when a collector is
/// named (`OTEL_EXPORTER_OTLP_ENDPOINT`), and serves as usual.
#[cfg(not(feature = "otel"))]
#[tokio::test]
async fn otel_endpoint_without_the_feature_warns_once() {
    let options = RouterOptions {
        env: vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://127.0.0.1:4318".into(),
        )],
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (status, _) = setup.router.http_get("/healthz").await;
    assert_eq!(status, 200);
    let stderr = setup.router.stderr_text();
    let warnings = stderr
        .lines()
        .filter(|line| line.contains("built without the `otel` feature"))
        .count();
    assert_eq!(warnings, 1, "{stderr}");
}
