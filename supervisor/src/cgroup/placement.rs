//! Placement, on cgroup v2: finding a cgroup toolbox may manage, before it makes any job
//! cgroup. It runs once per `toolbox run` and once at daemon start, never per job; after it
//! the v2 backend keeps its split (the supervisor in a leaf, each job a sibling leaf), which
//! systemd's CGROUP_DELEGATION.md prescribes. In order:
//!
//! 1. **Its own cgroup**, when it is already delegated: it holds only toolbox (a unit with
//!    `Delegate=yes`, `systemd-run --scope -p Delegate=yes`, a container holding only it), or
//!    a non-root toolbox owns it. Nothing more to do: no cost.
//! 2. **A systemd scope**: systemd is booted and toolbox is root (`sudo toolbox run` from a
//!    login shell, whose session scope holds the shell): toolbox asks systemd for a
//!    transient scope with `Delegate=yes` and its own pid in it, in the caller's slice — under
//!    sudo the user's `user-UID.slice`, so the session's own limits still cap the jobs. The
//!    scope goes away when toolbox exits.
//! 3. **Taking over its cgroup**: in a container's cgroup namespace (or any cgroup without
//!    systemd) that holds other processes, when toolbox is PID 1 (the daemon as a
//!    container's entrypoint) or told to (`--take-cgroup`): every other process moves into
//!    an `init` child, as docker's dind and systemd in a container do, retried until the
//!    controllers enable (processes can arrive meanwhile, `docker exec`).
//! 4. Otherwise **a refusal** that says why and names the ways out.
//!
//! The host's root cgroup is never written: a cgroup namespace's root is not the host's (it
//! has a `cgroup.type` file, which only the real root lacks). cgroup v1 needs none of this:
//! a v1 cgroup may hold processes and child cgroups at once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fs::{self, MountEntry, ProcCgroup};
use super::systemd::{self, Scope, SystemdError};
use super::v2::SUPERVISOR_LEAF;

/// What a container needs for toolbox to manage its cgroups, in words a user can act on.
pub const CONTAINER_WAYS_OUT: &str = "the container needs a private cgroup namespace and a \
writable /sys/fs/cgroup: docker run --privileged --cgroupns=private (or --security-opt \
writable-cgroups=true, or -v /sys/fs/cgroup:/sys/fs/cgroup:rw); podman run --systemd=always; \
Kubernetes: the DaemonSet in deploy/kubernetes/";

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("the cgroup filesystem at {mount} is mounted read-only, so toolbox cannot create job cgroups there; {CONTAINER_WAYS_OUT}")]
    ReadOnly { mount: PathBuf },
    #[error("toolbox runs in the host's root cgroup, which it never manages; start it in a cgroup of its own: under systemd (the toolbox service, or systemd-run --scope -p Delegate=yes toolbox ...), or make one first: mkdir /sys/fs/cgroup/toolbox && echo $$ > /sys/fs/cgroup/toolbox/cgroup.procs")]
    HostRoot,
    #[error("toolbox runs at the root of a container's cgroup namespace, which also holds {} other process(es) (pids {}), and cgroup v2 lets no cgroup hold processes and hand controllers down at once. Run toolbox as the container's entrypoint (PID 1), or pass --take-cgroup (TOOLBOX_TAKE_CGROUP=1) to move the others into /init; {CONTAINER_WAYS_OUT}", .others.len(), list(.others))]
    ContainerShared { others: Vec<i32> },
    #[error("toolbox's cgroup {own} holds {} other process(es) (pids {}) and no systemd runs here to give toolbox one of its own (cgroup v2 lets no cgroup hold processes and hand controllers down at once). Start toolbox in a cgroup that holds only it (a service or scope with Delegate=yes, a container's entrypoint), or pass --take-cgroup (TOOLBOX_TAKE_CGROUP=1) to move the others into {own}/init", .others.len(), list(.others))]
    Shared { own: PathBuf, others: Vec<i32> },
    #[error("toolbox's cgroup {own} holds other processes, so it asked systemd for a delegated scope of its own: {source}. Or start it in one: systemd-run --scope -p Delegate=yes toolbox ...")]
    Systemd { own: PathBuf, source: SystemdError },
    #[error("systemd started {unit}, but /proc/self/cgroup still says {now}")]
    NotMoved { unit: String, now: PathBuf },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list(pids: &[i32]) -> String {
    let mut shown: Vec<String> = pids.iter().take(8).map(i32::to_string).collect();
    if pids.len() > 8 {
        shown.push("...".into());
    }
    shown.join(" ")
}

/// What toolbox may do with cgroups beyond its own, as the operator said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementOptions {
    /// `--take-cgroup`: move every other process of toolbox's cgroup into an `init` child.
    pub take_cgroup: bool,
    /// Which toolbox this is (`run`, `serve`): names its scope, if it gets one.
    pub command: &'static str,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        PlacementOptions {
            take_cgroup: false,
            command: "run",
        }
    }
}

impl PlacementOptions {
    /// The options of the toolbox `command` (`run`, `serve`, `doctor`): `--take-cgroup` as
    /// given, or `TOOLBOX_TAKE_CGROUP=1` (a container's configuration).
    pub fn new(command: &'static str, take_cgroup: bool) -> Self {
        let from_env = std::env::var("TOOLBOX_TAKE_CGROUP").is_ok_and(|v| v == "1" || v == "true");
        PlacementOptions {
            take_cgroup: take_cgroup || from_env,
            command,
        }
    }
}

/// Everything the decision looks at, read from the host (or from a fake cgroupfs).
#[derive(Debug, Clone)]
pub struct Facts {
    /// toolbox's cgroup, as `/proc/self/cgroup` names it.
    pub own: PathBuf,
    /// Where the cgroup2 filesystem is mounted.
    pub mount: PathBuf,
    pub read_only: bool,
    /// `own` is the host's root cgroup: no `cgroup.type`, which every other cgroup has (a
    /// cgroup namespace's root included).
    pub host_root: bool,
    /// `own` is the root of toolbox's cgroup namespace (a container's).
    pub namespace_root: bool,
    /// The processes in `own` besides toolbox.
    pub others: Vec<i32>,
    /// The uid owning `own`'s directory.
    pub owner: u32,
    pub euid: u32,
    pub pid: u32,
    /// systemd is the init of this (container or) host: `/run/systemd/system` exists.
    pub systemd: bool,
    /// `$SUDO_UID`: the user behind sudo.
    pub sudo_uid: Option<u32>,
    pub options: PlacementOptions,
}

/// Which of the four ways applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 1: toolbox's own cgroup is delegated to it.
    Own,
    /// 2: ask systemd for a scope in this slice.
    SystemdScope { slice: String },
    /// 3: move every other process of toolbox's cgroup into `init`.
    TakeOver,
}

/// How toolbox got the cgroup its jobs run under (the record's `cgroup_placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// cgroup v1: job cgroups beneath toolbox's own in each hierarchy.
    V1,
    Own,
    SystemdScope {
        unit: String,
    },
    TookOver,
}

impl Placement {
    /// The name the record and `/v1/health` give it.
    pub fn name(&self) -> &'static str {
        match self {
            Placement::V1 | Placement::Own => "own",
            Placement::SystemdScope { .. } => "systemd_scope",
            Placement::TookOver => "took_over",
        }
    }
}

impl Facts {
    /// Read the facts beneath `root` (`/` on a host), given `/proc/self/cgroup`'s v2 line and
    /// the cgroup2 mount.
    pub fn gather(
        root: &Path,
        mount: &MountEntry,
        own: &ProcCgroup,
        pid: u32,
        euid: u32,
        options: PlacementOptions,
    ) -> Result<Facts, PlacementError> {
        let dir = fs::cgroup_dir(root, mount, &own.path);
        let read = |path: PathBuf| {
            fs::read_text(&path).map_err(|source| PlacementError::Read { path, source })
        };
        let procs = read(dir.join("cgroup.procs"))?;
        let others = procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&p| p as u32 != pid)
            .collect();
        let owner =
            std::fs::metadata(&dir)
                .map(|m| m.uid())
                .map_err(|source| PlacementError::Read {
                    path: dir.clone(),
                    source,
                })?;
        Ok(Facts {
            own: own.path.clone(),
            mount: mount.mount_point.clone(),
            read_only: mount.read_only,
            host_root: !dir.join("cgroup.type").exists(),
            namespace_root: own.path == Path::new("/"),
            others,
            owner,
            euid,
            pid,
            systemd: fs::beneath(root, Path::new("/run/systemd/system")).is_dir(),
            sudo_uid: std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()),
            options,
        })
    }

    /// The slice a scope for toolbox goes in: the user's behind sudo, else the one toolbox's
    /// cgroup is in, else `system.slice`.
    pub fn slice(&self) -> String {
        if let Some(uid) = self.sudo_uid {
            return format!("user-{uid}.slice");
        }
        self.own
            .ancestors()
            .filter_map(|a| a.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .find(|n| n.ends_with(".slice"))
            .unwrap_or_else(|| "system.slice".into())
    }
}

/// Decide, without touching anything.
pub fn decide(facts: &Facts) -> Result<Decision, PlacementError> {
    if facts.read_only {
        return Err(PlacementError::ReadOnly {
            mount: facts.mount.clone(),
        });
    }
    let delegated = facts.others.is_empty() || (facts.euid != 0 && facts.owner == facts.euid);
    if delegated && !facts.host_root {
        return Ok(Decision::Own);
    }
    if facts.systemd && facts.euid == 0 {
        return Ok(Decision::SystemdScope {
            slice: facts.slice(),
        });
    }
    if facts.host_root {
        return Err(PlacementError::HostRoot);
    }
    if facts.pid == 1 || facts.options.take_cgroup {
        return Ok(Decision::TakeOver);
    }
    if facts.namespace_root {
        Err(PlacementError::ContainerShared {
            others: facts.others.clone(),
        })
    } else {
        Err(PlacementError::Shared {
            own: facts.own.clone(),
            others: facts.others.clone(),
        })
    }
}

/// What `toolbox doctor` says of a decision: which way applies and what toolbox will do.
pub fn describe(facts: &Facts, decision: &Result<Decision, PlacementError>) -> String {
    let own = facts.own.display();
    match decision {
        Ok(Decision::Own) if facts.own.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) => {
            format!("own: already in its leaf {own}; jobs go next to it")
        }
        Ok(Decision::Own) => format!(
            "own: {own} holds only toolbox (delegated); toolbox moves into {own}/{SUPERVISOR_LEAF} and puts jobs next to it"
        ),
        Ok(Decision::SystemdScope { slice }) => format!(
            "systemd scope: {own} holds {} other process(es), so toolbox asks systemd for a delegated scope of its own in {slice} (gone when it exits)",
            facts.others.len()
        ),
        Ok(Decision::TakeOver) => format!(
            "take over: toolbox moves the {} other process(es) of {own} into {}/init, and itself into {SUPERVISOR_LEAF}",
            facts.others.len(),
            own.to_string().trim_end_matches('/')
        ),
        Err(err) => err.to_string(),
    }
}

/// Carry the decision out: ask systemd for the scope and check toolbox is in it. (Taking
/// over is done by the v2 backend's prepare, which retries as processes arrive.) Returns
/// the placement, and toolbox's `/proc/self/cgroup` if it moved.
pub fn apply(
    facts: &Facts,
    decision: &Decision,
) -> Result<(Placement, Option<String>), PlacementError> {
    match decision {
        Decision::Own => Ok((Placement::Own, None)),
        Decision::TakeOver => Ok((Placement::TookOver, None)),
        Decision::SystemdScope { slice } => {
            let command = facts.options.command;
            let scope = Scope {
                unit: format!("toolbox-{command}-{}.scope", facts.pid),
                slice: slice.clone(),
                description: format!("toolbox {command} (pid {}) and its jobs", facts.pid),
                pid: facts.pid,
            };
            let unit = systemd::start_scope(&scope).map_err(|source| PlacementError::Systemd {
                own: facts.own.clone(),
                source,
            })?;
            let path = PathBuf::from("/proc/self/cgroup");
            let text =
                fs::read_text(&path).map_err(|source| PlacementError::Read { path, source })?;
            let now = fs::parse_proc_cgroup(&text)
                .into_iter()
                .find(|l| l.id == 0 && l.controllers.is_empty())
                .map(|l| l.path)
                .unwrap_or_default();
            if now.file_name().is_none_or(|n| n != unit.as_str()) {
                return Err(PlacementError::NotMoved { unit, now });
            }
            Ok((Placement::SystemdScope { unit }, Some(text)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake unified hierarchy with toolbox (pid 42) in `own`, which also holds `others`.
    struct Fake {
        root: tempfile::TempDir,
        mount: MountEntry,
    }

    impl Fake {
        fn new(read_only: bool) -> Fake {
            let root = tempfile::tempdir().expect("tempdir");
            let cgroup = root.path().join("sys/fs/cgroup");
            std::fs::create_dir_all(&cgroup).expect("mkdir");
            std::fs::write(cgroup.join("cgroup.procs"), "1\n2\n").expect("write");
            Fake {
                root,
                mount: MountEntry {
                    root: PathBuf::from("/"),
                    mount_point: PathBuf::from("/sys/fs/cgroup"),
                    fstype: "cgroup2".into(),
                    super_options: vec!["rw".into()],
                    read_only,
                },
            }
        }

        fn cgroup(&self, path: &str, procs: &[i32]) -> &Self {
            let dir = self
                .root
                .path()
                .join("sys/fs/cgroup")
                .join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(dir.join("cgroup.procs"), text).expect("write");
            std::fs::write(dir.join("cgroup.type"), "domain\n").expect("write");
            self
        }

        fn systemd(&self) -> &Self {
            std::fs::create_dir_all(self.root.path().join("run/systemd/system")).expect("mkdir");
            self
        }

        fn facts(&self, own: &str, pid: u32, options: PlacementOptions) -> Facts {
            let line = ProcCgroup {
                id: 0,
                controllers: Vec::new(),
                path: PathBuf::from(own),
            };
            let mut facts = Facts::gather(self.root.path(), &self.mount, &line, pid, 0, options)
                .expect("gather");
            facts.sudo_uid = None;
            facts
        }
    }

    #[test]
    fn a_cgroup_holding_only_toolbox_is_used_as_it_is() {
        let fake = Fake::new(false);
        fake.systemd()
            .cgroup("/system.slice/toolbox.service", &[42]);
        let facts = fake.facts(
            "/system.slice/toolbox.service",
            42,
            PlacementOptions::default(),
        );
        assert_eq!(decide(&facts).expect("decide"), Decision::Own);
        // So is the leaf a toolbox before it prepared (a daemon's restart in its unit).
        fake.cgroup("/system.slice/toolbox.service/supervisor", &[42]);
        let facts = fake.facts(
            "/system.slice/toolbox.service/supervisor",
            42,
            PlacementOptions::default(),
        );
        assert_eq!(decide(&facts).expect("decide"), Decision::Own);
        assert!(describe(&facts, &decide(&facts)).contains("already in its leaf"));
    }

    #[test]
    fn a_login_session_scope_asks_systemd_for_a_scope_in_the_users_slice() {
        let fake = Fake::new(false);
        fake.systemd().cgroup(
            "/user.slice/user-1000.slice/session-3.scope",
            &[900, 901, 42],
        );
        let mut facts = fake.facts(
            "/user.slice/user-1000.slice/session-3.scope",
            42,
            PlacementOptions::default(),
        );
        assert_eq!(facts.others, vec![900, 901]);
        assert_eq!(
            decide(&facts).expect("decide"),
            Decision::SystemdScope {
                slice: "user-1000.slice".into()
            }
        );
        // Under sudo the caller's own slice, whatever cgroup sudo left toolbox in.
        facts.sudo_uid = Some(1001);
        assert_eq!(
            decide(&facts).expect("decide"),
            Decision::SystemdScope {
                slice: "user-1001.slice".into()
            }
        );
        // Even told to take its cgroup, toolbox leaves a systemd unit's cgroup to systemd.
        facts.options.take_cgroup = true;
        assert!(matches!(
            decide(&facts).expect("decide"),
            Decision::SystemdScope { .. }
        ));
        // Not in a slice at all: system.slice.
        facts.sudo_uid = None;
        facts.own = PathBuf::from("/init.scope");
        assert_eq!(facts.slice(), "system.slice");
    }

    #[test]
    fn without_systemd_a_shared_cgroup_is_refused_with_the_ways_out() {
        let fake = Fake::new(false);
        fake.cgroup("/work/shell", &[7, 42]);
        let facts = fake.facts("/work/shell", 42, PlacementOptions::default());
        let err = decide(&facts).expect_err("shared");
        let text = err.to_string();
        assert!(text.contains("pids 7"), "{text}");
        assert!(text.contains("--take-cgroup"), "{text}");
        assert!(text.contains("Delegate=yes"), "{text}");
        // Told to, it takes the cgroup over.
        let facts = fake.facts(
            "/work/shell",
            42,
            PlacementOptions {
                take_cgroup: true,
                ..PlacementOptions::default()
            },
        );
        assert_eq!(decide(&facts).expect("decide"), Decision::TakeOver);
    }

    #[test]
    fn a_container_root_is_taken_over_by_pid_1_and_refused_to_anyone_else() {
        let fake = Fake::new(false);
        // A cgroup namespace's root: "/" to toolbox, but a cgroup like any other on the
        // host, with a cgroup.type file.
        std::fs::write(
            fake.root.path().join("sys/fs/cgroup/cgroup.type"),
            "domain\n",
        )
        .expect("write");
        std::fs::write(
            fake.root.path().join("sys/fs/cgroup/cgroup.procs"),
            "1\n7\n8\n",
        )
        .expect("write");
        // toolbox as the container's entrypoint: PID 1.
        let facts = fake.facts("/", 1, PlacementOptions::default());
        assert!(facts.namespace_root && !facts.host_root);
        assert_eq!(facts.others, vec![7, 8]);
        assert_eq!(decide(&facts).expect("decide"), Decision::TakeOver);
        assert!(describe(&facts, &decide(&facts)).contains("into /init"));
        // Something else is PID 1 (a shell, tini): refused, naming the ways out...
        let facts = fake.facts("/", 8, PlacementOptions::default());
        let text = decide(&facts).expect_err("not pid 1").to_string();
        for way in [
            "PID 1",
            "--take-cgroup",
            "--privileged",
            "--cgroupns=private",
            "podman",
            "Kubernetes",
        ] {
            assert!(text.contains(way), "{way} missing from: {text}");
        }
        // ... unless told to take it over.
        let facts = fake.facts(
            "/",
            8,
            PlacementOptions {
                take_cgroup: true,
                ..PlacementOptions::default()
            },
        );
        assert_eq!(decide(&facts).expect("decide"), Decision::TakeOver);
        // A container root holding only toolbox is simply delegated.
        std::fs::write(fake.root.path().join("sys/fs/cgroup/cgroup.procs"), "1\n").expect("write");
        let facts = fake.facts("/", 1, PlacementOptions::default());
        assert_eq!(decide(&facts).expect("decide"), Decision::Own);
    }

    #[test]
    fn the_hosts_root_cgroup_is_never_taken() {
        let fake = Fake::new(false);
        // The real root has no cgroup.type; it holds pid 1 and kernel threads.
        let facts = fake.facts(
            "/",
            42,
            PlacementOptions {
                take_cgroup: true,
                ..PlacementOptions::default()
            },
        );
        assert!(facts.host_root);
        assert!(matches!(decide(&facts), Err(PlacementError::HostRoot)));
        // Not even when toolbox is the only process there.
        std::fs::write(fake.root.path().join("sys/fs/cgroup/cgroup.procs"), "42\n").expect("write");
        let facts = fake.facts("/", 42, PlacementOptions::default());
        assert!(matches!(decide(&facts), Err(PlacementError::HostRoot)));
        // Under systemd (which never leaves its processes there), ask it for a scope.
        fake.systemd();
        let facts = fake.facts("/", 42, PlacementOptions::default());
        assert!(matches!(
            decide(&facts).expect("decide"),
            Decision::SystemdScope { .. }
        ));
    }

    #[test]
    fn a_read_only_cgroupfs_is_reported_as_read_only() {
        let fake = Fake::new(true);
        std::fs::write(
            fake.root.path().join("sys/fs/cgroup/cgroup.type"),
            "domain\n",
        )
        .expect("write");
        std::fs::write(fake.root.path().join("sys/fs/cgroup/cgroup.procs"), "1\n").expect("write");
        let facts = fake.facts("/", 1, PlacementOptions::default());
        let text = decide(&facts).expect_err("read-only").to_string();
        assert!(text.contains("mounted read-only"), "{text}");
        assert!(
            text.contains("-v /sys/fs/cgroup:/sys/fs/cgroup:rw"),
            "{text}"
        );
        assert!(!text.contains("controller"), "{text}");
    }
}
