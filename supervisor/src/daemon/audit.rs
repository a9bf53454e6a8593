//! The audit log: one JSON line per job, appended and handed to the kernel before the client
//! hears the result.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context as _;

use super::api::Peer;
use crate::job::JobPlan;
use crate::record::JobResult;

#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Open (or create, mode 0600) `path` for appending.
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("open the audit log {}", path.display()))?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Append the line for one finished job: a single write(2) of the whole line, so lines
    /// never interleave, even between daemons sharing the file.
    pub fn record(
        &self,
        peer: &Peer,
        plan: &JobPlan,
        cwd: &Path,
        result: &JobResult,
    ) -> std::io::Result<()> {
        let line = serde_json::json!({
            "time": rfc3339(SystemTime::now()),
            "job_id": plan.job_id,
            "peer": peer,
            "argv": plan.argv,
            "cwd": cwd,
            "policy": { "name": plan.policy, "sha256": plan.policy_sha256.get() },
            "uid": plan.uid,
            "gid": plan.gid,
            "network": plan.network,
            "limits": {
                "timeout_ms": plan.limits.timeout.as_millis() as u64,
                "grace_ms": plan.limits.grace.as_millis() as u64,
                "memory_bytes": plan.limits.memory,
                "cpus": plan.limits.cpus,
                "pids": plan.limits.pids,
                "output_bytes": plan.limits.output,
            },
            "result": result,
        })
        .to_string()
            + "\n";
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes())
    }
}

/// UTC, to the millisecond: 2026-11-23T10:04:05.123Z.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_435_445, 123), "2026-11-23T12:04:05.123Z");
    }
}
