//! `toolbox mcp`: an MCP server on stdio whose tools are the toolbox daemon's job API.
//! `toolbox mcp` execs this binary (as `toolbox serve` execs `toolbox-serve`), so the MCP
//! SDK stays out of the binary every `toolbox run` starts.

mod daemon;
mod output;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hyper::Method;
use rmcp::ServiceExt;
use toolbox::daemon::DEFAULT_SOCKET;

#[derive(Parser)]
#[command(
    name = "toolbox mcp",
    bin_name = "toolbox mcp",
    version,
    about = "An MCP server on stdio: run commands in toolbox jails through the daemon",
    long_about = "An MCP server on stdio: run commands in toolbox jails through the daemon.\n\n\
        Tools: run, start, read_output, write_stdin, kill, list_jobs. Configure an MCP client \
        with the command `toolbox` and the arguments [\"mcp\", \"--workspace\", \"/path/to/repo\"]. \
        Jobs run as the user who started this server, under the daemon's policies."
)]
struct Args {
    /// The daemon's socket [default: $TOOLBOX_SOCKET, else /run/toolbox/toolbox.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The directory commands run in unless they name another [default: the current one].
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // stdout is the protocol's: logs go to stderr.
    toolbox::init_logging();
    let socket = args
        .socket
        .or_else(|| {
            std::env::var_os("TOOLBOX_SOCKET")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let workspace = match args.workspace.map_or_else(std::env::current_dir, Ok) {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("toolbox mcp: read the current directory: {err}");
            return ExitCode::from(125);
        }
    };
    let workspace = match workspace.canonicalize() {
        Ok(dir) if dir.is_dir() => dir,
        Ok(dir) => {
            eprintln!(
                "toolbox mcp: --workspace {}: not a directory",
                dir.display()
            );
            return ExitCode::from(125);
        }
        Err(err) => {
            eprintln!("toolbox mcp: --workspace {}: {err}", workspace.display());
            return ExitCode::from(125);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("toolbox mcp: {err}");
            return ExitCode::from(125);
        }
    };
    runtime.block_on(serve(daemon::Daemon::new(socket), workspace))
}

async fn serve(daemon: daemon::Daemon, workspace: PathBuf) -> ExitCode {
    // A daemon that is not there yet is said at once, but is no reason not to serve: each
    // call says it again, naming the socket, and works once the daemon is up.
    if let Err(failure) = daemon.call(Method::GET, "/v1/health", None).await {
        tracing::warn!("{failure}");
    }
    let toolbox = server::Toolbox::new(daemon, workspace);
    let service = match toolbox.clone().serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(err) => {
            eprintln!("toolbox mcp: the MCP session did not start: {err}");
            return ExitCode::from(125);
        }
    };
    let ended = service.waiting().await;
    // The client left: the jobs started for it end too, none outlives its session.
    for id in toolbox.started() {
        let _ = toolbox
            .daemon()
            .call(Method::DELETE, &format!("/v1/jobs/{id}"), None)
            .await;
    }
    match ended {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("toolbox mcp: {err}");
            ExitCode::from(125)
        }
    }
}
