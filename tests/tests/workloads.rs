//! Real agent work under the default policy, with the real tools (Python, script(1), a JVM;
//! `scripts/test.sh` installs them): what a jail must provide for everyday tasks to behave
//! as they do outside it. The cgroup v2 VM tier, whose guest has none of them, leaves this
//! suite out; what of it needs no such tool is checked there through limits.rs.

use toolbox_tests::{require_root, require_tool, workspace, Run};

#[test]
fn a_job_has_pseudo_terminals_of_its_own() {
    if !require_root() {
        return;
    }
    let (Some(python), Some(script)) = (require_tool("python3"), require_tool("script")) else {
        return;
    };
    let ws = workspace();
    // openpty, a byte through it, and the slave's name, from Python's pty module.
    let code = "import os, pty\n\
                m, s = pty.openpty()\n\
                os.write(m, b'ping\\n')\n\
                print(os.ttyname(s), os.read(s, 5))\n\
                print(sorted(os.listdir('/dev/pts')))";
    let job = Run::command(ws.path(), &[python.to_str().expect("path"), "-c", code])
        .without_probe()
        .run();
    assert_eq!(job.code, 0, "{job:?}");
    // The jail's own devpts instance: its first pty is 0, and none of the host's shows.
    assert_eq!(
        job.stdout_text(),
        "/dev/pts/0 b'ping\\n'\n['0', 'ptmx']\n",
        "{job:?}"
    );
    // script(1) runs a command on a pty it allocates: the command sees a terminal.
    let job = Run::command(
        ws.path(),
        &[script.to_str().expect("path"), "-qec", "tty", "/dev/null"],
    )
    .without_probe()
    .run();
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text().trim(), "/dev/pts/0", "{job:?}");
}

#[test]
fn a_jvm_sizes_itself_by_the_jobs_limits() {
    if !require_root() {
        return;
    }
    let Some(java) = require_tool("java") else {
        return;
    };
    let ws = workspace();
    let job = Run::command(
        ws.path(),
        &[
            java.to_str().expect("path"),
            "-XshowSettings:system",
            "-XX:+PrintFlagsFinal",
            "-version",
        ],
    )
    .without_probe()
    .opts(&["--cpus", "1", "--memory", "512M"])
    .run();
    assert_eq!(job.code, 0, "{job:?}");
    let all = format!("{}{}", job.stdout_text(), job.stderr);
    assert!(all.contains("Effective CPU Count: 1"), "{all}");
    assert!(all.contains("Memory Limit: 512.00M"), "{all}");
    // The default heap is a quarter of the memory the JVM sees: 128 MiB of the job's
    // 512M, not a quarter of the host's.
    let heap = all
        .lines()
        .find(|l| l.contains(" MaxHeapSize "))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no MaxHeapSize in {all}"));
    assert_eq!(heap, 128 << 20, "{all}");
}

#[test]
fn javac_and_maven_find_their_configuration_in_etc() {
    if !require_root() {
        return;
    }
    let (Some(java), Some(mvn)) = (require_tool("java"), require_tool("mvn")) else {
        return;
    };
    let ws = workspace();
    // Debian's JDK reads conf/security/java.security through a link into /etc; javac (the
    // source launcher compiles first) crashed at start when it dangled.
    let source = ws.path().join("Hello.java");
    std::fs::write(
        &source,
        "public class Hello { public static void main(String[] a) { \
         System.out.println(\"hello from \" + System.getProperty(\"java.version\")); } }",
    )
    .expect("write source");
    let job = Run::command(
        ws.path(),
        &[java.to_str().expect("path"), source.to_str().expect("path")],
    )
    .without_probe()
    .run();
    assert_eq!(job.code, 0, "{job:?}");
    assert!(job.stdout_text().starts_with("hello from "), "{job:?}");
    // Maven's launcher reads m2.conf through a link into /etc/maven.
    let job = Run::command(ws.path(), &[mvn.to_str().expect("path"), "--version"])
        .without_probe()
        .run();
    assert_eq!(job.code, 0, "{job:?}");
    assert!(job.stdout_text().contains("Apache Maven"), "{job:?}");
}

/// A caller's home as a developer's looks: a rustup-like and a pyenv-like toolchain, git's
/// config, another tool directory on PATH, and credentials readable by anyone but the
/// view.
fn test_home() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("home");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = |rel: &str, text: &str| {
        let path = home.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, format!("#!/bin/sh\necho {text}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    script(".cargo/bin/cargo", "cargo-from-the-home");
    script(".pyenv/shims/python3", "python-from-pyenv");
    script("tools/bin/mytool", "mytool-ran");
    std::fs::write(
        home.path().join(".gitconfig"),
        "[user]\n\tname = Ada Tester\n\temail = ada@example.invalid\n",
    )
    .expect("gitconfig");
    for (rel, text) in [
        (".ssh/id_ed25519", "SSH-KEY-SECRET"),
        (".aws/credentials", "AWS-SECRET"),
        (".netrc", "NETRC-SECRET"),
    ] {
        let path = home.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    home
}

#[test]
fn the_callers_toolchains_resolve_as_they_do_for_the_caller() {
    if !require_root() {
        return;
    }
    let Some(git) = require_tool("git") else {
        return;
    };
    let home = test_home();
    let h = home.path().to_str().expect("utf8");
    let ws = workspace();
    let path = format!("{h}/.cargo/bin:{h}/.pyenv/shims:/usr/bin:/bin:/nonexistent/bin");
    let script = format!(
        "command -v cargo; cargo; command -v python3; python3; echo \"$PATH\"; echo \"$HOME\"; \
         {} config user.name",
        git.display()
    );
    let job = Run::command(ws.path(), &["sh", "-c", &script])
        .without_probe()
        .caller_env("HOME", h)
        .caller_env("PATH", &path)
        .run();
    assert_eq!(job.code, 0, "{job:?}");
    let out = job.stdout_text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{h}/.cargo/bin/cargo").as_str(),
            "cargo-from-the-home",
            format!("{h}/.pyenv/shims/python3").as_str(),
            "python-from-pyenv",
            // In the caller's order, less what the jail does not show.
            format!("{h}/.cargo/bin:{h}/.pyenv/shims:/usr/bin:/bin").as_str(),
            h,
            "Ada Tester",
        ],
        "{job:?}"
    );
    // The home is a private tmpfs: writable — also beside what is bound in it (a tool's
    // lock in ~/.cargo, npm's ~/.npm/_logs) — and nothing written there reaches the host.
    let job = Run::command(
        ws.path(),
        &[
            "sh",
            "-c",
            "echo x > ~/.new && cat ~/.new && touch ~/.cargo/.package-cache && echo beside",
        ],
    )
    .without_probe()
    .caller_env("HOME", h)
    .run();
    assert_eq!(job.stdout_text(), "x\nbeside\n", "{job:?}");
    assert!(!home.path().join(".new").exists());
    assert!(!home.path().join(".cargo/.package-cache").exists());
    // A policy that shows none of it: the toolchain is not found — and toolbox says where
    // it is on the caller's PATH and what would show it.
    let job = Run::command(ws.path(), &["mytool"])
        .without_probe()
        .caller_env("HOME", h)
        .caller_env("PATH", &format!("{h}/tools/bin:/usr/bin:/bin"))
        .run();
    assert_eq!(job.code, 127, "{job:?}");
    for words in [
        format!("on your PATH it is {h}/tools/bin/mytool"),
        format!("--ro {h}/tools/bin"),
    ] {
        assert!(
            job.stderr.contains(&words),
            "{words:?} not in {}",
            job.stderr
        );
    }
    let job = Run::command(ws.path(), &["mytool"])
        .without_probe()
        .caller_env("HOME", h)
        .caller_env("PATH", &format!("{h}/tools/bin:/usr/bin:/bin"))
        .opts(&["--ro", &format!("{h}/tools/bin")])
        .run();
    assert_eq!(job.stdout_text(), "mytool-ran\n", "{job:?}");
}
