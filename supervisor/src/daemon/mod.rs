//! `toolbox serve`: the job API over HTTP/1.1 on a Unix socket. Every job goes through the
//! same [`Engine::run`] as `toolbox run --local`; this module adds admission (peer checks,
//! request checks), the slots and their queue, streaming, cancellation, the audit log and
//! metrics.

pub mod api;
pub mod audit;
pub mod jobs;
pub mod metrics;
pub mod outlog;
pub mod policies;
pub mod queue;
pub mod routes;
pub mod warm;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;
use tracing::{info, warn};

use crate::engine::Engine;
use api::{ApiError, Peer};
use jobs::{JobEntry, Retention};
use queue::Slots;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/toolbox/toolbox.sock";
/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    pub max_jobs: usize,
    pub max_queue: usize,
    pub policies: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    /// Group that may use the socket (mode 0660); root only when `None`.
    pub group: Option<String>,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// How long running jobs get to finish on shutdown before they are cancelled.
    pub drain: Duration,
    /// What the placement step may do to find a cgroup for the jobs.
    pub placement: crate::cgroup::PlacementOptions,
    /// Bounds on detached jobs, live and ended.
    pub retention: Retention,
    /// The pool of prepared jails.
    pub warm: warm::WarmOptions,
}

pub struct Daemon {
    engine: Engine,
    slots: Slots,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    metrics: metrics::Metrics,
    audit: Option<audit::AuditLog>,
    policies: policies::PolicyStore,
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
    /// Flips to true when every job is to be cancelled (shutdown after the drain).
    cancel_all: watch::Sender<bool>,
    live_jobs: AtomicUsize,
    all_done: Notify,
    /// Flips to true when the daemon stops: connections finish what they serve, then close.
    closing: watch::Sender<bool>,
    live_connections: AtomicUsize,
    connections_done: Notify,
    retention: Retention,
    pool: warm::Pool,
    /// The views jobs were planned with, kept while the host's files they came from stay
    /// as they were (see [`crate::view_memo`]).
    views: crate::view::Memo,
}

impl Daemon {
    pub fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobEntry>> {
        // The registry is only ever inserted into and removed from; keep going after a
        // panic elsewhere rather than take the daemon down.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Detached jobs live and ended, and the output bytes they hold.
    fn detached_counts(&self) -> (usize, usize, usize) {
        let jobs = self.jobs();
        let mut counts = (0, 0, 0);
        for job in jobs.values() {
            if let Some(handle) = &job.handle {
                if job.has_ended() {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                }
                counts.2 += handle.held();
            }
        }
        counts
    }

    fn allowed(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || self.allow_uids.contains(&peer.uid)
            || self
                .allow_gids
                .iter()
                .any(|gid| peer.gid == *gid || peer.groups.contains(gid))
    }
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn serve(options: ServeOptions) -> anyhow::Result<()> {
    // Before anything else opens a descriptor: an inherited listener is fd 3.
    let inherited = inherited_listener()?;
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("toolbox-serve")
        .build()
        .context("start the async runtime")?;
    // On a worker rather than this thread: a connection's task, spawned by the accept loop,
    // then starts on the worker that accepted it, without a wake-up of another thread
    // (~60 µs of a job's latency on our VMs).
    runtime.block_on(async move {
        tokio::spawn(serve_async(options, inherited))
            .await
            .context("the daemon's main task")?
    })
}

/// The soft limit on open descriptors, raised to the hard one (systemd's default soft limit
/// is 1024): every job's egress proxy holds its listeners and, per connection, two sockets
/// and two pipes — 8 jobs with 64 connections each would pass 1024, and a daemon out of
/// descriptors fails every job, not only the one that used them up. Jobs do not inherit
/// it: the jail sets the tool's own (`limits.open_files`).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let wanted = hard.min(1 << 20);
        if soft < wanted {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
                warn!("raise the open-files limit from {soft} to {wanted}: {err}");
            }
        }
    }
}

async fn serve_async(
    options: ServeOptions,
    inherited: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    // First of all: a SIGTERM from here on (systemd sends one as soon as it likes after
    // READY=1) shuts down in order instead of killing the daemon where it stands.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let engine = Engine::new(options.placement)?;
    engine
        .cgroups()
        .context("this host's cgroups cannot hold jobs")?;
    // Whatever a daemon that died left: its jails died with it (their lifelines closed);
    // remove their cgroups before taking new jobs.
    engine.sweep_once();
    let filters = crate::sys::inherited_seccomp_filters();
    if filters > 0 {
        warn!(
            filters,
            "this daemon runs under {filters} seccomp filter(s) it inherited (a unit's ProtectHostname=, RestrictSUIDSGID=, SystemCallFilter=..., or a container's profile): every job runs under them too, and some break jail set-up; remove them from whatever starts toolbox (toolbox doctor explains)"
        );
    }
    let group = match &options.group {
        Some(name) => Some(group_id(name)?),
        None => None,
    };
    let (listener, activated) = match inherited {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            (UnixListener::from_std(listener)?, true)
        }
        None => (listen(&options.socket, group)?, false),
    };
    let audit = match &options.audit_log {
        Some(path) => Some(audit::AuditLog::open(path)?),
        None => None,
    };
    let mut allow_gids = options.allow_gids.clone();
    allow_gids.extend(group);
    let (cancel_all, _) = watch::channel(false);
    let (closing, _) = watch::channel(false);
    let daemon = Arc::new(Daemon {
        engine,
        slots: Slots::new(options.max_jobs, options.max_queue),
        jobs: Mutex::new(BTreeMap::new()),
        metrics: metrics::Metrics::default(),
        audit,
        policies: policies::PolicyStore::open(options.policies.clone()),
        allow_uids: options.allow_uids.clone(),
        allow_gids,
        cancel_all,
        live_jobs: AtomicUsize::new(0),
        all_done: Notify::new(),
        closing,
        live_connections: AtomicUsize::new(0),
        connections_done: Notify::new(),
        retention: options.retention,
        pool: warm::Pool::new(options.warm),
        views: crate::view::Memo::new(),
    });
    if options.warm.size > 0 {
        daemon.engine.keep_drafts();
    }
    warm::start(daemon.clone()).context("start the pool of prepared jails")?;
    let router = routes::router(daemon.clone());
    info!(
        socket = %options.socket.display(),
        max_jobs = options.max_jobs,
        max_queue = options.max_queue,
        "toolbox daemon ready"
    );
    sd_notify("READY=1");

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    daemon.live_connections.fetch_add(1, Ordering::SeqCst);
                    let daemon = daemon.clone();
                    let router = router.clone();
                    tokio::spawn(async move {
                        connection(daemon.clone(), router, stream).await;
                        if daemon.live_connections.fetch_sub(1, Ordering::SeqCst) == 1 {
                            daemon.connections_done.notify_waiters();
                        }
                    });
                }
                Err(err) => {
                    // EMFILE and friends: back off rather than spin.
                    warn!("accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the policies");
                daemon.policies.reload();
                // Nothing prepared before the reload serves a job after it.
                daemon.pool.invalidate();
            }
        }
    }
    info!("shutting down: no new connections");
    daemon.pool.close();
    sd_notify("STOPPING=1");
    drop(listener);
    if !activated {
        let _ = std::fs::remove_file(&options.socket);
    }
    // Idle connections close now; those streaming a job keep going until its exit event.
    daemon.closing.send_replace(true);
    // Running jobs get the drain time to finish; then everything left is cancelled.
    let drained = wait_for_jobs(&daemon, options.drain).await;
    if !drained {
        info!("cancelling the jobs still running");
        daemon.cancel_all.send_replace(true);
        wait_for_jobs(&daemon, Duration::from_secs(30)).await;
    }
    // Let the last exit events reach their clients.
    wait_until_zero(
        &daemon.live_connections,
        &daemon.connections_done,
        Duration::from_secs(5),
    )
    .await;
    info!("stopped");
    Ok(())
}

async fn wait_for_jobs(daemon: &Daemon, limit: Duration) -> bool {
    wait_until_zero(&daemon.live_jobs, &daemon.all_done, limit).await
}

/// Wait until `count` is zero (`done` is notified when it gets there), at most `limit`.
async fn wait_until_zero(count: &AtomicUsize, done: &Notify, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = done.notified();
        if count.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return count.load(Ordering::SeqCst) == 0;
        }
    }
}

/// The listening socket bound at `path` with mode 0660 and `group`. A stale socket file from
/// a dead daemon is replaced; a live daemon's is not.
fn listen(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another daemon is already listening on {}; stop it first or pick another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove the stale socket {}", path.display()))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    // Bound, given its mode and group, and only then listening: no client can connect
    // before the socket's permissions are what they will be.
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("make the listening socket")?;
    let addr =
        UnixAddr::new(path).with_context(|| format!("{} as a socket address", path.display()))?;
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("chgrp {}", path.display()))?;
    }
    socket::listen(&fd, Backlog::MAXCONN)
        .with_context(|| format!("listen on {}", path.display()))?;
    Ok(UnixListener::from_std(
        std::os::unix::net::UnixListener::from(fd),
    )?)
}

/// The first socket systemd passed (socket activation), if it passed one to us: fd 3, a
/// listening Unix stream socket (checked, so a stray descriptor is never taken for it).
fn inherited_listener() -> anyhow::Result<Option<std::os::unix::net::UnixListener>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count < 1 {
        return Ok(None);
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let fd = crate::sys::take_listening_unix_socket(3)
        .context("socket activation: LISTEN_FDS says fd 3 is our socket")?;
    Ok(Some(std::os::unix::net::UnixListener::from(fd)))
}

/// Tell systemd (Type=notify) how we are doing; nothing when not under systemd.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(err) = sent {
        warn!("sd_notify {state}: {err}");
    }
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("read /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
        })
        .with_context(|| format!("no group named {name:?} in /etc/group"))
}

/// SO_PEERCRED, and the peer's supplementary groups.
fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    use std::os::fd::AsFd;
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    let groups = match crate::sys::peer_groups(stream.as_fd()) {
        Ok(groups) => groups,
        // Before Linux 4.13: what the peer's process says now.
        Err(err) if err.raw_os_error() == Some(libc::ENOPROTOOPT) => groups_of(cred.pid()),
        Err(err) => return Err(err),
    };
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        groups,
    })
}

/// The supplementary groups `/proc/PID/status` gives.
fn groups_of(pid: i32) -> Vec<u32> {
    crate::cgroup::fs::read_text(std::path::Path::new(&format!("/proc/{pid}/status")))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("Groups:").map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

async fn connection(daemon: Arc<Daemon>, router: axum::Router, stream: UnixStream) {
    let peer = match peer_of(&stream) {
        Ok(peer) => peer,
        Err(err) => {
            warn!("read the peer's credentials: {err}");
            return;
        }
    };
    let daemon_closing = daemon.closing.clone();
    let allowed = daemon.allowed(&peer);
    if !allowed {
        warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused a peer not on the allowlist"
        );
        daemon.metrics.refused("forbidden");
    }
    // Our own handle on the socket, to notice a client that hung up while its job is quiet.
    let watch_fd = stream.as_fd().try_clone_to_owned().ok().map(Arc::new);
    let conn = routes::Conn {
        peer: peer.clone(),
        watch_fd,
    };
    let router = router.clone();
    let service = hyper::service::service_fn(
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let peer = peer.clone();
            request.extensions_mut().insert(conn.clone());
            async move {
                if allowed {
                    router.oneshot(request).await
                } else {
                    Ok(ApiError::new(
                    403,
                    "forbidden",
                    format!(
                        "uid {} (gid {}) may not use this daemon; ask its operator to add you to its group or allowlist",
                        peer.uid, peer.gid
                    ),
                )
                .into_response())
                }
            }
        },
    );
    let mut closing = daemon_closing.subscribe();
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = async { let _ = closing.wait_for(|closing| *closing).await; } => {
            // Finish the response in flight (a job's stream runs to its exit event), take
            // no further request.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = served {
        tracing::debug!("connection ended: {err}");
    }
}
