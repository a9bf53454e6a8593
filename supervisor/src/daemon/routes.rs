//! The HTTP routes of the job API (an axum router on the connections `serve` accepts). Every
//! refusal is `{"error": {"code", "message", "field"?}}` with its status, and is counted.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tracing::{info_span, Instrument};

use super::api::{self, ApiError, Peer};
use super::jobs::{self, Handle, JobEntry, JobState, JobStdin, JobTask, Sink};
use super::outlog::Piece;
use super::queue::Place;
use super::Daemon;
use crate::job::{self, Caller, RequestError};
use crate::spawn::ExecPort;
use crate::units::Dur;

/// The largest request body, stdin included.
pub const BODY_LIMIT: usize = 1 << 20;
/// How many job-stream lines may wait for a slow client before the job's forwarder waits.
const STREAM_BACKLOG: usize = 256;
/// The longest a read of output may wait for more (`wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long an exec may wait for a job that just started to have its jail.
const JAIL_WAIT: Duration = Duration::from_secs(10);
/// How long a write to a job's stdin may wait for the job to read.
const STDIN_WAIT: Duration = Duration::from_secs(10);

/// Who is on the other end of the connection a request came on.
#[derive(Clone)]
pub struct Conn {
    pub peer: Peer,
    /// Our own handle on the connection's socket (see [`Sink::Stream`]).
    pub watch_fd: Option<Arc<OwnedFd>>,
}

/// The code of a refusal, for the metrics layer to count.
#[derive(Clone, Copy)]
struct Refused(&'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, json_headers(), self.to_json()).into_response();
        if self.status == 429 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(Refused(self.code));
        response
    }
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )]
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, json_headers(), value.to_string()).into_response()
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(show).delete(cancel))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/stdin", axum::routing::post(stdin))
        .route("/v1/jobs/{id}/exec", axum::routing::post(exec))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response_with_state(
            daemon.clone(),
            count_refusals,
        ))
        .with_state(daemon)
}

async fn count_refusals(State(daemon): State<Arc<Daemon>>, response: Response) -> Response {
    if let Some(Refused(code)) = response.extensions().get::<Refused>() {
        daemon.metrics.refused(code);
    }
    response
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        404,
        "not_found",
        format!(
            "no such endpoint: {} (see /v1/jobs, /v1/health, /metrics)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let allowed = if path == "/v1/jobs" {
        "GET lists jobs, POST starts one"
    } else if path.ends_with("/output") {
        "GET reads a job's output"
    } else if path.ends_with("/stdin") {
        "POST writes a job's stdin"
    } else if path.ends_with("/exec") {
        "POST runs a command in a running job's jail"
    } else if path.starts_with("/v1/jobs/") {
        "GET shows a job, DELETE cancels it"
    } else {
        "GET only"
    };
    ApiError::new(
        405,
        "method_not_allowed",
        format!("{method} is not allowed on {path} ({allowed})"),
    )
}

async fn health(State(daemon): State<Arc<Daemon>>) -> Response {
    let (running, queued) = daemon.slots.counts();
    let cgroup = daemon
        .engine
        .cgroups()
        .map(|c| c.version())
        .unwrap_or("none");
    let placement = daemon.engine.placement().map(|p| p.name()).ok();
    json(
        StatusCode::OK,
        serde_json::json!({
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
        }),
    )
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let (running, queued) = daemon.slots.counts();
    let mut text = daemon
        .metrics
        .render(running, queued, daemon.slots.max_jobs());
    let (detached, ended, held) = daemon.detached_counts();
    text.push_str(&format!(
        "# HELP toolbox_detached_jobs Detached jobs the daemon holds, by state.\n\
         # TYPE toolbox_detached_jobs gauge\n\
         toolbox_detached_jobs{{state=\"live\"}} {detached}\n\
         toolbox_detached_jobs{{state=\"ended\"}} {ended}\n\
         # HELP toolbox_detached_output_bytes Output bytes held for detached jobs.\n\
         # TYPE toolbox_detached_output_bytes gauge\n\
         toolbox_detached_output_bytes {held}\n"
    ));
    let pool = daemon.pool.counts();
    text.push_str(&format!(
        "# HELP toolbox_warm_jails Jails prepared ahead of demand, ready for a job, by network.\n\
         # TYPE toolbox_warm_jails gauge\n\
         toolbox_warm_jails{{network=\"isolated\"}} {}\n\
         toolbox_warm_jails{{network=\"host\"}} {}\n\
         # HELP toolbox_warm_jails_taken_total Prepared jails a job took.\n\
         # TYPE toolbox_warm_jails_taken_total counter\n\
         toolbox_warm_jails_taken_total {}\n\
         # HELP toolbox_warm_jails_destroyed_total Prepared jails destroyed unused (too old, a policy reload, the daemon stopping).\n\
         # TYPE toolbox_warm_jails_destroyed_total counter\n\
         toolbox_warm_jails_destroyed_total {}\n",
        pool.ready_isolated, pool.ready_host, pool.taken, pool.destroyed
    ));
    let (drafted, built) = daemon.engine.roots();
    text.push_str(&format!(
        "# HELP toolbox_warm_roots_total Jobs in prepared jails, by their root: the one laid out ahead from the last like job's (drafted), or one built for the job (built: the draft did not fit).\n\
         # TYPE toolbox_warm_roots_total counter\n\
         toolbox_warm_roots_total{{root=\"drafted\"}} {drafted}\n\
         toolbox_warm_roots_total{{root=\"built\"}} {built}\n"
    ));
    let views = daemon.views.counts();
    text.push_str(&format!(
        "# HELP toolbox_views_total Jails' filesystem views planned, by how: built from the host's files, or served from the memo kept while those stay as they were.\n\
         # TYPE toolbox_views_total counter\n\
         toolbox_views_total{{how=\"built\"}} {}\n\
         toolbox_views_total{{how=\"memo\"}} {}\n",
        views.built, views.served
    ));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

async fn list(State(daemon): State<Arc<Daemon>>, Extension(conn): Extension<Conn>) -> Response {
    let mut registry = daemon.jobs();
    jobs::expire(&mut registry, &daemon.retention);
    let listed: Vec<serde_json::Value> = registry
        .iter()
        // Other people's command lines are theirs: only root sees every job.
        .filter(|(_, job)| job.owned_by(&conn.peer))
        .map(|(id, job)| job.summary(id))
        .collect();
    json(StatusCode::OK, serde_json::json!({ "jobs": listed }))
}

/// The job `id` if `peer` may see it; anybody else's is as absent as a job that never was.
fn lookup<T>(
    daemon: &Daemon,
    peer: &Peer,
    id: Result<Path<String>, PathRejection>,
    f: impl FnOnce(&str, &JobEntry) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad("job_id", e.body_text()))?;
    let mut registry = daemon.jobs();
    jobs::expire(&mut registry, &daemon.retention);
    match registry.get(&id) {
        Some(job) if job.owned_by(peer) => f(&id, job),
        _ => Err(ApiError::new(
            404,
            "no_such_job",
            format!("no job {id:?} of yours is known here (ended jobs are kept only a while)"),
        )),
    }
}

async fn show(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    lookup(&daemon, &conn.peer, id, |id, job| {
        let mut value = job.summary(id);
        if let Some(result) = job.handle.as_ref().and_then(|h| h.result()) {
            value["result"] = result.clone();
        }
        Ok(json(StatusCode::OK, value))
    })
}

async fn cancel(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    lookup(&daemon, &conn.peer, id, |id, job| {
        if job.has_ended() {
            return Err(ApiError::new(
                409,
                "job_ended",
                format!("job {id:?} has ended already; GET /v1/jobs/{id} has its record"),
            ));
        }
        job.cancel.notify_one();
        Ok(json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "job_id": id, "cancelling": true }),
        ))
    })
}

/// The handle of a detached job of `peer`'s.
fn detached(
    daemon: &Daemon,
    peer: &Peer,
    id: Result<Path<String>, PathRejection>,
) -> Result<(String, Arc<Handle>), ApiError> {
    lookup(daemon, peer, id, |id, job| {
        match &job.handle {
        Some(handle) => Ok((id.to_string(), handle.clone())),
        None => Err(ApiError::new(
            409,
            "not_detached",
            format!(
                "job {id:?} streams to the connection that started it; start a job with \"detach\": true to read its output or write its stdin here"
            ),
        )),
    }
    })
}

/// The query's parameters, each known name at most once.
fn query<'a>(
    uri: &'a Uri,
    known: &[&str],
) -> Result<std::collections::BTreeMap<&'a str, &'a str>, ApiError> {
    let mut found = std::collections::BTreeMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&name) {
            return Err(ApiError::bad(
                name,
                format!("is not a parameter here (known: {})", known.join(", ")),
            ));
        }
        if found.insert(name, value).is_some() {
            return Err(ApiError::bad(name, "is given twice"));
        }
    }
    Ok(found)
}

fn offset(
    params: &std::collections::BTreeMap<&str, &str>,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad(name, format!("{v:?} is not a byte offset (0, 1, 2, ...)"))
            })
        })
        .transpose()
}

async fn output(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = query(&uri, &["since", "stdout_since", "stderr_since", "wait"])?;
    let since = offset(&params, "since")?.unwrap_or(0);
    let from = [
        offset(&params, "stdout_since")?.unwrap_or(since),
        offset(&params, "stderr_since")?.unwrap_or(since),
    ];
    let wait = match params.get("wait") {
        Some(text) => text
            .parse::<Dur>()
            .map_err(|e| ApiError::bad("wait", e.to_string()))?
            .0
            .min(MAX_WAIT),
        None => Duration::ZERO,
    };
    let (id, handle) = detached(&daemon, &conn.peer, id)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = handle.subscribe();
    loop {
        let ended = handle.result().is_some();
        let reads = {
            let logs = handle.logs();
            [logs[0].read(from[0], ended), logs[1].read(from[1], ended)]
        };
        let new = reads
            .iter()
            .zip(from)
            .any(|(read, from)| read.next > from || !read.pieces.is_empty());
        if new || ended || tokio::time::Instant::now() >= deadline {
            let state = output_state(ended, daemon.jobs().get(&id).map(|job| job.state));
            let [out, err] = reads;
            return Ok(json(
                StatusCode::OK,
                serde_json::json!({
                    "job_id": id,
                    "state": state,
                    "done": ended,
                    "stdout": stream_json(from[0], out),
                    "stderr": stream_json(from[1], err),
                }),
            ));
        }
        // Woken by new output or the end; a sender gone means the job is over too.
        let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
    }
}

/// The state an output answer gives: `ended` exactly when it says `done`, whatever the
/// registry says by now (a job whose record came after this read of its logs may have
/// written more, and a reader told `ended` would stop short of it).
fn output_state(ended: bool, registry: Option<JobState>) -> &'static str {
    match registry {
        _ if ended => "ended",
        Some(JobState::Queued(_)) => "queued",
        _ => "running",
    }
}

fn stream_json(since: u64, read: super::outlog::Read) -> serde_json::Value {
    let chunks: Vec<serde_json::Value> = read
        .pieces
        .into_iter()
        .map(|piece| match piece {
            Piece::Data { offset, bytes } => {
                let mut value = api::output_value(&bytes);
                value["offset"] = offset.into();
                value
            }
            Piece::Gap { offset, dropped } => {
                serde_json::json!({ "offset": offset, "dropped_bytes": dropped })
            }
        })
        .collect();
    serde_json::json!({ "since": since.min(read.next), "next": read.next, "chunks": chunks })
}

async fn stdin(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let params = query(request.uri(), &["close"])?;
    let close = match params.get("close").copied() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "close",
                format!("{other:?} is not true or false"),
            ))
        }
    };
    let (id, handle) = detached(&daemon, &conn.peer, id)?;
    let bytes = read_body(request).await?;
    let closed_error = || {
        ApiError::new(
            409,
            "stdin_closed",
            format!("job {id:?} has no open stdin: it was closed, or the job ended"),
        )
    };
    if handle.result().is_some() {
        return Err(closed_error());
    }
    let mut stdin = handle.stdin.lock().await;
    let Some(pipe) = stdin.as_mut() else {
        return Err(closed_error());
    };
    let written = tokio::time::timeout(STDIN_WAIT, pipe.write_all(&bytes)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            // The job's end of the pipe is gone: it exited, or closed its stdin.
            stdin.take();
            return Err(ApiError::new(
                409,
                "stdin_closed",
                format!("job {id:?} no longer reads its stdin: {err}"),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                503,
                "stdin_full",
                format!(
                    "job {id:?} did not read its stdin for {}; some of the {} bytes may have been written",
                    Dur(STDIN_WAIT),
                    bytes.len()
                ),
            ))
        }
    }
    if close {
        stdin.take();
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "job_id": id, "written": bytes.len(), "closed": stdin.is_none() }),
    ))
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(
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
        ),
    }
}

async fn submit(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    request: Request,
) -> Result<Response, ApiError> {
    require_json(&request)?;
    let peer = conn.peer.clone();
    let bytes = read_body(request).await?;
    let mut body = api::parse_body(&bytes)?;
    let caller_env = api::take_caller_env(&mut body)?;
    let detach = body.detach;
    let idle_timeout = body.limits.idle_timeout.map(|d| d.0);
    if idle_timeout.is_some_and(|d| d.is_zero()) {
        return Err(ApiError::bad(
            "limits.idle_timeout",
            "must be longer than zero (leave it out for none)",
        ));
    }
    let policy_name = api::policy_name(body.policy.as_deref())?.to_string();
    let policy = daemon.policies.get(&policy_name)?;
    let job_id = job::new_job_id();
    let stdin_cap = policy.limits.stdin;
    let (request, stdin_bytes) = api::to_request(body, &peer, &policy, &job_id, stdin_cap)?;
    let caller = Caller {
        env: caller_env,
        cwd: request.cwd.clone().unwrap_or_else(|| PathBuf::from("/")),
        sudo: None,
        // The peer's own home (its passwd entry), for policies that show some of it.
        home: crate::home::of_caller(peer.uid, None),
        root: peer.uid == 0,
    };
    let cwd = caller.cwd.clone();
    let mut plan =
        job::plan_with(&policy, request, &caller, Some(&daemon.views)).map_err(request_error)?;
    plan.idle_timeout = idle_timeout;
    plan.output_whole = detach;
    if detach {
        check_detached_bound(&daemon, &peer)?;
    }
    let ticket = daemon
        .slots
        .enter()
        .map_err(|full| ApiError::new(429, "queue_full", format!("{full}; try again shortly")))?;
    start(&daemon, &conn, plan, cwd, stdin_bytes, Start::Job(ticket)).await
}

/// What a task starts: a new job once it has a slot, or a command in a running job.
enum Start {
    Job(super::queue::Ticket),
    Exec { port: ExecPort, of: String },
}

/// Register the task, start it, and answer: its event stream, or (detached: `plan`'s
/// `output_whole` says so) its id and state.
async fn start(
    daemon: &Arc<Daemon>,
    conn: &Conn,
    plan: crate::job::JobPlan,
    cwd: PathBuf,
    stdin_bytes: Vec<u8>,
    what: Start,
) -> Result<Response, ApiError> {
    let detach = plan.output_whole;
    let peer = conn.peer.clone();
    let job_id = plan.job_id.clone();
    let cancel = Arc::new(Notify::new());
    let (sink, stdin, handle, receiver) = if detach {
        let (read, write) = jobs::held_stdin()
            .map_err(|e| ApiError::new(500, "internal", format!("make the job's stdin: {e}")))?;
        let handle = Arc::new(Handle::new(plan.limits.output, Some(write)));
        if !stdin_bytes.is_empty() {
            // The request's stdin goes first, ahead of any later write (this holds the
            // pipe until it is through, or the job is gone).
            let mut held = handle.stdin.clone().lock_owned().await;
            tokio::spawn(async move {
                if let Some(pipe) = held.as_mut() {
                    if pipe.write_all(&stdin_bytes).await.is_err() {
                        held.take();
                    }
                }
            });
        }
        (
            Sink::Detached(handle.clone()),
            JobStdin::Held(read),
            Some(handle),
            None,
        )
    } else {
        let (lines, receiver) = mpsc::channel::<Bytes>(STREAM_BACKLOG);
        (
            Sink::Stream {
                lines,
                watch_fd: conn.watch_fd.clone(),
            },
            JobStdin::Bytes(stdin_bytes),
            None,
            Some(receiver),
        )
    };
    let (state, exec_of) = match &what {
        Start::Job(ticket) => (
            match ticket.place() {
                Place::Waiting(n) => JobState::Queued(n),
                Place::Running => JobState::Running,
            },
            None,
        ),
        Start::Exec { of, .. } => (JobState::Running, Some(of.clone())),
    };
    daemon.jobs().insert(
        job_id.clone(),
        JobEntry {
            peer_uid: peer.uid,
            argv: plan.argv.clone(),
            policy: plan.policy.clone(),
            state,
            since: Instant::now(),
            ended: None,
            cancel: cancel.clone(),
            handle,
            exec: None,
            exec_of: exec_of.clone(),
        },
    );
    daemon.live_jobs.fetch_add(1, Ordering::SeqCst);
    let span =
        info_span!("job", id = %job_id, peer_uid = peer.uid, peer_pid = peer.pid, detach, exec_of);
    let task = JobTask {
        daemon: daemon.clone(),
        plan,
        cwd,
        stdin: std::sync::Mutex::new(stdin),
        exec_of,
        peer,
        sink,
        cancel,
        accepted: Instant::now(),
    };
    match what {
        Start::Job(ticket) => tokio::spawn(task.run(ticket).instrument(span)),
        Start::Exec { port, .. } => tokio::spawn(task.run_exec(port).instrument(span)),
    };

    match receiver {
        Some(receiver) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )],
            axum::body::Body::new(ChannelBody { receiver }),
        )
            .into_response()),
        None => {
            let position = match state {
                JobState::Queued(n) => Some(n),
                _ => None,
            };
            Ok(json(
                StatusCode::CREATED,
                serde_json::json!({
                    "job_id": job_id,
                    "state": state.name(),
                    "position": position,
                }),
            ))
        }
    }
}

/// `POST /v1/jobs/{id}/exec`: another command in a running job's jail.
async fn exec(
    State(daemon): State<Arc<Daemon>>,
    Extension(conn): Extension<Conn>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    require_json(&request)?;
    let Path(id) = id.map_err(|e| ApiError::bad("job_id", e.body_text()))?;
    // A job just started is a few milliseconds from a jail to exec into: wait for it.
    let deadline = Instant::now() + JAIL_WAIT;
    let (id, target) = loop {
        let found = lookup(&daemon, &conn.peer, Ok(Path(id.clone())), |id, job| match (
            &job.exec, job.state,
        ) {
            (Some(target), JobState::Running) => Ok(Some((id.to_string(), target.clone()))),
            (None, JobState::Running) if job.exec_of.is_none() => Ok(None),
            _ => Err(ApiError::new(
                409,
                "job_not_running",
                format!(
                    "job {id:?} is {}: commands run only in a running job's jail",
                    match job.state {
                        JobState::Queued(_) => "still queued",
                        JobState::Ended => "over",
                        JobState::Running =>
                            "itself a command exec'd into a job (exec into that job instead)",
                    }
                ),
            )),
        })?;
        match found {
            Some(found) => break found,
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
            None => {
                return Err(ApiError::new(
                    409,
                    "job_not_running",
                    format!("job {id:?} has not got its jail in {}", Dur(JAIL_WAIT)),
                ))
            }
        }
    };
    let bytes = read_body(request).await?;
    let body = api::parse_exec_body(&bytes, &id)?;
    let detach = body.detach;
    let (mut plan, stdin) = api::exec_plan(body, &target.plan)?;
    plan.job_id = job::new_job_id();
    plan.output_whole = detach;
    if detach {
        check_detached_bound(&daemon, &conn.peer)?;
    }
    let cwd = plan.workspace.clone();
    start(
        &daemon,
        &conn,
        plan,
        cwd,
        stdin,
        Start::Exec {
            port: target.port,
            of: id,
        },
    )
    .await
}

fn require_json(request: &Request) -> Result<(), ApiError> {
    let json_body = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if json_body {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the job request as JSON (Content-Type: application/json)",
        ))
    }
}

/// Past `--max-detached` live detached jobs (exec'd commands included), a peer is refused.
fn check_detached_bound(daemon: &Daemon, peer: &Peer) -> Result<(), ApiError> {
    let live = jobs::live_detached(daemon.jobs().values(), peer.uid);
    let bound = daemon.retention.max_detached;
    if live >= bound {
        return Err(ApiError::new(
            429,
            "too_many_detached",
            format!(
                "uid {} has {live} detached jobs queued or running; this daemon allows {bound} per user at once (--max-detached): wait for one to end, or cancel one",
                peer.uid
            ),
        ));
    }
    Ok(())
}

fn request_error(err: RequestError) -> ApiError {
    if let RequestError::Override { field, .. } = &err {
        let field = match *field {
            "net" => "network".to_string(),
            "allow" => "allow".to_string(),
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
        RequestError::Limit { field: "allow", .. } => "allow".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_answer_says_ended_exactly_when_it_says_done() {
        // The registry marks a job ended just after its record is set; a read of its logs
        // made before the record still says running, and one made after says ended.
        assert_eq!(output_state(false, Some(JobState::Ended)), "running");
        assert_eq!(output_state(false, Some(JobState::Running)), "running");
        assert_eq!(output_state(false, Some(JobState::Queued(2))), "queued");
        assert_eq!(output_state(true, Some(JobState::Running)), "ended");
        assert_eq!(output_state(true, None), "ended");
    }
}
