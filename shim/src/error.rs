//! What can go wrong while building a jail, one variant per step, each naming what it was
//! working on.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("read the job spec from fd 3: {0}")]
    Spec(String),
    #[error(
        "the shim runs as pid {0}, not as PID 1 of a new pid namespace; refusing to build a jail"
    )]
    NotPidOne(i32),
    #[error("close inherited descriptors: {0}")]
    CloseFds(Errno),
    #[error("block signals for the shim: {0}")]
    Signals(Errno),
    #[error("join the job's cgroup through {path}: {errno}")]
    CgroupJoin { path: String, errno: Errno },
    #[error("create the jail's network and mount namespaces: {0}")]
    Namespaces(Errno),
    #[error("enter a new cgroup namespace: {0}")]
    CgroupNamespace(Errno),
    #[error("set the tool's CPUs: {0}")]
    Affinity(Errno),
    #[error("the workspace {path} belongs to uid {owner} and the job runs as uid {uid}, so it needs an idmapped mount to write there (files it writes then belong to uid {owner}), and that failed: {errno} — this filesystem or kernel cannot idmap it (Linux 5.12+ on ext4, xfs, btrfs, tmpfs 6.3+, overlayfs 5.19+). Give the workspace to the unprivileged user the job should run as (chown -R), or move it to a filesystem that can be idmapped")]
    Idmap {
        path: String,
        owner: u32,
        uid: u32,
        errno: Errno,
    },
    #[error("set the jail's hostname: {0}")]
    Hostname(Errno),
    #[error("bring up lo in the jail's network namespace: {0}")]
    Loopback(Errno),
    #[error("make the mount tree private: {0}")]
    MountPrivate(Errno),
    #[error("open {path} to bind it into the jail: {errno}")]
    BindSource { path: String, errno: Errno },
    #[error("create {fstype} for {dst}: {errno}")]
    NewFs {
        fstype: &'static str,
        dst: String,
        errno: Errno,
    },
    #[error("prepare mount point {dst}: {errno}")]
    MountPoint { dst: String, errno: Errno },
    #[error("mount point {dst} is not a {expected} on the host view")]
    MountPointKind { dst: String, expected: &'static str },
    #[error("mount {what} at {dst}: {errno}")]
    Mount {
        what: String,
        dst: String,
        errno: Errno,
    },
    #[error("create symlink {dst} -> {target}: {errno}")]
    Symlink {
        dst: String,
        target: String,
        errno: Errno,
    },
    #[error("pivot_root into the jail's root: {0}")]
    PivotRoot(Errno),
    #[error("fork the tool: {0}")]
    Fork(Errno),
    #[error("start a new session for the tool: {0}")]
    Setsid(Errno),
    #[error("set rlimit {resource:?} to {soft}/{hard}: {errno}")]
    Rlimit {
        resource: toolbox_spec::RlimitKind,
        soft: u64,
        hard: u64,
        errno: Errno,
    },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("landlock ABI {found} is below the policy's floor {required}; this kernel cannot confine the job's filesystem access")]
    LandlockAbi { found: u32, required: u32 },
    #[error("switch to uid {uid} gid {gid}: {errno}")]
    Ids { uid: u32, gid: u32, errno: Errno },
    #[error("drop capabilities: {0}")]
    Capabilities(String),
    #[error("set no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error("enter the workspace {path} as uid {uid}: {errno}")]
    Cwd {
        path: String,
        uid: u32,
        errno: Errno,
    },
    #[error("install the seccomp filter: {0}")]
    Seccomp(Errno),
    #[error("wait for the jail: {0}")]
    Wait(Errno),
    #[error("the job's network namespace was never made")]
    NetworkNotReady,
    /// The spec pipe closed where the cgroup's word was due: the supervisor gave up on the
    /// job (and knows why), or is gone. Nothing to report.
    #[error("the supervisor gave up on the job before its cgroup was made")]
    Abandoned,
}

impl SetupError {
    /// A short, stable name for the recipe step that failed.
    pub fn step(&self) -> &'static str {
        match self {
            SetupError::Spec(_) | SetupError::Abandoned => "spec",
            SetupError::CloseFds(_) => "close_fds",
            SetupError::NotPidOne(_) => "namespaces",
            SetupError::Signals(_) => "signals",
            SetupError::Namespaces(_) | SetupError::CgroupNamespace(_) => "namespaces",
            SetupError::CgroupJoin { .. } => "cgroup",
            SetupError::Affinity(_) => "cpus",
            SetupError::Idmap { .. } => "workspace",
            SetupError::Hostname(_) => "hostname",
            SetupError::Loopback(_) => "network",
            SetupError::MountPrivate(_)
            | SetupError::BindSource { .. }
            | SetupError::NewFs { .. }
            | SetupError::MountPoint { .. }
            | SetupError::MountPointKind { .. }
            | SetupError::Mount { .. }
            | SetupError::Symlink { .. } => "mounts",
            SetupError::PivotRoot(_) => "pivot_root",
            SetupError::Fork(_) | SetupError::Wait(_) => "process",
            SetupError::NetworkNotReady => "network",
            SetupError::Setsid(_) => "setsid",
            SetupError::Rlimit { .. } => "rlimits",
            SetupError::Landlock(_) | SetupError::LandlockAbi { .. } => "landlock",
            SetupError::Ids { .. } => "ids",
            SetupError::Capabilities(_) => "capabilities",
            SetupError::NoNewPrivs(_) => "no_new_privs",
            SetupError::Cwd { .. } => "cwd",
            SetupError::Seccomp(_) => "seccomp",
        }
    }
}
