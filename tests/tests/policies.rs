//! Policies: the shipped ones load and run; broken files are refused with the line and a
//! reason; a request may tighten every limit, loosen it only up to the policy's bound (from
//! the command line and over the socket alike), and never widen the filesystem or network
//! where the policy does not allow it; `strict` really makes the workspace read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use toolbox_tests::daemon::{job_body, Daemon};
use toolbox_tests::{policies_dir, require_root, toolbox, workspace, Run};

const SHIPPED: [&str; 8] = [
    "default", "strict", "network", "build", "pypi", "npm", "crates", "github",
];

#[test]
fn every_shipped_policy_checks_and_runs() {
    if !require_root() {
        return;
    }
    let files: Vec<PathBuf> = SHIPPED
        .iter()
        .map(|name| policies_dir().join(format!("{name}.toml")))
        .collect();
    let out = Command::new(toolbox())
        .args(["policy", "check"])
        .args(&files)
        .output()
        .expect("policy check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": ok").count(), SHIPPED.len(), "{stdout}");
    let ws = workspace();
    for name in SHIPPED {
        let job = Run::command(ws.path(), &["/bin/true"])
            .without_probe()
            .opts(&["--policy", name])
            .run();
        assert_eq!(job.code, 0, "policy {name}: {job:?}");
        assert_eq!(job.record()["policy"]["name"], name);
    }
}

/// The default policy with one edit: `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(policies_dir().join("default.toml")).expect("default");
    assert!(text.contains(from), "default.toml has no {from:?}");
    text.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the edited file"))
}

#[test]
fn broken_policy_files_each_get_their_own_error_with_the_line() {
    // (what, edit from, edit to, the line that is wrong, words the error must have)
    let cases: [(&str, &str, &str, &str, &str); 11] = [
        (
            "unknown seccomp profile",
            "profile = \"default\"",
            "profile = \"paranoid\"",
            "paranoid",
            "unknown variant `paranoid`",
        ),
        (
            "allowing a jail call",
            "allow = []",
            "allow = [\"mount\"]",
            "allow = [\"mount\"]",
            "can never be allowed",
        ),
        (
            "unknown key",
            "\npids = 1024",
            "\npids = 1024\ncolour = \"red\"",
            "colour",
            "unknown field `colour`",
        ),
        (
            "wrong type",
            "\npids = 1024",
            "\npids = \"many\"",
            "pids = \"many\"",
            "invalid type",
        ),
        (
            "relative path",
            "ro = []",
            "ro = [\"relative/dir\"]",
            "relative/dir",
            "absolute",
        ),
        (
            "a .. component",
            "ro = []",
            "ro = [\"/usr/../etc\"]",
            "/usr/../etc",
            "..",
        ),
        (
            "negative limit",
            "\npids = 1024",
            "\npids = -1",
            "pids = -1",
            "invalid value",
        ),
        (
            "absurd limit",
            "memory = \"2G\"",
            "memory = \"900T\"",
            "memory = \"900T\"",
            "memory",
        ),
        (
            "duplicate key",
            "\npids = 1024",
            "\npids = 1024\npids = 512",
            "pids = 512",
            "duplicate key",
        ),
        (
            "rw over /usr",
            "rw = []",
            "rw = [\"/usr\"]",
            "rw = [\"/usr\"]",
            "system",
        ),
        (
            "bound below the limit",
            "memory = \"8G\"",
            "memory = \"512M\"",
            "memory = \"512M\"",
            "below",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, from, to, bad_line, words) in cases {
        let text = edited(from, to);
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, &text).expect("write");
        let out = Command::new(toolbox())
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .expect("policy check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(&file.display().to_string()),
            "{what}: no path in {stderr}"
        );
        let line = line_of(&text, bad_line);
        assert!(
            stderr.contains(&format!("line {line}")),
            "{what}: the error should point at line {line}: {stderr}"
        );
        assert!(stderr.contains(words), "{what}: {words:?} not in {stderr}");
    }
}

/// (option, a tighter value, a looser value within the default policy's bound, a value
/// past the bound, the bound as the message gives it, the socket's limits key)
const LIMITS: [(&str, &str, &str, &str, &str, &str); 6] = [
    ("--timeout", "10s", "10m", "2h", "30m", "timeout"),
    ("--grace", "1s", "10s", "5m", "30s", "grace"),
    ("--memory", "256M", "4G", "64G", "8G", "memory"),
    ("--cpus", "0.5", "3", "8", "4", "cpus"),
    ("--pids", "64", "2048", "100000", "4096", "pids"),
    ("--output-limit", "64K", "8M", "512M", "16M", "output"),
];

#[test]
fn a_request_tightens_freely_and_loosens_only_to_the_bound_from_the_command_line() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    for (option, tighter, within, past, bound, _) in LIMITS {
        for ok in [tighter, within] {
            let job = Run::command(ws.path(), &["/bin/true"])
                .opts(&[option, ok])
                .run();
            assert_eq!(job.code, 0, "{option} {ok}: {job:?}");
        }
        let job = Run::command(ws.path(), &["/bin/true"])
            .opts(&[option, past])
            .run();
        assert_eq!(job.code, 125, "{option} {past} should be refused: {job:?}");
        let name = option.trim_start_matches("--");
        assert!(
            job.stderr.contains(name) && job.stderr.contains(past) && job.stderr.contains(bound),
            "{option} {past}: the refusal should name the field, the value and the bound {bound}: {}",
            job.stderr
        );
    }
    let refused = |opts: &[&str], words: &str| {
        let job = Run::command(ws.path(), &["/bin/true"]).opts(opts).run();
        assert_eq!(job.code, 125, "{opts:?}: {job:?}");
        assert!(job.stderr.contains(words), "{opts:?}: {}", job.stderr);
    };
    refused(&["--net", "host"], "allows loopback");
    refused(
        &["--policy", "strict", "--net", "loopback"],
        "policy strict",
    );
    refused(&["--rw", "/root"], "only paths under");
    let job = Run::command(ws.path(), &["/bin/true"])
        .without_probe()
        .opts(&["--policy", "strict", "--ro", "/usr/share"])
        .run();
    assert_eq!(job.code, 125, "{job:?}");
    assert!(job.stderr.contains("no extra paths"), "{}", job.stderr);
    let job = Run::command(ws.path(), &["/bin/true"])
        .opts(&["--net", "loopback"])
        .run();
    assert_eq!(job.code, 0, "{job:?}");
}

#[test]
fn a_request_tightens_freely_and_loosens_only_to_the_bound_over_the_socket() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start(&[]);
    let ws = workspace();
    for (option, tighter, within, past, bound, key) in LIMITS {
        let value = |v: &str| -> serde_json::Value {
            match key {
                "cpus" | "pids" => serde_json::from_str(v).expect("number"),
                _ => json!(v),
            }
        };
        for ok in [tighter, within] {
            let mut body = job_body(ws.path(), &["/bin/true"]);
            body["limits"] = json!({ key: value(ok) });
            let job = daemon.job(&body);
            assert_eq!(job.status, 200, "{key} {ok}: {:?}", job.refusal);
            assert_eq!(job.exit()["exit_code"], 0, "{key} {ok}");
        }
        let mut body = job_body(ws.path(), &["/bin/true"]);
        body["limits"] = json!({ key: value(past) });
        let answer = daemon.request("POST", "/v1/jobs", Some(&body.to_string()));
        assert_eq!(
            answer.status,
            403,
            "{option} {past}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer.error_field().as_deref(),
            Some(format!("limits.{key}").as_str())
        );
        let message = answer.json()["error"]["message"]
            .as_str()
            .expect("message")
            .to_string();
        assert!(message.contains(bound), "{key}: {message}");
    }
    let mut body = job_body(ws.path(), &["/bin/true"]);
    body["network"] = json!("host");
    let answer = daemon.request("POST", "/v1/jobs", Some(&body.to_string()));
    assert_eq!(answer.status, 403);
    assert_eq!(answer.error_field().as_deref(), Some("network"));
    let mut body = job_body(ws.path(), &["/bin/true"]);
    body["mounts"] = json!([{ "path": "/root", "mode": "rw" }]);
    let answer = daemon.request("POST", "/v1/jobs", Some(&body.to_string()));
    assert_eq!(answer.status, 403);
    assert_eq!(answer.error_field().as_deref(), Some("mounts"));
}

#[test]
fn strict_makes_the_workspace_read_only() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let target = ws.path().join("written");
    let script = format!(
        "echo x > {} && echo workspace-writable; echo y > /tmp/t && echo tmp-writable",
        target.display()
    );
    let job = Run::command(ws.path(), &["sh", "-c", &script])
        .without_probe()
        .opts(&["--policy", "strict"])
        .run();
    let out = job.stdout_text();
    assert!(!out.contains("workspace-writable"), "{out}");
    assert!(
        out.contains("tmp-writable"),
        "strict keeps a private /tmp: {out}"
    );
    assert!(!target.exists());
    // strict's seccomp profile also refuses personality (setarch -R turns ASLR off with it).
    let aslr = Run::command(ws.path(), &["setarch", "-R", "true"])
        .without_probe()
        .opts(&["--policy", "strict"])
        .run();
    assert_ne!(aslr.code, 0, "{aslr:?}");
    assert!(
        aslr.stderr.contains("Operation not permitted"),
        "{}",
        aslr.stderr
    );
    assert_eq!(aslr.record()["isolation"]["seccomp_profile"], "strict");
    let aslr = Run::command(ws.path(), &["setarch", "-R", "true"]).run();
    assert_eq!(
        aslr.code, 0,
        "control: the default profile allows it: {aslr:?}"
    );
    // Control: the default policy writes there.
    let job = Run::command(ws.path(), &["sh", "-c", &script]).run();
    assert!(job.stdout_text().contains("workspace-writable"), "{job:?}");
}

#[test]
fn sighup_reloads_keeps_running_jobs_on_their_policy_and_survives_a_broken_edit() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let custom = dir.path().join("custom.toml");
    let default = std::fs::read_to_string(policies_dir().join("default.toml")).expect("default");
    let with_pids = |pids: u32| default.replacen("\npids = 1024", &format!("\npids = {pids}"), 1);
    std::fs::write(&custom, with_pids(100)).expect("write");
    // Another file that is broken from the start must not take the rest down.
    std::fs::write(dir.path().join("broken.toml"), "limits = 3\n").expect("write");
    let policies = dir.path().to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policies", &policies]);
    let ws = workspace();
    let body = |argv: &[&str]| {
        let mut body = job_body(ws.path(), argv);
        body["policy"] = json!("custom");
        body
    };
    let pids_of = |job: &toolbox_tests::daemon::JobStream| {
        job.exit()["isolation"]["cgroup_limits"]["pids"]
            .as_u64()
            .expect("pids")
    };
    assert_eq!(pids_of(&daemon.job(&body(&["/bin/true"]))), 100);
    let broken = daemon.request(
        "POST",
        "/v1/jobs",
        Some(&json!({"argv": ["true"], "cwd": ws.path(), "policy": "broken"}).to_string()),
    );
    assert_eq!(broken.status, 400);
    assert!(String::from_utf8_lossy(&broken.body).contains("cannot be used"));

    // A job that starts before the edit keeps the policy it started with.
    let mut running = daemon.submit(&body(&["sleep", "1"]));
    running.until("started").expect("started");
    std::fs::write(&custom, with_pids(50)).expect("edit");
    toolbox_tests::daemon::nix_kill(daemon.pid(), libc::SIGHUP).expect("SIGHUP");
    assert!(toolbox_tests::wait_for(
        std::time::Duration::from_secs(20),
        || { pids_of(&daemon.job(&body(&["/bin/true"]))) == 50 }
    ));
    running.read_to_end();
    assert_eq!(
        pids_of(&running),
        100,
        "the running job changed policy mid-run"
    );

    // A broken edit keeps the last good version, and the log says so.
    std::fs::write(&custom, "[limits]\npids = \"many\"\n").expect("break");
    toolbox_tests::daemon::nix_kill(daemon.pid(), libc::SIGHUP).expect("SIGHUP");
    assert!(
        toolbox_tests::wait_for(std::time::Duration::from_secs(20), || daemon
            .log()
            .contains("keeping the last good version")),
        "{}",
        daemon.log()
    );
    assert_eq!(pids_of(&daemon.job(&body(&["/bin/true"]))), 50);
}

#[test]
fn a_policy_can_add_tmpfs_mounts_and_mask_paths() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("masking.toml");
    let text = edited(
        "tmpfs = [\"/var/tmp\"]",
        "tmpfs = [\"/var/tmp\", \"/srv/scratch\"]",
    )
    .replacen(
        "masked = []",
        "masked = [\"/usr/share/doc\", \"/usr/share/common-licenses/GPL-3\"]",
        1,
    );
    std::fs::write(&file, text).expect("write");
    assert!(Path::new("/usr/share/common-licenses/GPL-3").is_file());
    assert!(std::fs::read_dir("/usr/share/doc")
        .expect("doc")
        .next()
        .is_some());
    let ws = workspace();
    let script = "echo doc=$(ls -A /usr/share/doc | wc -l); \
                  echo gpl3=$(wc -c < /usr/share/common-licenses/GPL-3); \
                  echo x > /var/tmp/t && echo var-tmp-writable; \
                  echo x > /srv/scratch/t && echo scratch-writable; \
                  echo listed=$(ls /usr/share/common-licenses | grep -cx GPL-3); \
                  mkdir /usr/share/doc/new 2>/dev/null || echo mask-not-writable";
    let job = Run::command(ws.path(), &["sh", "-c", script])
        .opts(&["--policy", file.to_str().expect("utf8")])
        .run();
    let out = job.stdout_text();
    // The masked directory is empty and unwritable, the masked file reads empty (its
    // name stays), /var/tmp and the added /srv/scratch are private writable tmpfs.
    for expected in [
        "doc=0",
        "gpl3=0",
        "var-tmp-writable",
        "scratch-writable",
        "listed=1",
        "mask-not-writable",
    ] {
        assert!(
            out.lines().any(|l| l == expected),
            "no {expected:?} in {out:?}: {job:?}"
        );
    }
    // Control: the default policy shows both.
    let job = Run::command(ws.path(), &["sh", "-c", "ls -A /usr/share/doc | wc -l"]).run();
    assert_ne!(job.stdout_text().trim(), "0");
}

#[test]
fn a_fixed_user_policy_runs_every_job_as_its_id() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fixed.toml");
    let text = edited("\nrun_as = \"owner\"\n", "\nrun_as = \"fixed\"\n")
        .replacen("fallback_uid = 65534", "fallback_uid = 54329", 1)
        .replacen("fallback_gid = 65534", "fallback_gid = 54329", 1);
    std::fs::write(&file, text).expect("write");
    let policy = file.to_str().expect("utf8");
    let ws = workspace();
    let job = Run::command(ws.path(), &["id", "-u"])
        .opts(&["--policy", policy])
        .run();
    assert_eq!(job.stdout_text().trim(), "54329", "{job:?}");
    // Control: the default runs it as the workspace's owner.
    let job = Run::command(ws.path(), &["id", "-u"]).run();
    assert_eq!(
        job.stdout_text().trim(),
        toolbox_tests::TOOL_UID.to_string()
    );
    // Asking for another id is loosening what the policy fixed: refused.
    let job = Run::command(ws.path(), &["id", "-u"])
        .opts(&["--policy", policy, "--user", "54330"])
        .run();
    assert_eq!(job.code, 125, "{job:?}");
    assert!(job.stderr.contains("fixed 54329:54329"), "{}", job.stderr);
}
