//! Job cgroups, on cgroup v1 (one hierarchy per controller, like our own hosts) and cgroup
//! v2, detected at run time. Every job cgroup is created beneath the supervisor's own cgroup
//! in each hierarchy — never at a hierarchy's root next to it, never anywhere else — and is
//! removed after the job.
//!
//! Everything works under an injectable root, so the backends are tested against a fake
//! cgroupfs in a temporary directory.

mod dbus;
pub(crate) mod fs;
pub mod placement;
pub mod systemd;
pub mod v1;
pub mod v2;

use std::io;
use std::path::{Path, PathBuf};

pub use fs::{MountEntry, ProcCgroup};
pub use placement::{Placement, PlacementOptions};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("find this host's cgroups: {0}")]
    Detect(String),
    #[error("cgroup {version}: the {controller} controller is not available to {path}; {hint}")]
    MissingController {
        version: &'static str,
        controller: String,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cgroup v2: {path} holds other processes besides this supervisor, so it cannot delegate controllers to job cgroups; run toolbox under a unit of its own (systemd-run --scope -p Delegate=yes ..., or the toolbox service)")]
    SharedCgroup { path: PathBuf },
    #[error("cgroup v2: processes keep arriving in {path} while toolbox takes it over ({pids:?} still there)")]
    TakeOver { path: PathBuf, pids: Vec<i32> },
    #[error(transparent)]
    Placement(Box<placement::PlacementError>),
    #[error("create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cgroup {path} still has processes after SIGKILL: {pids:?}")]
    NotEmpty { path: PathBuf, pids: Vec<i32> },
}

/// The limits a job cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupLimits {
    pub memory: u64,
    /// Cores; converted to a CFS quota over a 100 ms period.
    pub cpus: f64,
    pub pids: u32,
}

/// What a job cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub memory_peak: u64,
    pub oom_kills: u64,
    pub pids_peak: u64,
    /// Forks (and threads) the pids limit refused.
    pub pids_refused: u64,
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
}

pub const CPU_PERIOD_US: u64 = 100_000;

pub fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The prefix job cgroups are named with; stale ones are found by it.
pub const JOB_PREFIX: &str = "toolbox-";

/// The cgroup name of a job of this supervisor: `toolbox-<supervisor pid>-<job id>`. The
/// pid tells a stale cgroup (its supervisor is gone) from a live one.
pub fn job_name(job_id: &str) -> String {
    format!("{JOB_PREFIX}{}-{job_id}", std::process::id())
}

/// Whether the job cgroup `name` belongs to a supervisor that is no longer running.
fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(JOB_PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove the stale job cgroups among `parent`'s children: kill what is left in them (a
/// pidfd-checked SIGKILL per process), then rmdir. Returns what was removed.
fn sweep(parent: &Path, own: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_stale(&name) || !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let dir = entry.path();
        let _ = fs::kill_until_empty(&dir.join("cgroup.procs"), &own.join(&name), &dir);
        if fs::remove_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// The unified (v2) hierarchy and this process's place in it, when job cgroups go there:
/// cgroup2 at `/sys/fs/cgroup`, or mounted elsewhere with no v1 hierarchy at all (what
/// [`Cgroups::detect_from`] decides too).
fn unified<'m>(
    mounts: &'m [MountEntry],
    own: &[ProcCgroup],
) -> Option<(&'m MountEntry, ProcCgroup)> {
    let at_home = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"));
    let mount = match at_home {
        Some(mount) => mount,
        None if mounts.iter().any(|m| m.fstype == "cgroup") => return None,
        None => mounts.iter().find(|m| m.fstype == "cgroup2")?,
    };
    let line = own.iter().find(|l| l.id == 0 && l.controllers.is_empty())?;
    Some((mount, line.clone()))
}

/// This process's place among the host's cgroups, as placement and detection read it.
struct Here {
    mountinfo: String,
    proc_cgroup: String,
    pid: u32,
    /// What placement decides on, when job cgroups go in the unified hierarchy.
    facts: Option<placement::Facts>,
}

impl Here {
    fn read(options: PlacementOptions) -> Result<Here, CgroupError> {
        let mountinfo = fs::read(Path::new("/proc/self/mountinfo"))?;
        let proc_cgroup = fs::read(Path::new("/proc/self/cgroup"))?;
        let pid = std::process::id();
        let mounts = fs::parse_mountinfo(&mountinfo);
        let facts = match unified(&mounts, &fs::parse_proc_cgroup(&proc_cgroup)) {
            Some((mount, own)) => {
                let euid = nix::unistd::Uid::effective().as_raw();
                let facts =
                    placement::Facts::gather(Path::new("/"), mount, &own, pid, euid, options)
                        .map_err(|e| CgroupError::Placement(Box::new(e)))?;
                Some(facts)
            }
            None => None,
        };
        Ok(Here {
            mountinfo,
            proc_cgroup,
            pid,
            facts,
        })
    }

    fn detect(&self) -> Result<Cgroups, CgroupError> {
        Cgroups::detect_from(Path::new("/"), &self.mountinfo, &self.proc_cgroup, self.pid)
    }
}

/// The cgroup system of this host.
#[derive(Debug)]
pub enum Cgroups {
    V1(v1::V1),
    V2(v2::V2),
}

impl Cgroups {
    /// Whether `/sys/fs/cgroup` is a unified (cgroup v2) hierarchy: one statfs, cheap
    /// enough to ask before anything else is done.
    pub fn unified_host() -> bool {
        nix::sys::statfs::statfs("/sys/fs/cgroup")
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    }

    /// Find and prepare the cgroups this process may put jobs under: on cgroup v2 the
    /// placement step first (which may ask systemd for a scope, or take over a container's
    /// cgroup), then the backend's own preparation. Once per process, never per job.
    pub fn place(options: PlacementOptions) -> Result<(Cgroups, Placement), CgroupError> {
        let boxed = |e| CgroupError::Placement(Box::new(e));
        let mut here = Here::read(options)?;
        let mut placement = Placement::V1;
        if let Some(facts) = &here.facts {
            let decision = placement::decide(facts).map_err(boxed)?;
            let (how, moved) = placement::apply(facts, &decision).map_err(boxed)?;
            placement = how;
            if let Some(text) = moved {
                here.proc_cgroup = text;
            }
        }
        let cgroups = here.detect()?;
        match &cgroups {
            Cgroups::V1(_) => {}
            Cgroups::V2(v2) => v2.prepare(placement == Placement::TookOver)?,
        }
        Ok((cgroups, placement))
    }

    /// What [`Cgroups::place`] would do here, in words, without doing it (`toolbox doctor`):
    /// `Ok` when it would succeed.
    pub fn plan(options: PlacementOptions) -> Result<String, String> {
        let here = Here::read(options).map_err(|e| e.to_string())?;
        let Some(facts) = &here.facts else {
            let cgroups = here.detect().map_err(|e| e.to_string())?;
            return Ok(format!(
                "{} — {}",
                cgroups.version(),
                cgroups.describe().join("; ")
            ));
        };
        let decision = placement::decide(facts);
        let words = format!("v2 — {}", placement::describe(facts, &decision));
        match decision {
            Ok(_) => Ok(words),
            Err(_) => Err(words),
        }
    }

    /// Detect from the given `/proc/self/mountinfo` and `/proc/self/cgroup` texts, with every
    /// cgroupfs path taken beneath `root` (a fake cgroupfs in tests).
    pub fn detect_from(
        root: &Path,
        mountinfo: &str,
        proc_cgroup: &str,
        pid: u32,
    ) -> Result<Cgroups, CgroupError> {
        let mounts = fs::parse_mountinfo(mountinfo);
        let own = fs::parse_proc_cgroup(proc_cgroup);
        let unified = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"));
        if unified.is_some() {
            return Ok(Cgroups::V2(v2::V2::new(root, &mounts, &own, pid)?));
        }
        if mounts.iter().any(|m| m.fstype == "cgroup") {
            return Ok(Cgroups::V1(v1::V1::new(root, &mounts, &own)?));
        }
        if mounts.iter().any(|m| m.fstype == "cgroup2") {
            return Ok(Cgroups::V2(v2::V2::new(root, &mounts, &own, pid)?));
        }
        Err(CgroupError::Detect(
            "no cgroup filesystem is mounted".into(),
        ))
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V1(_) => "v1",
            Cgroups::V2(_) => "v2",
        }
    }

    /// One line per hierarchy: where job cgroups of this supervisor go.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Cgroups::V1(v1) => v1.describe(),
            Cgroups::V2(v2) => v2.describe(),
        }
    }

    /// Remove job cgroups left by supervisors that died (killed, or crashed) before they
    /// could clean up. Returns what was removed.
    pub fn sweep_stale(&self) -> Vec<PathBuf> {
        match self {
            Cgroups::V1(v1) => v1
                .parents()
                .flat_map(|(parent, own)| sweep(parent, own))
                .collect(),
            Cgroups::V2(v2) => {
                let (parent, own) = v2.parent();
                sweep(parent, own)
            }
        }
    }

    /// The job's read-only view of its own cgroup `name` at `/sys/fs/cgroup`, once it
    /// exists: the binds (host directory, where in the jail) — one on v2, one per
    /// hierarchy on v1 — and the symlinks of a v1 layout (target, link).
    pub fn view(&self, name: &str) -> CgroupBinds {
        match self {
            Cgroups::V1(v1) => v1.view(name),
            Cgroups::V2(v2) => (
                vec![(v2.parent().0.join(name), "/sys/fs/cgroup".to_string())],
                Vec::new(),
            ),
        }
    }

    /// cgroup v1: the `tasks` files of the job cgroup `name`, which the jail's PID 1 writes
    /// itself into once the cgroup is made (it is told before, and opens their parents while
    /// it can still see them). Empty on v2, where PID 1 is cloned into the cgroup.
    pub fn tasks_for(&self, name: &str) -> Vec<String> {
        match self {
            Cgroups::V1(v1) => v1.tasks_for(name),
            Cgroups::V2(_) => Vec::new(),
        }
    }

    /// Make the job cgroup `name` (which starts with [`JOB_PREFIX`]), with no limits yet:
    /// [`CgroupManager::set_limits`] follows while the shim builds the jail, before the tool
    /// starts.
    pub fn make(&self, name: &str) -> Result<JobCgroup, CgroupError> {
        match self {
            Cgroups::V1(v1) => v1.make(name).map(JobCgroup::V1),
            Cgroups::V2(v2) => v2.make(name).map(JobCgroup::V2),
        }
    }

    /// Make the job cgroup `name` with its limits set.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<JobCgroup, CgroupError> {
        let job = self.make(name)?;
        if let Err(err) = job.set_limits(limits, None) {
            let _ = job.remove();
            return Err(err);
        }
        Ok(job)
    }
}

/// A job's view of its cgroup: binds (host directory, where in the jail) and symlinks
/// (target, link).
pub type CgroupBinds = (Vec<(PathBuf, String)>, Vec<(String, String)>);

/// What a job cgroup can do, whichever the version.
pub trait CgroupManager {
    /// Write the job's limits. `had`: the limits it has already, when it was prepared ahead
    /// of its job with a like job's; then only what differs is written.
    fn set_limits(
        &self,
        limits: &CgroupLimits,
        had: Option<&CgroupLimits>,
    ) -> Result<(), CgroupError>;

    /// Every process in it now.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// SIGKILL every process in it, until none is left.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Measurements so far.
    fn stats(&self) -> CgroupStats;
    /// Kill what is left and remove the cgroup (every hierarchy).
    fn remove(self) -> Result<(), CgroupError>;
    /// The paths this cgroup occupies.
    fn paths(&self) -> Vec<PathBuf>;
    /// Its path as `/proc/PID/cgroup` of a member shows it (v1: in the memory hierarchy).
    fn path(&self) -> PathBuf;
}

#[derive(Debug)]
pub enum JobCgroup {
    V1(v1::JobCgroup),
    V2(v2::JobCgroup),
}

impl JobCgroup {
    /// cgroup v2: the directory, to clone the jail's PID 1 into (`CLONE_INTO_CGROUP`).
    pub fn clone_target(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupError> {
        match self {
            JobCgroup::V1(_) => Ok(None),
            JobCgroup::V2(cg) => cg.clone_target().map(Some),
        }
    }
}

impl CgroupManager for JobCgroup {
    fn set_limits(
        &self,
        limits: &CgroupLimits,
        had: Option<&CgroupLimits>,
    ) -> Result<(), CgroupError> {
        match self {
            JobCgroup::V1(cg) => cg.set_limits(limits, had),
            JobCgroup::V2(cg) => cg.set_limits(limits, had),
        }
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        match self {
            JobCgroup::V1(cg) => cg.pids(),
            JobCgroup::V2(cg) => cg.pids(),
        }
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        match self {
            JobCgroup::V1(cg) => cg.kill_all(),
            JobCgroup::V2(cg) => cg.kill_all(),
        }
    }

    fn stats(&self) -> CgroupStats {
        match self {
            JobCgroup::V1(cg) => cg.stats(),
            JobCgroup::V2(cg) => cg.stats(),
        }
    }
    fn remove(self) -> Result<(), CgroupError> {
        match self {
            JobCgroup::V1(cg) => cg.remove(),
            JobCgroup::V2(cg) => cg.remove(),
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        match self {
            JobCgroup::V1(cg) => cg.paths(),
            JobCgroup::V2(cg) => cg.paths(),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            JobCgroup::V1(cg) => cg.path(),
            JobCgroup::V2(cg) => cg.path(),
        }
    }
}
