//! The supervisor's raw system calls, each in one `unsafe` block that says why it is sound.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;

/// What the spawned shim gets: its standard streams and the descriptors placed from fd 3 on.
pub struct SpawnFds<'a> {
    /// `None`: inherit ours.
    pub stdin: Option<RawFd>,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub placed: &'a [RawFd],
}

/// The cgroup the spawned shim starts in.
#[derive(Debug, Clone, Copy)]
pub enum SpawnCgroup {
    /// Ours (cgroup v1, where the shim joins the job's cgroup itself, cheaply).
    Inherit,
    /// cgroup v2: the job's cgroup directory (an `O_PATH` descriptor will do). The child is
    /// cloned straight into it with `clone3(CLONE_INTO_CGROUP)`, at no cost; where clone3 is
    /// not to be had (an older kernel, a seccomp profile that hides it, an architecture
    /// without our trampoline) the child writes `0` to its `cgroup.procs` instead, which
    /// costs an RCU grace period (5–10 ms).
    Into(RawFd),
}

/// Everything the child of [`spawn`] touches between clone and exec, prepared before the
/// clone: integers and pointers to NUL-terminated strings, nothing to allocate or lock.
#[repr(C)]
struct ChildContext {
    program: *const libc::c_char,
    argv: [*const libc::c_char; 5],
    envp: [*const libc::c_char; 1],
    /// (from, to) pairs for dup2; every `from` is above every `to`.
    moves: [(RawFd, RawFd); 24],
    count: usize,
    /// Signals this process ignores, for the child to set back to their default: an ignored
    /// signal stays ignored across exec.
    ignored: [libc::c_int; 64],
    ignored_count: usize,
    /// A `cgroup.procs` to write `0` to before anything else (the child joins itself), or -1.
    join: RawFd,
    /// Written by the child when exec fails (the memory is shared until then).
    error: libc::c_int,
    /// Set by the child when it failed to join its cgroup.
    join_failed: bool,
}

/// `struct clone_args` (linux/sched.h), as far as `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct sigaction` (`rt_sigaction` on x86-64 and aarch64): libc's wrapper
/// refuses signals 32 and 33, which glibc keeps for itself, but a caller may leave them
/// ignored too.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// What `/proc/self/status` says of this process, read once: a supervisor never changes what
/// it ignores, and it installs no seccomp filter of its own (filters only ever get added, by
/// whoever started it).
struct SelfStatus {
    /// Usually just SIGPIPE, which the Rust runtime ignores, plus whatever the caller left
    /// ignored (`nohup`: SIGHUP).
    ignored: Vec<libc::c_int>,
    /// Seccomp filters this process inherited; every job would run under them too.
    seccomp_filters: u32,
}

fn self_status() -> &'static SelfStatus {
    static STATUS: std::sync::OnceLock<SelfStatus> = std::sync::OnceLock::new();
    STATUS.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        parse_self_status(&text)
    })
}

fn parse_self_status(text: &str) -> SelfStatus {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let ignored = match field("SigIgn").and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
        Some(mask) => (0..64)
            .filter(|bit| mask & (1 << bit) != 0)
            .map(|bit| bit + 1)
            .collect(),
        // Unreadable: reset them all (what the child did before it knew better).
        None => (1..=64)
            .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
            .collect(),
    };
    // `Seccomp_filters` exists since Linux 5.9; before it, mode 2 means at least one.
    let seccomp_filters = match (
        field("Seccomp_filters").and_then(|n| n.parse().ok()),
        field("Seccomp"),
    ) {
        (Some(count), _) => count,
        (None, Some("0")) | (None, None) => 0,
        (None, Some(_)) => 1,
    };
    SelfStatus {
        ignored,
        seccomp_filters,
    }
}

/// The signals this process ignores.
fn ignored_signals() -> &'static [libc::c_int] {
    &self_status().ignored
}

/// How many seccomp filters this process inherited from whoever started it (a systemd
/// unit's `ProtectHostname=`, `SystemCallFilter=`..., a container runtime's profile). They
/// cannot be lifted: every job runs under them as well as under toolbox's own.
pub fn inherited_seccomp_filters() -> u32 {
    self_status().seccomp_filters
}

/// The child's whole life: the signals we ignore back to their default, descriptors in
/// place, exec. Every signal stays blocked, as the parent blocked them for the clone, so no
/// handler of ours can run here; exec resets the handlers, and the shim unblocks the mask.
/// Only async-signal-safe calls; no Rust runtime, no allocation.
extern "C" fn exec_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildContext the parent keeps alive (and does not touch) until
    // this child has exec'd or exited: CLONE_VFORK suspends it until then.
    let ctx = unsafe { &mut *(arg as *mut ChildContext) };
    // SAFETY: rt_sigaction/dup2/execve/_exit are async-signal-safe and touch only `ctx`
    // and this child's stack; without CLONE_SIGHAND the child has its own copy of the
    // handler table, so resetting it leaves the parent's alone.
    unsafe {
        // Into the job's cgroup first: the descriptor may sit where a dup2 below goes.
        if ctx.join >= 0 && libc::write(ctx.join, b"0".as_ptr().cast(), 1) != 1 {
            ctx.error = *libc::__errno_location();
            ctx.join_failed = true;
            libc::_exit(127);
        }
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for &signal in ctx.ignored.iter().take(ctx.ignored_count) {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
        for &(from, to) in &ctx.moves[..ctx.count] {
            if libc::dup2(from, to) < 0 {
                ctx.error = *libc::__errno_location();
                libc::_exit(127);
            }
        }
        libc::execve(ctx.program, ctx.argv.as_ptr(), ctx.envp.as_ptr());
        ctx.error = *libc::__errno_location();
        libc::_exit(127)
    }
}

/// Start `program` with `argv` as the first process of new namespaces (`namespaces`:
/// CLONE_NEW* flags) in `cgroup`, with an empty environment, every signal at its default but
/// blocked (the shim unblocks them), and exactly the descriptors in `fds`. Returns its pid
/// and a pidfd.
///
/// Like `posix_spawn`, this is a vfork: the supervisor's memory is shared with the child,
/// not copied, and the calling thread waits until the child has exec'd. Creating the
/// namespaces with the process itself saves a whole process per job (about 0.1–0.2 ms on
/// our VMs): the shim is PID 1 from its first instruction. Only the pid namespace, which
/// must come with the process, is made here; the shim makes the others itself while the
/// supervisor plans the job.
pub fn spawn(
    program: &std::ffi::CStr,
    argv: &[&std::ffi::CStr],
    fds: &SpawnFds<'_>,
    namespaces: libc::c_int,
    cgroup: SpawnCgroup,
) -> std::io::Result<(i32, OwnedFd)> {
    // Lift every source above the target range first, so that no dup2 can overwrite a
    // source still waiting to be placed. The copies are close-on-exec; dup2'd targets not.
    let floor = 3 + fds.placed.len() as RawFd;
    let lift = |fd: RawFd| -> std::io::Result<OwnedFd> {
        let lifted = nix::fcntl::fcntl(
            // SAFETY: borrowed only for this fcntl; the caller keeps `fd` open for the call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(floor),
        )?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; we own it.
        Ok(unsafe { OwnedFd::from_raw_fd(lifted) })
    };
    let mut lifted: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(fds.placed.len() + 3);
    if let Some(stdin) = fds.stdin {
        lifted.push((lift(stdin)?, 0));
    }
    lifted.push((lift(fds.stdout)?, 1));
    lifted.push((lift(fds.stderr)?, 2));
    for (i, &fd) in fds.placed.iter().enumerate() {
        lifted.push((lift(fd)?, 3 + i as RawFd));
    }
    let mut ctx = ChildContext {
        program: program.as_ptr(),
        argv: [std::ptr::null(); 5],
        envp: [std::ptr::null()],
        moves: [(-1, -1); 24],
        count: lifted.len(),
        ignored: [0; 64],
        ignored_count: 0,
        join: -1,
        error: 0,
        join_failed: false,
    };
    for (slot, &signal) in ctx.ignored.iter_mut().zip(ignored_signals()) {
        *slot = signal;
        ctx.ignored_count += 1;
    }
    if lifted.len() > ctx.moves.len() || argv.len() >= ctx.argv.len() {
        return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
    }
    for (slot, arg) in ctx.argv.iter_mut().zip(argv) {
        *slot = arg.as_ptr();
    }
    for (slot, (fd, target)) in ctx.moves.iter_mut().zip(&lifted) {
        *slot = (fd.as_raw_fd(), *target);
    }
    // The child runs on its own stack (it shares our memory, so it cannot use ours). Left
    // uninitialised: zeroing it would fault in all 16 pages; the child touches one or two.
    let mut stack: Vec<u8> = Vec::with_capacity(64 * 1024);

    // Block every signal in this thread across the clone: a handler of ours must never run
    // in the child while it shares our memory. The child execs with them blocked; the shim
    // unblocks them.
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    let mut procs = None;
    let mut cloned = match cgroup {
        SpawnCgroup::Into(dir) => clone_into(&mut ctx, stack.spare_capacity_mut(), namespaces, dir),
        SpawnCgroup::Inherit => clone_vfork(&mut ctx, stack.spare_capacity_mut(), namespaces),
    };
    if let (SpawnCgroup::Into(dir), Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG)) =
        (cgroup, &cloned)
    {
        // No clone3 (or no CLONE_INTO_CGROUP) here: the child joins by `cgroup.procs`.
        JOINED_BY_PROCS.store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: borrowed for this call only; the caller keeps `dir` open across it.
        let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
        cloned = nix::fcntl::openat(
            dir,
            "cgroup.procs",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .and_then(|fd| {
            ctx.join = fd.as_raw_fd();
            procs = Some(fd);
            clone_vfork(&mut ctx, stack.spare_capacity_mut(), namespaces)
        });
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    drop(procs);
    let (pid, pidfd) = cloned?;
    if ctx.error != 0 {
        // Reap the child that failed to join its cgroup or to exec.
        let _ = nix::sys::wait::waitid(
            nix::sys::wait::Id::PIDFd(std::os::fd::AsFd::as_fd(&pidfd)),
            nix::sys::wait::WaitPidFlag::WEXITED,
        );
        let error = std::io::Error::from_raw_os_error(ctx.error);
        return Err(if ctx.join_failed {
            std::io::Error::new(error.kind(), format!("join the job's cgroup: {error}"))
        } else {
            error
        });
    }
    drop(stack);
    Ok((pid, pidfd))
}

static JOINED_BY_PROCS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a [`spawn`] into a cgroup v2 directory had to fall back to `cgroup.procs` (see
/// [`SpawnCgroup::Into`]).
pub fn joined_by_procs() -> bool {
    JOINED_BY_PROCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The vfork through glibc's `clone`, in our own cgroup. Call with every signal blocked.
fn clone_vfork(
    ctx: &mut ChildContext,
    stack: &mut [std::mem::MaybeUninit<u8>],
    namespaces: libc::c_int,
) -> Result<(i32, OwnedFd), Errno> {
    // SAFETY: one past the end of the allocation; the stack grows down from there, and
    // the allocation outlives the child's use of it (we are suspended until it execs).
    let stack_top = unsafe { stack.as_mut_ptr().add(stack.len()) } as usize & !15;
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | namespaces | libc::SIGCHLD;
    // SAFETY: `exec_child` only touches `ctx` (alive across the call) and its own stack;
    // CLONE_VFORK keeps this thread suspended until the child has exec'd or exited, so
    // nothing the child reads changes under it; with CLONE_PIDFD the kernel writes the pidfd
    // into `pidfd` (the parent_tid argument). The caller blocked every signal.
    let pid = unsafe {
        libc::clone(
            exec_child,
            stack_top as *mut libc::c_void,
            flags,
            ctx as *mut ChildContext as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(Errno::last());
    }
    // SAFETY: with CLONE_PIDFD the kernel filled in a new descriptor that we now own.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// The vfork as `clone3(CLONE_INTO_CGROUP)`: the child is born in the cgroup `dir`. glibc has
/// no wrapper for clone3 with a stack of the child's own, so a few instructions do what its
/// `clone` does: the child calls `exec_child` on its stack and exits with what it returns.
/// Call with every signal blocked.
#[cfg(target_arch = "x86_64")]
fn clone_into(
    ctx: &mut ChildContext,
    stack: &mut [std::mem::MaybeUninit<u8>],
    namespaces: libc::c_int,
    dir: RawFd,
) -> Result<(i32, OwnedFd), Errno> {
    let base = stack.as_mut_ptr() as u64;
    // The top, 16-byte aligned as the ABI wants it before a call.
    let top = (base + stack.len() as u64) & !15;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | namespaces) as u64
            | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: base,
        stack_size: top - base,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: clone3 with `args` (valid, of the size passed; the kernel writes the pidfd
    // into `pidfd`). In the parent this is one system call (it clobbers rcx and r11, as the
    // operands say). The child starts on the top of `stack`, which outlives it (CLONE_VFORK
    // suspends us until it has exec'd or exited), with r12 and r13 as we set them: it calls
    // `exec_child(ctx)`, which touches only `ctx` and its own stack, and exits; it never
    // returns into this function. The caller blocked every signal.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") ctx as *mut ChildContext,
            in("r13") exec_child as extern "C" fn(*mut libc::c_void) -> libc::c_int,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(Errno::from_raw(-ret as i32));
    }
    // SAFETY: with CLONE_PIDFD the kernel filled in a new descriptor that we now own.
    Ok((ret as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Elsewhere the child joins through `cgroup.procs` (see [`SpawnCgroup::Into`]).
#[cfg(not(target_arch = "x86_64"))]
fn clone_into(
    _ctx: &mut ChildContext,
    _stack: &mut [u8],
    _namespaces: libc::c_int,
    _dir: RawFd,
) -> Result<(i32, OwnedFd), Errno> {
    Err(Errno::ENOSYS)
}

/// A pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Set process `pid`'s nice value (best effort: it may be gone, or this may not be ours to
/// raise).
pub fn set_nice(pid: i32, nice: i32) {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
}

/// Send `signal` through a pidfd: it reaches that process or none (never a reused pid).
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number and a null siginfo (the kernel fills one in).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Grow a pipe's buffer (at most /proc/sys/fs/pipe-max-size): fewer wake-ups for a chatty
/// tool. Failure only costs speed.
pub fn set_pipe_size(fd: &OwnedFd, bytes: i32) {
    // SAFETY: F_SETPIPE_SZ on a valid descriptor changes only the pipe's capacity.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
}

/// A pipe's capacity in bytes, as it is (0 if it cannot be read).
pub fn pipe_size(fd: BorrowedFd<'_>) -> usize {
    // SAFETY: F_GETPIPE_SZ on a valid descriptor only reads the pipe's capacity.
    let size = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(size).unwrap_or(0)
}

/// How many bytes wait to be read on a pipe or a socket (FIONREAD, SIOCINQ).
pub fn queued(fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes one int, ours.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// `/dev/null`, open for writing, to splice bytes into that nobody will read: `None` where
/// it is missing or is not the null device (a regular file put in its place would keep
/// them).
pub fn null_sink() -> Option<BorrowedFd<'static>> {
    static SINK: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        let fd = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let stat = nix::sys::stat::fstat(&fd).ok()?;
        let null =
            stat.st_mode & libc::S_IFMT == libc::S_IFCHR && stat.st_rdev == libc::makedev(1, 3);
        null.then_some(fd)
    })
    .as_ref()
    .map(|fd| fd.as_fd())
}

/// Whether a pipe's reader waiting in epoll, edge-triggered (as tokio waits), is woken by
/// every write, also one to a pipe that already holds data. Linux did so before 5.5 and
/// does again since 5.14; in between only a write to an empty pipe woke it, so a reader
/// that leaves bytes in the pipe could wait for ever. Probed once, on a pipe of our own.
pub fn pipe_wakes_every_write() -> bool {
    static WAKES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WAKES.get_or_init(|| probe_pipe_wakes().unwrap_or(false))
}

fn probe_pipe_wakes() -> std::io::Result<bool> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: epoll_create1 takes a flag and returns a new descriptor, owned from here.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, and not owned elsewhere.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are valid; the kernel copies the event we own.
    if unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            read.as_raw_fd(),
            &mut event,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // The first write finds the pipe empty, the second finds a byte in it: each must wake.
    for _ in 0..2 {
        nix::unistd::write(&write, b"x")?;
        let mut ready = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event, ours; a timeout of 0 only looks.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut ready, 1, 0) };
        if n != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// SIGKILL `pid` only if it is (still) a member of the cgroup `member_path` names: the pid
/// is pinned with a pidfd first, so the membership check and the signal refer to the same
/// process even if the pid was reused in between.
pub fn kill_if_member(pid: i32, member_path: &Path) {
    let Ok(pidfd) = pidfd_open(pid) else { return };
    let mut text = String::new();
    let member = std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map(|_| {
            text.lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .any(|path| Path::new(path) == member_path)
        })
        .unwrap_or(false);
    if member {
        let _ = pidfd_signal(&pidfd, libc::SIGKILL);
    }
}

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into `buf`, which we own.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
    if got != N as isize {
        // Never expected after boot; fall back to something unique enough for a job id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id()) << 64;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

/// Whether the kernel has the new mount API the shim builds roots with (Linux 5.12+).
pub fn has_mount_api() -> bool {
    // SAFETY: mount_setattr on fd -1 with a null attribute fails without touching memory;
    // only the errno matters (ENOSYS: not implemented).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    !(ret < 0 && Errno::last() == Errno::ENOSYS)
}

/// Whether seccomp filtering is available to this process.
pub fn has_seccomp() -> bool {
    // SAFETY: PR_GET_SECCOMP reads this thread's seccomp mode; no memory is involved.
    let ret = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    ret >= 0
}

/// The kernel's Landlock ABI version, or 0 when it has none.
pub fn landlock_abi() -> u32 {
    // SAFETY: with a null attribute, size 0 and the VERSION flag (1) the kernel only returns
    // a number.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    u32::try_from(ret).unwrap_or(0)
}

/// Register a descriptor we own with the tokio reactor, for readability.
pub fn async_readable(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and always returns the same descriptor, until it is
    // dropped — which only the AsyncFd that now owns it can do.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// Take ownership of an inherited descriptor (socket activation hands us fd 3 on), checking
/// first that it is a listening Unix stream socket.
pub fn take_listening_unix_socket(fd: RawFd) -> std::io::Result<OwnedFd> {
    let invalid = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("fd {fd} {what}"))
    };
    let int_option = |level: libc::c_int, name: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int-sized buffer and its length; the kernel fails with EBADF or
        // ENOTSOCK for anything that is not an open socket.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(value)
        }
    };
    if int_option(libc::SOL_SOCKET, libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(invalid("is not a Unix socket"));
    }
    if int_option(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(invalid("is not a stream socket"));
    }
    if int_option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(invalid("is not listening"));
    }
    // SAFETY: the descriptor is an open socket, and nothing else in this process owns it: it
    // was inherited, nothing has opened a descriptor yet, and the caller takes it once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(owned)
}

/// One message from a `SOCK_SEQPACKET` socket, without waiting (`WouldBlock` if none is
/// there), with the descriptors it carried (close-on-exec): the bytes (empty at EOF) and
/// the descriptors.
pub fn receive_with_fds(fd: RawFd, most_fds: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut bytes = vec![0u8; 1024];
    let mut space = vec![0u8; nix::sys::socket::cmsg_space::<RawFd>() * most_fds.max(1)];
    let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
    let message = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in this process, and
            // nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
            );
        }
    }
    let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = message.bytes;
    bytes.truncate(n);
    if truncated {
        return Err(std::io::Error::other(
            "more descriptors came than were expected",
        ));
    }
    Ok((bytes, fds))
}

/// Whether the other end of a connected stream socket has hung up, without consuming
/// anything it sent.
pub fn peer_hung_up(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer of ours; MSG_PEEK leaves the data queued, MSG_DONTWAIT
    // never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(Errno::last(), Errno::EAGAIN | Errno::EINTR),
    }
}

/// `SO_PEERGROUPS` (not in the libc crate for Linux): its number where the socket options
/// take the generic values. Elsewhere (mips, sparc…) groups are read from `/proc`.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "x86",
    target_arch = "arm"
))]
const SO_PEERGROUPS: Option<libc::c_int> = Some(59);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "x86",
    target_arch = "arm"
)))]
const SO_PEERGROUPS: Option<libc::c_int> = None;

/// The peer's supplementary groups as they were when it connected (`SO_PEERGROUPS`), as
/// SO_PEERCRED's ids are: not what `/proc/PID/status` says when we read it, by which time
/// that pid may be another process's (the peer gone and its pid reused; and reading it is
/// a dozen calls on every connection's path).
pub fn peer_groups(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let Some(option) = SO_PEERGROUPS else {
        return Err(std::io::Error::from_raw_os_error(libc::ENOPROTOOPT));
    };
    const SIZE: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * SIZE) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes, and the kernel writes at most that.
        let done = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if done == 0 {
            groups.truncate(len as usize / SIZE);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // Too small: `len` says how much it takes.
        if err.raw_os_error() == Some(libc::ERANGE) && len as usize / SIZE > groups.len() {
            groups.resize(len as usize / SIZE, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_groups_are_the_supplementary_groups_it_had() {
        use std::os::fd::AsFd;
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer_groups(ours.as_fd()).expect("SO_PEERGROUPS");
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn self_status_tells_ignored_signals_and_inherited_seccomp_filters() {
        let status = "Name:\ttoolbox\nSigIgn:\t0000000000001001\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t8\n";
        let parsed = parse_self_status(status);
        assert_eq!(parsed.ignored, vec![libc::SIGHUP, libc::SIGPIPE]);
        assert_eq!(parsed.seccomp_filters, 8);
        // Before Linux 5.9 there is no count: mode 2 means at least one filter.
        assert_eq!(parse_self_status("Seccomp:\t2\n").seccomp_filters, 1);
        assert_eq!(parse_self_status("Seccomp:\t0\n").seccomp_filters, 0);
        // A field whose name starts like another is not taken for it.
        assert_eq!(
            parse_self_status("Seccomp_filters:\t3\nSeccomp:\t2\n").seccomp_filters,
            3
        );
    }
}
