//! The `toolbox` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use toolbox::cgroup::PlacementOptions;
use toolbox::engine::{Cancel, Engine, Event, Stream};
use toolbox::job::{self, Caller, JobRequest};
use toolbox::policy::{NetworkMode, Policy};
use toolbox::record::{exit, JobResult};
use toolbox::spawn::Stdin;
use toolbox::units::{Dur, Size};

#[derive(Parser)]
#[command(
    name = "toolbox",
    version,
    about = "Run untrusted tool commands in a namespace + cgroup + seccomp + landlock jail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one command in a jail.
    Run(Box<RunArgs>),
    /// The daemon: the job API over a Unix socket (`toolbox serve --help` for its options).
    #[command(disable_help_flag = true)]
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// An MCP server on stdio over the daemon's job API (`toolbox mcp --help` for its options).
    #[command(disable_help_flag = true)]
    Mcp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Running and queued jobs of the daemon.
    Ps {
        /// The daemon's socket [default: $TOOLBOX_SOCKET, else /run/toolbox/toolbox.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the daemon's JSON as it came.
        #[arg(long)]
        json: bool,
    },
    /// Show what this host can enforce, and what not.
    Doctor {
        /// Say what toolbox would do with --take-cgroup.
        #[arg(long)]
        take_cgroup: bool,
    },
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files; exits non-zero if any is invalid.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the effective policy, every value resolved, with its SHA-256.
    Show {
        /// A policy name (from the policy directory) or file.
        policy: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Policy name (from the policy directory) or file.
    #[arg(long, value_name = "NAME|FILE", default_value = "default")]
    policy: String,
    /// Wall-clock limit (e.g. 30s, 5m); then SIGTERM, then SIGKILL after --grace.
    #[arg(long, value_name = "DUR")]
    timeout: Option<Dur>,
    /// Time between SIGTERM and SIGKILL when the job must end.
    #[arg(long, value_name = "DUR")]
    grace: Option<Dur>,
    /// Memory limit (e.g. 512M, 2G); over it the OOM killer ends the job.
    #[arg(long, value_name = "SIZE")]
    memory: Option<Size>,
    /// CPU quota in cores (e.g. 0.5, 2).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Process and thread limit.
    #[arg(long, value_name = "N")]
    pids: Option<u32>,
    /// Output cap per stream (e.g. 1M); the head streams live, the tail comes at the end.
    #[arg(long, value_name = "SIZE")]
    output_limit: Option<Size>,
    /// none (only lo, no TCP), loopback (only lo, TCP on it), allowlist (only lo, and a
    /// proxy to what the policy's or --allow's rules list), or host.
    #[arg(long, value_name = "MODE")]
    net: Option<NetworkMode>,
    /// An egress rule in place of the policy's (repeatable; implies --net allowlist):
    /// `pypi.org`, `*.github.com:443,80`, `10.0.0.5:8080`, `192.168.0.0/16:*`, `[fd00::1]:443`.
    #[arg(long, value_name = "RULE")]
    allow: Vec<toolbox::egress::Rule>,
    /// Bind a host path read-only at the same path (repeatable).
    #[arg(long, value_name = "PATH")]
    ro: Vec<PathBuf>,
    /// Bind a host path read-write at the same path (repeatable).
    #[arg(long, value_name = "PATH")]
    rw: Vec<PathBuf>,
    /// The workspace, bound read-write and used as the working directory [default: .].
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Set NAME=VALUE in the tool's environment, or pass the caller's NAME (repeatable).
    #[arg(long, value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Run the tool as this uid (and gid) instead of the workspace's owner; never 0.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    user: Option<(u32, Option<u32>)>,
    /// Print the result record as one JSON line on stderr at the end.
    #[arg(long)]
    json: bool,
    /// Run through the daemon listening here (also: $TOOLBOX_SOCKET).
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    socket: Option<PathBuf>,
    /// Run in this process, even if a daemon is listening.
    #[arg(long)]
    local: bool,
    /// cgroup v2 without systemd (a container): take over the cgroup toolbox starts in,
    /// moving every other process in it into an `init` child (also: TOOLBOX_TAKE_CGROUP=1).
    #[arg(long)]
    take_cgroup: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_user(text: &str) -> Result<(u32, Option<u32>), String> {
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{s:?} is not a numeric id"))
    };
    match text.split_once(':') {
        Some((uid, gid)) => Ok((number(uid)?, Some(number(gid)?))),
        None => Ok((number(text)?, None)),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // Help and version are not failures; everything else is toolbox's own (125).
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(exit::TOOLBOX_FAILED as u8),
            };
        }
    };
    // `toolbox run` starts its shim first and logging after (see `run`).
    if !matches!(cli.command, Command::Run(_)) {
        toolbox::init_logging();
    }
    let code = match cli.command {
        Command::Serve { args } => delegate("toolbox-serve", "TOOLBOX_SERVE", args),
        Command::Mcp { args } => delegate("toolbox-mcp", "TOOLBOX_MCP", args),
        Command::Ps { socket, json } => ps(socket, json),
        Command::Run(args) => run(*args).unwrap_or_else(|err| {
            eprintln!("toolbox: {err:#}");
            exit::TOOLBOX_FAILED
        }),
        Command::Doctor { take_cgroup } => {
            toolbox::doctor::run(PlacementOptions::new("run", take_cgroup))
        }
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&files),
        Command::Policy(PolicyCommand::Show { policy }) => match Policy::load(&policy) {
            Ok(policy) => {
                print!("{}", policy.show());
                0
            }
            Err(err) => {
                eprintln!("{err}");
                1
            }
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `toolbox serve ...` is the `toolbox-serve` binary next to this one, and `toolbox mcp ...`
/// the `toolbox-mcp` one (or what `$TOOLBOX_SERVE`, `$TOOLBOX_MCP` name): the daemon's HTTP
/// server and the MCP SDK stay out of the binary every `toolbox run` execs (their
/// relocations alone would cost each run some 20 page faults at start).
fn delegate(binary: &str, variable: &str, args: Vec<std::ffi::OsString>) -> i32 {
    use std::os::unix::process::CommandExt;
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join(binary)))
        })
        .unwrap_or_else(|| PathBuf::from(binary));
    let err = std::process::Command::new(&path).args(args).exec();
    eprintln!("toolbox: start {}: {err}", path.display());
    exit::TOOLBOX_FAILED
}

fn ps(socket: Option<PathBuf>, json: bool) -> i32 {
    let socket = socket
        .or_else(|| std::env::var_os("TOOLBOX_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(toolbox::daemon::DEFAULT_SOCKET));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("toolbox ps: {err}");
            return 1;
        }
    };
    match runtime.block_on(toolbox::client::ps(&socket, json)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("toolbox ps: {err:#}");
            1
        }
    }
}

/// The job request `toolbox run` sends a daemon: the same options, with every path made
/// absolute here (the daemon has no idea where we are).
fn remote_body(args: &RunArgs) -> anyhow::Result<serde_json::Value> {
    if args.policy.contains('/') || args.policy.ends_with(".toml") {
        anyhow::bail!(
            "--policy {}: a daemon only runs its own policies, by name; use --local to run a policy file",
            args.policy
        );
    }
    if args.user.is_some() {
        anyhow::bail!("--user: through a daemon, jobs run as you; use --local to pick a uid");
    }
    let here = std::env::current_dir().context("read the current directory")?;
    let absolute = |path: &PathBuf| {
        let joined = here.join(path);
        joined.canonicalize().unwrap_or(joined)
    };
    let cwd = absolute(args.cwd.as_ref().unwrap_or(&here));
    let mut env = serde_json::Map::new();
    for entry in &args.env {
        match entry.split_once('=') {
            Some((name, value)) => env.insert(name.into(), value.into()),
            None => match std::env::var(entry) {
                Ok(value) => env.insert(entry.clone(), value.into()),
                Err(_) => continue,
            },
        };
    }
    // Ours, for the daemon to pick from by its policy's allowlist as a local run does.
    let caller_env: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?.into())))
        .collect();
    let mut limits = serde_json::Map::new();
    if let Some(t) = args.timeout {
        limits.insert("timeout".into(), format!("{}ms", t.0.as_millis()).into());
    }
    if let Some(g) = args.grace {
        limits.insert("grace".into(), format!("{}ms", g.0.as_millis()).into());
    }
    if let Some(m) = args.memory {
        limits.insert("memory".into(), m.0.into());
    }
    if let Some(c) = args.cpus {
        limits.insert("cpus".into(), c.into());
    }
    if let Some(p) = args.pids {
        limits.insert("pids".into(), p.into());
    }
    if let Some(o) = args.output_limit {
        limits.insert("output".into(), o.0.into());
    }
    let mounts: Vec<serde_json::Value> = args
        .ro
        .iter()
        .map(|p| serde_json::json!({ "path": absolute(p), "mode": "ro" }))
        .chain(
            args.rw
                .iter()
                .map(|p| serde_json::json!({ "path": absolute(p), "mode": "rw" })),
        )
        .collect();
    let mut body = serde_json::json!({
        "argv": args.command,
        "cwd": cwd,
        "env": env,
        "caller_env": caller_env,
        "policy": args.policy,
        "limits": limits,
        "mounts": mounts,
    });
    if let Some(network) = args.net {
        body["network"] = serde_json::to_value(network)?;
    }
    if !args.allow.is_empty() {
        body["allow"] = serde_json::to_value(&args.allow)?;
    }
    Ok(body)
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    if !args.local {
        if let Some(socket) = toolbox::client::daemon_socket(args.socket.clone()) {
            toolbox::init_logging();
            let body = remote_body(&args)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            return Ok(runtime.block_on(toolbox::client::run(&socket, body, args.json)));
        }
    }
    let engine = Engine::new(PlacementOptions::new("run", args.take_cgroup))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // The shim starts first: its start-up overlaps everything below — logging, the policy,
    // the plan. It prepares the network `--net` names, else an isolated one (what most
    // policies want); the spec settles it.
    let job_id = toolbox::job::new_job_id();
    let shim = {
        let _runtime = runtime.enter();
        engine.prestart(
            &job_id,
            args.net.unwrap_or(NetworkMode::None),
            Stdin::Inherit,
        )?
    };
    toolbox::init_logging();
    let policy = Policy::load(&args.policy)?;
    let request = JobRequest {
        id: Some(job_id),
        argv: args.command,
        cwd: args.cwd,
        env: args.env,
        timeout: args.timeout.map(|d| d.0),
        grace: args.grace.map(|d| d.0),
        memory: args.memory.map(|s| s.0),
        cpus: args.cpus,
        pids: args.pids,
        output: args.output_limit.map(|s| s.0),
        network: args.net,
        allow: (!args.allow.is_empty()).then_some(args.allow),
        ro: args.ro,
        rw: args.rw,
        user: args.user,
    };
    let result = runtime.block_on(async {
        let caller = Caller::current().context("read the current directory")?;
        let mut plan = job::plan(&policy, request, &caller)?;
        if !args.json {
            // The record is not shown: its policy hash would be computed for nothing.
            plan.policy_sha256 = toolbox::policy::Sha256::unseen();
        }
        let (events, received) = mpsc::unbounded_channel();
        let printer = tokio::spawn(print_events(received));
        let cancel = cancel_on_signal();
        let result = engine.run(plan, shim, events, cancel).await;
        let stderr_at_line_start = printer.await.unwrap_or(true);
        anyhow::Ok((result, stderr_at_line_start))
    })?;
    let (result, stderr_at_line_start) = result;
    report(&result, args.json, stderr_at_line_start);
    Ok(result.exit_code)
}

/// Resolves with the exit code to report when toolbox itself is asked to stop: Ctrl-C,
/// SIGTERM or a hangup cancel the job (SIGTERM to all of it, SIGKILL after the grace).
/// The handlers are in place when this returns, before the job can start: were they only
/// installed when the future is first polled, a Ctrl-C sent as soon as the tool runs could
/// find toolbox without them and kill it outright. (Call it within the runtime.)
fn cancel_on_signal() -> impl std::future::Future<Output = Cancel> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = handlers else {
            return std::future::pending().await;
        };
        let signal = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        Cancel {
            exit_code: exit::SIGNAL_BASE + signal,
            grace: None,
        }
    }
}

/// Write the tool's output to ours: stdout to stdout, stderr to stderr, with a one-line
/// marker where a capped stream lost its middle. Returns whether stderr ends a line.
async fn print_events(mut events: mpsc::UnboundedReceiver<Event>) -> bool {
    // tokio's stdout and stderr write from a helper thread, so a consumer that stops reading
    // can never stall the job's timers. They are created on first output only: a quiet job
    // starts no thread at all.
    let mut stdout: Option<tokio::io::Stdout> = None;
    let mut stderr: Option<tokio::io::Stderr> = None;
    // Whether the last byte written to each stream ended a line.
    let mut at_line_start = [true, true];
    while let Some(event) = events.recv().await {
        let (stream, bytes) = match event {
            Event::Started { .. } => continue,
            Event::Output { stream, data } => (stream, data),
            Event::Truncated {
                stream,
                dropped,
                kept,
            } => {
                let newline = if at_line_start[stream as usize] {
                    ""
                } else {
                    "\n"
                };
                let marker = format!(
                    "{newline}[toolbox: {dropped} bytes of {} dropped here; the last {kept} bytes follow]\n",
                    stream.name()
                );
                (stream, marker.into_bytes())
            }
        };
        if let Some(last) = bytes.last() {
            at_line_start[stream as usize] = *last == b'\n';
        }
        // A closed stdout (toolbox run ... | head) must not stop the job or toolbox.
        let _ = match stream {
            Stream::Stdout => {
                stdout
                    .get_or_insert_with(tokio::io::stdout)
                    .write_all(&bytes)
                    .await
            }
            Stream::Stderr => {
                stderr
                    .get_or_insert_with(tokio::io::stderr)
                    .write_all(&bytes)
                    .await
            }
        };
    }
    if let Some(out) = &mut stdout {
        let _ = out.flush().await;
    }
    if let Some(err) = &mut stderr {
        let _ = err.flush().await;
    }
    at_line_start[Stream::Stderr as usize]
}

/// After the output: why the job ended, unless it simply exited (in the style of the
/// truncation marker: an agent reads stderr, not records), or what kept it from starting;
/// then the record, with `--json`.
fn report(result: &JobResult, json: bool, stderr_at_line_start: bool) {
    let mut stderr = std::io::stderr().lock();
    let newline = if stderr_at_line_start { "" } else { "\n" };
    if let Some(error) = &result.error {
        let _ = writeln!(stderr, "{newline}toolbox: {error}");
    } else if let Some(reason) = &result.reason {
        let _ = writeln!(stderr, "{newline}[toolbox: {reason}]");
    }
    if json {
        match serde_json::to_string(result) {
            Ok(line) => {
                let _ = writeln!(stderr, "{line}");
            }
            Err(err) => {
                let _ = writeln!(stderr, "toolbox: encode the result record: {err}");
            }
        }
    }
}

fn policy_check(files: &[PathBuf]) -> i32 {
    let mut failed = 0;
    for file in files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("policy");
        match Policy::load_file(name, file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(err) => {
                failed += 1;
                eprintln!("{err}");
            }
        }
    }
    if failed == 0 {
        0
    } else {
        1
    }
}
