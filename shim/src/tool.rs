//! The tool's own process, from fork to exec. PID 1 forks it in the finished root, once the
//! supervisor has set the job's cgroup's limits (it built the root meanwhile); it is born in
//! that cgroup, as PID 1 was.
//!
//! The recipe, in order: the network namespace (made by a helper — see `netns` — unless the
//! job has the host's; the cgroup namespace is PID 1's, made once it joined the job's
//! cgroup) → a session of its own → signals and rlimits →
//! ids and capabilities → no_new_privs → seccomp → landlock, which, with no capability left,
//! relies on no_new_privs; the filter lets its three calls through → the workspace → exec.

use std::ffi::CString;

use caps::CapSet;
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{Gid, Uid};

use toolbox_spec::{Enforced, JailSpec, Network, RlimitKind, Status};

use crate::error::SetupError;
use crate::netns::Netns;
use crate::{landlock, report, sys};

/// Exit statuses when the tool cannot be started, as a shell reports them.
const NOT_FOUND: i32 = 127;
const NOT_EXECUTABLE: i32 = 126;

/// (`as_drafted`: the root is the one a prepared jail laid out for its draft, which the
/// report says.)
pub fn run(spec: &JailSpec, network: Option<&Netns>, as_drafted: bool) -> ! {
    let ready = pin(spec).and_then(|()| before_root(spec, network, None));
    let enforced = ready.and_then(|(ruleset, _)| in_root(spec, ruleset));
    start(
        spec,
        enforced.map(|enforced| in_drafted(enforced, as_drafted)),
    )
}

fn in_drafted(enforced: Enforced, as_drafted: bool) -> Enforced {
    Enforced {
        root_as_drafted: as_drafted,
        ..enforced
    }
}

/// After the spec, PID 1's word to a tool forked ahead that the job may start, in the root
/// laid out for its draft ([`AS_DRAFTED`]) or in one built afresh for the job (`GO`).
pub const AS_DRAFTED: u8 = b'd';

/// The tool's process forked ahead of its job, in a prepared jail whose cgroup is final.
/// While the jail waits, it does all of the recipe that needs no root for a job like the
/// `draft` (the jail's layout, from the last job): the network namespace joined, ids and
/// capabilities dropped, seccomp, the Landlock ruleset — and, given the root laid out for the
/// draft (`drafted`), a second ruleset with the view's rules in it too. PID 1 passes it the
/// job's spec and stdin on `line` only if the job wants the same of all that
/// ([`ready_for`]); then, once the root is built and the job may start, the word to go, which
/// says whether the root is the draft's: if it is, and the job's rules are the draft's, the
/// exec is all that is left on the job's path, else Landlock's rules and the exec. PID 1 gone
/// or giving up (EOF): it leaves, having run nothing.
pub fn ahead(
    mut line: std::os::unix::net::UnixStream,
    network: Option<&Netns>,
    draft: &JailSpec,
    drafted: Option<std::os::fd::BorrowedFd<'_>>,
) -> ! {
    let network = network.filter(|_| draft.network == Network::Isolated);
    let ready = before_root(draft, network, drafted);
    let Some((spec, stdin)) = take_spec(&line) else {
        sys::exit_now(crate::SHIM_FAILED)
    };
    let ready = ready.and_then(|rulesets| {
        sys::dup_onto(std::os::fd::AsFd::as_fd(&stdin), 0)
            .map_err(|errno| SetupError::Spec(format!("the tool's stdin: {errno}")))?;
        pin(&spec)?;
        Ok(rulesets)
    });
    drop(stdin);
    let mut byte = [0u8; 1];
    if std::io::Read::read_exact(&mut line, &mut byte).is_err()
        || !matches!(byte[0], toolbox_spec::GO | AS_DRAFTED)
    {
        sys::exit_now(crate::SHIM_FAILED);
    }
    drop(line);
    let as_drafted = byte[0] == AS_DRAFTED;
    let ready = ready.map(|(bare, ruled)| match ruled {
        Some(ruled) if as_drafted && ruled.ruled_for(&draft.landlock, &spec.landlock) => ruled,
        _ => bare,
    });
    let enforced = ready.and_then(|ruleset| in_root(&spec, ruleset));
    start(
        &spec,
        enforced.map(|enforced| in_drafted(enforced, as_drafted)),
    )
}

/// Whether a tool readied for `draft` ([`ahead`]) serves a job with `spec`: each field
/// [`before_root`] reads is the same.
pub fn ready_for(draft: &JailSpec, spec: &JailSpec) -> bool {
    draft.network == spec.network
        && draft.uid == spec.uid
        && draft.gid == spec.gid
        && draft.rlimits == spec.rlimits
        && draft.seccomp == spec.seccomp
        && draft.landlock.min_abi == spec.landlock.min_abi
        && draft.landlock.deny_tcp == spec.landlock.deny_tcp
        && draft.landlock.scoped == spec.landlock.scoped
}

/// The spec PID 1 passes a tool forked ahead (framed as on the spec pipe), and the stdin
/// that comes with its first byte.
fn take_spec(line: &std::os::unix::net::UnixStream) -> Option<(JailSpec, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd;
    let mut first = [0u8; 8];
    let (got, mut fds) = sys::recv_with_fds_wait(line.as_fd(), &mut first).ok()?;
    let stdin = (fds.len() == 1).then(|| fds.remove(0))?;
    let mut framed = std::io::Read::chain(std::io::Cursor::new(first[..got].to_vec()), line);
    let spec = JailSpec::read_from(&mut framed).ok()?;
    Some((spec, stdin))
}

/// Report what was enforced and exec the tool, or report why the jail could not be made.
fn start(spec: &JailSpec, enforced: Result<Enforced, SetupError>) -> ! {
    let enforced = match enforced {
        Ok(enforced) => enforced,
        Err(err) => {
            report::setup_failed(&err);
            sys::exit_now(crate::SHIM_FAILED);
        }
    };
    report::send(&Status::Enforced(enforced));
    let errno = exec(spec);
    report::send(&Status::ExecFailed {
        errno: errno as i32,
        error: spec.argv.first().cloned().unwrap_or_default(),
    });
    sys::exit_now(if errno == Errno::ENOENT {
        NOT_FOUND
    } else {
        NOT_EXECUTABLE
    })
}

/// The CPUs the job's quota rounds up to (nproc, thread pools count these).
fn pin(spec: &JailSpec) -> Result<(), SetupError> {
    if !spec.cpus.is_empty() {
        let mut set = nix::sched::CpuSet::new();
        for &cpu in &spec.cpus {
            set.set(cpu as usize).map_err(SetupError::Affinity)?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(SetupError::Affinity)?;
    }
    Ok(())
}

/// Everything of the recipe before Landlock's rules, which need the jail's root: the
/// ruleset is made here, and, given a root laid out for `spec` as a draft (`drafted`), a
/// second one with the rules added ahead ([`landlock::rule_ahead`]; with the tool's ids, as
/// in the finished root, and before seccomp, whose filter may refuse openat2). (Every field
/// of `spec` read here is in [`ready_for`] but the rules, which the second ruleset is
/// checked against.)
fn before_root(
    spec: &JailSpec,
    network: Option<&Netns>,
    drafted: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(landlock::Prepared, Option<landlock::Prepared>), SetupError> {
    // The tool's network: the namespace (only `lo`, up) a helper made while we started.
    if let Some(network) = network {
        network.join()?;
    }
    // A session of its own: no controlling terminal to push keystrokes into (TIOCSTI), and
    // a process group PID 1 can signal as a whole.
    nix::unistd::setsid().map_err(SetupError::Setsid)?;
    // Every signal back to its default, none blocked. The shim started with all of them at
    // their default (the supervisor resets what it ignores before the exec); since then the
    // Rust runtime has ignored SIGPIPE (an ignored signal stays ignored across exec) and
    // PID 1 has given the signals it forwards handlers (a forwarded one must not be
    // swallowed before the exec).
    for signal in crate::init::HANDLED
        .into_iter()
        .chain([nix::sys::signal::Signal::SIGPIPE])
    {
        sys::default_handler(signal).map_err(SetupError::Signals)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(SetupError::Signals)?;

    for limit in &spec.rlimits {
        let resource = match limit.resource {
            RlimitKind::Core => Resource::RLIMIT_CORE,
            RlimitKind::Fsize => Resource::RLIMIT_FSIZE,
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
        };
        setrlimit(resource, limit.soft, limit.hard).map_err(|errno| SetupError::Rlimit {
            resource: limit.resource,
            soft: limit.soft,
            hard: limit.hard,
            errno,
        })?;
    }

    drop_privileges(spec.uid, spec.gid)?;
    nix::sys::prctl::set_no_new_privs().map_err(SetupError::NoNewPrivs)?;
    let ruled = drafted.and_then(|root| landlock::rule_ahead(&spec.landlock, root));
    let program: Vec<libc::sock_filter> = spec
        .seccomp
        .iter()
        .map(|insn| libc::sock_filter {
            code: insn.code,
            jt: insn.jt,
            jf: insn.jf,
            k: insn.k,
        })
        .collect();
    sys::install_seccomp(&program).map_err(SetupError::Seccomp)?;
    Ok((landlock::prepare(&spec.landlock)?, ruled))
}

/// The rest, in the jail's finished root: Landlock's rules, the workspace.
fn in_root(spec: &JailSpec, ruleset: landlock::Prepared) -> Result<Enforced, SetupError> {
    let landlock = ruleset.restrict(&spec.landlock)?;
    // With the tool's own ids: the workspace must be theirs to enter.
    nix::unistd::chdir(spec.cwd.as_str()).map_err(|errno| SetupError::Cwd {
        path: spec.cwd.clone(),
        uid: spec.uid,
        errno,
    })?;

    let mut namespaces = vec!["pid", "mount", "ipc", "uts", "cgroup"];
    if spec.network == Network::Isolated {
        namespaces.push("net");
    }
    Ok(Enforced {
        namespaces: namespaces.into_iter().map(String::from).collect(),
        landlock_abi: landlock.abi,
        landlock_fs: landlock.fs,
        landlock_tcp: landlock.tcp,
        landlock_scoped: landlock.scoped,
        seccomp: !spec.seccomp.is_empty(),
        no_new_privs: true,
        capabilities_dropped: true,
        uid: spec.uid,
        gid: spec.gid,
        root_as_drafted: false,
    })
}

/// Become `uid`/`gid` with no capability in any set. (The bounding set is empty already:
/// PID 1 emptied it before forking us.)
fn drop_privileges(uid: u32, gid: u32) -> Result<(), SetupError> {
    let caps_err = |e: caps::errors::CapsError| SetupError::Capabilities(e.to_string());
    caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err)?;

    let ids_err = |errno| SetupError::Ids { uid, gid, errno };
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[gid]).map_err(ids_err)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(ids_err)?;
    // Leaving uid 0 for good clears the permitted and effective sets (no SECBIT_KEEP_CAPS).
    nix::unistd::setresuid(uid, uid, uid).map_err(ids_err)?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        let left = caps::read(None, set).map_err(caps_err)?;
        if !left.is_empty() {
            return Err(SetupError::Capabilities(format!(
                "{set:?} still holds {left:?}"
            )));
        }
    }
    Ok(())
}

/// `execvpe`, with the jail's PATH: returns only on failure, with the errno that matters
/// (a permission problem found on the way beats "not found").
fn exec(spec: &JailSpec) -> Errno {
    let Some(program) = spec.argv.first() else {
        return Errno::ENOENT;
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| Errno::EINVAL);
    let args: Result<Vec<CString>, Errno> = spec.argv.iter().map(|a| to_c(a)).collect();
    let env: Result<Vec<CString>, Errno> = spec
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    let (args, env) = match (args, env) {
        (Ok(args), Ok(env)) => (args, env),
        (Err(errno), _) | (_, Err(errno)) => return errno,
    };
    let try_exec = |path: &str| -> Errno {
        match to_c(path) {
            Ok(path) => match nix::unistd::execve::<CString, CString>(&path, &args, &env) {
                Ok(never) => match never {},
                Err(errno) => errno,
            },
            Err(errno) => errno,
        }
    };
    if program.contains('/') {
        return try_exec(program);
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    let mut found = Errno::ENOENT;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        match try_exec(&format!("{dir}/{program}")) {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => {}
            Errno::EACCES => found = Errno::EACCES,
            other => return other,
        }
    }
    found
}
