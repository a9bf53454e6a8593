//! `toolbox serve`: the daemon. A binary of its own (`toolbox serve` execs it), so that the
//! HTTP server is not loaded by every `toolbox run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use toolbox::units::Dur;

#[derive(Parser)]
#[command(
    name = "toolbox serve",
    bin_name = "toolbox serve",
    version,
    about = "The toolbox daemon: the job API over HTTP/1.1 on a Unix socket"
)]
struct ServeArgs {
    /// Where to listen (ignored under socket activation: systemd passes the socket).
    #[arg(long, value_name = "PATH", default_value = toolbox::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Jobs that run at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_jobs: u16,
    /// Jobs that may wait for a slot; past it requests are refused (429).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_queue: usize,
    /// Directory of the policies requests may name [default: the usual search path].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Append one JSON line per job here.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Group that may use the socket (mode 0660); without it, root only.
    #[arg(long, value_name = "NAME|GID")]
    group: Option<String>,
    /// Also allow this uid (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// Also allow members of this gid (repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gids: Vec<u32>,
    /// On SIGTERM, how long running jobs may take to finish before they are cancelled.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    drain: Dur,
    /// cgroup v2 without systemd (a container): take over the cgroup the daemon starts in,
    /// moving every other process in it into an `init` child (also: TOOLBOX_TAKE_CGROUP=1;
    /// done anyway when the daemon is PID 1, a container's entrypoint).
    #[arg(long)]
    take_cgroup: bool,
    /// Detached jobs one user may have queued or running at once; past it a detached
    /// start is refused (429).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    max_detached: u16,
    /// Ended detached jobs kept per user (record and output), the newest first.
    #[arg(long, value_name = "N", default_value_t = 32)]
    keep_ended: usize,
    /// How long an ended detached job's record and output are kept.
    #[arg(long, value_name = "DUR", default_value = "10m")]
    keep_for: Dur,
    /// Jails kept prepared ahead of demand (namespaces made, the root laid out and the cgroup
    /// limited like the last job's of a kind: network, policy, user, workspace), each used by
    /// one job and then destroyed; 0: none [default: half of --max-jobs, 4 for 8 slots].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    warm: Option<u16>,
    /// A prepared jail not used within this long is destroyed (and another prepared).
    #[arg(long, value_name = "DUR", default_value = "5m")]
    warm_max_age: Dur,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Logs go to stderr (journald under systemd); `TOOLBOX_LOG` filters them (default: info).
fn init_logging(json: bool) {
    let default = "info";
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = match ServeArgs::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    if args.warm_max_age.0 < std::time::Duration::from_secs(1) {
        eprintln!("toolbox serve: --warm-max-age must be at least 1s (a jail is prepared in milliseconds; younger than that, each would be destroyed as soon as it is ready)");
        return ExitCode::from(2);
    }
    init_logging(args.log_format == "json");
    ExitCode::from(serve(args) as u8)
}

fn serve(args: ServeArgs) -> i32 {
    let options = toolbox::daemon::ServeOptions {
        socket: args.socket,
        max_jobs: usize::from(args.max_jobs),
        max_queue: args.max_queue,
        policies: args.policies,
        audit_log: args.audit_log,
        group: args.group,
        allow_uids: args.allow_uids,
        allow_gids: args.allow_gids,
        drain: args.drain.0,
        placement: toolbox::cgroup::PlacementOptions::new("serve", args.take_cgroup),
        retention: toolbox::daemon::jobs::Retention {
            max_detached: usize::from(args.max_detached),
            keep_ended: args.keep_ended,
            keep_for: args.keep_for.0,
        },
        warm: toolbox::daemon::warm::WarmOptions {
            size: args
                .warm
                .map_or(usize::from(args.max_jobs).div_ceil(2), usize::from),
            max_age: args.warm_max_age.0,
        },
    };
    match toolbox::daemon::serve(options) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("toolbox serve: {err:#}");
            1
        }
    }
}
