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
