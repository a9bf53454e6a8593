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
const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

/// Before the spec arrives: check we are PID 1 of a pid namespace of our own, make the mount,
/// ipc and uts namespaces (made here, overlapping the supervisor's planning, rather than by
/// its clone, which the supervisor waits out), and start the helper that makes the tool's
/// network namespace meanwhile.
pub fn enter_namespaces(network: Network) -> Result<Option<NetHelper>, SetupError> {
    // Everything that follows — kill(-1) above all — is only safe in a pid namespace of our
    // own.
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(SetupError::NotPidOne(nix::unistd::getpid().as_raw()));
    }
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(SetupError::Namespaces)?;
    match network {
        Network::Isolated => netns::start().map(Some),
        Network::Host => Ok(None),
    }
}

pub fn run(
    spec: &JailSpec,
    lifeline: OwnedFd,
    network: Option<NetHelper>,
) -> Result<i32, SetupError> {
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
    // Leave the caller's session and process group: a Ctrl-C on the caller's terminal goes
    // to the supervisor alone, which decides what the job gets.
    nix::unistd::setsid().map_err(SetupError::Setsid)?;
    // If the supervisor dies, so does the jail (the lifeline below covers a supervisor
    // that is multi-threaded, where this fires only when the spawning thread ends).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(SetupError::Signals)?;

    // The job's cgroup, opened while the host's view is ours.
    let cgroup = open_cgroup(&spec.cgroup)?;
    let into_cgroup = match spec.cgroup {
        CgroupJoin::V2Dir { .. } => cgroup.first().map(AsFd::as_fd),
        _ => None,
    };
    // The tool's process starts now and readies itself on the other CPU while we build the
    // root; it waits on this pipe before the steps that need the root.
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let cpus = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok();
    let tool = match sys::fork_into(into_cgroup).map_err(SetupError::Fork)? {
        Some(pid) => pid,
        None => {
            // Undo the placement below: the tool may use every CPU it was allowed.
            if let Some(cpus) = &cpus {
                let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), cpus);
            }
            drop((signals, lifeline, ready_w));
            tool::run(spec, &cgroup, network, ready_r)
        }
    };
    place_elsewhere(tool, cpus.as_ref());
    let helper = network.as_ref().map(NetHelper::pid);
    // Only the tool's own process joins the cgroup: the job's cgroup holds exactly the
    // tool's processes.
    drop((cgroup, ready_r, network));

    if let Err(err) = build(spec) {
        // The tool reads EOF and leaves without running anything.
        drop(ready_w);
        report::setup_failed(&err);
        let _ = kill(tool, Signal::SIGKILL);
        let _ = waitpid(tool, None);
        return Ok(crate::SHIM_FAILED);
    }
    // The network helper leaves once the tool has joined its namespace (or given up), which
    // the tool does before it waits for the root. Reaped here, it is gone before the tool
    // runs: the tool's pid namespace holds PID 1 and the tool's own processes, nothing else
    // for it to see or signal.
    if let Some(helper) = helper {
        while waitpid(helper, None) == Err(nix::errno::Errno::EINTR) {}
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

fn open_cgroup(join: &CgroupJoin) -> Result<Vec<OwnedFd>, SetupError> {
    let open = |path: &str, flags: OFlag| {
        nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
            SetupError::CgroupJoin {
                path: path.to_string(),
                errno,
            }
        })
    };
    match join {
        CgroupJoin::None => Ok(Vec::new()),
        CgroupJoin::V1Tasks { tasks } => tasks
            .iter()
            .map(|path| open(path, OFlag::O_WRONLY))
            .collect(),
        CgroupJoin::V2Dir { dir } => Ok(vec![open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?]),
    }
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
