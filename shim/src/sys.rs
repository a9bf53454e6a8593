//! Every raw system call the shim makes that `nix` does not wrap: one small safe function
//! each, with the `unsafe` confined to a single block that says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// `struct clone_args` (linux/sched.h), as far as CLONE_ARGS_SIZE_VER2.
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

/// `fork(2)` as a bare `clone3` (no atfork handlers to run). Returns `None` in the child.
///
/// Only call while the process is single-threaded (the shim always is): the child is a
/// copy of this address space, exactly as after `fork(2)`.
pub fn fork() -> Result<Option<Pid>, Errno> {
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM or CLONE_THREAD duplicates the (single-threaded)
    // caller like fork(2); `args` is a valid clone_args of the size we pass and outlives the
    // call. No stack is given, so the child runs on a copy of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = match Errno::result(ret) {
        // A seccomp filter around us that hides clone3 (as ours does): fork(2) then.
        Err(Errno::ENOSYS) => {
            // SAFETY: plain fork in a single-threaded process.
            Errno::result(unsafe { libc::fork() } as libc::c_long)?
        }
        other => other?,
    };
    Ok(if ret == 0 {
        None
    } else {
        Some(Pid::from_raw(ret as i32))
    })
}

/// Close every descriptor from `first` up.
pub fn close_fds_from(first: RawFd) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; no memory is involved. The caller owns
    // every descriptor at or above `first` (none are held by Rust objects).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// Take ownership of a descriptor inherited at a fixed number.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, Errno> {
    // Check it is open before wrapping it.
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for the duration of this fcntl(F_GETFD) probe.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the supervisor placed this descriptor here for us alone (see
    // toolbox_spec::fds); nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The status pipe (see `toolbox_spec::fds::STATUS`), open for the life of every shim
/// process and close-on-exec, so the tool never holds it.
pub fn status_fd() -> BorrowedFd<'static> {
    // SAFETY: the supervisor opens fd 4 for us and no shim code ever closes it, so it
    // stays valid for the rest of the process.
    unsafe { BorrowedFd::borrow_raw(toolbox_spec::fds::STATUS) }
}

/// `open_tree(2)`: a detached copy of the mount tree at `path`.
pub fn open_tree_clone(path: &str) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call; the
    // returned value is a new descriptor we take ownership of.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    owned(ret)
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` on the mount tree at `fd`, recursively when asked.
pub fn mount_setattr(fd: BorrowedFd<'_>, attr_set: u64, recursive: bool) -> Result<(), Errno> {
    let mut attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint
        | if recursive {
            libc::AT_RECURSIVE as libc::c_uint
        } else {
            0
        };
    // SAFETY: `attr` is a valid mount_attr of the size passed, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map(drop)
}

pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(2)`: idmap the (detached) mount at `fd`, not its submounts, by the
/// mappings of the user namespace open at `userns`.
pub fn mount_setattr_idmap(fd: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// `move_mount(2)`: attach the detached tree `from` on top of the path open at `to`.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: two valid descriptors and empty NUL-terminated paths; no memory is written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// A new, detached filesystem mount (`fsopen` + `fsconfig` + `fsmount`).
pub fn new_fs_mount(fstype: &str, options: &[(&str, &str)], attrs: u64) -> Result<OwnedFd, Errno> {
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    let fstype = cstring(fstype)?;
    // SAFETY: `fstype` is a valid NUL-terminated string; returns a new descriptor.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (key, value) in options {
        let (key, value) = (cstring(key)?, cstring(value)?);
        // SAFETY: valid descriptor and NUL-terminated key/value strings alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        Errno::result(ret)?;
    }
    // SAFETY: valid descriptor; no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(ret)?;
    // SAFETY: valid descriptor; returns a new descriptor for the mount.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// `openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: open
/// `path` strictly inside `dir`, following no symlink at all.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: libc::c_int,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;
    openat2(
        dir,
        path,
        flags,
        mode,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(2)` with RESOLVE_IN_ROOT: open `path` as a process whose root is `dir` would
/// (`..` and absolute links stay within it; no magic link is followed).
pub fn open_in_root(dir: BorrowedFd<'_>, path: &str, flags: libc::c_int) -> Result<OwnedFd, Errno> {
    const RESOLVE_IN_ROOT: u64 = 0x10;
    openat2(dir, path, flags, 0, RESOLVE_IN_ROOT)
}

fn openat2(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let path = cstring(path)?;
    let mut how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    // SAFETY: valid descriptor, NUL-terminated path and an open_how of the size passed,
    // all alive for the call; returns a new descriptor.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &mut how as *mut OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(ret)
}

/// The mount `fd` lies on (its id) and whether it is that mount's root, by `statx(2)`.
pub fn mount_of(fd: BorrowedFd<'_>) -> Result<(u64, bool), Errno> {
    // SAFETY: valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH, and a
    // statx buffer of the kernel's size, alive for the call; all zeroes (integers only) is
    // a valid statx before the kernel fills it.
    let (ret, stx) = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let ret = libc::syscall(
            libc::SYS_statx,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx as *mut libc::statx,
        );
        (ret, stx)
    };
    Errno::result(ret)?;
    let root_attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 || stx.stx_attributes_mask & root_attr == 0 {
        // A kernel older than 5.8 says neither.
        return Err(Errno::ENOSYS);
    }
    Ok((stx.stx_mnt_id, stx.stx_attributes & root_attr != 0))
}

/// `pivot_root(".", ".")`: the new root stacks on the old one, which the caller detaches.
pub fn pivot_root_here() -> Result<(), Errno> {
    // SAFETY: two valid NUL-terminated path strings; no memory is written.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    Errno::result(ret).map(drop)
}

/// Set IFF_UP on a network interface (needs CAP_NET_ADMIN in its network namespace).
pub fn interface_up(name: &str) -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads `req.ifr_name` and writes the flags into the ifreq union,
    // which is large enough; the socket descriptor is valid.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: the kernel just filled ifru_flags, so reading that union member is defined.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS only reads the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) })?;
    Ok(())
}

/// Install a handler that does nothing. PID 1 of a pid namespace only receives signals from
/// its ancestor namespace for which it has a handler; we collect them with a signalfd.
pub fn install_noop_handler(signal: nix::sys::signal::Signal) -> Result<(), Errno> {
    extern "C" fn noop(_: libc::c_int) {}
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(noop),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler is async-signal-safe (it does nothing) and stays valid forever.
    unsafe { nix::sys::signal::sigaction(signal, &action) }.map(drop)
}

/// Unblock every signal. The supervisor execs us with all of them blocked (so that none of
/// its handlers could run in its clone child), having reset to the default each signal its
/// own process ignores (exec resets handlers, not ignores): what is left to undo is the mask.
pub fn unblock_signals() -> Result<(), Errno> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// Drop every capability from the bounding set (we keep what we hold: the set only limits
/// what an exec may grant). Capabilities are numbered from 0 up to the kernel's last one,
/// and dropping the one past it fails with EINVAL: that ends the loop, with no procfs to
/// read (we are in the jail's root by now). Each drop that succeeds is final.
pub fn empty_bounding_set() -> Result<(), String> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory of ours.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        match Errno::result(ret) {
            Ok(_) => {}
            Err(Errno::EINVAL) if cap > 0 => return Ok(()),
            Err(errno) => {
                return Err(format!(
                    "drop capability {cap} from the bounding set: {errno}"
                ))
            }
        }
    }
    Ok(())
}

/// Restore a signal's default disposition (for the tool, before exec).
pub fn default_handler(signal: nix::sys::signal::Signal) -> Result<(), Errno> {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigDfl,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: SIG_DFL installs no code of ours.
    unsafe { nix::sys::signal::sigaction(signal, &action) }.map(drop)
}

/// Install a compiled seccomp BPF program on the calling thread.
pub fn install_seccomp(program: &[libc::sock_filter]) -> Result<(), Errno> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // filter and does not write through the pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(ret).map(drop)
}

/// Leave the process immediately, without running destructors or atexit handlers — the
/// right exit for the forked children of the shim.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

fn owned(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(ret)? as RawFd;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// The kernel's Landlock ABI version, or 0 when Landlock is not built in or not enabled.
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the kernel only
    // returns a number; no memory is read or written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(ret).unwrap_or(0)
}

/// A copy of descriptor `target` of the process behind `pidfd` (Linux 5.6+); close-on-exec.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags (0), and returns a
    // new descriptor or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) })
}

/// A pidfd for a child of ours (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// Whether `fd` (one we inherited and keep open) has something to read right now.
pub fn readable_now(fd: RawFd) -> bool {
    // SAFETY: borrowed for this call only; the descriptor stays open across it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

/// `dup2(fd, target)`: `target` (a standard stream, or a descriptor of `toolbox_spec::fds`)
/// becomes a copy of `fd`, without close-on-exec. Whatever `target` was is closed; it is
/// never an `OwnedFd` of ours that would be closed again.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 on a valid descriptor; `target` is one of the fixed numbers the shim
    // places itself (0, 1, 2, the status pipe), which no owned handle refers to.
    Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// One packet from a `SOCK_SEQPACKET` socket, without waiting: its bytes (in `buf`) and
/// the descriptors it carried (close-on-exec). `(0, [])` is the peer's close.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    receive(fd, buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
}

/// As [`recv_with_fds`], waiting for the bytes (from a stream socket: at most `buf.len()`).
pub fn recv_with_fds_wait(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    receive(fd, buf, nix::sys::socket::MsgFlags::empty())
}

fn receive(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: nix::sys::socket::MsgFlags,
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | flags,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in our table; nothing
            // else refers to them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// Map in, ahead of use, the pages this process will touch once its spec comes: its own
/// code and read-only data (`MADV_POPULATE_READ`), and its data, heap and stack, written now
/// (`MADV_POPULATE_WRITE`), so that none of it faults then — on a VM each fault is an exit.
/// For a jail prepared before its job (the spec is not there yet): time we would only wait.
/// Best effort: a kernel before 5.14 refuses the advice, and nothing changes.
pub fn prefault() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = std::fs::read_link("/proc/self/exe").ok();
    for line in maps.lines() {
        // start-end perms offset dev inode [path]
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3);
        let ours = match path {
            None => true,
            Some("[heap]" | "[stack]") => true,
            Some(path) => exe.as_deref().is_some_and(|exe| exe.as_os_str() == path),
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let advice = match perms.as_bytes() {
            [b'r', b'w', _, b'p'] => libc::MADV_POPULATE_WRITE,
            [b'r', b'-', _, b'p'] => libc::MADV_POPULATE_READ,
            _ => continue,
        };
        if ours && end > start {
            // SAFETY: advice on a range of our own mappings, as /proc/self/maps lists them;
            // populating neither moves nor changes what is mapped there.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        }
    }
}

/// Give our child `pid` our own CPU priority (a tool forked while its prepared jail waited at
/// the lowest, which the supervisor has restored for us since; the tool, no longer root by
/// then, could not raise its own).
pub fn share_priority(pid: Pid) -> Result<(), Errno> {
    // SAFETY: getpriority and setpriority take integers and touch no memory of ours.
    // getpriority may return -1 as a value: errno, cleared first, tells it from a failure.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(Errno::last());
        }
        Errno::result(libc::setpriority(
            libc::PRIO_PROCESS,
            pid.as_raw() as libc::id_t,
            nice,
        ))
        .map(drop)
    }
}
