//! `toolbox-shim`: builds one jail and execs one tool in it.
//!
//! The supervisor starts this binary with a pipe that will carry the job's spec on fd 3 and
//! a status pipe on fd 4 (see `toolbox_spec::fds`). It is single-threaded, has no async runtime and never unwinds:
//! a panic is reported over the status pipe and the process exits.
//!
//! The supervisor starts the shim as PID 1 of a new pid namespace; the shim makes the mount,
//! ipc and uts namespaces while the supervisor is still planning the job, and the part of
//! the jail's root no spec changes (`mounts::prebuild`); a helper makes the network
//! namespace, which the tool's process joins.
//! Two processes, each with one job:
//! - [`init`] — PID 1: builds the root ([`mounts`]), brings up `lo`, forks the tool, reaps,
//!   forwards signals, and ends the whole jail when the tool ends;
//! - [`tool`] — its child: joins the job's cgroup, then rlimits, landlock, ids and
//!   capabilities, no_new_privs, seccomp, exec.
#![deny(unsafe_code)]

mod error;
mod exec;
mod idmap;
mod init;
mod landlock;
mod mounts;
mod netns;
mod report;
mod sys;
mod tool;

/// On musl, dlmalloc, as for toolbox (see its lib.rs): musl's allocator maps and unmaps a
/// page for many a small allocation and its free, and each costs a page fault (a VM exit on a
/// VM) — decoding the spec and building the tool's environment did ~30 of them a job.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use std::os::fd::{AsFd, BorrowedFd};

use toolbox_spec::{fds, JailSpec, Network};

use error::SetupError;

/// What the shim exits with when it failed itself (the supervisor reads the reason from the
/// status pipe; this code only matters to someone running the shim by hand).
const SHIM_FAILED: i32 = 125;

fn main() {
    std::panic::set_hook(Box::new(|info| {
        report::send(&toolbox_spec::Status::SetupFailed {
            step: "panic".into(),
            error: info.to_string(),
        });
        sys::exit_now(SHIM_FAILED);
    }));
    let code = match run() {
        Ok(code) => code,
        Err(SetupError::Abandoned) => SHIM_FAILED,
        Err(err) => {
            report::setup_failed(&err);
            SHIM_FAILED
        }
    };
    sys::exit_now(code);
}

fn run() -> Result<i32, SetupError> {
    // Step one of the recipe: nothing we did not ask for survives into the jail, and what
    // we did ask for is close-on-exec, so the tool never inherits it.
    sys::close_fds_from(fds::CONTROL + 1).map_err(SetupError::CloseFds)?;
    set_cloexec(sys::status_fd())?;
    let lifeline = sys::inherited_fd(fds::LIFELINE).map_err(SetupError::CloseFds)?;
    set_cloexec(&lifeline)?;
    // Commands to run in the jail once the tool runs (a supervisor may give none).
    let control = sys::inherited_fd(fds::CONTROL).ok();
    if let Some(control) = &control {
        set_cloexec(control)?;
    }
    // The mount namespace, and the network namespace's helper, while the supervisor still
    // plans the job.
    let network = match std::env::args().nth(1).as_deref() {
        Some("isolated") => Network::Isolated,
        Some("host") => Network::Host,
        other => {
            return Err(SetupError::Spec(format!(
                "network mode {other:?} in argv[1]: expected isolated or host"
            )))
        }
    };
    let mut network_helper = init::enter_namespaces(network)?;
    // What of the root needs no spec, built while we would only wait for it (argv[2]: where;
    // without it, or if that fails, the whole root is built once the spec is here).
    let mut prebuilt = std::env::args()
        .nth(2)
        .filter(|anchor| !anchor.is_empty())
        .and_then(|anchor| mounts::prebuild(&anchor).ok());
    // A jail prepared before its job (argv[3]), with no draft of it to lay out first: all of
    // PID 1's own set-up that needs no spec, the network namespace taken and its helper
    // reaped, now, so that none of it is left for the job's path. (`toolbox run` waits for
    // its spec too, but briefly: its root is built first, beside the helper's work.)
    let prepared_jail = std::env::args().nth(3).as_deref() == Some("prepared");
    let mut readied = None;
    if prepared_jail && !sys::readable_now(fds::SPEC) {
        readied = Some(init::ready_now(network_helper.take())?);
    }
    // While we wait, map in what the spec's arrival will touch.
    if !sys::readable_now(fds::SPEC) {
        sys::prefault();
    }
    let (mut spec, mut go) = read_spec()?;
    let mut joined = Vec::new();
    let mut ahead = None;
    if spec.draft {
        // A prepared jail's draft of its job's mounts; the job's spec follows. Its cgroup
        // exists already: joined now rather than on the go (v1; on v2 we were born there).
        prebuilt = prebuilt.and_then(|prebuilt| prebuilt.draft(&spec));
        if !spec.cgroup_tasks.is_empty() {
            joined = init::join_early(&spec.cgroup_tasks);
        }
        // And all of PID 1's own set-up that needs no spec, as above.
        if readied.is_none() {
            readied = Some(init::ready_now(network_helper.take())?);
        }
        // With the cgroup final (born in it on v2, whose drafts name no tasks; joined on
        // v1), the tool's process too, forked now to ready itself for a job like the draft
        // and wait for its spec (see `tool::ahead`). Best effort: without it the tool is
        // forked on the go, as in any jail.
        // The draft's root is entered now too, and the tool born in it (see
        // `mounts::Prebuilt::enter_ahead`).
        if let Some(readied) = readied.as_ref().filter(|_| joined == spec.cgroup_tasks) {
            let fork =
                |drafted: Option<BorrowedFd<'_>>| init::fork_ahead(readied, &spec, drafted).ok();
            ahead = match prebuilt.as_mut() {
                Some(prebuilt) => prebuilt.enter_ahead(fork)?,
                None => fork(None),
            };
        }
        if !sys::readable_now(fds::SPEC) {
            sys::prefault();
        }
        let (job, frame) =
            JailSpec::read_framed(&mut go).map_err(|e| SetupError::Spec(e.to_string()))?;
        spec = job;
        // The tool forked ahead gets the spec as it came.
        ahead = ahead.map(|ahead: init::Ahead| ahead.with_spec(frame));
        if spec.draft {
            return Err(SetupError::Spec(
                "a second draft where the job's spec was due".into(),
            ));
        }
    }
    if spec.stdin_passed {
        take_stdin(control.as_ref())?;
    }
    // The spec settles the network; argv[1] only said which to prepare (`toolbox run`
    // starts us before it has read the policy; a prepared jail may get a job of the other
    // mode, which then has a namespace made now, or drops the one it has).
    let prepared = match (readied, spec.network, network_helper) {
        (Some(readied), Network::Isolated, _) if !readied.has_network() => init::Prepared::Ready {
            readied,
            late: Some(netns::start(init::Placement::Elsewhere)?),
        },
        (Some(readied), _, _) => init::Prepared::Ready {
            readied,
            late: None,
        },
        // Made now, while we build the root: on another CPU.
        (None, Network::Isolated, None) => init::Prepared::Helper {
            helper: Some(netns::start(init::Placement::Elsewhere)?),
            discarded: None,
        },
        (None, Network::Host, Some(helper)) => init::Prepared::Helper {
            helper: None,
            discarded: Some(helper.discard()),
        },
        (None, _, helper) => init::Prepared::Helper {
            helper,
            discarded: None,
        },
    };
    init::run(
        &spec,
        go,
        init::Lines { lifeline, control },
        prepared,
        prebuilt,
        &joined,
        ahead,
    )
}

/// Wait for the spec: the supervisor writes it once it has planned the job. The pipe stays
/// open for the go ([`toolbox_spec::GO`]).
fn read_spec() -> Result<(JailSpec, std::fs::File), SetupError> {
    // (A prepared jail may get a draft first: see `JailSpec::draft`.)
    let fd = sys::inherited_fd(fds::SPEC).map_err(|e| SetupError::Spec(e.to_string()))?;
    // Unbuffered: the go may already be in the pipe behind the spec, and is read later.
    let mut pipe = std::fs::File::from(fd);
    let spec = JailSpec::read_from(&mut pipe).map_err(|e| SetupError::Spec(e.to_string()))?;
    Ok((spec, pipe))
}

/// The tool's stdin, which the supervisor sent over the control socket before the spec (a
/// jail prepared before its job: we were started with /dev/null), put in place of our fd 0.
fn take_stdin(control: Option<&std::os::fd::OwnedFd>) -> Result<(), SetupError> {
    let failed = |why: &str| SetupError::Spec(format!("the tool's stdin: {why}"));
    let control = control.ok_or_else(|| failed("there is no control socket to bring it"))?;
    let mut buf = [0u8; 64];
    let (len, fds) = sys::recv_with_fds(control.as_fd(), &mut buf)
        .map_err(|errno| failed(&format!("it did not come before the spec ({errno})")))?;
    match (
        toolbox_spec::Control::decode(&buf[..len]),
        <[_; 1]>::try_from(fds),
    ) {
        (Ok(toolbox_spec::Control::Stdin), Ok([stdin])) => {
            sys::dup_onto(stdin.as_fd(), 0).map_err(|errno| failed(&errno.to_string()))
        }
        _ => Err(failed("something else came in its place")),
    }
}

fn set_cloexec(fd: impl AsFd) -> Result<(), SetupError> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map(drop)
    .map_err(SetupError::CloseFds)
}
