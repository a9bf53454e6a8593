//! Guarantee 7 (nothing leaks): after any job no cgroup of it remains (every test checks
//! its own jobs through `finish`); job cgroups left by a supervisor that died are removed
//! by the next one.

use toolbox_tests::{job_cgroup_parent, require_root, workspace, Run, Unit};

#[test]
fn job_cgroups_of_a_dead_supervisor_are_swept() {
    if !require_root() {
        return;
    }
    // A supervisor that is gone: a process we started and reaped.
    let mut dead = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    let unit = Unit::new("sweep");
    let parent = job_cgroup_parent(&unit.0);
    std::fs::create_dir_all(&parent).expect("the supervisor's cgroup");
    let stale = parent.join(format!(
        "toolbox-{dead_pid}-{}",
        toolbox_tests::token("stale").replace('-', "")
    ));
    std::fs::create_dir(&stale).expect("create a stale job cgroup");
    let ws = workspace();
    let job = Run::command(ws.path(), &["/bin/true"]).in_unit(&unit).run();
    assert_eq!(job.code, 0, "{job:?}");
    let swept = !stale.exists();
    if !swept {
        let _ = std::fs::remove_dir(&stale);
    }
    assert!(
        swept,
        "the stale cgroup {} was not removed",
        stale.display()
    );
}

#[test]
fn a_supervisor_killed_mid_job_takes_its_jail_along_and_the_next_run_sweeps_its_cgroups() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let mark = toolbox_tests::token("orphan");
    // A unit of its own: no other test's run may sweep the dead supervisor's cgroup first.
    let unit = Unit::new("killed");
    let mut toolbox = Run::probe(ws.path(), &["sleep", "30", &mark])
        .in_unit(&unit)
        .spawn();
    let supervisor = toolbox.id();
    assert!(
        toolbox_tests::wait_for(std::time::Duration::from_secs(20), || {
            !toolbox_tests::host_probe_pids(&mark).is_empty()
        }),
        "the job never started"
    );
    // SIGKILL: toolbox gets no chance to clean up.
    toolbox.kill().expect("kill");
    toolbox.wait().expect("wait");
    // Its lifeline closed, so the jail ended at once (the probe would sleep 30 s)...
    assert!(
        toolbox_tests::wait_for(std::time::Duration::from_secs(10), || {
            toolbox_tests::host_pids_named(&mark).is_empty()
                && toolbox_tests::host_probe_pids(&mark).is_empty()
        }),
        "the jail outlived its supervisor"
    );
    let prefix = format!("toolbox-{supervisor}-");
    let left = || {
        std::fs::read_dir(job_cgroup_parent(&unit.0))
            .expect("read cgroup dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    };
    assert!(
        left(),
        "expected the killed supervisor's cgroup to be left for the sweep"
    );
    // ... and the next run removes what it could not.
    let next = Run::command(ws.path(), &["/bin/true"]).in_unit(&unit).run();
    assert_eq!(next.code, 0, "{next:?}");
    assert!(!left(), "the dead supervisor's job cgroup was not swept");
}
