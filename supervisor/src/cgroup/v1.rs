//! cgroup v1: a hierarchy per controller (or a few co-mounted, like `cpu,cpuacct`). A job
//! gets a cgroup in the memory, pids, cpu and (where mounted) cpuacct hierarchies, each
//! beneath the supervisor's own cgroup in that hierarchy.
//!
//! The jail's PID 1 joins by writing `0` to each `tasks` file, before it forks the tool:
//! moving one thread skips the global threadgroup rwsem a `cgroup.procs` write takes for
//! writing, and with it an RCU grace period (about 15 ms on our hosts).

use std::path::{Path, PathBuf};

use super::fs::{self, MountEntry, ProcCgroup};
use super::{cpu_quota_us, CgroupError, CgroupLimits, CgroupStats, CPU_PERIOD_US};

const REQUIRED: [&str; 3] = ["memory", "pids", "cpu"];
/// cpuset: not for a limit, but a JVM sizes itself by the job's cgroups only where it finds
/// every one of cpuset, cpu, cpuacct and memory (it reads the host's otherwise).
const OPTIONAL: [&str; 2] = ["cpuacct", "cpuset"];
/// Every v1 controller: what of a hierarchy's mount options names its controllers (the
/// rest are flags — rw, clone_children, xattr, release_agent=… — a view leaves out).
const CONTROLLERS: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

#[derive(Debug, Clone)]
struct Hierarchy {
    controllers: Vec<String>,
    /// Where the host mounted it.
    mount_point: PathBuf,
    /// The supervisor's own cgroup directory in this hierarchy.
    parent: PathBuf,
    /// The same cgroup as `/proc/self/cgroup` names it.
    own: PathBuf,
}

#[derive(Debug)]
pub struct V1 {
    hierarchies: Vec<Hierarchy>,
}

impl V1 {
    pub fn new(root: &Path, mounts: &[MountEntry], own: &[ProcCgroup]) -> Result<V1, CgroupError> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for controller in REQUIRED.iter().chain(OPTIONAL.iter()) {
            if hierarchies
                .iter()
                .any(|h| h.controllers.iter().any(|c| c == controller))
            {
                continue;
            }
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller));
            let line = own
                .iter()
                .find(|l| l.controllers.iter().any(|c| c == controller));
            match (mount, line) {
                (Some(mount), Some(line)) => hierarchies.push(Hierarchy {
                    controllers: mount.super_options.clone(),
                    mount_point: mount.mount_point.clone(),
                    parent: fs::cgroup_dir(root, mount, &line.path),
                    own: line.path.clone(),
                }),
                _ if REQUIRED.contains(controller) => {
                    return Err(CgroupError::MissingController {
                        version: "v1",
                        controller: controller.to_string(),
                        path: fs::beneath(root, Path::new("/sys/fs/cgroup")),
                        hint: "mount its hierarchy (e.g. at /sys/fs/cgroup/<controller>)",
                    })
                }
                _ => {}
            }
        }
        Ok(V1 { hierarchies })
    }

    /// Each hierarchy's directory for job cgroups, with its path as /proc/PID/cgroup shows it.
    pub fn parents(&self) -> impl Iterator<Item = (&Path, &Path)> {
        self.hierarchies
            .iter()
            .map(|h| (h.parent.as_path(), h.own.as_path()))
    }

    pub fn describe(&self) -> Vec<String> {
        self.hierarchies
            .iter()
            .map(|h| {
                let controllers: Vec<&str> = h
                    .controllers
                    .iter()
                    .map(String::as_str)
                    .filter(|c| REQUIRED.contains(c) || OPTIONAL.contains(c))
                    .collect();
                format!(
                    "{}: jobs under {}",
                    controllers.join(","),
                    h.parent.display()
                )
            })
            .collect()
    }

    /// The job's view of its cgroup `name`: each hierarchy's (host directory, where in the
    /// jail: `/sys/fs/cgroup/<its directory>` as the host lays it out), and a symlink per
    /// controller of a co-mounted one (`cpu -> cpu,cpuacct`), as systemd makes them
    /// (target, link).
    pub fn view(&self, name: &str) -> super::CgroupBinds {
        let mut binds = Vec::new();
        let mut links = Vec::new();
        for hierarchy in &self.hierarchies {
            let Some(dir) = hierarchy
                .mount_point
                .file_name()
                .and_then(|name| name.to_str())
            else {
                continue;
            };
            for controller in &hierarchy.controllers {
                if CONTROLLERS.contains(&controller.as_str()) && controller != dir {
                    links.push((dir.to_string(), format!("/sys/fs/cgroup/{controller}")));
                }
            }
            binds.push((hierarchy.parent.join(name), format!("/sys/fs/cgroup/{dir}")));
        }
        (binds, links)
    }

    pub fn tasks_for(&self, name: &str) -> Vec<String> {
        self.hierarchies
            .iter()
            .map(|h| {
                h.parent
                    .join(name)
                    .join("tasks")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    pub fn make(&self, name: &str) -> Result<JobCgroup, CgroupError> {
        let mut job = JobCgroup {
            dirs: Vec::with_capacity(self.hierarchies.len()),
            held: fs::Held::default(),
        };
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.parent.join(name);
            if let Err(source) = std::fs::create_dir(&dir) {
                let _ = job.remove_dirs();
                return Err(CgroupError::Create { path: dir, source });
            }
            // A new cpuset has no CPUs and no memory nodes, and takes no task until it has
            // both (unless its parent has clone_children): its parent's.
            if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                job.dirs.push(JobDir {
                    controllers: hierarchy.controllers.clone(),
                    dir: dir.clone(),
                    member: hierarchy.own.join(name),
                });
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let copied = fs::read(&hierarchy.parent.join(file))
                        .and_then(|value| fs::write(&dir.join(file), value.trim()));
                    if let Err(err) = copied {
                        let _ = job.remove_dirs();
                        return Err(err);
                    }
                }
                continue;
            }
            job.dirs.push(JobDir {
                controllers: hierarchy.controllers.clone(),
                dir,
                member: hierarchy.own.join(name),
            });
        }
        job.held = fs::Held::open(
            STATS
                .iter()
                .filter_map(|&(controller, name)| Some((name, job.file(controller, name)?))),
        );
        Ok(job)
    }
}

#[derive(Debug)]
struct JobDir {
    controllers: Vec<String>,
    dir: PathBuf,
    /// The path `/proc/PID/cgroup` shows for a member.
    member: PathBuf,
}

/// The files [`JobCgroup::stats`] reads, by controller.
const STATS: [(&str, &str); 6] = [
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.oom_control"),
    ("pids", "pids.peak"),
    ("pids", "pids.events"),
    ("cpuacct", "cpuacct.usage_user"),
    ("cpuacct", "cpuacct.usage_sys"),
];

#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<JobDir>,
    /// [`STATS`], held open from the start.
    held: fs::Held,
}

impl JobCgroup {
    fn dir(&self, controller: &str) -> Option<&JobDir> {
        self.dirs
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
    }

    fn file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        self.dir(controller).map(|d| d.dir.join(name))
    }

    /// Write `limits`; `had`, the limits the cgroup has already (set when it was prepared
    /// ahead of its job), leaves out what is the same.
    pub fn set_limits(
        &self,
        limits: &CgroupLimits,
        had: Option<&CgroupLimits>,
    ) -> Result<(), CgroupError> {
        if had.map(|h| h.memory) != Some(limits.memory) {
            let memory = limits.memory.to_string();
            let limit = self.file("memory", "memory.limit_in_bytes");
            // memory+swap at the same figure: no swap. Absent when the kernel has no swap
            // accounting, and then there is nothing to turn off.
            let memsw = self
                .file("memory", "memory.memsw.limit_in_bytes")
                .filter(|p| p.exists());
            // The kernel refuses a memory limit above memory+swap's: raised, that goes first.
            let raised = had.is_some_and(|h| limits.memory > h.memory);
            let order = if raised {
                [memsw, limit]
            } else {
                [limit, memsw]
            };
            for path in order.into_iter().flatten() {
                fs::write(&path, &memory)?;
            }
        }
        if had.map(|h| h.pids) != Some(limits.pids) {
            if let Some(path) = self.file("pids", "pids.max") {
                fs::write(&path, &limits.pids.to_string())?;
            }
        }
        if had.is_none() {
            if let Some(path) = self.file("cpu", "cpu.cfs_period_us") {
                fs::write(&path, &CPU_PERIOD_US.to_string())?;
            }
        }
        let quota = cpu_quota_us(limits.cpus);
        if had.map(|h| cpu_quota_us(h.cpus)) != Some(quota) {
            if let Some(path) = self.file("cpu", "cpu.cfs_quota_us") {
                fs::write(&path, &quota.to_string())?;
            }
        }
        Ok(())
    }

    fn procs_dir(&self) -> &JobDir {
        // Every hierarchy holds every process of the job; pids is the one that must exist.
        self.dir("pids").unwrap_or(&self.dirs[0])
    }

    fn remove_dirs(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.dirs.iter().rev() {
            if let Err(err) = fs::remove_dir(&dir.dir) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fs::read_pids(&self.procs_dir().dir.join("cgroup.procs"))
    }

    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let dir = self.procs_dir();
        fs::kill_until_empty(&dir.dir.join("cgroup.procs"), &dir.member, &dir.dir)
    }

    pub fn stats(&self) -> CgroupStats {
        let text = |controller: &str, name: &str| self.held.text(name, self.file(controller, name));
        let number = |controller: &str, name: &str| text(controller, name)?.trim().parse().ok();
        let oom_kills = text("memory", "memory.oom_control")
            .and_then(|text| fs::keyed(&text, "oom_kill"))
            .unwrap_or(0);
        CgroupStats {
            memory_peak: number("memory", "memory.max_usage_in_bytes").unwrap_or(0),
            oom_kills,
            pids_peak: number("pids", "pids.peak").unwrap_or(0),
            pids_refused: text("pids", "pids.events")
                .and_then(|text| fs::keyed(&text, "max"))
                .unwrap_or(0),
            cpu_user_us: number("cpuacct", "cpuacct.usage_user").unwrap_or(0) / 1000,
            cpu_system_us: number("cpuacct", "cpuacct.usage_sys").unwrap_or(0) / 1000,
        }
    }
    pub fn remove(self) -> Result<(), CgroupError> {
        let killed = self.kill_all();
        let removed = self.remove_dirs();
        killed.and(removed)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.dir.clone()).collect()
    }

    pub fn path(&self) -> PathBuf {
        self.dir("memory")
            .or(self.dirs.first())
            .map(|d| d.member.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cgroups;
    use super::*;

    /// A fake v1 cgroupfs laid out like our hosts: separate memory, pids, cpu and cpuacct
    /// hierarchies, the supervisor nested in memory and at the root elsewhere.
    fn fake() -> (tempfile::TempDir, V1) {
        let root = tempfile::tempdir().expect("tempdir");
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        let proc_cgroup = "8:pids:/\n4:memory:/agents/a1\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        for dir in ["cpu", "cpuacct", "memory/agents/a1", "pids"] {
            std::fs::create_dir_all(root.path().join("sys/fs/cgroup").join(dir)).expect("mkdir");
        }
        let Cgroups::V1(v1) =
            Cgroups::detect_from(root.path(), mountinfo, proc_cgroup, 1).expect("detect")
        else {
            panic!("not detected as v1")
        };
        (root, v1)
    }

    #[test]
    fn job_cgroups_nest_under_the_supervisors_own_cgroup_in_every_hierarchy() {
        let (root, v1) = fake();
        let cg = root.path().join("sys/fs/cgroup");
        let expected = [
            cg.join("memory/agents/a1/toolbox-j1"),
            cg.join("pids/toolbox-j1"),
            cg.join("cpu/toolbox-j1"),
            cg.join("cpuacct/toolbox-j1"),
        ];
        // A real cgroupfs creates the control files with the directory; the fake cannot, so
        // the first create fails on the missing files and must leave nothing behind.
        let limits = CgroupLimits {
            memory: 256 << 20,
            cpus: 1.5,
            pids: 64,
        };
        let cgroups = super::super::Cgroups::V1(v1);
        let err = cgroups
            .create("toolbox-j1", &limits)
            .expect_err("no control files");
        let super::super::Cgroups::V1(v1) = cgroups else {
            unreachable!()
        };
        assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
        assert!(
            expected.iter().all(|p| !p.exists()),
            "a failed create left directories"
        );

        // Files a real kernel would provide.
        for dir in &expected {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        for (dir, files) in [
            (
                &expected[0],
                &[
                    "memory.limit_in_bytes",
                    "memory.memsw.limit_in_bytes",
                    "tasks",
                    "cgroup.procs",
                ][..],
            ),
            (&expected[1], &["pids.max", "tasks", "cgroup.procs"][..]),
            (
                &expected[2],
                &[
                    "cpu.cfs_period_us",
                    "cpu.cfs_quota_us",
                    "tasks",
                    "cgroup.procs",
                ][..],
            ),
            (&expected[3], &["tasks", "cgroup.procs"][..]),
        ] {
            for file in files {
                std::fs::write(dir.join(file), "").expect("touch");
            }
        }
        let job = JobCgroup {
            held: fs::Held::default(),
            dirs: v1
                .hierarchies
                .iter()
                .map(|h| JobDir {
                    controllers: h.controllers.clone(),
                    dir: h.parent.join("toolbox-j1"),
                    member: h.own.join("toolbox-j1"),
                })
                .collect(),
        };
        job.set_limits(&limits, None).expect("set the limits");
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(expected[0].join("memory.limit_in_bytes")), "268435456");
        assert_eq!(
            read(expected[0].join("memory.memsw.limit_in_bytes")),
            "268435456"
        );
        assert_eq!(read(expected[1].join("pids.max")), "64");
        assert_eq!(read(expected[2].join("cpu.cfs_quota_us")), "150000");
        // Set ahead (a prepared jail's): only what the job's limits change is written. (These
        // files are written as cgroup files are, without truncating: a marker shorter than
        // every figure.)
        let ahead = [
            (&expected[0], "memory.limit_in_bytes"),
            (&expected[0], "memory.memsw.limit_in_bytes"),
            (&expected[1], "pids.max"),
            (&expected[2], "cpu.cfs_period_us"),
            (&expected[2], "cpu.cfs_quota_us"),
        ];
        for (dir, file) in ahead {
            std::fs::write(dir.join(file), "-").expect("write");
        }
        let other = CgroupLimits {
            cpus: 0.5,
            ..limits
        };
        job.set_limits(&other, Some(&limits))
            .expect("set the limits");
        assert_eq!(read(expected[2].join("cpu.cfs_quota_us")), "50000");
        for (dir, file) in &ahead[..4] {
            assert_eq!(read(dir.join(file)), "-", "{file} written again");
        }
        assert_eq!(job.paths(), expected.to_vec());
        // The jail's PID 1 writes itself into every hierarchy's `tasks`, told before the
        // cgroup is made.
        assert_eq!(
            v1.tasks_for("toolbox-j1"),
            expected
                .iter()
                .map(|dir| dir.join("tasks").to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn stats_come_from_the_v1_files() {
        let (root, v1) = fake();
        let job = JobCgroup {
            held: fs::Held::default(),
            dirs: v1
                .hierarchies
                .iter()
                .map(|h| JobDir {
                    controllers: h.controllers.clone(),
                    dir: h.parent.clone(),
                    member: h.own.clone(),
                })
                .collect(),
        };
        let cg = root.path().join("sys/fs/cgroup");
        std::fs::write(
            cg.join("memory/agents/a1/memory.max_usage_in_bytes"),
            "1048576\n",
        )
        .expect("write");
        std::fs::write(
            cg.join("memory/agents/a1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("write");
        std::fs::write(cg.join("pids/pids.peak"), "17\n").expect("write");
        std::fs::write(cg.join("pids/pids.events"), "max 3\n").expect("write");
        std::fs::write(cg.join("cpuacct/cpuacct.usage_user"), "5000000\n").expect("write");
        std::fs::write(cg.join("cpuacct/cpuacct.usage_sys"), "3000000\n").expect("write");
        let stats = job.stats();
        assert_eq!(
            stats,
            CgroupStats {
                memory_peak: 1 << 20,
                oom_kills: 2,
                pids_peak: 17,
                pids_refused: 3,
                cpu_user_us: 5000,
                cpu_system_us: 3000
            }
        );
    }

    #[test]
    fn a_missing_required_controller_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let mountinfo = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        let err = Cgroups::detect_from(root.path(), mountinfo, "4:memory:/\n", 1)
            .expect_err("pids missing");
        assert!(err.to_string().contains("pids controller"), "{err}");
    }
}
