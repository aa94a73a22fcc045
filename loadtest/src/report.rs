//! [`Report`]: what a run measured, as JSON (serde; the schema is these structs, documented
//! field by field) and as a human summary ([`Report::summary`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{LoadError, Target, Transport};
use crate::measure::{DspCost, LatencySummary};

/// The value of [`Report::schema`]; bumped when a field changes meaning.
pub const SCHEMA: &str = "voxroute-loadtest/1";

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// What was run.
    pub config: ReportConfig,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// Wall-clock length of the whole run, ramp and drain included, in seconds.
    pub wall_secs: f64,
    /// Sessions attempted, established, failed.
    pub sessions: SessionCounts,
    /// 20 ms frames, each way.
    pub frames: FrameCounts,
    /// Added latency per frame, on the load generator's one clock.
    pub latency_ms: Latencies,
    /// WebSocket upgrade started by the caller → first frame received by the provider, per
    /// established session.
    pub setup_ms: LatencySummary,
    /// The router's CPU and memory, when its pid was given.
    pub router: Option<RouterUsage>,
    /// The DSP-only cost of the same chains, measured in this process after the sessions.
    pub dsp: Option<DspCost>,
    /// DSP cost ÷ router cost (CPU seconds per session-second each): 1.0 would mean the
    /// router does nothing but DSP. `None` without a router pid or a DSP measurement.
    pub efficiency: Option<f64>,
    /// The load generator's own CPU use (it shares the machine with the router).
    pub load_generator: LoadGeneratorUsage,
}

/// The run's settings, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    /// The endpoint the callers dialled.
    pub router_url: String,
    /// `twilio` or `native`.
    pub transport: Transport,
    /// Sessions asked for.
    pub sessions: u32,
    /// Ramp, in seconds.
    pub ramp_secs: f64,
    /// Steady window after the ramp, in seconds.
    pub duration_secs: f64,
    /// The provider or route asked for.
    pub target: Target,
    /// The in-process provider's URL.
    pub provider_url: String,
    /// The PCM rate the router announced to the provider, in Hz (0: no connection came).
    pub provider_sample_rate_hz: u32,
    /// The router's pid, if given.
    pub router_pid: Option<u32>,
    /// The speech sent: a WAV path, or `synthetic`.
    pub speech: String,
}

/// Session outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionCounts {
    /// Sessions started.
    pub attempted: u64,
    /// Sessions whose first frame reached the provider.
    pub established: u64,
    /// Sessions that were not established.
    pub failed: u64,
    /// Established sessions the router closed before the caller hung up.
    pub dropped: u64,
    /// Why sessions failed or dropped, by reason: `connect` (the upgrade failed),
    /// `no_provider_frame` (no frame of the session reached the provider, or its preamble
    /// could not be read), `closed_early` (the router closed first), `timeout` (still running
    /// at the run's deadline).
    pub failures: BTreeMap<String, u64>,
    /// Upstream connections the provider accepted.
    pub provider_connections: u64,
    /// Upstream connections whose preamble named no session of the run.
    pub unidentified_connections: u64,
}

/// Frame counts, summed over sessions. A frame is 20 ms of audio.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FrameCounts {
    /// Frames the callers sent.
    pub sent: u64,
    /// Frames the provider received (and echoed at once).
    pub received_by_provider: u64,
    /// Frames that came back to the callers.
    pub received: u64,
    /// Sent but never received by the provider.
    pub lost_to_provider: u64,
    /// Echoed by the provider but never received by the caller.
    pub lost_to_caller: u64,
    /// Sent but never back at the caller (every frame must come back): the loss figure.
    pub lost: u64,
    /// Marker positions checked at either end.
    pub marker_checks: u64,
    /// Marker positions that held the wrong symbol: frames lost, duplicated or reordered
    /// inside the router (later frames of that session give no latency sample).
    pub marker_mismatches: u64,
    /// Frames over 10 s late (no latency sample).
    pub late: u64,
    /// How late the callers' 20 ms send clock ran at worst, in milliseconds (a busy load
    /// generator shows here, not as router latency).
    pub pacing_late_max_ms: f64,
}

/// The three added latencies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// Caller sends frame k → provider receives frame k.
    pub caller_to_provider: LatencySummary,
    /// Provider echoes frame k → caller receives it.
    pub provider_to_caller: LatencySummary,
    /// Caller sends frame k → caller receives its echo.
    pub round_trip: LatencySummary,
}

/// The router process's use of CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouterUsage {
    /// CPU time over the steady window (end of ramp → end of duration), in seconds.
    pub cpu_seconds_steady: f64,
    /// Session-seconds in the steady window (established sessions × its length).
    pub session_seconds_steady: f64,
    /// `cpu_seconds_steady ÷ session_seconds_steady`.
    pub cpu_seconds_per_session_second: f64,
    /// CPU time over the whole run, in seconds.
    pub cpu_seconds_total: f64,
    /// Resident memory before the first session, in KiB.
    pub rss_before_kib: u64,
    /// Resident memory at the end of the steady window, all sessions live, in KiB.
    pub rss_steady_kib: u64,
    /// Resident memory after every session ended (and 1 s passed), in KiB.
    pub rss_after_kib: u64,
    /// `(rss_steady_kib − rss_before_kib) ÷ established sessions`, in KiB.
    pub rss_per_session_kib: f64,
}

/// The load generator's own CPU time, from `/proc/self/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadGeneratorUsage {
    /// CPU seconds per session-second over the steady window.
    pub cpu_seconds_per_session_second: f64,
}

impl Report {
    /// Writes the report as pretty JSON to `path`.
    ///
    /// # Errors
    /// [`LoadError::Report`] when it cannot be serialised or written.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| LoadError::Report(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| LoadError::Report(format!("{}: {e}", path.display())))
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let s = &self.sessions;
        let f = &self.frames;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "voxroute load test: {} session(s) over {} to {}, ramp {:.1} s, steady {:.1} s, \
             provider {} at {} Hz",
            c.sessions,
            c.transport.as_str(),
            c.router_url,
            c.ramp_secs,
            c.duration_secs,
            c.provider_url,
            c.provider_sample_rate_hz
        );
        let _ = writeln!(
            out,
            "sessions   attempted {}  established {}  failed {}  dropped {}{}",
            s.attempted,
            s.established,
            s.failed,
            s.dropped,
            if s.failures.is_empty() {
                String::new()
            } else {
                format!("  ({:?})", s.failures)
            }
        );
        let _ = writeln!(
            out,
            "frames     sent {}  at provider {}  back {}  lost {} (to provider {}, to caller {})  \
             marker mismatches {}/{}  late {}",
            f.sent,
            f.received_by_provider,
            f.received,
            f.lost,
            f.lost_to_provider,
            f.lost_to_caller,
            f.marker_mismatches,
            f.marker_checks,
            f.late
        );
        let line = |name: &str, l: &LatencySummary| {
            format!(
                "{name:<22} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  (n={})\n",
                l.p50_ms, l.p99_ms, l.max_ms, l.count
            )
        };
        out.push_str(&line(
            "caller → provider",
            &self.latency_ms.caller_to_provider,
        ));
        out.push_str(&line(
            "provider → caller",
            &self.latency_ms.provider_to_caller,
        ));
        out.push_str(&line("round trip", &self.latency_ms.round_trip));
        out.push_str(&line("set-up", &self.setup_ms));
        if let Some(dsp) = &self.dsp {
            let _ = writeln!(
                out,
                "DSP delay              ingress {:.2} ms  egress {:.2} ms (algorithmic: \
                 resamplers and Opus lookahead; shifts the audio inside the frames; add it to \
                 the figures above for mouth to ear)",
                dsp.ingress_delay_ms, dsp.egress_delay_ms
            );
            let _ = writeln!(
                out,
                "DSP only               {:.2} + {:.2} µs per frame = {:.6} CPU s per \
                 session-second",
                dsp.ingress_us_per_frame,
                dsp.egress_us_per_frame,
                dsp.cpu_seconds_per_session_second
            );
        }
        match &self.router {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "router                 {:.6} CPU s per session-second ({:.2} s over {:.1} \
                     session-s)  RSS {:.1} KiB per session ({} → {} → {} KiB)",
                    r.cpu_seconds_per_session_second,
                    r.cpu_seconds_steady,
                    r.session_seconds_steady,
                    r.rss_per_session_kib,
                    r.rss_before_kib,
                    r.rss_steady_kib,
                    r.rss_after_kib
                );
            }
            None => {
                out.push_str("router                 (no --router-pid: CPU and RSS not read)\n")
            }
        }
        if let Some(e) = self.efficiency {
            let _ = writeln!(
                out,
                "efficiency             {e:.3} (DSP cost ÷ router cost)"
            );
        }
        let _ = writeln!(
            out,
            "load generator         {:.6} CPU s per session-second  (send clock late by up to \
             {:.1} ms)",
            self.load_generator.cpu_seconds_per_session_second, f.pacing_late_max_ms
        );
        out
    }
}
