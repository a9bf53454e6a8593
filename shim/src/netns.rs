//! The job's network namespace, made early by a throwaway helper process.
//!
//! Creating a network namespace is the costliest step of the jail (~0.75 ms of kernel work
//! on our hosts) and needs nothing from the spec. PID 1 forks this helper first thing, on
//! the other CPU; the helper makes the namespace, brings up `lo`, says so, and waits. When
//! the tool's process is ready for it, it joins with `setns` through the helper's pidfd and
//! lets the helper go.

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;

use crate::error::SetupError;
use crate::{report, sys};

/// PID 1's and the tool's handle on the helper.
pub struct NetHelper {
    /// The helper's pid, for PID 1 to reap it.
    pid: nix::unistd::Pid,
    /// The helper's pidfd: `setns` through it joins its network namespace.
    pidfd: OwnedFd,
    /// One byte once the namespace is ready; EOF if the helper failed (and said why).
    ready: OwnedFd,
    /// The helper leaves when every copy of this write end is closed (PID 1 drops its copy
    /// once the tool is forked, the tool once it has joined).
    _hold: OwnedFd,
}

/// Fork the helper (placed on another CPU) and return PID 1's handle on it.
pub fn start() -> Result<NetHelper, SetupError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let (hold_r, hold_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    match sys::fork_into(None).map_err(SetupError::Fork)? {
        None => {
            drop((ready_r, hold_w));
            if let Some(cpus) = &cpus {
                let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus);
            }
            helper(ready_w, hold_r)
        }
        Some(pid) => {
            crate::init::place_elsewhere(pid, cpus.as_ref());
            drop((ready_w, hold_r));
            let pidfd = sys::pidfd_open(pid.as_raw()).map_err(SetupError::Fork)?;
            Ok(NetHelper {
                pid,
                pidfd,
                ready: ready_r,
                _hold: hold_w,
            })
        }
    }
}

fn helper(ready: OwnedFd, hold: OwnedFd) -> ! {
    let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(SetupError::Namespaces)
        .and_then(|()| sys::interface_up("lo").map_err(SetupError::Loopback));
    if let Err(err) = made {
        report::setup_failed(&err);
        sys::exit_now(crate::SHIM_FAILED);
    }
    let _ = nix::unistd::write(&ready, b"n");
    // Keep the namespace alive until the tool has joined it.
    let mut byte = [0u8; 1];
    let _ = nix::unistd::read(&hold, &mut byte);
    sys::exit_now(0)
}

impl NetHelper {
    /// The helper's pid (in the jail's pid namespace).
    pub fn pid(&self) -> nix::unistd::Pid {
        self.pid
    }

    /// End a helper whose namespace the job will not use (it has the host's network). It
    /// dies once its `unshare` returns; reap the pid returned before the tool starts.
    pub fn discard(self) -> nix::unistd::Pid {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        self.pid
    }

    /// Join the helper's network namespace (the tool's process, as root); dropping the handle
    /// then lets the helper go.
    pub fn join(self) -> Result<(), SetupError> {
        let mut byte = [0u8; 1];
        match nix::unistd::read(&self.ready, &mut byte) {
            Ok(1) => {}
            // The helper failed and reported why.
            _ => return Err(SetupError::NetworkNotReady),
        }
        nix::sched::setns(self.pidfd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(SetupError::Namespaces)
    }
}
