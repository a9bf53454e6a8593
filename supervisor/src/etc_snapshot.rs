//! A shared, read-only snapshot of the policy's `/etc` entries, bound into every jail as one
//! mount.
//!
//! Copying or binding a dozen small files per job costs ~0.6 ms of the jail's set-up on our
//! hosts; one bind of a prepared directory costs a few tens of µs. The snapshot lives in
//! `/run/toolbox/etc/<key>` (`$TOOLBOX_STATE_DIR`), where the key hashes what it was made
//! from (each source's device, inode, size, mtime and mode, each symlink's target): any
//! change on the host makes a new snapshot. A snapshot is never changed once made, and
//! none is deleted while a job could still be using it (unused for longer than the longest
//! job). If the state directory cannot be used safely, jobs get per-job copies instead.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use toolbox_spec::Mount;

use crate::view_memo::consulted;

/// Longer than any job may run (7 days), so an unused snapshot is no longer bound anywhere.
const KEEP_UNUSED: Duration = Duration::from_secs(8 * 86400);
/// How stale a snapshot's "last used" time may get before a job refreshes it.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);

/// An empty, read-only regular file in the state directory: what a masked file is covered
/// with (a device node like /dev/null would not open under a nodev bind).
pub fn empty_file() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let dir = state_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("empty");
    let usable = |meta: &std::fs::Metadata| {
        meta.file_type().is_file() && meta.len() == 0 && meta.uid() == 0 && meta.mode() & 0o222 == 0
    };
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if usable(&meta) {
            return Ok(path);
        }
        std::fs::remove_file(&path)?;
    }
    let tmp = dir.join(format!("empty.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn state_dir() -> PathBuf {
    std::env::var_os("TOOLBOX_STATE_DIR")
        .map_or_else(|| PathBuf::from("/run/toolbox"), PathBuf::from)
}

/// Replace the per-entry `/etc` mounts (copies and symlinks; directory and large-file binds
/// stay, on top) with one read-only bind of the snapshot. On any error, the entries are
/// returned unchanged, with the reason.
pub fn apply(entries: Vec<Mount>) -> (Vec<Mount>, Option<String>) {
    if !entries
        .iter()
        .any(|m| matches!(m, Mount::Copy { .. } | Mount::Symlink { .. }))
    {
        return (entries, None);
    }
    match snapshot(&state_dir().join("etc"), &entries) {
        Ok(dir) => {
            let mut mounts = vec![Mount::Bind {
                src: dir.to_string_lossy().into_owned(),
                dst: "/etc".into(),
                writable: false,
            }];
            mounts.extend(
                entries
                    .into_iter()
                    .filter(|m| matches!(m, Mount::Bind { .. })),
            );
            (mounts, None)
        }
        Err(err) => (
            entries,
            Some(format!(
                "the /etc snapshot could not be used ({err}); copying per job"
            )),
        ),
    }
}

fn snapshot(root: &Path, entries: &[Mount]) -> io::Result<PathBuf> {
    ensure_private_dir(root.parent().unwrap_or(root))?;
    ensure_private_dir(root)?;
    let dir = root.join(key(entries)?);
    consulted(&dir);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == 0 => {
            let age = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age > TOUCH_AFTER {
                // Mark it used: the sweep below keeps what was used lately.
                let _ = std::fs::File::open(&dir).and_then(|f| f.set_modified(SystemTime::now()));
            }
            return Ok(dir);
        }
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is not a snapshot of ours",
                dir.display()
            )))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let building = root.join(format!(
        ".building-{}-{}",
        std::process::id(),
        crate::job::new_job_id()
    ));
    let made = build(&building, entries).and_then(|()| std::fs::rename(&building, &dir));
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&building);
        // Another supervisor may have made the same snapshot meanwhile.
        if !std::fs::symlink_metadata(&dir)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            made?;
        }
    }
    sweep(root, &dir);
    Ok(dir)
}

/// What the snapshot is made from, hashed.
fn key(entries: &[Mount]) -> io::Result<String> {
    let mut hasher = DefaultHasher::new();
    for entry in entries {
        match entry {
            Mount::Copy { src, dst, mode } => {
                consulted(Path::new(src));
                let meta = std::fs::metadata(src)?;
                (
                    1u8,
                    src,
                    dst,
                    mode,
                    meta.dev(),
                    meta.ino(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                )
                    .hash(&mut hasher);
            }
            Mount::Symlink { target, dst } => (2u8, target, dst).hash(&mut hasher),
            Mount::Bind { src, dst, .. } => {
                consulted(Path::new(src));
                (3u8, src, dst, Path::new(src).is_dir()).hash(&mut hasher)
            }
            other => return Err(io::Error::other(format!("unexpected /etc entry {other:?}"))),
        }
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn build(dir: &Path, entries: &[Mount]) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    for entry in entries {
        let dst = match entry {
            Mount::Copy { dst, .. } | Mount::Symlink { dst, .. } | Mount::Bind { dst, .. } => dst,
            _ => continue,
        };
        let path = dir.join(
            dst.strip_prefix("/etc/")
                .ok_or_else(|| io::Error::other(format!("{dst} is not in /etc")))?,
        );
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        match entry {
            Mount::Copy { src, mode, .. } => {
                std::fs::copy(src, &path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
            }
            Mount::Symlink { target, .. } => std::os::unix::fs::symlink(target, &path)?,
            // Mount points for what is bound on top.
            Mount::Bind { src, .. } if Path::new(src).is_dir() => {
                std::fs::DirBuilder::new().mode(0o755).create(&path)?
            }
            Mount::Bind { .. } => drop(std::fs::File::create(&path)?),
            _ => {}
        }
    }
    Ok(())
}

/// A directory only root may change: created if missing, refused if anyone else could
/// have planted or could alter what is in it.
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    consulted(dir);
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must be a directory owned by root and writable by no one else",
            dir.display()
        )));
    }
    Ok(())
}

/// Remove snapshots unused for longer than any job may run, and abandoned builds.
fn sweep(root: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let unused_for = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok());
        if path != current && unused_for.is_some_and(|age| age > KEEP_UNUSED) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(src: &Path) -> Vec<Mount> {
        vec![
            Mount::Copy {
                src: src.to_string_lossy().into_owned(),
                dst: "/etc/a/file".into(),
                mode: 0o644,
            },
            Mount::Symlink {
                target: "/usr/share/zoneinfo/UTC".into(),
                dst: "/etc/localtime".into(),
            },
        ]
    }

    #[test]
    fn a_snapshot_is_made_once_and_a_change_makes_a_new_one() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: snapshots must be owned by root");
            return;
        }
        let state = tempfile::tempdir().expect("tempdir");
        let src = state.path().join("source");
        std::fs::write(&src, "one").expect("write");
        let root = state.path().join("etc");
        let first = snapshot(&root, &entries(&src)).expect("snapshot");
        assert_eq!(
            std::fs::read_to_string(first.join("a/file")).expect("copy"),
            "one"
        );
        assert_eq!(
            std::fs::read_link(first.join("localtime")).expect("link"),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(
            snapshot(&root, &entries(&src)).expect("again"),
            first,
            "unchanged sources share a snapshot"
        );
        std::fs::write(&src, "two, longer").expect("rewrite");
        let second = snapshot(&root, &entries(&src)).expect("snapshot");
        assert_ne!(second, first);
        assert_eq!(
            std::fs::read_to_string(second.join("a/file")).expect("copy"),
            "two, longer"
        );
        assert_eq!(
            std::fs::read_to_string(first.join("a/file")).expect("old copy"),
            "one",
            "a snapshot never changes"
        );
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused() {
        let state = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let src = state.path().join("source");
        std::fs::write(&src, "x").expect("write");
        let err = snapshot(&state.path().join("etc"), &entries(&src)).expect_err("refused");
        assert!(err.to_string().contains("writable by no one else"), "{err}");
    }
}
