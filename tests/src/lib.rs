//! Helpers for the end-to-end tests: the real `toolbox` and `toolbox-shim` binaries, a
//! workspace per test owned by a non-root uid, the `probe` binary bound into the jail, and
//! checks that a job left nothing behind.
//!
//! These tests need root. Under `CI=true` a missing privilege is a failure; elsewhere a test
//! skips with a loud message.
#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod daemon;
pub mod openapi;

/// The uid and gid the tests' workspaces belong to (so the tool runs as them).
pub const TOOL_UID: u32 = 54_321;

/// Whether this test may run: root, or (outside CI) a loud skip.
/// The repository's shipped policies.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

pub fn require_root() -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (it builds real jails), and CI=true: failing rather than skipping");
    }
    eprintln!(
        "\n!!! SKIPPED: this test needs root (it builds real jails); run the suite with sudo !!!\n"
    );
    false
}

/// A program of the host's system view (`/usr/bin`, `/bin`) that a test runs in the jail
/// as real agent work would: its path, or (outside CI) `None` after a loud skip.
/// `scripts/test.sh` installs every one the suite names.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("this test runs {name}, which the host lacks, and CI=true: failing rather than skipping (scripts/test.sh installs it)");
        }
        eprintln!("\n!!! SKIPPED: this test runs {name}, which the host lacks !!!\n");
    }
    found
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The directory holding the workspace's binaries for this test build (the test executable
/// lives in its `deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// `toolbox`, built (once per test binary) for the same target and profile as the tests.
/// With `TOOLBOX_TEST_PREBUILT=1` (the VM tier, which has no cargo) the binaries next to the
/// test executable are used as they are.
pub fn toolbox() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var("TOOLBOX_TEST_PREBUILT").as_deref() == Ok("1") {
            let toolbox = bin_dir().join("toolbox");
            assert!(
                toolbox.is_file(),
                "TOOLBOX_TEST_PREBUILT=1 but {} is missing",
                toolbox.display()
            );
            return toolbox;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "--quiet", "-p", "toolbox", "-p", "toolbox-shim"];
        if !cfg!(debug_assertions) {
            args.push("--release");
        }
        let status = Command::new(cargo)
            .args(&args)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of toolbox and toolbox-shim failed"
        );
        let toolbox = bin_dir().join("toolbox");
        assert!(toolbox.is_file(), "{} was not built", toolbox.display());
        toolbox
    })
}

/// The variable naming the cgroup a `toolbox` started by a test runs in, for supervisors that
/// must share one (a daemon and its restart, a killed run and the next) and be kept apart from
/// every other test's: a run sweeps the stale job cgroups it finds next to its own, so a test
/// that expects a dead supervisor's cgroup to be still there must not share its cgroup with
/// the runs of tests running meanwhile. On a v1 host (ours) such a toolbox starts in the
/// child `<unit>` of the test's own cgroup in each hierarchy it uses ([`in_unit`] moves it;
/// [`Unit`] removes the cgroups). In the cgroup v2 VM tier (scripts/vm-test.sh), where each
/// toolbox gets a scope of its own as `systemd-run --scope` would give it, it picks the scope
/// `$TOOLBOX_TEST_SCOPES/<unit>.scope`.
pub const UNIT_ENV: &str = "TOOLBOX_TEST_UNIT";

/// The v1 hierarchies toolbox makes job cgroups in (memory, pids, cpu, cpuacct, cpuset), each as the
/// directory of this process's cgroup in it; empty on a unified host.
fn v1_own_cgroups() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let first = controllers
                .split(',')
                .find(|c| ["memory", "pids", "cpu", "cpuacct", "cpuset"].contains(c))?;
            Some(
                PathBuf::from("/sys/fs/cgroup")
                    .join(first)
                    .join(path.trim_start_matches('/')),
            )
        })
        .collect()
}

fn v1_unit_cgroups(unit: &str) -> Vec<PathBuf> {
    if std::env::var_os("TOOLBOX_TEST_SCOPES").is_some_and(|s| !s.is_empty()) {
        return Vec::new();
    }
    v1_own_cgroups()
        .into_iter()
        .map(|own| own.join(unit))
        .collect()
}

/// Start `command` in the cgroups of `unit` (see [`UNIT_ENV`]): on a v1 host, the child
/// moves itself into `<own>/<unit>` in each hierarchy before it execs.
#[allow(unsafe_code)]
pub fn in_unit(command: &mut Command, unit: &str) {
    command.env(UNIT_ENV, unit);
    let mut files = Vec::new();
    for dir in v1_unit_cgroups(unit) {
        std::fs::create_dir_all(&dir).expect("create the unit's cgroup");
        // A new cpuset takes no process until it has CPUs and memory nodes: its parent's.
        if dir.starts_with("/sys/fs/cgroup/cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = dir.parent().expect("parent").join(file);
                let value = std::fs::read_to_string(&parent).expect("read the parent's cpuset");
                if std::fs::read_to_string(dir.join(file)).is_ok_and(|v| v.trim().is_empty()) {
                    std::fs::write(dir.join(file), value.trim()).expect("set the unit's cpuset");
                }
            }
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .expect("open the unit's cgroup.procs");
        files.push(procs);
    }
    if files.is_empty() {
        return;
    }
    // SAFETY: between fork and exec the closure only calls write(2) (async-signal-safe) on
    // descriptors it owns (close-on-exec: toolbox does not inherit them); "0" moves the
    // writing process, the single-threaded child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            for file in &files {
                let fd = std::os::fd::AsRawFd::as_raw_fd(file);
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A unit's cgroups, removed (if empty) when this goes out of scope.
pub struct Unit(pub String);

impl Unit {
    pub fn new(what: &str) -> Unit {
        Unit(token(what))
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        remove_unit(&self.0);
    }
}

/// Remove the cgroups [`in_unit`] made for `unit`, as far as they are empty.
pub fn remove_unit(unit: &str) {
    for dir in v1_unit_cgroups(unit) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Where a supervisor started in `unit` (see [`UNIT_ENV`]) puts its job cgroups: on v1 its
/// unit's cgroup in the pids hierarchy, in the VM tier that unit's scope, else the test's own
/// cgroup.
pub fn job_cgroup_parent(unit: &str) -> PathBuf {
    if let Some(scopes) = std::env::var_os("TOOLBOX_TEST_SCOPES").filter(|s| !s.is_empty()) {
        return PathBuf::from(scopes).join(format!("{unit}.scope"));
    }
    if let Some(pids) = v1_own_cgroups()
        .into_iter()
        .find(|dir| dir.starts_with("/sys/fs/cgroup/pids"))
    {
        return pids.join(unit);
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'))
}

/// The probe binary (cargo builds it before the tests), bound into jobs read-only at the
/// path it was built at.
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let probe = bin_dir().join("probe");
        assert!(probe.is_file(), "{} was not built", probe.display());
        probe
    })
}

/// What the probe's `flood TOTAL` writes: numbered lines (`line 000000000000`, 18 bytes
/// each) in a block of just under 1 MiB, repeated, cut to leave room for a last line
/// `THE-END total=TOTAL`.
pub struct Flood {
    block: Vec<u8>,
    end: Vec<u8>,
    body: u64,
}

impl Flood {
    pub fn new(total: u64) -> Flood {
        let mut block = Vec::with_capacity(1 << 20);
        let mut line = 0u64;
        while block.len() + 18 <= 1 << 20 {
            block.extend_from_slice(format!("line {line:012}\n").as_bytes());
            line += 1;
        }
        let end = format!("THE-END total={total}\n").into_bytes();
        Flood {
            body: total.saturating_sub(end.len() as u64),
            block,
            end,
        }
    }

    /// The stream's bytes from `from` up to `to`.
    pub fn range(&self, from: u64, to: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity((to - from) as usize);
        let mut at = from;
        while at < to {
            if at < self.body {
                let offset = (at % self.block.len() as u64) as usize;
                let n = (self.block.len() - offset).min((self.body.min(to) - at) as usize);
                bytes.extend_from_slice(&self.block[offset..offset + n]);
                at += n as u64;
            } else {
                let offset = (at - self.body) as usize;
                let n = (to - at) as usize;
                bytes.extend_from_slice(&self.end[offset..offset + n]);
                at = to;
            }
        }
        bytes
    }
}

/// A fresh workspace owned by [`TOOL_UID`].
pub fn workspace() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("toolbox-ws-")
        .tempdir()
        .expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(TOOL_UID), Some(TOOL_UID)).expect("chown workspace");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// What one `toolbox run` did.
#[derive(Debug)]
pub struct Job {
    pub code: i32,
    pub stdout: Vec<u8>,
    /// The tool's stderr and toolbox's own messages (the record line removed).
    pub stderr: String,
    /// The result record (`--json`), when toolbox got far enough to print one.
    pub record: Option<Value>,
    /// [`Via::Warm`]: the daemon that ran the job, stopped only with the job, so that what
    /// a test checks after the job it checks while the daemon still runs.
    pub daemon: Option<crate::daemon::Daemon>,
}

impl Job {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The probe's one JSON line on stdout.
    pub fn probe_json(&self) -> Value {
        let text = self.stdout_text();
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "no JSON from the probe; stdout: {text:?}; stderr: {:?}",
                    self.stderr
                )
            });
        serde_json::from_str(line).expect("probe JSON")
    }

    pub fn record(&self) -> &Value {
        self.record
            .as_ref()
            .unwrap_or_else(|| panic!("no result record; stderr: {}", self.stderr))
    }

    pub fn status(&self) -> &str {
        self.record()["status"].as_str().unwrap_or("?")
    }
}

/// How a [`Run`] reaches its jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `toolbox run --local`: a jail of its own.
    Local,
    /// Exec'd into a running job's jail through a daemon (`POST /v1/jobs/{id}/exec`): the
    /// job is started with the run's options, its command a sleeper, and the run's command
    /// exec'd into it as [`TOOL_UID`] — so a jail suite run both ways proves an exec'd
    /// command gets exactly a job's jail.
    Exec,
    /// Through a daemon (as [`TOOL_UID`]) whose pool has a prepared jail ready for the
    /// job's network: the record must say the jail was warm — so a jail suite run every way
    /// proves a prepared jail isolates exactly as a fresh one.
    Warm,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::Local, Via::Exec, Via::Warm];
    /// A jail of the job's own, built for it or prepared before it came: for suites whose
    /// limits are the job's (a command exec'd into a job runs under that job's).
    pub const JOBS: [Via; 2] = [Via::Local, Via::Warm];
}

/// A job to run: `toolbox run [options] --json -C workspace --ro probe -- argv`.
pub struct Run<'a> {
    workspace: &'a Path,
    /// Whether the probe is bound in read-only (it is unless a test says otherwise).
    bind_probe: bool,
    options: Vec<String>,
    env: BTreeMap<String, String>,
    argv: Vec<String>,
    uid: Option<u32>,
    /// Whether toolbox starts with signals ignored and blocked (see
    /// [`Run::caller_disturbs_signals`]).
    disturbed_signals: bool,
    /// The unit whose cgroups toolbox starts in (see [`UNIT_ENV`]).
    unit: Option<String>,
    via: Via,
}

impl<'a> Run<'a> {
    /// The probe with these arguments.
    pub fn probe(workspace: &'a Path, args: &[&str]) -> Run<'a> {
        let mut argv = vec![probe().to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Run {
            workspace,
            bind_probe: true,
            options: Vec::new(),
            env: BTreeMap::new(),
            argv,
            uid: None,
            disturbed_signals: false,
            unit: None,
            via: Via::Local,
        }
    }

    /// Any command.
    pub fn command(workspace: &'a Path, argv: &[&str]) -> Run<'a> {
        Run {
            workspace,
            bind_probe: true,
            options: Vec::new(),
            env: BTreeMap::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            uid: None,
            disturbed_signals: false,
            unit: None,
            via: Via::Local,
        }
    }

    /// Reach the jail this way (see [`Via`]).
    pub fn via(mut self, via: Via) -> Self {
        eprintln!("-- via {via:?}");
        self.via = via;
        self
    }

    /// Do not bind the probe in (for policies that allow no extra paths).
    pub fn without_probe(mut self) -> Self {
        self.bind_probe = false;
        self
    }

    pub fn opt(mut self, option: &str) -> Self {
        self.options.push(option.to_string());
        self
    }

    pub fn opts(mut self, options: &[&str]) -> Self {
        self.options.extend(options.iter().map(|s| s.to_string()));
        self
    }

    /// An environment variable for toolbox itself (the caller's environment).
    pub fn caller_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_string(), value.to_string());
        self
    }

    /// Start toolbox in the cgroups of `unit` (see [`UNIT_ENV`]).
    pub fn in_unit(mut self, unit: &Unit) -> Self {
        self.unit = Some(unit.0.clone());
        self
    }

    /// Run toolbox itself as this uid.
    pub fn as_uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Start toolbox the way a careless caller might: SIGHUP, SIGUSR2, SIGPIPE and SIGRTMIN+2
    /// ignored (as `nohup` or a Python parent leave them), SIGUSR1 and SIGRTMIN+5 blocked.
    /// Ignored and blocked signals survive exec.
    pub fn caller_disturbs_signals(mut self) -> Self {
        self.disturbed_signals = true;
        self
    }

    fn command_line(&self) -> Command {
        self.command_line_for(true)
    }

    fn command_line_for(&self, local: bool) -> Command {
        let mut command = Command::new(toolbox());
        command.arg("run");
        if local {
            command.arg("--local");
        }
        command.arg("--json").arg("-C").arg(self.workspace);
        if self.bind_probe {
            command.arg("--ro").arg(probe());
        }
        command.args(&self.options).arg("--").args(&self.argv);
        command.envs(&self.env).stdin(Stdio::null());
        if let Some(uid) = self.uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
        }
        if self.disturbed_signals {
            disturb_signals(&mut command);
        }
        if let Some(unit) = &self.unit {
            in_unit(&mut command, unit);
        }
        command
    }

    /// Run to the end.
    pub fn run(&self) -> Job {
        if self.via != Via::Local {
            return self.run_daemon();
        }
        let output = self.command_line().output().expect("run toolbox");
        finish(output)
    }

    /// [`Via::Exec`]: a daemon of its own, and this run's options as a job request.
    fn run_daemon(&self) -> Job {
        use crate::daemon::Daemon;
        if self.via == Via::Warm {
            return self.run_warm();
        }
        assert!(
            self.uid.is_none() && !self.disturbed_signals && self.unit.is_none(),
            "Via::Exec runs as TOOL_UID through a daemon: as_uid, caller_disturbs_signals and in_unit do not apply"
        );
        let daemon = Daemon::start(&["--allow-uid", &TOOL_UID.to_string()]);
        daemon.open_to_everyone();
        let body = self.request_body();
        self.run_exec(&daemon, body)
    }

    /// This run's options as a job request (its argv aside).
    fn request_body(&self) -> Value {
        let mut body = serde_json::json!({
            "cwd": self.workspace,
            "caller_env": self.env,
        });
        let mut mounts = Vec::new();
        if self.bind_probe {
            mounts.push(serde_json::json!({ "path": probe(), "mode": "ro" }));
        }
        let mut env = serde_json::Map::new();
        let mut options = self.options.iter();
        while let Some(option) = options.next() {
            let value = options
                .next()
                .unwrap_or_else(|| panic!("Via::{:?}: {option} needs a value", self.via));
            match option.as_str() {
                "--ro" | "--rw" => {
                    mounts.push(serde_json::json!({ "path": value, "mode": &option[2..] }))
                }
                "--policy" => body["policy"] = value.as_str().into(),
                "--net" => body["network"] = value.as_str().into(),

                "--env" => match value.split_once('=') {
                    Some((name, value)) => {
                        env.insert(name.into(), value.into());
                    }
                    None => {
                        if let Some(found) = self.env.get(value) {
                            env.insert(value.clone(), found.as_str().into());
                        }
                    }
                },
                other => panic!("Via::{:?} cannot express the option {other}", self.via),
            }
        }
        body["mounts"] = mounts.into();
        body["env"] = env.into();
        body
    }

    /// [`Via::Warm`]: `toolbox run` (not `--local`) with this run's options through a
    /// daemon of its own — as people run it — as [`TOOL_UID`] unless the run says. One `true`
    /// first with the same options (its network is then one the pool prepares, laid out as
    /// that run's jail), a prepared jail for that network waited for, then the run's command,
    /// whose record must say its jail was warm.
    fn run_warm(&self) -> Job {
        // One prepared jail: the first run takes the one prepared at the start, and the one
        // after it is laid out as that run's jail was (its draft) — the path jobs in a loop
        // take.
        let daemon =
            crate::daemon::Daemon::start(&["--allow-uid", &TOOL_UID.to_string(), "--warm", "1"]);
        daemon.open_to_everyone();
        daemon.wait_for_warm("isolated");
        let through = |argv: &[String]| {
            let command = self.command_line_for(false);
            // `toolbox run [options] -- argv`: the socket goes before the `--`, the argv
            // after it replaces the run's.
            let mut args: Vec<std::ffi::OsString> = command.get_args().map(Into::into).collect();
            let dashes = args.iter().position(|a| a == "--").expect("--");
            args.truncate(dashes);
            let mut fresh = Command::new(command.get_program());
            fresh
                .args(&args)
                .arg("--socket")
                .arg(&daemon.socket)
                .arg("--");
            fresh.args(argv);
            for (name, value) in command.get_envs() {
                match value {
                    Some(value) => fresh.env(name, value),
                    None => fresh.env_remove(name),
                };
            }
            fresh.stdin(Stdio::null());
            // As Via::Exec: a user's agent, not root (the daemon runs a peer's job as the
            // peer, and shows a root peer its own home).
            std::os::unix::process::CommandExt::uid(&mut fresh, self.uid.unwrap_or(TOOL_UID));
            if self.disturbed_signals {
                disturb_signals(&mut fresh);
            }
            if let Some(unit) = &self.unit {
                in_unit(&mut fresh, unit);
            }
            finish(fresh.output().expect("run toolbox"))
        };
        let first = through(&["true".to_string()]);
        let Some(record) = &first.record else {
            // Refused before it ran: the run's own command would be too.
            return first;
        };
        let network = match record["isolation"]["network"].as_str() {
            Some("host") => "host",
            _ => "isolated",
        };
        daemon.wait_for_warm(network);
        let mut job = through(&self.argv);
        let record = job
            .record
            .as_ref()
            .unwrap_or_else(|| panic!("Via::Warm: no record: {job:?}"));
        assert_eq!(
            record["isolation"]["warm"], true,
            "Via::Warm: the job did not get a prepared jail: {record}"
        );
        job.daemon = Some(daemon);
        job
    }

    /// [`Via::Exec`]: a job with this run's options, the command exec'd into it; then the
    /// job is cancelled and must leave nothing behind.
    fn run_exec(&self, daemon: &crate::daemon::Daemon, mut body: Value) -> Job {
        use crate::daemon::{request_as, JobStream};
        body["argv"] = serde_json::json!(["sleep", "3600"]);
        body["detach"] = true.into();
        let socket = daemon.socket.clone();
        let post = |method: &str, path: &str, body: Option<&[u8]>| {
            request_as(TOOL_UID, &socket, method, path, "application/json", body)
        };
        let started = post("POST", "/v1/jobs", Some(body.to_string().as_bytes()));
        if started.status != 201 {
            return Job {
                code: 125,
                stdout: Vec::new(),
                stderr: String::from_utf8_lossy(&started.body).into_owned(),
                record: None,
                daemon: None,
            };
        }
        let id = started.json()["job_id"]
            .as_str()
            .expect("job_id")
            .to_string();
        let exec_path = format!("/v1/jobs/{id}/exec");
        let argv = serde_json::json!({ "argv": self.argv });
        let stream = crate::daemon::as_user(TOOL_UID, {
            let socket = socket.clone();
            move || {
                let mut stream = JobStream::open_at(&socket, &exec_path, &argv);
                stream.read_to_end();
                stream
            }
        });
        let job = match &stream.refusal {
            Some(refusal) => Job {
                code: 125,
                stdout: Vec::new(),
                stderr: refusal.to_string(),
                record: None,
                daemon: None,
            },
            None => {
                let record = stream.exit().clone();
                Job {
                    code: record["exit_code"].as_i64().expect("exit_code") as i32,
                    stdout: stream.output("stdout"),
                    stderr: String::from_utf8_lossy(&stream.output("stderr")).into_owned(),
                    record: Some(record),
                    daemon: None,
                }
            }
        };
        let cancelled = post("DELETE", &format!("/v1/jobs/{id}"), None);
        assert_eq!(cancelled.status, 202, "{cancelled:?}");
        assert!(
            wait_for(Duration::from_secs(30), || {
                post("GET", &format!("/v1/jobs/{id}"), None).json()["state"] == "ended"
            }),
            "the job exec'd into did not end"
        );
        assert_no_leftovers(&id);
        job
    }

    /// Run to the end through a daemon (give `--socket` with [`Run::opts`]).
    pub fn run_remote(&self) -> Job {
        let output = self.command_line_for(false).output().expect("run toolbox");
        finish(output)
    }

    /// Run to the end, and also report toolbox's own peak RSS in KiB (from wait4, which
    /// reaps the child in place of `Child::wait`).
    #[allow(clippy::zombie_processes)]
    pub fn run_measured(&self) -> (Job, u64) {
        use std::io::Read;
        let mut child = self
            .command_line()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let (status, max_rss_kib) = wait4(child.id() as i32);
        let output = Output {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        };
        (finish(output), max_rss_kib)
    }

    /// Start through a daemon (give `--socket` with [`Run::opts`]) without waiting.
    pub fn spawn_remote(&self) -> std::process::Child {
        self.command_line_for(false)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn toolbox")
    }

    /// Start without waiting.
    pub fn spawn(&self) -> std::process::Child {
        self.command_line()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn toolbox")
    }
}

#[allow(unsafe_code)]
fn disturb_signals(command: &mut Command) {
    let rtmin = libc::SIGRTMIN();
    let ignored = [libc::SIGHUP, libc::SIGUSR2, libc::SIGPIPE, rtmin + 2];
    let blocked = [libc::SIGUSR1, rtmin + 5];
    // SAFETY: between fork and exec the closure only calls signal and sigprocmask (both
    // async-signal-safe) on plain data it owns.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            for signal in ignored {
                libc::signal(signal, libc::SIG_IGN);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in blocked {
                libc::sigaddset(&mut set, signal);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Reap `pid` and return its exit status and peak RSS (KiB).
#[allow(unsafe_code)]
fn wait4(pid: i32) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it and `status` for our own child.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let ret = libc::wait4(pid, &mut status, 0, &mut usage);
        assert_eq!(ret, pid, "wait4: {}", std::io::Error::last_os_error());
        usage
    };
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64,
    )
}

pub fn finish(output: Output) -> Job {
    let code = output.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut record = None;
    let mut rest = Vec::new();
    for line in stderr.lines() {
        if record.is_none() && line.starts_with("{\"job_id\"") {
            record = serde_json::from_str(line).ok();
        } else {
            rest.push(line);
        }
    }
    let job = Job {
        code,
        stdout: output.stdout,
        stderr: rest.join("\n"),
        record,
        daemon: None,
    };
    if let Some(record) = &job.record {
        assert_no_leftovers_of(record);
    }
    job
}

/// [`assert_no_leftovers`] for the job of `record`, and its cgroup by the name the record
/// gives: a prepared jail's is not named after the job it served.
pub fn assert_no_leftovers_of(record: &Value) {
    let id = record["job_id"].as_str().unwrap_or("?");
    assert_no_leftovers(id);
    if let Some(name) = record["isolation"]["cgroup_path"]
        .as_str()
        .and_then(|path| path.rsplit('/').next())
        .filter(|name| name.starts_with("toolbox-"))
    {
        let found = cgroups_named(name);
        assert!(
            found.is_empty(),
            "job {id} left its cgroup behind: {found:?}"
        );
    }
}

/// How long after a job's record its jail's cgroup may still be there: the daemon sends
/// the record once every process of the job is gone, then waits for the jail's PID 1 to
/// exit and removes the cgroup (milliseconds). A cgroup still there after this is left
/// behind.
pub const CLEANUP_WITHIN: Duration = Duration::from_secs(5);

/// The cgroups (in every hierarchy) whose names end with `name`, once the cleanup after a
/// record has had [`CLEANUP_WITHIN`].
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let deadline = Instant::now() + CLEANUP_WITHIN;
    loop {
        let found = find_dirs(Path::new("/sys/fs/cgroup"), name, 8);
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Nothing of the job is left: no cgroup named after it in any hierarchy (`toolbox-<pid>-<job
/// id>`), no mount that mentions it in the host's mount table.
pub fn assert_no_leftovers(job_id: &str) {
    let name = format!("-{job_id}");
    let found = cgroups_named(&name);
    assert!(
        found.is_empty(),
        "job {job_id} left cgroups behind: {found:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&name),
        "job {job_id} left a mount in the host's table"
    );
}

fn find_dirs(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry
            .file_type()
            .map(|t| t.is_dir() && !t.is_symlink())
            .unwrap_or(false)
        {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("toolbox-") && file_name.ends_with(name) {
                found.push(path);
            } else if depth > 0 {
                found.extend(find_dirs(&path, name, depth - 1));
            }
        }
    }
    found
}

/// Host pids whose argv[0] starts with `prefix` (the probe names the processes it leaves
/// behind so).
pub fn host_pids_named(prefix: &str) -> Vec<i32> {
    host_pids_where(|cmdline| cmdline.starts_with(prefix.as_bytes()))
}

/// Host pids of the probe binary whose command line contains `token`.
pub fn host_probe_pids(token: &str) -> Vec<i32> {
    let probe = probe().to_string_lossy().into_owned();
    host_pids_where(|cmdline| {
        cmdline.starts_with(probe.as_bytes()) && String::from_utf8_lossy(cmdline).contains(token)
    })
}

fn host_pids_where(check: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if check(&cmdline) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Wait until `check` holds, up to `timeout`.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// A token unique to this test run, to find a job's processes from the host.
pub fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("tbtest-{what}-{}-{nanos}", std::process::id())
}
