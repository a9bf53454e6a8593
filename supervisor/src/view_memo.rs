//! A daemon's memo of what it builds from the host's files — the jail's view
//! ([`crate::view::build`]: ~0.3 ms of `stat`s of the host's `/etc`, the home's toolchains,
//! the snapshot's sources, for every job) — kept exactly as long as nothing it read has
//! changed.
//!
//! While a value is built, every host path it consults is noted ([`consulted`]). The memo
//! then watches each of them with inotify: every directory on the way to it from `/` (and
//! through every symlink met on the way, as the kernel resolves it), and the file itself.
//! A change to any of them — an entry created, removed or renamed, a file written, modes or
//! owners changed — and any change to the daemon's mount table (`/proc/self/mountinfo`
//! polled for `POLLPRI`) forgets everything memoised. A value is memoised only once a build
//! that *began* with all its paths watched gives the same value again: no change can fall
//! between what was read and what is watched. (So the first two jobs of a kind build; the
//! rest read the memo until something changes.)
//!
//! What inotify cannot vouch for is never memoised: a path on a network or FUSE filesystem
//! (changes made elsewhere raise no event here), or one that could not be watched. A value
//! is also rebuilt after [`MAX_AGE`] whatever happens, as a backstop, and so that what the
//! build does on the way (touching the `/etc` snapshot it uses, so that no sweep removes
//! it) still happens.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The longest a value is served from the memo without a build.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// The most symlinks followed on the way to one path (the kernel's limit too).
const LINKS_MAX: usize = 40;

/// The most values kept (one per policy and workspace, about); past it, all are forgotten.
const ENTRIES_MAX: usize = 64;

thread_local! {
    static CONSULTED: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
}

/// The value being built on this thread consulted the host's `path`: its metadata, where it
/// leads, or its entries. (Nothing is noted unless a memo is building.)
pub fn consulted(path: &Path) {
    CONSULTED.with(|noted| {
        if let Some(noted) = noted.borrow_mut().as_mut() {
            noted.push(path.to_path_buf());
        }
    });
}

/// `build`'s value and the paths it consulted.
fn noting<T>(build: impl FnOnce() -> T) -> (T, Vec<PathBuf>) {
    CONSULTED.with(|noted| *noted.borrow_mut() = Some(Vec::new()));
    let value = build();
    let noted = CONSULTED.with(|noted| noted.borrow_mut().take());
    (value, noted.unwrap_or_default())
}

/// Values keyed by `K`, each kept while what it was built from stays as it was.
pub struct Memo<K, V> {
    state: Mutex<State<K, V>>,
    max_age: Duration,
}

struct State<K, V> {
    /// What is watched since the last change seen; none until a value is to be kept.
    watch: Option<Watch>,
    entries: Vec<(K, Entry<V>)>,
    /// Builds and values served from the memo, for the curious (tests, metrics).
    counts: Counts,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub built: u64,
    pub served: u64,
}

enum Entry<V> {
    /// Built once, its paths watched since: memoised if the next build gives the same.
    Candidate(V),
    Kept {
        value: V,
        since: Instant,
    },
    /// It consults what inotify cannot vouch for: built every time (until a change).
    Unwatchable,
}

impl<K: PartialEq, V: Clone + PartialEq> Memo<K, V> {
    pub fn new() -> Memo<K, V> {
        Memo::with_max_age(MAX_AGE)
    }

    pub fn with_max_age(max_age: Duration) -> Memo<K, V> {
        Memo {
            state: Mutex::new(State {
                watch: None,
                entries: Vec::new(),
                counts: Counts::default(),
            }),
            max_age,
        }
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value for `key`: memoised, or built by `build` (which notes what it consults
    /// with [`consulted`]). Errors are never kept.
    ///
    /// The lock is held while building: what is watched cannot change in the middle of a
    /// build, which is what lets a build tell that its paths were watched before it began.
    pub fn get_or_build<E>(&self, key: K, build: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let mut state = self.lock();
        state.forget_if_changed();
        let at = state.entries.iter().position(|(k, _)| *k == key);
        if let Some(Entry::Kept { value, since }) = at.map(|at| &state.entries[at].1) {
            if since.elapsed() < self.max_age {
                let value = value.clone();
                state.counts.served += 1;
                return Ok(value);
            }
        }
        let (built, noted) = noting(build);
        state.counts.built += 1;
        let value = built?;
        // Something changed while we built: what we read may be half old, half new. The
        // value is as fresh as any build's; it is only not kept.
        if state.forget_if_changed() {
            return Ok(value);
        }
        let watched_before = state
            .watch
            .as_ref()
            .is_some_and(|watch| noted.iter().all(|path| watch.covers(path)));
        let previous = at.map(|at| state.entries.remove(at).1);
        let entry = match previous {
            Some(Entry::Unwatchable) => Entry::Unwatchable,
            Some(Entry::Candidate(before) | Entry::Kept { value: before, .. })
                if watched_before && before == value =>
            {
                Entry::Kept {
                    value: value.clone(),
                    since: Instant::now(),
                }
            }
            _ => match state.watch_all(&noted) {
                Ok(()) => Entry::Candidate(value.clone()),
                Err(why) => {
                    tracing::debug!("not memoised: {why}");
                    Entry::Unwatchable
                }
            },
        };
        if state.entries.len() >= ENTRIES_MAX {
            // Values go, not what is watched: the entry kept below relies on it.
            state.entries.clear();
        }
        state.entries.push((key, entry));
        Ok(value)
    }
}

impl<K: PartialEq, V: Clone + PartialEq> Default for Memo<K, V> {
    fn default() -> Self {
        Memo::new()
    }
}

impl<K, V> State<K, V> {
    /// Whether anything watched changed (then everything is forgotten).
    fn forget_if_changed(&mut self) -> bool {
        let changed = self.watch.as_mut().is_some_and(Watch::changed);
        if changed {
            self.forget();
        }
        changed
    }

    fn forget(&mut self) {
        self.entries.clear();
        self.watch = None;
    }

    fn watch_all(&mut self, paths: &[PathBuf]) -> Result<(), String> {
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => self
                .watch
                .insert(Watch::new().map_err(|err| format!("inotify: {err}"))?),
        };
        for path in paths {
            watch.add(path)?;
        }
        Ok(())
    }
}

/// One generation of watches: an inotify instance and the mount table.
struct Watch {
    inotify: Inotify,
    mounts: std::fs::File,
    /// The paths whose way is watched.
    covered: HashSet<PathBuf>,
    /// Whether each device's filesystem is one inotify vouches for.
    devices: HashMap<u64, bool>,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_ATTRIB
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

const FILE_EVENTS: AddWatchFlags = AddWatchFlags::IN_ATTRIB
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

impl Watch {
    fn new() -> std::io::Result<Watch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // Opened, it holds the table's version; poll says (POLLPRI) when the table moved on.
        let mounts = std::fs::File::open("/proc/self/mountinfo")?;
        Ok(Watch {
            inotify,
            mounts,
            covered: HashSet::new(),
            devices: HashMap::new(),
        })
    }

    /// Whether anything watched changed since the watches were made.
    fn changed(&mut self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        match self.inotify.read_events() {
            Ok(events) if events.is_empty() => {}
            Err(nix::errno::Errno::EAGAIN) => {}
            // An event (or an error reading them): something changed, or may have.
            _ => return true,
        }
        let mut fds = [PollFd::new(self.mounts.as_fd(), PollFlags::POLLPRI)];
        // A change since it was opened, or an error: either way, forget.
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    fn covers(&self, path: &Path) -> bool {
        self.covered.contains(path)
    }

    /// Watch the way to `path` (absolute), as the kernel would resolve it, and the file or
    /// directory at its end: from `/` down, each directory before what is in it, so that a
    /// change made while we walk is seen by a watch made before.
    fn add(&mut self, path: &Path) -> Result<(), String> {
        if self.covered.contains(path) {
            return Ok(());
        }
        if !path.is_absolute() {
            return Err(format!("{} is not absolute", path.display()));
        }
        let mut links = 0;
        // Where we are (a directory, resolved), and what is left to walk.
        let mut at = PathBuf::from("/");
        let mut left: Vec<std::ffi::OsString> = components(path);
        left.reverse();
        self.watch_one(&at, true)?;
        while let Some(name) = left.pop() {
            if name == ".." {
                at.pop();
                continue;
            }
            let next = at.join(&name);
            let meta = match std::fs::symlink_metadata(&next) {
                Ok(meta) => meta,
                // Missing, or not to be looked into: the directory it would be in is
                // watched, and its appearing there is an event.
                Err(_) => break,
            };
            if meta.file_type().is_symlink() {
                links += 1;
                if links > LINKS_MAX {
                    return Err(format!("{}: too many links", path.display()));
                }
                let target = std::fs::read_link(&next)
                    .map_err(|err| format!("{}: {err}", next.display()))?;
                if target.is_absolute() {
                    at = PathBuf::from("/");
                }
                let mut more = components(&target);
                more.reverse();
                left.extend(more);
                continue;
            }
            let is_dir = meta.is_dir();
            self.device_ok(&next, meta.dev())?;
            self.watch_one(&next, is_dir)?;
            if !is_dir {
                // A file's end of the way (anything after it does not resolve).
                break;
            }
            at = next;
        }
        self.covered.insert(path.to_path_buf());
        Ok(())
    }

    fn watch_one(&mut self, path: &Path, is_dir: bool) -> Result<(), String> {
        let events = if is_dir { DIR_EVENTS } else { FILE_EVENTS };
        self.inotify
            .add_watch(path, events)
            .map(drop)
            .map_err(|errno| format!("watch {}: {errno}", path.display()))
    }

    /// Whether changes to files on `path`'s filesystem reach our inotify: not on a network
    /// filesystem or FUSE, where another machine or process changes them unseen.
    fn device_ok(&mut self, path: &Path, dev: u64) -> Result<(), String> {
        let ok = match self.devices.get(&dev) {
            Some(&ok) => ok,
            None => {
                let ok = nix::sys::statfs::statfs(path)
                    .is_ok_and(|fs| local_filesystem(fs.filesystem_type().0 as i64));
                self.devices.insert(dev, ok);
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} lies on a filesystem whose changes inotify may not see",
                path.display()
            ))
        }
    }
}

/// A path's normal components and `..`s (`.` and the root dropped).
fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Filesystems whose every change is made on this machine, through this kernel.
fn local_filesystem(magic: i64) -> bool {
    const LOCAL: [i64; 12] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x858_458F6, // ramfs
        0x794C_7630, // overlayfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x7371_7368, // squashfs (read-only)
        0xE0F5_E1E2, // erofs (read-only)
        0x3153_464A, // jfs
        0x5265_4973, // reiserfs
    ];
    LOCAL.contains(&magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memo of a file's text, noting the file.
    fn read(memo: &Memo<PathBuf, String>, path: &Path) -> String {
        memo.get_or_build(path.to_path_buf(), || {
            consulted(path);
            std::fs::read_to_string(path).or_else(|_| Ok::<_, ()>("<none>".into()))
        })
        .expect("build")
    }

    /// Read `path` until the memo serves it: kept. (Other processes' changes near it — in
    /// /tmp, where tests make their directories — can make it build again: retried.)
    fn kept(memo: &Memo<PathBuf, String>, path: &Path) {
        for _ in 0..200 {
            let before = memo.counts();
            read(memo, path);
            if memo.counts().served == before.served + 1 {
                return;
            }
        }
        panic!("{} was never served from the memo", path.display());
    }

    #[test]
    fn any_change_on_the_way_to_what_was_read_forgets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let file = sub.join("a");
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: Vec<Change> = vec![
            (
                "written",
                Box::new(|| std::fs::write(&file, "two").expect("write")),
            ),
            (
                "its mode changed",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .expect("chmod")
                }),
            ),
            (
                "replaced by a rename",
                Box::new(|| {
                    let other = sub.join("other");
                    std::fs::write(&other, "three").expect("write");
                    std::fs::rename(&other, &file).expect("rename");
                }),
            ),
            (
                "its directory renamed away and another made in its place",
                Box::new(|| {
                    std::fs::rename(&sub, dir.path().join("old")).expect("rename");
                    std::fs::create_dir(&sub).expect("mkdir");
                    std::fs::write(&file, "four").expect("write");
                }),
            ),
            (
                "removed",
                Box::new(|| std::fs::remove_file(&file).expect("rm")),
            ),
        ];
        for (what, change) in changes {
            if !file.exists() {
                std::fs::write(&file, "one").expect("write");
            }
            let memo = Memo::new();
            kept(&memo, &file);
            change();
            let now = std::fs::read_to_string(&file).unwrap_or_else(|_| "<none>".into());
            assert_eq!(read(&memo, &file), now, "{what}: the memo served what was");
            let _ = std::fs::remove_dir_all(dir.path().join("old"));
        }
    }

    #[test]
    fn a_missing_path_is_watched_for_where_it_would_appear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("later/a");
        let memo = Memo::new();
        kept(&memo, &file);
        std::fs::create_dir(dir.path().join("later")).expect("mkdir");
        std::fs::write(&file, "here").expect("write");
        assert_eq!(read(&memo, &file), "here");
    }

    #[test]
    fn a_link_on_the_way_is_followed_and_its_target_watched() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [("x", "from x"), ("y", "from y")] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
            std::fs::write(dir.path().join(name).join("f"), text).expect("write");
        }
        let link = dir.path().join("current");
        std::os::unix::fs::symlink("x", &link).expect("link");
        let file = link.join("f");
        let memo = Memo::new();
        kept(&memo, &file);
        // The target's file changes: seen through the link.
        std::fs::write(dir.path().join("x/f"), "x again").expect("write");
        assert_eq!(read(&memo, &file), "x again");
        kept(&memo, &file);
        // The link is pointed elsewhere.
        std::fs::remove_file(&link).expect("rm");
        std::os::unix::fs::symlink("y", &link).expect("link");
        assert_eq!(read(&memo, &file), "from y");
    }

    /// The mount namespace of the test that runs the next in one of its own.
    const PARENT_NS: &str = "TOOLBOX_TEST_PARENT_MOUNT_NS";

    #[test]
    fn a_mount_on_the_way_forgets_what_was_kept() {
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
                "view_memo::tests::in_a_mount_namespace_a_mount_forgets",
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
    #[ignore = "run by a_mount_on_the_way_forgets_what_was_kept, in a mount namespace of its own"]
    fn in_a_mount_namespace_a_mount_forgets() {
        let parent = std::env::var_os(PARENT_NS).expect("run by a_mount_on_the_way_…");
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
        assert_ne!(
            ours.as_os_str(),
            parent,
            "not in a mount namespace of its own"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, "beneath").expect("write");
        let memo = Memo::new();
        kept(&memo, &file);
        // No inotify event: only the mount table says the way changed.
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .expect("mount");
        let read_now = read(&memo, &file);
        let _ = nix::mount::umount(dir.path());
        assert_eq!(
            read_now, "<none>",
            "the memo served what lies beneath the mount"
        );
    }

    #[test]
    fn a_value_is_built_again_after_its_max_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, "one").expect("write");
        let memo = Memo::with_max_age(Duration::from_millis(500));
        kept(&memo, &file);
        std::thread::sleep(Duration::from_millis(600));
        let before = memo.counts();
        read(&memo, &file);
        assert_eq!(memo.counts().built, before.built + 1, "served past its age");
    }

    #[test]
    fn errors_are_not_kept_and_what_noted_nothing_is_kept_alone() {
        let memo: Memo<u32, u32> = Memo::new();
        assert_eq!(memo.get_or_build(1, || Err::<u32, &str>("no")), Err("no"));
        for _ in 0..3 {
            assert_eq!(memo.get_or_build(1, || Ok::<_, ()>(7)), Ok(7));
        }
        assert_eq!(
            memo.counts(),
            Counts {
                built: 3,
                served: 1
            }
        );
    }
}
