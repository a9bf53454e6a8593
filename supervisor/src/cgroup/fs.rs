//! Reading the host's cgroup layout, and the small file operations both backends share.
//! Cgroup control files are written, never created: a missing file is an error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CgroupError;

/// One line of `/proc/self/mountinfo`, as far as cgroups care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The path inside the filesystem that is mounted (`/` unless a subtree is bound).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: Vec<String>,
    /// Mounted read-only (the mount's own options, or the superblock's): a container's
    /// default `/sys/fs/cgroup`.
    pub read_only: bool,
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub id: u32,
    /// Controllers of a v1 hierarchy (`name=systemd` too); empty for the v2 line.
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        // Only cgroup filesystems matter; most lines are not.
        .filter(|line| line.contains(" - cgroup"))
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let _source = right.next()?;
            let super_options: Vec<String> = right
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            let read_only = left.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro"))
                || super_options.iter().any(|o| o == "ro");
            Some(MountEntry {
                root: PathBuf::from(unescape(left.get(3)?)),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fstype,
                super_options,
                read_only,
            })
        })
        .collect()
}

pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = PathBuf::from(parts.next()?);
            Some(ProcCgroup {
                id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of `own` (a cgroup path as `/proc/self/cgroup` gives it) inside a cgroupfs
/// mounted at `mount` (showing the hierarchy's subtree `mount.root`), beneath `root`.
pub fn cgroup_dir(root: &Path, mount: &MountEntry, own: &Path) -> PathBuf {
    let relative = own.strip_prefix(&mount.root).unwrap_or(own);
    beneath(root, &mount.mount_point).join(relative.strip_prefix("/").unwrap_or(relative))
}

/// `path` (absolute) re-rooted beneath `root`.
pub fn beneath(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Open a cgroup file or directory, close-on-exec.
pub fn open(path: &Path, flags: nix::fcntl::OFlag) -> Result<std::os::fd::OwnedFd, CgroupError> {
    open_plain(path, flags).map_err(|source| CgroupError::Open {
        path: path.to_path_buf(),
        source,
    })
}

pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut file = std::fs::File::from(open_plain(path, nix::fcntl::OFlag::O_WRONLY).map_err(err)?);
    file.write_all(value.as_bytes()).map_err(err)
}

/// `openat(2)` itself, close-on-exec: musl's `open(3)` follows each O_CLOEXEC open with an
/// fcntl(F_SETFD) of its own, one call more for every cgroup file a job reads or writes.
fn open_plain(path: &Path, flags: nix::fcntl::OFlag) -> std::io::Result<std::os::fd::OwnedFd> {
    Ok(nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        path,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?)
}

/// A whole kernel-generated text file (procfs, cgroupfs) in as few reads as it takes. Such
/// files claim a size of 0, so `std::fs::read_to_string` starts with small probing reads
/// (seven of them for our mountinfo, each generating the text anew); room for the whole
/// text up front reads it in one go. Plain reads until the end: `File::read_to_end` would
/// first fstat and lseek to size its buffer, two calls more for each of the half dozen
/// files read at every job's end.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::from(open_plain(path, nix::fcntl::OFlag::O_RDONLY)?);
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The files a job's figures come from, opened once when its cgroup is made (for a prepared
/// jail, long before its job) and read at offset 0 each time: cgroupfs writes a file's text
/// anew for every read from its start. A job's end then reads them without a path walk and
/// an open each (its six v1 files: ~38 µs by path, ~4 µs held, measured on our VMs). A file
/// that could not be opened (a controller not enabled, an older kernel) is read by path.
#[derive(Debug, Default)]
pub struct Held(Vec<(&'static str, std::fs::File)>);

impl Held {
    /// Open each `(name, path)` that can be.
    pub fn open(files: impl IntoIterator<Item = (&'static str, PathBuf)>) -> Held {
        Held(
            files
                .into_iter()
                .filter_map(|(name, path)| {
                    let fd = open_plain(&path, nix::fcntl::OFlag::O_RDONLY).ok()?;
                    Some((name, std::fs::File::from(fd)))
                })
                .collect(),
        )
    }

    /// The text of file `name`: held, or by `path` if it is not.
    pub fn text(&self, name: &str, path: Option<PathBuf>) -> Option<String> {
        match self.0.iter().find(|(held, _)| *held == name) {
            Some((_, file)) => read_from_start(file).ok(),
            None => read_text(&path?).ok(),
        }
    }
}

/// A cgroup file's whole text by `pread` from offset 0, one read for the few bytes these
/// files hold: a generated file's read fills the buffer unless the text ends first.
fn read_from_start(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
                buf.resize(len * 2, 0);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn read(path: &Path) -> Result<String, CgroupError> {
    read_text(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The value of `key` in a flat keyed file (`key value` per line: memory.events, cpu.stat).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The pids in a `cgroup.procs`; none if the cgroup is already gone.
pub fn read_pids(procs: &Path) -> Result<Vec<i32>, CgroupError> {
    match read_text(procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: procs.to_path_buf(),
            source,
        }),
    }
}

/// SIGKILL every process listed in `procs` until it lists none.
///
/// A pid read from the file may die and be reused by an unrelated process before we signal
/// it, so each is pinned with a pidfd first and checked to be still in the cgroup
/// (`/proc/PID/cgroup` names `member_path`) before the signal goes through that pidfd.
pub fn kill_until_empty(procs: &Path, member_path: &Path, dir: &Path) -> Result<(), CgroupError> {
    let mut pids = read_pids(procs)?;
    for attempt in 0u32..200 {
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            crate::sys::kill_if_member(*pid, member_path);
        }
        std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20)) + 1));
        pids = read_pids(procs)?;
    }
    Err(CgroupError::NotEmpty {
        path: dir.to_path_buf(),
        pids,
    })
}

/// `rmdir` a cgroup, retrying briefly while the kernel finishes tearing down its last tasks.
pub fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut last = None;
    for attempt in 0u32..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(err);
                std::thread::sleep(Duration::from_millis(u64::from(attempt.min(10)) + 1));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(CgroupError::Remove {
        path: dir.to_path_buf(),
        source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_files_are_read_whole_from_the_start_each_time_and_the_rest_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peak = dir.path().join("memory.peak");
        let stat = dir.path().join("cpu.stat");
        std::fs::write(&peak, "4096\n").expect("write");
        let long = "user_usec 12\n".repeat(1000);
        std::fs::write(&stat, &long).expect("write");
        let held = Held::open([
            ("memory.peak", peak.clone()),
            ("cpu.stat", stat.clone()),
            ("pids.peak", dir.path().join("pids.peak")),
        ]);
        assert_eq!(held.0.len(), 2, "what does not exist is not held");
        // Through the held file, not the path: the path is gone.
        let moved = dir.path().join("moved");
        std::fs::rename(&peak, &moved).expect("rename");
        assert_eq!(held.text("memory.peak", None).as_deref(), Some("4096\n"));
        // Read again from the start, as it is now (cgroupfs writes it anew).
        std::fs::write(&moved, "8192\n").expect("rewrite");
        assert_eq!(held.text("memory.peak", None).as_deref(), Some("8192\n"));
        // Longer than one read.
        assert_eq!(held.text("cpu.stat", None).as_deref(), Some(long.as_str()));
        // Not held: by path, if there is one.
        let pids = dir.path().join("pids.peak");
        assert_eq!(held.text("pids.peak", Some(pids.clone())), None);
        std::fs::write(&pids, "3\n").expect("write");
        assert_eq!(held.text("pids.peak", Some(pids)).as_deref(), Some("3\n"));
        assert_eq!(held.text("pids.peak", None), None);
    }

    const MOUNTINFO: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified ro,relatime - cgroup2 cgroup2 rw
50 31 0:40 /kubepods/x /sys/fs/cgroup/my\\040cpu rw - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_subtree_roots() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].fstype, "cgroup");
        assert!(mounts[0].super_options.contains(&"memory".to_string()));
        assert_eq!(mounts[2].fstype, "cgroup2");
        assert!(mounts[2].read_only && !mounts[0].read_only);
        assert_eq!(mounts[3].mount_point, Path::new("/sys/fs/cgroup/my cpu"));
        assert_eq!(mounts[3].root, Path::new("/kubepods/x"));
        let dir = cgroup_dir(Path::new("/fake"), &mounts[3], Path::new("/kubepods/x/job"));
        assert_eq!(dir, Path::new("/fake/sys/fs/cgroup/my cpu/job"));
    }

    #[test]
    fn proc_cgroup_lines_parse() {
        let own = parse_proc_cgroup(
            "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice/x.scope\n",
        );
        assert_eq!(own[0].controllers, vec!["memory"]);
        assert_eq!(own[0].path, Path::new("/process_api/abc"));
        assert_eq!(own[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(own[2].controllers.is_empty());
        assert_eq!(keyed("low 0\noom 2\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(
            keyed("oom_kill_disable 0\noom_kill 1\n", "oom_kill"),
            Some(1)
        );
    }
}
