//! `GET /metrics`: what an operator watches, in the OpenMetrics text format that Prometheus
//! scrapes (the `prometheus-client` crate, the Prometheus project's own Rust client).
//!
//! [`Metrics`] owns the registry. The session actors and the server update it as things happen
//! (a session admitted or ended, a provider ready or failed); what other owners already count
//! (the supervisor's record-write queue, the process's CPU and memory) is read at scrape time
//! by [`Metrics::render`]. Labels hold only low-cardinality names (transport, provider, close
//! reason, cause): never a session id, key, address or anything a caller said.
//!
//! # What callers must keep
//!
//! Pair every [`Metrics::session_admitted`] with one [`Metrics::session_ended`] carrying the
//! same transport and provider it was admitted with (the live gauge is their difference).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use voxroute_actors::supervisor::SupervisorStats;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a live or started session.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    transport: String,
    provider: String,
}

/// Labels of an ended session.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    close_reason: String,
}

/// Labels of a provider measure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

/// Labels of audio frames.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    direction: &'static str,
}

/// Labels of dropped frames.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    cause: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets, in seconds: 5 ms to about 10 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// How a session ended, for [`Metrics::session_ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts<'a> {
    /// The transport it was admitted with (`telephony`, `websocket`, `webrtc`).
    pub transport: &'a str,
    /// The provider it was admitted with.
    pub provider: &'a str,
    /// The record's close reason.
    pub close_reason: &'a str,
    /// 20 ms frames forwarded to providers.
    pub frames_in: u64,
    /// 20 ms frames sent back to the caller.
    pub frames_out: u64,
    /// Caller payloads refused by the codec.
    pub frames_bad: u64,
    /// Caller payloads dropped because they arrived before the session could take them.
    pub frames_dropped_early: u64,
    /// Lost caller packets (WebRTC) rebuilt by FEC or concealed by PLC.
    pub frames_concealed: u64,
    /// Times the session moved to another provider.
    pub failovers: u64,
}

/// The registry and every metric voxroute keeps. Shared by all request handlers and sessions
/// (its metrics are atomics; `Family` takes a short lock to find a label set).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    live: Family<SessionLabels, Gauge>,
    started: Family<SessionLabels, Counter>,
    ended: Family<EndLabels, Counter>,
    connect_seconds: HistogramFamily<ProviderLabels>,
    first_response_seconds: HistogramFamily<ProviderLabels>,
    provider_failures: Family<ProviderLabels, Counter>,
    frames: Family<FrameLabels, Counter>,
    frames_dropped: Family<DropLabels, Counter>,
    failovers: Counter,
    frames_concealed: Counter,
    store_queue_depth: Gauge,
    store_written: Gauge,
    store_retries: Gauge,
    store_dropped: Gauge,
    store_rejected: Gauge,
    lease_fallbacks: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `voxroute_` prefix (process metrics under
    /// the conventional `process_`).
    pub fn new() -> Self {
        let mut root = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            live: Family::default(),
            started: Family::default(),
            ended: Family::default(),
            connect_seconds: Family::new_with_constructor(latency_histogram),
            first_response_seconds: Family::new_with_constructor(latency_histogram),
            provider_failures: Family::default(),
            frames: Family::default(),
            frames_dropped: Family::default(),
            failovers: Counter::default(),
            frames_concealed: Counter::default(),
            store_queue_depth: Gauge::default(),
            store_written: Gauge::default(),
            store_retries: Gauge::default(),
            store_dropped: Gauge::default(),
            store_rejected: Gauge::default(),
            lease_fallbacks: Gauge::default(),
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
        };
        {
            let r = root.sub_registry_with_prefix("voxroute");
            r.register(
                "sessions_live",
                "Live sessions, by transport and provider",
                m.live.clone(),
            );
            r.register(
                "sessions_started",
                "Sessions admitted, by transport and provider",
                m.started.clone(),
            );
            r.register(
                "sessions_ended",
                "Sessions ended, by close reason",
                m.ended.clone(),
            );
            r.register_with_unit(
                "provider_connect",
                "From starting a provider connection to the provider being ready",
                Unit::Seconds,
                m.connect_seconds.clone(),
            );
            r.register_with_unit(
                "provider_first_response",
                "From the caller's first audio to the provider's first answer",
                Unit::Seconds,
                m.first_response_seconds.clone(),
            );
            r.register(
                "provider_failures",
                "Provider connections that failed (refused, dropped, timed out)",
                m.provider_failures.clone(),
            );
            r.register(
                "frames",
                "20 ms audio frames, in (to providers) and out (to callers)",
                m.frames.clone(),
            );
            r.register(
                "frames_dropped",
                "Caller audio not forwarded, by cause",
                m.frames_dropped.clone(),
            );
            r.register(
                "frames_concealed",
                "Lost caller packets (WebRTC) rebuilt from FEC or concealed by PLC, so providers \
                 got a gap-free stream",
                m.frames_concealed.clone(),
            );
            r.register(
                "failovers",
                "Sessions moved to another provider mid-call",
                m.failovers.clone(),
            );
            r.register(
                "store_queue_depth",
                "Session-record writes waiting for the store",
                m.store_queue_depth.clone(),
            );
            r.register(
                "store_writes",
                "Session-record writes the store accepted",
                m.store_written.clone(),
            );
            r.register(
                "store_write_retries",
                "Session-record writes that failed and were retried",
                m.store_retries.clone(),
            );
            r.register(
                "store_writes_dropped",
                "Session-record writes dropped because the queue was full",
                m.store_dropped.clone(),
            );
            r.register(
                "store_writes_rejected",
                "Session-record writes the store rejected",
                m.store_rejected.clone(),
            );
            r.register(
                "lease_fallbacks",
                "Admissions decided on this replica's own count because the database did not \
                 answer for the cross-replica session lease",
                m.lease_fallbacks.clone(),
            );
        }
        {
            let p = root.sub_registry_with_prefix("process");
            p.register_with_unit(
                "cpu",
                "CPU time of the process, user and system",
                Unit::Seconds,
                m.cpu_seconds.clone(),
            );
            p.register_with_unit(
                "resident_memory",
                "Resident memory of the process",
                Unit::Bytes,
                m.resident_bytes.clone(),
            );
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// A session was admitted on `provider`.
    pub fn session_admitted(&self, transport: &str, provider: &str) {
        let labels = SessionLabels {
            transport: transport.to_owned(),
            provider: provider.to_owned(),
        };
        self.started.get_or_create(&labels).inc();
        self.live.get_or_create(&labels).inc();
    }

    /// An admitted session ended.
    pub fn session_ended(&self, counts: &SessionCounts<'_>) {
        let labels = SessionLabels {
            transport: counts.transport.to_owned(),
            provider: counts.provider.to_owned(),
        };
        self.live.get_or_create(&labels).dec();
        self.session_closed(counts.close_reason);
        self.frames
            .get_or_create(&FrameLabels { direction: "in" })
            .inc_by(counts.frames_in);
        self.frames
            .get_or_create(&FrameLabels { direction: "out" })
            .inc_by(counts.frames_out);
        self.frames_dropped
            .get_or_create(&DropLabels {
                cause: "bad_payload",
            })
            .inc_by(counts.frames_bad);
        self.frames_dropped
            .get_or_create(&DropLabels {
                cause: "before_admission",
            })
            .inc_by(counts.frames_dropped_early);
        self.failovers.inc_by(counts.failovers);
        self.frames_concealed.inc_by(counts.frames_concealed);
    }

    /// A session that was never admitted (bad key, over its limit) ended.
    pub fn session_closed(&self, close_reason: &str) {
        self.ended
            .get_or_create(&EndLabels {
                close_reason: close_reason.to_owned(),
            })
            .inc();
    }

    /// `provider` became ready `connect_secs` after its connection was started.
    pub fn provider_ready(&self, provider: &str, connect_secs: f64) {
        self.connect_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(connect_secs);
    }

    /// `provider` first answered `secs` after the caller's first audio.
    pub fn provider_first_response(&self, provider: &str, secs: f64) {
        self.first_response_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(secs);
    }

    /// A connection to `provider` failed.
    pub fn provider_failed(&self, provider: &str) {
        self.provider_failures
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// The text for one scrape, with the supervisor's counters and the process's CPU and
    /// memory read now.
    pub fn render(&self, store: &SupervisorStats) -> String {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_queue_depth
            .set(as_i64(store.queued_writes as u64));
        self.store_written.set(as_i64(store.written));
        self.store_retries.set(as_i64(store.retries));
        self.store_dropped.set(as_i64(store.dropped_queue_full));
        self.store_rejected.set(as_i64(store.rejected));
        self.lease_fallbacks.set(as_i64(store.lease_fallbacks));
        if let Some(process) = ProcessUsage::read() {
            // A counter (Prometheus's `process_cpu_seconds_total`): add what was used since
            // the last scrape.
            let used = process.cpu_seconds - self.cpu_seconds.get();
            if used > 0.0 {
                self.cpu_seconds.inc_by(used);
            }
            self.resident_bytes.set(as_i64(process.resident_bytes));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// CPU time and resident memory of this process, from `/proc/self` (Linux; `None` elsewhere).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessUsage {
    cpu_seconds: f64,
    resident_bytes: u64,
}

impl ProcessUsage {
    fn read() -> Option<ProcessUsage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Self::parse(&stat, &status)
    }

    /// `utime` and `stime` (fields 14 and 15 of `stat`, in clock ticks of 1/100 s on Linux)
    /// and `VmRSS` of `status` (kB).
    fn parse(stat: &str, status: &str) -> Option<ProcessUsage> {
        // The command name (field 2) may hold spaces; fields are counted after its `)`.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        const TICKS_PER_SEC: f64 = 100.0;
        let cpu_seconds = (ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SEC;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessUsage {
            cpu_seconds,
            resident_bytes: rss_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_providers_are_counted_and_rendered() {
        let metrics = Metrics::new();
        metrics.session_admitted("telephony", "echo");
        metrics.session_admitted("telephony", "echo");
        metrics.provider_ready("echo", 0.012);
        metrics.provider_first_response("echo", 0.040);
        metrics.session_ended(&SessionCounts {
            transport: "telephony",
            provider: "echo",
            close_reason: "CLIENT_HANGUP",
            frames_in: 100,
            frames_out: 98,
            frames_bad: 2,
            frames_dropped_early: 0,
            frames_concealed: 3,
            failovers: 1,
        });
        metrics.session_closed("AUTH_FAILED");
        metrics.provider_failed("openai");
        let text = metrics.render(&SupervisorStats {
            queued_writes: 3,
            ..SupervisorStats::default()
        });
        for line in [
            r#"voxroute_sessions_live{transport="telephony",provider="echo"} 1"#,
            r#"voxroute_sessions_started_total{transport="telephony",provider="echo"} 2"#,
            r#"voxroute_sessions_ended_total{close_reason="CLIENT_HANGUP"} 1"#,
            r#"voxroute_sessions_ended_total{close_reason="AUTH_FAILED"} 1"#,
            r#"voxroute_frames_total{direction="in"} 100"#,
            r#"voxroute_frames_dropped_total{cause="bad_payload"} 2"#,
            r#"voxroute_failovers_total 1"#,
            r#"voxroute_frames_concealed_total 3"#,
            r#"voxroute_provider_failures_total{provider="openai"} 1"#,
            r#"voxroute_provider_connect_seconds_count{provider="echo"} 1"#,
            r#"voxroute_provider_first_response_seconds_count{provider="echo"} 1"#,
            "voxroute_store_queue_depth 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn proc_files_parse_and_garbage_is_none() {
        let stat = "4242 (voxroute (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        let status = "Name:\tvoxroute\nVmRSS:\t   15668 kB\n";
        assert_eq!(
            ProcessUsage::parse(stat, status),
            Some(ProcessUsage {
                cpu_seconds: 3.0,
                resident_bytes: 15_668 * 1024
            })
        );
        assert_eq!(ProcessUsage::parse("garbage", status), None);
        assert_eq!(ProcessUsage::parse(stat, "no rss here"), None);
    }
}
