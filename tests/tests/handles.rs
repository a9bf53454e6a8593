//! Jobs with handles, through a real daemon and real jails: started detached, their output
//! read by offset while they run, their stdin written, cancelled, ended by their own
//! timeouts; only their owner may touch them; bounds refuse with 429; ended ones are kept
//! only a while; nothing of them outlives their end, not even a daemon's crash.

use std::time::{Duration, Instant};

use serde_json::json;
use toolbox_tests::daemon::{job_body, nix_kill, request, request_as, Daemon};
use toolbox_tests::{
    assert_no_leftovers, host_pids_named, probe, require_root, token, wait_for, workspace, TOOL_UID,
};

/// A job body running `sh -c script` in `workspace`.
fn shell(workspace: &std::path::Path, script: &str) -> serde_json::Value {
    json!({ "argv": ["sh", "-c", script], "cwd": workspace })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(haystack).contains(needle)
}

#[test]
fn a_detached_job_is_read_while_it_runs_answers_its_stdin_and_dies_whole_when_cancelled() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("handle");
    // A shell that greets, answers one line of stdin, and leaves a daemonized sleeper
    // (named by the token) behind, then waits for more stdin.
    let probe = probe().to_string_lossy().into_owned();
    let mut body = shell(
        ws.path(),
        &format!(
            "echo ready; read line; echo \"got $line\"; {probe} daemonize {token} >/dev/null; echo spawned; read more; echo never"
        ),
    );
    body["mounts"] = json!([{ "path": probe, "mode": "ro" }]);
    let id = daemon.detach(&body);
    let (out, _, answer) = daemon.read_output_until(&id, |out, _| contains(out, "ready\n"));
    assert_eq!(String::from_utf8_lossy(&out), "ready\n", "{answer}");
    assert_eq!(answer["state"], "running");
    assert_eq!(answer["done"], false);
    assert_eq!(answer["stdout"]["next"], 6);

    let wrote = daemon.write_stdin(&id, b"hello\n", "");
    assert_eq!(
        wrote.status,
        200,
        "{}",
        String::from_utf8_lossy(&wrote.body)
    );
    assert_eq!(wrote.json()["written"], 6);
    // Reading on from where the last read ended gives only what is new.
    let mut next = 6u64;
    let mut text = String::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let answer = daemon.output(&id, &format!("since={next}&wait=2s"));
            text.push_str(&String::from_utf8_lossy(
                &toolbox_tests::daemon::chunk_bytes(&answer["stdout"]),
            ));
            next = answer["stdout"]["next"].as_u64().expect("next");
            text.contains("spawned\n")
        }),
        "the job did not answer its stdin: {text:?}"
    );
    assert_eq!(text, "got hello\nspawned\n");
    assert!(
        !host_pids_named(&token).is_empty(),
        "the daemonized sleepers run"
    );
    let shown = daemon
        .request("GET", &format!("/v1/jobs/{id}"), None)
        .json();
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["detached"], true);

    let cancelled = daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(cancelled.status, 202);
    let record = daemon.record_of(&id);
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(
        wait_for(Duration::from_secs(5), || host_pids_named(&token)
            .is_empty()),
        "processes of the job outlived it"
    );
    assert_no_leftovers(&id);
    // Its output stays readable, complete, after its end; its stdin is closed.
    let last = daemon.output(&id, "");
    assert_eq!(last["done"], true);
    assert_eq!(
        String::from_utf8_lossy(&toolbox_tests::daemon::chunk_bytes(&last["stdout"])),
        "ready\ngot hello\nspawned\n"
    );
    assert_eq!(daemon.write_stdin(&id, b"more\n", "").status, 409);
    assert_eq!(
        daemon
            .request("DELETE", &format!("/v1/jobs/{id}"), None)
            .status,
        409
    );
}

#[test]
fn closing_stdin_ends_a_reader_and_the_record_is_kept() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    // The request's own stdin goes first, then what is written later, then EOF.
    let mut body = shell(ws.path(), "wc -c");
    body["stdin"] = "12345".into();
    let id = daemon.detach(&body);
    let wrote = daemon.write_stdin(&id, &[0u8, 0xff, b'\n'], "close=true");
    assert_eq!(
        wrote.status,
        200,
        "{}",
        String::from_utf8_lossy(&wrote.body)
    );
    assert_eq!(wrote.json()["closed"], true);
    let record = daemon.record_of(&id);
    assert_eq!(record["status"], "exited", "{record}");
    let (out, _, _) = daemon.read_output_until(&id, |_, _| false);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "8");
    assert_eq!(daemon.write_stdin(&id, b"x", "").status, 409);
}

#[test]
fn done_and_the_ended_state_are_said_together_and_the_record_is_there_with_them() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    // A reader polls each job to its end, as clients do: every answer that says `done`
    // says `ended`, and none before; the job's own state then has its record. (The record
    // is set a moment before the registry marks the job ended: both must read as ended.)
    for round in 0..30 {
        let id = daemon.detach(&shell(ws.path(), "echo out"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = daemon.output(&id, "since=0&wait=5s");
            let done = answer["done"] == true;
            assert_eq!(answer["state"] == "ended", done, "round {round}: {answer}");
            if done {
                assert_eq!(answer["stdout"]["chunks"][0]["text"], "out\n", "{answer}");
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: {answer}");
        }
        let job = daemon
            .request("GET", &format!("/v1/jobs/{id}"), None)
            .json();
        assert_eq!(job["state"], "ended", "{job}");
        assert_eq!(job["result"]["status"], "exited", "{job}");
    }
}

#[test]
fn output_past_the_cap_is_read_with_its_gap_at_true_offsets() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    // 3000 lines of 10 bytes against a 4 KiB cap: 2 KiB head, 2 KiB tail.
    let mut body = shell(
        ws.path(),
        "i=0; while [ $i -lt 3000 ]; do printf '%09d\\n' $i; i=$((i+1)); done",
    );
    body["limits"] = json!({ "output": "4K" });
    let id = daemon.detach(&body);
    let record = daemon.record_of(&id);
    assert_eq!(record["stdout_bytes"], 30000);
    assert_eq!(record["stdout_truncated"], true, "{record}");
    let answer = daemon.output(&id, "since=0");
    let chunks = answer["stdout"]["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 3, "{answer}");
    assert_eq!(chunks[0]["offset"], 0);
    assert_eq!(chunks[0]["text"].as_str().map(str::len), Some(2048));
    assert_eq!(chunks[1]["offset"], 2048);
    assert_eq!(chunks[1]["dropped_bytes"], 30000 - 4096);
    assert_eq!(chunks[2]["offset"], 30000 - 2048);
    let tail = chunks[2]["text"].as_str().expect("text");
    assert!(tail.ends_with("000002999\n"), "{tail}");
    // The tail's first full line sits where the offset says: line n starts at 10 n.
    let first_line = (30000 - 2048 + 9) / 10;
    assert!(tail[(first_line * 10 - (30000 - 2048)) as usize..]
        .starts_with(&format!("{first_line:09}\n")));
    assert_eq!(record["stdout_dropped_bytes"], 30000 - 4096);
    // A reader inside the gap learns what it missed from where it stood.
    let inside = daemon.output(&id, "stdout_since=10000");
    let chunks = inside["stdout"]["chunks"].as_array().expect("chunks");
    assert_eq!(chunks[0]["offset"], 10000);
    assert_eq!(chunks[0]["dropped_bytes"], 30000 - 2048 - 10000);
}

#[test]
fn an_idle_job_ends_as_a_timeout_and_a_talkative_one_does_not() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let mut quiet = shell(ws.path(), "echo start; exec sleep 60");
    quiet["limits"] = json!({ "idle_timeout": "1s" });
    let started = Instant::now();
    let id = daemon.detach(&quiet);
    let record = daemon.record_of(&id);
    assert_eq!(record["status"], "timeout", "{record}");
    assert_eq!(record["exit_code"], 124);
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("no output for 1s"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_no_leftovers(&id);
    // Output every 0.2 s keeps a 3 s idle timeout from firing.
    let mut talkative = shell(
        ws.path(),
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done",
    );
    talkative["limits"] = json!({ "idle_timeout": "3s" });
    let id = daemon.detach(&talkative);
    let record = daemon.record_of(&id);
    assert_eq!(record["status"], "exited", "{record}");
    // A streamed job takes the limit too.
    let streamed = daemon.job(&json!({
        "argv": ["sleep", "60"], "cwd": ws.path(), "limits": { "idle_timeout": "1s" }
    }));
    assert_eq!(streamed.exit()["status"], "timeout");
    let zero = daemon.post(
        "/v1/jobs",
        &json!({ "argv": ["true"], "cwd": ws.path(), "limits": { "idle_timeout": "0s" } }),
    );
    assert_eq!(zero.status, 400);
    assert_eq!(zero.error_field().as_deref(), Some("limits.idle_timeout"));
}

#[test]
fn a_detached_job_outlives_its_connection_and_ends_at_its_timeout() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("detached-timeout");
    let probe = probe().to_string_lossy().into_owned();
    let mut body = job_body(ws.path(), &[&probe, "ignore-term", &token]);
    body["detach"] = true.into();
    body["limits"] = json!({ "timeout": "10s", "grace": "500ms" });
    // A raw connection that sends the request, reads the answer, and is gone.
    let answer = request(
        &daemon.socket,
        "POST",
        "/v1/jobs",
        "application/json",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(answer.status, 201);
    let id = answer.json()["job_id"].as_str().expect("id").to_string();
    let (out, _, _) = daemon.read_output_until(&id, |out, _| contains(out, "ready"));
    assert!(contains(&out, "ready"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        daemon
            .request("GET", &format!("/v1/jobs/{id}"), None)
            .json()["state"],
        "running",
        "the job ended with its connection"
    );
    let record = daemon.record_of(&id);
    assert_eq!(record["status"], "timeout", "{record}");
    assert!(host_pids_named(&token).is_empty());
    assert_no_leftovers(&id);
}

#[test]
fn another_peer_can_neither_see_nor_touch_a_job() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--allow-uid", &TOOL_UID.to_string()]);
    daemon.open_to_everyone();
    let ws = workspace();
    let id = daemon.detach(&shell(ws.path(), "echo secret; exec sleep 60"));
    daemon.read_output_until(&id, |out, _| contains(out, "secret"));
    let as_other = |method: &str, path: &str, ct: &str, body: Option<&[u8]>| {
        request_as(TOOL_UID, &daemon.socket, method, path, ct, body)
    };
    let json_ct = "application/json";
    for (method, path, ct, body) in [
        ("GET", format!("/v1/jobs/{id}"), json_ct, None),
        ("GET", format!("/v1/jobs/{id}/output"), json_ct, None),
        (
            "POST",
            format!("/v1/jobs/{id}/stdin"),
            "application/octet-stream",
            Some(b"x".as_slice()),
        ),
        ("DELETE", format!("/v1/jobs/{id}"), json_ct, None),
    ] {
        let answer = as_other(method, &path, ct, body);
        assert_eq!(answer.status, 404, "{method} {path}: {answer:?}");
        assert!(!String::from_utf8_lossy(&answer.body).contains("secret"));
    }
    let listing = as_other("GET", "/v1/jobs", json_ct, None).json();
    assert_eq!(listing["jobs"], json!([]), "{listing}");
    // Its own view is untouched; root sees it.
    let shown = daemon
        .request("GET", &format!("/v1/jobs/{id}"), None)
        .json();
    assert_eq!(shown["state"], "running");
    assert_eq!(
        daemon
            .request("DELETE", &format!("/v1/jobs/{id}"), None)
            .status,
        202
    );
    daemon.record_of(&id);
}

#[test]
fn past_the_bound_of_detached_jobs_a_start_is_refused_with_429() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--max-detached", "2"]);
    let ws = workspace();
    let body = shell(ws.path(), "exec sleep 60");
    let first = daemon.detach(&body);
    let second = daemon.detach(&body);
    let mut third = body.clone();
    third["detach"] = true.into();
    let refused = daemon.post("/v1/jobs", &third);
    assert_eq!(refused.status, 429);
    let error = refused.json()["error"].clone();
    assert_eq!(error["code"], "too_many_detached", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2 per user"),
        "{error}"
    );
    assert!(refused.header("retry-after").is_some());
    // Streaming jobs are not bound by it; an ended detached job frees its place.
    assert_eq!(
        daemon
            .job(&json!({ "argv": ["true"], "cwd": ws.path() }))
            .exit()["status"],
        "exited"
    );
    daemon.request("DELETE", &format!("/v1/jobs/{first}"), None);
    daemon.record_of(&first);
    let again = daemon.detach(&body);
    for id in [second, again] {
        daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
        daemon.record_of(&id);
    }
}

#[test]
fn ended_jobs_are_kept_a_bounded_time_and_count() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let by_count = Daemon::start(&["--keep-ended", "2"]);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let id = by_count.detach(&shell(ws.path(), &format!("echo {i}")));
            by_count.record_of(&id);
            id
        })
        .collect();
    let status = |daemon: &Daemon, id: &str| {
        daemon
            .request("GET", &format!("/v1/jobs/{id}"), None)
            .status
    };
    // Only the newest two are kept.
    assert_eq!(status(&by_count, &ids[0]), 404);
    assert_eq!(status(&by_count, &ids[1]), 200);
    assert_eq!(status(&by_count, &ids[2]), 200);
    // And, by age, not for long: seen ended (so kept), then gone.
    let by_age = Daemon::start(&["--keep-for", "2s"]);
    let id = by_age.detach(&shell(ws.path(), "echo aged"));
    by_age.record_of(&id);
    assert!(wait_for(Duration::from_secs(60), || status(&by_age, &id) == 404));
    let listing = by_age.request("GET", "/v1/jobs", None).json();
    assert_eq!(listing["jobs"], json!([]), "{listing}");
}

#[test]
fn a_daemon_killed_with_detached_jobs_leaves_nothing_after_its_successor_starts() {
    if !require_root() {
        return;
    }
    let mut first = Daemon::start(&[]);
    let ws = workspace();
    let token = token("detached-crash");
    let probe = probe().to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = first.detach(&job_body(
            ws.path(),
            &[&probe, "ignore-term", &format!("{token}{i}")],
        ));
        first.read_output_until(&id, |out, _| contains(out, "ready"));
        ids.push(id);
    }
    let old_pid = first.pid();
    nix_kill(old_pid, libc::SIGKILL).expect("kill -9 the daemon");
    first.child.wait().expect("reap");
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().expect("tempdir"));
    let (socket, audit) = (first.socket.clone(), first.audit.clone());
    let second = Daemon::start_at(dir, socket, audit, &[]);
    assert_eq!(second.request("GET", "/v1/health", None).status, 200);
    assert!(
        host_pids_named(&token).is_empty(),
        "jail processes survived the crash"
    );
    for id in &ids {
        assert_no_leftovers(id);
        // The successor knows nothing of them.
        assert_eq!(
            second
                .request("GET", &format!("/v1/jobs/{id}"), None)
                .status,
            404
        );
    }
}

#[test]
fn malformed_handle_requests_name_what_is_wrong() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let id = daemon.detach(&shell(ws.path(), "exec sleep 60"));
    for (query, field) in [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("wait=forever", "wait"),
        ("colour=red", "colour"),
        ("since=1&since=2", "since"),
    ] {
        let answer = daemon.request("GET", &format!("/v1/jobs/{id}/output?{query}"), None);
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.error_field().as_deref(), Some(field), "{query}");
    }
    let answer = daemon.write_stdin(&id, b"x", "close=maybe");
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error_field().as_deref(), Some("close"));
    // A streamed job has no handle to read.
    let mut streamed = daemon.submit(&json!({ "argv": ["sleep", "60"], "cwd": ws.path() }));
    let streamed_id = streamed.until("started").expect("started")["job_id"]
        .as_str()
        .expect("id")
        .to_string();
    let answer = daemon.request("GET", &format!("/v1/jobs/{streamed_id}/output"), None);
    assert_eq!(answer.status, 409);
    assert_eq!(answer.json()["error"]["code"], "not_detached");
    assert_eq!(
        daemon
            .request("GET", "/v1/jobs/nonexistent/output", None)
            .status,
        404
    );
    // A long poll returns when its wait is over, with nothing new.
    let started = Instant::now();
    let quiet = daemon.output(&id, "wait=1s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(quiet["stdout"]["chunks"], json!([]));
    daemon.request("DELETE", &format!("/v1/jobs/{streamed_id}"), None);
    daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    daemon.record_of(&id);
    streamed.read_to_end();
}

/// Post an exec into job `id` and read its whole event stream.
fn exec(daemon: &Daemon, id: &str, body: &serde_json::Value) -> toolbox_tests::daemon::JobStream {
    let mut stream = toolbox_tests::daemon::JobStream::open_at(
        &daemon.socket,
        &format!("/v1/jobs/{id}/exec"),
        body,
    );
    stream.read_to_end();
    stream
}

#[test]
fn a_command_execd_into_a_job_reaches_its_loopback_server_and_a_separate_job_cannot() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let probe = probe().to_string_lossy().into_owned();
    let server = daemon.detach(&job_body(
        ws.path(),
        &[&probe, "serve", "127.0.0.1:3000", "served-from-the-job"],
    ));
    daemon.read_output_until(&server, |out, _| contains(out, "listening"));
    let fetch = json!({ "argv": [probe, "connect", "127.0.0.1:3000"] });
    let inside = exec(&daemon, &server, &fetch);
    assert_eq!(inside.exit()["status"], "exited", "{:?}", inside.exit());
    let answer: serde_json::Value =
        serde_json::from_slice(&inside.output("stdout")).expect("probe json");
    assert_eq!(answer["connected"], true, "{answer}");
    assert_eq!(answer["received"], "served-from-the-job");
    assert_eq!(inside.exit()["exec_of"], server.as_str());
    // A job of its own has a loopback of its own: nothing listens there.
    let outside = daemon.job(&job_body(ws.path(), &[&probe, "connect", "127.0.0.1:3000"]));
    let answer: serde_json::Value =
        serde_json::from_slice(&outside.output("stdout")).expect("probe json");
    assert_eq!(answer["connected"], false, "{answer}");
    assert_eq!(answer["errno"], libc::ECONNREFUSED, "{answer}");
    // Detached, the exec'd command is a handle like any job's.
    let mut detached = fetch.clone();
    detached["detach"] = true.into();
    let answer = daemon.post(&format!("/v1/jobs/{server}/exec"), &detached);
    assert_eq!(answer.status, 201, "{answer:?}");
    let fetched = answer.json()["job_id"].as_str().expect("id").to_string();
    let record = daemon.record_of(&fetched);
    assert_eq!(record["status"], "exited", "{record}");
    assert_eq!(record["exec_of"], server.as_str());
    let (out, _, _) = daemon.read_output_until(&fetched, |_, _| false);
    assert!(
        contains(&out, "served-from-the-job"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    daemon.request("DELETE", &format!("/v1/jobs/{server}"), None);
    daemon.record_of(&server);
    assert_no_leftovers(&server);
}

#[test]
fn an_execd_command_gets_exactly_the_jobs_jail() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let probe = probe().to_string_lossy().into_owned();
    let mut body = shell(
        ws.path(),
        &format!("{probe} status; echo; echo from-the-job > /tmp/left; cat /proc/self/oom_score_adj; exec sleep 600"),
    );
    body["mounts"] = json!([{ "path": probe, "mode": "ro" }]);
    let id = daemon.detach(&body);
    let (out, _, _) = daemon.read_output_until(&id, |out, _| {
        String::from_utf8_lossy(out).lines().count() >= 3
    });
    let text = String::from_utf8_lossy(&out).into_owned();
    let mut lines = text.lines();
    let job: serde_json::Value = serde_json::from_str(lines.next().expect("status")).expect("json");
    let job_oom = lines.nth(1).expect("oom score").to_string();
    let execd = exec(
        &daemon,
        &id,
        &json!({ "argv": ["sh", "-c", format!("{probe} status; echo; cat /tmp/left /proc/self/oom_score_adj")] }),
    );
    assert_eq!(execd.exit()["status"], "exited", "{:?}", execd.exit());
    let text = String::from_utf8_lossy(&execd.output("stdout")).into_owned();
    let mut lines = text.lines();
    let inside: serde_json::Value =
        serde_json::from_str(lines.next().expect("status")).expect("json");
    for field in [
        "ns",
        "cgroup",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapInh",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Uid",
        "Gid",
        "Groups",
        "hostname",
        "sid_is_self",
    ] {
        assert_eq!(
            inside[field], job[field],
            "{field}: exec'd {inside} vs job {job}"
        );
    }
    assert_eq!(inside["CapEff"], "0000000000000000");
    assert_eq!(inside["Seccomp"], "2");
    // The same /tmp, and the OOM score the tool has (PID 1 lowered only its own).
    assert_eq!(lines.nth(1), Some("from-the-job"));
    assert_eq!(lines.next(), Some(job_oom.as_str()));
    // What the record says was enforced is the job's.
    let isolation = &execd.exit()["isolation"];
    assert_eq!(isolation["seccomp"], true);
    assert_eq!(isolation["capabilities"], "none");
    assert_eq!(isolation["landlock_fs"], true);
    daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    daemon.record_of(&id);
}

#[test]
fn an_execd_command_that_daemonizes_returns_at_once_and_dies_with_its_job() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let token = token("exec-daemonize");
    let probe = probe().to_string_lossy().into_owned();
    let mut body = shell(ws.path(), "exec sleep 600");
    body["mounts"] = json!([{ "path": probe, "mode": "ro" }]);
    let id = daemon.detach(&body);
    let started = Instant::now();
    let execd = exec(
        &daemon,
        &id,
        &json!({ "argv": [probe, "daemonize", token] }),
    );
    // Its sleepers hold its stdout, and still the answer comes when the command is over.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(execd.exit()["status"], "exited", "{:?}", execd.exit());
    assert!(
        !host_pids_named(&token).is_empty(),
        "what it left in the background runs on in the job"
    );
    daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    daemon.record_of(&id);
    assert!(
        wait_for(Duration::from_secs(5), || host_pids_named(&token)
            .is_empty()),
        "an exec'd command's processes outlived the job"
    );
    assert_no_leftovers(&id);
}

#[test]
fn exec_takes_only_tighter_limits_and_only_into_a_running_job_of_ones_own() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&["--allow-uid", &TOOL_UID.to_string()]);
    daemon.open_to_everyone();
    let ws = workspace();
    let mut body = shell(ws.path(), "exec sleep 600");
    body["limits"] = json!({ "timeout": "60s" });
    let id = daemon.detach(&body);
    let path = format!("/v1/jobs/{id}/exec");
    for (request, status, field) in [
        (
            json!({ "argv": ["true"], "policy": "strict" }),
            400,
            "policy",
        ),
        (
            json!({ "argv": ["true"], "network": "host" }),
            400,
            "network",
        ),
        (json!({ "argv": ["true"], "mounts": [] }), 400, "mounts"),
        (
            json!({ "argv": ["true"], "limits": { "memory": "1G" } }),
            400,
            "limits.memory",
        ),
        (
            json!({ "argv": ["true"], "limits": { "timeout": "2m" } }),
            403,
            "limits.timeout",
        ),
        (json!({ "argv": [] }), 400, "argv"),
        (json!({ "argv": ["true"], "cwd": "relative" }), 400, "cwd"),
        (json!({ "argv": ["true"], "colour": 1 }), 400, "colour"),
    ] {
        let answer = daemon.post(&path, &request);
        assert_eq!(answer.status, status, "{request}: {answer:?}");
        assert_eq!(answer.error_field().as_deref(), Some(field), "{request}");
    }
    // Its own timeout ends the command, not the job.
    let timed = exec(
        &daemon,
        &id,
        &json!({ "argv": ["sleep", "60"], "limits": { "timeout": "1s", "grace": "500ms" } }),
    );
    assert_eq!(timed.exit()["status"], "timeout", "{:?}", timed.exit());
    let shown = daemon
        .request("GET", &format!("/v1/jobs/{id}"), None)
        .json();
    assert_eq!(shown["state"], "running");
    // Nobody else's.
    let other = request_as(
        TOOL_UID,
        &daemon.socket,
        "POST",
        &path,
        "application/json",
        Some(br#"{"argv":["true"]}"#),
    );
    assert_eq!(other.status, 404, "{other:?}");
    // Not into an ended job.
    daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    daemon.record_of(&id);
    let late = daemon.post(&path, &json!({ "argv": ["true"] }));
    assert_eq!(late.status, 409, "{late:?}");
    assert_eq!(late.json()["error"]["code"], "job_not_running");
}

#[test]
fn an_execd_commands_output_is_whole_though_what_it_left_holds_its_pipes() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    let id = daemon.detach(&shell(ws.path(), "exec sleep 600"));
    // 3 MB through a 1 MiB pipe, the last of it still in the pipe when the shell exits, and
    // a sleeper in the background holding stdout open for good.
    let execd = exec(
        &daemon,
        &id,
        &json!({ "argv": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo END; sleep 600 &"] }),
    );
    let record = execd.exit();
    assert_eq!(record["status"], "exited", "{record}");
    assert_eq!(record["stdout_bytes"], 3_000_004, "{record}");
    let out = execd.output("stdout");
    assert!(out.ends_with(b"xxxxEND\n"), "the tail is cut");
    daemon.request("DELETE", &format!("/v1/jobs/{id}"), None);
    daemon.record_of(&id);
    assert_no_leftovers(&id);
}
