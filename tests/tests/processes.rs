//! Guarantee 3 (processes): a job cannot see or signal host processes, and when its main
//! process exits every process it started is gone — daemons and double-forks included.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use toolbox_tests::daemon::{job_body, Daemon};
use toolbox_tests::{
    assert_no_leftovers_of, host_pids_named, host_probe_pids, probe, require_root, token, wait_for,
    workspace, Run, Via, TOOL_UID,
};

#[test]
fn host_processes_are_invisible() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::probe(ws.path(), &["status"]).via(via).run();
        let status = job.probe_json();
        // The shim (PID 1) and the probe: nothing of the host, and no helper of the shim's.
        assert_eq!(status["pids"], 2, "{status}");
        // Also when the shim prepared a network namespace the policy then did not want (the
        // host's network: `toolbox run` starts its shim before it reads the policy).
        let host = Run::probe(ws.path(), &["status"])
            .opts(&["--policy", "network"])
            .via(via)
            .run()
            .probe_json();
        assert_eq!(host["pids"], 2, "{host}");
        // Numbered in the jail's own pid namespace (PID 1 is the shim).
        assert!(status["pid"].as_u64().expect("pid") <= 4, "{status}");
        let init = Run::probe(ws.path(), &["read", "/proc/1/cmdline"])
            .via(via)
            .run()
            .probe_json();
        assert!(
            init["/proc/1/cmdline"]["detail"]
                .as_str()
                .expect("cmdline")
                .starts_with("toolbox-shim"),
            "{init}"
        );
    }
}

#[test]
fn the_jails_pid_1_lives_in_the_jobs_cgroup_and_the_tool_gets_the_pids() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::probe(ws.path(), &["read", "/proc/1/cgroup", "/proc/self/cgroup"])
            .via(via)
            .run();
        let read = job.probe_json();
        let cgroups = |path: &str| {
            read[path]["detail"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {read}"))
                .to_string()
        };
        let (init, tool) = (cgroups("/proc/1/cgroup"), cgroups("/proc/self/cgroup"));
        // The tool's cgroup namespace is rooted at the job's cgroup: the tool sits at its root in
        // every hierarchy, and so does PID 1 — from anywhere else (the supervisor's cgroup) it
        // would show as "/..".
        assert!(tool.lines().all(|line| line.ends_with(":/")), "{tool}");
        assert_eq!(init, tool, "PID 1 is not in the job's cgroup");
        // PID 1 is counted there, but not against the tool: one process, a peak of one.
        assert_eq!(job.record()["pids_peak"], 1, "{}", job.record());
    }
}

#[test]
fn kill_minus_one_harms_no_host_process() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let mark = token("victim");
        // A host process of the very uid the tool runs as: without a pid namespace, kill(-1)
        // from the tool would reach it.
        let mut victim = Command::new("/bin/sleep");
        std::os::unix::process::CommandExt::arg0(&mut victim, &mark);
        let mut victim = victim.arg("60").stdin(Stdio::null()).spawn_as(TOOL_UID);
        assert!(
            wait_for(Duration::from_secs(20), || !host_pids_named(&mark)
                .is_empty()),
            "victim did not start"
        );
        let job = Run::probe(ws.path(), &["kill-all"]).via(via).run();
        let alive = victim.try_wait().expect("try_wait").is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        assert!(alive, "kill(-1) from the jail killed a host process");
        // kill(-1) spares the caller and PID 1: in the jail it finds nothing to signal (ESRCH).
        assert_eq!(job.code, 0, "{job:?}");
        assert_eq!(
            job.probe_json()["errno"],
            libc::ESRCH,
            "{}",
            job.probe_json()
        );
    }
}

#[test]
fn the_tool_starts_with_no_signal_ignored_or_blocked() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let fields = |job: &toolbox_tests::Job| -> Vec<String> {
        job.stdout_text()
            .lines()
            .filter(|l| l.starts_with("SigIgn:") || l.starts_with("SigBlk:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    // grep, not the probe: a Rust program ignores SIGPIPE itself.
    let argv = ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"];
    let job = Run::command(ws.path(), &argv)
        .caller_disturbs_signals()
        .run();
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(
        fields(&job),
        ["SigBlk: 0000000000000000", "SigIgn: 0000000000000000"],
        "{job:?}"
    );
}

#[test]
fn background_processes_die_with_the_main_process() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let mark = token("daemon");
        let job = Run::probe(ws.path(), &["daemonize", &mark]).via(via).run();
        assert_eq!(job.code, 0, "{job:?}");
        let result = job.probe_json();
        assert_eq!(result["nohup"], true, "{result}");
        // They were really running when the main process exited (seen from inside)...
        assert!(
            result["running"].as_u64().expect("running") >= 2,
            "the daemons never started: {result}"
        );
        // ... and none survived the job.
        assert!(
            host_pids_named(&mark).is_empty(),
            "daemons survived the job: {:?}",
            host_pids_named(&mark)
        );
    }
}

/// A process left behind that holds none of the job's output pipes does not keep the job
/// open, and is gone when the record comes. The daemon sends the record before the jail's
/// teardown (PID 1's exit, the namespaces, the cgroup's removal), once PID 1 has reported the
/// tool's end — which it does only after killing and reaping every other process. The process
/// holds a lock and memory: were it killed only as PID 1 exits, its lock would still be held,
/// while its memory is freed, when the record is read. Checked as the record arrives, before
/// anything else could wait for the teardown; cold and warm jails alike.
#[test]
fn a_detached_process_is_gone_when_the_record_comes() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let mut warm = Vec::new();
    for run in 0..3 {
        let lock = ws.path().join(format!("held-{run}.lock"));
        std::fs::write(&lock, b"").expect("the lock file");
        // (The workspace is at the same path in the jail.)
        let argv = [
            &probe().to_string_lossy(),
            "detach",
            &lock.to_string_lossy(),
            "256",
        ];
        let mut stream = daemon.submit(&job_body(ws.path(), &argv));
        let exit = stream.until("exit").expect("an exit event");
        let file = std::fs::File::open(&lock);
        // SAFETY: flock on a descriptor we own.
        let free = file.as_ref().is_ok_and(|file| unsafe {
            libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
        });
        stream.read_to_end();
        file.unwrap_or_else(|err| {
            panic!(
                "the lock file: {err}; {exit}; {:?}",
                stream.output("stderr")
            )
        });
        assert_eq!(exit["exit_code"], 0, "{exit}");
        let said = String::from_utf8_lossy(&stream.output("stdout")).into_owned();
        assert!(said.contains(r#""holding":true"#), "{said:?}");
        assert!(
            free,
            "the detached process still held its lock when the record came: {exit}"
        );
        assert_no_leftovers_of(&exit);
        warm.push(exit["isolation"]["warm"] == true);
    }
    assert!(warm.contains(&true), "no run was warm: {warm:?}");
}

#[test]
fn the_tool_runs_as_a_non_root_uid_seen_from_the_host() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let mark = token("uid");
    // Long enough to be still running when a busy machine gets round to looking (it is
    // cancelled below).
    let child = Run::probe(ws.path(), &["sleep", "60", &mark]).spawn();
    let found = wait_for(Duration::from_secs(20), || {
        !host_probe_pids(&mark).is_empty()
    });
    let pids = host_probe_pids(&mark);
    let uids: Vec<String> = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .collect();
    // Stop it as a user would (SIGTERM: toolbox cancels the job and cleans up).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let job = toolbox_tests::finish(child.wait_with_output().expect("wait"));
    assert_eq!(job.status(), "cancelled", "{job:?}");
    assert!(found, "the probe never showed up on the host");
    for line in &uids {
        let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert!(
            fields.iter().all(|f| *f == TOOL_UID.to_string()),
            "host sees {line}"
        );
    }
    assert!(!uids.is_empty());
}

#[test]
fn orphans_are_reaped() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::command(
            ws.path(),
            &[
                "/bin/sh",
                "-c",
                "for i in 1 2 3; do (sleep 0.05 &); done; sleep 0.5; ps -eo stat= | tr -d ' '",
            ],
        )
        .via(via)
        .run();
        assert_eq!(job.code, 0, "{job:?}");
        assert!(
            !job.stdout_text().contains('Z'),
            "zombies in the jail: {}",
            job.stdout_text()
        );
    }
}

trait SpawnAs {
    fn spawn_as(&mut self, uid: u32) -> std::process::Child;
}

impl SpawnAs for Command {
    fn spawn_as(&mut self, uid: u32) -> std::process::Child {
        std::os::unix::process::CommandExt::uid(self, uid);
        std::os::unix::process::CommandExt::gid(self, uid);
        self.spawn().expect("spawn")
    }
}
