//! The daemon's counters, rendered in the Prometheus text format for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::record::{JobResult, JobStatus};

/// Bucket bounds in seconds: from a `true` through the socket to a long build.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Counters {
    by_status: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    oom_kills: u64,
    dropped_bytes: u64,
    /// Connections through jobs' egress proxies: allowed, refused, failed.
    egress: [u64; 3],
    /// Bytes through them: up (from jobs), down.
    egress_bytes: [u64; 2],
    queue_wait: Histogram,
    run_duration: Histogram,
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Exited => "exited",
        JobStatus::Signaled => "signaled",
        JobStatus::Timeout => "timeout",
        JobStatus::Oom => "oom",
        JobStatus::Cancelled => "cancelled",
        JobStatus::SetupError => "setup_error",
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        // Counters stay meaningful even if a holder panicked: keep counting.
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut counters)
    }

    pub fn refused(&self, code: &'static str) {
        self.with(|c| *c.refused.entry(code).or_default() += 1);
    }

    pub fn queued_for(&self, wait: Duration) {
        self.with(|c| c.queue_wait.observe(wait));
    }

    pub fn finished(&self, result: &JobResult, ran: Duration) {
        self.with(|c| {
            *c.by_status.entry(status_name(result.status)).or_default() += 1;
            c.oom_kills += result.oom_kills;
            c.dropped_bytes += result.stdout_dropped_bytes + result.stderr_dropped_bytes;
            if let Some(egress) = &result.egress {
                c.egress[0] += egress.allowed;
                c.egress[1] += egress.refused;
                c.egress[2] += egress.failed;
                c.egress_bytes[0] += egress.bytes_up;
                c.egress_bytes[1] += egress.bytes_down;
            }
            c.run_duration.observe(ran);
        });
    }

    pub fn render(&self, running: usize, queued: usize, max_jobs: usize) -> String {
        let mut out = String::new();
        self.with(|c| {
            let _ = writeln!(
                out,
                "# HELP toolbox_jobs_total Jobs finished, by final status.\n# TYPE toolbox_jobs_total counter"
            );
            for status in [
                JobStatus::Exited,
                JobStatus::Signaled,
                JobStatus::Timeout,
                JobStatus::Oom,
                JobStatus::Cancelled,
                JobStatus::SetupError,
            ] {
                let name = status_name(status);
                let n = c.by_status.get(name).copied().unwrap_or(0);
                let _ = writeln!(out, "toolbox_jobs_total{{status=\"{name}\"}} {n}");
            }
            let get = |name: &str| c.by_status.get(name).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "# HELP toolbox_jobs_running Jobs running now.\n# TYPE toolbox_jobs_running gauge\ntoolbox_jobs_running {running}"
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_jobs_queued Jobs waiting for a slot now.\n# TYPE toolbox_jobs_queued gauge\ntoolbox_jobs_queued {queued}"
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_max_jobs Slots.\n# TYPE toolbox_max_jobs gauge\ntoolbox_max_jobs {max_jobs}"
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_oom_kills_total OOM kills inside jobs.\n# TYPE toolbox_oom_kills_total counter\ntoolbox_oom_kills_total {}",
                c.oom_kills
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_timeouts_total Jobs ended by their timeout.\n# TYPE toolbox_timeouts_total counter\ntoolbox_timeouts_total {}",
                get("timeout")
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_cancellations_total Jobs cancelled (DELETE, client gone, shutdown).\n# TYPE toolbox_cancellations_total counter\ntoolbox_cancellations_total {}",
                get("cancelled")
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_output_dropped_bytes_total Output bytes cut by the caps.\n# TYPE toolbox_output_dropped_bytes_total counter\ntoolbox_output_dropped_bytes_total {}",
                c.dropped_bytes
            );
            let _ = writeln!(
                out,
                "# HELP toolbox_egress_connections_total Connections through jobs' egress proxies (mode allowlist, and none's refusals), by decision.\n# TYPE toolbox_egress_connections_total counter"
            );
            for (decision, n) in ["allowed", "refused", "failed"].iter().zip(c.egress) {
                let _ = writeln!(
                    out,
                    "toolbox_egress_connections_total{{decision=\"{decision}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP toolbox_egress_bytes_total Bytes through jobs' egress proxies, up (from the jobs) and down.\n# TYPE toolbox_egress_bytes_total counter"
            );
            for (direction, n) in ["up", "down"].iter().zip(c.egress_bytes) {
                let _ = writeln!(
                    out,
                    "toolbox_egress_bytes_total{{direction=\"{direction}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP toolbox_requests_refused_total Requests refused before they ran, by error code.\n# TYPE toolbox_requests_refused_total counter"
            );
            for (code, n) in &c.refused {
                let _ = writeln!(out, "toolbox_requests_refused_total{{code=\"{code}\"}} {n}");
            }
            c.queue_wait.render(
                &mut out,
                "toolbox_queue_wait_seconds",
                "Time jobs waited for a slot.",
            );
            c.run_duration.render(
                &mut out,
                "toolbox_job_duration_seconds",
                "Time from start to result, per job.",
            );
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 0"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"2.5\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("x_count 2"), "{out}");
    }
}
