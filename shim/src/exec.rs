//! More commands in a running jail (`POST /v1/jobs/{id}/exec`). PID 1 is the one process
//! that stands where the tool was forked — in every namespace of the jail but the network
//! one, whose handle it keeps, in the job's cgroup, with the finished root — so it forks
//! each exec'd command as it forked the tool, and the command then takes exactly the
//! tool's path to its exec ([`tool::run`]): the network namespace, the CPUs, a session of
//! its own, rlimits, ids and capabilities, no_new_privs, seccomp, Landlock. Only its argv,
//! environment, directory and stdio are its own. It is a process of the job's pid
//! namespace: it dies with the job, however the job ends.

use std::io::{Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use toolbox_spec::{Control, ExecSpec, JailSpec, Status};

use crate::netns::Netns;
use crate::{sys, tool};

/// The largest control message (a JSON object of a few fields).
const MESSAGE_MAX: usize = 4096;
/// The largest exec spec (the daemon takes request bodies up to 1 MiB).
const SPEC_MAX: u64 = 4 << 20;

/// An exec'd command PID 1 forked and has yet to reap.
pub struct Running {
    id: u64,
    pid: Pid,
    /// Where its end is reported.
    status: OwnedFd,
}

/// What PID 1 needs to fork a command as it forked the tool.
pub struct Jail<'a> {
    pub spec: &'a JailSpec,
    pub network: Option<&'a Netns>,
    /// What `oom_score_adj` the tool was forked with (PID 1 has lowered its own since).
    pub oom_score: Option<&'a [u8]>,
}

/// Read one message from the control socket and act on it. `false` once the supervisor's
/// end is closed (nothing more will come).
pub fn serve_one(control: BorrowedFd<'_>, jail: &Jail<'_>, running: &mut Vec<Running>) -> bool {
    let mut buf = [0u8; MESSAGE_MAX];
    let (len, fds) = match sys::recv_with_fds(control, &mut buf) {
        Ok(received) => received,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return true,
        Err(_) => return false,
    };
    if len == 0 && fds.is_empty() {
        // A zero-length read on SOCK_SEQPACKET: the supervisor closed its end.
        return false;
    }
    match Control::decode(&buf[..len]) {
        Ok(Control::Exec { id }) => start(id, fds, jail, running),
        Ok(Control::Signal { id, signal }) => {
            if let (Some(command), Ok(signal)) = (
                running.iter().find(|command| command.id == id),
                Signal::try_from(signal),
            ) {
                // Its whole process group (it leads a session of its own), or itself if
                // that is gone.
                if kill(Pid::from_raw(-command.pid.as_raw()), signal).is_err() {
                    let _ = kill(command.pid, signal);
                }
            }
        }
        // Only the supervisor holds the other end; a message it did not mean is dropped (a
        // stdin comes only before the spec), and what it carried is closed.
        Ok(Control::Stdin) | Err(_) => {}
    }
    true
}

fn start(id: u64, fds: Vec<OwnedFd>, jail: &Jail<'_>, running: &mut Vec<Running>) {
    let Ok([spec, stdin, stdout, stderr, status]) = <[OwnedFd; 5]>::try_from(fds) else {
        // Without its status pipe there is nobody to tell; what came is closed.
        return;
    };
    let exec = match read_spec(spec) {
        Ok(exec) => exec,
        Err(error) => {
            send_to(
                status.as_fd(),
                &Status::SetupFailed {
                    step: "exec spec".into(),
                    error,
                },
            );
            return;
        }
    };
    match sys::fork() {
        Ok(Some(pid)) => running.push(Running { id, pid, status }),
        Ok(None) => child(jail, exec, [stdin, stdout, stderr, status]),
        Err(errno) => send_to(
            status.as_fd(),
            &Status::SetupFailed {
                step: "fork".into(),
                error: errno.to_string(),
            },
        ),
    }
}

fn read_spec(fd: OwnedFd) -> Result<ExecSpec, String> {
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.rewind().map_err(|e| e.to_string())?;
    file.take(SPEC_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    ExecSpec::decode(&bytes).map_err(|e| e.to_string())
}

/// The exec'd command's process, from fork to exec: its stdio and status pipe in place,
/// the OOM score the tool had, then the tool's own path.
fn child(jail: &Jail<'_>, exec: ExecSpec, fds: [OwnedFd; 4]) -> ! {
    let placed = [0, 1, 2, toolbox_spec::fds::STATUS];
    for (fd, target) in fds.iter().zip(placed) {
        if sys::dup_onto(fd.as_fd(), target).is_err() {
            sys::exit_now(crate::SHIM_FAILED);
        }
    }
    drop(fds);
    // dup2 cleared close-on-exec; the command must not hold its own status pipe.
    let _ = nix::fcntl::fcntl(
        sys::status_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    if let Some(score) = jail.oom_score {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/oom_score_adj")
        {
            let _ = std::io::Write::write_all(&mut file, score);
        }
    }
    let spec = JailSpec {
        argv: exec.argv,
        env: exec.env,
        cwd: exec.cwd,
        ..jail.spec.clone()
    };
    tool::run(&spec, jail.network, false)
}

/// Reap bookkeeping: `pid` has ended so; if it was an exec'd command, report it on its
/// status pipe and forget it.
pub fn ended(running: &mut Vec<Running>, pid: Pid, status: &Status) {
    if let Some(at) = running.iter().position(|command| command.pid == pid) {
        let command = running.swap_remove(at);
        send_to(command.status.as_fd(), status);
    }
}

fn send_to(fd: BorrowedFd<'_>, status: &Status) {
    let _ = nix::unistd::write(fd, &status.to_line());
}
