//! toolbox: a Linux-native sandboxed tool-execution supervisor.
//!
//! A job goes request → [`job::plan`] (checked against a [`policy::Policy`]) →
//! [`engine::Engine::run`], which builds the jail through the exec shim, streams capped
//! output, enforces the limits and returns the [`record::JobResult`].
#![deny(unsafe_code)]

pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod doctor;
pub mod egress;
pub mod engine;
pub mod etc_links;
pub mod etc_snapshot;
pub mod home;
pub mod job;
pub mod output;
pub mod policy;
pub mod record;
pub mod seccomp;
pub mod spawn;
mod sys;
pub mod units;
pub mod view;
pub mod view_memo;

/// Logs to stderr, warnings only unless `TOOLBOX_LOG` says otherwise (`toolbox`, and
/// `toolbox mcp`, whose stdout is the protocol's).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The allocator of every binary built on musl (see `.cargo/config.toml`): musl's own hands
/// freed memory back with `munmap` at once, and in `toolbox run` the page faults and the
/// TLB-shootdown IPIs that costs (a VM exit each, on a VM) ate what musl's start-up saves —
/// 23% of its CPU in the kernel against 17% on glibc (`perf record`, 60 runs). dlmalloc, like
/// glibc's, keeps freed memory for reuse and trims only large free space.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
