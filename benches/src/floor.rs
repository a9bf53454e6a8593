//! The floor under a per-job jail on this host: what the kernel's side of a fresh jail
//! costs when nothing else is done.
//!
//! A resident process makes each job's jail itself, as a C program would:
//! - fresh PID, mount, IPC, UTS and network namespaces, with `lo` up;
//! - a tmpfs root with the view the bubblewrap baseline is given (the system directories
//!   read-only, /proc, /dev with six devices, a tmpfs /tmp, the workspace), pivoted into;
//! - optionally, a fresh cgroup in each hierarchy a toolbox job gets, with limits, joined by
//!   PID 1 and removed after the job;
//! - then `/bin/true` in a new session, under Landlock (ABI 1's rights, up to seven rules)
//!   and a seccomp deny list (46 instructions; toolbox's filter is ~140, so this one
//!   installs cheaper).
//!
//! And nothing else: no daemon, no socket, no request or spec to decode, no uid switch, no
//! output to carry, no record, no pool. What a job of it costs the machine is a floor for any
//! supervisor that builds the same jail fresh for every job on this host: the benchmark
//! reports it beside toolbox's daemon, against bubblewrap in the same rounds.
//!
//! Everything the child processes use is prepared before the fork (the benchmark forks from
//! one of several threads): after it, only system calls — no allocation, no lock.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One step of the root's layout, paths relative to the root (the jail's working directory
/// while it is built).
enum Step {
    Dir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// A recursive bind, then made read-only (and nosuid, nodev) when `read_only`.
    Bind {
        from: CString,
        to: CString,
        read_only: bool,
    },
    /// A host device bound onto an empty file.
    Device {
        from: CString,
        to: CString,
    },
    Mount {
        fstype: CString,
        to: CString,
        flags: libc::c_ulong,
    },
}

/// Where a hierarchy's job cgroups go, how a process joins one, and the limits written.
struct Hierarchy {
    parent: PathBuf,
    join: &'static str,
    limits: Vec<(&'static str, String)>,
}

pub struct Floor {
    /// The host directory each jail mounts its root on, in its own mount namespace.
    root: CString,
    steps: Vec<Step>,
    workspace: CString,
    cgroups: Vec<Hierarchy>,
    filter: Vec<libc::sock_filter>,
    /// Landlock's rules: (path in the jail, rights allowed); every right of ABI 1 handled.
    rules: Vec<(CString, u64)>,
    jobs: AtomicUsize,
}

/// Which step failed, as the child's exit status.
const FAILED_UNSHARE: i32 = 10;
const FAILED_LO: i32 = 11;
const FAILED_CGROUP: i32 = 12;
const FAILED_ROOT: i32 = 13;
const FAILED_STEP: i32 = 14;
const FAILED_PIVOT: i32 = 15;
const FAILED_FORK: i32 = 16;
const FAILED_TOOL: i32 = 17;
const FAILED_LANDLOCK: i32 = 18;
const FAILED_SECCOMP: i32 = 19;
const FAILED_EXEC: i32 = 20;

/// The system directories a jail sees read-only (or as the host's symlinks), in the floor's
/// root and in the bubblewrap baseline's.
pub const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

fn cstring(path: impl AsRef<Path>) -> CString {
    CString::new(path.as_ref().as_os_str().as_bytes()).expect("a path without NUL")
}

impl Floor {
    /// The floor for jobs in `workspace`; with cgroups when `cgroups` (an error when this
    /// host's hierarchies cannot take a job cgroup beneath this process's own).
    pub fn new(workspace: &Path, cgroups: bool) -> Result<Floor, String> {
        let cgroups = if cgroups { hierarchies()? } else { Vec::new() };
        let mut steps = Vec::new();
        for dir in SYSTEM_DIRS {
            let here = &dir[1..];
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(dir).map_err(|e| format!("{dir}: {e}"))?;
                    steps.push(Step::Symlink {
                        target: cstring(target),
                        link: cstring(here),
                    });
                }
                Ok(_) => {
                    steps.push(Step::Dir(cstring(here)));
                    steps.push(Step::Bind {
                        from: cstring(dir),
                        to: cstring(here),
                        read_only: true,
                    });
                }
                Err(_) => {}
            }
        }
        for dir in ["proc", "dev", "tmp"] {
            steps.push(Step::Dir(cstring(dir)));
        }
        steps.push(Step::Mount {
            fstype: cstring("proc"),
            to: cstring("proc"),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        });
        steps.push(Step::Mount {
            fstype: cstring("tmpfs"),
            to: cstring("dev"),
            flags: libc::MS_NOSUID,
        });
        for device in ["null", "zero", "full", "random", "urandom", "tty"] {
            steps.push(Step::Device {
                from: cstring(format!("/dev/{device}")),
                to: cstring(format!("dev/{device}")),
            });
        }
        steps.push(Step::Mount {
            fstype: cstring("tmpfs"),
            to: cstring("tmp"),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
        });
        // The workspace at its own path, as bubblewrap is given it: its parents made first.
        let relative = workspace
            .strip_prefix("/")
            .map_err(|_| format!("{}: not an absolute path", workspace.display()))?;
        let mut made = PathBuf::new();
        for part in relative.iter() {
            made.push(part);
            let dir = cstring(&made);
            if !steps
                .iter()
                .any(|step| matches!(step, Step::Dir(d) if *d == dir))
            {
                steps.push(Step::Dir(dir));
            }
        }
        steps.push(Step::Bind {
            from: cstring(workspace),
            to: cstring(relative),
            read_only: false,
        });

        const READ: u64 = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR;
        let mut rules: Vec<(CString, u64)> = ["/usr", "/bin", "/lib", "/lib64"]
            .iter()
            .filter(|dir| Path::new(dir).exists())
            .map(|dir| (cstring(dir), READ))
            .collect();
        rules.push((cstring("/dev"), READ | LL_WRITE_FILE));
        rules.push((cstring("/tmp"), LL_ALL));
        rules.push((cstring(workspace), LL_ALL));
        let root = std::env::temp_dir().join(format!("toolbox-floor-{}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(Floor {
            root: cstring(&root),
            steps,
            workspace: cstring(workspace),
            cgroups,
            filter: filter(),
            rules,
            jobs: AtomicUsize::new(0),
        })
    }

    /// One job: its cgroups made, its jail built, `/bin/true` run in it, the cgroups removed.
    /// Panics, naming the step, if any of it fails.
    pub fn job(&self) {
        let n = self.jobs.fetch_add(1, Ordering::Relaxed);
        let name = format!("toolbox-floor-{}-{n}", std::process::id());
        let mut joins = Vec::new();
        let mut made = Vec::new();
        for hierarchy in &self.cgroups {
            let dir = hierarchy.parent.join(&name);
            let result = std::fs::create_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))
                .and_then(|()| {
                    made.push(dir.clone());
                    hierarchy.limits.iter().try_for_each(|(file, value)| {
                        std::fs::write(dir.join(file), value)
                            .map_err(|e| format!("{}/{file}: {e}", dir.display()))
                    })
                });
            if let Err(error) = result {
                made.iter().for_each(|dir| remove_cgroup(dir));
                panic!("{error}");
            }
            joins.push(cstring(dir.join(hierarchy.join)));
        }
        let prepared = Prepared {
            floor: self,
            joins: &joins,
        };
        // SAFETY: a fork-like clone (no shared memory, SIGCHLD on exit); the child runs
        // only `pid1`, which makes system calls on what was prepared above and exits.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWPID | libc::SIGCHLD,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        assert!(pid >= 0, "clone: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child, which exits from pid1.
            unsafe { libc::_exit(prepared.pid1()) }
        }
        let pid = pid as libc::pid_t;
        let mut status = 0;
        // SAFETY: waits for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
        for dir in made {
            remove_cgroup(&dir);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a floor job failed: status {status:#x} (exit codes from 10 name the step, see floor.rs)"
        );
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(std::ffi::OsStr::from_bytes(self.root.as_bytes()));
    }
}

/// What one job's child processes use, borrowed from memory prepared before the fork.
struct Prepared<'a> {
    floor: &'a Floor,
    joins: &'a [CString],
}

impl Prepared<'_> {
    /// The jail's PID 1: namespaces, cgroups, root; then the tool, waited for. Returns the
    /// exit status: 0, or which step failed.
    fn pid1(&self) -> i32 {
        // SAFETY: system calls on memory prepared before the fork, which stays valid in
        // this copy of the address space; nothing allocates or locks.
        unsafe {
            let flags =
                libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
            if libc::unshare(flags) != 0 {
                return FAILED_UNSHARE;
            }
            if !lo_up() {
                return FAILED_LO;
            }
            for join in self.joins {
                let fd = libc::open(join.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return FAILED_CGROUP;
                }
                libc::close(fd);
            }
            let floor = self.floor;
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ) != 0
                || libc::mount(
                    c"tmpfs".as_ptr(),
                    floor.root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=0755".as_ptr().cast(),
                ) != 0
                || libc::chdir(floor.root.as_ptr()) != 0
            {
                return FAILED_ROOT;
            }
            for step in &floor.steps {
                if !step.apply() {
                    return FAILED_STEP;
                }
            }
            if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(floor.workspace.as_ptr()) != 0
            {
                return FAILED_PIVOT;
            }
            // Not libc's fork: that takes the C library's locks, which another of the
            // benchmark's threads may have held when this process was cloned from it.
            let tool = libc::syscall(
                libc::SYS_clone,
                libc::SIGCHLD,
                0usize,
                0usize,
                0usize,
                0usize,
            ) as libc::pid_t;
            if tool < 0 {
                return FAILED_FORK;
            }
            if tool == 0 {
                libc::_exit(self.tool());
            }
            let mut status = 0;
            if libc::waitpid(tool, &mut status, 0) != tool || status != 0 {
                return FAILED_TOOL;
            }
            0
        }
    }

    /// The tool's process: a new session, Landlock, seccomp, exec.
    fn tool(&self) -> i32 {
        // SAFETY: as in pid1, system calls on memory prepared before the fork.
        unsafe {
            libc::setsid();
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
                || !self.landlock()
            {
                return FAILED_LANDLOCK;
            }
            let program = libc::sock_fprog {
                len: self.floor.filter.len() as u16,
                filter: self.floor.filter.as_ptr().cast_mut(),
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog,
            ) != 0
            {
                return FAILED_SECCOMP;
            }
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
            libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
            FAILED_EXEC
        }
    }

    fn landlock(&self) -> bool {
        #[repr(C)]
        struct RulesetAttr {
            handled_access_fs: u64,
        }
        #[repr(C, packed)]
        struct PathBeneath {
            allowed_access: u64,
            parent_fd: i32,
        }
        // SAFETY: Landlock's system calls on structures laid out as the kernel's.
        unsafe {
            let attr = RulesetAttr {
                handled_access_fs: LL_ALL,
            };
            let ruleset = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr,
                std::mem::size_of::<RulesetAttr>(),
                0,
            ) as i32;
            if ruleset < 0 {
                return false;
            }
            for (path, access) in &self.floor.rules {
                let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                let rule = PathBeneath {
                    allowed_access: *access,
                    parent_fd: fd,
                };
                let added = libc::syscall(libc::SYS_landlock_add_rule, ruleset, 1, &rule, 0);
                libc::close(fd);
                if added != 0 {
                    return false;
                }
            }
            let restricted = libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) == 0;
            libc::close(ruleset);
            restricted
        }
    }
}

impl Step {
    /// Applies the step in the jail being built; false when it failed.
    ///
    /// # Safety
    /// Only in a jail's PID 1, in its own mount namespace, working directory its root.
    unsafe fn apply(&self) -> bool {
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: system calls on strings that live as long as the Floor.
        unsafe {
            match self {
                Step::Dir(path) => libc::mkdir(path.as_ptr(), 0o755) == 0,
                Step::Symlink { target, link } => {
                    libc::symlink(target.as_ptr(), link.as_ptr()) == 0
                }
                Step::Bind {
                    from,
                    to,
                    read_only,
                } => {
                    libc::mount(
                        from.as_ptr(),
                        to.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        none.cast(),
                    ) == 0
                        && (!read_only
                            || libc::mount(
                                none,
                                to.as_ptr(),
                                none,
                                libc::MS_BIND
                                    | libc::MS_REMOUNT
                                    | libc::MS_RDONLY
                                    | libc::MS_NOSUID
                                    | libc::MS_NODEV,
                                none.cast(),
                            ) == 0)
                }
                Step::Device { from, to } => {
                    let fd = libc::open(
                        to.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o666,
                    );
                    fd >= 0
                        && libc::close(fd) == 0
                        && libc::mount(from.as_ptr(), to.as_ptr(), none, libc::MS_BIND, none.cast())
                            == 0
                }
                Step::Mount { fstype, to, flags } => {
                    libc::mount(
                        fstype.as_ptr(),
                        to.as_ptr(),
                        fstype.as_ptr(),
                        *flags,
                        none.cast(),
                    ) == 0
                }
            }
        }
    }
}

/// `lo` up, as `ip link set lo up` does.
fn lo_up() -> bool {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    // SAFETY: a socket and two ioctls on a structure laid out as the kernel's ifreq.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return false;
        }
        let mut request = IfReq {
            name: [0; 16],
            flags: 0,
            pad: [0; 22],
        };
        request.name[..2].copy_from_slice(b"lo");
        let up = libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request) == 0 && {
            request.flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request) == 0
        };
        libc::close(socket);
        up
    }
}

/// Landlock's filesystem rights of ABI 1, all of which are handled.
const LL_EXECUTE: u64 = 1;
const LL_WRITE_FILE: u64 = 1 << 1;
const LL_READ_FILE: u64 = 1 << 2;
const LL_READ_DIR: u64 = 1 << 3;
const LL_ALL: u64 = (1 << 13) - 1;

/// A seccomp filter: the architecture checked, then a deny list of 40 system calls a job has
/// no business making, each answered EPERM, the rest allowed (46 instructions).
fn filter() -> Vec<libc::sock_filter> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7;
    let denied: Vec<u32> = [
        "ptrace",
        "syslog",
        "pivot_root",
        "chroot",
        "acct",
        "mount",
        "umount2",
        "swapon",
        "swapoff",
        "reboot",
        "sethostname",
        "setdomainname",
        "init_module",
        "delete_module",
        "quotactl",
        "kexec_load",
        "add_key",
        "request_key",
        "keyctl",
        "unshare",
        "perf_event_open",
        "open_by_handle_at",
        "setns",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "finit_module",
        "bpf",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "personality",
    ]
    .iter()
    .filter_map(|name| syscall_number(name))
    .collect();
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut program = vec![
        statement(load, 4),
        jump(ARCH, 1, 0),
        statement(ret, libc::SECCOMP_RET_KILL_PROCESS),
        statement(load, 0),
    ];
    let count = denied.len();
    for (i, nr) in denied.into_iter().enumerate() {
        // To the EPERM return after the ALLOW one.
        program.push(jump(nr, (count - i) as u8, 0));
    }
    program.push(statement(ret, libc::SECCOMP_RET_ALLOW));
    program.push(statement(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    program
}

fn syscall_number(name: &str) -> Option<u32> {
    let nr = match name {
        "ptrace" => libc::SYS_ptrace,
        "syslog" => libc::SYS_syslog,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "acct" => libc::SYS_acct,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "sethostname" => libc::SYS_sethostname,
        "setdomainname" => libc::SYS_setdomainname,
        "init_module" => libc::SYS_init_module,
        "delete_module" => libc::SYS_delete_module,
        "quotactl" => libc::SYS_quotactl,
        "kexec_load" => libc::SYS_kexec_load,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "keyctl" => libc::SYS_keyctl,
        "unshare" => libc::SYS_unshare,
        "perf_event_open" => libc::SYS_perf_event_open,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "setns" => libc::SYS_setns,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kcmp" => libc::SYS_kcmp,
        "finit_module" => libc::SYS_finit_module,
        "bpf" => libc::SYS_bpf,
        "userfaultfd" => libc::SYS_userfaultfd,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "open_tree" => libc::SYS_open_tree,
        "move_mount" => libc::SYS_move_mount,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "mount_setattr" => libc::SYS_mount_setattr,
        "personality" => libc::SYS_personality,
        _ => return None,
    };
    u32::try_from(nr).ok()
}

/// The hierarchies a toolbox job gets a cgroup in, beneath this process's own cgroup: on
/// v1 memory, pids, cpu, cpuacct and cpuset (those mounted; one directory per hierarchy);
/// on v2 the one, where its controllers are enabled for children.
fn hierarchies() -> Result<Vec<Hierarchy>, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let base = Path::new("/sys/fs/cgroup");
    let mut found: Vec<Hierarchy> = Vec::new();
    let mut mounted = Vec::new();
    for controller in ["memory", "pids", "cpu", "cpuacct", "cpuset"] {
        let Ok(mount) = base.join(controller).canonicalize() else {
            continue;
        };
        if !mount.join("tasks").exists() || mounted.contains(&mount) {
            continue;
        }
        let Some(path) = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, list, path) = (fields.next()?, fields.next()?, fields.next()?);
            list.split(',').any(|c| c == controller).then_some(path)
        }) else {
            continue;
        };
        let parent = mount.join(path.trim_start_matches('/'));
        let limits = match controller {
            "memory" => vec![("memory.limit_in_bytes", "1073741824".to_string())],
            "pids" => vec![("pids.max", "256".to_string())],
            "cpu" => vec![("cpu.cfs_quota_us", "200000".to_string())],
            "cpuset" => vec![
                ("cpuset.cpus", read_trimmed(&parent.join("cpuset.cpus"))?),
                ("cpuset.mems", read_trimmed(&parent.join("cpuset.mems"))?),
            ],
            _ => Vec::new(),
        };
        mounted.push(mount);
        found.push(Hierarchy {
            parent,
            join: "tasks",
            limits,
        });
    }
    if !found.is_empty() {
        return Ok(found);
    }
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("no cgroup v1 hierarchy and no v2 line in /proc/self/cgroup")?;
    let parent = base.join(path.trim_start_matches('/'));
    let enabled = read_trimmed(&parent.join("cgroup.subtree_control"))?;
    for needed in ["memory", "pids", "cpu"] {
        if !enabled.split(' ').any(|c| c == needed) {
            return Err(format!(
                "cgroup v2: {needed} is not enabled for {}'s children",
                parent.display()
            ));
        }
    }
    Ok(vec![Hierarchy {
        parent,
        join: "cgroup.procs",
        limits: vec![
            ("memory.max", "1073741824".to_string()),
            ("pids.max", "256".to_string()),
            ("cpu.max", "200000 100000".to_string()),
        ],
    }])
}

fn read_trimmed(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Removes a job's cgroup once its last process has gone (v1 can answer EBUSY a moment
/// after the reap).
fn remove_cgroup(dir: &Path) {
    for _ in 0..10_000 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_micros(100))
            }
            Err(e) => panic!("{}: {e}", dir.display()),
        }
    }
    panic!("{}: still busy after 1 s", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's floor builds its jail here, and leaves neither a cgroup nor its root
    /// directory behind.
    #[test]
    fn a_floor_job_runs_and_leaves_nothing() {
        // SAFETY: geteuid only reads the caller's id.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the floor needs root, and CI runs as root"
            );
            eprintln!("SKIPPED: the floor builds a real jail and needs root");
            return;
        }
        let workspace = std::env::temp_dir().join(format!("floor-test-{}", std::process::id()));
        std::fs::create_dir_all(&workspace).expect("workspace");
        for cgroups in [true, false] {
            let floor = Floor::new(&workspace, cgroups).expect("a floor here");
            assert_eq!(floor.cgroups.is_empty(), !cgroups);
            floor.job();
            floor.job();
            for hierarchy in &floor.cgroups {
                let left: Vec<_> = std::fs::read_dir(&hierarchy.parent)
                    .expect("the cgroup's parent")
                    .filter_map(|entry| entry.ok())
                    .filter(|entry| {
                        let name = entry.file_name();
                        let prefix = format!("toolbox-floor-{}-", std::process::id());
                        name.to_string_lossy().starts_with(&prefix)
                    })
                    .map(|entry| entry.path())
                    .collect();
                assert!(left.is_empty(), "cgroups left behind: {left:?}");
            }
            let root = PathBuf::from(std::ffi::OsStr::from_bytes(floor.root.as_bytes()));
            drop(floor);
            assert!(!root.exists(), "{} left behind", root.display());
        }
        std::fs::remove_dir(&workspace).expect("remove the workspace");
    }
}
