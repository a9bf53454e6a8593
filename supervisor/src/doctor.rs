//! `toolbox doctor`: what this host can enforce, what toolbox will enforce with the default
//! policy, and a non-zero exit when something the default policy needs is missing.

use std::path::Path;

use crate::cgroup::{Cgroups, PlacementOptions};
use crate::engine::shim_path;
use crate::policy::Policy;
use crate::sys;

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    /// Needed by the default policy (a failure makes doctor exit non-zero).
    required: bool,
}

pub fn run(placement: PlacementOptions) -> i32 {
    let checks = checks(placement);
    println!("toolbox doctor — what this host can enforce\n");
    for check in &checks {
        let mark = match (check.ok, check.required) {
            (true, _) => "ok  ",
            (false, true) => "MISSING",
            (false, false) => "no  ",
        };
        println!("  [{mark}] {:<18} {}", check.name, check.detail);
    }
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c.required && !c.ok)
        .map(|c| c.name)
        .collect();
    println!();
    if missing.is_empty() {
        println!("Every job gets: pid, mount, net, ipc, uts and cgroup namespaces; a pivot_root'ed minimal root;");
        println!("its own cgroup (memory, cpu, pids); Landlock; seccomp; a non-root uid with no capabilities;");
        println!("no_new_privs; core/fsize/nofile rlimits. `toolbox run -- CMD` is ready.");
        0
    } else {
        println!(
            "toolbox cannot run jobs with the default policy here: missing {}.",
            missing.join(", ")
        );
        1
    }
}

fn checks(placement: PlacementOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    let root = nix::unistd::Uid::effective().is_root();
    checks.push(Check {
        name: "root",
        ok: root,
        detail: if root {
            "running as root".into()
        } else {
            "not root: toolbox run needs root (use sudo)".into()
        },
        required: true,
    });

    let wanted = [
        ("pid", "pid"),
        ("mnt", "mount"),
        ("net", "net"),
        ("ipc", "ipc"),
        ("uts", "uts"),
        ("cgroup", "cgroup"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(file, _)| !Path::new("/proc/self/ns").join(file).exists())
        .map(|(_, name)| *name)
        .collect();
    checks.push(Check {
        name: "namespaces",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "pid mount net ipc uts cgroup".into()
        } else {
            format!("missing: {}", missing.join(" "))
        },
        required: true,
    });

    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    checks.push(Check {
        name: "user namespaces",
        ok: max_userns > 0,
        detail: format!(
            "{} — not used: tools run as real non-root ids with no capabilities",
            if max_userns > 0 {
                "available"
            } else {
                "unavailable"
            }
        ),
        required: false,
    });

    // What toolbox would do to get cgroups for its jobs (placement), without doing it.
    let (ok, detail) = match Cgroups::plan(placement) {
        Ok(words) => (true, words),
        Err(words) => (false, words),
    };
    checks.push(Check {
        name: "cgroups",
        ok,
        detail,
        required: true,
    });

    let policy_floor = Policy::load("default")
        .map(|p| p.landlock_min_abi)
        .unwrap_or(1);
    let abi = sys::landlock_abi();
    let mut features = Vec::new();
    if abi >= 1 {
        features.push("filesystem");
    }
    if abi >= 4 {
        features.push("TCP bind/connect");
    }
    if abi >= 5 {
        features.push("device ioctls");
    }
    if abi >= 6 {
        features.push("signal + abstract-socket scoping");
    }
    checks.push(Check {
        name: "landlock",
        ok: abi >= policy_floor && abi > 0,
        detail: if abi == 0 {
            "not available (kernel without Landlock, or not in the lsm= list)".into()
        } else {
            format!("ABI {abi}: {}", features.join(", "))
        },
        required: policy_floor > 0,
    });

    let seccomp = sys::has_seccomp();
    checks.push(Check {
        name: "seccomp",
        ok: seccomp,
        detail: if seccomp {
            "filters available".into()
        } else {
            "not available".into()
        },
        required: true,
    });

    let inherited = sys::inherited_seccomp_filters();
    checks.push(Check {
        name: "inherited seccomp",
        ok: inherited == 0,
        detail: if inherited == 0 {
            "none: jobs run under toolbox's own filter alone".into()
        } else {
            format!(
                "{inherited} filter(s) inherited from whatever started toolbox (a systemd unit's \
                 ProtectHostname=, RestrictSUIDSGID=, SystemCallFilter=..., a container's seccomp \
                 profile): every job runs under them too and they cannot be lifted; some break \
                 jail set-up (sethostname EPERM, openat2 ENOSYS). Remove them there"
            )
        },
        required: false,
    });

    let mount_api = sys::has_mount_api();
    checks.push(Check {
        name: "mount API",
        ok: mount_api,
        detail: if mount_api {
            "open_tree / move_mount / mount_setattr (Linux 5.12+)".into()
        } else {
            "missing: toolbox needs Linux 5.12 or newer".into()
        },
        required: true,
    });

    let shim = shim_path();
    checks.push(Check {
        name: "exec shim",
        ok: shim.is_file(),
        detail: shim.display().to_string(),
        required: true,
    });
    checks
}
