//! A small hostile program for the end-to-end tests: it tries what a malicious tool would
//! and reports, as one JSON line on stdout, what happened. Run inside a jail it must fail at
//! every attack; run outside (as a control) it shows what a broken jail would allow.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde_json::{json, Map, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("usage: probe COMMAND [ARG...]");
        std::process::exit(2);
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let report = match command.as_str() {
        "read" => paths(&rest, read),
        "write" => paths(&rest, write),
        "readdir" => paths(&rest, readdir),
        "status" => status(),
        "env" => json!(std::env::vars().collect::<std::collections::BTreeMap<String, String>>()),
        "syscalls" => syscalls(),
        "families" => families(),
        "interfaces" => interfaces(),
        "connect" => connect(rest[0]),
        "serve" => serve(rest[0], rest[1]),
        "abstract" => abstract_connect(rest[0]),
        "tcp-self" => tcp_self(),
        "kill-all" => kill_all(),
        "daemonize" => daemonize(rest[0]),
        "detach" => detach(rest[0], rest[1].parse().expect("MiB")),
        "memhog" => memhog(rest[0].parse().expect("MiB")),
        "forkbomb" => forkbomb(rest[0]),
        "ignore-term" => ignore_term(rest[0]),
        "flood" => flood(
            rest[0].parse().expect("bytes"),
            rest.get(1)
                .map_or(1 << 20, |w| w.parse().expect("bytes a write")),
        ),
        "spin" => spin(rest[0].parse().expect("seconds")),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs_f64(
                rest[0].parse().expect("seconds"),
            ));
            json!({"slept": true})
        }
        "exit" => std::process::exit(rest[0].parse().expect("code")),
        "signal" => {
            // SAFETY: sends a signal to ourselves.
            unsafe { libc::kill(libc::getpid(), rest[0].parse().expect("signal")) };
            std::thread::sleep(std::time::Duration::from_secs(5));
            json!({"survived": true})
        }
        other => {
            eprintln!("probe: unknown command {other}");
            std::process::exit(2);
        }
    };
    println!("{report}");
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn outcome(result: std::io::Result<String>) -> Value {
    match result {
        Ok(detail) => json!({"ok": true, "detail": detail}),
        Err(err) => {
            json!({"ok": false, "errno": err.raw_os_error().unwrap_or(-1), "error": err.to_string()})
        }
    }
}

fn paths(paths: &[&str], each: fn(&str) -> std::io::Result<String>) -> Value {
    let results: Map<String, Value> = paths
        .iter()
        .map(|p| (p.to_string(), outcome(each(p))))
        .collect();
    Value::Object(results)
}

fn read(path: &str) -> std::io::Result<String> {
    let mut data = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut data)?;
    Ok(String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned())
}

fn write(path: &str) -> std::io::Result<String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(b"probe was here\n")?;
    Ok("written".into())
}

fn readdir(path: &str) -> std::io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names.join(" "))
}

fn status() -> Value {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let fields: Map<String, Value> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            k.starts_with("Cap") || ["NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups"].contains(k)
        })
        .map(|(k, v)| (k.to_string(), json!(v.trim())))
        .collect();
    let mut report = Value::Object(fields);
    // SAFETY: plain getters.
    report["pid"] = json!(unsafe { libc::getpid() });
    // SAFETY: plain getters.
    report["sid_is_self"] = json!(unsafe { libc::getsid(0) == libc::getpid() });
    report["hostname"] = json!(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim());
    report["cgroup"] = json!(std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    report["ns"] = own_namespaces();
    report["pids"] = json!(readdir("/proc")
        .unwrap_or_default()
        .split(' ')
        .filter(|e| e.parse::<u32>().is_ok())
        .count());
    report
}

/// Each namespace this process is in, as `/proc/self/ns` names it (`ipc:[4026531839]`).
fn own_namespaces() -> Value {
    ["cgroup", "ipc", "mnt", "net", "pid", "uts"]
        .iter()
        .map(|ns| {
            let link = std::fs::read_link(format!("/proc/self/ns/{ns}"))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            (ns.to_string(), json!(link))
        })
        .collect::<Map<String, Value>>()
        .into()
}

/// Each forbidden syscall, with arguments that give a telling errno when no filter stops
/// it (so a control run outside the jail shows what a broken jail would allow).
/// The socket families tried by `families`: (name, family, type, protocol). The first four
/// are what a job may open; the rest a jail refuses.
const FAMILIES: &[(&str, i32, i32, i32)] = &[
    ("unix", 1, libc::SOCK_STREAM, 0),
    ("inet", 2, libc::SOCK_STREAM, 0),
    ("inet6", 10, libc::SOCK_DGRAM, 0),
    ("netlink_route", 16, libc::SOCK_RAW, 0),
    ("netlink_sock_diag", 16, libc::SOCK_RAW, 4),
    ("vsock", 40, libc::SOCK_STREAM, 0),
    ("packet", 17, libc::SOCK_DGRAM, 0),
    ("alg", 38, libc::SOCK_SEQPACKET, 0),
    ("key", 15, libc::SOCK_RAW, 2),
    ("xdp", 44, libc::SOCK_RAW, 0),
    ("bluetooth", 31, libc::SOCK_RAW, 1),
    ("can", 29, libc::SOCK_RAW, 1),
    ("rds", 21, libc::SOCK_SEQPACKET, 0),
    ("tipc", 30, libc::SOCK_RDM, 0),
    ("appletalk", 5, libc::SOCK_DGRAM, 0),
    ("ax25", 3, libc::SOCK_SEQPACKET, 0),
    ("llc", 26, libc::SOCK_DGRAM, 0),
    ("phonet", 35, libc::SOCK_DGRAM, 0),
    ("ieee802154", 36, libc::SOCK_DGRAM, 0),
    ("kcm", 41, libc::SOCK_DGRAM, 0),
    ("qipcrtr", 42, libc::SOCK_DGRAM, 0),
    ("smc", 43, libc::SOCK_STREAM, 0),
    ("mctp", 45, libc::SOCK_DGRAM, 0),
    ("netlink_generic", 16, libc::SOCK_RAW, 16),
    ("netlink_audit", 16, libc::SOCK_RAW, 9),
    ("netlink_uevent", 16, libc::SOCK_RAW, 15),
    ("netlink_netfilter", 16, libc::SOCK_RAW, 12),
];

/// Open a socket of each family in [`FAMILIES`] (and a socketpair of each): 0 where it
/// opened, else the errno.
fn families() -> Value {
    let mut sockets = Map::new();
    let mut pairs = Map::new();
    for &(name, family, kind, protocol) in FAMILIES {
        // SAFETY: socket(2) and socketpair(2) with plain integers and our own array; every
        // descriptor made is closed at once.
        unsafe {
            let fd = libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol);
            sockets.insert(name.into(), json!(if fd < 0 { errno() } else { 0 }));
            if fd >= 0 {
                libc::close(fd);
            }
            let mut pair = [-1; 2];
            let ret = libc::socketpair(
                family,
                kind | libc::SOCK_CLOEXEC,
                protocol,
                pair.as_mut_ptr(),
            );
            pairs.insert(name.into(), json!(if ret < 0 { errno() } else { 0 }));
            if ret == 0 {
                libc::close(pair[0]);
                libc::close(pair[1]);
            }
        }
    }
    json!({"socket": sockets, "socketpair": pairs})
}

fn syscalls() -> Value {
    let mut results = Map::new();
    let mut record = |name: &str, ret: libc::c_long| {
        let value = if ret < 0 { errno() } else { 0 };
        results.insert(name.to_string(), json!(value));
    };
    let nonexistent = CString::new("/nonexistent-toolbox-probe").expect("cstring");
    let dot = CString::new(".").expect("cstring");
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY: every call below passes either valid pointers to our own data or null/garbage
    // the kernel rejects; none can corrupt this process. Their results are only recorded.
    unsafe {
        record(
            "mount",
            libc::syscall(
                libc::SYS_mount,
                nonexistent.as_ptr(),
                nonexistent.as_ptr(),
                nonexistent.as_ptr(),
                0,
                null,
            ),
        );
        record(
            "umount2",
            libc::syscall(libc::SYS_umount2, nonexistent.as_ptr(), 0),
        );
        record(
            "pivot_root",
            libc::syscall(
                libc::SYS_pivot_root,
                nonexistent.as_ptr(),
                nonexistent.as_ptr(),
            ),
        );
        record(
            "chroot",
            libc::syscall(libc::SYS_chroot, nonexistent.as_ptr()),
        );
        // In a throwaway child: if it works, the probe must not end up in a new namespace.
        record(
            "unshare",
            in_child(|| libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
        );
        record("setns", libc::syscall(libc::SYS_setns, -1, 0));
        record("clone_newuser", clone_with(libc::CLONE_NEWUSER));
        record("clone_newns", clone_with(libc::CLONE_NEWNS));
        record(
            "clone_newnet",
            clone_with(libc::CLONE_NEWUSER | libc::CLONE_NEWNET),
        );
        // clone3 with a null argument: EINVAL if the kernel sees it, ENOSYS from our filter.
        record("clone3", libc::syscall(libc::SYS_clone3, null, 0));
        record("ptrace", libc::syscall(libc::SYS_ptrace, 9999, 0, 0, 0));
        let mut buf = [0u8; 8];
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 8,
        };
        let remote = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 8,
        };
        record(
            "process_vm_readv",
            libc::syscall(
                libc::SYS_process_vm_readv,
                libc::getpid(),
                &local,
                1,
                &remote,
                1,
                0,
            ),
        );
        record(
            "process_vm_writev",
            libc::syscall(
                libc::SYS_process_vm_writev,
                libc::getpid(),
                &local,
                1,
                &remote,
                1,
                0,
            ),
        );
        record("bpf", libc::syscall(libc::SYS_bpf, 9999, null, 0));
        let mut attr = [0u8; 128];
        record(
            "perf_event_open",
            libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), 0, -1, -1, 0),
        );
        // KEYCTL_GET_KEYRING_ID of the thread keyring, without creating it.
        record("keyctl", libc::syscall(libc::SYS_keyctl, 0, -1, 0));
        record(
            "add_key",
            libc::syscall(libc::SYS_add_key, null, null, null, 0, 0),
        );
        record(
            "request_key",
            libc::syscall(libc::SYS_request_key, null, null, null, 0),
        );
        record(
            "kexec_load",
            libc::syscall(libc::SYS_kexec_load, 0, 0, null, 0),
        );
        record(
            "kexec_file_load",
            libc::syscall(libc::SYS_kexec_file_load, -1, -1, 0, null, 0),
        );
        record(
            "init_module",
            libc::syscall(libc::SYS_init_module, null, 0, null),
        );
        record(
            "finit_module",
            libc::syscall(libc::SYS_finit_module, -1, null, 0),
        );
        record(
            "delete_module",
            libc::syscall(libc::SYS_delete_module, nonexistent.as_ptr(), 0),
        );
        // UFFD_USER_MODE_ONLY: allowed to unprivileged users unless a filter stops it.
        record(
            "userfaultfd",
            libc::syscall(libc::SYS_userfaultfd, 1 | libc::O_CLOEXEC),
        );
        record(
            "open_by_handle_at",
            libc::syscall(libc::SYS_open_by_handle_at, -1, null, 0),
        );
        record(
            "name_to_handle_at",
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                dot.as_ptr(),
                null,
                null,
                0,
            ),
        );
        record(
            "io_uring_setup",
            libc::syscall(libc::SYS_io_uring_setup, 0, null),
        );
        record(
            "io_uring_enter",
            libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, null, 0),
        );
        record(
            "io_uring_register",
            libc::syscall(libc::SYS_io_uring_register, -1, 0, null, 0),
        );
        record("acct", libc::syscall(libc::SYS_acct, nonexistent.as_ptr()));
        record(
            "swapon",
            libc::syscall(libc::SYS_swapon, nonexistent.as_ptr(), 0),
        );
        record(
            "swapoff",
            libc::syscall(libc::SYS_swapoff, nonexistent.as_ptr()),
        );
        record("reboot", libc::syscall(libc::SYS_reboot, 0, 0, 0, null));
        record(
            "settimeofday",
            libc::syscall(libc::SYS_settimeofday, null, null),
        );
        record(
            "clock_settime",
            libc::syscall(libc::SYS_clock_settime, 9999, null),
        );
        let mut timex: libc::timex = std::mem::zeroed();
        record("adjtimex", libc::syscall(libc::SYS_adjtimex, &mut timex));
        record(
            "clock_adjtime",
            libc::syscall(libc::SYS_clock_adjtime, libc::CLOCK_REALTIME, &mut timex),
        );
        // SYSLOG_ACTION_SIZE_BUFFER: harmless where allowed.
        record("syslog", libc::syscall(libc::SYS_syslog, 10, null, 0));
        record(
            "quotactl",
            libc::syscall(libc::SYS_quotactl, 0, null, 0, null),
        );
        record("fsopen", libc::syscall(libc::SYS_fsopen, null, 0));
        record("open_tree", libc::syscall(libc::SYS_open_tree, -1, null, 0));
        record(
            "move_mount",
            libc::syscall(libc::SYS_move_mount, -1, null, -1, null, 0),
        );
        // TIOCSTI on stdin (never a terminal here): ENOTTY unless a filter stops it — also
        // with garbage in the upper 32 bits of the request (CVE-2019-10063).
        let c = b'x';
        record(
            "ioctl_tiocsti",
            libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI, &c),
        );
        record(
            "ioctl_tiocsti_high_bits",
            // (libc types the request as c_ulong on glibc, c_int on musl.)
            #[allow(clippy::unnecessary_cast)]
            libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI as u64 | (1u64 << 32), &c),
        );
        record(
            "ioctl_tioclinux",
            libc::syscall(libc::SYS_ioctl, 0, libc::TIOCLINUX, &c),
        );
        // TIOCSTI on a real terminal: a pty of our own, the controlling terminal of a child
        // that leads a new session — where the kernel itself would let the byte in.
        record("ioctl_tiocsti_pty", in_child(|| tiocsti_on_own_pty(c)));
    }
    #[cfg(target_arch = "x86_64")]
    {
        results.insert("i386_getpid".into(), json!(i386_getpid()));
        // SAFETY: getpid through the x32 ABI: no arguments, no memory.
        let ret = unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
        results.insert(
            "x32_getpid".into(),
            json!(if ret < 0 { errno() } else { 0 }),
        );
    }
    Value::Object(results)
}

/// Run `call` in a forked child and return its result (-1 with errno set, or 0).
fn in_child(call: impl FnOnce() -> libc::c_long) -> libc::c_long {
    // SAFETY: fork in a single-threaded program; the child makes one syscall and _exits
    // with its errno.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let ret = call();
            libc::_exit(if ret < 0 { errno() } else { 0 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        let code = libc::WEXITSTATUS(status);
        if code == 0 {
            0
        } else {
            *libc::__errno_location() = code;
            -1
        }
    }
}

/// In a new session, open a pty (its slave becomes our controlling terminal) and push a
/// byte into its input with TIOCSTI. A missing pty gives that errno, not EPERM.
///
/// SAFETY: call in a forked child only (it leaves its session).
unsafe fn tiocsti_on_own_pty(c: u8) -> libc::c_long {
    // SAFETY: plain calls on our own descriptors; `ptsname`'s static buffer is read before
    // anything else could overwrite it (the child has one thread).
    unsafe {
        if libc::setsid() < 0 {
            return -1;
        }
        let master = libc::posix_openpt(libc::O_RDWR);
        if master < 0 || libc::grantpt(master) < 0 || libc::unlockpt(master) < 0 {
            return -1;
        }
        let name = libc::ptsname(master);
        if name.is_null() {
            return -1;
        }
        let slave = libc::open(name, libc::O_RDWR);
        if slave < 0 {
            return -1;
        }
        libc::syscall(libc::SYS_ioctl, slave, libc::TIOCSTI, &c)
    }
}

/// clone(2) with these flags: the child exits at once.
fn clone_with(flags: libc::c_int) -> libc::c_long {
    // SAFETY: raw clone without CLONE_VM behaves like fork; the child only calls _exit.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if ret == 0 {
        // SAFETY: the child leaves at once.
        unsafe { libc::_exit(0) };
    }
    if ret > 0 {
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(ret as i32, std::ptr::null_mut(), 0) };
        return 0;
    }
    ret
}

/// getpid through `int 0x80` (the i386 ABI): the errno, or 0 if it worked.
#[cfg(target_arch = "x86_64")]
fn i386_getpid() -> i32 {
    let ret: i64;
    // SAFETY: syscall 20 (getpid) on the i386 table takes no arguments and touches no
    // memory; int 0x80 clobbers only rax here.
    unsafe { std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret, options(nostack)) };
    if ret < 0 {
        (-ret) as i32
    } else {
        0
    }
}

fn interfaces() -> Value {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let names: Vec<String> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    let mut up = Map::new();
    for name in &names {
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok();
        up.insert(name.clone(), json!(flags.map(|f| f.trim().to_string())));
    }
    // Without /sys, ask the kernel: SIOCGIFFLAGS.
    let lo_up = if_up("lo");
    json!({"interfaces": names, "lo_up": lo_up})
}

fn if_up(name: &str) -> bool {
    // SAFETY: a datagram socket and SIOCGIFFLAGS on our own ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) == 0;
        libc::close(sock);
        ok && (req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short) != 0
    }
}

fn connect(addr: &str) -> Value {
    match std::net::TcpStream::connect_timeout(
        &addr.parse().expect("addr"),
        std::time::Duration::from_secs(2),
    ) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            json!({"connected": true, "received": String::from_utf8_lossy(&buf[..n])})
        }
        Err(err) => {
            json!({"connected": false, "errno": err.raw_os_error(), "error": err.to_string()})
        }
    }
}

/// A TCP server on `addr` that greets every client with `greeting`, forever: says
/// "listening" once it is, then serves (a job's server, for commands exec'd beside it).
fn serve(addr: &str, greeting: &str) -> Value {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    println!("listening");
    let _ = std::io::stdout().flush();
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(greeting.as_bytes());
    }
    json!({"served": true})
}

fn abstract_connect(name: &str) -> Value {
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    match UnixStream::connect_addr(&addr) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            json!({"connected": true, "received": String::from_utf8_lossy(&buf[..n])})
        }
        Err(err) => {
            json!({"connected": false, "errno": err.raw_os_error(), "error": err.to_string()})
        }
    }
}

/// A TCP server on the jail's own loopback, and a client talking to it.
fn tcp_self() -> Value {
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(err) => {
            return json!({"bound": false, "errno": err.raw_os_error(), "error": err.to_string()})
        }
    };
    let addr = listener.local_addr().expect("local addr");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"pong").expect("write");
    });
    let answer = connect(&addr.to_string());
    let _ = server.join();
    json!({"bound": true, "client": answer})
}

fn kill_all() -> Value {
    // SAFETY: kill(-1) — what a hostile tool would try; only its result is recorded.
    let ret = unsafe { libc::kill(-1, libc::SIGKILL) };
    json!({"ret": ret, "errno": if ret < 0 { errno() } else { 0 }})
}

/// Exec /bin/sleep with `name` as its argv[0] (how the tests find it from the host).
fn exec_sleeper(name: &str) -> ! {
    let sleeper = CString::new("/bin/sleep").expect("cstring");
    let name = CString::new(name).expect("cstring");
    let secs = CString::new("600").expect("cstring");
    let argv = [name.as_ptr(), secs.as_ptr(), std::ptr::null()];
    // SAFETY: valid NUL-terminated arguments; on failure the child leaves at once.
    unsafe {
        libc::execv(sleeper.as_ptr(), argv.as_ptr());
        libc::_exit(127)
    }
}

/// Processes of this pid namespace whose argv[0] starts with `prefix`.
fn count_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.starts_with(prefix.as_bytes()))
        .count()
}

/// Leave processes behind in every way a tool can: a double fork into a new session, and
/// nohup through a shell. Their argv[0] starts with `token`; the report says how many were
/// running when the probe exited.
fn daemonize(token: &str) -> Value {
    // SAFETY: fork in a single-threaded program; the children only call setsid, fork, exec.
    unsafe {
        if libc::fork() == 0 {
            libc::setsid();
            if libc::fork() == 0 {
                exec_sleeper(&format!("{token}-setsid"));
            }
            libc::_exit(0);
        }
    }
    let nohup = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("nohup sh -c 'sleep 0.01; exec /bin/sleep 600' >/dev/null 2>&1 & (exec -a {token}-nohup /bin/sleep 600 2>/dev/null || /bin/sleep 600) >/dev/null 2>&1 &"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // SAFETY: a plain fork whose child execs a sleeper in our process group.
    unsafe {
        if libc::fork() == 0 {
            exec_sleeper(&format!("{token}-child"));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    json!({"nohup": nohup, "running": count_named(token)})
}

/// Leave one process behind that holds none of the job's output: a double fork into a new
/// session, its stdio on /dev/null. It holds an exclusive `flock` on `lock` (a file that
/// exists, which it may read) and `mib` MiB of
/// memory it has touched (whose freeing makes its death take a while), and waits. The report
/// says whether it got that far.
fn detach(lock: &str, mib: usize) -> Value {
    let mut ready = [0 as libc::c_int; 2];
    // SAFETY: a pipe into a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0, "pipe");
    let lock = CString::new(lock).expect("cstring");
    // SAFETY: fork in a single-threaded program; the grandchild allocates and sleeps, which
    // is safe in a single-threaded child.
    unsafe {
        if libc::fork() == 0 {
            libc::setsid();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..=2 {
                libc::dup2(null, fd);
            }
            libc::close(null);
            libc::close(ready[0]);
            if libc::fork() == 0 {
                let fd = libc::open(lock.as_ptr(), libc::O_RDONLY);
                if fd < 0 || libc::flock(fd, libc::LOCK_EX) != 0 {
                    libc::_exit(1);
                }
                let mut held = vec![0u8; mib << 20];
                for page in held.chunks_mut(4096) {
                    page[0] = 1;
                }
                libc::write(ready[1], [1u8].as_ptr().cast(), 1);
                loop {
                    libc::pause();
                    std::hint::black_box(&held);
                }
            }
            libc::_exit(0);
        }
        libc::close(ready[1]);
    }
    let mut byte = [0u8; 1];
    // SAFETY: a read into a valid one-byte buffer; EOF (0) if the grandchild failed.
    let got = unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
    json!({"holding": got == 1})
}

fn memhog(mib: usize) -> Value {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        let mut block = vec![0u8; 1 << 20];
        // Touch every page so it is really charged.
        for page in block.chunks_mut(4096) {
            page[0] = i as u8 | 1;
        }
        blocks.push(block);
    }
    json!({"allocated_mib": blocks.len()})
}

/// Fork until the kernel refuses; every child sleeps (argv[0] starting with `token`).
fn forkbomb(token: &str) -> Value {
    let mut forked = 0u32;
    let mut errno_seen = 0;
    let name = format!("{token}-bomb");
    for _ in 0..100_000 {
        // SAFETY: fork in a single-threaded program; the child only execs.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            exec_sleeper(&name);
        }
        if pid < 0 {
            errno_seen = errno();
            break;
        }
        forked += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    json!({"forked": forked, "errno": errno_seen, "running": count_named(&name)})
}

/// Ignore SIGTERM, with a child that ignores it too (argv[0] starting with `token`), and
/// sleep.
fn ignore_term(token: &str) -> Value {
    // SAFETY: SIG_IGN for SIGTERM, then a fork whose child execs a sleeper that inherits
    // the ignored disposition.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        if libc::fork() == 0 {
            exec_sleeper(&format!("{token}-child"));
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    std::thread::sleep(std::time::Duration::from_secs(600));
    json!({"survived": true})
}

/// Write [`toolbox_tests::Flood`]'s `bytes` to stdout, `write` at a time, each in one
/// system call.
fn flood(bytes: u64, write: u64) -> Value {
    let flood = toolbox_tests::Flood::new(bytes);
    // Straight to fd 1, not through std's line buffering.
    // SAFETY: fd 1 is open for the whole run; ManuallyDrop keeps it from being closed.
    let mut out = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(1)
    });
    let mut at = 0;
    while at < bytes {
        let to = (at + write.max(1)).min(bytes);
        out.write_all(&flood.range(at, to)).expect("write");
        at = to;
    }
    std::process::exit(0);
}

/// Burn CPU for `seconds` of wall time; report the CPU time it got.
fn spin(seconds: f64) -> Value {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    // SAFETY: getrusage fills a struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let cpu_ms = (usage.ru_utime.tv_sec * 1000 + usage.ru_utime.tv_usec / 1000) as u64;
    json!({"wall_ms": start.elapsed().as_millis() as u64, "cpu_ms": cpu_ms, "x": x % 2})
}
