//! The load generator's CI smoke run (issue #6, item 4): `voxroute_loadtest` drives a real
//! router (a child process on a fresh SQLite database) with its provider hosted in this
//! process, a few sessions for a few seconds over each caller protocol (Twilio, native and
//! WebRTC).
//!
//! What it proves: every session is established and every 20 ms frame comes back (zero lost,
//! every sequence marker where it should be), the added latencies and set-up times are sane
//! (loose bounds: a debug build on a shared machine; the figures are printed exactly), the
//! router's CPU and memory are read, the JSON report parses back into the same figures, and
//! the router's session records show the sessions on the load-test provider.

use std::time::Duration;

use voxroute_loadtest::{LoadConfig, Provider, Report, Transport};

use crate::harness::{RouterOptions, Setup, TempDir, TestDb};

/// Sessions per transport.
const SESSIONS: u32 = 4;

/// Every caller protocol the generator speaks.
const TRANSPORTS: [Transport; 3] = [Transport::Twilio, Transport::Native, Transport::WebRtc];

/// Sessions in the whole run.
const ALL_SESSIONS: u32 = SESSIONS * TRANSPORTS.len() as u32;

/// Loose bound on any added latency's p99 (debug build, noisy machine).
const P99_BOUND_MS: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_loses_no_frame_over_twilio_native_and_webrtc() {
    let provider = Provider::bind("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("the load-test provider binds");
    let options = RouterOptions {
        config: Some(provider.router_config("loadtest", ALL_SESSIONS)),
        ..RouterOptions::default()
    };
    let setup = Setup::new(TestDb::sqlite(), options).await;
    let (key_id, key) = setup.key("load", None).await;
    let reports_dir = TempDir::new();

    for transport in TRANSPORTS {
        let name = transport.as_str();
        let mut config = LoadConfig::new(setup.router.ws_url(""), transport, SESSIONS);
        config.ramp = Duration::from_millis(400);
        config.duration = Duration::from_secs(3);
        config.api_key = Some(key.clone());
        config.router_pid = Some(setup.router.pid());
        let report = voxroute_loadtest::run_with_provider(config, &provider)
            .await
            .unwrap_or_else(|e| panic!("{name}: the run fails: {e}"));
        println!("{name}:\n{}", report.summary());

        let sessions = &report.sessions;
        assert_eq!(
            sessions.attempted,
            u64::from(SESSIONS),
            "{name}: {sessions:?}"
        );
        assert_eq!(
            sessions.established,
            u64::from(SESSIONS),
            "{name}: {sessions:?}"
        );
        assert_eq!(sessions.failed, 0, "{name}: {sessions:?}");
        assert_eq!(sessions.dropped, 0, "{name}: {sessions:?}");
        assert_eq!(sessions.unidentified_connections, 0, "{name}: {sessions:?}");

        let frames = &report.frames;
        // 3.4 s of 20 ms frames for the first session, 3 s for the last.
        assert!(
            frames.sent >= u64::from(SESSIONS) * 140,
            "{name}: {frames:?}"
        );
        assert_eq!(frames.lost, 0, "{name}: {frames:?}");
        assert_eq!(frames.lost_to_provider, 0, "{name}: {frames:?}");
        assert_eq!(frames.received, frames.sent, "{name}: {frames:?}");
        assert_eq!(
            frames.received_by_provider, frames.sent,
            "{name}: {frames:?}"
        );
        assert!(frames.marker_checks > 0, "{name}: {frames:?}");
        assert_eq!(frames.marker_mismatches, 0, "{name}: {frames:?}");

        let latency = &report.latency_ms;
        for (what, summary) in [
            ("caller → provider", latency.caller_to_provider),
            ("provider → caller", latency.provider_to_caller),
            ("round trip", latency.round_trip),
        ] {
            assert!(
                summary.count >= frames.sent / 2,
                "{name} {what}: {summary:?}"
            );
            assert!(
                summary.p50_ms > 0.0 && summary.p50_ms <= summary.p99_ms,
                "{name} {what}: {summary:?}"
            );
            assert!(summary.p99_ms < P99_BOUND_MS, "{name} {what}: {summary:?}");
        }
        assert_eq!(report.setup_ms.count, u64::from(SESSIONS), "{name}");
        assert!(
            report.setup_ms.p99_ms > 0.0 && report.setup_ms.p99_ms < 2_000.0,
            "{name}: {:?}",
            report.setup_ms
        );

        let router = report.router.expect("the router's /proc figures");
        assert!(
            router.rss_before_kib > 0 && router.rss_steady_kib > 0,
            "{router:?}"
        );
        assert!(router.session_seconds_steady > 0.0, "{router:?}");
        let dsp = report.dsp.expect("the DSP reference");
        assert_eq!(dsp.provider_sample_rate_hz, 16_000);
        assert!(dsp.cpu_seconds_per_session_second > 0.0, "{dsp:?}");

        let path = reports_dir.path().join(format!("{name}.json"));
        report
            .write_json(&path)
            .expect("the JSON report is written");
        let text = std::fs::read_to_string(&path).expect("the JSON report reads back");
        let parsed: Report = serde_json::from_str(&text).expect("the JSON report parses");
        assert_eq!(
            parsed, report,
            "{name}: the JSON round trip changes the report"
        );
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["schema"], "voxroute-loadtest/1");
        assert_eq!(value["frames"]["lost"], 0);
    }

    let rows = setup.ended_for_key(key_id, ALL_SESSIONS as usize).await;
    for row in &rows {
        assert_eq!(row.provider, "loadtest", "{row:#?}");
        assert_eq!(
            row.close_reason.as_deref(),
            Some("CLIENT_HANGUP"),
            "{row:#?}"
        );
        assert!(row.audio_in_ms >= 2_900, "{row:#?}");
    }
    let transports: Vec<&str> = rows.iter().map(|r| r.transport.as_str()).collect();
    println!("session records: {transports:?}");
    assert_eq!(setup.all_sessions().await.len(), ALL_SESSIONS as usize);
    for transport in ["telephony", "websocket", "webrtc"] {
        assert_eq!(
            transports.iter().filter(|t| **t == transport).count(),
            SESSIONS as usize,
            "{transports:?}"
        );
    }
}
