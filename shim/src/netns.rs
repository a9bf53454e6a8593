//! The job's network namespace, made early by a throwaway helper process.
//!
//! Creating a network namespace is the costliest step of the jail (~0.75 ms of kernel work
//! on our hosts) and needs nothing from the spec. PID 1 forks this helper first thing, on
//! its own CPU or another (see `init::enter_namespaces`); the helper makes the namespace,
//! brings up `lo`, opens it, and says so.
//! Once the root is built (a prepared jail: before its job's spec comes), PID 1 takes that
//! descriptor from it (`pidfd_getfd`), lets it go and reaps it: the helper is gone before the
//! tool is forked, so the job's cgroup never counts it against the tool's pids, and the tool
//! joins with `setns` on the descriptor.
//! The helper also opens the namespace's counters (`/proc/self/net/snmp`, `snmp6`), so PID 1
//! reads them at the job's end without joining the namespace or opening anything then.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;

use crate::error::SetupError;
use crate::init::Placement;
use crate::{report, sys};

/// PID 1's handle on the helper while it lives.
pub struct NetHelper {
    /// The helper's pid, for PID 1 to reap it.
    pid: nix::unistd::Pid,
    /// The helper's pidfd, to take the namespace's descriptor from it.
    pidfd: OwnedFd,
    /// The numbers of the helper's descriptors of the namespace and its two counter files
    /// (4 bytes each, native order; -1 for a counter file it could not open) once it is
    /// ready; EOF if the helper failed (and said why).
    ready: OwnedFd,
    /// The helper leaves when this write end closes.
    _hold: OwnedFd,
}

/// The job's network namespace, held by a descriptor (the tool joins it), and its counter
/// files, opened in it.
pub struct Netns {
    namespace: OwnedFd,
    snmp: Option<OwnedFd>,
    snmp6: Option<OwnedFd>,
}

/// Fork the helper, placed as asked, and return PID 1's handle on it.
pub fn start(placement: Placement) -> Result<NetHelper, SetupError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let (hold_r, hold_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    let cpus = (placement == Placement::Elsewhere)
        .then(|| nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok())
        .flatten();
    match sys::fork().map_err(SetupError::Fork)? {
        None => {
            drop((ready_r, hold_w));
            if let Some(cpus) = &cpus {
                let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus);
            }
            helper(ready_w, hold_r)
        }
        Some(pid) => {
            match placement {
                Placement::Here => crate::init::keep_here(pid),
                Placement::Elsewhere => crate::init::place_elsewhere(pid, cpus.as_ref()),
            }
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
    // Still in the supervisor's mount namespace: its /proc shows us.
    let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(SetupError::Namespaces)
        .and_then(|()| sys::interface_up("lo").map_err(SetupError::Loopback))
        .and_then(|()| {
            nix::fcntl::openat(
                nix::fcntl::AT_FDCWD,
                "/proc/self/ns/net",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(SetupError::Namespaces)
        });
    let namespace = match made {
        Ok(fd) => fd,
        Err(err) => {
            report::setup_failed(&err);
            sys::exit_now(crate::SHIM_FAILED);
        }
    };
    // The proxy's listeners, made here so they belong to the job's namespace, for the
    // supervisor to serve from its own. Before the ready below: the supervisor waits for
    // them before its go, and PID 1 waits for the go.
    send_listeners();
    // Our /proc/self/net is the new namespace's now: what these read stays its, whoever
    // reads them later.
    let counters = ["/proc/self/net/snmp", "/proc/self/net/snmp6"].map(|path| {
        nix::fcntl::openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    });
    let mut numbers = [0u8; 12];
    for (slot, fd) in numbers.chunks_exact_mut(4).zip(
        std::iter::once(namespace.as_raw_fd()).chain(
            counters
                .iter()
                .map(|fd| fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())),
        ),
    ) {
        slot.copy_from_slice(&fd.to_ne_bytes());
    }
    let _ = nix::unistd::write(&ready, &numbers);
    // Keep the descriptors open until PID 1 has taken its copies.
    let mut byte = [0u8; 1];
    let _ = nix::unistd::read(&hold, &mut byte);
    sys::exit_now(0)
}

/// Listen on the proxy's ports of the new namespace's `lo`, and send both sockets to the
/// supervisor (see `toolbox_spec::PROXY_PORTS`); or say why not.
fn send_listeners() {
    use nix::sys::socket::{self, ControlMessage, MsgFlags};
    let made: Result<Vec<OwnedFd>, String> = toolbox_spec::PROXY_PORTS
        .iter()
        .map(|&port| {
            listen_on(port).map_err(|errno| format!("listen on 127.0.0.1:{port}: {errno}"))
        })
        .collect();
    let (message, fds): (Vec<u8>, Vec<i32>) = match &made {
        Ok(listeners) => (
            toolbox_spec::LISTENERS.to_vec(),
            listeners.iter().map(AsRawFd::as_raw_fd).collect(),
        ),
        Err(why) => {
            let mut message = toolbox_spec::LISTENERS_FAILED.to_vec();
            message.extend_from_slice(why.as_bytes());
            (message, Vec::new())
        }
    };
    let rights = [ControlMessage::ScmRights(&fds)];
    let sent = socket::sendmsg::<()>(
        toolbox_spec::fds::CONTROL,
        &[std::io::IoSlice::new(&message)],
        if fds.is_empty() { &[] } else { &rights },
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    // The supervisor keeps its copies; ours close when we leave. (A send that failed leaves
    // the supervisor to give up on the job when no message comes.)
    let _ = sent;
}

fn listen_on(port: u16) -> Result<OwnedFd, nix::errno::Errno> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port))?;
    socket::listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

impl NetHelper {
    /// End a helper whose namespace the job will not use (it has the host's network). It
    /// dies once its `unshare` returns; reap the pid returned before the tool starts.
    pub fn discard(self) -> nix::unistd::Pid {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        self.pid
    }

    /// Wait until the namespace is ready, take the helper's descriptor of it, and let the
    /// helper go: reap the pid returned before the tool starts (also on an error, which
    /// means the helper failed and has said why).
    pub fn take(self) -> (Result<Netns, SetupError>, nix::unistd::Pid) {
        let mut numbers = [0u8; 12];
        let taken = match nix::unistd::read(&self.ready, &mut numbers) {
            Ok(12) => {
                let [namespace, snmp, snmp6] = [0, 4, 8].map(|at| {
                    i32::from_ne_bytes([
                        numbers[at],
                        numbers[at + 1],
                        numbers[at + 2],
                        numbers[at + 3],
                    ])
                });
                // The counters are only for a note: one that cannot be had is left out.
                let counter = |number: i32| {
                    (number >= 0)
                        .then(|| sys::pidfd_getfd(self.pidfd.as_fd(), number).ok())
                        .flatten()
                };
                sys::pidfd_getfd(self.pidfd.as_fd(), namespace)
                    .map(|namespace| Netns {
                        namespace,
                        snmp: counter(snmp),
                        snmp6: counter(snmp6),
                    })
                    .map_err(SetupError::Namespaces)
            }
            _ => Err(SetupError::NetworkNotReady),
        };
        (taken, self.pid)
    }
}

impl Netns {
    /// Join it (the tool's process, as root).
    pub fn join(&self) -> Result<(), SetupError> {
        nix::sched::setns(self.namespace.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(SetupError::Namespaces)
    }

    /// What the job tried of the network and could not have, counted by its namespace (see
    /// `Status::Network`), read from the counter files the helper opened in it.
    pub fn refused(&self) -> Option<(u64, u64)> {
        let snmp = read_all(self.snmp.as_ref()?)?;
        let no_route = snmp_field(&snmp, "Ip:", "OutNoRoutes").unwrap_or(0);
        let udp_no_ports = snmp_field(&snmp, "Udp:", "NoPorts").unwrap_or(0);
        let no_route6 = self
            .snmp6
            .as_ref()
            .and_then(read_all)
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("Ip6OutNoRoutes"))
                    .and_then(|value| value.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Some((no_route + no_route6, udp_no_ports))
    }
}

/// The whole of a counter file, read once (it is opened at its start).
fn read_all(file: &OwnedFd) -> Option<String> {
    let mut text = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(file.as_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    String::from_utf8(text).ok()
}

/// One counter of `/proc/net/snmp`, where each protocol has a line of names, then a line of
/// values, both starting with `prefix`.
fn snmp_field(snmp: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|line| line.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::snmp_field;

    #[test]
    fn snmp_counters_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL OutNoRoutes\nIp: 1 64 7\n\
                    Udp: InDatagrams NoPorts\nUdp: 3 2\n";
        assert_eq!(snmp_field(snmp, "Ip:", "OutNoRoutes"), Some(7));
        assert_eq!(snmp_field(snmp, "Udp:", "NoPorts"), Some(2));
        assert_eq!(snmp_field(snmp, "Udp:", "Missing"), None);
        assert_eq!(snmp_field(snmp, "Tcp:", "NoPorts"), None);
    }
}
