//! Guarantee 1 (files): a job sees only the policy's paths and writes only to its
//! workspace and its own /tmp. Each test tries the attack for real and checks it failed.

use std::path::Path;

use toolbox_tests::{require_root, workspace, Run, Via, TOOL_UID};

/// A secret on the host, readable by the tool's uid if it could reach it at all.
fn plant_secret(path: &Path) -> String {
    let secret = format!("SECRET-{}", toolbox_tests::token("fs"));
    std::fs::write(path, &secret).expect("write secret");
    std::os::unix::fs::chown(path, Some(TOOL_UID), Some(TOOL_UID)).expect("chown secret");
    secret
}

#[test]
fn host_secrets_and_files_outside_the_view_are_unreadable() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    // Owned by the tool's uid: only the jail's view can keep it out.
    let root_secret = Path::new("/root").join(format!("toolbox-test-{}", std::process::id()));
    let var_secret = Path::new("/var/tmp").join(format!("toolbox-test-{}", std::process::id()));
    let s1 = plant_secret(&root_secret);
    let s2 = plant_secret(&var_secret);
    for via in Via::ALL {
        let job = Run::probe(
            ws.path(),
            &[
                "read",
                "/etc/shadow",
                "/etc/gshadow",
                root_secret.to_str().expect("utf8"),
                var_secret.to_str().expect("utf8"),
                "/etc/passwd",
            ],
        )
        .via(via)
        .run();
        assert_eq!(job.code, 0, "{job:?}");
        let result = job.probe_json();
        for path in [
            "/etc/shadow",
            "/etc/gshadow",
            root_secret.to_str().expect("utf8"),
            var_secret.to_str().expect("utf8"),
        ] {
            assert_eq!(result[path]["ok"], false, "{path} was readable: {result}");
        }
        assert!(
            !job.stdout_text().contains(&s1) && !job.stdout_text().contains(&s2),
            "a secret leaked"
        );
        // The curated /etc is there: the test could see a success.
        assert_eq!(result["/etc/passwd"]["ok"], true, "{result}");
    }
    let _ = std::fs::remove_file(&root_secret);
    let _ = std::fs::remove_file(&var_secret);
}

#[test]
fn only_the_policy_paths_are_visible() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    // The caller's home (shown in part, see workloads.rs) is elsewhere than /root here.
    let home = tempfile::tempdir().expect("home");
    for via in Via::ALL {
        let job = Run::probe(
            ws.path(),
            &[
                "readdir", "/", "/etc", "/dev", "/root", "/home", "/sys", "/sys/fs", "/var", "/run",
            ],
        )
        .caller_env("HOME", home.path().to_str().expect("utf8"))
        .via(via)
        .run();
        let result = job.probe_json();
        let root = result["/"]["detail"]
            .as_str()
            .expect("/ listed")
            .to_string();
        for entry in root.split(' ') {
            assert!(
                [
                    "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys",
                    "tmp", "usr", "var"
                ]
                .contains(&entry)
                    || ws.path().starts_with(format!("/{entry}"))
                    || toolbox_tests::probe().starts_with(format!("/{entry}")),
                "unexpected /{entry} in the jail's root: {root}"
            );
        }
        for absent in ["/root", "/home", "/run"] {
            assert_eq!(result[absent]["ok"], false, "{absent} is visible: {result}");
        }
        // Of /sys, only the job's own cgroup at /sys/fs/cgroup (see workloads.rs).
        assert_eq!(result["/sys"]["detail"], "fs", "{result}");
        assert_eq!(result["/sys/fs"]["detail"], "cgroup", "{result}");
        // Of the host's /var, nothing: only the job's private /var/tmp.
        assert_eq!(result["/var"]["detail"], "tmp", "{result}");
        let etc = result["/etc"]["detail"].as_str().expect("/etc listed");
        assert!(
            etc.contains("passwd") && !etc.contains("shadow") && !etc.contains("sudoers"),
            "/etc: {etc}"
        );
        let dev = result["/dev"]["detail"].as_str().expect("/dev listed");
        for node in dev.split(' ') {
            assert!(
                [
                    "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                    "stdout", "tty", "urandom", "zero"
                ]
                .contains(&node),
                "unexpected /dev/{node}: {dev}"
            );
        }
    }
}

#[test]
fn writes_land_only_in_the_workspace_and_the_private_tmp() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let marker = format!("toolbox-test-{}", toolbox_tests::token("tmp"));
    let host_tmp_file = Path::new("/tmp").join(&marker);
    std::fs::write(&host_tmp_file, "host").expect("host marker");
    let in_ws = ws.path().join("out.txt");
    let jail_tmp = format!("/tmp/{marker}-from-jail");
    let jail_var_tmp = format!("/var/tmp/{marker}-from-jail");
    for via in Via::ALL {
        let job = Run::probe(
            ws.path(),
            &[
                "write",
                in_ws.to_str().expect("utf8"),
                &jail_tmp,
                &jail_var_tmp,
                "/var/toolbox-x",
                "/usr/toolbox-x",
                "/etc/toolbox-x",
                "/toolbox-x",
                "/dev/toolbox-x",
                "/proc/toolbox-x",
            ],
        )
        .via(via)
        .run();
        let result = job.probe_json();
        assert_eq!(
            result[in_ws.to_str().expect("utf8")]["ok"],
            true,
            "{result}"
        );
        assert_eq!(result[jail_tmp.as_str()]["ok"], true, "{result}");
        // /var/tmp too, private like /tmp (the default policy's tmpfs).
        assert_eq!(result[jail_var_tmp.as_str()]["ok"], true, "{result}");
        for path in [
            "/var/toolbox-x",
            "/usr/toolbox-x",
            "/etc/toolbox-x",
            "/toolbox-x",
            "/dev/toolbox-x",
            "/proc/toolbox-x",
        ] {
            assert_eq!(result[path]["ok"], false, "{path} was writable: {result}");
        }
        // The jail's /tmp is its own: its file is not on the host, the host's is not in it.
        assert!(
            !Path::new(&jail_tmp).exists(),
            "the jail wrote into the host's /tmp"
        );
        assert!(
            !Path::new(&jail_var_tmp).exists(),
            "the jail wrote into the host's /var/tmp"
        );
        let seen = Run::probe(ws.path(), &["read", host_tmp_file.to_str().expect("utf8")])
            .via(via)
            .run()
            .probe_json();
        assert_eq!(
            seen[host_tmp_file.to_str().expect("utf8")]["ok"],
            false,
            "the host's /tmp is visible: {seen}"
        );
        // What the tool made belongs to the workspace's owner, not root.
        let meta = std::fs::metadata(&in_ws).expect("written file");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), TOOL_UID);
        assert!(!Path::new("/usr/toolbox-x").exists() && !Path::new("/toolbox-x").exists());
    }
    let _ = std::fs::remove_file(&host_tmp_file);
}

#[test]
fn a_symlink_planted_in_the_workspace_does_not_reach_host_secrets() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let secret_path =
        Path::new("/var/tmp").join(format!("toolbox-test-link-{}", std::process::id()));
    let secret = plant_secret(&secret_path);
    for (name, target) in [
        ("shadow", Path::new("/etc/shadow")),
        ("secret", secret_path.as_path()),
        ("rootdir", Path::new("/root")),
    ] {
        std::os::unix::fs::symlink(target, ws.path().join(name)).expect("symlink");
    }
    let link = |name: &str| ws.path().join(name).to_string_lossy().into_owned();
    for via in Via::ALL {
        let job = Run::probe(ws.path(), &["read", &link("shadow"), &link("secret")])
            .via(via)
            .run();
        // The caller's home (root's /root here) elsewhere: /root is none of the view.
        let home = tempfile::tempdir().expect("home");
        let listing = Run::probe(ws.path(), &["readdir", &link("rootdir")])
            .caller_env("HOME", home.path().to_str().expect("utf8"))
            .via(via)
            .run();
        let result = job.probe_json();
        assert_eq!(result[link("shadow").as_str()]["ok"], false, "{result}");
        assert_eq!(result[link("secret").as_str()]["ok"], false, "{result}");
        assert!(
            !job.stdout_text().contains(&secret),
            "the secret leaked through a symlink"
        );
        assert_eq!(
            listing.probe_json()[link("rootdir").as_str()]["ok"],
            false,
            "/root listed through a symlink"
        );
    }
    let _ = std::fs::remove_file(&secret_path);
}

#[test]
fn landlock_keeps_proc_read_only_even_where_permissions_allow() {
    if !require_root() {
        return;
    }
    // A process may write its own /proc/self/oom_score_adj (raising it) and comm by plain
    // file permissions: only Landlock stops it, so this fails if Landlock is off.
    let ws = workspace();
    for via in Via::ALL {
        let job = Run::probe(
            ws.path(),
            &["write", "/proc/self/comm", "/proc/self/oom_score_adj"],
        )
        .via(via)
        .run();
        let result = job.probe_json();
        for path in ["/proc/self/comm", "/proc/self/oom_score_adj"] {
            assert_eq!(result[path]["ok"], false, "{path} writable: {result}");
            assert_eq!(result[path]["errno"], libc::EACCES, "{path}: {result}");
        }
        assert_eq!(job.record()["isolation"]["landlock_fs"], true);
    }
}

#[test]
fn extra_binds_are_read_only_or_read_write_as_asked() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let ro = tempfile::tempdir().expect("tempdir");
    let rw = tempfile::tempdir().expect("tempdir");
    for dir in [ro.path(), rw.path()] {
        std::os::unix::fs::chown(dir, Some(TOOL_UID), Some(TOOL_UID)).expect("chown");
        std::fs::write(dir.join("data"), "hello").expect("write");
    }
    let file = |dir: &Path, name: &str| dir.join(name).to_string_lossy().into_owned();
    for via in Via::ALL {
        let job = Run::probe(
            ws.path(),
            &["write", &file(ro.path(), "new"), &file(rw.path(), "new")],
        )
        .opts(&[
            "--ro",
            ro.path().to_str().expect("utf8"),
            "--rw",
            rw.path().to_str().expect("utf8"),
        ])
        .via(via)
        .run();
        let result = job.probe_json();
        assert_eq!(
            result[file(ro.path(), "new").as_str()]["ok"],
            false,
            "{result}"
        );
        assert_eq!(
            result[file(rw.path(), "new").as_str()]["ok"],
            true,
            "{result}"
        );
        assert!(rw.path().join("new").exists() && !ro.path().join("new").exists());
    }
}

#[test]
fn the_etc_snapshot_follows_changes_on_the_host() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let name = format!("toolbox-test-{}", toolbox_tests::token("etc"));
    let host = Path::new("/etc").join(&name);
    let policies = tempfile::tempdir().expect("tempdir");
    let policy = policies.path().join("etc-test.toml");
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/default.toml"
    ))
    .expect("read");
    let start = shipped.find("etc = [").expect("etc list");
    let end = start + shipped[start..].find(']').expect("end of list") + 1;
    let text = format!(
        "{}etc = [\"passwd\", \"{name}\"]{}",
        &shipped[..start],
        &shipped[end..]
    );
    std::fs::write(&policy, text).expect("write policy");
    // Snapshots of this test's /etc go to a state directory of its own, not the host's.
    let state = tempfile::tempdir().expect("tempdir");
    let read = || {
        Run::probe(ws.path(), &["read", host.to_str().expect("utf8")])
            .opts(&["--policy", policy.to_str().expect("utf8")])
            .caller_env("TOOLBOX_STATE_DIR", state.path().to_str().expect("utf8"))
            .run()
            .probe_json()[host.to_str().expect("utf8")]["detail"]
            .as_str()
            .map(str::to_string)
    };
    std::fs::write(&host, "first").expect("write");
    let first = read();
    std::fs::write(&host, "second, longer").expect("rewrite");
    let second = read();
    let _ = std::fs::remove_file(&host);
    assert_eq!(first.as_deref(), Some("first"));
    assert_eq!(
        second.as_deref(),
        Some("second, longer"),
        "the jail saw a stale /etc"
    );
    let snapshots = std::fs::read_dir(state.path().join("etc"))
        .expect("snapshots")
        .count();
    assert_eq!(snapshots, 2, "one snapshot per version of /etc");
}

/// Host files planted beneath /etc for one test, removed when it ends.
struct Planted(Vec<std::path::PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_dir(path);
        }
    }
}

#[test]
fn what_the_system_view_links_to_in_etc_is_shown_and_secrets_never_are() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let token = toolbox_tests::token("etc");
    // In /etc: a tool's config directory (world-readable), a file of it only root may read,
    // a world-readable file where secrets live (/etc/ssh), and one the policy masks.
    let config = Path::new("/etc").join(&token);
    let ssh = Path::new("/etc/ssh");
    // Removed last (if made here): children go first.
    let mut planted = Planted(if ssh.exists() {
        Vec::new()
    } else {
        vec![ssh.to_path_buf()]
    });
    std::fs::create_dir_all(ssh).expect("mkdir /etc/ssh");
    let in_ssh = ssh.join(format!("{token}-key"));
    let masked = Path::new("/etc").join(format!("{token}-masked"));
    planted
        .0
        .extend([config.clone(), in_ssh.clone(), masked.clone()]);
    std::fs::create_dir(&config).expect("mkdir");
    let conf = config.join("tool.conf");
    let private = config.join("private.conf");
    planted.0.extend([conf.clone(), private.clone()]);
    std::fs::write(&conf, "setting=1\n").expect("write");
    std::fs::write(&private, "password=hunter2\n").expect("write");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&in_ssh, "ssh-secret\n").expect("write");
    std::fs::set_permissions(&in_ssh, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&masked, "masked\n").expect("write");

    // A system directory (as /usr/lib/jvm/…/conf is) whose symlinks lead to each.
    let dir = tempfile::tempdir().expect("tempdir");
    let system = dir.path().join("sys");
    std::fs::create_dir(&system).expect("mkdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, target) in [
        ("conf", config.as_path()),
        ("key", in_ssh.as_path()),
        ("masked", masked.as_path()),
        ("shadow", Path::new("/etc/shadow")),
    ] {
        std::os::unix::fs::symlink(target, system.join(name)).expect("symlink");
    }
    let policy = dir.path().join("linked.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml"),
    )
    .expect("default policy")
    .replacen(
        "system = [\"/usr\",",
        &format!("system = [\"{}\", \"/usr\",", system.display()),
        1,
    )
    .replacen(
        "masked = []",
        &format!("masked = [\"{}\"]", masked.display()),
        1,
    );
    std::fs::write(&policy, text).expect("write policy");
    let ws = workspace();
    let link = |name: &str| system.join(name).to_string_lossy().into_owned();
    let job = Run::probe(
        ws.path(),
        &[
            "read",
            &link("conf/tool.conf"),
            &link("conf/private.conf"),
            &link("key"),
            &link("masked"),
            &link("shadow"),
        ],
    )
    .opts(&["--policy", policy.to_str().expect("utf8")])
    .run();
    assert_eq!(job.code, 0, "{job:?}");
    let result = job.probe_json();
    assert_eq!(
        result[link("conf/tool.conf")]["detail"],
        "setting=1\n",
        "the link into /etc dangles: {result}"
    );
    for hidden in ["conf/private.conf", "key", "masked", "shadow"] {
        assert_eq!(result[link(hidden)]["ok"], false, "{hidden}: {result}");
    }
    let out = job.stdout_text();
    assert!(
        !out.contains("hunter2") && !out.contains("ssh-secret"),
        "{out}"
    );

    // Asked for by name with --ro: shown as the links' targets are; a secret or a file no
    // one else may read is refused before anything runs, saying why.
    let job = Run::probe(ws.path(), &["read", conf.to_str().expect("utf8")])
        .opts(&["--ro", config.to_str().expect("utf8")])
        .run();
    assert_eq!(
        job.probe_json()[conf.to_str().expect("utf8")]["detail"],
        "setting=1\n"
    );
    for (path, words) in [
        ("/etc/shadow", "kept from every jail"),
        (in_ssh.to_str().expect("utf8"), "kept from every jail"),
        ("/etc/ssh", "kept from every jail"),
        (private.to_str().expect("utf8"), "every user may read"),
    ] {
        let job = Run::command(ws.path(), &["true"])
            .without_probe()
            .opts(&["--ro", path])
            .run();
        assert_eq!(job.code, 125, "--ro {path}: {job:?}");
        assert!(job.stderr.contains(words), "--ro {path}: {}", job.stderr);
    }
    drop(planted);
}

/// A caller's home holding `secret` (readable by anyone: only the view keeps it out), and
/// links to it from entries the shipped policies show (git's config, ~/.local/lib).
fn home_with_secret(secret: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("home");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let text = format!("SECRET-{}", toolbox_tests::token("home"));
    let path = home.path().join(secret);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, &text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::symlink(&path, home.path().join(".gitconfig")).expect("link");
    std::fs::create_dir_all(home.path().join(".local/lib")).expect("mkdir");
    std::os::unix::fs::symlink(&path, home.path().join(".local/lib/leak")).expect("link");
    (home, text)
}

/// Under every shipped policy, the home's `secret` is unreadable: by its path, through a
/// link a shown entry is, and through a link inside a shown directory.
fn home_secret_stays_out(secret: &str) {
    if !require_root() {
        return;
    }
    let (home, text) = home_with_secret(secret);
    let h = home.path().to_str().expect("utf8");
    let ws = workspace();
    for policy in ["default", "strict", "network", "build"] {
        let script = format!(
            "cat {h}/{secret} {h}/.gitconfig {h}/.local/lib/leak 2>/dev/null; \
             ls -A {h}/.local/lib 2>/dev/null; echo done"
        );
        let job = Run::command(ws.path(), &["sh", "-c", &script])
            .without_probe()
            .caller_env("HOME", h)
            .opts(&["--policy", policy])
            .run();
        let out = job.stdout_text();
        assert!(out.ends_with("done\n"), "{policy}: {job:?}");
        assert!(!out.contains(&text), "{policy}: {secret} leaked: {out}");
    }
    // Control: the file is there and readable by the tool's uid outside a jail.
    let control = std::process::Command::new("cat")
        .arg(home.path().join(secret))
        .uid_gid(TOOL_UID)
        .output()
        .expect("cat");
    assert_eq!(String::from_utf8_lossy(&control.stdout), text);
}

trait UidGid {
    fn uid_gid(&mut self, id: u32) -> &mut Self;
}

impl UidGid for std::process::Command {
    fn uid_gid(&mut self, id: u32) -> &mut Self {
        std::os::unix::process::CommandExt::uid(self, id);
        std::os::unix::process::CommandExt::gid(self, id)
    }
}

#[test]
fn a_callers_ssh_key_stays_out_of_every_shipped_policy() {
    home_secret_stays_out(".ssh/id_ed25519");
}

#[test]
fn a_callers_aws_credentials_stay_out_of_every_shipped_policy() {
    home_secret_stays_out(".aws/credentials");
}

#[test]
fn a_callers_netrc_stays_out_of_every_shipped_policy() {
    home_secret_stays_out(".netrc");
}

#[test]
fn a_policy_showing_the_whole_home_still_hides_its_secrets() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (home, text) = home_with_secret(".aws/credentials");
    let h = home.path().to_str().expect("utf8");
    // A secret kept as a link into a dotfiles directory, and a file that is no secret.
    std::fs::create_dir(home.path().join("dotfiles")).expect("mkdir");
    let netrc = home.path().join("dotfiles/netrc");
    std::fs::write(&netrc, &text).expect("write");
    std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::symlink("dotfiles/netrc", home.path().join(".netrc")).expect("link");
    std::fs::write(home.path().join("notes.txt"), "plain notes\n").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("all.toml");
    let policy_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml"),
    )
    .expect("default policy")
    .replacen("show = \"toolchains\"", "show = \"all\"", 1);
    std::fs::write(&policy, policy_text).expect("write policy");
    let ws = workspace();
    let script = format!(
        "cat {h}/notes.txt; cat {h}/.aws/credentials {h}/.gitconfig {h}/.local/lib/leak \
         {h}/.netrc {h}/dotfiles/netrc 2>/dev/null; echo done"
    );
    let job = Run::command(ws.path(), &["sh", "-c", &script])
        .without_probe()
        .caller_env("HOME", h)
        .opts(&["--policy", policy.to_str().expect("utf8")])
        .run();
    let out = job.stdout_text();
    assert!(
        out.starts_with("plain notes\n"),
        "the home is not shown: {job:?}"
    );
    assert!(out.ends_with("done\n"), "{job:?}");
    assert!(!out.contains(&text), "a secret leaked: {out}");
}

/// The jail's root is read-only and without set-id programs, whoever entered it: a cold
/// job's shim once the spec came, or a prepared jail's ahead of its job, in a mount
/// namespace of its own (a warm job's).
#[test]
fn the_root_is_read_only_and_nosuid_in_every_jail() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    for via in Via::JOBS {
        let job = Run::command(
            ws.path(),
            &["awk", "$5 == \"/\" { print $6 }", "/proc/self/mountinfo"],
        )
        .without_probe()
        .via(via)
        .run();
        assert_eq!(job.status(), "exited", "{via:?}: {:?}", job.record());
        let options = job.stdout_text();
        let options: Vec<&str> = options.trim().split(',').collect();
        assert!(
            options.contains(&"ro") && options.contains(&"nosuid"),
            "{via:?}: the root's mount options are {options:?}"
        );
    }
}

#[test]
fn the_jail_is_the_same_whether_its_root_was_begun_before_the_spec_or_not() {
    if !require_root() {
        return;
    }
    // The shim builds the root's tmpfs, /dev and /proc while it waits for its spec, at an
    // anchor in the state directory (without one it builds everything once the spec is
    // there; with a source inside it, it discards what it began). All three jails must be
    // laid out alike: the same mounts with the same options, the same /dev.
    let ws = workspace();
    let layout = "stat -c '%n %a %U %F' / /proc /dev /dev/* /dev/pts/*; \
                  awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") { print $5, $6, $(i + 1); break }}' \
                  /proc/self/mountinfo | sort";
    let jail = |state: &Path, extra: &[&str]| {
        let job = Run::command(ws.path(), &["sh", "-c", layout])
            .without_probe()
            .opts(extra)
            .caller_env("TOOLBOX_STATE_DIR", state.to_str().expect("utf8"))
            .run();
        assert_eq!(job.status(), "exited", "{:?}", job.record());
        job.stdout_text()
    };
    let early = tempfile::tempdir().expect("tempdir");
    let begun = jail(early.path(), &[]);
    let anchor = early.path().join("anchor");
    assert!(anchor.is_dir(), "no anchor was made in the state directory");
    // No anchor to be had (a file where it would go): the whole root after the spec.
    let late = tempfile::tempdir().expect("tempdir");
    std::fs::write(late.path().join("anchor"), "").expect("write");
    let whole = jail(late.path(), &[]);
    assert_eq!(begun, whole);
    // A bind from inside the anchor: what was begun is discarded, the root built anew.
    let anchor = anchor.to_str().expect("utf8");
    let discarded = jail(early.path(), &["--ro", anchor]);
    let without_bind: Vec<&str> = discarded
        .lines()
        .filter(|line| !line.starts_with(&format!("{anchor} ")))
        .collect();
    assert_ne!(discarded.lines().count(), without_bind.len(), "{discarded}");
    assert_eq!(without_bind, begun.lines().collect::<Vec<_>>());
    // And that bind shows the host's directory, not the root begun on top of it.
    std::fs::write(Path::new(anchor).join("marker"), "").expect("write");
    std::fs::set_permissions(anchor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let listed = Run::command(ws.path(), &["ls", "-a", anchor])
        .without_probe()
        .opts(&["--ro", anchor])
        .caller_env("TOOLBOX_STATE_DIR", early.path().to_str().expect("utf8"))
        .run()
        .stdout_text();
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "marker"]
    );
    // So does a bind of a directory above the anchor (a bind takes what is mounted beneath).
    let state = early.path().to_str().expect("utf8");
    let listed = Run::command(ws.path(), &["ls", "-a", anchor])
        .without_probe()
        .opts(&["--ro", state])
        .caller_env("TOOLBOX_STATE_DIR", state)
        .run()
        .stdout_text();
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "marker"]
    );
}
