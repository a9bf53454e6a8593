//! The seccomp filter every tool runs under, compiled once per supervisor (before any fork)
//! and handed to the shim as finished BPF.
//!
//! It denies the escape and kernel-attack surface with EPERM — a clear error for the tool,
//! never a crash — and allows everything else, so ordinary tools are unaffected.
//!
//! The program is a balanced binary search over the syscall numbers it cares about: any
//! syscall runs about eight instructions. (seccompiler's linear chain — our reference in the
//! tests, which must agree with it on every syscall — is ~340 instructions, ~60 of them on
//! every allowed syscall; the kernel also emulates the filter for each syscall number at
//! install time to build its action cache, which made installing it cost ~0.3 ms a job.)

use std::collections::HashMap;
use std::sync::OnceLock;

use toolbox_spec::SockFilter;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SeccompError {
    #[error("compile the seccomp filter: {0}")]
    Compile(String),
    #[error("seccomp filters are not supported on this architecture")]
    Arch,
}

/// Denied outright, listed alphabetically.
#[cfg(target_arch = "x86_64")]
const DENIED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_adjtimex,
    libc::SYS_bpf,
    libc::SYS_chroot,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_init_module,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_name_to_handle_at,
    libc::SYS_nfsservctl,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_perf_event_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_syslog,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_vhangup,
];

#[cfg(target_arch = "aarch64")]
const DENIED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_adjtimex,
    libc::SYS_bpf,
    libc::SYS_chroot,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_init_module,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_name_to_handle_at,
    libc::SYS_nfsservctl,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_perf_event_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_syslog,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_userfaultfd,
    libc::SYS_vhangup,
];

/// clone(2) flags that would make a new namespace.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWUTS as u64,
];

/// Terminal ioctls that inject input or reach the console (compared on the low 32 bits, as
/// the kernel does — CVE-2019-10063).
const DENIED_IOCTLS: [u64; 2] = [ioctl_nr(libc::TIOCSTI), ioctl_nr(libc::TIOCLINUX)];

/// An ioctl request as the system call's 64-bit argument (libc types requests as `c_ulong` on
/// glibc and as `c_int` on musl).
#[allow(clippy::unnecessary_cast)]
const fn ioctl_nr(request: libc::Ioctl) -> u64 {
    request as u64
}

/// The compiled filter, built on first use and shared by every job of this process.
pub fn filter() -> Result<&'static [SockFilter], SeccompError> {
    static FILTER: OnceLock<Result<Vec<SockFilter>, SeccompError>> = OnceLock::new();
    FILTER.get_or_init(compile).as_deref().map_err(Clone::clone)
}

/// What the filter does with one syscall number it singles out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Verdict {
    Deny,
    /// ENOSYS: clone3's flags live in memory a filter cannot read; ENOSYS makes libc fall
    /// back to clone(2), whose flags the filter does check.
    NoSys,
    /// Deny if any namespace flag is set in the first argument.
    CloneFlags,
    /// Deny the terminal requests in [`DENIED_IOCTLS`] (second argument, low 32 bits, as the
    /// kernel compares them — CVE-2019-10063).
    Ioctl,
    /// Deny if the mode in this argument (0-based) has the set-user-ID or set-group-ID bit.
    SetidMode(u8),
    /// socket(2) and socketpair(2): only the families in [`FAMILIES`] (EAFNOSUPPORT for the
    /// rest), and of netlink only the protocols in [`NETLINK_PROTOCOLS`] (EPROTONOSUPPORT).
    Family,
}

/// The socket families a job may open, in every network mode: Unix sockets, TCP/UDP over IPv4
/// and IPv6 (which reach only as far as the job's network namespace does), and netlink for
/// what tools ask of their own namespace (interfaces, addresses: glibc's `getaddrinfo`, `ip`,
/// `ss`). Every other family is refused before the kernel looks at it — and before it loads
/// a module for it: vsock, which a network namespace does not contain (it reaches the host or
/// hypervisor from any namespace), packet sockets, the kernel crypto API (`AF_ALG`), key
/// management (`AF_KEY`), XDP, Bluetooth, CAN, RDS, TIPC, SMC and the rest, whose kernel code
/// no ordinary tool needs and many exploits have.
const FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

/// The netlink protocols a job may open: routing (interfaces, addresses, routes of its own
/// namespace) and socket diagnostics (`ss`). Not audit, uevents, netfilter, xfrm, generic
/// netlink (Wi-Fi, WireGuard, ethtool, …): nothing a tool in a jail has a use for.
const NETLINK_PROTOCOLS: [u32; 2] = [libc::NETLINK_ROUTE as u32, NETLINK_SOCK_DIAG];
const NETLINK_SOCK_DIAG: u32 = 4;

/// Calls that set a file's mode, with the argument holding it: in an idmapped workspace the
/// tool's files belong to the workspace's owner (root, say) on disk, so a set-ID bit would
/// make a set-ID-root program for the host. (openat2's mode is in memory: it gets ENOSYS,
/// and libc's open does not use it.)
#[cfg(target_arch = "x86_64")]
const MODE_CALLS: &[(i64, u8)] = &[
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_creat, 1),
    (libc::SYS_open, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_mknod, 1),
    (libc::SYS_mknodat, 2),
];
#[cfg(target_arch = "aarch64")]
const MODE_CALLS: &[(i64, u8)] = &[
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_mknodat, 2),
];

/// The base deny list a policy starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// The escape and kernel-attack surface ([`DENIED`]).
    #[default]
    Default,
    /// The default list, and calls ordinary tools never need ([`STRICT_EXTRA`]).
    Strict,
}

/// A policy's filter: a base list, more syscalls to deny, some of the list to allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub base: Base,
    /// Names, as the policy wrote them (checked against [`syscall_number`]).
    pub deny: Vec<String>,
    pub allow: Vec<String>,
}

/// Calls the `strict` profile also denies: personality (turning ASLR off), comparing and
/// stealing other processes' descriptors and memory hints, NUMA placement, secret memory,
/// fanotify.
const STRICT_EXTRA: &[i64] = &[
    libc::SYS_personality,
    libc::SYS_kcmp,
    libc::SYS_process_madvise,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    libc::SYS_memfd_secret,
    libc::SYS_fanotify_init,
];

/// What a policy may name in `deny` or `allow`.
macro_rules! syscall_table {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// The syscalls a policy can name (without the `SYS_`): the deny lists, and calls operators
/// commonly want gone.
const NAMED: &[(&str, i64)] = syscall_table![
    SYS_acct,
    SYS_add_key,
    SYS_adjtimex,
    SYS_bpf,
    SYS_chroot,
    SYS_clock_adjtime,
    SYS_clock_settime,
    SYS_delete_module,
    SYS_finit_module,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fsopen,
    SYS_fspick,
    SYS_init_module,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_uring_setup,
    SYS_kexec_file_load,
    SYS_kexec_load,
    SYS_keyctl,
    SYS_lookup_dcookie,
    SYS_mount,
    SYS_mount_setattr,
    SYS_move_mount,
    SYS_name_to_handle_at,
    SYS_nfsservctl,
    SYS_open_by_handle_at,
    SYS_open_tree,
    SYS_perf_event_open,
    SYS_pidfd_getfd,
    SYS_pivot_root,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_ptrace,
    SYS_quotactl,
    SYS_quotactl_fd,
    SYS_reboot,
    SYS_request_key,
    SYS_setns,
    SYS_settimeofday,
    SYS_swapoff,
    SYS_swapon,
    SYS_syslog,
    SYS_umount2,
    SYS_unshare,
    SYS_userfaultfd,
    SYS_vhangup,
    SYS_personality,
    SYS_kcmp,
    SYS_process_madvise,
    SYS_mbind,
    SYS_set_mempolicy,
    SYS_migrate_pages,
    SYS_move_pages,
    SYS_memfd_secret,
    SYS_fanotify_init,
    SYS_socket,
    SYS_socketpair,
    SYS_connect,
    SYS_bind,
    SYS_listen,
    SYS_accept,
    SYS_accept4,
    SYS_execveat,
    SYS_inotify_init1,
    SYS_memfd_create,
    SYS_mknodat,
    SYS_chown,
    SYS_fchown,
    SYS_fchownat,
    SYS_sched_setaffinity,
    SYS_sched_setscheduler,
    SYS_setpriority,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_process_mrelease,
    SYS_landlock_create_ruleset,
];

/// Calls a policy may allow out of the deny lists: costly or risky, but not a way out of
/// the jail. Everything else in the lists stays denied whatever a policy says.
const ALLOWABLE: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "perf_event_open",
    "userfaultfd",
    "personality",
    "kcmp",
    "process_madvise",
    "mbind",
    "set_mempolicy",
    "migrate_pages",
    "move_pages",
    "memfd_secret",
    "fanotify_init",
    "vhangup",
    "acct",
];

/// The number of a syscall a policy names (`"personality"`), if it is one it can name.
pub fn syscall_number(name: &str) -> Option<i64> {
    NAMED
        .iter()
        .find(|(n, _)| n.strip_prefix("SYS_") == Some(name))
        .map(|(_, nr)| *nr)
}

impl Profile {
    /// Check the names: each one known; `allow` only for [`ALLOWABLE`] calls.
    pub fn check(&self) -> Result<(), String> {
        for name in self.deny.iter().chain(&self.allow) {
            if syscall_number(name).is_none() {
                return Err(format!("{name:?} is not a syscall a policy can name"));
            }
        }
        for name in &self.allow {
            if !ALLOWABLE.contains(&name.as_str()) {
                return Err(format!(
                    "{name:?} can never be allowed: it is part of how the jail holds"
                ));
            }
        }
        Ok(())
    }

    /// Whether this is the plain default (the shared, precompiled filter).
    pub fn is_default(&self) -> bool {
        self.base == Base::Default && self.deny.is_empty() && self.allow.is_empty()
    }

    fn denied(&self) -> Vec<i64> {
        let mut list: Vec<i64> = DENIED.to_vec();
        if self.base == Base::Strict {
            list.extend(STRICT_EXTRA);
        }
        list.extend(self.deny.iter().filter_map(|n| syscall_number(n)));
        let allowed: Vec<i64> = self
            .allow
            .iter()
            .filter_map(|n| syscall_number(n))
            .collect();
        list.retain(|nr| !allowed.contains(nr));
        // The calls with their own verdicts are never plain entries.
        list.retain(|nr| ![libc::SYS_clone, libc::SYS_clone3, libc::SYS_ioctl].contains(nr));
        list.sort_unstable();
        list.dedup();
        list
    }
}

/// The filter for a profile: the shared one for the default, else compiled now (~12 µs).
/// `no_setid`: also refuse set-ID mode bits (a job writing a workspace idmapped to another
/// owner, see [`MODE_CALLS`]).
pub fn filter_for(
    profile: &Profile,
    no_setid: bool,
) -> Result<std::borrow::Cow<'static, [SockFilter]>, SeccompError> {
    if profile.is_default() && !no_setid {
        return filter().map(std::borrow::Cow::Borrowed);
    }
    compile_list(&profile.denied(), no_setid).map(std::borrow::Cow::Owned)
}

/// Compile the default filter (uncached; see [`filter`]).
pub fn compile() -> Result<Vec<SockFilter>, SeccompError> {
    compile_list(DENIED, false)
}

fn compile_list(denied: &[i64], no_setid: bool) -> Result<Vec<SockFilter>, SeccompError> {
    let mut keys: Vec<(u32, Verdict)> = denied
        .iter()
        .map(|&nr| (nr as u32, Verdict::Deny))
        .collect();
    if no_setid {
        keys.retain(|(nr, _)| !MODE_CALLS.iter().any(|(call, _)| *call as u32 == *nr));
        keys.extend(
            MODE_CALLS
                .iter()
                .map(|&(nr, arg)| (nr as u32, Verdict::SetidMode(arg))),
        );
        if !keys.iter().any(|(nr, _)| *nr == libc::SYS_openat2 as u32) {
            keys.push((libc::SYS_openat2 as u32, Verdict::NoSys));
        }
    }
    keys.push((libc::SYS_clone as u32, Verdict::CloneFlags));
    keys.push((libc::SYS_clone3 as u32, Verdict::NoSys));
    // socket and socketpair by family, unless the profile denies them outright.
    for call in [libc::SYS_socket, libc::SYS_socketpair] {
        if !keys.iter().any(|(nr, _)| *nr == call as u32) {
            keys.push((call as u32, Verdict::Family));
        }
    }
    keys.push((libc::SYS_ioctl as u32, Verdict::Ioctl));
    keys.sort_unstable_by_key(|(nr, _)| *nr);
    if keys.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(SeccompError::Compile("a syscall is listed twice".into()));
    }
    let mut asm = Asm::default();
    prologue(&mut asm)?;
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR);
    search(&mut asm, &keys);
    // The blocks the leaves jump to, then the shared returns.
    asm.label(Label::Verdict(Verdict::CloneFlags));
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARG0_LOW);
    let namespaces = NAMESPACE_FLAGS
        .iter()
        .fold(0, |mask, flag| mask | *flag as u32);
    asm.jump(
        BPF_JSET_K,
        namespaces,
        Label::Verdict(Verdict::Deny),
        Label::Allow,
    );
    asm.label(Label::Verdict(Verdict::Ioctl));
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARG1_LOW);
    for (i, request) in DENIED_IOCTLS.iter().enumerate() {
        let otherwise = if i + 1 == DENIED_IOCTLS.len() {
            Label::Allow
        } else {
            Label::Next
        };
        asm.jump(
            BPF_JEQ_K,
            *request as u32,
            Label::Verdict(Verdict::Deny),
            otherwise,
        );
    }
    if no_setid {
        for arg in [1u8, 2, 3] {
            asm.label(Label::Verdict(Verdict::SetidMode(arg)));
            asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARG0_LOW + 8 * u32::from(arg));
            asm.jump(
                BPF_JSET_K,
                libc::S_ISUID | libc::S_ISGID,
                Label::Verdict(Verdict::Deny),
                Label::Allow,
            );
        }
    }
    // The family is an int: the kernel reads the low 32 bits, and so do we.
    asm.label(Label::Verdict(Verdict::Family));
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARG0_LOW);
    let netlink = asm.fresh();
    for family in FAMILIES {
        let to = if family == libc::AF_NETLINK as u32 {
            netlink
        } else {
            Label::Allow
        };
        asm.jump(BPF_JEQ_K, family, to, Label::Next);
    }
    asm.stmt(BPF_RET_K, errno(libc::EAFNOSUPPORT));
    asm.label(netlink);
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARG2_LOW);
    for protocol in NETLINK_PROTOCOLS {
        asm.jump(BPF_JEQ_K, protocol, Label::Allow, Label::Next);
    }
    asm.stmt(BPF_RET_K, errno(libc::EPROTONOSUPPORT));
    asm.label(Label::Allow);
    asm.stmt(BPF_RET_K, SECCOMP_RET_ALLOW);
    asm.label(Label::Verdict(Verdict::Deny));
    asm.stmt(BPF_RET_K, errno(libc::EPERM));
    asm.label(Label::Verdict(Verdict::NoSys));
    asm.stmt(BPF_RET_K, errno(libc::ENOSYS));
    asm.finish()
}

/// A binary search over `keys` (sorted): each leaf jumps to its verdict's block, anything
/// not listed to Allow. The accumulator holds the syscall number.
fn search(asm: &mut Asm, keys: &[(u32, Verdict)]) {
    if let [(nr, verdict)] = keys {
        asm.jump(BPF_JEQ_K, *nr, Label::Verdict(*verdict), Label::Allow);
        return;
    }
    let (low, high) = keys.split_at(keys.len() / 2);
    let upper = asm.fresh();
    asm.jump(BPF_JGE_K, high[0].0, upper, Label::Next);
    search(asm, low);
    asm.label(upper);
    search(asm, high);
}

/// The native syscall ABI, as seccomp_data.arch names it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Runs first: foreign syscall ABIs (i386 via `int 0x80`, x32) get EPERM.
fn prologue(asm: &mut Asm) -> Result<(), SeccompError> {
    asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH);
    asm.jump(
        BPF_JEQ_K,
        AUDIT_ARCH,
        Label::Next,
        Label::Verdict(Verdict::Deny),
    );
    if cfg!(target_arch = "x86_64") {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        asm.stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR);
        asm.jump(
            BPF_JGE_K,
            X32_SYSCALL_BIT,
            Label::Verdict(Verdict::Deny),
            Label::Next,
        );
        Ok(())
    } else if cfg!(target_arch = "aarch64") {
        Ok(())
    } else {
        Err(SeccompError::Arch)
    }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// The low 32 bits of args[0], args[1] and args[2] (little-endian).
const SECCOMP_DATA_ARG0_LOW: u32 = 16;
const SECCOMP_DATA_ARG1_LOW: u32 = 24;
const SECCOMP_DATA_ARG2_LOW: u32 = 32;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

fn errno(e: i32) -> u32 {
    0x0005_0000 | e as u32
}

/// Where a jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Label {
    /// The next instruction (offset 0).
    Next,
    Allow,
    Verdict(Verdict),
    Fresh(usize),
}

/// A tiny forward-only assembler: jumps name labels, resolved into 8-bit offsets at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<(u16, u32, Label, Label)>,
    labels: HashMap<Label, usize>,
    fresh: usize,
}

impl Asm {
    fn stmt(&mut self, code: u16, k: u32) {
        self.insns.push((code, k, Label::Next, Label::Next));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Label, jf: Label) {
        self.insns.push((code, k, jt, jf));
    }

    fn fresh(&mut self) -> Label {
        self.fresh += 1;
        Label::Fresh(self.fresh)
    }

    fn label(&mut self, label: Label) {
        self.labels.insert(label, self.insns.len());
    }

    fn finish(self) -> Result<Vec<SockFilter>, SeccompError> {
        let offset = |at: usize, label: Label| -> Result<u8, SeccompError> {
            if label == Label::Next {
                return Ok(0);
            }
            let target = *self
                .labels
                .get(&label)
                .ok_or_else(|| SeccompError::Compile(format!("no label {label:?}")))?;
            target
                .checked_sub(at + 1)
                .and_then(|o| u8::try_from(o).ok())
                .ok_or_else(|| {
                    SeccompError::Compile(format!("jump from {at} to {target} does not fit"))
                })
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(at, &(code, k, jt, jf))| {
                Ok(SockFilter {
                    code,
                    jt: offset(at, jt)?,
                    jf: offset(at, jf)?,
                    k,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::*;

    /// The same rules through seccompiler, with the same handling of foreign ABIs and
    /// clone3 in front: the reference our filter must agree with.
    fn reference() -> Vec<SockFilter> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
        let cond =
            |arg, len, op, value| SeccompCondition::new(arg, len, op, value).expect("condition");
        rules.insert(
            libc::SYS_clone,
            NAMESPACE_FLAGS
                .iter()
                .map(|&f| {
                    SeccompRule::new(vec![cond(
                        0,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::MaskedEq(f),
                        f,
                    )])
                    .expect("rule")
                })
                .collect(),
        );
        rules.insert(
            libc::SYS_ioctl,
            DENIED_IOCTLS
                .iter()
                .map(|&r| {
                    SeccompRule::new(vec![cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, r)])
                        .expect("rule")
                })
                .collect(),
        );
        let arch = if cfg!(target_arch = "x86_64") {
            TargetArch::x86_64
        } else {
            TargetArch::aarch64
        };
        let eperm = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .expect("filter");
        let program: BpfProgram = eperm.try_into().expect("compile");
        // In front, with inline returns: foreign ABIs get EPERM, clone3 ENOSYS.
        let insn = |code, jt, jf, k| SockFilter { code, jt, jf, k };
        let mut out = vec![
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
            insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
            insn(BPF_RET_K, 0, 0, errno(libc::EPERM)),
        ];
        if cfg!(target_arch = "x86_64") {
            out.extend([
                insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
                insn(BPF_JGE_K, 0, 1, 0x4000_0000),
                insn(BPF_RET_K, 0, 0, errno(libc::EPERM)),
            ]);
        } else {
            out.push(insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR));
        }
        out.extend([
            insn(BPF_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
            insn(BPF_RET_K, 0, 0, errno(libc::ENOSYS)),
        ]);
        out.extend(program.iter().map(|i| insn(i.code, i.jt, i.jf, i.k)));
        out
    }

    /// Run a classic BPF seccomp program over `seccomp_data`; its return value.
    fn run(program: &[SockFilter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            let taken = |cond: bool| {
                if cond {
                    insn.jt as usize
                } else {
                    insn.jf as usize
                }
            };
            match insn.code {
                0x20 => {
                    acc = u32::from_le_bytes(
                        data[insn.k as usize..insn.k as usize + 4]
                            .try_into()
                            .expect("4 bytes"),
                    )
                }
                0x54 => acc &= insn.k,
                0x05 => pc += insn.k as usize,
                0x15 => pc += taken(acc == insn.k),
                0x25 => pc += taken(acc > insn.k),
                0x35 => pc += taken(acc >= insn.k),
                0x45 => pc += taken(acc & insn.k != 0),
                0x06 => return insn.k,
                other => panic!("opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    #[test]
    fn the_search_filter_agrees_with_seccompilers_on_every_syscall() {
        let ours = compile().expect("compiles");
        let theirs = reference();
        let arch = AUDIT_ARCH;
        let ns = NAMESPACE_FLAGS;
        let mut arg0s: Vec<u64> = vec![0, libc::SIGCHLD as u64, 0x3d0f00, u64::MAX, 1 << 40];
        arg0s.extend(ns.iter().map(|f| f | libc::SIGCHLD as u64));
        arg0s.push(ns.iter().fold(0, |a, f| a | f));
        let arg1s = [
            0u64,
            ioctl_nr(libc::TIOCSTI),
            ioctl_nr(libc::TIOCLINUX),
            ioctl_nr(libc::TIOCSTI) | 1 << 32,
            ioctl_nr(libc::TCGETS),
            ioctl_nr(libc::TIOCLINUX) | 0xffff_ffff_0000_0000,
        ];
        // socket and socketpair are judged by family (their own test, below).
        let by_family = [libc::SYS_socket as u32, libc::SYS_socketpair as u32];
        for nr in (0..1024).chain([0x4000_0000, 0x4000_0027, u32::MAX]) {
            if by_family.contains(&nr) {
                continue;
            }
            for &a0 in &arg0s {
                for &a1 in &arg1s {
                    let args = [a0, a1, 0, 0, 0, 0];
                    assert_eq!(
                        run(&ours, nr, arch, args),
                        run(&theirs, nr, arch, args),
                        "nr {nr} args {args:x?}"
                    );
                }
            }
        }
        // A foreign architecture (i386) is denied, never killed.
        assert_eq!(run(&ours, 20, 0x4000_0003, [0; 6]), errno(libc::EPERM));
        // And the point of it: short paths.
        assert!(
            ours.len() < theirs.len() / 2,
            "{} vs {}",
            ours.len(),
            theirs.len()
        );
    }

    #[test]
    fn denied_syscalls_get_eperm_and_the_rest_pass() {
        let program = compile().expect("compiles");
        let arch = AUDIT_ARCH;
        assert_eq!(
            run(&program, libc::SYS_mount as u32, arch, [0; 6]),
            errno(libc::EPERM)
        );
        assert_eq!(
            run(&program, libc::SYS_clone3 as u32, arch, [0; 6]),
            errno(libc::ENOSYS)
        );
        assert_eq!(
            run(&program, libc::SYS_read as u32, arch, [0; 6]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(
                &program,
                libc::SYS_clone as u32,
                arch,
                [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
            ),
            SECCOMP_RET_ALLOW
        );
        let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
        assert_eq!(
            run(&program, libc::SYS_clone as u32, arch, newuser),
            errno(libc::EPERM)
        );
        let tiocsti_high = [0, ioctl_nr(libc::TIOCSTI) | 1 << 32, 0, 0, 0, 0];
        assert_eq!(
            run(&program, libc::SYS_ioctl as u32, arch, tiocsti_high),
            errno(libc::EPERM)
        );
        let mut sorted = DENIED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DENIED.len(), "a syscall is listed twice");
    }

    #[test]
    fn sockets_open_only_in_the_listed_families_and_netlink_protocols() {
        let arch = AUDIT_ARCH;
        for program in [
            compile().expect("compiles"),
            compile_list(DENIED, true).expect("compiles"),
        ] {
            for call in [libc::SYS_socket as u32, libc::SYS_socketpair as u32] {
                let verdict = |family: u64, protocol: u64| {
                    run(&program, call, arch, [family, 1, protocol, 0, 0, 0])
                };
                for family in FAMILIES {
                    let protocol = if family == libc::AF_NETLINK as u32 {
                        u64::from(libc::NETLINK_ROUTE as u32)
                    } else {
                        0
                    };
                    assert_eq!(verdict(family.into(), protocol), SECCOMP_RET_ALLOW);
                    // Only the low 32 bits are the family, as the kernel reads them.
                    assert_eq!(
                        verdict(u64::from(family) | 1 << 32, protocol),
                        SECCOMP_RET_ALLOW
                    );
                }
                // vsock, packet, AF_ALG, AF_KEY, XDP, Bluetooth, CAN, RDS, TIPC, and the rest.
                for family in (0..64u64).filter(|f| !FAMILIES.contains(&(*f as u32))) {
                    assert_eq!(
                        verdict(family, 0),
                        errno(libc::EAFNOSUPPORT),
                        "family {family}"
                    );
                }
                assert_eq!(verdict(u64::from(u32::MAX), 0), errno(libc::EAFNOSUPPORT));
                let netlink = libc::AF_NETLINK as u64;
                assert_eq!(verdict(netlink, 4), SECCOMP_RET_ALLOW, "sock_diag");
                for protocol in [9u64, 12, 15, 16, 6, 1 << 32 | 9] {
                    assert_eq!(
                        verdict(netlink, protocol),
                        errno(libc::EPROTONOSUPPORT),
                        "netlink protocol {protocol}"
                    );
                }
            }
        }
        // A profile that denies socket outright still does.
        let no_sockets = Profile {
            deny: vec!["socket".into()],
            ..Profile::default()
        };
        let program = filter_for(&no_sockets, false).expect("compiles");
        let inet = [libc::AF_INET as u64, 1, 0, 0, 0, 0];
        assert_eq!(
            run(&program, libc::SYS_socket as u32, arch, inet),
            errno(libc::EPERM)
        );
    }

    #[test]
    fn profiles_add_and_remove_calls_but_never_the_jail_s_own() {
        let strict = Profile {
            base: Base::Strict,
            ..Profile::default()
        };
        assert!(strict.denied().contains(&libc::SYS_personality));
        assert!(!Profile::default().denied().contains(&libc::SYS_personality));
        let custom = Profile {
            base: Base::Default,
            deny: vec!["socket".into()],
            allow: vec!["io_uring_setup".into()],
        };
        custom.check().expect("valid");
        assert!(custom.denied().contains(&libc::SYS_socket));
        assert!(!custom.denied().contains(&libc::SYS_io_uring_setup));
        assert!(custom.denied().contains(&libc::SYS_mount));
        for bad in ["mount", "unshare", "ptrace", "bpf"] {
            let profile = Profile {
                allow: vec![bad.into()],
                ..Profile::default()
            };
            assert!(profile.check().is_err(), "{bad} could be allowed");
        }
        let unknown = Profile {
            deny: vec!["frobnicate".into()],
            ..Profile::default()
        };
        assert!(unknown.check().is_err());
        assert!(filter_for(&custom, false).expect("compiles").len() > 10);
        assert!(matches!(
            filter_for(&Profile::default(), false).expect("shared"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
