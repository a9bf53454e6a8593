//! cgroup v2: one unified hierarchy. Job cgroups are children of the supervisor's own
//! cgroup, which must delegate memory, pids and cpu to them. The "no internal processes"
//! rule means the supervisor cannot stay in a cgroup whose controllers it hands down, so
//! [`V2::prepare`] moves it into a leaf (`supervisor`) of its own cgroup first — which is
//! only possible when that cgroup holds nothing but this process (a systemd unit with
//! `Delegate=yes`, a container's root), or when placement (`placement.rs`) found it or made
//! it so.
//!
//! The supervisor clones the jail's PID 1 straight into the job cgroup
//! (`CLONE_INTO_CGROUP`), so no process is ever moved on the hot path.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use super::fs::{self, MountEntry, ProcCgroup};
use super::{cpu_quota_us, CgroupError, CgroupLimits, CgroupStats, CPU_PERIOD_US};

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The leaf the supervisor moves into when its cgroup must delegate controllers.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// Where the other processes of a cgroup toolbox takes over go (the name docker's dind and
/// podman use for the same move).
pub const INIT_LEAF: &str = "init";

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Move one process into `dir`; one that has exited meanwhile is no error.
fn move_process(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    match fs::write(&dir.join("cgroup.procs"), &pid.to_string()) {
        Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
            Ok(())
        }
        other => other,
    }
}

#[derive(Debug)]
pub struct V2 {
    /// The supervisor's cgroup as it was found (job cgroups go here).
    own_dir: PathBuf,
    /// The same, as `/proc/self/cgroup` names it.
    own: PathBuf,
    pid: u32,
}

impl V2 {
    pub fn new(
        root: &Path,
        mounts: &[MountEntry],
        own: &[ProcCgroup],
        pid: u32,
    ) -> Result<V2, CgroupError> {
        let mount = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .max_by_key(|m| m.mount_point == Path::new("/sys/fs/cgroup"))
            .ok_or_else(|| CgroupError::Detect("no cgroup2 filesystem is mounted".into()))?;
        let line = own
            .iter()
            .find(|l| l.id == 0 && l.controllers.is_empty())
            .ok_or_else(|| {
                CgroupError::Detect("/proc/self/cgroup has no cgroup v2 line (0::)".into())
            })?;
        // After prepare() moved us into our leaf, our cgroup is the leaf's parent.
        let own_path = if line.path.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) {
            line.path.parent().unwrap_or(&line.path).to_path_buf()
        } else {
            line.path.clone()
        };
        Ok(V2 {
            own_dir: fs::cgroup_dir(root, mount, &own_path),
            own: own_path,
            pid,
        })
    }

    /// The directory for job cgroups, with its path as /proc/PID/cgroup shows it.
    pub fn parent(&self) -> (&Path, &Path) {
        (&self.own_dir, &self.own)
    }

    pub fn describe(&self) -> Vec<String> {
        vec![format!(
            "memory,pids,cpu: jobs under {}",
            self.own_dir.display()
        )]
    }

    /// Make the supervisor's cgroup able to hold job cgroups: move the supervisor into its
    /// leaf and enable the controllers for the children. The cgroup must hold nothing else —
    /// unless `take` (placement decided to take it over): then every other process moves
    /// into an `init` child first, again as long as processes arrive (a `docker exec` into
    /// the container) and the kernel refuses the controllers (EBUSY). Idempotent.
    pub fn prepare(&self, take: bool) -> Result<(), CgroupError> {
        let available = fs::read(&self.own_dir.join("cgroup.controllers"))?;
        for controller in CONTROLLERS {
            if !available.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::MissingController {
                    version: "v2",
                    controller: controller.to_string(),
                    path: self.own_dir.clone(),
                    hint: "delegate it to toolbox's cgroup (systemd: Delegate=yes; a container: run it with its cgroups writable)",
                });
            }
        }
        let subtree = self.own_dir.join("cgroup.subtree_control");
        let enabled = fs::read(&subtree)?;
        if CONTROLLERS
            .iter()
            .all(|c| enabled.split_whitespace().any(|e| e == *c))
        {
            return Ok(());
        }
        let wanted: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        let wanted = wanted.join(" ");
        let procs = self.own_dir.join("cgroup.procs");
        let mut others = Vec::new();
        for attempt in 0u32..200 {
            let pids = fs::read_pids(&procs)?;
            others = pids
                .iter()
                .copied()
                .filter(|&p| p as u32 != self.pid)
                .collect();
            if !others.is_empty() {
                if !take {
                    return Err(CgroupError::SharedCgroup {
                        path: self.own_dir.clone(),
                    });
                }
                let init = self.own_dir.join(INIT_LEAF);
                make_dir(&init)?;
                for pid in &others {
                    move_process(&init, *pid)?;
                }
            }
            if pids.iter().any(|&p| p as u32 == self.pid) {
                let leaf = self.own_dir.join(SUPERVISOR_LEAF);
                make_dir(&leaf)?;
                fs::write(&leaf.join("cgroup.procs"), &self.pid.to_string())?;
            }
            match fs::write(&subtree, &wanted) {
                Ok(()) => return Ok(()),
                // A process arrived after we read the list (or is still on its way out).
                Err(CgroupError::Write { source, .. })
                    if take && source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(10)) + 1));
                }
                Err(err) => return Err(err),
            }
        }
        Err(CgroupError::TakeOver {
            path: self.own_dir.clone(),
            pids: others,
        })
    }

    pub fn make(&self, name: &str) -> Result<JobCgroup, CgroupError> {
        let dir = self.own_dir.join(name);
        std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        Ok(JobCgroup {
            held: fs::Held::open(STATS.map(|name| (name, dir.join(name)))),
            dir,
            member: self.own.join(name),
        })
    }
}

/// The files [`JobCgroup::stats`] reads.
const STATS: [&str; 5] = [
    "memory.peak",
    "memory.events",
    "pids.peak",
    "pids.events",
    "cpu.stat",
];

#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    member: PathBuf,
    /// [`STATS`], held open from the start.
    held: fs::Held,
}

impl JobCgroup {
    /// Write `limits`; `had`, the limits the cgroup has already (set when it was prepared
    /// ahead of its job), leaves out what is the same.
    pub fn set_limits(
        &self,
        limits: &CgroupLimits,
        had: Option<&CgroupLimits>,
    ) -> Result<(), CgroupError> {
        if had.map(|h| h.memory) != Some(limits.memory) {
            fs::write(&self.dir.join("memory.max"), &limits.memory.to_string())?;
        }
        let swap = self.dir.join("memory.swap.max");
        if had.is_none() && swap.exists() {
            fs::write(&swap, "0")?;
        }
        if had.map(|h| h.pids) != Some(limits.pids) {
            fs::write(&self.dir.join("pids.max"), &limits.pids.to_string())?;
        }
        let quota = cpu_quota_us(limits.cpus);
        if had.map(|h| cpu_quota_us(h.cpus)) != Some(quota) {
            fs::write(
                &self.dir.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        Ok(())
    }

    /// The directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn clone_target(&self) -> Result<OwnedFd, CgroupError> {
        fs::open(&self.dir, OFlag::O_PATH | OFlag::O_DIRECTORY)
    }

    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fs::read_pids(&self.dir.join("cgroup.procs"))
    }

    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        let kill = self.dir.join("cgroup.kill");
        if !kill.exists() {
            // Before 5.14: one pid at a time.
            return fs::kill_until_empty(&procs, &self.member, &self.dir);
        }
        if fs::read_pids(&procs)?.is_empty() {
            return Ok(());
        }
        fs::write(&kill, "1")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = fs::read_pids(&procs)?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.dir.clone(),
                    pids,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stats(&self) -> CgroupStats {
        let text = |name: &str| {
            self.held
                .text(name, Some(self.dir.join(name)))
                .unwrap_or_default()
        };
        let number = |name: &str| text(name).trim().parse().ok();
        let keyed = |name: &str, key: &str| fs::keyed(&text(name), key);
        // Read once for both: it is generated anew at each read.
        let cpu = text("cpu.stat");
        CgroupStats {
            memory_peak: number("memory.peak").unwrap_or(0),
            oom_kills: keyed("memory.events", "oom_kill").unwrap_or(0),
            pids_peak: number("pids.peak").unwrap_or(0),
            pids_refused: keyed("pids.events", "max").unwrap_or(0),
            cpu_user_us: fs::keyed(&cpu, "user_usec").unwrap_or(0),
            cpu_system_us: fs::keyed(&cpu, "system_usec").unwrap_or(0),
        }
    }
    pub fn remove(self) -> Result<(), CgroupError> {
        let killed = self.kill_all();
        let removed = fs::remove_dir(&self.dir);
        killed.and(removed)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    pub fn path(&self) -> PathBuf {
        self.member.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cgroups;
    use super::*;

    const MOUNTINFO: &str = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";

    /// A fake unified hierarchy with the supervisor in `/system.slice/toolbox.service`.
    fn fake(procs: &str) -> (tempfile::TempDir, PathBuf, V2) {
        let root = tempfile::tempdir().expect("tempdir");
        let own = root
            .path()
            .join("sys/fs/cgroup/system.slice/toolbox.service");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        std::fs::write(own.join("cgroup.subtree_control"), "").expect("write");
        std::fs::write(own.join("cgroup.procs"), procs).expect("write");
        let proc_cgroup = "0::/system.slice/toolbox.service\n";
        let Cgroups::V2(v2) =
            Cgroups::detect_from(root.path(), MOUNTINFO, proc_cgroup, 42).expect("detect")
        else {
            panic!("not detected as v2")
        };
        (root, own, v2)
    }

    #[test]
    fn prepare_moves_the_supervisor_into_a_leaf_and_delegates_controllers() {
        let (_root, own, v2) = fake("42\n");
        // The fake leaf needs its cgroup.procs, as the kernel would create it.
        std::fs::create_dir(own.join(SUPERVISOR_LEAF)).expect("mkdir");
        std::fs::write(own.join(SUPERVISOR_LEAF).join("cgroup.procs"), "").expect("write");
        v2.prepare(false).expect("prepare");
        assert_eq!(
            std::fs::read_to_string(own.join("supervisor/cgroup.procs")).expect("read"),
            "42"
        );
        assert_eq!(
            std::fs::read_to_string(own.join("cgroup.subtree_control")).expect("read"),
            "+memory +pids +cpu"
        );
    }

    #[test]
    fn prepare_refuses_a_cgroup_shared_with_other_processes() {
        let (_root, _own, v2) = fake("42\n7\n");
        let err = v2.prepare(false).expect_err("shared");
        assert!(err.to_string().contains("holds other processes"), "{err}");
    }

    #[test]
    fn prepare_taking_over_moves_every_other_process_into_init() {
        let (_root, own, v2) = fake("7\n42\n8\n");
        for leaf in [SUPERVISOR_LEAF, INIT_LEAF] {
            std::fs::create_dir(own.join(leaf)).expect("mkdir");
            std::fs::write(own.join(leaf).join("cgroup.procs"), "").expect("write");
        }
        v2.prepare(true).expect("take over");
        // (A fake cgroup.procs keeps only the last pid written to it.)
        assert_eq!(
            std::fs::read_to_string(own.join("init/cgroup.procs")).expect("read"),
            "8"
        );
        assert_eq!(
            std::fs::read_to_string(own.join("supervisor/cgroup.procs")).expect("read"),
            "42"
        );
        assert_eq!(
            std::fs::read_to_string(own.join("cgroup.subtree_control")).expect("read"),
            "+memory +pids +cpu"
        );
    }

    #[test]
    fn prepare_names_a_controller_that_is_not_delegated() {
        let (_root, own, v2) = fake("42\n");
        std::fs::write(own.join("cgroup.controllers"), "cpu io\n").expect("write");
        let err = v2.prepare(false).expect_err("memory missing");
        assert!(err.to_string().contains("memory controller"), "{err}");
    }

    #[test]
    fn job_cgroups_get_limits_swap_off_and_a_clone_into_cgroup_fd() {
        let (_root, own, v2) = fake("42\n");
        let dir = own.join("toolbox-j2");
        let job = v2.make("toolbox-j2").expect("mkdir");
        assert_eq!(job.paths(), vec![dir.clone()]);
        for file in [
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "cpu.max",
            "cgroup.procs",
        ] {
            std::fs::write(dir.join(file), "").expect("touch");
        }
        let limits = CgroupLimits {
            memory: 1 << 30,
            cpus: 0.5,
            pids: 100,
        };
        job.set_limits(&limits, None).expect("set the limits");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "100");
        assert_eq!(read("cpu.max"), "50000 100000");
        // Set ahead (a prepared jail's): only what the job's limits change is written. (These
        // files are written as cgroup files are, without truncating: a marker shorter than
        // every figure.)
        for file in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] {
            std::fs::write(dir.join(file), "-").expect("write");
        }
        let tighter = CgroupLimits { pids: 50, ..limits };
        job.set_limits(&tighter, Some(&limits))
            .expect("set the limits");
        assert_eq!(read("pids.max"), "50");
        for file in ["memory.max", "memory.swap.max", "cpu.max"] {
            assert_eq!(read(file), "-", "{file} written again");
        }
        job.set_limits(&limits, Some(&limits))
            .expect("set the limits");
        assert_eq!(read("pids.max"), "50", "written though the same");
        // The jail's PID 1 is cloned into the directory.
        job.clone_target().expect("open the directory");
        // An empty cgroup is removed without killing anything.
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .expect("write");
        std::fs::write(dir.join("memory.peak"), "5242880\n").expect("write");
        std::fs::write(dir.join("pids.peak"), "9\n").expect("write");
        std::fs::write(dir.join("pids.events"), "max 2\n").expect("write");
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 900\nuser_usec 600\nsystem_usec 300\n",
        )
        .expect("write");
        assert_eq!(
            job.stats(),
            CgroupStats {
                memory_peak: 5 << 20,
                oom_kills: 1,
                pids_peak: 9,
                pids_refused: 2,
                cpu_user_us: 600,
                cpu_system_us: 300
            }
        );
    }

    #[test]
    fn a_supervisor_already_in_its_leaf_puts_jobs_next_to_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let proc_cgroup = "0::/system.slice/toolbox.service/supervisor\n";
        let Cgroups::V2(v2) =
            Cgroups::detect_from(root.path(), MOUNTINFO, proc_cgroup, 42).expect("detect")
        else {
            panic!("not v2")
        };
        assert_eq!(v2.own, Path::new("/system.slice/toolbox.service"));
    }
}
