//! The `toolbox` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use toolbox::engine::{Engine, Event, Stream};
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
    /// Show what this host can enforce, and what not.
    Doctor,
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
    /// none (only lo, no TCP), loopback (only lo, TCP on it), or host.
    #[arg(long, value_name = "MODE")]
    net: Option<NetworkMode>,
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
    /// Run in this process (the only mode until the daemon exists).
    #[arg(long)]
    local: bool,
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
    init_logging();
    let code = match cli.command {
        Command::Run(args) => run(*args).unwrap_or_else(|err| {
            eprintln!("toolbox: {err:#}");
            exit::TOOLBOX_FAILED
        }),
        Command::Doctor => toolbox::doctor::run(),
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&files),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let _ = args.local;
    let policy = Policy::load(&args.policy)?;
    let request = JobRequest {
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
        ro: args.ro,
        rw: args.rw,
        user: args.user,
    };
    let engine = Engine::new()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = runtime.block_on(async {
        // The shim starts first: its start-up overlaps the planning below.
        let shim = engine.prestart(request.network.unwrap_or(policy.network), Stdin::Inherit)?;
        let caller = Caller::current().context("read the current directory")?;
        let plan = job::plan(&policy, request, &caller)?;
        let (events, received) = mpsc::unbounded_channel();
        let printer = tokio::spawn(print_events(received));
        let result = engine.run(plan, shim, events, cancel_on_signal()).await;
        let _ = printer.await;
        anyhow::Ok(result)
    })?;
    report(&result, args.json);
    Ok(result.exit_code)
}

/// Resolves with the exit code to report when toolbox itself is asked to stop: Ctrl-C,
/// SIGTERM or a hangup cancel the job (SIGTERM to all of it, SIGKILL after the grace).
async fn cancel_on_signal() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    let signal = tokio::select! {
        _ = int.recv() => libc::SIGINT,
        _ = term.recv() => libc::SIGTERM,
        _ = hup.recv() => libc::SIGHUP,
    };
    exit::SIGNAL_BASE + signal
}

/// Write the tool's output to ours: stdout to stdout, stderr to stderr, with a one-line
/// marker where a capped stream lost its middle.
async fn print_events(mut events: mpsc::UnboundedReceiver<Event>) {
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
}

fn report(result: &JobResult, json: bool) {
    let mut stderr = std::io::stderr().lock();
    if let Some(error) = &result.error {
        let _ = writeln!(stderr, "toolbox: {error}");
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
