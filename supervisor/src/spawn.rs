//! Starting the shim: a pipe for its spec (sent once the job is planned), a status pipe, a
//! lifeline, and pipes for the tool's output — and nothing else. The supervisor's part in
//! the jail ends at the clone flags: between clone and exec its child only places
//! descriptors (see `sys::spawn`).
//!
//! The shim is tracked by a pidfd: waiting is an epoll readiness like any pipe, and a signal
//! through it can only ever reach that process.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::socket;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use toolbox_spec::{fds, Control, ExecSpec, JailSpec, Network};

use crate::sys;

/// Pipe capacity for the tool's output: fewer wake-ups for chatty tools.
const PIPE_SIZE: i32 = 1 << 20;
/// The largest draft written into a new spec pipe (whose capacity is 64 KiB).
pub const DRAFT_MAX: usize = 32 << 10;

/// A running shim and the supervisor's ends of its pipes.
#[derive(Debug)]
pub struct Shim {
    pub process: ShimProcess,
    /// Where the spec goes once the job is planned, then the go once its limits are set;
    /// `None` once the go is sent.
    spec: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub status: pipe::Receiver,
    /// Where more commands for the jail go once the tool runs.
    pub exec: ExecPort,
}

/// The shim — PID 1 of the jail — tracked by a pidfd.
#[derive(Debug)]
pub struct ShimProcess {
    pub pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    exited: Option<WaitStatus>,
    /// The write end of the lifeline; when the supervisor dies it closes, and the shim
    /// kills the job.
    _lifeline: OwnedFd,
}

/// The tool's standard input.
#[derive(Debug)]
pub enum Stdin {
    /// The supervisor's own (`toolbox run` in a terminal or a pipeline).
    Inherit,
    /// This descriptor (a pipe, or /dev/null).
    Fd(OwnedFd),
}

/// Start the shim as PID 1 of a new pid namespace, in `cgroup`, preparing this network (the
/// spec settles it). It waits for its
/// spec ([`Shim::send_spec`]): starting it before the job is planned lets its start-up
/// (exec, runtime set-up) overlap the planning. `prepared`: a jail prepared before any job
/// for it is known (a daemon's pool), which readies all it can before its spec comes.
pub fn spawn(
    shim: &Path,
    network: Network,
    anchor: Option<&std::ffi::CStr>,
    prepared: bool,
    stdin: Stdin,
    cgroup: sys::SpawnCgroup,
) -> io::Result<Shim> {
    let (spec_r, spec_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (lifeline_r, lifeline_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (control, control_shim) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?;
    sys::set_pipe_size(&out_r, PIPE_SIZE);
    sys::set_pipe_size(&err_r, PIPE_SIZE);

    let placed = [
        spec_r.as_raw_fd(),
        status_w.as_raw_fd(),
        lifeline_r.as_raw_fd(),
        control_shim.as_raw_fd(),
    ];
    debug_assert_eq!(fds::SPEC + 3, fds::CONTROL);
    let program = CString::new(shim.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("shim path has a NUL byte"))?;
    // The pid namespace must come with the process (the shim is its PID 1). The others the
    // shim makes itself while we plan the job: mount, ipc and uts at once (ipc alone costs
    // the clone ~80 µs, which we would wait out), network in a helper.
    let namespaces = libc::CLONE_NEWPID;
    let mode = match network {
        Network::Isolated => c"isolated",
        Network::Host => c"host",
    };
    // argv[2]: the anchor, or "" for none; argv[3]: "prepared", for a prepared jail.
    let mut argv = vec![c"toolbox-shim", mode, anchor.unwrap_or(c"")];
    if prepared {
        argv.push(c"prepared");
    }
    let (pid, pidfd) = sys::spawn(
        &program,
        // The jail's PID 1 shows this in ps: the name, not the host path.
        &argv,
        &sys::SpawnFds {
            stdin: match &stdin {
                Stdin::Inherit => None,
                Stdin::Fd(fd) => Some(fd.as_raw_fd()),
            },
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            placed: &placed,
        },
        namespaces,
        cgroup,
    )?;
    // The child has its copies; ours would keep the pipes from ever reaching EOF.
    drop((
        spec_r,
        status_w,
        lifeline_r,
        out_w,
        err_w,
        stdin,
        control_shim,
    ));
    Ok(Shim {
        process: ShimProcess {
            pid,
            pidfd: sys::async_readable(pidfd)?,
            exited: None,
            _lifeline: lifeline_w,
        },
        spec: Some(pipe::Sender::from_owned_fd(spec_w)?),
        stdout: pipe::Receiver::from_owned_fd(out_r)?,
        stderr: pipe::Receiver::from_owned_fd(err_r)?,
        status: pipe::Receiver::from_owned_fd(status_r)?,
        exec: ExecPort {
            control: Arc::new(control),
            next: Arc::new(AtomicU64::new(1)),
        },
    })
}

/// The supervisor's end of a jail's control socket (see `toolbox_spec::Control`): more
/// commands to run in the jail, and signals for them. Cheap to clone; usable from the go
/// until the jail ends (then every send fails).
#[derive(Debug, Clone)]
pub struct ExecPort {
    control: Arc<OwnedFd>,
    next: Arc<AtomicU64>,
}

/// The supervisor's ends of an exec'd command's pipes.
#[derive(Debug)]
pub struct ExecPipes {
    pub id: u64,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    /// Its reports (`Enforced`, `ExecFailed`, `SetupFailed`), then its end from PID 1.
    pub status: pipe::Receiver,
}

impl ExecPort {
    /// Ask PID 1 to run `spec` in the jail with `stdin`.
    pub fn exec(&self, spec: &ExecSpec, stdin: OwnedFd) -> io::Result<ExecPipes> {
        use std::io::Write;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let memfd =
            nix::sys::memfd::memfd_create(c"toolbox-exec", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(&spec.encode())?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        sys::set_pipe_size(&out_r, PIPE_SIZE);
        sys::set_pipe_size(&err_r, PIPE_SIZE);
        let message = Control::Exec { id }.encode();
        let passed = [
            file.as_raw_fd(),
            stdin.as_raw_fd(),
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
            status_w.as_raw_fd(),
        ];
        socket::sendmsg::<()>(
            self.control.as_raw_fd(),
            &[std::io::IoSlice::new(&message)],
            &[socket::ControlMessage::ScmRights(&passed)],
            socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        // PID 1 has its copies; ours would keep the pipes from ever reaching EOF.
        drop((file, stdin, out_w, err_w, status_w));
        Ok(ExecPipes {
            id,
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
            status: pipe::Receiver::from_owned_fd(status_r)?,
        })
    }

    /// Signal exec'd command `id`'s process group (best effort: it may be gone).
    pub fn signal(&self, id: u64, signal: i32) {
        let message = Control::Signal { id, signal }.encode();
        let _ = socket::send(
            self.control.as_raw_fd(),
            &message,
            socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL,
        );
    }
}

/// An empty directory of ours, `<state>/anchor`, where the shim builds the part of a jail's
/// root no spec changes while it waits for its spec (the shim's `mounts::prebuild`): in its
/// own mount namespace, where covering it hides nothing a spec binds from. None where it
/// cannot be had (a read-only state directory, or one not ours): the shim then builds the
/// whole root once the spec is there, as it always could.
pub fn anchor() -> Option<CString> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = crate::etc_snapshot::state_dir().join("anchor");
    let ours = |meta: &std::fs::Metadata| meta.is_dir() && meta.uid() == 0;
    if !std::fs::symlink_metadata(&dir).is_ok_and(|meta| ours(&meta)) {
        let _ = std::fs::create_dir_all(dir.parent()?);
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if !std::fs::symlink_metadata(&dir).is_ok_and(|meta| ours(&meta)) {
            return None;
        }
    }
    CString::new(dir.as_os_str().as_bytes()).ok()
}

impl Shim {
    /// Hand a shim started with /dev/null the tool's stdin (before its spec, which says so:
    /// `JailSpec::stdin_passed`).
    pub fn send_stdin(&mut self, stdin: OwnedFd) -> io::Result<()> {
        if self.spec.is_none() {
            return Err(io::Error::other("the go was already sent"));
        }
        let message = Control::Stdin.encode();
        socket::sendmsg::<()>(
            self.exec.control.as_raw_fd(),
            &[std::io::IoSlice::new(&message)],
            &[socket::ControlMessage::ScmRights(&[stdin.as_raw_fd()])],
            socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Hand a shim started before its job a draft of the job's spec (`JailSpec::draft`),
    /// written at once: its pipe is new and empty, and a frame of up to [`DRAFT_MAX`] fits
    /// whole. Anything short of the whole frame fails (what was written would be read as
    /// the start of the spec: the caller then drops the shim).
    pub fn send_draft(&mut self, frame: &[u8]) -> io::Result<()> {
        let pipe = self
            .spec
            .as_ref()
            .ok_or_else(|| io::Error::other("the go was already sent"))?;
        if frame.len() > DRAFT_MAX {
            return Err(io::Error::other(format!(
                "a draft of {} bytes (at most {DRAFT_MAX})",
                frame.len()
            )));
        }
        let written = nix::unistd::write(pipe, frame)?;
        if written != frame.len() {
            return Err(io::Error::other("the draft went only partly into the pipe"));
        }
        Ok(())
    }

    /// Hand the shim its spec; it builds the jail's root as soon as it has read it all, and
    /// then waits for [`Shim::send_go`].
    pub async fn send_spec(&mut self, spec: &JailSpec) -> io::Result<()> {
        let pipe = self
            .spec
            .as_mut()
            .ok_or_else(|| io::Error::other("the spec was already sent"))?;
        pipe.write_all(&spec.encode()).await
    }

    /// Tell the shim the job's cgroup exists: it binds it into the jail's root.
    pub async fn send_made(&mut self) -> io::Result<()> {
        let pipe = self
            .spec
            .as_mut()
            .ok_or_else(|| io::Error::other("the go was already sent"))?;
        pipe.write_all(&[toolbox_spec::MADE]).await
    }

    /// The egress proxy's listening sockets (HTTP, then SOCKS), made by the jail's network
    /// helper in the job's network namespace (see `toolbox_spec::LISTENERS`). Only for a
    /// shim that prepared a network namespace of its own; waits until they come, or the
    /// helper says why not, or PID 1 is gone.
    pub async fn listeners(&self) -> io::Result<[std::net::TcpListener; 2]> {
        // Usually queued long since (a prepared jail's, always): taken at once, without
        // registering the socket with the reactor and waiting for its first turn.
        let received = match sys::receive_with_fds(self.exec.control.as_raw_fd(), 2) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let control = sys::async_readable(self.exec.control.as_fd().try_clone_to_owned()?)?;
                loop {
                    let mut ready = control.readable().await?;
                    match ready.try_io(|fd| sys::receive_with_fds(fd.as_raw_fd(), 2)) {
                        Ok(received) => break received,
                        Err(_would_block) => continue,
                    }
                }
            }
            received => received,
        };
        let (bytes, fds) = received?;
        if bytes.is_empty() {
            return Err(io::Error::other(
                "the jail's PID 1 left before its network helper made the proxy's sockets",
            ));
        }
        if let Some(why) = bytes.strip_prefix(toolbox_spec::LISTENERS_FAILED) {
            return Err(io::Error::other(String::from_utf8_lossy(why).into_owned()));
        }
        if bytes == toolbox_spec::LISTENERS {
            if let Ok([http, socks]) = <[OwnedFd; 2]>::try_from(fds) {
                return Ok([http.into(), socks.into()]);
            }
        }
        Err(io::Error::other(
            "the jail's network helper sent something other than the proxy's sockets",
        ))
    }

    /// Tell the shim the job's cgroup has its limits: it forks the tool. (Dropping the shim
    /// without this closes the pipe instead, and the shim leaves without running anything.)
    pub async fn send_go(&mut self) -> io::Result<()> {
        let mut pipe = self
            .spec
            .take()
            .ok_or_else(|| io::Error::other("the go was already sent"))?;
        pipe.write_all(&[toolbox_spec::GO]).await
    }
}

impl ShimProcess {
    /// Wait for the shim to exit and reap it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<WaitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            match waitid(
                Id::PIDFd(self.pidfd.get_ref().as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::StillAlive) => ready.clear_ready(),
                Ok(status) => {
                    self.exited = Some(status);
                    return Ok(status);
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Whether it has not exited (reaps it if it has).
    pub fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match waitid(
            Id::PIDFd(self.pidfd.get_ref().as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::StillAlive) => true,
            Ok(status) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// Its CPU priority (a nice value; best effort: it may be gone).
    pub fn set_nice(&self, nice: i32) {
        if self.exited.is_none() {
            // Our child's pid: not reused before we reap it.
            sys::set_nice(self.pid, nice);
        }
    }

    /// Signal the shim (PID 1 of the jail; it has handlers for what we send, and SIGKILL
    /// from an ancestor namespace always lands).
    pub fn signal(&self, signal: i32) {
        if self.exited.is_none() {
            let _ = sys::pidfd_signal(self.pidfd.get_ref(), signal);
        }
    }
}

impl Drop for ShimProcess {
    /// A safety net only — jobs are ended through the shim, never by dropping it: kill and
    /// reap, so that no zombie is left behind.
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = sys::pidfd_signal(self.pidfd.get_ref(), libc::SIGKILL);
            let _ = waitid(
                Id::PIDFd(self.pidfd.get_ref().as_fd()),
                WaitPidFlag::WEXITED,
            );
        }
    }
}
