//! The command line: exit statuses as timeout(1) and docker run give them, clear messages
//! for bad input, Ctrl-C as a cancel, stdin and the output streams passed through.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toolbox_tests::{require_root, toolbox, workspace, Run};

#[test]
fn exit_statuses_follow_the_tool_and_the_conventions() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["/bin/true"], 0, "exited"),
        (&["/bin/sh", "-c", "exit 3"], 3, "exited"),
        (&["/bin/sh", "-c", "kill -TERM $$"], 143, "signaled"),
        (&["/bin/sh", "-c", "kill -KILL $$"], 137, "signaled"),
        (&["no-such-command-anywhere"], 127, "setup_error"),
        (&["/etc/passwd"], 126, "setup_error"),
    ];
    for (argv, code, status) in cases {
        let job = Run::command(ws.path(), argv).run();
        assert_eq!(job.code, *code, "{argv:?}: {job:?}");
        assert_eq!(job.status(), *status, "{argv:?}");
    }
    let missing = Run::command(ws.path(), &["no-such-command-anywhere"]).run();
    assert!(
        missing
            .stderr
            .contains("command not found in the jail: no-such-command-anywhere"),
        "{}",
        missing.stderr
    );
}

#[test]
fn bad_options_get_exit_125_and_a_message_naming_the_problem() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let ws_path = ws.path().to_str().expect("utf8");
    let cases: &[(&[&str], &str)] = &[
        (&["--memory", "lots"], "not a size"),
        (&["--timeout", "forever"], "not a duration"),
        (&["--timeout", "0"], "--timeout"),
        (&["--memory", "1K"], "--memory"),
        (&["--ro", "relative/path"], "must be an absolute path"),
        (&["--rw", "/etc"], "must not be writable"),
        (&["--net", "internet"], "not a network mode"),
        (&["-C", "/nonexistent/workspace"], "/nonexistent/workspace"),
        (&["-C", "/usr"], "system directory"),
        (&["--policy", "no-such-policy"], "not found"),
        (&["--user", "root"], "not a numeric id"),
    ];
    for (options, message) in cases {
        let mut command = Command::new(toolbox());
        command.arg("run");
        if !options.contains(&"-C") {
            command.args(["-C", ws_path]);
        }
        let output = command
            .args(*options)
            .args(["--", "/bin/true"])
            .output()
            .expect("run toolbox");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(125), "{options:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{options:?}: expected {message:?} in {stderr:?}"
        );
    }
    let no_command = Command::new(toolbox())
        .args(["run", "-C", ws_path, "--"])
        .output()
        .expect("run");
    assert_eq!(no_command.status.code(), Some(125));
}

#[test]
fn a_shim_that_cannot_be_executed_is_refused_with_its_path_and_why() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let mark = ws.path().join("ran");
    for (mode, reason) in [(0o644, "Permission denied"), (0o755, "Exec format error")] {
        let shim = ws.path().join("not-a-shim");
        // Written by a child process, not by this one: a file this (multi-threaded) test
        // process had open for writing could be inherited by a fork of another test, and
        // exec'ing it would then fail with ETXTBSY instead of the reason under test.
        let written = Command::new("/bin/sh")
            .args([
                "-c",
                "printf 'not a binary\\n' >\"$1\" && chmod \"$2\" \"$1\"",
                "-",
            ])
            .arg(&shim)
            .arg(format!("{mode:o}"))
            .status()
            .expect("write the fake shim");
        assert!(written.success());
        let job = Run::command(ws.path(), &["/bin/sh", "-c", "echo > ran"])
            .caller_env("TOOLBOX_SHIM", shim.to_str().expect("utf-8"))
            .run();
        assert_eq!(job.code, 125, "{job:?}");
        assert!(
            job.stderr.contains("start the exec shim")
                && job.stderr.contains("not-a-shim")
                && job.stderr.contains(reason),
            "{job:?}"
        );
        assert!(!mark.exists(), "the tool ran");
    }
}

#[test]
fn toolbox_run_refuses_without_root_and_says_what_to_do() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let job = Run::command(ws.path(), &["/bin/true"])
        .as_uid(toolbox_tests::TOOL_UID)
        .run();
    assert_eq!(job.code, 125, "{job:?}");
    assert!(
        job.stderr.contains("needs root") && job.stderr.contains("sudo"),
        "{}",
        job.stderr
    );
}

#[test]
fn ctrl_c_cancels_the_whole_job() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let mark = toolbox_tests::token("ctrlc");
    let child = Run::probe(ws.path(), &["sleep", "30", &mark])
        .opts(&["--grace", "1s"])
        .spawn();
    // Once the tool runs (toolbox is past its start-up, however slow the machine)...
    assert!(
        toolbox_tests::wait_for(Duration::from_secs(20), || {
            !toolbox_tests::host_probe_pids(&mark).is_empty()
        }),
        "the job never started"
    );
    // ... Ctrl-C. Our own child, not yet reaped: the pid is still its.
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let job = toolbox_tests::finish(child.wait_with_output().expect("wait"));
    assert_eq!(job.status(), "cancelled", "{job:?}");
    assert_eq!(job.code, 130);
    assert!(
        job.stderr
            .contains("[toolbox: cancelled: every process got SIGTERM"),
        "{}",
        job.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    assert!(
        toolbox_tests::host_probe_pids(&mark).is_empty(),
        "the tool outlived the cancelled job"
    );
}

#[test]
fn stdin_and_both_output_streams_pass_through() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let mut child = Command::new(toolbox())
        .args(["run", "-C"])
        .arg(ws.path())
        .args(["--", "/bin/sh", "-c", "cat; echo to-stderr >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through stdin\n")
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "through stdin\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "to-stderr\n");
}

#[test]
fn doctor_reports_what_this_host_enforces() {
    if !require_root() {
        return;
    }
    let output = Command::new(toolbox())
        .arg("doctor")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for feature in [
        "namespaces",
        "cgroups",
        "landlock",
        "seccomp",
        "user namespaces",
        "exec shim",
    ] {
        assert!(
            text.contains(feature),
            "doctor does not report {feature}: {text}"
        );
    }
    // Not root: doctor says so and fails.
    let mut as_user = Command::new(toolbox());
    as_user.arg("doctor");
    std::os::unix::process::CommandExt::uid(&mut as_user, toolbox_tests::TOOL_UID);
    let output = as_user.output().expect("doctor");
    assert_ne!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("MISSING"));
}

#[test]
fn policy_check_accepts_the_shipped_policy_and_names_the_line_of_a_bad_one() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/default.toml");
    let ok = Command::new(toolbox())
        .args(["policy", "check", shipped])
        .output()
        .expect("check");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(shipped)
        .expect("read")
        .replace("\npids = 1024", "\npids = \"many\"");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(toolbox())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line"),
        "{stderr}"
    );
}

#[test]
fn seccomp_filters_inherited_from_the_caller_are_reported() {
    if !require_root() {
        return;
    }
    // A caller that runs toolbox under a seccomp filter of its own (as a systemd unit's
    // ProtectHostname= or a container's profile would): one that allows everything.
    #[allow(unsafe_code)]
    fn under_a_filter(command: &mut Command) {
        // SAFETY: between fork and exec the closure only calls prctl (async-signal-safe)
        // with a filter program that lives in static memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, || {
                static ALLOW: [libc::sock_filter; 1] = [libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                }];
                let program = libc::sock_fprog {
                    len: 1,
                    filter: ALLOW.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &program as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let ws = workspace();
    let mut run = Command::new(toolbox());
    run.args(["run", "--local", "--json", "-C"])
        .arg(ws.path())
        .args(["--", "/bin/true"]);
    under_a_filter(&mut run);
    let job = toolbox_tests::finish(run.output().expect("run toolbox"));
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(
        job.record()["isolation"]["seccomp_inherited_filters"],
        1,
        "{job:?}"
    );
    let plain = Run::command(ws.path(), &["/bin/true"]).run();
    assert_eq!(plain.record()["isolation"]["seccomp_inherited_filters"], 0);
    let mut doctor = Command::new(toolbox());
    doctor.arg("doctor");
    under_a_filter(&mut doctor);
    let text = String::from_utf8_lossy(&doctor.output().expect("doctor").stdout).into_owned();
    assert!(
        text.contains("1 filter(s) inherited"),
        "doctor does not say so: {text}"
    );
}

#[test]
fn the_record_names_its_policy_by_the_hash_policy_show_prints() {
    if !require_root() {
        return;
    }
    // The record's hash is computed late (after the job ran): it must still be there, and
    // be the SHA-256 of the effective policy `policy show` prints under its header.
    let workspace = workspace();
    let job = Run::command(workspace.path(), &["true"])
        .without_probe()
        .run();
    let recorded = job.record()["policy"]["sha256"]
        .as_str()
        .expect("the record's policy.sha256")
        .to_string();
    let show = Command::new(toolbox())
        .args(["policy", "show", "default"])
        .output()
        .expect("policy show");
    let text = String::from_utf8(show.stdout).expect("utf-8");
    let (header, body) = text.split_once('\n').expect("a header line");
    assert_eq!(header, format!("# policy default (sha256 {recorded})"));
    let mut sum = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    sum.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let summed = sum.wait_with_output().expect("sha256sum");
    let summed = String::from_utf8_lossy(&summed.stdout);
    assert_eq!(summed.split_whitespace().next(), Some(recorded.as_str()));
}
