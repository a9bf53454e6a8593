//! The engine: runs one planned job in a jail, streams its capped output as events, enforces
//! its timeout, and returns the result record. `toolbox run` runs every job through
//! [`Engine::run`]; so will the daemon.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::sync::mpsc::UnboundedSender;
use toolbox_spec::{
    control, Enforced, FsAccess, JailSpec, Landlock, LandlockRule, Mount, Network, Rlimit,
    RlimitKind, Status,
};
use tracing::{debug, info_span, warn, Instrument};

use crate::cgroup::{
    job_name, CgroupLimits, CgroupManager, CgroupStats, Cgroups, JobCgroup, Placement,
    PlacementOptions,
};
use crate::egress::{Egress, Judge, Proxy};
use crate::job::JobPlan;
use crate::output::Capper;
use crate::policy::NetworkMode;
use crate::record::{self, exit, Isolation, JobResult, JobStatus};
use crate::seccomp::{self, SeccompError};
use crate::spawn::{self, Shim, ShimProcess, Stdin};
use crate::sys::SpawnCgroup;

mod exec;
mod intake;

use intake::{Intake, Took};

/// How long the shim may take to go once told to kill the job.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long output may keep flowing after the shim has gone (nothing should hold the pipes
/// by then: every process of the jail is dead).
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Read size for the output pipes.
const READ_BUFFER: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("toolbox needs root to build jails (namespaces, cgroups, mounts); run it with sudo")]
    NotRoot,
    #[error("the exec shim was not found at {0} (build it with cargo build, or set TOOLBOX_SHIM)")]
    ShimNotFound(PathBuf),
    #[error("{0}")]
    Cgroups(String),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("start the exec shim {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What a job reports while it runs; the result record comes last, as the return value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        job_id: String,
    },
    Output {
        stream: Stream,
        data: Vec<u8>,
    },
    /// `dropped` bytes were cut from the middle of the stream; the last `kept` follow.
    Truncated {
        stream: Stream,
        dropped: u64,
        kept: u64,
    },
}

/// How a caller wants a job stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    /// What `toolbox run` exits with (and the record says).
    pub exit_code: i32,
    /// Time between SIGTERM and SIGKILL, if shorter than the job's own grace (a client
    /// that hung up reads nothing more; its job need not linger).
    pub grace: Option<Duration>,
}

/// A job's shim, started ahead of the job ([`Engine::prestart`]; on cgroup v2 in the job's
/// cgroup, made for it), or why that cgroup could not be had, for [`Engine::run`] to report.
#[derive(Debug)]
pub struct Prestarted(Result<Started, String>);

impl Prestarted {
    /// Whether it was prepared before its job was known ([`Engine::prepare`]).
    pub fn warm(&self) -> bool {
        self.0.as_ref().is_ok_and(|started| started.warm)
    }

    /// Whether it was prepared from a draft (laid out, and its cgroup limited, for jobs like
    /// the one the draft came from).
    pub fn drafted(&self) -> bool {
        self.0
            .as_ref()
            .is_ok_and(|started| started.limits.is_some())
    }

    /// Why it could not be had (its cgroup could not be made), if so.
    pub fn error(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }

    /// The network it was prepared for.
    pub fn network(&self) -> Option<Network> {
        self.0.as_ref().ok().map(|started| {
            if started.isolated {
                Network::Isolated
            } else {
                Network::Host
            }
        })
    }

    /// Whether its shim is still there, waiting for a spec (a prepared jail whose shim
    /// failed or was killed is of no use).
    pub fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_ok_and(|started| started.shim.process.running())
    }

    /// Hand a prepared jail its job's stdin (before [`Engine::run`]).
    pub fn pass_stdin(&mut self, stdin: std::os::fd::OwnedFd) -> std::io::Result<()> {
        if let Ok(started) = &mut self.0 {
            started.shim.send_stdin(stdin)?;
            started.stdin_passed = true;
        }
        Ok(())
    }

    /// A prepared jail taken for a job: back to the CPU priority jobs have.
    pub fn wake(&self) {
        if let Ok(started) = &self.0 {
            started.shim.process.set_nice(0);
        }
    }

    /// Where more commands for this job's jail go once its tool runs ([`Engine::exec`]).
    pub fn exec_port(&self) -> Option<spawn::ExecPort> {
        self.0
            .as_ref()
            .ok()
            .map(|started| started.shim.exec.clone())
    }
}

/// The most kinds of job whose drafts are kept (the oldest go first).
const DRAFTS_MAX: usize = 16;

/// A kind of job, for prepared jails: jobs alike in these usually want the same root, ids,
/// limits and filter, so a jail is laid out from the last one's spec ([`Engine::prepare`])
/// and the pool gives it to one of them first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftKey {
    pub network: Network,
    pub policy: String,
    pub uid: u32,
    pub workspace: PathBuf,
}

impl DraftKey {
    pub fn of(plan: &JobPlan) -> DraftKey {
        DraftKey {
            network: jail_network(plan.network),
            policy: plan.policy.clone(),
            uid: plan.uid,
            workspace: plan.workspace.clone(),
        }
    }
}

/// A job's spec and cgroup limits, kept for the jails prepared after it.
#[derive(Debug, Clone)]
struct Draft {
    spec: std::sync::Arc<JailSpec>,
    limits: CgroupLimits,
}

#[derive(Debug)]
struct Started {
    /// Before the cgroup: a jail dropped unused is killed before its cgroup is removed.
    shim: Shim,
    /// Made with the shim on cgroup v2 (and for a prepared jail); on v1 made while the shim
    /// builds the jail.
    cgroup: CgroupGuard,
    /// The cgroup's name: the job's own, or a prepared jail's.
    name: String,
    /// Whether the shim prepared a network namespace of the job's own (whose helper sends
    /// the proxy's listeners).
    isolated: bool,
    /// Prepared before its job was known ([`Engine::prepare`]).
    warm: bool,
    /// The tool's stdin went over the control socket.
    stdin_passed: bool,
    /// The limits its cgroup has: set ahead for a prepared jail (the last like job's).
    limits: Option<CgroupLimits>,
}

/// The job's cgroup once made, removed when dropped: for the paths on which a job never
/// starts, and for the [`Cleanup`] after a job.
#[derive(Debug, Default)]
struct CgroupGuard(Option<JobCgroup>);

impl CgroupGuard {
    fn into_inner(mut self) -> Option<JobCgroup> {
        self.0.take()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            if let Err(err) = cgroup.remove() {
                warn!("clean up the job's cgroup: {err}");
            }
        }
    }
}

pub struct Engine {
    shim: PathBuf,
    /// Where the shim builds what of a jail's root needs no spec (see [`spawn::anchor`]).
    anchor: Option<std::ffi::CString>,
    swept: std::sync::atomic::AtomicBool,
    placement: PlacementOptions,
    /// Placed, detected and prepared on first use: [`Engine::prestart`] of the first job
    /// (a daemon calls [`Engine::cgroups`] at start).
    cgroups: std::sync::OnceLock<Result<(Cgroups, Placement), String>>,
    pins: CpuPins,
    /// The last job's spec and cgroup limits for each kind of job seen lately ([`DraftKey`],
    /// the most recent last): the drafts for the jails [`Engine::prepare`] makes — kept once
    /// [`Engine::keep_drafts`] asks.
    drafts: std::sync::Mutex<Option<Vec<(DraftKey, Draft)>>>,
    /// Jobs that ran in a prepared jail: in the root laid out for its draft, or in one built
    /// for them (the draft did not fit).
    roots: [std::sync::atomic::AtomicU64; 2],
    /// Drafts remembered so far, and word of each (see [`Engine::draft_after`]).
    drafted: std::sync::atomic::AtomicU64,
    draft_made: tokio::sync::Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shim", &self.shim)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Check this host can build jails: root, and the shim. The cgroups are placed,
    /// detected and prepared on first use ([`Engine::cgroups`]; a daemon calls it at start),
    /// as `placement` allows.
    pub fn new(placement: PlacementOptions) -> Result<Engine, EngineError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(EngineError::NotRoot);
        }
        let shim = shim_path();
        if !shim.is_file() {
            return Err(EngineError::ShimNotFound(shim));
        }
        Ok(Engine {
            shim,
            anchor: spawn::anchor(),
            swept: std::sync::atomic::AtomicBool::new(false),
            placement,
            cgroups: std::sync::OnceLock::new(),
            pins: CpuPins::new(),
            drafts: std::sync::Mutex::new(None),
            roots: Default::default(),
            drafted: std::sync::atomic::AtomicU64::new(0),
            draft_made: tokio::sync::Notify::new(),
        })
    }

    /// Start the shim before the job is planned (`toolbox run`) or while its stdin is
    /// prepared (the daemon), preparing this network mode (the spec settles it: the shim
    /// discards what it prepared for nothing): the shim's own start-up then overlaps the
    /// planning. Hand it to [`Engine::run`].
    ///
    /// Every process of the jail that runs after the go — PID 1 and the tool's — lives in
    /// the job's cgroup. On cgroup v2 the job's cgroup is made here and PID 1 is cloned into
    /// it (the supervisor is placed first: a shim born where controllers must be delegated
    /// would keep them from it). On v1 the cgroup is made while the shim builds the jail,
    /// and PID 1 writes itself into it on the go. A cgroup that cannot be placed or made
    /// does not fail here: [`Engine::run`] then fails the job with a record that says why.
    pub fn prestart(
        &self,
        job_id: &str,
        network: NetworkMode,
        stdin: Stdin,
    ) -> Result<Prestarted, EngineError> {
        self.start_shim(
            job_name(job_id),
            jail_network(network),
            stdin,
            Cgroups::unified_host(),
            false,
        )
    }

    /// Prepare a jail before any job for it is known (the daemon's pool): the shim started
    /// for this network, its namespaces and the root's fixed part built, its cgroup made
    /// (on either version) as `toolbox-PID-warmSEQ`, its stdin /dev/null until the job's is
    /// passed ([`Prestarted::pass_stdin`]). It waits at the lowest CPU priority
    /// ([`Prestarted::wake`] restores it), so preparing never competes with running jobs.
    /// A jail that is not used is dropped: its shim is killed, then its cgroup removed.
    pub fn prepare(
        &self,
        seq: u64,
        network: Network,
        key: Option<&DraftKey>,
    ) -> Result<Prestarted, EngineError> {
        let null = std::fs::File::open("/dev/null").map_err(|source| EngineError::Spawn {
            path: "/dev/null".into(),
            source,
        })?;
        let mut prepared = self.start_shim(
            job_name(&format!("warm{seq}")),
            network,
            Stdin::Fd(null.into()),
            true,
            true,
        )?;
        if let Ok(started) = &mut prepared.0 {
            started.warm = true;
            started.shim.process.set_nice(19);
            // What the last job's root looked like: the shim lays it out while it waits,
            // and keeps it if the job's spec wants the same.
            let Some((draft, limits)) = key.and_then(|key| self.draft(key, &started.name)) else {
                return Ok(prepared);
            };
            if let Some(draft) = draft {
                if let Err(err) = started.shim.send_draft(&draft) {
                    return Err(EngineError::Spawn {
                        path: self.shim.clone(),
                        source: std::io::Error::other(format!(
                            "send a prepared jail its draft: {err}"
                        )),
                    });
                }
            }
            // And its cgroup gets the last job's limits: a job with the same writes none.
            if let Some(cgroup) = &started.cgroup.0 {
                cgroup
                    .set_limits(&limits, None)
                    .map_err(|err| EngineError::Cgroups(format!("limit its cgroup: {err}")))?;
                started.limits = Some(limits);
            }
        }
        Ok(prepared)
    }

    /// Keep each job's spec as the draft for the jails [`Engine::prepare`] makes next (a
    /// daemon with a pool).
    pub fn keep_drafts(&self) {
        let mut drafts = self.drafts.lock().unwrap_or_else(|e| e.into_inner());
        drafts.get_or_insert_with(Vec::new);
    }

    /// The draft for a jail prepared for jobs like `key` with the cgroup `name`: the last
    /// such job's spec, with this jail's cgroup (made already, so its view is laid out and
    /// joined with the rest), framed (None if too large), and its cgroup limits; None if
    /// there is none.
    fn draft(&self, key: &DraftKey, name: &str) -> Option<(Option<Vec<u8>>, CgroupLimits)> {
        let last = {
            let drafts = self.drafts.lock().unwrap_or_else(|e| e.into_inner());
            let (_, draft) = drafts.as_ref()?.iter().find(|(k, _)| k == key)?;
            draft.clone()
        };
        let cgroups = self.cgroups().ok()?;
        let frame = JailSpec {
            draft: true,
            stdin_passed: false,
            cgroup_view: cgroup_view(cgroups, name),
            cgroup_tasks: cgroups.tasks_for(name),
            ..(*last.spec).clone()
        }
        .encode();
        Some((
            (frame.len() <= spawn::DRAFT_MAX).then_some(frame),
            last.limits,
        ))
    }

    fn remember_draft(&self, key: DraftKey, spec: &JailSpec, limits: CgroupLimits) {
        {
            let mut drafts = self.drafts.lock().unwrap_or_else(|e| e.into_inner());
            let Some(drafts) = drafts.as_mut() else {
                return;
            };
            drafts.retain(|(k, _)| *k != key);
            if drafts.len() >= DRAFTS_MAX {
                drafts.remove(0);
            }
            let draft = Draft {
                spec: std::sync::Arc::new(spec.clone()),
                limits,
            };
            drafts.push((key, draft));
        }
        self.drafted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.draft_made.notify_waiters();
    }

    /// Jobs in prepared jails that ran in the root laid out for the jail's draft, and those
    /// that got a root built for them (the draft did not fit).
    pub fn roots(&self) -> (u64, u64) {
        let [drafted, built] = &self.roots;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        (load(drafted), load(built))
    }

    /// How many drafts have been remembered: for [`Engine::draft_after`].
    pub fn drafts_so_far(&self) -> u64 {
        self.drafted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Once a draft is remembered after the `so_far`th ([`Engine::drafts_so_far`]): a job's
    /// spec, sent, is the draft the next prepared jail is laid out from.
    pub async fn draft_after(&self, so_far: u64) {
        loop {
            let made = self.draft_made.notified();
            if self.drafts_so_far() > so_far {
                return;
            }
            made.await;
        }
    }

    fn start_shim(
        &self,
        name: String,
        network: Network,
        stdin: Stdin,
        make_cgroup: bool,
        prepared: bool,
    ) -> Result<Prestarted, EngineError> {
        let mut cgroup = CgroupGuard(None);
        if make_cgroup {
            let made = self
                .cgroups()
                .map_err(|e| e.to_string())
                .and_then(|cgroups| {
                    cgroups
                        .make(&name)
                        .map_err(|e| format!("create the job's cgroup: {e}"))
                });
            match made {
                Ok(made) => cgroup.0 = Some(made),
                Err(message) => return Ok(Prestarted(Err(message))),
            }
        }
        let spawn_error = |source| EngineError::Spawn {
            path: self.shim.clone(),
            source,
        };
        let target = match &cgroup.0 {
            Some(cgroup) => cgroup
                .clone_target()
                .map_err(|e| spawn_error(std::io::Error::other(e.to_string())))?,
            None => None,
        };
        let into = target.as_ref().map_or(SpawnCgroup::Inherit, |dir| {
            SpawnCgroup::Into(dir.as_raw_fd())
        });
        let anchor = self.anchor.as_deref();
        let shim = spawn::spawn(&self.shim, network, anchor, prepared, stdin, into)
            .map_err(spawn_error)?;
        Ok(Prestarted(Ok(Started {
            shim,
            cgroup,
            name,
            isolated: network == Network::Isolated,
            warm: false,
            stdin_passed: false,
            limits: None,
        })))
    }

    /// Remove job cgroups of supervisors that died, the first time this is called.
    pub fn sweep_once(&self) {
        if self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(cgroups) = self.cgroups() {
            for dir in cgroups.sweep_stale() {
                warn!(
                    "removed the stale job cgroup {} (its supervisor is gone)",
                    dir.display()
                );
            }
        }
    }

    /// The record of a job that ended before it started: cancelled while it waited, or
    /// refused by the engine (`error`).
    pub fn not_started(&self, plan: &JobPlan, error: Option<String>) -> JobResult {
        let mut result = self.blank_result(plan);
        result.policy.sha256 = plan.policy_sha256.get().to_string();
        match error {
            Some(message) => result.error = Some(message),
            None => {
                result.status = JobStatus::Cancelled;
                result.exit_code = exit::SIGNAL_BASE + libc::SIGTERM;
                result.reason = Some("cancelled before it started".into());
            }
        }
        result
    }

    /// This host's cgroups, placed, detected and prepared once.
    pub fn cgroups(&self) -> Result<&Cgroups, EngineError> {
        self.placed().map(|(cgroups, _)| cgroups)
    }

    /// How the cgroup jobs run under was found (own, a systemd scope, taken over).
    pub fn placement(&self) -> Result<&Placement, EngineError> {
        self.placed().map(|(_, placement)| placement)
    }

    fn placed(&self) -> Result<&(Cgroups, Placement), EngineError> {
        self.cgroups
            .get_or_init(|| Cgroups::place(self.placement).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| EngineError::Cgroups(message.clone()))
    }

    /// Run one job to its end. `cancel` resolves (with how to end the job) when the
    /// caller wants the job stopped. Every failure ends up in the record; this never panics
    /// and never leaves a process, cgroup or mount of the job behind.
    pub async fn run(
        &self,
        plan: JobPlan,
        shim: Prestarted,
        events: UnboundedSender<Event>,
        cancel: impl Future<Output = Cancel> + Send,
    ) -> JobResult {
        let (result, cleanup) = self.run_until_ended(plan, shim, events, cancel).await;
        cleanup.finish().await;
        result
    }

    /// [`Engine::run`], returning as soon as the job's record is known: every process of
    /// the job is gone then, and its output read to the end. What is left — the jail's
    /// PID 1 on its way out and the cgroup — goes with [`Cleanup::finish`]: after the
    /// record is sent, before the job's slot is given back.
    pub async fn run_until_ended(
        &self,
        plan: JobPlan,
        shim: Prestarted,
        events: UnboundedSender<Event>,
        cancel: impl Future<Output = Cancel> + Send,
    ) -> (JobResult, Cleanup) {
        let span = info_span!("job", id = %plan.job_id, policy = %plan.policy);
        let sha256 = plan.policy_sha256.clone();
        let (mut result, cleanup) = self
            .run_inner(plan, shim, events, cancel)
            .instrument(span)
            .await;
        result.policy.sha256 = sha256.get().to_string();
        (result, cleanup)
    }

    async fn run_inner(
        &self,
        plan: JobPlan,
        prestarted: Prestarted,
        events: UnboundedSender<Event>,
        cancel: impl Future<Output = Cancel> + Send,
    ) -> (JobResult, Cleanup) {
        let started = Instant::now();
        let mut result = self.blank_result(&plan);
        // Before the job runs, what was started is dropped on the way out (the shim, then
        // its cgroup): nothing of the tool ever ran there.
        let failed =
            |result, started, message| (fail(result, started, message), Cleanup::default());
        // PID 1 is in the cgroup too: the tool itself gets exactly `pids` (see `fill`; the
        // network helper is gone before the tool is forked).
        let limits = CgroupLimits {
            memory: plan.limits.memory,
            cpus: plan.limits.cpus,
            pids: plan.limits.pids.saturating_add(1),
        };
        let Started {
            cgroup,
            shim,
            name,
            isolated,
            warm,
            stdin_passed,
            limits: had,
        } = match prestarted.0 {
            Ok(started) => started,
            Err(message) => return failed(result, started, message),
        };
        // Declared before the shim, so dropped after it: on a failure before the go the
        // shim dies with its handle, having run nothing, and then its cgroup is removed.
        let mut guard = cgroup;
        let mut shim = shim;
        // Said here, not at the spawn: `toolbox run` starts its logging after its shim.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if crate::sys::joined_by_procs() && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                "clone3(CLONE_INTO_CGROUP) is not available here (an old kernel, or a seccomp \
                 profile that hides clone3): each jail joins its cgroup through cgroup.procs, \
                 which costs every job start an RCU grace period (5-10 ms)"
            );
        }
        let cgroups = match self.cgroups() {
            Ok(cgroups) => cgroups,
            Err(err) => return failed(result, started, format!("create the job's cgroup: {err}")),
        };
        result.isolation.warm = warm;
        // The spec first: the shim builds the jail's root while we make the job's cgroup
        // (v1; on v2 it was made at prestart) and set its limits. It binds the cgroup into
        // the root once told it exists, then joins it (v1) and forks the tool on the go.
        // The tool's CPUs: as many as its quota rounds up to, the least busy of ours.
        let pinned = self.pins.take(plan.limits.cpus);
        let sent = match self.spec(&plan, cgroups, &name, &pinned.cpus) {
            Ok(spec) => {
                let spec = JailSpec {
                    stdin_passed,
                    ..spec
                };
                let sent = shim
                    .send_spec(&spec)
                    .await
                    .map_err(|e| format!("send the shim its spec: {e}"));
                self.remember_draft(DraftKey::of(&plan), &spec, limits);
                sent
            }
            Err(message) => Err(message),
        };
        if let Err(message) = sent {
            return failed(result, started, message);
        }
        if guard.0.is_none() {
            match cgroups.make(&name) {
                Ok(made) => guard.0 = Some(made),
                Err(err) => {
                    return failed(result, started, format!("create the job's cgroup: {err}"))
                }
            }
        }
        if let Err(err) = shim.send_made().await {
            // As for the go below: the shim is gone, and its status pipe says why.
            debug!("the shim left before its cgroup was made: {err}");
        }
        let Some(cgroup) = &guard.0 else {
            unreachable!("the job's cgroup was made above")
        };
        debug_assert!(cgroup.path().ends_with(&name));
        if let Err(err) = cgroup.set_limits(&limits, had.as_ref()) {
            return failed(result, started, format!("limit the job's cgroup: {err}"));
        }
        // The proxy's listeners, before the go: served where the mode has it (and the job
        // does not start in `allowlist` without it), else closed, so their ports are free.
        let proxy = if isolated && plan.network != NetworkMode::Host {
            match serve_proxy(&plan, &shim).await {
                Ok(proxy) => proxy,
                // The shim leaves without its go, then the guard removes the cgroup.
                Err(message) => return failed(result, started, message),
            }
        } else {
            None
        };
        let Some(cgroup) = guard.into_inner() else {
            unreachable!("the job's cgroup was made above")
        };
        result.isolation.cgroup_path = Some(cgroup.path().to_string_lossy().into_owned());
        if let Err(err) = shim.send_go().await {
            // The shim is gone already: its status pipe says why, and the cgroup is
            // removed below like any job's.
            debug!("the shim left before its go: {err}");
        }
        debug!(pid = shim.process.pid, "shim started");
        let _ = events.send(Event::Started {
            job_id: plan.job_id.clone(),
        });

        // Once the tool runs, clear what dead supervisors left (once): then it takes no CPU
        // from the jail's set-up.
        let (run, process) =
            supervise(shim, &plan, &cgroup, &events, cancel, || self.sweep_once()).await;

        let egress = proxy.map(Proxy::finish);
        if let (true, Some(enforced)) = (warm, &run.enforced) {
            let at = usize::from(!enforced.root_as_drafted);
            self.roots[at].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let stats = run.tool_stats.unwrap_or_else(|| cgroup.stats());
        let cleanup = Cleanup {
            process: Some(process),
            _cgroup: CgroupGuard(Some(cgroup)),
        };
        result.duration_ms = started.elapsed().as_millis() as u64;
        fill(&mut result, &run, &stats);
        if matches!(run.exec_error, Some((errno, _)) if errno == libc::ENOENT) {
            if let (Some(error), Some(hint)) = (&mut result.error, not_found_hint(&plan)) {
                error.push_str("; ");
                error.push_str(&hint);
            }
        }
        result.reason = explain(&plan, &run, &stats, &result);
        if let Some(egress) = egress {
            if let Some(refused) = egress_refusal(&egress) {
                result.reason = Some(match result.reason.take() {
                    Some(reason) => format!("{reason}; {refused}"),
                    None => refused,
                });
            }
            let tried = egress.allowed + egress.refused + egress.failed > 0;
            if tried || plan.network == NetworkMode::Allowlist {
                result.egress = Some(egress);
            }
        }
        (result, cleanup)
    }

    fn spec(
        &self,
        plan: &JobPlan,
        cgroups: &Cgroups,
        name: &str,
        cpus: &[u32],
    ) -> Result<JailSpec, String> {
        let seccomp =
            seccomp::filter_for(&plan.seccomp, plan.idmap.is_some()).map_err(|e| e.to_string())?;
        // The job's cgroup, read-only, at /sys/fs/cgroup (bound once the shim hears it is made):
        // runtimes size heaps and thread pools by it. Its cgroup namespace makes each bind
        // read as a whole hierarchy.
        let cgroup_view = cgroup_view(cgroups, name);
        let mut rules = plan.view.rules.clone();
        if !cgroup_view.is_empty() {
            rules.push(LandlockRule {
                path: "/sys/fs/cgroup".into(),
                access: FsAccess::Read,
                dir: true,
            });
        }
        Ok(JailSpec {
            job_id: plan.job_id.clone(),
            argv: plan.argv.clone(),
            env: plan.env.clone(),
            cwd: plan.workspace.to_string_lossy().into_owned(),
            uid: plan.uid,
            gid: plan.gid,
            hostname: "toolbox".into(),
            network: jail_network(plan.network),
            mounts: plan.view.mounts.clone(),
            cgroup_view,
            landlock: Landlock {
                rules,
                deny_tcp: plan.network.proxied(),
                connect_ports: if plan.network.proxied() {
                    crate::egress::PORTS.to_vec()
                } else {
                    Vec::new()
                },
                scoped: true,
                min_abi: plan.landlock_min_abi,
            },
            seccomp: seccomp.to_vec(),
            rlimits: vec![
                Rlimit {
                    resource: RlimitKind::Core,
                    soft: 0,
                    hard: 0,
                },
                Rlimit {
                    resource: RlimitKind::Fsize,
                    soft: plan.limits.file_size,
                    hard: plan.limits.file_size,
                },
                Rlimit {
                    resource: RlimitKind::Nofile,
                    soft: plan.limits.open_files,
                    hard: plan.limits.open_files,
                },
            ],
            cgroup_tasks: cgroups.tasks_for(name),
            idmap: plan.idmap.clone(),
            cpus: cpus.to_vec(),
            stdin_passed: false,
            draft: false,
        })
    }

    fn blank_result(&self, plan: &JobPlan) -> JobResult {
        JobResult {
            job_id: plan.job_id.clone(),
            policy: record::PolicyRef {
                name: plan.policy.clone(),
                // Filled as the record leaves the engine (see `run`): computing it is not
                // worth delaying the jail for.
                sha256: String::new(),
            },
            status: JobStatus::SetupError,
            exit_code: exit::TOOLBOX_FAILED,
            signal: None,
            error: None,
            reason: None,
            duration_ms: 0,
            cpu_user_ms: 0,
            cpu_system_ms: 0,
            memory_peak_bytes: 0,
            oom_kills: 0,
            pids_peak: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_dropped_bytes: 0,
            stderr_dropped_bytes: 0,
            exec_of: None,
            egress: None,
            isolation: Isolation {
                cgroup: self
                    .cgroups()
                    .map(Cgroups::version)
                    .unwrap_or("none")
                    .to_string(),
                cgroup_placement: self.placement().map(Placement::name).ok(),
                cgroup_limits: Some(record::Limits {
                    memory_bytes: plan.limits.memory,
                    cpus: plan.limits.cpus,
                    pids: plan.limits.pids,
                    timeout_ms: plan.limits.timeout.as_millis() as u64,
                    grace_ms: plan.limits.grace.as_millis() as u64,
                    output_bytes: plan.limits.output,
                }),
                capabilities: "none",
                network: format!("{:?}", plan.network).to_lowercase(),
                workspace_owner_uid: plan.idmap.as_ref().map(|map| map.owner_uid),
                seccomp_profile: format!("{:?}", plan.seccomp.base).to_lowercase(),
                seccomp_inherited_filters: crate::sys::inherited_seccomp_filters(),
                ..Isolation::default()
            },
        }
    }
}

/// The CPUs jobs may be pinned to (this process's own), and how many running jobs each
/// holds: a job whose quota is less than all of them runs on the least busy few, so what
/// it counts (`nproc`, a runtime's thread pools) is what it gets, and jobs spread out.
struct CpuPins {
    allowed: Vec<u32>,
    load: std::sync::Mutex<Vec<u32>>,
    /// Where ties start: rotates, from this process's pid, so one-job processes (`toolbox
    /// run`) do not all pick the first CPU.
    next: std::sync::atomic::AtomicUsize,
}

/// A job's CPUs, given back when it ends.
struct Pinned<'a> {
    pins: &'a CpuPins,
    cpus: Vec<u32>,
}

impl CpuPins {
    fn new() -> CpuPins {
        let allowed: Vec<u32> = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                    .map(|cpu| cpu as u32)
                    .collect()
            })
            .unwrap_or_default();
        CpuPins {
            load: std::sync::Mutex::new(vec![0; allowed.len()]),
            allowed,
            next: std::sync::atomic::AtomicUsize::new(std::process::id() as usize),
        }
    }

    fn take(&self, quota: f64) -> Pinned<'_> {
        let want = quota.ceil().max(1.0) as usize;
        let mut pinned = Pinned {
            pins: self,
            cpus: Vec::new(),
        };
        if want >= self.allowed.len() {
            return pinned;
        }
        let Ok(mut load) = self.load.lock() else {
            return pinned;
        };
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.allowed.len();
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: among equally busy CPUs, the rotation decides.
        order.sort_by_key(|&i| load[i]);
        order.truncate(want);
        order.sort_unstable();
        for &i in &order {
            load[i] += 1;
        }
        pinned.cpus = order.iter().map(|&i| self.allowed[i]).collect();
        pinned
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if self.cpus.is_empty() {
            return;
        }
        if let Ok(mut load) = self.pins.load.lock() {
            for cpu in &self.cpus {
                if let Some(i) = self.pins.allowed.iter().position(|c| c == cpu) {
                    load[i] = load[i].saturating_sub(1);
                }
            }
        }
    }
}

/// Take the proxy's listeners from the jail's network helper, and serve them in the modes
/// that have the proxy (`None` in the others: dropped, they free their ports). In mode
/// `allowlist` a proxy that cannot be had fails the job; in `none` it only explains, and
/// the job runs without it.
async fn serve_proxy(plan: &JobPlan, shim: &Shim) -> Result<Option<Proxy>, String> {
    // The helper sends them first thing, long before the root is built; the bound only
    // keeps a helper that died without a word from holding the job forever.
    let listeners = tokio::time::timeout(Duration::from_secs(30), shim.listeners())
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the jail's network helper sent no proxy sockets in 30 s",
            ))
        });
    if !plan.network.proxied() {
        return Ok(None);
    }
    let judge = Judge {
        job_id: plan.job_id.clone(),
        rules: (plan.network == NetworkMode::Allowlist).then(|| plan.egress.clone()),
        policy: plan.policy.clone(),
        hint: network_fix(plan).to_string(),
    };
    let served = listeners.and_then(|[http, socks]| Proxy::serve(http, socks, judge));
    settle_proxy(plan.network, served)
}

/// Fail closed: a job in mode `allowlist` whose proxy could not be had does not start (it
/// would have no way out, and no word of why). In mode `none` the proxy only explains.
fn settle_proxy<T>(network: NetworkMode, served: std::io::Result<T>) -> Result<Option<T>, String> {
    match served {
        Ok(proxy) => Ok(Some(proxy)),
        Err(err) if network == NetworkMode::Allowlist => Err(format!(
            "set up the job's egress proxy (mode allowlist does not run without it): {err}"
        )),
        Err(err) => {
            warn!("the job's proxy, which explains mode none to tools, is not there: {err}");
            Ok(None)
        }
    }
}

/// A sentence on what the proxy refused, for the record's reason.
fn egress_refusal(egress: &Egress) -> Option<String> {
    let refused = egress.refused + egress.failed;
    if refused == 0 {
        return None;
    }
    let first = egress
        .connections
        .iter()
        .find(|c| c.decision != "allowed")
        .and_then(|c| c.reason.as_deref())
        .unwrap_or("");
    let plural = if refused == 1 { "" } else { "s" };
    Some(format!(
        "egress: {refused} connection{plural} through the job's proxy did not go through; \
         the first: {first}"
    ))
}

/// The job's cgroup `name` as the jail shows it at /sys/fs/cgroup: read-only binds (and a
/// v1 layout's symlinks).
fn cgroup_view(cgroups: &Cgroups, name: &str) -> Vec<Mount> {
    let (binds, links) = cgroups.view(name);
    binds
        .into_iter()
        .map(|(src, dst)| Mount::Bind {
            src: src.to_string_lossy().into_owned(),
            dst,
            writable: false,
        })
        .chain(
            links
                .into_iter()
                .map(|(target, dst)| Mount::Symlink { target, dst }),
        )
        .collect()
}

/// A network's index in per-network tables (isolated, host).
pub fn network_slot(network: Network) -> usize {
    match network {
        Network::Isolated => 0,
        Network::Host => 1,
    }
}

pub fn jail_network(mode: NetworkMode) -> Network {
    if mode == NetworkMode::Host {
        Network::Host
    } else {
        Network::Isolated
    }
}

/// Where the shim binary is: `$TOOLBOX_SHIM`, else next to this executable.
pub fn shim_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TOOLBOX_SHIM") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("toolbox-shim")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/libexec/toolbox/toolbox-shim"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolEnd {
    Exited(i32),
    Signaled(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Timeout,
    /// No output for the plan's idle timeout.
    Idle,
    Cancelled(i32),
}

/// What the supervision of one job observed.
#[derive(Debug, Default)]
struct Run {
    setup_error: Option<String>,
    exec_error: Option<(i32, String)>,
    enforced: Option<Enforced>,
    tool: Option<ToolEnd>,
    ending: Option<Ending>,
    /// The supervisor SIGKILLed the jail (after the grace period).
    killed: bool,
    shim_exit: Option<nix::sys::wait::WaitStatus>,
    /// The cgroup measured as soon as the tool's end was reported, before PID 1's teardown.
    tool_stats: Option<CgroupStats>,
    /// What the job tried of the network beyond its namespace: packets with no route, and
    /// datagrams to closed ports of its `lo` (see `Status::Network`).
    network_refused: Option<(u64, u64)>,
    stdout: StreamCount,
    stderr: StreamCount,
}

#[derive(Debug, Default, Clone, Copy)]
struct StreamCount {
    total: u64,
    dropped: u64,
}

async fn supervise(
    shim: Shim,
    plan: &JobPlan,
    cgroup: &JobCgroup,
    events: &UnboundedSender<Event>,
    cancel: impl Future<Output = Cancel> + Send,
    on_running: impl FnOnce(),
) -> (Run, ShimProcess) {
    let mut run = Run::default();
    let mut on_running = Some(on_running);
    let [mut out_cap, mut err_cap] = cappers(plan);
    let Shim {
        mut process,
        mut stdout,
        mut stderr,
        mut status,
        ..
    } = shim;
    let mut out_in = Intake::new();
    let mut err_in = Intake::new();
    let mut out = Some(&mut stdout);
    let mut err = Some(&mut stderr);
    let mut status = Some(BufReader::new(&mut status).lines());

    let mut cancel: Option<Pin<Box<dyn Future<Output = Cancel> + Send + '_>>> =
        Some(Box::pin(cancel));
    let timeout = tokio::time::sleep(plan.limits.timeout);
    tokio::pin!(timeout);
    // Pushed back by every read of output.
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let idle_deadline = || {
        plan.idle_timeout
            .map_or(far, |idle| tokio::time::Instant::now() + idle)
    };
    let idle = tokio::time::sleep_until(idle_deadline());
    tokio::pin!(idle);
    // The next deadline of the ending sequence: the grace period, then the wait for the
    // kill, then the drain of the pipes.
    let escalation = tokio::time::sleep_until(far);
    tokio::pin!(escalation);
    let mut drain_deadline = false;

    loop {
        if run.shim_exit.is_some() && out.is_none() && err.is_none() && status.is_none() {
            break;
        }
        // PID 1 reports the tool's end once it has killed and reaped every other process
        // of the jail, with the job's output pipes no longer open in it: the job is over
        // when its output is read to the end. PID 1's own exit and the namespaces' teardown
        // are left to the cleanup, after the record.
        if run.tool.is_some() && out.is_none() && err.is_none() {
            break;
        }
        let running = run.shim_exit.is_none();
        tokio::select! {
            took = out_in.take(&mut out, out_cap.keeps_only_tail()), if out.is_some() => {
                match took {
                    Ok(Took::Read(0)) | Err(_) => out = None,
                    Ok(took) => {
                        idle.as_mut().reset(idle_deadline());
                        pass(events, Stream::Stdout, &mut out_cap, &out_in, took, plan.output_whole)
                    }
                }
            }
            took = err_in.take(&mut err, err_cap.keeps_only_tail()), if err.is_some() => {
                match took {
                    Ok(Took::Read(0)) | Err(_) => err = None,
                    Ok(took) => {
                        idle.as_mut().reset(idle_deadline());
                        pass(events, Stream::Stderr, &mut err_cap, &err_in, took, plan.output_whole)
                    }
                }
            }
            line = next_line(&mut status), if status.is_some() => {
                match line {
                    Ok(Some(line)) => {
                        record_status(&mut run, &line);
                        if run.enforced.is_some() {
                            if let Some(on_running) = on_running.take() {
                                on_running();
                            }
                        }
                        if run.tool.is_some() && run.tool_stats.is_none() {
                            run.tool_stats = Some(cgroup.stats());
                        }
                    }
                    Ok(None) | Err(_) => status = None,
                }
            }
            exit = process.wait(), if running => {
                run.shim_exit = exit.ok();
                // Every process of the jail is gone with the shim; only the pipes' last
                // bytes are left to read.
                escalation.as_mut().reset(tokio::time::Instant::now() + DRAIN_WAIT);
                drain_deadline = true;
            }
            _ = &mut timeout, if running && run.ending.is_none() && run.tool.is_none() => {
                debug!("timeout: SIGTERM to every process of the job");
                run.ending = Some(Ending::Timeout);
                process.signal(control::TERMINATE_ALL);
                escalation.as_mut().reset(tokio::time::Instant::now() + plan.limits.grace);
            }
            _ = &mut idle, if running && run.ending.is_none() && run.tool.is_none() => {
                debug!("idle timeout: SIGTERM to every process of the job");
                run.ending = Some(Ending::Idle);
                process.signal(control::TERMINATE_ALL);
                escalation.as_mut().reset(tokio::time::Instant::now() + plan.limits.grace);
            }
            how = until(&mut cancel), if cancel.is_some() && running && run.ending.is_none() => {
                cancel = None;
                debug!("cancelled: SIGTERM to every process of the job");
                run.ending = Some(Ending::Cancelled(how.exit_code));
                process.signal(control::TERMINATE_ALL);
                let grace = how.grace.map_or(plan.limits.grace, |g| g.min(plan.limits.grace));
                escalation.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            _ = &mut escalation => {
                if drain_deadline {
                    // The shim is gone but something still holds an output pipe: nothing of
                    // the jail should, so kill whatever is left in the cgroup and stop reading.
                    warn!("output still open {DRAIN_WAIT:?} after the jail ended; killing what is left");
                    let _ = cgroup.kill_all();
                    // What is in the pipes now (a tail an intake left there, too) is the
                    // job's; nothing more is waited for.
                    take_last(events, Stream::Stdout, &mut out, &mut out_in, &mut out_cap, plan);
                    take_last(events, Stream::Stderr, &mut err, &mut err_in, &mut err_cap, plan);
                    status = None;
                } else if !run.killed {
                    debug!("grace period over: SIGKILL to every process of the job");
                    run.killed = true;
                    process.signal(control::KILL_ALL);
                    escalation.as_mut().reset(tokio::time::Instant::now() + KILL_WAIT);
                } else {
                    warn!("the shim did not end the job in {KILL_WAIT:?}; killing the cgroup");
                    process.signal(libc::SIGKILL);
                    let _ = cgroup.kill_all();
                    escalation.as_mut().reset(far);
                }
            }
        }
    }
    run.stdout = finish(events, Stream::Stdout, out_cap, plan.output_whole);
    run.stderr = finish(events, Stream::Stderr, err_cap, plan.output_whole);
    (run, process)
}

/// What is left of a job once its record is known: its jail's PID 1, which has reported
/// the job's end and is exiting, and the job's cgroup. Dropped unfinished, it is cleaned
/// up on the spot, blocking: PID 1 killed and reaped, then the cgroup removed (the
/// fields' order).
#[derive(Debug, Default)]
pub struct Cleanup {
    process: Option<ShimProcess>,
    /// Removed when dropped.
    _cgroup: CgroupGuard,
}

impl Cleanup {
    /// Wait for PID 1's exit (SIGKILL if it has not in [`KILL_WAIT`]), then remove the
    /// cgroup.
    pub async fn finish(mut self) {
        if let Some(process) = &mut self.process {
            if tokio::time::timeout(KILL_WAIT, process.wait())
                .await
                .is_err()
            {
                warn!(
                    "the jail's PID 1 did not exit {KILL_WAIT:?} after the job's end; killing it"
                );
            }
        }
    }
}

/// The caps of a job's two streams; a caller that keeps every byte
/// ([`JobPlan::output_whole`]) keeps its own tail, and they only count.
fn cappers(plan: &JobPlan) -> [Capper; 2] {
    let cap = || {
        if plan.output_whole {
            Capper::counting(plan.limits.output)
        } else {
            Capper::new(plan.limits.output)
        }
    };
    [cap(), cap()]
}

/// What one wait on a stream took, through its cap: a read's bytes, the head live or, for
/// a caller that keeps its own log ([`JobPlan::output_whole`]), all of them; or bytes
/// dropped unread, counted.
fn pass(
    events: &UnboundedSender<Event>,
    stream: Stream,
    cap: &mut Capper,
    intake: &Intake,
    took: Took,
    whole: bool,
) {
    match took {
        Took::Read(_) => pass_bytes(events, stream, cap, &intake.buf, whole),
        Took::Dropped(bytes) => cap.skip(bytes),
    }
}

/// The last take of a stream that something may still hold open: what its pipe holds now,
/// through its cap; then it is no longer read.
fn take_last(
    events: &UnboundedSender<Event>,
    stream: Stream,
    pipe: &mut Option<&mut pipe::Receiver>,
    intake: &mut Intake,
    cap: &mut Capper,
    plan: &JobPlan,
) {
    if let Some(pipe) = pipe.take() {
        intake.drain_now(pipe, |bytes| {
            pass_bytes(events, stream, cap, bytes, plan.output_whole)
        });
    }
}

/// Bytes read through the stream's cap (see [`pass`]).
fn pass_bytes(
    events: &UnboundedSender<Event>,
    stream: Stream,
    cap: &mut Capper,
    read: &[u8],
    whole: bool,
) {
    let live = cap.push(read);
    forward(events, stream, if whole { read } else { live });
}

async fn next_line(
    lines: &mut Option<Lines<BufReader<&mut pipe::Receiver>>>,
) -> std::io::Result<Option<String>> {
    match lines {
        Some(lines) => lines.next_line().await,
        None => std::future::pending().await,
    }
}

async fn until<T>(future: &mut Option<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

fn forward(events: &UnboundedSender<Event>, stream: Stream, live: &[u8]) {
    if !live.is_empty() {
        let _ = events.send(Event::Output {
            stream,
            data: live.to_vec(),
        });
    }
}

fn finish(
    events: &UnboundedSender<Event>,
    stream: Stream,
    capper: Capper,
    whole: bool,
) -> StreamCount {
    let total = capper.total();
    let ending = capper.finish();
    if ending.dropped > 0 && !whole {
        let _ = events.send(Event::Truncated {
            stream,
            dropped: ending.dropped,
            kept: ending.tail.len() as u64,
        });
    }
    if !whole {
        forward(events, stream, &ending.tail);
    }
    StreamCount {
        total,
        dropped: ending.dropped,
    }
}

fn record_status(run: &mut Run, line: &str) {
    match Status::from_line(line.as_bytes()) {
        Ok(Status::SetupFailed { step, error }) => {
            run.setup_error
                .get_or_insert(format!("jail setup failed at {step}: {error}"));
        }
        Ok(Status::Enforced(enforced)) => run.enforced = Some(enforced),
        Ok(Status::ExecFailed { errno, error }) => run.exec_error = Some((errno, error)),
        Ok(Status::Network {
            no_route,
            udp_no_ports,
        }) => run.network_refused = Some((no_route, udp_no_ports)),
        Ok(Status::ToolExited { code }) => run.tool = Some(ToolEnd::Exited(code)),
        Ok(Status::ToolSignaled { signal }) => run.tool = Some(ToolEnd::Signaled(signal)),
        Err(err) => warn!("unreadable status line from the shim ({err}): {line:?}"),
    }
}

fn fail(mut result: JobResult, started: Instant, message: String) -> JobResult {
    result.duration_ms = started.elapsed().as_millis() as u64;
    result.error = Some(message);
    result
}

/// Turn what was observed into the record's status, exit code and figures.
fn fill(result: &mut JobResult, run: &Run, stats: &CgroupStats) {
    let (status, exit_code, signal, error) = classify(run, stats);
    result.status = status;
    result.exit_code = exit_code;
    result.signal = signal;
    result.error = error;
    result.cpu_user_ms = stats.cpu_user_us / 1000;
    result.cpu_system_ms = stats.cpu_system_us / 1000;
    result.memory_peak_bytes = stats.memory_peak;
    result.oom_kills = stats.oom_kills;
    // Less PID 1, always there (the network helper is gone before the tool starts).
    result.pids_peak = stats.pids_peak.saturating_sub(1);
    result.stdout_bytes = run.stdout.total;
    result.stderr_bytes = run.stderr.total;
    result.stdout_dropped_bytes = run.stdout.dropped;
    result.stderr_dropped_bytes = run.stderr.dropped;
    result.stdout_truncated = run.stdout.dropped > 0;
    result.stderr_truncated = run.stderr.dropped > 0;
    if let Some(enforced) = &run.enforced {
        let iso = &mut result.isolation;
        iso.namespaces = enforced.namespaces.clone();
        iso.landlock_abi = enforced.landlock_abi;
        iso.landlock_fs = enforced.landlock_fs;
        iso.landlock_tcp = enforced.landlock_tcp;
        iso.landlock_scoped = enforced.landlock_scoped;
        iso.seccomp = enforced.seccomp;
        iso.no_new_privs = enforced.no_new_privs;
        iso.capabilities = if enforced.capabilities_dropped {
            "none"
        } else {
            "unknown"
        };
        iso.uid = Some(enforced.uid);
        iso.gid = Some(enforced.gid);
    } else {
        // The tool never got as far as reporting what was in place.
        result.isolation.capabilities = "unknown";
    }
}

/// Why a job ended as it did, in a sentence or two, unless it simply exited: the OOM killer
/// (the limit, the peak, how to raise it), the timeout (after how long, and whether SIGKILL
/// was needed), a cancel, the pids limit refusing forks, a signal.
fn explain(plan: &JobPlan, run: &Run, stats: &CgroupStats, result: &JobResult) -> Option<String> {
    use crate::units::{Dur, Size};
    let policy = &plan.policy;
    let raise = |flag: &str, now: String, max: String| {
        if now == max {
            format!("{now} is the most policy \"{policy}\" allows")
        } else {
            format!("{flag} raises it, up to {max} under policy \"{policy}\"")
        }
    };
    let ended = |grace: &str| {
        if run.killed {
            format!("every process got SIGTERM, then SIGKILL after {grace}")
        } else {
            format!("every process got SIGTERM and ended within {grace}")
        }
    };
    let mut sentences = Vec::new();
    match run.ending {
        Some(Ending::Timeout) => sentences.push(format!(
            "timed out after {}: {}; {}",
            Dur(plan.limits.timeout),
            ended(&format!("the {} grace", Dur(plan.limits.grace))),
            raise(
                "--timeout",
                Dur(plan.limits.timeout).to_string(),
                Dur(plan.max.timeout).to_string()
            )
        )),
        Some(Ending::Idle) => sentences.push(format!(
            "no output for {} (its idle timeout): {}",
            Dur(plan.idle_timeout.unwrap_or_default()),
            ended(&format!("the {} grace", Dur(plan.limits.grace))),
        )),
        Some(Ending::Cancelled(_)) => {
            sentences.push(format!("cancelled: {}", ended("the grace period")))
        }
        None => {}
    }
    if stats.oom_kills > 0 {
        let memory = Size(plan.limits.memory).to_string();
        let peak = mebibytes(stats.memory_peak);
        let what = match run.tool {
            Some(ToolEnd::Exited(code)) => format!(
                "ended {} of the job's processes at its {memory} memory limit (peak {peak}) \
                 while the main one went on (it exited {code})",
                stats.oom_kills
            ),
            Some(ToolEnd::Signaled(signal)) if signal != Signal::SIGKILL as i32 => format!(
                "ended {} of the job's processes at its {memory} memory limit (peak {peak}); \
                 the main one then died of {}",
                stats.oom_kills,
                signal_name(signal)
            ),
            _ => format!("ended the job at its {memory} memory limit (peak {peak})"),
        };
        sentences.push(format!(
            "out of memory: the OOM killer {what}; {}",
            raise(
                "--memory",
                memory.clone(),
                Size(plan.max.memory).to_string()
            )
        ));
    }
    if stats.pids_refused > 0 {
        sentences.push(format!(
            "the pids limit ({}) refused {} new process(es) or thread(s); {}",
            plan.limits.pids,
            stats.pids_refused,
            raise(
                "--pids",
                plan.limits.pids.to_string(),
                plan.max.pids.to_string()
            )
        ));
    }
    if let Some(sentence) = network_refusal(plan, run.network_refused) {
        sentences.push(sentence);
    }
    if result.status == JobStatus::Signaled {
        if let Some(signal) = result.signal {
            sentences.push(format!("the tool was killed by {}", signal_name(signal)));
        }
    }
    (!sentences.is_empty()).then(|| sentences.join(". "))
}

/// When the job tried to reach more of the network than its policy gives it: what it tried
/// and what would give it more.
fn network_refusal(plan: &JobPlan, refused: Option<(u64, u64)>) -> Option<String> {
    let (no_route, udp_no_ports) = refused?;
    if plan.network == NetworkMode::Host {
        return None;
    }
    let mut tried = Vec::new();
    if no_route > 0 {
        let plural = if no_route == 1 { "" } else { "s" };
        tried.push(format!(
            "{no_route} packet{plural} to addresses beyond its own loopback had no route"
        ));
    }
    // A resolver on the host's loopback (systemd-resolved's 127.0.0.53) is not in the
    // job's: its name lookups go to a closed port of the job's own `lo`.
    if udp_no_ports > 0 {
        if let Some(resolver) = loopback_resolver() {
            tried.push(format!(
                "name lookups went to the resolver at {resolver}, which is on the host's \
                 loopback, not the job's"
            ));
        }
    }
    if tried.is_empty() {
        return None;
    }
    let fix = network_fix(plan);
    Some(format!(
        "no network: the job tried to reach the network ({}), and policy \"{}\" gives it \
         network mode \"{}\"; {fix}",
        tried.join("; "),
        plan.policy,
        format!("{:?}", plan.network).to_lowercase(),
    ))
}

/// What would give a job more network than its policy's mode.
fn network_fix(plan: &JobPlan) -> &'static str {
    if plan.host_network_allowed {
        "--net host gives it the host's network"
    } else {
        "the policy allows no more: a policy with network mode \"allowlist\" gives a job \
         the names it lists (--policy pypi, npm, crates or github, where installed), and \
         one with network mode \"host\" (--policy network) the host's network"
    }
}

/// The first nameserver of the host's resolv.conf (what the job's view holds), when it is
/// a loopback address.
fn loopback_resolver() -> Option<String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let server = conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
    })?;
    let ip: std::net::IpAddr = server.parse().ok()?;
    ip.is_loopback().then(|| server.to_string())
}

/// Where the caller would have found the command the jail did not: the first directory
/// of the caller's PATH holding it, and what would show that directory.
fn not_found_hint(plan: &JobPlan) -> Option<String> {
    let program = plan.argv.first().filter(|p| !p.contains('/'))?;
    let dir = plan
        .caller_path
        .as_deref()?
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .find(|dir| {
            std::fs::metadata(Path::new(dir).join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })?;
    let found = Path::new(dir).join(program);
    Some(format!(
        "on your PATH it is {}, which the jail does not show: --ro {dir} shows it (where the \
         policy allows), and a policy with [home] show = \"toolchains\" shows per-user \
         toolchains (~/.cargo/bin, ~/.pyenv, ~/.local/bin…)",
        found.display()
    ))
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(named) => format!("{} (signal {signal})", named.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn classify(run: &Run, stats: &CgroupStats) -> (JobStatus, i32, Option<i32>, Option<String>) {
    let sigkill = Signal::SIGKILL as i32;
    // When the supervisor SIGKILLed the jail, its PID 1 died before it could report the
    // tool's end: the tool died of that SIGKILL.
    let signal_of = |tool: Option<ToolEnd>| match tool {
        Some(ToolEnd::Signaled(signal)) => Some(signal),
        Some(ToolEnd::Exited(_)) => None,
        None => run.killed.then_some(sigkill),
    };
    // The ending comes first: a job cancelled or timed out while its jail was still being
    // built fails its set-up because of that, and the ending is what happened to it.
    match run.ending {
        Some(Ending::Timeout | Ending::Idle) => {
            return (JobStatus::Timeout, exit::TIMEOUT, signal_of(run.tool), None)
        }
        Some(Ending::Cancelled(code)) => {
            return (JobStatus::Cancelled, code, signal_of(run.tool), None)
        }
        None => {}
    }
    if let Some(error) = &run.setup_error {
        return (
            JobStatus::SetupError,
            exit::TOOLBOX_FAILED,
            None,
            Some(error.clone()),
        );
    }
    if let Some((errno, error)) = &run.exec_error {
        let (code, message) = if *errno == libc::ENOENT {
            (
                exit::NOT_FOUND,
                format!("command not found in the jail: {error}"),
            )
        } else {
            let reason = nix::errno::Errno::from_raw(*errno).desc();
            (
                exit::NOT_EXECUTABLE,
                format!("command not executable: {error}: {reason}"),
            )
        };
        return (JobStatus::SetupError, code, None, Some(message));
    }
    match run.tool {
        // Some of the job's processes were OOM-killed while the main one went on: its own
        // exit code would pass for success, and the job's output is likely short.
        Some(ToolEnd::Exited(_)) if stats.oom_kills > 0 => {
            (JobStatus::Oom, exit::SIGNAL_BASE + sigkill, None, None)
        }
        Some(ToolEnd::Exited(code)) => (JobStatus::Exited, code, None, None),
        Some(ToolEnd::Signaled(signal)) if signal == sigkill && stats.oom_kills > 0 => (
            JobStatus::Oom,
            exit::SIGNAL_BASE + sigkill,
            Some(sigkill),
            None,
        ),
        Some(ToolEnd::Signaled(signal)) => (
            JobStatus::Signaled,
            exit::SIGNAL_BASE + signal,
            Some(signal),
            None,
        ),
        // The jail's PID 1 died before it could report: the OOM killer, if it struck.
        None if stats.oom_kills > 0 => (
            JobStatus::Oom,
            exit::SIGNAL_BASE + sigkill,
            Some(sigkill),
            None,
        ),
        None => (
            JobStatus::SetupError,
            exit::TOOLBOX_FAILED,
            None,
            Some(format!(
                "the jail ended without reporting the tool's exit (shim: {:?})",
                run.shim_exit
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{settle_proxy, CpuPins, NetworkMode};

    fn pins(allowed: Vec<u32>, start: usize) -> CpuPins {
        CpuPins {
            load: std::sync::Mutex::new(vec![0; allowed.len()]),
            allowed,
            next: std::sync::atomic::AtomicUsize::new(start),
        }
    }

    #[test]
    fn a_job_in_mode_allowlist_without_its_proxy_does_not_start() {
        let broken = || Err::<(), _>(std::io::Error::other("no sockets"));
        let refused = settle_proxy(NetworkMode::Allowlist, broken()).expect_err("fails closed");
        assert!(refused.contains("egress proxy") && refused.contains("no sockets"));
        assert_eq!(settle_proxy(NetworkMode::None, broken()), Ok(None));
        assert_eq!(settle_proxy(NetworkMode::Allowlist, Ok(())), Ok(Some(())));
    }

    #[test]
    fn jobs_are_pinned_to_the_least_busy_cpus_and_give_them_back() {
        let pins = pins(vec![0, 2, 4, 6], 0);
        let a = pins.take(1.0);
        let b = pins.take(1.5);
        let c = pins.take(0.25);
        assert_eq!(a.cpus.len(), 1);
        assert_eq!(b.cpus.len(), 2);
        assert_eq!(c.cpus.len(), 1);
        // Four jobs' worth of CPUs over four CPUs: none shared.
        let mut all: Vec<u32> = [&a.cpus, &b.cpus, &c.cpus]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 2, 4, 6]);
        // Once b is over, its CPUs are the idle ones again.
        let freed = b.cpus.clone();
        drop(b);
        let d = pins.take(2.0);
        assert_eq!(d.cpus, freed);
        // A quota of all of them (or more) pins nothing.
        assert!(pins.take(4.0).cpus.is_empty());
        assert!(pins.take(9.0).cpus.is_empty());
    }

    #[test]
    fn one_job_processes_do_not_all_pick_the_first_cpu() {
        let picked: std::collections::BTreeSet<u32> = (0..4)
            .map(|start| pins(vec![0, 1, 2, 3], start).take(1.0).cpus[0])
            .collect();
        assert_eq!(picked.len(), 4, "{picked:?}");
    }
}
