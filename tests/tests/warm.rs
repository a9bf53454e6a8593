//! The daemon's pool of prepared jails (`toolbox serve --warm`): a prepared jail serves one
//! job and is destroyed after it; one prepared before a policy reload, or too long ago, is
//! destroyed unused; the pool stays within its bound however many clients come. (The jail
//! suites run against warm jails too: `Via::Warm`.)

use std::time::Duration;

use serde_json::{json, Value};
use toolbox_tests::daemon::{alive, children, nix_kill, Daemon};
use toolbox_tests::{
    assert_no_leftovers_of, policies_dir, require_root, wait_for, workspace, TOOL_UID,
};

/// Run `script` under `sh -c` through the daemon; its record and stdout.
fn run(daemon: &Daemon, workspace: &std::path::Path, script: &str) -> (Value, String) {
    let stream = daemon.job(&json!({ "argv": ["sh", "-c", script], "cwd": workspace }));
    let record = stream.exit().clone();
    assert_no_leftovers_of(&record);
    let stdout = String::from_utf8_lossy(&stream.output("stdout")).into_owned();
    (record, stdout)
}

fn ready(daemon: &Daemon) -> u64 {
    daemon.metric("toolbox_warm_jails{network=\"isolated\"}")
        + daemon.metric("toolbox_warm_jails{network=\"host\"}")
}

#[test]
fn a_prepared_jail_serves_one_job_and_the_next_job_gets_another() {
    if !require_root() {
        return;
    }
    const NAMESPACES: [&str; 6] = ["pid", "mnt", "net", "ipc", "uts", "cgroup"];
    let daemon = Daemon::start(&["--warm", "2"]);
    let ws = workspace();
    let script = "for ns in pid mnt net ipc uts cgroup; do readlink /proc/self/ns/$ns; done; \
                  ls /tmp; echo left-behind > /tmp/marker";
    // The first job waits, having said its namespaces, until this test holds them open: a
    // freed namespace's number may be given to the next one made, so the second job's are
    // compared with the first's still alive.
    let flag = ws.path().join("go");
    let waits = format!(
        "{script}; while [ ! -e {} ]; do sleep 0.02; done",
        flag.display()
    );
    daemon.wait_for_warm("isolated");
    let mut first = daemon.submit(&json!({ "argv": ["sh", "-c", waits], "cwd": ws.path() }));
    let mut held = Vec::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let shells: Vec<i32> = daemon
                .shims()
                .iter()
                .flat_map(|&shim| children(shim, Some("sh")))
                .collect();
            held = shells
                .first()
                .map(|pid| {
                    NAMESPACES
                        .iter()
                        .filter_map(|ns| std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).ok())
                        .collect()
                })
                .unwrap_or_default();
            held.len() == NAMESPACES.len()
        }),
        "the first job's shell was not found"
    );
    std::fs::write(&flag, "").expect("flag");
    first.read_to_end();
    let first_record = first.exit().clone();
    assert_no_leftovers_of(&first_record);
    let first_out = String::from_utf8_lossy(&first.output("stdout")).into_owned();
    assert_eq!(first_record["exit_code"], 0, "{first_record}\n{first_out}");
    assert_eq!(first_record["isolation"]["warm"], true, "{first_record}");
    let first_namespaces: Vec<&str> = first_out.lines().take(NAMESPACES.len()).collect();
    // What the test holds is what the job saw.
    let holding: Vec<String> = held
        .iter()
        .map(|file| {
            let fd = std::os::fd::AsRawFd::as_raw_fd(file);
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .expect("readlink")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(holding, first_namespaces, "{first_out}");

    daemon.wait_for_warm("isolated");
    let (record, stdout) = run(&daemon, ws.path(), script);
    assert_eq!(record["exit_code"], 0, "{record}\n{stdout}");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
    // The marker the first job left in its /tmp is not in the second's.
    assert!(
        !stdout.contains("marker"),
        "a job saw another's /tmp: {stdout}"
    );
    for (a, b) in first_namespaces.iter().zip(stdout.lines()) {
        assert_ne!(*a, b, "two jobs shared a namespace");
    }
    assert_ne!(
        first_record["isolation"]["cgroup_path"], record["isolation"]["cgroup_path"],
        "two jobs shared a cgroup"
    );
    drop(held);
}

/// Whether process `pid` is readied as a job's tool is: in another network namespace than
/// the host's, not root, its seccomp filter on. (A jail's network helper is root, with no
/// filter.)
fn readied_as_tool(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
    };
    let host_net = std::fs::read_link("/proc/self/ns/net").ok();
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    net.is_some_and(|net| Some(&net) != host_net.as_ref())
        && field("Uid:").is_some_and(|uid| uid != "0")
        && field("Seccomp:").as_deref() == Some("2")
}

/// Everything of a prepared jail that no job changes is done before its job comes: its
/// network namespace taken from the helper that made it, which is gone (reaped); once a job
/// has shown what the next will look like, the tool's process is forked too and readied for
/// such a job — in the jail's network namespace, no longer root, its seccomp filter on —
/// so none of that is left for the job's path. The job's tool then runs in that process.
#[test]
fn a_prepared_jail_waits_with_its_network_made_and_its_tool_forked() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--warm", "1"]);
    let ws = workspace();
    // Children of each waiting jail's PID 1, and whether each is readied as a job's tool.
    let waiting = || {
        daemon
            .shims()
            .iter()
            .map(|&pid| {
                let kids: Vec<bool> = children(pid, None)
                    .into_iter()
                    .map(readied_as_tool)
                    .collect();
                (pid, kids)
            })
            .collect::<Vec<_>>()
    };
    // No job yet, so no draft: PID 1 alone once its helper is gone.
    daemon.wait_for_pool("isolated", 1);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let jails = waiting();
            jails.len() == 1 && jails.iter().all(|(_, kids)| kids.is_empty())
        }),
        "a prepared jail still has its network helper: {:?}",
        waiting()
    );
    // After a job, the jail laid out from its draft: PID 1 and the tool's process readied,
    // nothing else.
    let (record, _) = run(&daemon, ws.path(), "true");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
    assert!(
        wait_for(Duration::from_secs(20), || {
            let jails = waiting();
            jails.len() == 1 && jails.iter().all(|(_, kids)| kids == &[true])
        }),
        "a prepared jail with a draft did not wait with one tool process readied: {:?}",
        waiting()
    );
    // That process, by its pid in the jail, is the one the job's tool runs in.
    let forked = waiting()
        .first()
        .and_then(|(pid, _)| children(*pid, None).into_iter().next())
        .expect("the forked tool");
    let in_jail = std::fs::read_to_string(format!("/proc/{forked}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .and_then(|pids| pids.split_whitespace().last().map(str::to_string))
        })
        .expect("NSpid");
    let (record, stdout) = run(
        &daemon,
        ws.path(),
        "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
         echo $PPID $$; cut -d' ' -f19 /proc/$$/stat",
    );
    assert_eq!(record["exit_code"], 0, "{record}\n{stdout}");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
    let lines: Vec<&str> = stdout.lines().collect();
    let host_net = std::fs::read_link("/proc/self/ns/net").expect("readlink");
    assert_ne!(
        lines.first().copied(),
        Some(host_net.to_string_lossy().as_ref()),
        "the job ran in the host's network namespace: {stdout}"
    );
    assert_eq!(lines[1], "lo", "only lo in the job's namespace: {stdout}");
    // `sh` is the tool, PID 1's child: the process forked before the job came.
    assert_eq!(
        lines[2],
        format!("1 {in_jail}"),
        "not the tool forked ahead: {stdout}"
    );
    // At the job's CPU priority, not the lowest its jail waited at.
    assert_eq!(lines[3], "0", "the tool's nice: {stdout}");
}

/// A job unlike the one a prepared jail's tool readied itself for (here under a policy that
/// differs from the last job's only in its rlimits) does not get that process: it is
/// killed, and the job's tool is forked for it with the job's own limits.
#[test]
fn a_tool_readied_for_another_job_is_not_used() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let default = std::fs::read_to_string(policies_dir().join("default.toml")).expect("default");
    let fewer = default.replacen("\nopen_files = 4096", "\nopen_files = 256", 1);
    assert_ne!(
        fewer, default,
        "default.toml's open_files changed: update this test"
    );
    std::fs::write(dir.path().join("default.toml"), &default).expect("write");
    std::fs::write(dir.path().join("fewer.toml"), &fewer).expect("write");
    let policies = dir.path().to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--warm", "1", "--policies", &policies]);
    let ws = workspace();
    let (record, _) = run(&daemon, ws.path(), "true");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
    // The one jail's one child, once it is the tool readied (not its network helper, which
    // comes first and is gone by then).
    let readied = || {
        let shims = daemon.shims();
        let kids: Vec<i32> = shims.iter().flat_map(|&pid| children(pid, None)).collect();
        (shims.len() == 1 && kids.len() == 1 && readied_as_tool(kids[0])).then(|| kids[0])
    };
    assert!(
        wait_for(Duration::from_secs(20), || readied().is_some()),
        "no tool readied in the refilled jail"
    );
    let forked = readied().expect("the readied tool");
    let stream = daemon.job(&json!({
        "argv": ["sh", "-c", "ulimit -n"],
        "cwd": ws.path(),
        "policy": "fewer",
    }));
    let record = stream.exit().clone();
    assert_no_leftovers_of(&record);
    let stdout = String::from_utf8_lossy(&stream.output("stdout")).into_owned();
    assert_eq!(record["exit_code"], 0, "{record}\n{stdout}");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
    // Its RLIMIT_NOFILE, not the default's the readied tool has.
    assert_eq!(stdout.trim(), "256", "{stdout}");
    assert!(
        !alive(forked),
        "the tool readied for another job is still there"
    );
}

#[test]
fn a_reload_destroys_the_jails_prepared_before_it() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--warm", "2"]);
    let ws = workspace();
    assert!(
        wait_for(Duration::from_secs(30), || ready(&daemon) == 2
            && daemon.shims().len() == 2),
        "the pool did not fill"
    );
    let before = daemon.shims();
    nix_kill(daemon.pid(), libc::SIGHUP).expect("SIGHUP");
    assert!(
        wait_for(Duration::from_secs(30), || before
            .iter()
            .all(|&pid| !alive(pid))),
        "jails prepared before the reload are still there: {before:?}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready(&daemon) == 2),
        "the pool did not refill after the reload"
    );
    let after = daemon.shims();
    assert!(after.is_disjoint(&before), "{before:?} {after:?}");
    assert!(daemon.metric("toolbox_warm_jails_destroyed_total") >= 2);
    // And the next job is served warm, by a jail prepared after the reload.
    let (record, _) = run(&daemon, ws.path(), "true");
    assert_eq!(record["isolation"]["warm"], true, "{record}");
}

#[test]
fn each_kind_of_job_gets_a_jail_laid_out_for_it() {
    if !require_root() {
        return;
    }
    // Two checkouts, their jobs alternating on one daemon (two agents, or one agent's two
    // projects): each job gets a jail laid out for jobs like it — the pool replaces what
    // each took with one for its kind — not one laid out for the other's.
    let daemon = Daemon::start(&["--warm", "2"]);
    let (a, b) = (workspace(), workspace());
    let roots = |root: &str| daemon.metric(&format!("toolbox_warm_roots_total{{root=\"{root}\"}}"));
    daemon.wait_for_pool("isolated", 2);
    // One of each first: the jails prepared at the start were laid out for no job.
    for ws in [&a, &b] {
        let (record, _) = run(&daemon, ws.path(), "true");
        assert_eq!(record["isolation"]["warm"], true, "{record}");
        daemon.wait_for_pool("isolated", 2);
    }
    let (drafted, built) = (roots("drafted"), roots("built"));
    // Not strictly alternating: the jail to take is then not merely the oldest.
    let order = [&a, &a, &b, &b, &a, &b, &b, &a];
    for ws in order {
        let (record, listing) = run(&daemon, ws.path(), "pwd");
        assert_eq!(record["isolation"]["warm"], true, "{record}");
        assert_eq!(listing.trim(), ws.path().to_string_lossy(), "{record}");
        daemon.wait_for_pool("isolated", 2);
    }
    assert_eq!(
        (roots("drafted") - drafted, roots("built") - built),
        (order.len() as u64, 0),
        "jobs in a root laid out for them, and in one built on their path"
    );
}

#[test]
fn a_prepared_jails_cgroup_has_each_jobs_own_limits() {
    if !require_root() {
        return;
    }
    // One prepared jail at a time, each made after the last job with that job's limits set
    // ahead: the next job's, raised, lowered or the same, are what its cgroup enforces.
    let daemon = Daemon::start(&["--warm", "1"]);
    let ws = workspace();
    // The job's cgroup as it sees it (v2: at the top; v1: a directory per hierarchy).
    let script = "cat /sys/fs/cgroup/memory.max 2>/dev/null || \
            cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
        cat /sys/fs/cgroup/memory.swap.max 2>/dev/null || \
            cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo no-swap; \
        cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; \
        cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us";
    for (memory, pids, cpus) in [
        (64u64 << 20, 30u32, 0.5),
        (256 << 20, 60, 1.0),
        (32 << 20, 10, 0.25),
        (32 << 20, 10, 0.25),
        (96 << 20, 10, 0.25),
    ] {
        daemon.wait_for_warm("isolated");
        let stream = daemon.job(&json!({
            "argv": ["sh", "-c", script],
            "cwd": ws.path(),
            "limits": { "memory": memory.to_string(), "pids": pids, "cpus": cpus },
        }));
        let record = stream.exit().clone();
        assert_eq!(record["exit_code"], 0, "{record}");
        assert_eq!(record["isolation"]["warm"], true, "{record}");
        let out = String::from_utf8_lossy(&stream.output("stdout")).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        let quota = (cpus * 100_000.0) as u64;
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], memory.to_string(), "memory: {out}");
        // Swap off: v2's swap at 0, v1's memory+swap at the memory limit (where the kernel
        // accounts swap at all).
        assert!(
            ["0", "no-swap", memory.to_string().as_str()].contains(&lines[1]),
            "swap: {out}"
        );
        // PID 1 counts too.
        assert_eq!(lines[2], (pids + 1).to_string(), "pids: {out}");
        assert!(
            lines[3] == quota.to_string() || lines[3] == format!("{quota} 100000"),
            "cpus: {out}"
        );
    }
}

#[test]
fn a_jail_prepared_too_long_ago_is_destroyed_unused() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--warm", "1", "--warm-max-age", "1s"]);
    assert!(
        wait_for(Duration::from_secs(30), || daemon.shims().len() == 1),
        "the pool did not fill"
    );
    let first = daemon.shims();
    assert!(
        wait_for(Duration::from_secs(10), || first
            .iter()
            .all(|&pid| !alive(pid))
            && daemon.shims().len() == 1),
        "a prepared jail outlived its age: {first:?}"
    );
    assert!(daemon.metric("toolbox_warm_jails_destroyed_total") >= 1);
    assert_eq!(daemon.metric("toolbox_warm_jails_taken_total"), 0);
}

#[test]
fn the_pool_stays_within_its_bound_under_fifty_clients() {
    if !require_root() {
        return;
    }
    let bound = 3;
    let daemon = Daemon::start(&["--warm", &bound.to_string(), "--max-jobs", "8"]);
    let ws = workspace();
    daemon.wait_for_warm("isolated");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (records, (most_ready, most_shims)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut ready_max, mut shims_max) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                ready_max = ready_max.max(ready(&daemon));
                // A scan of /proc is no snapshot: a shim gone and another started while it
                // reads would both be counted. The pids in two scans in a row were all alive
                // at once (when the first ended), so they are counted.
                let first = daemon.shims();
                let alive = first.intersection(&daemon.shims()).count();
                shims_max = shims_max.max(alive);
                std::thread::sleep(Duration::from_millis(5));
            }
            (ready_max, shims_max)
        });
        let clients: Vec<_> = (0..50)
            .map(|_| scope.spawn(|| run(&daemon, ws.path(), "true").0))
            .collect();
        let records: Vec<Value> = clients
            .into_iter()
            .map(|client| client.join().expect("client"))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (records, watcher.join().expect("watcher"))
    });
    for record in &records {
        assert_eq!(record["exit_code"], 0, "{record}");
    }
    let warm = records
        .iter()
        .filter(|r| r["isolation"]["warm"] == true)
        .count();
    assert!(warm >= 1, "no job of 50 got a prepared jail");
    assert!(most_ready <= bound, "{most_ready} jails ready at once");
    // At most 8 running jails and the prepared ones.
    assert!(
        most_shims <= 8 + bound as usize,
        "{most_shims} jails at once"
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready(&daemon) == bound
            && daemon.shims().len() == bound as usize),
        "the pool did not settle back at its bound"
    );
    // And stays there: it is not merely passing through the bound on its way up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ready(&daemon), bound, "the pool went past its bound");
    assert_eq!(daemon.shims().len(), bound as usize, "{:?}", daemon.shims());
}

#[test]
fn a_prepared_jail_never_binds_a_workspace_replaced_since() {
    if !require_root() {
        return;
    }
    // One prepared jail: after the first job it is laid out like that job's, workspace
    // bind included.
    let daemon = Daemon::start(&["--warm", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("checkout");
    // The job's own user's, as `workspace()` makes them: no idmap (which tmpfs before Linux
    // 6.3 cannot do) in the way of what is tested.
    let checkout = |name: &str| {
        std::fs::create_dir(&ws).expect("mkdir");
        std::fs::write(ws.join(name), name).expect("write");
        for path in [ws.clone(), ws.join(name)] {
            std::os::unix::fs::chown(&path, Some(TOOL_UID), Some(TOOL_UID)).expect("chown");
        }
    };
    checkout("old");
    // The first job takes the jail prepared at the start (no draft yet); the next one is
    // prepared after it, laid out as it was.
    daemon.wait_for_warm("isolated");
    let (first, listing) = run(&daemon, &ws, "ls");
    assert_eq!(first["exit_code"], 0, "{first}");
    assert_eq!(first["isolation"]["warm"], true, "{first}");
    assert_eq!(listing, "old\n");
    daemon.wait_for_warm("isolated");
    // The checkout removed and made again at the same path, as `rm -rf && git clone` does.
    std::fs::remove_dir_all(&ws).expect("rm");
    checkout("new");
    let (second, listing) = run(&daemon, &ws, "ls");
    assert_eq!(second["exit_code"], 0, "{second}");
    assert_eq!(second["isolation"]["warm"], true, "{second}");
    assert_eq!(
        listing, "new\n",
        "the job saw the workspace that was removed"
    );
}

#[test]
fn a_secret_made_after_its_view_was_memoised_is_masked_in_the_next_job() {
    if !require_root() {
        return;
    }
    // In /var/tmp, not /tmp: the memo forgets at any change on the way to what it read, and
    // other tests make directories in /tmp all the time. (It still may forget: retried.)
    let dir = tempfile::Builder::new()
        .prefix("toolbox-memo-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let shown = dir.path().join("shown");
    std::fs::create_dir(&shown).expect("mkdir");
    std::fs::write(shown.join("note"), "public").expect("write");
    for path in [dir.path(), &shown] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let secret = shown.join("secret");
    let policies = tempfile::tempdir().expect("tempdir");
    let default = std::fs::read_to_string(policies_dir().join("default.toml")).expect("default");
    let masking = default.replacen(
        "\nmasked = []",
        &format!("\nmasked = [\"{}\"]", secret.display()),
        1,
    );
    assert_ne!(
        masking, default,
        "default.toml's masked changed: update this test"
    );
    std::fs::write(policies.path().join("default.toml"), &masking).expect("write");
    let daemon = Daemon::start(&[
        "--warm",
        "1",
        "--policies",
        &policies.path().to_string_lossy(),
    ]);
    let ws = workspace();
    let script = format!("cat {0}/note; echo; cat {0}/secret 2>&1", shown.display());
    let job = || {
        let stream = daemon.job(&json!({
            "argv": ["sh", "-c", &script],
            "cwd": ws.path(),
            "mounts": [{ "path": &shown, "mode": "ro" }],
        }));
        let record = stream.exit().clone();
        assert_no_leftovers_of(&record);
        assert!(record["error"].is_null(), "{record}");
        String::from_utf8_lossy(&stream.output("stdout")).into_owned()
    };
    let memo = || daemon.metric("toolbox_views_total{how=\"memo\"}");
    // Jobs until one is planned with the memo's view: the view is kept, then.
    let kept = (0..20).any(|_| {
        let before = memo();
        let out = job();
        assert!(out.starts_with("public\n"), "{out}");
        memo() > before
    });
    assert!(kept, "no job's view came from the memo");
    // The secret appears where the view shows: the next job's view masks it.
    std::fs::write(&secret, "s3cret").expect("write");
    let out = job();
    assert!(
        !out.contains("s3cret"),
        "a job read a secret made after its view was memoised: {out}"
    );
    assert_eq!(out, "public\n", "the masked secret is an empty file");
}
