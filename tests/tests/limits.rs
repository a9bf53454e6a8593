//! Guarantees 4 and 5 (time and limits): the timeout escalates SIGTERM → SIGKILL; memory
//! over the limit is an OOM kill reported as `oom`; a fork bomb stops at the pids limit;
//! the CPU quota holds; output beyond the cap is dropped from the middle while the tool
//! runs on, and the supervisor's memory stays flat.

use std::time::Duration;

use toolbox_tests::{
    host_pids_named, probe, require_root, token, wait_for, workspace, Flood, Run, Via,
};

#[test]
fn memory_over_the_limit_is_an_oom_kill() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::probe(ws.path(), &["memhog", "512"])
            .opts(&["--memory", "64M"])
            .via(via)
            .run();
        assert_eq!(job.status(), "oom", "{:?}", job.record());
        assert_eq!(job.code, 137);
        let record = job.record();
        assert_eq!(record["signal"], 9);
        assert!(record["oom_kills"].as_u64().expect("oom_kills") >= 1);
        let peak = record["memory_peak_bytes"].as_u64().expect("peak");
        assert!(
            peak > 32 << 20 && peak <= 65 << 20,
            "memory peak {peak} is not near the 64M limit"
        );
        // Said on stderr, after the output, and in the record: the limit and how to raise it.
        assert_explained(
            &job,
            "out of memory: the OOM killer ended the job at its 64M memory limit (peak ",
        );
        assert!(job.stderr.contains("--memory raises it"), "{}", job.stderr);
    }
}

/// The job's ending, explained once on stderr after the output and as the record's
/// `reason`.
fn assert_explained(job: &toolbox_tests::Job, start: &str) {
    let reason = job.record()["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {}", job.record()));
    assert!(reason.starts_with(start), "{reason:?} / {start:?}");
    let line = format!("[toolbox: {reason}]");
    assert_eq!(job.stderr.matches(&line).count(), 1, "{}", job.stderr);
    assert!(job.stderr.trim_end().ends_with(&line), "{}", job.stderr);
}

#[test]
fn a_process_of_the_job_killed_by_the_oom_killer_is_no_clean_exit() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        // The shell's child runs out of memory; the shell goes on and exits 0.
        let script = format!("{} memhog 512; echo went on", probe().display());
        let job = Run::command(ws.path(), &["/bin/sh", "-c", &script])
            .opts(&["--memory", "64M"])
            .via(via)
            .run();
        assert_eq!(job.stdout_text(), "went on\n", "{job:?}");
        assert_eq!(job.status(), "oom", "{:?}", job.record());
        assert_eq!(job.code, 137);
        assert_eq!(job.record()["signal"], serde_json::Value::Null);
        assert_explained(
            &job,
            "out of memory: the OOM killer ended 1 of the job's processes at its 64M memory \
             limit (peak ",
        );
        assert!(
            job.stderr
                .contains("while the main one went on (it exited 0)"),
            "{}",
            job.stderr
        );
    }
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let mark = token("bomb");
        let job = Run::probe(ws.path(), &["forkbomb", &mark])
            .opts(&["--pids", "32"])
            .via(via)
            .run();
        assert_eq!(job.code, 0, "{job:?}");
        let result = job.probe_json();
        let forked = result["forked"].as_u64().expect("forked");
        assert!(forked < 32, "forked {forked} processes past a limit of 32");
        assert_eq!(result["errno"], libc::EAGAIN, "{result}");
        assert!(
            result["running"].as_u64().expect("running") >= 10,
            "the bomb never went off: {result}"
        );
        assert!(job.record()["pids_peak"].as_u64().expect("pids_peak") <= 32);
        // The bomb exits 0 by itself, but the limit it ran into is said.
        assert_explained(&job, "the pids limit (32) refused ");
        assert!(job.stderr.contains("--pids raises it"), "{}", job.stderr);
        assert!(
            wait_for(Duration::from_secs(10), || host_pids_named(&mark)
                .is_empty()),
            "the bomb's processes outlived the job"
        );
        // The host can still start processes.
        assert!(std::process::Command::new("/bin/true")
            .status()
            .expect("host fork")
            .success());
    }
}

#[test]
fn a_tool_that_ignores_sigterm_is_killed_after_the_grace_period() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let mark = token("stubborn");
        let job = Run::probe(ws.path(), &["ignore-term", &mark])
            .opts(&["--timeout", "1s", "--grace", "1s"])
            .via(via)
            .run();
        assert_eq!(job.status(), "timeout", "{:?}", job.record());
        assert_eq!(job.code, 124);
        let record = job.record();
        assert_eq!(
            record["signal"], 9,
            "SIGTERM was ignored, so SIGKILL ended it: {record}"
        );
        let ms = record["duration_ms"].as_u64().expect("duration");
        // At least the timeout and the grace; the upper bound only has to tell a kill at the
        // end of the grace from none at all (the probe sleeps 600 s), however busy the machine.
        assert!(
            (1900..15_000).contains(&ms),
            "timeout 1s + grace 1s took {ms} ms"
        );
        assert!(job.stdout_text().starts_with("ready"), "{job:?}");
        assert!(
            host_pids_named(&mark).is_empty(),
            "its SIGTERM-ignoring child survived"
        );
        assert_explained(
            &job,
            "timed out after 1s: every process got SIGTERM, then SIGKILL after the 1s grace; \
             --timeout raises it",
        );
    }
}

#[test]
fn a_tool_that_honours_sigterm_ends_at_the_timeout() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::command(ws.path(), &["/bin/sleep", "30"])
            .opts(&["--timeout", "500ms", "--grace", "5s"])
            .via(via)
            .run();
        assert_eq!(job.status(), "timeout");
        assert_eq!(job.code, 124);
        assert_eq!(job.record()["signal"], 15);
        let ms = job.record()["duration_ms"].as_u64().expect("duration");
        // Ended by the SIGTERM: well before the 5 s grace would have run out.
        assert!((450..5000).contains(&ms), "took {ms} ms");
        assert_explained(
            &job,
            "timed out after 500ms: every process got SIGTERM and ended within the 5s grace",
        );
    }
}

#[test]
fn the_cpu_quota_holds() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        let job = Run::probe(ws.path(), &["spin", "2"])
            .opts(&["--cpus", "0.25"])
            .via(via)
            .run();
        let result = job.probe_json();
        let cpu = result["cpu_ms"].as_u64().expect("cpu_ms");
        // A quarter of a core for two seconds: about 500 ms, far from the 2000 it would use.
        // (Less when the machine is busy and the tool gets less than its quota.)
        assert!(
            (50..=900).contains(&cpu),
            "used {cpu} ms of CPU in 2 s at 0.25 cpus: {result}"
        );
        let recorded = job.record()["cpu_user_ms"].as_u64().expect("cpu")
            + job.record()["cpu_system_ms"].as_u64().expect("cpu");
        assert!(
            recorded >= cpu / 2,
            "the record's cpu time {recorded} ms is far below what the tool used ({cpu} ms)"
        );
    }
}

#[test]
fn an_output_flood_is_capped_with_head_tail_and_counts_and_flat_memory() {
    if !require_root() {
        return;
    }
    const TOTAL: u64 = 200 << 20;
    const CAP: u64 = 1 << 20;
    let flood = Flood::new(TOTAL);
    // Past the head, what the pipe holds beyond the tail is dropped unread: written 8 KiB
    // at a time it is; written 1 MiB at a time, more than the pipe has room for, the tool
    // would wait for ever on a full pipe, so that stream is read instead.
    for write in [8 << 10, 1 << 20] {
        let ws = workspace();
        let (job, max_rss_kib) = Run::probe(
            ws.path(),
            &["flood", &TOTAL.to_string(), &write.to_string()],
        )
        .opts(&["--output-limit", "1M"])
        .run_measured();
        assert_eq!(job.code, 0, "writes of {write}: {}", job.stderr);
        let out = &job.stdout;
        let head = flood.range(0, CAP / 2);
        let tail = flood.range(TOTAL - CAP / 2, TOTAL);
        assert!(
            out.starts_with(&head),
            "writes of {write}: the head is not the stream's"
        );
        assert!(
            out.ends_with(&tail),
            "writes of {write}: the tail is not the stream's last 512 KiB"
        );
        let marker = String::from_utf8_lossy(&out[head.len()..out.len() - tail.len()]);
        assert_eq!(
            marker.trim(),
            format!(
                "[toolbox: {} bytes of stdout dropped here; the last {} bytes follow]",
                TOTAL - CAP,
                CAP / 2
            ),
            "writes of {write}"
        );
        let record = job.record();
        assert_eq!(record["stdout_bytes"], TOTAL);
        assert_eq!(record["stdout_truncated"], true);
        assert_eq!(record["stdout_dropped_bytes"], TOTAL - CAP);
        assert_eq!(record["stderr_truncated"], false);
        // The supervisor keeps at most the cap's tail, whatever the tool writes.
        assert!(
            max_rss_kib < 64 * 1024,
            "toolbox peaked at {max_rss_kib} KiB during a 200 MB flood"
        );
    }
}

#[test]
fn runtimes_see_the_jobs_cpus_and_memory() {
    if !require_root() {
        return;
    }
    for via in Via::JOBS {
        let ws = workspace();
        // The job's cgroup, read-only, at /sys/fs/cgroup (v2: its files at the top; v1: one
        // directory per hierarchy), and nproc counting the CPUs the quota rounds up to.
        let script = "nproc; \
            cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
            cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
            cat /proc/self/cgroup; \
            echo 1 > /sys/fs/cgroup/pids.max 2>/dev/null || echo 1 > /sys/fs/cgroup/pids/pids.max 2>/dev/null || echo read-only";
        let job = Run::command(ws.path(), &["sh", "-c", script])
            .without_probe()
            .opts(&["--cpus", "1", "--memory", "512M"])
            .via(via)
            .run();
        assert_eq!(job.code, 0, "{job:?}");
        let out = job.stdout_text();
        let lines: Vec<&str> = out.lines().collect();
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            lines[0], "1",
            "nproc under --cpus 1 on {host_cpus} CPUs: {out}"
        );
        assert_eq!(lines[1], "536870912", "{out}");
        assert!(lines[2] == "100000 100000" || lines[2] == "100000", "{out}");
        // At the root of its cgroup namespace, in every hierarchy.
        assert!(
            lines[3..lines.len() - 1].iter().all(|l| l.ends_with(":/")),
            "{out}"
        );
        assert_eq!(lines.last(), Some(&"read-only"), "{out}");
        // Past the host's CPUs there is nothing to pin: nproc counts them all.
        let job = Run::command(ws.path(), &["nproc"])
            .without_probe()
            .opts(&["--cpus", &host_cpus.to_string()])
            .via(via)
            .run();
        assert_eq!(job.stdout_text().trim(), host_cpus.to_string(), "{job:?}");
    }
}
