//! PID 1 of the jail — the shim's main process. The supervisor cloned it into new pid, ipc
//! and uts namespaces; it makes the mount namespace, forks the tool straight into the job's
//! cgroup, and builds the root while the tool readies itself (and makes its network
//! namespace) on the other CPU. Then it reaps and forwards signals until the tool exits —
//! and then exits itself, which makes the kernel SIGKILL every other process of the pid
//! namespace: a job is over when its main process is, daemons and double-forks included.
//!
//! PID 1 itself stays in the host's network namespace: it holds no socket, and the tool
//! can neither signal nor trace it.

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{CloneFlags, CpuSet};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use toolbox_spec::{control, CgroupJoin, JailSpec, Network, Status};

use crate::error::SetupError;
use crate::netns::{self, NetHelper};
use crate::{mounts, report, sys, tool};

/// Signals PID 1 handles; all blocked and read from a signalfd.
pub const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

/// Before the spec arrives: check we are PID 1 of a pid namespace of our own, start the
/// helper that makes the tool's network namespace (the costliest, so first), and make the
/// mount, ipc and uts namespaces (here, overlapping the supervisor's planning, rather than
/// by its clone, which the supervisor waits out).
pub fn enter_namespaces(network: Network) -> Result<Option<NetHelper>, SetupError> {
    // Everything that follows — kill(-1) above all — is only safe in a pid namespace of our
    // own.
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(SetupError::NotPidOne(nix::unistd::getpid().as_raw()));
    }
    let helper = match network {
        Network::Isolated => Some(netns::start()?),
        Network::Host => None,
    };
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(SetupError::Namespaces)?;
    Ok(helper)
}

pub fn run(
    spec: &JailSpec,
    mut go: std::fs::File,
    lifeline: OwnedFd,
    network: Option<NetHelper>,
    discarded: Option<Pid>,
) -> Result<i32, SetupError> {
    // Leave the caller's session and process group: a Ctrl-C on the caller's terminal goes
    // to the supervisor alone, which decides what the job gets.
    nix::unistd::setsid().map_err(SetupError::Setsid)?;
    // If the supervisor dies, so does the jail (the lifeline below covers a supervisor
    // that is multi-threaded, where this fires only when the spawning thread ends).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(SetupError::Signals)?;

    // Where the job's cgroup will be, opened while the host's view is ours: the supervisor
    // makes the cgroup while we build the root, and says so with the go.
    let parents = open_cgroup_parents(&spec.cgroup)?;
    build(spec)?;

    // What is left before the tool can start, done while the supervisor still makes the
    // cgroup. Signals: we came with every one blocked (see `sys::unblock_signals`).
    sys::unblock_signals().map_err(SetupError::Signals)?;
    // Signals from the supervisor's namespace reach PID 1 only where it has a handler; the
    // handlers never run (the signals stay blocked and are read from the signalfd).
    let mut handled = SigSet::empty();
    for signal in HANDLED {
        handled.add(signal);
        if signal != Signal::SIGCHLD {
            sys::install_noop_handler(signal).map_err(SetupError::Signals)?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), None)
        .map_err(SetupError::Signals)?;
    let signals = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(SetupError::Signals)?;
    // The bounding set, emptied: the tool inherits it so. (The effective capabilities we
    // build the jail with are not touched; the tool gives those up when it leaves uid 0.)
    sys::empty_bounding_set().map_err(SetupError::Capabilities)?;

    let mut byte = [0u8; 1];
    if std::io::Read::read_exact(&mut go, &mut byte).is_err() || byte[0] != toolbox_spec::GO {
        // The supervisor gave up on the job (and knows why), or is gone.
        return Ok(crate::SHIM_FAILED);
    }
    drop(go);
    // A network helper the spec did not want, killed when the spec came: gone before the
    // tool starts, like the other one.
    if let Some(helper) = discarded {
        wait_gone(helper);
    }
    let cgroup = open_cgroup(&parents)?;
    drop(parents);
    let into_cgroup = match spec.cgroup {
        CgroupJoin::V2Dir { .. } => cgroup.first().map(AsFd::as_fd),
        _ => None,
    };
    // The tool waits on this pipe until the network helper is gone.
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let tool = match sys::fork_into(into_cgroup).map_err(SetupError::Fork)? {
        Some(pid) => pid,
        None => {
            drop((signals, lifeline, ready_w));
            tool::run(spec, &cgroup, network, ready_r)
        }
    };
    let helper = network.as_ref().map(NetHelper::pid);
    // Only the tool's own process joins the cgroup: the job's cgroup holds exactly the
    // tool's processes.
    drop((cgroup, ready_r, network));
    // The network helper leaves once the tool has joined its namespace (or given up), the
    // tool's first steps. Reaped here, it is gone before the tool runs: the tool's pid
    // namespace holds PID 1 and the tool's own processes, nothing else for it to see or
    // signal.
    if let Some(helper) = helper {
        wait_gone(helper);
    }
    // If the tool already gave up (and said why), there is no reader: it is reaped below.
    let _ = nix::unistd::write(&ready_w, b"r");
    drop(ready_w);
    supervise(tool, &signals, lifeline)
}

/// A freshly forked task is queued on its parent's CPU, where it would wait until we finish
/// building the root (~0.5 ms measured) rather than ready itself alongside us: move it to
/// another allowed CPU. It restores its whole CPU set as its first act.
pub fn place_elsewhere(child: Pid, cpus: Option<&CpuSet>) {
    let (Some(cpus), Ok(here)) = (cpus, nix::sched::sched_getcpu()) else {
        return;
    };
    let mut others = *cpus;
    if others.unset(here).is_err() {
        return;
    }
    let any_other = (0..CpuSet::count()).any(|cpu| others.is_set(cpu).unwrap_or(false));
    if any_other {
        let _ = nix::sched::sched_setaffinity(child, &others);
    }
}

/// The jail's hostname and root.
fn build(spec: &JailSpec) -> Result<(), SetupError> {
    nix::unistd::sethostname(&spec.hostname).map_err(SetupError::Hostname)?;
    mounts::build_root(spec)
}

/// Wait for a child of ours to be gone, and reap it.
fn wait_gone(child: Pid) {
    while waitpid(child, None) == Err(nix::errno::Errno::EINTR) {}
}

/// Where the job's cgroup goes in one hierarchy: the directory the supervisor makes it in
/// (opened before `pivot_root`), and how to open the join's path once it exists.
struct CgroupParent {
    dir: OwnedFd,
    /// The join's path beneath `dir`: `toolbox-…/tasks` (v1) or `toolbox-…` (v2).
    rest: String,
    /// The whole path, for messages.
    path: String,
    flags: OFlag,
}

/// `path` split before its last `levels` components.
fn split_last(path: &str, levels: usize) -> Option<(&str, &str)> {
    let mut cut = path.len();
    for _ in 0..levels {
        cut = path[..cut].rfind('/')?;
    }
    let (parent, rest) = (&path[..cut], &path[cut + 1..]);
    (!parent.is_empty() && !rest.is_empty()).then_some((parent, rest))
}

fn open_cgroup_parents(join: &CgroupJoin) -> Result<Vec<CgroupParent>, SetupError> {
    let paths: Vec<(&str, usize, OFlag)> = match join {
        CgroupJoin::None => Vec::new(),
        CgroupJoin::V1Tasks { tasks } => tasks
            .iter()
            .map(|path| (path.as_str(), 2, OFlag::O_WRONLY))
            .collect(),
        CgroupJoin::V2Dir { dir } => vec![(dir.as_str(), 1, OFlag::O_PATH | OFlag::O_DIRECTORY)],
    };
    paths
        .into_iter()
        .map(|(path, levels, flags)| {
            let failed = |errno| SetupError::CgroupJoin {
                path: path.to_string(),
                errno,
            };
            let (parent, rest) =
                split_last(path, levels).ok_or(failed(nix::errno::Errno::EINVAL))?;
            let dir = nix::fcntl::open(
                parent,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(failed)?;
            Ok(CgroupParent {
                dir,
                rest: rest.to_string(),
                path: path.to_string(),
                flags,
            })
        })
        .collect()
}

/// The job's cgroup, now that the supervisor has made it: each path opened beneath its
/// parent (the host's cgroupfs is no longer in our view).
fn open_cgroup(parents: &[CgroupParent]) -> Result<Vec<OwnedFd>, SetupError> {
    parents
        .iter()
        .map(|parent| {
            nix::fcntl::openat(
                &parent.dir,
                parent.rest.as_str(),
                parent.flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| SetupError::CgroupJoin {
                path: parent.path.clone(),
                errno,
            })
        })
        .collect()
}

fn supervise(tool: Pid, signals: &SignalFd, lifeline: OwnedFd) -> Result<i32, SetupError> {
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(SetupError::Wait(errno)),
        }
        if fds[1].revents().is_some_and(|events| !events.is_empty()) {
            // The supervisor is gone (its end of the lifeline closed): nobody is left to
            // report to. Exiting as PID 1 kills every process of the jail.
            return Ok(128 + Signal::SIGKILL as i32);
        }
        while let Some(info) = signals.read_signal().map_err(SetupError::Wait)? {
            let signal = info.ssi_signo as i32;
            if signal == Signal::SIGCHLD as i32 {
                if let Some(code) = reap(tool)? {
                    return Ok(code);
                }
            } else if signal == control::TERMINATE_ALL {
                // The timeout or a cancel: SIGTERM to every process of the jail but us.
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            } else if let Ok(signal) = Signal::try_from(signal) {
                // SIGINT, SIGTERM, SIGHUP go to the tool's process group, as a terminal would
                // send them; if the group is gone, to the tool alone.
                if kill(Pid::from_raw(-tool.as_raw()), signal).is_err() {
                    let _ = kill(tool, signal);
                }
            }
        }
    }
}

/// Reap every child that has exited; report and return once the tool is among them.
fn reap(tool: Pid) -> Result<Option<i32>, SetupError> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == tool => {
                report::send(&Status::ToolExited { code });
                return Ok(Some(code));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == tool => {
                report::send(&Status::ToolSignaled {
                    signal: signal as i32,
                });
                return Ok(Some(128 + signal as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(SetupError::Wait(errno)),
        }
    }
}
