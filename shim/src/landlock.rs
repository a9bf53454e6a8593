//! Landlock for the tool: filesystem access only beneath the view's paths, no TCP when the
//! job has no network but connects to its egress proxy, signals and abstract unix sockets scoped to the job.
//!
//! The floor is the policy's `min_abi` (ABI 1 — filesystem rights — by default); anything
//! newer (TCP from ABI 4, ioctl on devices from 5, scoping from 6) is taken best-effort, and
//! what the kernel really enforced is reported back.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use toolbox_spec::FsAccess;

use crate::error::SetupError;
use crate::sys;

/// The newest ABI whose rights we have tested; newer kernels get these rights, not more.
const TARGET: ABI = ABI::V6;

#[derive(Debug, Default)]
pub struct Outcome {
    pub abi: Option<u32>,
    pub fs: bool,
    pub tcp: bool,
    pub scoped: bool,
}

/// A ruleset made before the root exists; its rules (which need the final paths) come later,
/// unless they were added ahead on a drafted root ([`rule_ahead`]).
pub struct Prepared {
    abi: u32,
    ruleset: Option<RulesetCreated>,
    /// The view's path rules are in it already.
    ruled: bool,
}

/// Check the ABI against the floor and create the ruleset — everything that does not need
/// the jail's root, so it runs before the root is ready.
pub fn prepare(spec: &toolbox_spec::Landlock) -> Result<Prepared, SetupError> {
    let abi = sys::landlock_abi();
    if abi < spec.min_abi {
        return Err(SetupError::LandlockAbi {
            found: abi,
            required: spec.min_abi,
        });
    }
    if abi == 0 {
        return Ok(Prepared {
            abi,
            ruleset: None,
            ruled: false,
        });
    }
    let err = |e: landlock::RulesetError| SetupError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET))
        .map_err(err)?;
    if spec.deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET))
            .map_err(err)?;
    }
    if spec.scoped {
        ruleset = ruleset.scope(Scope::from_all(TARGET)).map_err(err)?;
    }
    // no_new_privs is already set (no capability is left by now): the crate must not
    // set it again.
    let ruleset = ruleset.create().map_err(err)?.no_new_privs(false);
    Ok(Prepared {
        abi,
        ruleset: Some(ruleset),
        ruled: false,
    })
}

/// A ruleset with the view's path rules added ahead, from a root laid out for a draft and
/// not yet entered (`root`: its tmpfs), each path resolved as in the jail. It serves a job
/// only if that root is the job's as laid out, with the same rules ([`Prepared::ruled_for`]).
/// Landlock's rules hold inodes, so they are exactly those of the finished root only if
/// nothing at their paths can change before the job starts: each path must be a mount's root
/// (fixed when mounted) or lie on the root's own tmpfs (the shim's alone). Any path that is
/// neither, or fails to open, and there is no ruleset ahead: the rules are added in the
/// finished root, as in any jail.
pub fn rule_ahead(spec: &toolbox_spec::Landlock, root: BorrowedFd<'_>) -> Option<Prepared> {
    let Prepared {
        abi,
        ruleset: Some(mut ruleset),
        ..
    } = prepare(spec).ok()?
    else {
        return None;
    };
    let (root_mount, _) = sys::mount_of(root).ok()?;
    for rule in &spec.rules {
        let fd = sys::open_in_root(root, rule.path.as_str(), libc::O_PATH).ok()?;
        let (mount, mount_root) = sys::mount_of(fd.as_fd()).ok()?;
        if !mount_root && mount != root_mount {
            return None;
        }
        ruleset = add_path(ruleset, fd, rule).ok()?;
    }
    Some(Prepared {
        abi,
        ruleset: Some(ruleset),
        ruled: true,
    })
}

impl Prepared {
    /// Add the view's rules (paths in the jail's root), unless they were added ahead, and
    /// restrict ourselves.
    pub fn restrict(self, spec: &toolbox_spec::Landlock) -> Result<Outcome, SetupError> {
        let Some(mut ruleset) = self.ruleset else {
            return Ok(Outcome::default());
        };
        let err = |e: landlock::RulesetError| SetupError::Landlock(e.to_string());
        let to_add: &[toolbox_spec::LandlockRule] = if self.ruled { &[] } else { &spec.rules };
        for rule in to_add {
            // openat(2) itself: musl's open(3), under `PathFd`, adds an fcntl(F_SETFD) to
            // every O_CLOEXEC open, one call more for each of the view's ~20 rules.
            let fd = nix::fcntl::openat(
                nix::fcntl::AT_FDCWD,
                rule.path.as_str(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| SetupError::Landlock(format!("open {}: {e}", rule.path)))?;
            ruleset = add_path(ruleset, fd, rule).map_err(err)?;
        }
        if spec.deny_tcp && self.abi >= 4 {
            for &port in &spec.connect_ports {
                ruleset = ruleset
                    .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                    .map_err(err)?;
            }
        }
        let status = ruleset.restrict_self().map_err(err)?;
        let fs = status.ruleset != RulesetStatus::NotEnforced;
        Ok(Outcome {
            abi: Some(self.abi),
            fs,
            tcp: fs && spec.deny_tcp && self.abi >= 4,
            scoped: fs && spec.scoped && self.abi >= 6,
        })
    }

    /// Whether this ruleset, with its rules added ahead for `draft`, serves a job with
    /// `spec` in the root laid out for the draft: the same path rules.
    pub fn ruled_for(&self, draft: &toolbox_spec::Landlock, spec: &toolbox_spec::Landlock) -> bool {
        self.ruled && draft.rules == spec.rules
    }
}

/// The rule for `rule`'s path, open at `fd`.
fn add_path(
    ruleset: RulesetCreated,
    fd: OwnedFd,
    rule: &toolbox_spec::LandlockRule,
) -> Result<RulesetCreated, landlock::RulesetError> {
    let mut access = rights(rule.access);
    if !rule.dir {
        access &= AccessFs::from_file(TARGET);
    }
    ruleset.add_rule(PathBeneath::new(fd, access))
}

fn rights(access: FsAccess) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    match access {
        FsAccess::List => AccessFs::ReadDir.into(),
        FsAccess::Read => read,
        FsAccess::ReadExec => read | AccessFs::Execute,
        // Everything but creating device nodes, which a tool without capabilities could
        // not do anyway.
        FsAccess::ReadWrite => {
            AccessFs::from_all(TARGET) & !(AccessFs::MakeChar | AccessFs::MakeBlock)
        }
        FsAccess::Device => read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::fcntl::OFlag;
    use nix::mount::{mount, MsFlags};
    use nix::sys::stat::Mode;
    use toolbox_spec::{FsAccess, Landlock, LandlockRule};

    use super::rule_ahead;

    /// The mount namespace of the test that runs the next in one of its own.
    const PARENT_NS: &str = "TOOLBOX_TEST_PARENT_MOUNT_NS";

    #[test]
    fn rules_are_added_ahead_only_where_nothing_can_change_before_the_job() {
        // Mounting needs root, and a mount namespace of its own so as not to touch the
        // host's: the test below, run in `unshare --mount`.
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "this test mounts a tmpfs and needs root, and CI=true: failing rather than skipping"
            );
            eprintln!("\n!!! SKIPPED: this test mounts a tmpfs and needs root !!!\n");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
        let out = std::process::Command::new("unshare")
            .env(PARENT_NS, ours)
            .args(["--mount", "--propagation", "private"])
            .arg(exe)
            .args([
                "--exact",
                "landlock::tests::in_a_mount_namespace_rules_ahead",
                "--ignored",
                "--test-threads",
                "1",
            ])
            .output()
            .expect("run unshare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by rules_are_added_ahead_only_where_nothing_can_change_before_the_job, in a mount namespace of its own"]
    fn in_a_mount_namespace_rules_ahead() {
        let parent = std::env::var_os(PARENT_NS).expect("run by rules_are_added_ahead_…");
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
        assert_ne!(
            ours.as_os_str(),
            parent,
            "not in a mount namespace of its own"
        );
        // A root as a draft lays it out: its own tmpfs, a directory made on it, a host
        // directory bound, and a link.
        let dir = std::env::temp_dir().join(format!("toolbox-rule-ahead-{}", std::process::id()));
        let (root, host) = (dir.join("root"), dir.join("host"));
        for path in [&root, &host, &host.join("sub")] {
            std::fs::create_dir_all(path).expect("mkdir");
        }
        let flags = MsFlags::empty();
        mount(Some("tmpfs"), &root, Some("tmpfs"), flags, Some("size=64k")).expect("tmpfs");
        for made in ["own", "bound"] {
            std::fs::create_dir(root.join(made)).expect("mkdir");
        }
        mount(
            Some(&host),
            &root.join("bound"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        std::os::unix::fs::symlink("/own", root.join("link")).expect("link");
        let root_fd = nix::fcntl::openat(
            nix::fcntl::AT_FDCWD,
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .expect("open the root");
        let ahead = |paths: &[&str]| {
            let spec = Landlock {
                rules: paths
                    .iter()
                    .map(|path| LandlockRule {
                        path: (*path).into(),
                        access: FsAccess::Read,
                        dir: true,
                    })
                    .collect(),
                deny_tcp: false,
                connect_ports: Vec::new(),
                scoped: false,
                min_abi: 1,
            };
            rule_ahead(&spec, root_fd.as_fd()).is_some()
        };
        // The root, what is on its own tmpfs, a mount's root; a link and `..` resolved as in
        // the jail: within it.
        assert!(ahead(&["/", "/own", "/bound", "/link", "/../own"]));
        // Inside the bound host directory: the host can replace it before the job starts.
        assert!(!ahead(&["/own", "/bound/sub"]));
        // A path that is not there: the rules are added in the finished root, which says why.
        assert!(!ahead(&["/missing"]));
        let _ = nix::mount::umount2(&root.join("bound"), nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
