//! The result record: how a job ended, what it used, and what was really enforced.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// The tool exited by itself; `exit_code` is its own.
    Exited,
    /// The tool was killed by a signal (not the timeout, not the OOM killer).
    Signaled,
    /// The job ran past its timeout and was terminated.
    Timeout,
    /// The job ran out of memory: the OOM killer ended it, or ended some of its processes
    /// while the main one went on (then `signal` is empty; `reason` says how it ended).
    Oom,
    /// The job was cancelled (Ctrl-C, a cancel request, or its client left).
    Cancelled,
    /// The jail could not be set up, or the command could not be started.
    SetupError,
}

/// Exit statuses of `toolbox run`, following timeout(1) and docker run.
pub mod exit {
    pub const TIMEOUT: i32 = 124;
    pub const TOOLBOX_FAILED: i32 = 125;
    pub const NOT_EXECUTABLE: i32 = 126;
    pub const NOT_FOUND: i32 = 127;
    pub const SIGNAL_BASE: i32 = 128;
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub job_id: String,
    pub policy: PolicyRef,
    pub status: JobStatus,
    /// What `toolbox run` exits with.
    pub exit_code: i32,
    /// The signal that ended the tool, if one did.
    pub signal: Option<i32>,
    /// Set for `setup_error`: what went wrong, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the job did not simply exit: what ended it or what it ran into (the OOM
    /// killer, the timeout, the pids limit, a signal, a cancel), in a sentence that names
    /// the limit and how to raise it. `toolbox run` prints it on stderr after the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: u64,
    pub cpu_user_ms: u64,
    pub cpu_system_ms: u64,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
    pub pids_peak: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_dropped_bytes: u64,
    pub stderr_dropped_bytes: u64,
    /// For a command exec'd into a running job (`POST /v1/jobs/{id}/exec`): that job's id.
    /// Its usage is the job's, counted in the job's record, not here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_of: Option<String>,
    pub isolation: Isolation,
    /// What went through the job's egress proxy, connection by connection: always in mode
    /// `allowlist`, and in mode `none` when the job tried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::Egress>,
}

/// The policy a job ran under: its name, and the SHA-256 of its resolved content
/// (`toolbox policy show NAME` prints both).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRef {
    pub name: String,
    pub sha256: String,
}

/// What was enforced — reported by the jail itself just before exec, never what was merely
/// asked for. Empty when the tool never started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Isolation {
    pub namespaces: Vec<String>,
    pub user_namespace: bool,
    pub cgroup: String,
    /// The job's cgroup, as `/proc/PID/cgroup` names it (on v1, in the memory hierarchy).
    pub cgroup_path: Option<String>,
    /// How toolbox got the cgroup the job's went under: `own` (delegated to it, or v1),
    /// `systemd_scope` (a scope it asked systemd for), `took_over` (a container's cgroup
    /// whose other processes it moved into `init`).
    pub cgroup_placement: Option<&'static str>,
    pub cgroup_limits: Option<Limits>,
    pub landlock_abi: Option<u32>,
    pub landlock_fs: bool,
    pub landlock_tcp: bool,
    pub landlock_scoped: bool,
    pub seccomp: bool,
    /// The policy's seccomp profile (`default`, `strict`).
    pub seccomp_profile: String,
    /// Seccomp filters the job ran under besides toolbox's own, inherited from whoever
    /// started toolbox (a systemd unit's sandboxing options, a container's profile): 0
    /// unless something outside toolbox narrowed what the job may do.
    pub seccomp_inherited_filters: u32,
    pub no_new_privs: bool,
    pub capabilities: &'static str,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Set when the workspace was not the tool's to write and was idmapped for it: the uid
    /// its files belong to on disk (the workspace's owner), whatever the tool runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_owner_uid: Option<u32>,
    pub network: String,
    /// Whether the jail was prepared before the job came (the daemon's pool of fresh jails;
    /// see `toolbox serve --warm`): it served this job alone, as a cold one would, and
    /// isolates it the same.
    pub warm: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u32,
    pub timeout_ms: u64,
    pub grace_ms: u64,
    pub output_bytes: u64,
}
