//! `toolbox serve`: the job API over HTTP/1.1 on a Unix socket. Every job goes through the
//! same [`Engine::run`] as `toolbox run --local`; this module adds admission (peer checks,
//! request checks), the slots and their queue, streaming, cancellation, the audit log and
//! metrics.

pub mod api;
pub mod audit;
pub mod metrics;
pub mod policies;
pub mod queue;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, info_span, warn, Instrument};

use crate::engine::{Cancel, Engine, Event, Stream};
use crate::job::{self, Caller, JobPlan, RequestError};
use crate::record::JobResult;
use crate::spawn::Stdin;
use api::{ApiError, Peer};
use queue::{Place, Slots, Ticket};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/toolbox/toolbox.sock";
/// The largest request body, stdin included.
const BODY_LIMIT: usize = 1 << 20;
/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a job checks that its client is still there while nothing else happens.
const PEER_CHECK: Duration = Duration::from_millis(100);
/// The exit code reported for a job cancelled by its client or the daemon (128 + SIGTERM).
const CANCELLED: i32 = 128 + libc::SIGTERM;
/// SIGTERM to SIGKILL for the job of a client that hung up: nobody reads its output, and
/// its processes must be gone within a second.
const HANGUP_GRACE: Duration = Duration::from_millis(300);
/// How many job-stream lines may wait for a slow client before the job's forwarder waits.
const STREAM_BACKLOG: usize = 256;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued(usize),
    Running,
}

#[derive(Debug)]
struct JobEntry {
    peer_uid: u32,
    argv: Vec<String>,
    policy: String,
    state: JobState,
    since: Instant,
    cancel: Arc<Notify>,
}

struct Daemon {
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
}

impl Daemon {
    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobEntry>> {
        // The registry is only ever inserted into and removed from; keep going after a
        // panic elsewhere rather than take the daemon down.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("toolbox-serve")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve_async(options, inherited))
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
    });
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
                    tokio::spawn(async move {
                        connection(daemon.clone(), stream).await;
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
            }
        }
    }
    info!("shutting down: no new connections");
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
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("chgrp {}", path.display()))?;
    }
    Ok(listener)
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

/// SO_PEERCRED, and the supplementary groups of the peer process.
fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    let groups = std::fs::read_to_string(format!("/proc/{}/status", cred.pid()))
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
        .unwrap_or_default();
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        groups,
    })
}

type Body = BoxBody<Bytes, Infallible>;

async fn connection(daemon: Arc<Daemon>, stream: UnixStream) {
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
    let service = hyper::service::service_fn(move |request| {
        let daemon = daemon.clone();
        let peer = peer.clone();
        let watch_fd = watch_fd.clone();
        async move {
            let response = if allowed {
                route(daemon, peer, watch_fd, request).await
            } else {
                error_response(&ApiError::new(
                    403,
                    "forbidden",
                    format!(
                        "uid {} (gid {}) may not use this daemon; ask its operator to add you to its group or allowlist",
                        peer.uid, peer.gid
                    ),
                ))
            };
            Ok::<_, Infallible>(response)
        }
    });
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

fn json_response(status: u16, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.status, error.to_json());
    if error.status == 429 {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    response
}

async fn route(
    daemon: Arc<Daemon>,
    peer: Peer,
    watch_fd: Option<Arc<OwnedFd>>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let result = match (method.clone(), path.as_str()) {
        (Method::POST, "/v1/jobs") => submit(&daemon, peer, watch_fd, request).await,
        (Method::GET, "/v1/jobs") => Ok(list(&daemon, &peer)),
        (Method::DELETE, p) if p.starts_with("/v1/jobs/") => {
            cancel(&daemon, &peer, &p["/v1/jobs/".len()..])
        }
        (Method::GET, "/v1/health") => Ok(health(&daemon)),
        (Method::GET, "/metrics") => {
            let (running, queued) = daemon.slots.counts();
            let text = daemon
                .metrics
                .render(running, queued, daemon.slots.max_jobs());
            let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(response)
        }
        (_, "/v1/jobs" | "/v1/health" | "/metrics") => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        (_, p) if p.starts_with("/v1/jobs/") => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {path} (DELETE cancels a job)"),
        )),
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such endpoint: {path} (see /v1/jobs, /v1/health, /metrics)"),
        )),
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            daemon.metrics.refused(error.code);
            error_response(&error)
        }
    }
}

fn health(daemon: &Daemon) -> Response<Body> {
    let (running, queued) = daemon.slots.counts();
    let cgroup = daemon
        .engine
        .cgroups()
        .map(|c| c.version())
        .unwrap_or("none");
    let placement = daemon.engine.placement().map(|p| p.name()).ok();
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "running": running,
        "queued": queued,
        "max_jobs": daemon.slots.max_jobs(),
        "enforcement": {
            "cgroup": cgroup,
            "cgroup_placement": placement,
            "landlock_abi": crate::sys::landlock_abi(),
            "seccomp": true,
            "seccomp_inherited_filters": crate::sys::inherited_seccomp_filters(),
            "namespaces": ["pid", "mount", "net", "ipc", "uts", "cgroup"],
        },
    });
    json_response(200, body.to_string())
}

fn list(daemon: &Daemon, peer: &Peer) -> Response<Body> {
    let jobs: Vec<serde_json::Value> = daemon
        .jobs()
        .iter()
        // Other people's command lines are theirs: only root sees every job.
        .filter(|(_, job)| peer.uid == 0 || job.peer_uid == peer.uid)
        .map(|(id, job)| {
            let (state, position) = match job.state {
                JobState::Queued(n) => ("queued", Some(n)),
                JobState::Running => ("running", None),
            };
            serde_json::json!({
                "job_id": id,
                "peer_uid": job.peer_uid,
                "argv": job.argv,
                "policy": job.policy,
                "state": state,
                "position": position,
                "elapsed_ms": job.since.elapsed().as_millis() as u64,
            })
        })
        .collect();
    json_response(200, serde_json::json!({ "jobs": jobs }).to_string())
}

fn cancel(daemon: &Daemon, peer: &Peer, id: &str) -> Result<Response<Body>, ApiError> {
    let jobs = daemon.jobs();
    match jobs.get(id) {
        Some(job) if peer.uid == 0 || job.peer_uid == peer.uid => {
            job.cancel.notify_one();
            Ok(json_response(
                202,
                serde_json::json!({ "job_id": id, "cancelling": true }).to_string(),
            ))
        }
        _ => Err(ApiError::new(
            404,
            "no_such_job",
            format!("no job {id:?} of yours is queued or running"),
        )),
    }
}

async fn submit(
    daemon: &Arc<Daemon>,
    peer: Peer,
    watch_fd: Option<Arc<OwnedFd>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let json = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the job request as JSON (Content-Type: application/json)",
        ));
    }
    let bytes = match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Err(
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::new(
                        413,
                        "too_large",
                        format!("the request body is over {BODY_LIMIT} bytes"),
                    )
                } else {
                    ApiError::bad("body", format!("could not read the request: {err}"))
                },
            )
        }
    };
    let mut body = api::parse_body(&bytes)?;
    let caller_env = api::take_caller_env(&mut body)?;
    let policy_name = api::policy_name(body.policy.as_deref())?.to_string();
    let policy = daemon.policies.get(&policy_name)?;
    let job_id = job::new_job_id();
    let stdin_cap = policy.limits.stdin;
    let (request, stdin) = api::to_request(body, &peer, &policy, &job_id, stdin_cap)?;
    let caller = Caller {
        env: caller_env,
        cwd: request.cwd.clone().unwrap_or_else(|| PathBuf::from("/")),
        sudo: None,
        // The peer's own home (its passwd entry), for policies that show some of it.
        home: crate::home::of_caller(peer.uid, None),
        root: peer.uid == 0,
    };
    let cwd = caller.cwd.clone();
    let plan = job::plan(&policy, request, &caller).map_err(request_error)?;
    let ticket = daemon
        .slots
        .enter()
        .map_err(|full| ApiError::new(429, "queue_full", format!("{full}; try again shortly")))?;

    let (lines, receiver) = mpsc::channel::<Bytes>(STREAM_BACKLOG);
    let cancel = Arc::new(Notify::new());
    daemon.jobs().insert(
        job_id.clone(),
        JobEntry {
            peer_uid: peer.uid,
            argv: plan.argv.clone(),
            policy: plan.policy.clone(),
            state: match ticket.place() {
                Place::Waiting(n) => JobState::Queued(n),
                Place::Running => JobState::Running,
            },
            since: Instant::now(),
            cancel: cancel.clone(),
        },
    );
    daemon.live_jobs.fetch_add(1, Ordering::SeqCst);
    let span = info_span!("job", id = %job_id, peer_uid = peer.uid, peer_pid = peer.pid);
    let task = JobTask {
        daemon: daemon.clone(),
        plan,
        cwd,
        stdin,
        peer,
        lines,
        watch_fd,
        cancel,
        accepted: Instant::now(),
    };
    tokio::spawn(task.run(ticket).instrument(span));

    let mut response = Response::new(ChannelBody { receiver }.boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

fn request_error(err: RequestError) -> ApiError {
    if let RequestError::Override { field, .. } = &err {
        let field = match *field {
            "net" => "network".to_string(),
            "ro" | "rw" => "mounts".to_string(),
            "output-limit" => "limits.output".to_string(),
            limit => format!("limits.{limit}"),
        };
        return ApiError {
            status: 403,
            code: "policy_forbids",
            field: Some(field),
            message: err.to_string(),
        };
    }
    let field = match &err {
        RequestError::EmptyCommand | RequestError::Nul { .. } => "argv".to_string(),
        RequestError::Workspace { .. } => "cwd".into(),
        RequestError::Path { .. } | RequestError::View(_) => "mounts".into(),
        RequestError::Limit { field, .. } => format!("limits.{field}"),
        RequestError::Env { .. } => "env".into(),
        RequestError::User(_) => "user".into(),
        RequestError::Override { .. } => "request".into(),
    };
    ApiError::bad(field, err.to_string())
}

/// A response body fed line by line by its job.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|line| line.map(|bytes| Ok(Frame::data(bytes))))
    }
}

struct JobTask {
    daemon: Arc<Daemon>,
    plan: JobPlan,
    cwd: PathBuf,
    stdin: Vec<u8>,
    peer: Peer,
    lines: mpsc::Sender<Bytes>,
    watch_fd: Option<Arc<OwnedFd>>,
    cancel: Arc<Notify>,
    accepted: Instant,
}

impl JobTask {
    async fn run(self, mut ticket: Ticket) {
        let daemon = self.daemon.clone();
        let job_id = self.plan.job_id.clone();
        let result = self.wait_and_run(&mut ticket).await;
        // The engine has cleaned up the jail; the slot goes to the next in line.
        drop(ticket);
        daemon.jobs().remove(&job_id);
        if daemon.live_jobs.fetch_sub(1, Ordering::SeqCst) == 1 {
            daemon.all_done.notify_waiters();
        }
        if let Some(result) = result {
            info!(status = ?result.status, exit_code = result.exit_code, "job finished");
        }
    }

    /// Wait for a slot (telling the client its place), run, and report. The result, unless
    /// the job never had a client to report to.
    async fn wait_and_run(self, ticket: &mut Ticket) -> Option<JobResult> {
        let daemon = &self.daemon;
        let mut cancel_all = daemon.cancel_all.subscribe();
        while let Place::Waiting(position) = ticket.place() {
            self.set_state(JobState::Queued(position));
            self.send(serde_json::json!({ "type": "queued", "job_id": self.plan.job_id, "position": position }))
                .await;
            tokio::select! {
                _ = ticket.changed() => {}
                _ = cancelled(&self.cancel, &self.lines, self.watch_fd.as_deref(), &mut cancel_all) => {
                    info!("cancelled while queued");
                    let result = daemon.engine.not_started(&self.plan, None);
                    self.finish(&result, Duration::ZERO).await;
                    return Some(result);
                }
            }
        }
        daemon.metrics.queued_for(self.accepted.elapsed());
        self.set_state(JobState::Running);
        let started = Instant::now();
        let stdin = match stdin_fd(&self.stdin) {
            Ok(fd) => fd,
            Err(err) => {
                let result = daemon
                    .engine
                    .not_started(&self.plan, Some(format!("stdin: {err}")));
                self.finish(&result, started.elapsed()).await;
                return Some(result);
            }
        };
        let shim =
            match daemon
                .engine
                .prestart(&self.plan.job_id, self.plan.network, Stdin::Fd(stdin))
            {
                Ok(shim) => shim,
                Err(err) => {
                    let result = daemon.engine.not_started(&self.plan, Some(err.to_string()));
                    self.finish(&result, started.elapsed()).await;
                    return Some(result);
                }
            };
        let (events, mut received) = mpsc::unbounded_channel::<Event>();
        let lines = self.lines.clone();
        let forward = tokio::spawn(async move {
            let mut pending = [Vec::new(), Vec::new()];
            while let Some(event) = received.recv().await {
                if let Some(line) = api::event_line(&event, &mut pending) {
                    // A client that left is noticed by the cancel watch; just stop sending.
                    let _ = lines.send(Bytes::from(line + "\n")).await;
                }
            }
            for (stream, rest) in [Stream::Stdout, Stream::Stderr]
                .into_iter()
                .zip(&mut pending)
            {
                if let Some(line) = api::flush_line(stream, rest) {
                    let _ = lines.send(Bytes::from(line + "\n")).await;
                }
            }
        });
        let cancel = async {
            let why = cancelled(
                &self.cancel,
                &self.lines,
                self.watch_fd.as_deref(),
                &mut cancel_all,
            )
            .await;
            info!(?why, "cancelled while running");
            Cancel {
                exit_code: CANCELLED,
                grace: (why == Why::HungUp).then_some(HANGUP_GRACE),
            }
        };
        let result = daemon
            .engine
            .run(self.plan.clone(), shim, events, cancel)
            .await;
        let _ = forward.await;
        self.finish(&result, started.elapsed()).await;
        Some(result)
    }

    fn set_state(&self, state: JobState) {
        if let Some(job) = self.daemon.jobs().get_mut(&self.plan.job_id) {
            job.state = state;
        }
    }

    async fn send(&self, value: serde_json::Value) {
        let _ = self.lines.send(Bytes::from(value.to_string() + "\n")).await;
    }

    /// Audit first (flushed), then count, then tell the client.
    async fn finish(&self, result: &JobResult, ran: Duration) {
        if let Some(audit) = &self.daemon.audit {
            if let Err(err) = audit.record(&self.peer, &self.plan, &self.cwd, result) {
                warn!("audit log: {err}");
            }
        }
        self.daemon.metrics.finished(result, ran);
        let mut record = serde_json::Map::new();
        record.insert("type".into(), "exit".into());
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(result) {
            record.extend(fields);
        }
        self.send(serde_json::Value::Object(record)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Deleted,
    HungUp,
    Shutdown,
}

/// Resolves when the job is to stop: a DELETE, its client gone (the response dropped, or
/// the socket hung up), or the daemon cancelling everything.
async fn cancelled(
    cancel: &Notify,
    lines: &mpsc::Sender<Bytes>,
    watch_fd: Option<&OwnedFd>,
    cancel_all: &mut watch::Receiver<bool>,
) -> Why {
    let hung_up = async {
        let Some(fd) = watch_fd else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(PEER_CHECK).await;
            if crate::sys::peer_hung_up(fd.as_raw_fd()) {
                return;
            }
        }
    };
    tokio::select! {
        _ = cancel.notified() => Why::Deleted,
        _ = lines.closed() => Why::HungUp,
        _ = hung_up => Why::HungUp,
        _ = cancel_all.wait_for(|all| *all) => Why::Shutdown,
    }
}

/// The tool's stdin: the request's bytes through a pipe, or /dev/null.
fn stdin_fd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    if bytes.is_empty() {
        return Ok(std::fs::File::open("/dev/null")?.into());
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let bytes = bytes.to_vec();
    // A tool that never reads its stdin must not hold anything up: the writer is a thread
    // of its own, and ends when the tool closes the pipe or exits.
    std::thread::Builder::new()
        .name("toolbox-stdin".into())
        .spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::from(write);
            let _ = file.write_all(&bytes);
        })?;
    Ok(read)
}
