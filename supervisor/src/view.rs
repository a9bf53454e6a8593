//! The jail's filesystem view: which host paths appear where, and what Landlock lets the
//! tool do beneath each. Built in the supervisor from the host's layout; the shim applies it
//! as given.

use std::io;
use std::path::{Path, PathBuf};

use toolbox_spec::{FsAccess, LandlockRule, Mount};

use crate::etc_snapshot;
use crate::home::Show;
use crate::policy::{Policy, WorkspaceAccess};
use crate::view_memo::consulted;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{path} is not valid UTF-8; toolbox binds only UTF-8 paths")]
    NotUtf8 { path: PathBuf },
    #[error(
        "{path} is kept from every jail (a secret, or where secrets live), whatever the policy"
    )]
    EtcSecret { path: PathBuf },
    #[error("{path} holds nothing a jail may be shown: of /etc, jails see only files every user may read")]
    EtcUnreadable { path: PathBuf },
    #[error("{path} would be mounted twice in the jail (as {first} and as {second})")]
    Twice {
        path: String,
        first: &'static str,
        second: &'static str,
    },
}

/// Where a mount came from, for error messages.
#[derive(Clone, Copy)]
enum Origin {
    System,
    Etc,
    Workspace,
    Jail,
    ExtraRo,
    ExtraRw,
    Tmpfs,
    Home,
    Masked,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::System => "a system directory",
            Origin::Etc => "an /etc entry",
            Origin::Workspace => "the workspace",
            Origin::Jail => "part of the jail (/tmp, /proc or /dev)",
            Origin::ExtraRo => "a --ro path",
            Origin::ExtraRw => "a --rw path",
            Origin::Tmpfs => "a policy tmpfs",
            Origin::Home => "the caller's home",
            Origin::Masked => "a masked path",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Parents first.
    pub mounts: Vec<Mount>,
    pub rules: Vec<LandlockRule>,
}

impl View {
    /// Whether the jail shows the host's `path` at the same place: it lies in a bind of a
    /// host path (the system directories, the workspace, a toolchain…) or is a symlink the
    /// view recreates (`/bin`), not merely in a tmpfs of the jail's own.
    pub fn shows(&self, path: &Path) -> bool {
        self.mounts.iter().any(|mount| match mount {
            Mount::Bind { src, dst, .. } => src == dst && path.starts_with(dst),
            Mount::Symlink { dst, .. } => path == Path::new(dst),
            _ => false,
        })
    }
}

/// What the job asks for on top of the policy's view; every path already canonical.
pub struct Extra<'a> {
    pub workspace: &'a Path,
    pub ro: &'a [PathBuf],
    pub rw: &'a [PathBuf],
    /// The caller's home, when the policy shows some of it (see [`crate::home`]) and it
    /// does not lie in the workspace.
    pub home: Option<&'a Path>,
}

/// Everything [`build`] reads but the host's files: the key of a [`Memo`] of views.
#[derive(PartialEq)]
pub struct Inputs {
    system: Vec<PathBuf>,
    etc: Vec<String>,
    ro: Vec<PathBuf>,
    rw: Vec<PathBuf>,
    workspace_access: WorkspaceAccess,
    tmp_size: u64,
    tmpfs: Vec<PathBuf>,
    masked: Vec<PathBuf>,
    home_show: Show,
    home_toolchains: Vec<PathBuf>,
    workspace: PathBuf,
    extra_ro: Vec<PathBuf>,
    extra_rw: Vec<PathBuf>,
    home: Option<PathBuf>,
}

impl Inputs {
    fn of(policy: &Policy, extra: &Extra<'_>) -> Inputs {
        Inputs {
            system: policy.system.clone(),
            etc: policy.etc.clone(),
            ro: policy.ro.clone(),
            rw: policy.rw.clone(),
            workspace_access: policy.workspace,
            tmp_size: policy.tmp_size,
            tmpfs: policy.tmpfs.clone(),
            masked: policy.masked.clone(),
            home_show: policy.home,
            home_toolchains: policy.home_toolchains.clone(),
            workspace: extra.workspace.to_path_buf(),
            extra_ro: extra.ro.to_vec(),
            extra_rw: extra.rw.to_vec(),
            home: extra.home.map(Path::to_path_buf),
        }
    }
}

/// A daemon's views, kept while the host's files they were built from stay as they were
/// (see [`crate::view_memo`]).
pub type Memo = crate::view_memo::Memo<Inputs, View>;

/// [`build`], through `memo` when there is one.
pub fn build_with(
    memo: Option<&Memo>,
    policy: &Policy,
    extra: &Extra<'_>,
) -> Result<View, ViewError> {
    match memo {
        Some(memo) => memo.get_or_build(Inputs::of(policy, extra), || build(policy, extra)),
        None => build(policy, extra),
    }
}

/// The view of a job of `policy` with `extra`, from the host's files as they are. Every
/// host path it looks at is noted for a memo ([`crate::view_memo::consulted`]; `lstat`
/// notes its own, and the memo watches where a noted link leads); a path it looks at
/// without saying so is a memo kept past a change.
pub fn build(policy: &Policy, extra: &Extra<'_>) -> Result<View, ViewError> {
    let mut mounts: Vec<(Mount, Origin)> = Vec::new();
    let mut rules = vec![rule("/", FsAccess::List)];

    for dir in &policy.system {
        let Some(meta) = lstat(dir)? else { continue };
        let dst = utf8(dir)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(dir).map_err(|source| inspect(dir, source))?;
            mounts.push((
                Mount::Symlink {
                    target: utf8(&target)?,
                    dst,
                },
                Origin::System,
            ));
        } else {
            rules.push(rule(&dst, FsAccess::ReadExec));
            mounts.push((
                Mount::Bind {
                    src: dst.clone(),
                    dst,
                    writable: false,
                },
                Origin::System,
            ));
        }
    }

    let etc = Path::new("/etc");
    let mut etc_mounts = Vec::new();
    for entry in &policy.etc {
        let host = etc.join(entry);
        let Some(meta) = lstat(&host)? else { continue };
        let dst = utf8(&host)?;
        if meta.file_type().is_symlink() {
            // Dangling links are skipped like missing entries.
            let Ok(resolved) = host.canonicalize() else {
                continue;
            };
            if policy.system.iter().any(|dir| resolved.starts_with(dir)) {
                // It points into the read-only system view (localtime → /usr/share/zoneinfo):
                // the same link works in the jail.
                let target = std::fs::read_link(&host).map_err(|source| inspect(&host, source))?;
                etc_mounts.push((
                    Mount::Symlink {
                        target: utf8(&target)?,
                        dst,
                    },
                    Origin::Etc,
                ));
            } else {
                // It points somewhere the jail does not show (resolv.conf → /run/...): show
                // what it points at.
                consulted(&resolved);
                let meta =
                    std::fs::metadata(&resolved).map_err(|source| inspect(&resolved, source))?;
                etc_mounts.push((etc_entry(utf8(&resolved)?, dst, &meta), Origin::Etc));
            }
        } else {
            etc_mounts.push((etc_entry(dst.clone(), dst, &meta), Origin::Etc));
        }
    }
    // What the policy's own entries show already (a whole target, like ssl/certs, at once).
    // Compared as clean strings: Path::starts_with parses components at every call, and
    // this runs over every file the links bring (dozens), for every job.
    let listed: Vec<String> = etc_mounts
        .iter()
        .map(|(m, _): &(Mount, Origin)| clean(m.dst()))
        .collect();
    let masked: Vec<String> = policy
        .masked
        .iter()
        .filter_map(|m| m.to_str().map(clean))
        .collect();
    use crate::home::within;
    let hidden = |path: &str| {
        listed.iter().any(|dst| within(path, dst)) || masked.iter().any(|m| within(path, m))
    };
    // (A path that is not UTF-8 lies in none of these, all UTF-8.)
    let hidden_target = |target: &Path| target.to_str().is_some_and(|t| hidden(&clean(t)));
    // What the system directories' symlinks lead to in /etc (a JDK's security files,
    // Maven's m2.conf…), and what the request asks for there with --ro: into the snapshot,
    // file by file, secrets and what is not world-readable left out.
    let mut etc_files = crate::etc_links::files(&policy.system, |target| !hidden_target(target));
    for path in extra.ro.iter().filter(|p| p.starts_with(etc)) {
        if crate::etc_links::is_secret(path) {
            return Err(ViewError::EtcSecret { path: path.clone() });
        }
        let files = crate::etc_links::shown_files(path, ETC_FILES_MAX);
        if files.is_empty() {
            return Err(ViewError::EtcUnreadable { path: path.clone() });
        }
        etc_files.push((path.clone(), files));
    }
    let mut added: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (target, files) in etc_files {
        if hidden_target(&target) {
            continue;
        }
        for file in files {
            let Some(path) = file.path.to_str().map(clean) else {
                return Err(ViewError::NotUtf8 { path: file.path });
            };
            if hidden(&path)
                || added.contains(&path)
                || !within(&path, "/etc")
                || crate::etc_links::is_secret_str(&path)
            {
                continue;
            }
            let dst = path.clone();
            added.insert(path);
            let entry = if file.size <= COPY_MAX {
                Mount::Copy {
                    src: dst.clone(),
                    dst,
                    mode: file.mode,
                }
            } else {
                Mount::Bind {
                    src: dst.clone(),
                    dst,
                    writable: false,
                }
            };
            etc_mounts.push((entry, Origin::Etc));
        }
    }
    if !etc_mounts.is_empty() {
        rules.push(rule("/etc", FsAccess::Read));
        // One bind of a shared snapshot instead of a mount or copy per entry.
        let (entries, problem) =
            etc_snapshot::apply(etc_mounts.into_iter().map(|(m, _)| m).collect());
        if let Some(problem) = problem {
            tracing::warn!("{problem}");
        }
        mounts.extend(entries.into_iter().map(|m| (m, Origin::Etc)));
    }

    let workspace = utf8(extra.workspace)?;
    let writable = policy.workspace == WorkspaceAccess::Rw;
    mounts.push((
        Mount::Bind {
            src: workspace.clone(),
            dst: workspace.clone(),
            writable,
        },
        Origin::Workspace,
    ));
    rules.push(rule(
        &workspace,
        if writable {
            FsAccess::ReadWrite
        } else {
            FsAccess::ReadExec
        },
    ));

    mounts.push((
        Mount::Tmpfs {
            dst: "/tmp".into(),
            size: policy.tmp_size,
            mode: 0o1777,
        },
        Origin::Jail,
    ));
    mounts.push((
        Mount::Proc {
            dst: "/proc".into(),
        },
        Origin::Jail,
    ));
    mounts.push((Mount::Dev { dst: "/dev".into() }, Origin::Jail));
    rules.push(rule("/tmp", FsAccess::ReadWrite));
    rules.push(rule("/proc", FsAccess::Read));
    rules.push(rule("/dev", FsAccess::Device));
    rules.push(rule("/dev/shm", FsAccess::ReadWrite));

    // The policy's own extra paths are skipped when missing (like the system directories: one
    // policy serves many hosts); a request's must exist.
    let policy_ro = policy.ro.iter().map(|p| (p, true));
    let policy_rw = policy.rw.iter().map(|p| (p, true));
    for (paths, writable, origin) in [
        (
            policy_ro
                // Beneath /etc: in the snapshot (above), not bound.
                .chain(
                    extra
                        .ro
                        .iter()
                        .filter(|p| !p.starts_with(etc))
                        .map(|p| (p, false)),
                )
                .collect::<Vec<_>>(),
            false,
            Origin::ExtraRo,
        ),
        (
            policy_rw
                .chain(extra.rw.iter().map(|p| (p, false)))
                .collect::<Vec<_>>(),
            true,
            Origin::ExtraRw,
        ),
    ] {
        for (path, optional) in paths {
            let Some(meta) = lstat(path)? else {
                if optional {
                    continue;
                }
                return Err(inspect(path, io::ErrorKind::NotFound.into()));
            };
            let dst = utf8(path)?;
            let access = if writable {
                FsAccess::ReadWrite
            } else {
                FsAccess::ReadExec
            };
            rules.push(if meta.is_dir() {
                rule(&dst, access)
            } else {
                file_rule(&dst, access)
            });
            mounts.push((
                Mount::Bind {
                    src: dst.clone(),
                    dst,
                    writable,
                },
                origin,
            ));
        }
    }

    // The policy's extra tmpfs mounts: private, writable, sized like /tmp.
    for path in &policy.tmpfs {
        let dst = utf8(path)?;
        rules.push(rule(&dst, FsAccess::ReadWrite));
        mounts.push((
            Mount::Tmpfs {
                dst,
                size: policy.tmp_size,
                mode: 0o1777,
            },
            Origin::Tmpfs,
        ));
    }
    // The caller's home: its toolchains read-only in a private tmpfs, or all of it
    // read-only; its secrets masked below wherever a bind would show them.
    let mut home_secrets = Vec::new();
    if let Some(home) = extra.home.filter(|_| policy.home != Show::None) {
        let mut shown: Vec<PathBuf> = Vec::new();
        match policy.home {
            Show::None => {}
            Show::All => shown.push(home.to_path_buf()),
            Show::Toolchains => {
                if !taken(&mounts, home) {
                    mounts.push((
                        Mount::Tmpfs {
                            dst: utf8(home)?,
                            size: policy.tmp_size,
                            mode: 0o1777,
                        },
                        Origin::Home,
                    ));
                    rules.push(rule(&utf8(home)?, FsAccess::ReadWrite));
                }
                shown.extend(policy.home_toolchains.iter().map(|rel| home.join(rel)));
            }
        }
        for path in shown {
            // What the workspace or a --ro/--rw bind shows already, or lies within it.
            let covered = mounts.iter().any(|(m, origin)| {
                matches!(
                    origin,
                    Origin::Workspace | Origin::ExtraRo | Origin::ExtraRw
                ) && path.starts_with(m.dst())
            });
            if covered || taken(&mounts, &path) {
                continue;
            }
            let Some(meta) = lstat(&path)? else { continue };
            // A link (dotfiles kept in a repository) shows what it leads to, if that is
            // in the home and no secret.
            let src = if meta.file_type().is_symlink() {
                match path.canonicalize() {
                    Ok(target)
                        if target
                            .strip_prefix(home)
                            .is_ok_and(|rel| !crate::home::is_secret(rel)) =>
                    {
                        target
                    }
                    _ => continue,
                }
            } else {
                path.clone()
            };
            let dst = utf8(&path)?;
            consulted(&src);
            rules.push(if src.is_dir() {
                rule(&dst, FsAccess::ReadExec)
            } else {
                file_rule(&dst, FsAccess::ReadExec)
            });
            mounts.push((
                Mount::Bind {
                    src: utf8(&src)?,
                    dst,
                    writable: false,
                },
                Origin::Home,
            ));
            // The secrets beneath what this shows (compared relative to the home, as
            // strings: this runs for every entry shown, against every secret).
            let rel = path
                .strip_prefix(home)
                .ok()
                .and_then(Path::to_str)
                .map(clean);
            for secret in crate::home::SECRETS {
                let beneath = match &rel {
                    Some(rel) => {
                        let rel = rel.trim_start_matches('/');
                        rel.is_empty() || crate::home::within(secret, rel) && secret != rel
                    }
                    None => false,
                };
                if !beneath {
                    continue;
                }
                let secret = home.join(secret);
                if secret.starts_with(&path) && secret != path {
                    // A secret that is a link (dotfiles kept in a repository) cannot be
                    // mounted over: what it leads to is, where the bind shows that.
                    consulted(&secret);
                    let is_link = std::fs::symlink_metadata(&secret)
                        .is_ok_and(|m| m.file_type().is_symlink());
                    if is_link {
                        if let Ok(target) = secret.canonicalize() {
                            if target.starts_with(&path) {
                                home_secrets.push(target);
                            }
                        }
                    }
                    home_secrets.push(secret);
                }
            }
        }
    }

    // Masked paths: a directory is covered by an empty, root-owned tmpfs the tool cannot
    // write; a file by an empty read-only file. Only what the view shows can be masked; the rest is
    // invisible already.
    for path in policy.masked.iter().chain(&home_secrets) {
        let shown = mounts.iter().any(|(mount, origin)| {
            matches!(
                origin,
                Origin::System
                    | Origin::ExtraRo
                    | Origin::ExtraRw
                    | Origin::Workspace
                    | Origin::Home
            ) && path.starts_with(mount.dst())
        });
        let Some(meta) = lstat(path)? else { continue };
        if !shown || meta.file_type().is_symlink() {
            continue;
        }
        let dst = utf8(path)?;
        mounts.push((
            if meta.is_dir() {
                Mount::Tmpfs {
                    dst,
                    size: 4096,
                    mode: 0o555,
                }
            } else {
                let empty = crate::etc_snapshot::empty_file()
                    .map_err(|source| inspect(Path::new("<state>/empty"), source))?;
                consulted(&empty);
                Mount::Bind {
                    src: utf8(&empty)?,
                    dst,
                    writable: false,
                }
            },
            Origin::Masked,
        ));
    }

    for (i, (a, origin_a)) in mounts.iter().enumerate() {
        if let Some((_, origin_b)) = mounts[i + 1..].iter().find(|(b, _)| b.dst() == a.dst()) {
            return Err(ViewError::Twice {
                path: a.dst().to_string(),
                first: origin_a.name(),
                second: origin_b.name(),
            });
        }
    }
    // Parents before children; otherwise the order given (stable sort).
    mounts.sort_by_key(|(mount, _)| depth(mount.dst()));
    Ok(View {
        mounts: mounts.into_iter().map(|(mount, _)| mount).collect(),
        rules,
    })
}

/// Whether something is mounted at `path` already.
/// `path` as a clean string to compare: no repeated or trailing separators, no `.`
/// components (what Path comparisons ignore too).
fn clean(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for part in path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
    {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn taken(mounts: &[(Mount, Origin)], path: &Path) -> bool {
    match path.to_str().map(clean) {
        Some(path) => mounts.iter().any(|(m, _)| clean(m.dst()) == path),
        None => false,
    }
}

/// Small regular files are copied into the jail's read-only root (one file write instead of
/// a bind mount, about half the cost); directories and large files are bound read-only.
const COPY_MAX: u64 = 1 << 20;
/// The most files one `/etc` path adds to the snapshot (a directory is walked).
const ETC_FILES_MAX: usize = 512;

fn etc_entry(src: String, dst: String, meta: &std::fs::Metadata) -> Mount {
    use std::os::unix::fs::PermissionsExt;
    if meta.is_file() && meta.len() <= COPY_MAX {
        Mount::Copy {
            src,
            dst,
            mode: meta.permissions().mode() & 0o777,
        }
    } else {
        Mount::Bind {
            src,
            dst,
            writable: false,
        }
    }
}

fn rule(path: &str, access: FsAccess) -> LandlockRule {
    LandlockRule {
        path: path.to_string(),
        access,
        dir: true,
    }
}

fn file_rule(path: &str, access: FsAccess) -> LandlockRule {
    LandlockRule {
        path: path.to_string(),
        access,
        dir: false,
    }
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

fn lstat(path: &Path) -> Result<Option<std::fs::Metadata>, ViewError> {
    consulted(path);
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(inspect(path, source)),
    }
}

fn inspect(path: &Path, source: io::Error) -> ViewError {
    ViewError::Inspect {
        path: path.to_path_buf(),
        source,
    }
}

fn utf8(path: &Path) -> Result<String, ViewError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ViewError::NotUtf8 {
            path: path.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compare_as_clean_strings_as_they_would_as_paths() {
        assert_eq!(clean("/etc//ssl/./certs/"), "/etc/ssl/certs");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("//"), "/");
        for (path, dir) in [
            ("/etc/ssl/certs", "/etc/ssl"),
            ("/etc/ssl", "/etc/ssl"),
            ("/etc/sslx", "/etc/ssl"),
            ("/etc", "/etc/ssl"),
            ("/anything", "/"),
            ("/etc/java-17-openjdk/security", "/etc/java-17"),
        ] {
            assert_eq!(
                crate::home::within(&clean(path), &clean(dir)),
                Path::new(path).starts_with(dir),
                "{path} in {dir}"
            );
        }
    }
    use crate::policy::BUILTIN_DEFAULT;

    fn policy() -> Policy {
        Policy::parse("default", Path::new("default.toml"), BUILTIN_DEFAULT).expect("valid")
    }

    #[test]
    fn parents_come_before_children_and_nothing_is_mounted_twice() {
        let ws = tempfile::tempdir().expect("tempdir");
        let view = build(
            &policy(),
            &Extra {
                workspace: ws.path(),
                ro: &[],
                rw: &[],
                home: None,
            },
        )
        .expect("view");
        let dsts: Vec<&str> = view.mounts.iter().map(Mount::dst).collect();
        let tmp = dsts
            .iter()
            .position(|d| *d == "/tmp")
            .expect("/tmp mounted");
        let ws_pos = dsts
            .iter()
            .position(|d| Path::new(d) == ws.path())
            .expect("workspace mounted");
        assert!(tmp < ws_pos, "{dsts:?}");
        assert!(!dsts.contains(&"/etc/shadow"));
        assert!(view
            .rules
            .iter()
            .any(|r| Path::new(&r.path) == ws.path() && r.access == FsAccess::ReadWrite));

        let err = build(
            &policy(),
            &Extra {
                workspace: ws.path(),
                ro: &[ws.path().to_path_buf()],
                rw: &[],
                home: None,
            },
        )
        .expect_err("workspace bound twice");
        assert!(err.to_string().contains("mounted twice"), "{err}");
    }
}
