//! The daemon (`toolbox serve`): a real daemon on a temporary socket, real jails. Guarantees
//! 3 (a job ends when its client leaves), 6 (concurrency and the queue), 7 (nothing leaks,
//! also across a daemon crash) and 8 (bad input), plus access control, the audit log and
//! socket activation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use toolbox_tests::daemon::{alive, job_body, nix_kill, request, Daemon};
use toolbox_tests::{
    assert_no_leftovers, assert_no_leftovers_of, host_pids_named, probe, require_root, token,
    toolbox, wait_for, workspace, Run, TOOL_UID,
};

#[test]
fn fifty_clients_at_once_never_more_than_eight_running() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    // Each job says when it started and ended, by the host's clock (CLOCK_REALTIME is not
    // namespaced): the overlap is measured from the jobs themselves.
    let script = "date +%s%N; sleep 0.3; date +%s%N";
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let body = job_body(ws.path(), &["sh", "-c", script]);
            let socket = daemon.socket.clone();
            std::thread::spawn(move || {
                let mut stream = toolbox_tests::daemon::request_stream(&socket, &body);
                stream.read_to_end();
                stream
            })
        })
        .collect();
    let mut spans = Vec::new();
    let mut saw_positions = BTreeSet::new();
    for client in clients {
        let stream = client.join().expect("client thread");
        assert_eq!(stream.status, 200, "refused: {:?}", stream.refusal);
        let exit = stream.exit();
        assert_eq!(exit["status"], "exited", "{exit}");
        assert_eq!(exit["exit_code"], 0, "{exit}");
        for event in &stream.events {
            if event["type"] == "queued" {
                saw_positions.insert(event["position"].as_u64().expect("position"));
            }
        }
        let out = String::from_utf8(stream.output("stdout")).expect("utf-8");
        let times: Vec<u128> = out.lines().map(|l| l.parse().expect("ns")).collect();
        assert_eq!(times.len(), 2, "{out:?}");
        spans.push((times[0], times[1]));
        assert_no_leftovers_of(exit);
    }
    let most = max_overlap(&spans);
    assert!(most <= 8, "{most} jobs ran at once");
    assert!(
        most >= 4,
        "only {most} at once: the slots are not used in parallel"
    );
    assert!(
        saw_positions.len() > 5 && saw_positions.contains(&1),
        "queued clients should hear their positions: {saw_positions:?}"
    );
    assert_eq!(daemon.audit_lines().len(), 50);
    let metrics = String::from_utf8(daemon.request("GET", "/metrics", None).body).expect("text");
    for line in [
        "toolbox_jobs_total{status=\"exited\"} 50",
        "toolbox_jobs_running 0",
        "toolbox_jobs_queued 0",
        "toolbox_queue_wait_seconds_count 50",
        "toolbox_job_duration_seconds_count 50",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
}

fn max_overlap(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // Ends sort before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn a_full_queue_refuses_at_once_and_disturbs_nothing() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--max-jobs", "1", "--max-queue", "1"]);
    let ws = workspace();
    let mut running = daemon.submit(&job_body(ws.path(), &["sh", "-c", "sleep 5; echo done"]));
    assert_eq!(running.until("started").map(|_| ()), Some(()));
    let mut queued = daemon.submit(&job_body(ws.path(), &["echo", "second"]));
    let place = queued.until("queued").expect("queued event");
    assert_eq!(place["position"], 1);
    let started = Instant::now();
    let refused = daemon.request(
        "POST",
        "/v1/jobs",
        Some(&job_body(ws.path(), &["echo", "third"]).to_string()),
    );
    // Immediate: not after the running job's 5 s, which a refusal that waited for a slot
    // would take (a bound far from both, so a busy machine cannot fail it).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refusal should be immediate, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        refused.status,
        429,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    running.read_to_end();
    assert_eq!(running.exit()["exit_code"], 0);
    assert_eq!(running.output("stdout"), b"done\n");
    queued.read_to_end();
    assert_eq!(queued.output("stdout"), b"second\n");
    assert_eq!(queued.exit()["status"], "exited");
}

#[test]
fn time_in_the_queue_does_not_count_against_the_timeout() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--max-jobs", "1"]);
    let ws = workspace();
    let mut first = daemon.submit(&job_body(ws.path(), &["sleep", "5"]));
    first.until("started").expect("started");
    let mut second = daemon.submit(&json!({
        "argv": ["sh", "-c", "sleep 0.3; echo in time"],
        "cwd": ws.path(),
        "limits": { "timeout": "3s" },
    }));
    second.until("queued").expect("queued");
    second.read_to_end();
    // It waited ~5 s for its slot, longer than its 3 s timeout, and still ran to its end
    // (2.7 s to spare for a busy machine).
    let exit = second.exit();
    assert_eq!(exit["status"], "exited", "{exit}");
    assert_eq!(second.output("stdout"), b"in time\n");
    first.read_to_end();
}

#[test]
fn systemd_hears_ready_and_stopping() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut daemon =
        Daemon::start_with_env(&[], &[("NOTIFY_SOCKET", &notify_path.to_string_lossy())]);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    let status = daemon.stop();
    assert!(status.success(), "{status:?}; its log:\n{}", daemon.log());
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn a_queued_client_that_leaves_is_dropped_from_the_queue() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--max-jobs", "1"]);
    let ws = workspace();
    // Running until well after the other two are queued, on a busy machine too.
    let mut running = daemon.submit(&job_body(ws.path(), &["sleep", "5"]));
    running.until("started").expect("started");
    let mut leaving = daemon.submit(&job_body(ws.path(), &["echo", "never"]));
    let id = leaving.until("queued").expect("queued")["job_id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut behind = daemon.submit(&job_body(ws.path(), &["echo", "behind"]));
    assert_eq!(behind.until("queued").expect("queued")["position"], 2);
    leaving.disconnect();
    // The one behind moves up, and the leaver is no longer listed.
    assert_eq!(behind.until("queued").expect("moved up")["position"], 1);
    let listed = daemon.request("GET", "/v1/jobs", None).json();
    assert!(
        !listed.to_string().contains(&id),
        "the leaver is still listed: {listed}"
    );
    behind.read_to_end();
    assert_eq!(behind.output("stdout"), b"behind\n");
    let audit = daemon.audit_lines();
    let line = audit
        .iter()
        .find(|l| l["job_id"] == id.as_str())
        .expect("the leaver is audited");
    assert_eq!(line["result"]["status"], "cancelled");
}

#[test]
fn a_client_that_hangs_up_ends_its_job_at_once_whatever_its_grace() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("hangup");
    // A grace of 30 s (the most the policy allows): were the job ended by its own
    // SIGTERM-then-grace, its SIGTERM-ignoring processes would live 30 s past the hang-up.
    let mut body = job_body(
        ws.path(),
        &[&probe().to_string_lossy(), "ignore-term", &token],
    );
    body["limits"] = serde_json::json!({ "grace": "30s" });
    let mut job = daemon.submit(&body);
    let id = job.until("started").expect("started")["job_id"]
        .as_str()
        .expect("id")
        .to_string();
    job.until("stdout").expect("the probe is ready");
    assert!(
        wait_for(Duration::from_secs(5), || !host_pids_named(&token)
            .is_empty()),
        "the probe's SIGTERM-ignoring child should be running"
    );
    let hung_up = Instant::now();
    job.disconnect();
    // The hang-up's own short grace (0.3 s) ends them, about a second after the hang-up at
    // most on an idle machine; the bound only has to tell that from the 30 s grace.
    let gone = wait_for(Duration::from_secs(10), || {
        host_pids_named(&token).is_empty()
    });
    eprintln!(
        "the job's processes were gone {:?} after the hang-up",
        hung_up.elapsed()
    );
    assert!(
        gone,
        "the job's processes outlived their client by {:?}",
        hung_up.elapsed()
    );
    assert!(wait_for(Duration::from_secs(10), || {
        std::panic::catch_unwind(|| assert_no_leftovers(&id)).is_ok()
    }));
}

#[test]
fn delete_cancels_a_running_job() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let mut job = daemon.submit(&job_body(ws.path(), &["sleep", "60"]));
    let id = job.until("started").expect("started")["job_id"]
        .as_str()
        .expect("id")
        .to_string();
    let started = Instant::now();
    let answer = daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(answer.status, 202);
    job.read_to_end();
    let exit = job.exit();
    assert_eq!(exit["status"], "cancelled", "{exit}");
    assert_eq!(exit["exit_code"], 143);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_no_leftovers(&id);
    let again = daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(again.status, 404);
}

#[test]
fn every_malformed_request_gets_its_4xx_and_the_daemon_carries_on() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let cwd = ws.path().display().to_string();
    // A job running through all of it, which must finish untouched.
    let mut bystander = daemon.submit(&job_body(ws.path(), &["sh", "-c", "sleep 1; echo intact"]));
    bystander.until("started").expect("started");

    let post = |body: &str| {
        request(
            &daemon.socket,
            "POST",
            "/v1/jobs",
            "application/json",
            Some(body.as_bytes()),
        )
    };
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("not JSON", "{argv: ls".into(), 400, Some("body")),
        (
            "unknown field",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","colour":"red"}}"#),
            400,
            Some("colour"),
        ),
        (
            "empty argv",
            format!(r#"{{"argv":[],"cwd":"{cwd}"}}"#),
            400,
            Some("argv"),
        ),
        (
            "NUL in argv",
            format!(r#"{{"argv":["ls","a\u0000b"],"cwd":"{cwd}"}}"#),
            400,
            Some("argv[1]"),
        ),
        (
            "NUL in env",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","env":{{"A":"x\u0000y"}}}}"#),
            400,
            Some("env.A"),
        ),
        (
            "'=' in a caller_env name",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","caller_env":{{"A=B":"x"}}}}"#),
            400,
            Some("caller_env.A=B"),
        ),
        (
            "NUL in a caller_env value",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","caller_env":{{"A":"x\u0000y"}}}}"#),
            400,
            Some("caller_env.A"),
        ),
        (
            "NUL in a path",
            format!(
                r#"{{"argv":["ls"],"cwd":"{cwd}","mounts":[{{"path":"/usr\u0000x","mode":"ro"}}]}}"#
            ),
            400,
            Some("mounts[0].path"),
        ),
        (
            "relative cwd",
            r#"{"argv":["ls"],"cwd":"some/dir"}"#.into(),
            400,
            Some("cwd"),
        ),
        (
            "missing cwd",
            r#"{"argv":["ls"],"cwd":"/nonexistent/toolbox-test"}"#.into(),
            400,
            Some("cwd"),
        ),
        (
            "unknown policy",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","policy":"no-such-policy"}}"#),
            400,
            Some("policy"),
        ),
        (
            "policy as a path",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","policy":"/etc/passwd"}}"#),
            400,
            Some("policy"),
        ),
        (
            "limit out of range",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","limits":{{"pids":0}}}}"#),
            400,
            Some("limits.pids"),
        ),
        (
            "limit of the wrong type",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","limits":{{"memory":"lots"}}}}"#),
            400,
            Some("limits.memory"),
        ),
        (
            "limit above the policy",
            format!(r#"{{"argv":["ls"],"cwd":"{cwd}","limits":{{"memory":"900G"}}}}"#),
            403,
            Some("limits.memory"),
        ),
    ];
    for (what, body, status, field) in &cases {
        let answer = post(body);
        assert_eq!(
            answer.status,
            *status,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer.error_field().as_deref(),
            *field,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(answer.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let over_policy = format!(
        r#"{{"argv":["cat"],"cwd":"{cwd}","stdin":"{}"}}"#,
        "x".repeat(300 << 10)
    );
    let answer = post(&over_policy);
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error_field().as_deref(), Some("stdin"));
    let too_big = format!(
        r#"{{"argv":["ls"],"cwd":"{cwd}","stdin":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    assert_eq!(post(&too_big).status, 413);
    let wrong_type = request(
        &daemon.socket,
        "POST",
        "/v1/jobs",
        "text/plain",
        Some(b"{}"),
    );
    assert_eq!(wrong_type.status, 415);
    assert_eq!(daemon.request("PUT", "/v1/jobs", Some("{}")).status, 405);
    assert_eq!(daemon.request("GET", "/v1/nothing", None).status, 404);
    assert_eq!(
        daemon.request("GET", "/v1/health", None).json()["status"],
        "ok"
    );

    // A request within bounds gets its stdin, bytes intact.
    let echoed =
        daemon.job(&json!({"argv": ["cat"], "cwd": ws.path(), "stdin_base64": "aGkA/w=="}));
    assert_eq!(echoed.output("stdout"), b"hi\0\xff");
    // Still serving, and the bystander never noticed.
    let next = daemon.job(&job_body(ws.path(), &["echo", "next"]));
    assert_eq!(next.output("stdout"), b"next\n");
    bystander.read_to_end();
    assert_eq!(bystander.output("stdout"), b"intact\n");
    assert_eq!(bystander.exit()["status"], "exited");
}

#[test]
fn a_job_ignoring_sigterm_is_killed_at_its_timeout_while_others_run_on() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("timeout");
    let mut stubborn = daemon.submit(&json!({
        "argv": [probe(), "ignore-term", token],
        "cwd": ws.path(),
        "mounts": [{ "path": probe(), "mode": "ro" }],
        "limits": { "timeout": "1s", "grace": "500ms" },
    }));
    let mut neighbour = daemon.submit(&job_body(ws.path(), &["sh", "-c", "sleep 2.5; echo fine"]));
    stubborn.read_to_end();
    let exit = stubborn.exit();
    assert_eq!(exit["status"], "timeout", "{exit}");
    assert_eq!(exit["exit_code"], 124);
    assert!(host_pids_named(&token).is_empty());
    neighbour.read_to_end();
    assert_eq!(neighbour.exit()["status"], "exited");
    assert_eq!(neighbour.output("stdout"), b"fine\n");
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn zombie_children(pid: i32) -> usize {
    let mut zombies = 0;
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so split after the ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            zombies += 1;
        }
    }
    zombies
}

#[test]
fn a_thousand_jobs_leave_fds_and_memory_flat() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let body = job_body(ws.path(), &["/bin/true"]);
    for _ in 0..50 {
        assert_eq!(daemon.job(&body).exit()["exit_code"], 0);
    }
    // Counted with the pool full (4, the default for 8 slots) both times: each prepared jail
    // holds a few descriptors, and the record comes before the pool refills.
    daemon.wait_for_pool("isolated", 4);
    let (fds, rss) = (fd_count(daemon.pid()), rss_kib(daemon.pid()));
    for _ in 0..1000 {
        assert_eq!(daemon.job(&body).exit()["exit_code"], 0);
    }
    daemon.wait_for_pool("isolated", 4);
    // Let the last connection close on the daemon's side (a busy machine can take a while).
    wait_for(Duration::from_secs(20), || fd_count(daemon.pid()) <= fds);
    let (fds_after, rss_after) = (fd_count(daemon.pid()), rss_kib(daemon.pid()));
    eprintln!("daemon fds {fds} -> {fds_after}, RSS {rss} KiB -> {rss_after} KiB");
    // Fewer is fine: on a slow machine the baseline can still count a closing connection.
    // A leak of one per job would be a thousand more.
    assert!(
        fds_after <= fds,
        "the daemon leaks descriptors: {fds} -> {fds_after}"
    );
    assert!(
        rss_after < rss + 2048,
        "the daemon grew from {rss} to {rss_after} KiB over 1000 jobs"
    );
    assert_eq!(zombie_children(daemon.pid()), 0);
    assert_eq!(daemon.audit_lines().len(), 1050);
}

#[test]
fn a_daemon_killed_with_jobs_running_is_cleaned_up_by_the_next_one() {
    if !require_root() {
        return;
    }
    let mut first = Daemon::start(&["--warm", "4"]);
    let ws = workspace();
    let token = token("crash");
    let mut ids = Vec::new();
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut job = first.submit(&job_body(
            ws.path(),
            &[
                &probe().to_string_lossy(),
                "ignore-term",
                &format!("{token}{i}"),
            ],
        ));
        ids.push(
            job.until("started").expect("started")["job_id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
        job.until("stdout").expect("ready");
        streams.push(job);
    }
    // Its pool full too: the two jobs' jails and the prepared ones.
    first.wait_for_warm("isolated");
    assert!(
        wait_for(Duration::from_secs(30), || first.shims().len() == 2 + 4),
        "the pool did not fill: {:?}",
        first.shims()
    );
    let jails = first.shims();
    let old_pid = first.pid();
    nix_kill(old_pid, libc::SIGKILL).expect("kill -9 the daemon");
    first.child.wait().expect("reap");
    // The same socket path, now stale, and the same audit log.
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().expect("tempdir"));
    let (socket, audit) = (first.socket.clone(), first.audit.clone());
    let second = Daemon::start_at(dir, socket, audit, &[]);
    // It answers: by now the old jobs' processes and cgroups must be gone.
    assert_eq!(second.request("GET", "/v1/health", None).status, 200);
    assert!(
        host_pids_named(&token).is_empty(),
        "jail processes survived the crash"
    );
    for id in &ids {
        assert_no_leftovers(id);
    }
    let left: Vec<i32> = jails.into_iter().filter(|&pid| alive(pid)).collect();
    assert!(
        left.is_empty(),
        "jails (prepared or running) survived the crash: {left:?}"
    );
    let prefix = format!("toolbox-{old_pid}-");
    let leftovers = find_named(std::path::Path::new("/sys/fs/cgroup"), &prefix, 8);
    assert!(leftovers.is_empty(), "stale cgroups: {leftovers:?}");
    drop(streams);
}

fn find_named(dir: &std::path::Path, prefix: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push(entry.path());
        } else if depth > 0 {
            found.extend(find_named(&entry.path(), prefix, depth - 1));
        }
    }
    found
}

#[test]
fn an_ending_is_explained_through_the_daemon_as_it_is_locally() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let job = Run::probe(ws.path(), &["memhog", "512"])
        .opts(&[
            "--memory",
            "64M",
            "--socket",
            &daemon.socket.to_string_lossy(),
        ])
        .run_remote();
    assert_eq!(job.code, 137, "{job:?}");
    let reason = job.record()["reason"]
        .as_str()
        .expect("a reason")
        .to_string();
    assert!(
        reason.starts_with("out of memory: the OOM killer ended the job at its 64M memory limit"),
        "{reason}"
    );
    assert_eq!(
        job.stderr.matches(&format!("[toolbox: {reason}]")).count(),
        1,
        "{}",
        job.stderr
    );
}

#[test]
fn peers_off_the_allowlist_are_refused_and_allowed_ones_run_as_themselves() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let id_job = |daemon: &Daemon| {
        Run::command(ws.path(), &["id", "-u"])
            .opt("--socket")
            .opt(&daemon.socket.to_string_lossy())
            .as_uid(TOOL_UID)
    };
    let refusing = Daemon::start(&[]);
    // Let anyone reach the socket file: the allowlist must still hold them off.
    refusing.open_to_everyone();
    let job = id_job(&refusing).run_remote();
    assert_eq!(job.code, 125, "{job:?}");
    assert!(
        job.stderr.contains("may not use this daemon"),
        "{}",
        job.stderr
    );

    let allowing = Daemon::start(&["--allow-uid", &TOOL_UID.to_string()]);
    allowing.open_to_everyone();
    let job = id_job(&allowing).run_remote();
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text().trim(), TOOL_UID.to_string());
    // The daemon is root, but lends none of that: a workspace the peer cannot reach itself
    // (inside a root-only directory) is refused, though the daemon could reach it.
    let locked = tempfile::tempdir().expect("tempdir");
    let inside = locked.path().join("inside");
    std::fs::create_dir(&inside).expect("mkdir");
    std::os::unix::fs::chown(&inside, Some(TOOL_UID), Some(TOOL_UID)).expect("chown");
    std::fs::set_permissions(
        locked.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let job = Run::command(&inside, &["true"])
        .opt("--socket")
        .opt(&allowing.socket.to_string_lossy())
        .as_uid(TOOL_UID)
        .run_remote();
    assert_eq!(job.code, 125, "{job:?}");
    assert!(job.stderr.contains("cwd"), "{}", job.stderr);
    let audit = allowing.audit_lines();
    assert_eq!(audit[0]["peer"]["uid"], TOOL_UID);
    assert_eq!(audit[0]["uid"], TOOL_UID);
}

#[test]
fn a_peer_is_let_in_by_a_supplementary_group_it_had_when_it_connected() {
    if !require_root() {
        return;
    }
    // Allowed by a group the peer holds only as a supplementary one, behind 40 others (more
    // than the daemon's first guess at how many a peer has).
    const GROUP: u32 = 54_990;
    let daemon = Daemon::start(&["--allow-gid", &GROUP.to_string()]);
    daemon.open_to_everyone();
    let ws = workspace();
    let run = |groups: Vec<libc::gid_t>| {
        let mut command = std::process::Command::new(toolbox());
        command
            .args(["run", "--socket"])
            .arg(&daemon.socket)
            .arg("-C")
            .arg(ws.path())
            .args(["--", "id", "-u"])
            .stdin(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(TOOL_UID) != 0
                    || libc::setuid(TOOL_UID) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.output().expect("run toolbox")
    };
    let others: Vec<libc::gid_t> = (54_900..54_940).collect();
    let member = run(others.iter().copied().chain([GROUP]).collect());
    assert!(member.status.success(), "{member:?}");
    assert_eq!(
        String::from_utf8_lossy(&member.stdout).trim(),
        TOOL_UID.to_string()
    );
    let outsider = run(others);
    assert_eq!(outsider.status.code(), Some(125), "{outsider:?}");
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("may not use this daemon"),
        "{outsider:?}"
    );
}

#[test]
fn socket_activation_uses_the_inherited_listener() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let child = toolbox_tests::daemon::spawn_activated(&listener, &dir.path().join("daemon.log"));
    drop(listener);
    let mut daemon = toolbox_tests::daemon::Activated { child };
    let ws = workspace();
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        }),
        "the activated daemon is not answering; its log:\n{}",
        log()
    );
    let answer = request(&socket, "GET", "/v1/health", "application/json", None);
    assert_eq!(answer.status, 200);
    let mut job = toolbox_tests::daemon::request_stream(
        &socket,
        &job_body(ws.path(), &["echo", "activated"]),
    );
    job.read_to_end();
    assert_eq!(job.output("stdout"), b"activated\n");
    daemon.stop();
    // Under activation the socket belongs to systemd: the daemon leaves it in place.
    assert!(socket.exists());
}

#[test]
fn toolbox_run_through_the_daemon_matches_run_local() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let socket = daemon.socket.to_string_lossy().into_owned();
    for (argv, code) in [
        (vec!["sh", "-c", "echo out; echo err >&2; exit 3"], 3),
        (vec!["sh", "-c", "kill -KILL $$"], 137),
        (vec!["/nonexistent/cmd"], 127),
    ] {
        let remote = Run::command(ws.path(), &argv)
            .opts(&["--socket", &socket])
            .run_remote();
        let local = Run::command(ws.path(), &argv).run();
        assert_eq!(remote.code, code, "{argv:?} remote: {remote:?}");
        assert_eq!(local.code, code, "{argv:?} local: {local:?}");
        assert_eq!(remote.stdout, local.stdout, "{argv:?}");
    }
    let listed = std::process::Command::new(toolbox())
        .args(["ps", "--socket", &socket])
        .output()
        .expect("toolbox ps");
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("JOB"));
}

#[test]
fn the_systemd_units_verify() {
    let Ok(analyze) = which("systemd-analyze") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing and CI=true: install systemd"
        );
        eprintln!("\n!!! SKIPPED: systemd-analyze is not installed !!!\n");
        return;
    };
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in ["toolbox.service", "toolbox.socket"] {
        let text = std::fs::read_to_string(units.join(unit)).expect("unit");
        assert!(text.contains("/usr/local/bin/toolbox") || unit.ends_with(".socket"));
        // Point ExecStart at the binary under test: verify checks that it exists.
        let text = text.replace("/usr/local/bin/toolbox", &toolbox().to_string_lossy());
        std::fs::write(dir.path().join(unit), text).expect("write");
    }
    let service = std::fs::read_to_string(units.join("toolbox.service")).expect("unit");
    for needed in ["Type=notify", "Delegate=yes", "KillMode=mixed"] {
        assert!(service.contains(needed), "toolbox.service lacks {needed}");
    }
    // Options that install a seccomp filter (systemd.exec(5)) or another restriction every
    // job would inherit: the shipped unit sets none of them (ProtectHostname= and
    // RestrictSUIDSGID= made every job fail at jail set-up). The systemd VM tier checks the
    // same on a running daemon.
    let inherited_by_jobs = [
        "ProtectHostname",
        "RestrictSUIDSGID",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectClock",
        "RestrictRealtime",
        "LockPersonality",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "SystemCallFilter",
        "SystemCallArchitectures",
        "SystemCallLog",
        "MemoryDenyWriteExecute",
        "PrivateDevices",
        "DeviceAllow",
        "DevicePolicy",
        "NoNewPrivileges",
    ];
    for line in service.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') || matches!(value.trim(), "no" | "false" | "") {
            continue;
        }
        assert!(
            !inherited_by_jobs.contains(&key.trim()),
            "toolbox.service sets {line}: every job would inherit it"
        );
    }
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("toolbox.socket"))
        .arg(dir.path().join("toolbox.service"))
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Documentation= points at a file that exists only once installed; anything else is
    // a real complaint.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Documentation"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains: {complaints:?}"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn ctrl_c_on_toolbox_run_cancels_the_job_in_the_daemon() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("ctrlc");
    let socket = daemon.socket.to_string_lossy().into_owned();
    let client = Run::probe(ws.path(), &["ignore-term", &token])
        .opts(&["--socket", &socket])
        .spawn_remote();
    assert!(
        wait_for(Duration::from_secs(10), || !host_pids_named(&token)
            .is_empty()),
        "the job did not start"
    );
    nix_kill(client.id() as i32, libc::SIGINT).expect("Ctrl-C");
    let job = toolbox_tests::finish(client.wait_with_output().expect("wait"));
    assert_eq!(job.code, 130, "{job:?}");
    assert_eq!(job.record.as_ref().expect("record")["status"], "cancelled");
    assert!(
        host_pids_named(&token).is_empty(),
        "the job outlived the cancel"
    );
}

#[test]
fn sigterm_drains_then_cancels_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    // A drain long enough for the short job on a busy machine.
    let mut daemon = Daemon::start(&["--drain", "3s"]);
    let ws = workspace();
    let token = token("drain");
    let mut short = daemon.submit(&job_body(
        ws.path(),
        &["sh", "-c", "sleep 0.3; echo finished"],
    ));
    short.until("started").expect("started");
    let mut long = daemon.submit(&job_body(
        ws.path(),
        &[&probe().to_string_lossy(), "ignore-term", &token],
    ));
    let long_id = long.until("started").expect("started")["job_id"]
        .as_str()
        .expect("id")
        .to_string();
    let started = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "the daemon exited with {status}");
    // The short job finished within the drain; the long one was cancelled after it, and the
    // daemon waited for its grace and kill before exiting.
    short.read_to_end();
    assert_eq!(short.output("stdout"), b"finished\n");
    long.read_to_end();
    assert_eq!(long.exit()["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(host_pids_named(&token).is_empty());
    assert_no_leftovers(&long_id);
    assert!(!daemon.socket.exists(), "the socket was left behind");
    assert_eq!(daemon.audit_lines().len(), 2);
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    if !require_root() {
        return;
    }
    use std::io::{Read, Write};
    let daemon = Daemon::start(&[]);
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect");
    stream.write_all(b"GET /v1/hea").expect("half a head");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "the daemon kept a silent connection open for {waited:?}"
    );
    // And it still serves everyone else.
    assert_eq!(daemon.request("GET", "/v1/health", None).status, 200);
}

#[test]
fn the_callers_environment_reaches_a_daemon_job_as_it_does_a_local_one() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let job = Run::probe(ws.path(), &["env"])
        .opts(&["--socket", &daemon.socket.to_string_lossy()])
        .caller_env("TOOLBOX_TEST_SECRET", "hunter2")
        .caller_env("GIT_AUTHOR_NAME", "Ada")
        .caller_env("LC_ALL", "C.UTF-8")
        // The caller's order, less what the jail does not show.
        .caller_env(
            "PATH",
            "/usr/bin:/opt/toolbox-test-unseen/bin:/usr/local/bin:/bin",
        )
        .run_remote();
    assert_eq!(job.code, 0, "{job:?}");
    let env = job.probe_json();
    // The policy's allowlist picks from the caller's environment, as for a local run.
    assert_eq!(env["GIT_AUTHOR_NAME"], "Ada", "{env}");
    assert_eq!(env["LC_ALL"], "C.UTF-8", "{env}");
    assert_eq!(env["PATH"], "/usr/bin:/usr/local/bin:/bin", "{env}");
    assert!(env.get("TOOLBOX_TEST_SECRET").is_none(), "{env}");
    assert!(!job.stdout_text().contains("hunter2"));
}
