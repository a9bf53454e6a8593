//! PID 1 of the jail — the shim's main process. The supervisor cloned it into a new pid
//! namespace (on cgroup v2 straight into the job's cgroup; on v1 it joins that cgroup itself
//! on the go: PID 1 and the tool are counted and limited there); it makes the mount, ipc and
//! uts namespaces, builds the root, and forks the tool once the supervisor says the cgroup
//! is ready. Then it reaps and forwards signals until the tool exits —
//! and then exits itself, which makes the kernel SIGKILL every other process of the pid
//! namespace: a job is over when its main process is, daemons and double-forks included.
//!
//! PID 1 itself stays in the host's network namespace: it holds no socket, and the tool
//! can neither signal nor trace it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{CloneFlags, CpuSet};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use toolbox_spec::{control, JailSpec, Network, Status};

use crate::error::SetupError;
use crate::netns::{self, NetHelper, Netns};
use crate::{exec, mounts, report, sys, tool};

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
    // Where the helper runs. `toolbox run` starts us before it plans the job: we will only
    // wait for the spec, on this CPU, while the supervisor plans on the other, so the helper
    // stays here (placed there, its ~0.5 ms of namespace work delayed the spec by ~0.7 ms on
    // our 2-CPU VMs). A daemon plans first and its spec is here already: we start building
    // at once, and the helper is better off on another CPU, alongside us.
    let placement = if sys::readable_now(toolbox_spec::fds::SPEC) {
        Placement::Elsewhere
    } else {
        Placement::Here
    };
    let helper = match network {
        Network::Isolated => Some(netns::start(placement)?),
        Network::Host => None,
    };
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(SetupError::Namespaces)?;
    Ok(helper)
}

/// PID 1's lines to the supervisor besides the spec and status pipes.
pub struct Lines {
    /// EOF when the supervisor is gone.
    pub lifeline: OwnedFd,
    /// Where commands to exec in the jail come from ([`toolbox_spec::Control`]).
    pub control: Option<OwnedFd>,
}

/// What PID 1 makes ready of itself that no job's spec changes: its session, its signals,
/// its OOM score, the empty bounding set, and the job's network namespace taken from its
/// helper, the helpers reaped. A cold job does this once its root is built (the helper
/// makes the namespace on another CPU meanwhile); a prepared jail before its job's spec
/// comes, off the job's path.
pub struct Readied {
    signals: SignalFd,
    oom_score: Option<std::fs::File>,
    tool_score: Vec<u8>,
    /// The namespace a helper made (`None`: it had none to make).
    network: Option<Result<Netns, SetupError>>,
}

/// PID 1's own, before the root is built: its session and its death signal, first thing.
fn own_session() -> Result<(), SetupError> {
    // Leave the caller's session and process group: a Ctrl-C on the caller's terminal goes
    // to the supervisor alone, which decides what the job gets.
    nix::unistd::setsid().map_err(SetupError::Setsid)?;
    // If the supervisor dies, so does the jail (the lifeline below covers a supervisor
    // that is multi-threaded, where this fires only when the spawning thread ends).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(SetupError::Signals)
}

/// See [`Readied`]. `discarded`: a helper whose namespace the job will not use, to reap.
pub fn ready(network: Option<NetHelper>, discarded: Option<Pid>) -> Result<Readied, SetupError> {
    // Our own OOM-killer score, opened while the host's /proc is in view: once the tool is
    // forked, PID 1 is the one process of the job's cgroup the OOM killer must never pick
    // (the job would end with no one to report it).
    let oom_score = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")
        .ok();
    // What the tool gets (and each command exec'd beside it, forked after we lowered ours),
    // read through a descriptor of its own: the one above is for the write alone.
    let tool_score = std::fs::read("/proc/self/oom_score_adj").unwrap_or_default();
    // Signals: we came with every one blocked (see `sys::unblock_signals`).
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
    // The network namespace, taken from its helper, which then leaves. Every helper is gone
    // before the tool starts: the tool's pid namespace holds PID 1 and the tool's own
    // processes, nothing else for it to see or signal, and its cgroup counts only those.
    let (network, helper) = match network {
        Some(helper) => {
            let (taken, pid) = helper.take();
            (Some(taken), Some(pid))
        }
        None => (None, None),
    };
    for pid in [helper, discarded].into_iter().flatten() {
        wait_gone(pid);
    }
    Ok(Readied {
        signals,
        oom_score,
        tool_score,
        network,
    })
}

/// A prepared jail before its job's spec: all of PID 1's own set-up, done now.
pub fn ready_now(network: Option<NetHelper>) -> Result<Readied, SetupError> {
    own_session()?;
    ready(network, None)
}

impl Readied {
    /// Whether a helper made a network namespace for the job (or tried to).
    pub fn has_network(&self) -> bool {
        self.network.is_some()
    }
}

/// The tool's process, forked ahead in a prepared jail (see [`tool::ahead`]): its pid, and
/// PID 1's end of the line that brings it its spec, its stdin and the word to start.
pub struct Ahead {
    pid: Pid,
    line: std::os::unix::net::UnixStream,
    /// What it readied itself for (see [`tool::ready_for`]).
    draft: JailSpec,
    /// The job's spec, framed as it came on the spec pipe.
    frame: Vec<u8>,
}

/// A prepared jail whose cgroup is final (born in it on v2; on v1 joined before its job):
/// the cgroup namespace made, rooted there, and the tool's process forked now, to ready
/// itself for a job like `draft` and wait for its spec — the fork and all of the tool's
/// set-up that needs no root leave the job's path (and, given the root the draft laid out,
/// `drafted`, Landlock's rules too).
pub fn fork_ahead(
    readied: &Readied,
    draft: &JailSpec,
    drafted: Option<BorrowedFd<'_>>,
) -> Result<Ahead, SetupError> {
    // As before any tool (see `run`): the tool, and every command exec'd beside it later,
    // sees itself at "/" — one namespace for all of them.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(SetupError::CgroupNamespace)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|err| {
        SetupError::Fork(nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0)))
    })?;
    match sys::fork().map_err(SetupError::Fork)? {
        None => {
            drop(ours);
            let network = readied
                .network
                .as_ref()
                .and_then(|taken| taken.as_ref().ok());
            tool::ahead(theirs, network, draft, drafted)
        }
        Some(pid) => Ok(Ahead {
            pid,
            line: ours,
            draft: draft.clone(),
            frame: Vec::new(),
        }),
    }
}

impl Ahead {
    /// The job's spec, framed as it came, to hand on.
    pub fn with_spec(self, frame: Vec<u8>) -> Ahead {
        Ahead { frame, ..self }
    }

    /// Hand it the job's spec, with our stdin (the job's, passed before the spec), and our
    /// CPU priority (see [`sys::share_priority`]).
    fn send_spec(&self) -> bool {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let frame = &self.frame;
        if frame.is_empty() || sys::share_priority(self.pid).is_err() {
            return false;
        }
        let stdin = [0];
        let rights = [ControlMessage::ScmRights(&stdin)];
        let Ok(sent) = sendmsg::<()>(
            self.line.as_raw_fd(),
            &[std::io::IoSlice::new(frame)],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) else {
            return false;
        };
        sent == frame.len() || std::io::Write::write_all(&mut &self.line, &frame[sent..]).is_ok()
    }

    /// The job may start: the root is built (`as_drafted`: it is the one laid out for the
    /// draft) and the cgroup has its limits.
    fn start(&self, as_drafted: bool) {
        let word = if as_drafted {
            tool::AS_DRAFTED
        } else {
            toolbox_spec::GO
        };
        let _ = std::io::Write::write_all(&mut &self.line, &[word]);
    }

    /// Not for this job (another network, cgroup, ids, limits or filter than it readied
    /// itself for): killed and reaped, having run nothing.
    fn discard(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        wait_gone(self.pid);
    }
}

/// What PID 1 has when its spec comes: a helper still at work (a cold job), or its own
/// set-up done before ([`ready_now`]; a prepared jail), with a helper started late for a job
/// that wants a network namespace the jail was not prepared with.
pub enum Prepared {
    Helper {
        helper: Option<NetHelper>,
        discarded: Option<Pid>,
    },
    Ready {
        readied: Readied,
        late: Option<NetHelper>,
    },
}

pub fn run(
    spec: &JailSpec,
    mut go: std::fs::File,
    lines: Lines,
    prepared: Prepared,
    prebuilt: Option<mounts::Prebuilt>,
    joined: &[String],
    ahead: Option<Ahead>,
) -> Result<i32, SetupError> {
    if let Prepared::Helper { .. } = prepared {
        own_session()?;
    }
    // A prepared jail whose cgroup was made before it started may have joined it already.
    let joined_already = joined == spec.cgroup_tasks.as_slice();
    // A tool forked ahead serves only a job in the cgroup it was born in, with the network
    // namespace it joined and what else it readied itself for; it gets the job's spec and
    // stdin now, before we build the root. Any other job gets a tool forked on the go.
    let network_ready = match &prepared {
        Prepared::Ready { readied, late } => {
            late.is_none() && readied.network.as_ref().is_none_or(Result::is_ok)
        }
        Prepared::Helper { .. } => false,
    };
    let ahead = ahead.and_then(|ahead| {
        let serves = network_ready && joined_already && tool::ready_for(&ahead.draft, spec);
        if serves && ahead.send_spec() {
            Some(ahead)
        } else {
            ahead.discard();
            None
        }
    });
    // cgroup v1: where the job's cgroup will be, opened while the host's view is ours; the
    // supervisor makes the cgroup while we build the root, says so (MADE) before we bind it
    // into the root, and gives the go once it has its limits.
    let parents = if joined_already {
        Vec::new()
    } else {
        open_cgroup_parents(&spec.cgroup_tasks)?
    };
    let entered = prebuilt.as_ref().is_some_and(mounts::Prebuilt::entered);
    let mounts::Built {
        as_drafted,
        host_ns,
    } = build(spec, &mut go, prebuilt)?;
    // A tool born in a root entered ahead (see `mounts::Prebuilt::enter_ahead`) serves only
    // a job that got that root; otherwise it goes, having run nothing, and the job's tool is
    // forked on the go.
    let ahead = match ahead {
        Some(ahead) if entered && host_ns.is_none() => {
            ahead.discard();
            None
        }
        ahead => ahead,
    };
    // (The jail's own: its /dev is part of the root's fixed part.)
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok();
    // What is left before the tool can start, done while the supervisor still sets the
    // cgroup's limits.
    let (readied, late) = match prepared {
        Prepared::Helper { helper, discarded } => (ready(helper, discarded)?, None),
        Prepared::Ready { readied, late } => (readied, late),
    };
    let Readied {
        signals,
        oom_score,
        tool_score,
        mut network,
    } = readied;
    if let Some(helper) = late {
        let (taken, pid) = helper.take();
        wait_gone(pid);
        network = Some(taken);
    }

    let mut byte = [0u8; 1];
    let go = std::io::Read::read_exact(&mut go, &mut byte).is_ok() && byte[0] == toolbox_spec::GO;
    if go {
        // Into the job's cgroup (v1; on v2 we were born there), and the tool is born there.
        // The helpers were forked before we joined, so the cgroup never counts them.
        join_cgroup(&parents)?;
    }
    drop(parents);
    if !go {
        // The supervisor gave up on the job (and knows why), or is gone.
        return Ok(crate::SHIM_FAILED);
    }
    // A job with the host's network drops a namespace made ready for it.
    let network = match network.filter(|_| spec.network == Network::Isolated) {
        None => None,
        Some(Ok(network)) => Some(network),
        // The helper failed, and has said why.
        Some(Err(SetupError::NetworkNotReady)) => return Ok(crate::SHIM_FAILED),
        Some(Err(err)) => return Err(err),
    };
    let tool = match ahead {
        // Made already, before it was forked (see `fork_ahead`).
        Some(ahead) => {
            ahead.start(as_drafted);
            // The host's view we left a root entered ahead from goes now, beside the tool
            // (see `mounts::Built::host_ns`).
            drop(host_ns);
            ahead.pid
        }
        None => {
            // Not to be inherited by the tool (rarely here: a root entered ahead whose tool
            // did not serve the job).
            drop(host_ns);
            // A cgroup namespace rooted at the job's cgroup, which we are in now: the tool,
            // and every command exec'd beside it, sees itself at "/" — one namespace for
            // all of them.
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(SetupError::CgroupNamespace)?;
            match sys::fork().map_err(SetupError::Fork)? {
                Some(pid) => pid,
                None => {
                    drop((signals, lines, oom_score, null));
                    tool::run(spec, network.as_ref(), as_drafted)
                }
            }
        }
    };
    // The tool's stdio is its own: ours goes to /dev/null, so that the output pipes close
    // once the tool and whatever it started are gone, not with our exit after.
    if let Some(null) = &null {
        for fd in 0..=2 {
            let _ = sys::dup_onto(null.as_fd(), fd);
        }
    }
    drop(null);
    // Set after the fork, so the tool keeps the score it inherited. Best effort: without
    // CAP_SYS_RESOURCE we stay as killable as the tool.
    if let Some(mut file) = oom_score {
        let _ = std::io::Write::write_all(&mut file, b"-1000");
    }
    let jail = exec::Jail {
        spec,
        network: network.as_ref(),
        oom_score: (!tool_score.is_empty()).then_some(tool_score.as_slice()),
    };
    supervise(tool, &signals, lines, &jail)
}

/// Where a helper runs: on our CPU, or on another.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Here,
    Elsewhere,
}

/// Keep a freshly forked helper on our CPU, while we only wait (see `enter_namespaces`).
/// It is gone before the tool starts, so nothing of the job runs pinned.
pub fn keep_here(child: Pid) {
    let Ok(here) = nix::sched::sched_getcpu() else {
        return;
    };
    let mut set = CpuSet::new();
    if set.set(here).is_ok() {
        let _ = nix::sched::sched_setaffinity(child, &set);
    }
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

/// The jail's hostname and root (its cgroup's part once the supervisor has made it); whether
/// the root is the one a draft laid out.
fn build(
    spec: &JailSpec,
    go: &mut std::fs::File,
    prebuilt: Option<mounts::Prebuilt>,
) -> Result<mounts::Built, SetupError> {
    nix::unistd::sethostname(&spec.hostname).map_err(SetupError::Hostname)?;
    mounts::build_root(spec, prebuilt, || {
        let mut byte = [0u8; 1];
        match std::io::Read::read_exact(go, &mut byte) {
            Ok(()) if byte[0] == toolbox_spec::MADE => Ok(()),
            _ => Err(SetupError::Abandoned),
        }
    })
}

/// cgroup v1: join the job's cgroup now, before the go — a prepared jail's, made before it
/// started, named in its draft (`cgroup_tasks`); the tasks joined, or none if it could not.
pub fn join_early(tasks: &[String]) -> Vec<String> {
    match open_cgroup_parents(tasks).and_then(|parents| join_cgroup(&parents)) {
        Ok(()) => tasks.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Where the job's cgroup goes in one v1 hierarchy: the directory the supervisor makes it
/// in (opened before `pivot_root`), and its `tasks` file beneath that.
struct CgroupParent {
    dir: OwnedFd,
    /// `toolbox-…/tasks`
    rest: String,
    /// The whole path, for messages.
    path: String,
}

fn open_cgroup_parents(tasks: &[String]) -> Result<Vec<CgroupParent>, SetupError> {
    tasks
        .iter()
        .map(|path| {
            let failed = |errno| SetupError::CgroupJoin {
                path: path.clone(),
                errno,
            };
            // `…/<parent>/toolbox-…/tasks`: split before the last two components.
            let cut = path
                .rsplitn(3, '/')
                .nth(2)
                .filter(|parent| !parent.is_empty())
                .map(str::len)
                .ok_or(failed(nix::errno::Errno::EINVAL))?;
            let dir = nix::fcntl::openat(
                nix::fcntl::AT_FDCWD,
                &path[..cut],
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(failed)?;
            Ok(CgroupParent {
                dir,
                rest: path[cut + 1..].to_string(),
                path: path.clone(),
            })
        })
        .collect()
}

/// Write ourselves (`0`: this one thread, and we are single-threaded) into each `tasks`.
fn join_cgroup(parents: &[CgroupParent]) -> Result<(), SetupError> {
    for parent in parents {
        let failed = |errno| SetupError::CgroupJoin {
            path: parent.path.clone(),
            errno,
        };
        let tasks = nix::fcntl::openat(
            &parent.dir,
            parent.rest.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(failed)?;
        nix::unistd::write(&tasks, b"0").map_err(failed)?;
    }
    Ok(())
}

/// Wait for a child of ours to be gone, and reap it.
fn wait_gone(child: Pid) {
    while waitpid(child, None) == Err(nix::errno::Errno::EINTR) {}
}

fn supervise(
    tool: Pid,
    signals: &SignalFd,
    lines: Lines,
    jail: &exec::Jail<'_>,
) -> Result<i32, SetupError> {
    let Lines {
        lifeline,
        mut control,
    } = lines;
    let mut running = Vec::new();
    loop {
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(control) = &control {
            fds.push(PollFd::new(control.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(SetupError::Wait(errno)),
        }
        if fds[1].revents().is_some_and(|events| !events.is_empty()) {
            // The supervisor is gone (its end of the lifeline closed): nobody is left to
            // report to. Exiting as PID 1 kills every process of the jail.
            return Ok(128 + Signal::SIGKILL as i32);
        }
        let commands = fds
            .get(2)
            .is_some_and(|fd| fd.revents().is_some_and(|events| !events.is_empty()));
        drop(fds);
        if commands {
            if let Some(fd) = &control {
                if !exec::serve_one(fd.as_fd(), jail, &mut running) {
                    control = None;
                }
            }
        }
        while let Some(info) = signals.read_signal().map_err(SetupError::Wait)? {
            let signal = info.ssi_signo as i32;
            if signal == Signal::SIGCHLD as i32 {
                if let Some(code) = reap(tool, jail.network, &mut running)? {
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

/// The tool has ended, and the job with it: SIGKILL to every other process of the jail and
/// reap them all, before its end is reported. The supervisor then has the job's whole end
/// (its output pipes at EOF, nothing of it alive) without waiting for our own exit and the
/// namespaces' teardown after it. Exec'd commands killed so report no end of their own:
/// their status pipes close with the job, as they say ([`Control::Exec`]).
fn end_the_rest(running: &mut Vec<exec::Running>) {
    // From PID 1, -1 is every process of our pid namespace but us.
    loop {
        // Again before each wait: nothing is left that could start another, but a wait
        // for one that escaped the last round would never end.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // ECHILD: no child left, and every process of the namespace descends from us.
            Err(_) => break,
        }
    }
    running.clear();
}

/// What the job tried of the network and was refused, counted by its namespace: the
/// supervisor says so when the policy is why.
fn report_network(network: Option<&Netns>) {
    if let Some((no_route, udp_no_ports)) = network.and_then(Netns::refused) {
        if no_route > 0 || udp_no_ports > 0 {
            report::send(&Status::Network {
                no_route,
                udp_no_ports,
            });
        }
    }
}

/// Reap every child that has exited; report and return once the tool is among them. An
/// exec'd command's end goes to its own status pipe.
fn reap(
    tool: Pid,
    network: Option<&Netns>,
    running: &mut Vec<exec::Running>,
) -> Result<Option<i32>, SetupError> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == tool => {
                end_the_rest(running);
                report_network(network);
                report::send(&Status::ToolExited { code });
                return Ok(Some(code));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == tool => {
                end_the_rest(running);
                report_network(network);
                report::send(&Status::ToolSignaled {
                    signal: signal as i32,
                });
                return Ok(Some(128 + signal as i32));
            }
            Ok(WaitStatus::Exited(pid, code)) => {
                exec::ended(running, pid, &Status::ToolExited { code })
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) => exec::ended(
                running,
                pid,
                &Status::ToolSignaled {
                    signal: signal as i32,
                },
            ),
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(SetupError::Wait(errno)),
        }
    }
}
