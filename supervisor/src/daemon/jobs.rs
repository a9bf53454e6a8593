//! The daemon's jobs: the registry every route reads, and the task that carries one job
//! from its slot to its record. A job reports either to the connection that posted it (an
//! NDJSON stream; the job ends when the client leaves) or, started detached, to a handle the
//! registry keeps: its output in a capped log read by offset, its stdin a pipe the daemon
//! holds, its record kept for a while after it ended.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};
use tracing::info;

use super::api::{self, Peer};
use super::outlog::OutputLog;
use super::queue::{Place, Ticket};
use super::Daemon;
use crate::engine::{Cancel, Cleanup, Event, Stream};
use crate::job::JobPlan;
use crate::record::JobResult;
use crate::spawn::{ExecPort, Stdin};

/// How often a job checks that its client is still there while nothing else happens.
const PEER_CHECK: Duration = Duration::from_millis(100);
/// The exit code reported for a job cancelled by its client or the daemon (128 + SIGTERM).
const CANCELLED: i32 = 128 + libc::SIGTERM;
/// SIGTERM to SIGKILL for the job of a client that hung up: nobody reads its output, and
/// its processes must be gone within a second.
const HANGUP_GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued(usize),
    Running,
    /// A detached job's, kept after its end until [`Retention`] lets it go.
    Ended,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued(_) => "queued",
            JobState::Running => "running",
            JobState::Ended => "ended",
        }
    }
}

#[derive(Debug)]
pub struct JobEntry {
    pub peer_uid: u32,
    pub argv: Vec<String>,
    pub policy: String,
    pub state: JobState,
    pub since: Instant,
    /// When it ended (detached jobs are kept a while after).
    pub ended: Option<Instant>,
    pub cancel: Arc<Notify>,
    /// Detached jobs only.
    pub handle: Option<Arc<Handle>>,
    /// While the job runs: how to run more commands in its jail.
    pub exec: Option<ExecTarget>,
    /// For a command exec'd into a job: that job's id.
    pub exec_of: Option<String>,
}

/// A running job's jail, for `POST /v1/jobs/{id}/exec`: where commands go, and the plan
/// they start from.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub port: ExecPort,
    pub plan: Arc<JobPlan>,
}

impl JobEntry {
    /// Whether `peer` may see and touch this job: its owner, and root.
    pub fn owned_by(&self, peer: &Peer) -> bool {
        peer.uid == 0 || self.peer_uid == peer.uid
    }

    /// Whether it has ended as the API says it: a detached job whose record is there has,
    /// even in the moment before its task marks the registry (the record is set first, and
    /// wakes the readers waiting for it; the jail's teardown follows). Its state, the
    /// `--max-detached` bound, a DELETE and `/metrics` all go by this.
    pub fn has_ended(&self) -> bool {
        self.state == JobState::Ended
            || self
                .handle
                .as_ref()
                .is_some_and(|handle| handle.result().is_some())
    }

    /// Its state as `GET /v1/jobs` and `GET /v1/jobs/{id}` show it.
    pub fn state_name(&self) -> &'static str {
        if self.has_ended() {
            JobState::Ended.name()
        } else {
            self.state.name()
        }
    }

    pub fn summary(&self, id: &str) -> serde_json::Value {
        let position = match self.state {
            JobState::Queued(n) => Some(n),
            _ => None,
        };
        let elapsed = self.ended.unwrap_or_else(Instant::now) - self.since;
        let mut value = serde_json::json!({
            "job_id": id,
            "peer_uid": self.peer_uid,
            "argv": self.argv,
            "policy": self.policy,
            "state": self.state_name(),
            "position": position,
            "detached": self.handle.is_some(),
            "exec_of": self.exec_of,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        if let Some(handle) = &self.handle {
            let logs = handle.logs();
            value["stdout_bytes"] = logs[0].total().into();
            value["stderr_bytes"] = logs[1].total().into();
        }
        value
    }
}

/// What the daemon holds of a detached job.
#[derive(Debug)]
pub struct Handle {
    /// stdout, stderr.
    logs: Mutex<[OutputLog; 2]>,
    /// Bumped by new output and by the end: long polls wait on it.
    changed: watch::Sender<u64>,
    /// The write end of the job's stdin; `None` once closed.
    pub stdin: Arc<tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>>,
    /// The record, once the job ended.
    result: OnceLock<serde_json::Value>,
}

impl Handle {
    pub fn new(output_limit: u64, stdin: Option<tokio::net::unix::pipe::Sender>) -> Handle {
        Handle {
            logs: Mutex::new([OutputLog::new(output_limit), OutputLog::new(output_limit)]),
            changed: watch::channel(0).0,
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            result: OnceLock::new(),
        }
    }

    pub fn logs(&self) -> std::sync::MutexGuard<'_, [OutputLog; 2]> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn result(&self) -> Option<&serde_json::Value> {
        self.result.get()
    }

    /// To wait for what comes next: subscribe before looking.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn push(&self, stream: Stream, data: &[u8]) {
        self.logs()[stream as usize].push(data);
        self.changed.send_modify(|n| *n += 1);
    }

    fn end(&self, record: serde_json::Value) {
        let _ = self.result.set(record);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Bytes of output held.
    pub fn held(&self) -> usize {
        self.logs().iter().map(OutputLog::held).sum()
    }
}

/// How long and how many ended detached jobs are kept, and how many may live at once.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Live (queued or running) detached jobs a peer may have at once.
    pub max_detached: usize,
    /// Ended detached jobs kept per peer; the oldest goes first.
    pub keep_ended: usize,
    /// How long an ended detached job is kept.
    pub keep_for: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_detached: 16,
            keep_ended: 32,
            keep_for: Duration::from_secs(600),
        }
    }
}

/// Forget ended detached jobs past the retention: too old, or beyond the newest
/// `keep_ended` of their peer.
pub fn expire(jobs: &mut BTreeMap<String, JobEntry>, retention: &Retention) {
    let now = Instant::now();
    jobs.retain(|_, job| {
        job.ended
            .is_none_or(|ended| now.duration_since(ended) < retention.keep_for)
    });
    let mut ended: BTreeMap<u32, Vec<(Instant, String)>> = BTreeMap::new();
    for (id, job) in jobs.iter() {
        if let Some(at) = job.ended {
            ended
                .entry(job.peer_uid)
                .or_default()
                .push((at, id.clone()));
        }
    }
    for (_, mut list) in ended {
        if list.len() > retention.keep_ended {
            list.sort();
            for (_, id) in &list[..list.len() - retention.keep_ended] {
                jobs.remove(id);
            }
        }
    }
}

/// Where a job's events go.
pub enum Sink {
    /// The NDJSON stream of the connection that posted it; `watch_fd` is our own handle on
    /// that connection's socket, to notice a client that hung up while its job is quiet.
    Stream {
        lines: mpsc::Sender<Bytes>,
        watch_fd: Option<Arc<OwnedFd>>,
    },
    Detached(Arc<Handle>),
}

pub struct JobTask {
    pub daemon: Arc<Daemon>,
    pub plan: JobPlan,
    pub cwd: PathBuf,
    /// The tool's stdin: the request's bytes (a streaming job's), or the read end of the
    /// pipe the daemon holds (a detached job's). Taken when the command starts.
    pub stdin: Mutex<JobStdin>,
    /// For a command exec'd into a job: that job's id.
    pub exec_of: Option<String>,
    pub peer: Peer,
    pub sink: Sink,
    pub cancel: Arc<Notify>,
    pub accepted: Instant,
}

/// How a task's command gets its jail.
enum Launch {
    /// A jail of its own.
    Fresh(Box<crate::engine::Prestarted>),
    /// A running job's.
    Exec(ExecPort),
}

impl JobTask {
    /// Run a new job: wait for a slot, build its jail, run it, report.
    pub async fn run(self, mut ticket: Ticket) {
        let daemon = self.daemon.clone();
        let job_id = self.plan.job_id.clone();
        let detached = matches!(self.sink, Sink::Detached(_));
        let (result, cleanup) = self.wait_and_run(&mut ticket).await;
        // The client has the record (and its stream has ended with the task); the jail's
        // PID 1 and cgroup go, then the slot goes to the next in line, and the pool prepares
        // the next jail.
        if let Some(cleanup) = cleanup {
            cleanup.finish().await;
        }
        drop(ticket);
        daemon.pool.job_ended();
        ended(&daemon, &job_id, detached, &result);
    }

    /// Run a command in a running job's jail: no slot of its own (it runs on the job's),
    /// and it ends with the job if not before.
    pub async fn run_exec(self, port: ExecPort) {
        let daemon = self.daemon.clone();
        let job_id = self.plan.job_id.clone();
        let detached = matches!(self.sink, Sink::Detached(_));
        let mut cancel_all = daemon.cancel_all.subscribe();
        let (result, _) = self
            .launch(Launch::Exec(port), Instant::now(), &mut cancel_all)
            .await;
        ended(&daemon, &job_id, detached, &result);
    }

    /// Wait for a slot (telling the client its place), run, and report.
    async fn wait_and_run(self, ticket: &mut Ticket) -> (JobResult, Option<Cleanup>) {
        let daemon = self.daemon.clone();
        let mut cancel_all = daemon.cancel_all.subscribe();
        while let Place::Waiting(position) = ticket.place() {
            self.set_state(JobState::Queued(position));
            self.send(serde_json::json!({ "type": "queued", "job_id": self.plan.job_id, "position": position }))
                .await;
            tokio::select! {
                _ = ticket.changed() => {}
                _ = cancelled(&self.cancel, &self.sink, &mut cancel_all) => {
                    info!("cancelled while queued");
                    let result = daemon.engine.not_started(&self.plan, None);
                    self.finish(&result, Duration::ZERO).await;
                    return (result, None);
                }
            }
        }
        daemon.metrics.queued_for(self.accepted.elapsed());
        self.set_state(JobState::Running);
        let started = Instant::now();
        let shim = match self.jail(&daemon) {
            Ok(shim) => shim,
            Err(message) => {
                let result = daemon.engine.not_started(&self.plan, Some(message));
                self.finish(&result, started.elapsed()).await;
                return (result, None);
            }
        };
        if let Some(port) = shim.exec_port() {
            if let Some(job) = daemon.jobs().get_mut(&self.plan.job_id) {
                job.exec = Some(ExecTarget {
                    port,
                    plan: Arc::new(self.plan.clone()),
                });
            }
        }
        self.launch(Launch::Fresh(Box::new(shim)), started, &mut cancel_all)
            .await
    }

    /// The job's jail: a prepared one from the pool, handed the tool's stdin, or else one
    /// started now.
    fn jail(&self, daemon: &Daemon) -> Result<crate::engine::Prestarted, String> {
        if let Some(mut jail) = daemon.pool.take(&crate::engine::DraftKey::of(&self.plan)) {
            // The pool prepares the next jail once this job is over (see `run`), or has run
            // a while: not beside its start — and not before this job's spec is the draft
            // the next is laid out from (a start slower than REFILL_AFTER, on a loaded
            // machine, would have it prepared from the draft before, or none).
            let so_far = daemon.engine.drafts_so_far();
            let pool = self.daemon.clone();
            tokio::spawn(async move {
                tokio::time::sleep(super::warm::REFILL_AFTER).await;
                let drafted = pool.engine.draft_after(so_far);
                let _ = tokio::time::timeout(super::warm::DRAFT_WAIT, drafted).await;
                pool.pool.job_ended();
            });
            let stdin = self.stdin_fd().map_err(|err| format!("stdin: {err}"))?;
            jail.pass_stdin(stdin)
                .map_err(|err| format!("hand the jail its stdin: {err}"))?;
            return Ok(jail);
        }
        // Started here, before stdin: a detached job's is a pipe already, and a streamed
        // job's gets a writer thread only once its jail is on its way.
        let stdin = self.stdin_fd().map_err(|err| format!("stdin: {err}"))?;
        daemon
            .engine
            .prestart(&self.plan.job_id, self.plan.network, Stdin::Fd(stdin))
            .map_err(|err| err.to_string())
    }

    /// The tool's stdin, taken (the task keeps /dev/null's place).
    fn stdin_fd(&self) -> std::io::Result<OwnedFd> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *stdin, JobStdin::Bytes(Vec::new())) {
            JobStdin::Held(fd) => Ok(fd),
            JobStdin::Bytes(bytes) => stdin_fd(&bytes),
        }
    }

    /// Run the command in its jail, forwarding its events, until its end; report it.
    async fn launch(
        &self,
        launch: Launch,
        started: Instant,
        cancel_all: &mut watch::Receiver<bool>,
    ) -> (JobResult, Option<Cleanup>) {
        let daemon = &self.daemon;
        let (events, mut received) = mpsc::unbounded_channel::<Event>();
        let forward = match &self.sink {
            Sink::Stream { lines, .. } => {
                let lines = lines.clone();
                tokio::spawn(async move {
                    let mut pending = [Vec::new(), Vec::new()];
                    while let Some(event) = received.recv().await {
                        if let Some(line) = api::event_line(&event, &mut pending) {
                            // A client that left is noticed by the cancel watch; just stop
                            // sending.
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
                })
            }
            Sink::Detached(handle) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    while let Some(event) = received.recv().await {
                        if let Event::Output { stream, data } = event {
                            handle.push(stream, &data);
                        }
                    }
                })
            }
        };
        let cancel = async {
            let why = cancelled(&self.cancel, &self.sink, cancel_all).await;
            info!(?why, "cancelled while running");
            Cancel {
                exit_code: CANCELLED,
                grace: (why == Why::HungUp).then_some(HANGUP_GRACE),
            }
        };
        let mut cleanup = None;
        let mut result = match launch {
            Launch::Fresh(shim) => {
                let (result, left) = daemon
                    .engine
                    .run_until_ended(self.plan.clone(), *shim, events, cancel)
                    .await;
                cleanup = Some(left);
                result
            }
            Launch::Exec(port) => match self.stdin_fd() {
                Ok(stdin) => {
                    daemon
                        .engine
                        .exec(self.plan.clone(), &port, stdin, events, cancel)
                        .await
                }
                Err(err) => {
                    drop(events);
                    daemon
                        .engine
                        .not_started(&self.plan, Some(format!("stdin: {err}")))
                }
            },
        };
        result.exec_of = self.exec_of.clone();
        let _ = forward.await;
        self.finish(&result, started.elapsed()).await;
        (result, cleanup)
    }

    fn set_state(&self, state: JobState) {
        if let Some(job) = self.daemon.jobs().get_mut(&self.plan.job_id) {
            job.state = state;
        }
    }

    /// An event for a streaming client (a detached job's state is read from the registry).
    async fn send(&self, value: serde_json::Value) {
        if let Sink::Stream { lines, .. } = &self.sink {
            let _ = lines.send(Bytes::from(value.to_string() + "\n")).await;
        }
    }

    /// Audit first (flushed), then count, then tell the client (or keep the record).
    async fn finish(&self, result: &JobResult, ran: Duration) {
        if let Some(audit) = &self.daemon.audit {
            if let Err(err) = audit.record(&self.peer, &self.plan, &self.cwd, result) {
                tracing::warn!("audit log: {err}");
            }
        }
        self.daemon.metrics.finished(result, ran);
        let mut record = serde_json::Map::new();
        record.insert("type".into(), "exit".into());
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(result) {
            record.extend(fields);
        }
        match &self.sink {
            Sink::Stream { .. } => self.send(serde_json::Value::Object(record)).await,
            Sink::Detached(handle) => {
                record.remove("type");
                handle.end(serde_json::Value::Object(record));
            }
        }
    }
}

/// How many detached jobs of `uid` have not ended (see [`JobEntry::has_ended`]): what
/// `--max-detached` bounds.
pub fn live_detached<'a>(jobs: impl Iterator<Item = &'a JobEntry>, uid: u32) -> usize {
    jobs.filter(|job| job.handle.is_some() && job.peer_uid == uid && !job.has_ended())
        .count()
}

/// A task's end in the registry: a streamed job leaves it, a detached one stays (ended,
/// its stdin closed) until the retention lets it go.
fn ended(daemon: &Daemon, job_id: &str, detached: bool, result: &JobResult) {
    {
        let mut jobs = daemon.jobs();
        if detached {
            if let Some(job) = jobs.get_mut(job_id) {
                job.state = JobState::Ended;
                job.ended = Some(Instant::now());
                job.exec = None;
                // Nothing reads its stdin any more.
                if let Some(handle) = &job.handle {
                    if let Ok(mut stdin) = handle.stdin.try_lock() {
                        stdin.take();
                    }
                }
            }
            expire(&mut jobs, &daemon.retention);
        } else {
            jobs.remove(job_id);
        }
    }
    if daemon.live_jobs.fetch_sub(1, Ordering::SeqCst) == 1 {
        daemon.all_done.notify_waiters();
    }
    info!(status = ?result.status, exit_code = result.exit_code, "job finished");
}

pub enum JobStdin {
    Bytes(Vec<u8>),
    Held(OwnedFd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Deleted,
    HungUp,
    Shutdown,
}

/// Resolves when the job is to stop: a DELETE, its client gone (the response dropped, or
/// the socket hung up; not for a detached job), or the daemon cancelling everything.
async fn cancelled(cancel: &Notify, sink: &Sink, cancel_all: &mut watch::Receiver<bool>) -> Why {
    let hung_up = async {
        let Sink::Stream { lines, watch_fd } = sink else {
            return std::future::pending().await;
        };
        let Some(fd) = watch_fd else {
            lines.closed().await;
            return;
        };
        tokio::select! {
            _ = lines.closed() => {}
            _ = async {
                loop {
                    tokio::time::sleep(PEER_CHECK).await;
                    if crate::sys::peer_hung_up(fd.as_raw_fd()) {
                        return;
                    }
                }
            } => {}
        }
    };
    tokio::select! {
        _ = cancel.notified() => Why::Deleted,
        _ = hung_up => Why::HungUp,
        _ = cancel_all.wait_for(|all| *all) => Why::Shutdown,
    }
}

/// A streaming job's stdin: the request's bytes through a pipe, or /dev/null.
pub fn stdin_fd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
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

/// A detached job's stdin: a pipe whose write end the daemon keeps (the request's bytes are
/// written into it first, by the caller).
pub fn held_stdin() -> std::io::Result<(OwnedFd, tokio::net::unix::pipe::Sender)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let sender = tokio::net::unix::pipe::Sender::from_owned_fd(write)?;
    Ok((read, sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: u32, ended: Option<Instant>) -> JobEntry {
        JobEntry {
            peer_uid: uid,
            argv: vec!["true".into()],
            policy: "default".into(),
            state: if ended.is_some() {
                JobState::Ended
            } else {
                JobState::Running
            },
            since: Instant::now(),
            ended,
            cancel: Arc::new(Notify::new()),
            handle: None,
            exec: None,
            exec_of: None,
        }
    }

    #[test]
    fn ended_jobs_go_by_age_and_by_count_per_peer_and_live_ones_stay() {
        let retention = Retention {
            max_detached: 4,
            keep_ended: 2,
            keep_for: Duration::from_secs(60),
        };
        let now = Instant::now();
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s));
        let mut jobs = BTreeMap::new();
        jobs.insert("old".to_string(), entry(1, ago(120)));
        jobs.insert("a".to_string(), entry(1, ago(30)));
        jobs.insert("b".to_string(), entry(1, ago(20)));
        jobs.insert("c".to_string(), entry(1, ago(10)));
        jobs.insert("other".to_string(), entry(2, ago(40)));
        jobs.insert("live".to_string(), entry(1, None));
        expire(&mut jobs, &retention);
        let left: Vec<&str> = jobs.keys().map(String::as_str).collect();
        assert_eq!(left, ["b", "c", "live", "other"]);
    }

    #[test]
    fn a_detached_job_with_its_record_is_ended_before_its_task_marks_the_registry() {
        let mut job = entry(1, None);
        let handle = Arc::new(Handle::new(1024, None));
        job.handle = Some(handle.clone());
        assert_eq!(job.state_name(), "running");
        assert_eq!(job.summary("j")["state"], "running");
        assert_eq!(live_detached([&job].into_iter(), 1), 1);
        // The job task sets the record first (waking every reader) and the registry after.
        handle.end(serde_json::json!({"status": "exited"}));
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.state_name(), "ended");
        assert_eq!(job.summary("j")["state"], "ended");
        // Nor does it hold a place under --max-detached any more: a client that read its
        // record may start another (the handles suite once got a 429 in that moment).
        assert_eq!(live_detached([&job].into_iter(), 1), 0);
    }
}
