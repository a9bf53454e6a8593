//! The jail's root: a small tmpfs holding exactly the spec's mounts, then `pivot_root`.
//!
//! Every host source is opened (a detached `open_tree` clone, or a file to copy) while the
//! host view is whole, so nothing mounted later can shadow a source. Every mount point is
//! created and opened one component at a time beneath the new root with `openat2(
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a symlink planted in a bound directory can never
//! redirect a mount out of the jail. Mounts are attached by descriptor (`move_mount`), never
//! by path.
//!
//! Every system call is expensive here (a few µs each on our VMs), so the builder keeps the
//! directories it opened and creates files with umask 0 (no chmod afterwards).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use toolbox_spec::{IdMap, JailSpec, Mount};

use crate::error::SetupError;
use crate::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// The device nodes of the jail's `/dev`: name, major, minor (stable Linux numbers).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// The symlinks every `/dev` has.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    // The multiplexer of the jail's own devpts instance (below), as container runtimes
    // lay it out.
    ("ptmx", "pts/ptmx"),
];
/// Where the new root is attached until `pivot_root`. Any directory would do: every host
/// source is already open by then.
const ANCHORS: [&str; 2] = ["/tmp", "/proc"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// What the host provides for one mount, opened before anything is attached.
enum Source {
    /// A detached clone of the mount tree to bind.
    Tree(OwnedFd),
    /// A file to copy.
    File(std::fs::File),
}

/// The part of the root no spec changes — the root's tmpfs, `/dev` and `/proc` — built
/// while the supervisor still plans the job (the shim would only wait for its spec), at
/// `anchor`: an empty directory of the supervisor's own that no spec binds from. Until then
/// the host's view stays whole everywhere else, so the spec's sources open as they would
/// have. [`build_root`] uses it only where the spec lays out the same (it always does
/// today), and otherwise discards it.
pub struct Prebuilt {
    tree: Tree,
    anchor: String,
    umask: Mode,
    /// The rest of a draft's mounts, laid out too ([`Prebuilt::draft`]).
    drafted: Option<Drafted>,
    /// The draft's root, entered ahead in a mount namespace of its own
    /// ([`Prebuilt::enter_ahead`]).
    entered: Option<Entered>,
}

/// A draft's root entered ahead: the jail's mount namespace, made and pivoted into before
/// the job's spec came, and the one we came back to, with the host's view.
struct Entered {
    host: OwnedFd,
    jail: OwnedFd,
}

/// The root [`build_root`] built, or joined.
pub struct Built {
    /// It is the one a draft laid out.
    pub as_drafted: bool,
    /// The mount namespace with the host's view that a root entered ahead was left from:
    /// to be closed once the tool runs (its last reference gone, the kernel unmounts its
    /// copy of the host's tree and waits for an RCU grace period: off the job's path then,
    /// and the host's mounts are not held for as long as the job runs).
    pub host_ns: Option<OwnedFd>,
}

/// What a draft laid out, to tell whether the job's spec wants exactly that.
struct Drafted {
    mounts: Vec<Mount>,
    /// The jail's own cgroup, made before the shim started: laid out too.
    cgroup_view: Vec<Mount>,
    tool: (u32, u32),
    idmap: Option<IdMap>,
    /// Each bind's source as it was bound: its path, device and inode.
    sources: Vec<(String, u64, u64)>,
}

/// The mounts [`prebuild`] makes, as a spec lists them.
fn prebuilt_mounts() -> [Mount; 2] {
    [
        Mount::Proc {
            dst: "/proc".into(),
        },
        Mount::Dev { dst: "/dev".into() },
    ]
}

pub fn prebuild(anchor: &str) -> Result<Prebuilt, SetupError> {
    make_private()?;
    let umask = nix::sys::stat::umask(Mode::empty());
    let built = new_root()
        .and_then(|root_fs| {
            let open = || {
                nix::fcntl::openat(
                    nix::fcntl::AT_FDCWD,
                    anchor,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|errno| mount_error("jail root", "/", errno))
            };
            let at = open()?;
            sys::move_mount(root_fs.as_fd(), at.as_fd())
                .map_err(|errno| mount_error("jail root", "/", errno))?;
            // Opened again, the path now leads to the tmpfs.
            open()
        })
        .and_then(|root| {
            let mut tree = Tree {
                root,
                dirs: HashMap::new(),
                writable: Vec::new(),
                tool: (0, 0),
            };
            for mount in prebuilt_mounts() {
                tree.apply(&mount, None)?;
            }
            Ok(tree)
        });
    match built {
        Ok(tree) => Ok(Prebuilt {
            tree,
            anchor: anchor.to_string(),
            umask,
            drafted: None,
            entered: None,
        }),
        Err(err) => {
            // Whatever was attached goes; the spec's root is built from scratch.
            let _ = umount2(anchor, MntFlags::MNT_DETACH);
            nix::sys::stat::umask(umask);
            Err(err)
        }
    }
}

impl Prebuilt {
    /// Whether the spec's root is this one plus the rest of its mounts: it has exactly the
    /// prebuilt mounts, nothing it lists before them lies in or over them (it would be
    /// covered by them, as built in order), and no source lies in the anchor or binds it.
    fn fits(&self, spec: &JailSpec) -> bool {
        fits(&spec.mounts, &spec.cgroup_view, &self.anchor)
    }

    /// Lay out a draft's mounts too — a spec like the job's to come (a daemon sends a jail
    /// it prepares the last job's) — from the host's view as it is now, as `build_root`
    /// would. The job's spec then uses them only if its mounts, ids and idmap are the
    /// draft's and every bind's source is still the same directory or file ([`Prebuilt::
    /// drafted_for`]); otherwise the whole root is discarded and built for the spec. A
    /// draft that does not fit, or fails, leaves nothing of it: without a prebuilt root
    /// (None) the spec's is built from scratch.
    pub fn draft(mut self, draft: &JailSpec) -> Option<Prebuilt> {
        let copies = draft.mounts.iter().any(|m| matches!(m, Mount::Copy { .. }));
        if copies || !self.fits(draft) {
            return Some(self);
        }
        match self.lay_out(draft) {
            Ok(drafted) => {
                self.drafted = Some(drafted);
                Some(self)
            }
            Err(_) => {
                self.discard();
                None
            }
        }
    }

    fn lay_out(&mut self, draft: &JailSpec) -> Result<Drafted, SetupError> {
        let sources = open_sources(&draft.mounts, draft.idmap.as_ref())?;
        let mut identities = Vec::new();
        for (mount, source) in draft.mounts.iter().zip(&sources) {
            if let (Mount::Bind { src, dst, .. }, Some(Source::Tree(tree))) = (mount, source) {
                let stat =
                    nix::sys::stat::fstat(tree).map_err(|errno| mount_error(src, dst, errno))?;
                identities.push((src.clone(), stat.st_dev, stat.st_ino));
            }
        }
        self.tree.writable = writable_of(&draft.mounts);
        self.tree.tool = (draft.uid, draft.gid);
        let skip = prebuilt_mounts();
        for (mount, source) in draft.mounts.iter().zip(sources) {
            if !skip.contains(mount) {
                self.tree.apply(mount, source)?;
            }
        }
        let sources = open_sources(&draft.cgroup_view, None)?;
        for (mount, source) in draft.cgroup_view.iter().zip(sources) {
            self.tree.apply(mount, source)?;
        }
        // Every mount is made: the directories opened on the way are closed now, not on the
        // job's path (a root rebuilt for a job that wants other mounts starts afresh).
        self.tree.dirs.clear();
        Ok(Drafted {
            mounts: draft.mounts.clone(),
            cgroup_view: draft.cgroup_view.clone(),
            tool: (draft.uid, draft.gid),
            idmap: draft.idmap.clone(),
            sources: identities,
        })
    }

    /// Enter the root the draft laid out, before the job's spec comes: in a copy of our
    /// mount namespace, the root made read-only, `pivot_root` into it and the host's tree
    /// detached (the detach waits for an RCU grace period, 0.05 – 0.15 ms on our VMs);
    /// `in_jail` runs there, given that root ([`Prebuilt::drafted_root`]: the tool's process
    /// forked ahead is born in it and adds its Landlock rules there), and we come
    /// back to the host's view, which the spec's check needs ([`Prebuilt::drafted_for`]).
    /// [`build_root`] then joins the jail's namespace if the job wants what the draft laid
    /// out, and otherwise discards it. Without a draft, or where a step fails before
    /// `in_jail`, it runs here and the root is entered on the job's path, as before.
    pub fn enter_ahead<T>(
        &mut self,
        in_jail: impl FnOnce(Option<BorrowedFd<'_>>) -> T,
    ) -> Result<T, SetupError> {
        let ns = || {
            nix::fcntl::openat(
                nix::fcntl::AT_FDCWD,
                "/proc/self/ns/mnt",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let Some(host) = self.drafted.as_ref().and_then(|_| ns().ok()) else {
            return Ok(in_jail(self.drafted_root()));
        };
        let read_only = sys::mount_setattr(
            self.tree.root.as_fd(),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
            false,
        );
        if read_only.is_err() || nix::sched::unshare(CloneFlags::CLONE_NEWNS).is_err() {
            return Ok(in_jail(self.drafted_root()));
        }
        // In the copy: the draft's root is at the anchor here too.
        let jail = ns().and_then(|jail| {
            nix::unistd::chdir(self.anchor.as_str())?;
            pivot_into_cwd()?;
            Ok(jail)
        });
        let back = |host: &OwnedFd| {
            nix::sched::setns(host.as_fd(), CloneFlags::CLONE_NEWNS).map_err(SetupError::PivotRoot)
        };
        match jail {
            Ok(jail) => {
                let value = in_jail(self.drafted_root());
                back(&host)?;
                self.entered = Some(Entered { host, jail });
                Ok(value)
            }
            // Back to the host's view; the copy left half-made goes with its last reference.
            Err(_) => {
                back(&host)?;
                Ok(in_jail(self.drafted_root()))
            }
        }
    }

    /// Whether its root was entered ahead ([`Prebuilt::enter_ahead`]).
    pub fn entered(&self) -> bool {
        self.entered.is_some()
    }

    /// Whether the draft laid out exactly the spec's mounts: the same list, ids and idmap,
    /// and every bind's source still the directory or file that was bound (not one made
    /// since at the same path: a workspace removed and cloned again).
    fn drafted_for(&self, spec: &JailSpec) -> bool {
        let Some(drafted) = &self.drafted else {
            return false;
        };
        drafted.mounts == spec.mounts
            && drafted.cgroup_view == spec.cgroup_view
            && drafted.tool == (spec.uid, spec.gid)
            && drafted.idmap == spec.idmap
            && drafted.sources.iter().all(|(src, dev, ino)| {
                nix::sys::stat::stat(src.as_str())
                    .is_ok_and(|now| now.st_dev == *dev && now.st_ino == *ino)
            })
    }

    /// The root a draft laid out (its tmpfs), not yet entered.
    fn drafted_root(&self) -> Option<BorrowedFd<'_>> {
        self.drafted.as_ref().map(|_| self.tree.root.as_fd())
    }

    /// Detach it: the spec's root is built from scratch.
    fn discard(self) {
        drop(self.tree);
        let _ = umount2(self.anchor.as_str(), MntFlags::MNT_DETACH);
        nix::sys::stat::umask(self.umask);
    }
}

fn fits(mounts: &[Mount], cgroup_view: &[Mount], anchor: &str) -> bool {
    let prebuilt = prebuilt_mounts();
    // A source in the anchor would open the begun root, not the host's; a bind of one of its
    // ancestors (`--ro /run`) would bring it along, as a bind takes what is mounted beneath.
    let sources_clear = mounts.iter().chain(cgroup_view).all(|mount| match mount {
        Mount::Bind { src, .. } => {
            let src = normalize(src);
            !is_within(&src, anchor) && !is_within(anchor, &src)
        }
        Mount::Copy { src, .. } => !is_within(&normalize(src), anchor),
        _ => true,
    });
    sources_clear
        && prebuilt.iter().all(|made| {
            let at = mounts.iter().position(|m| m == made);
            let once = mounts.iter().filter(|m| *m == made).count() == 1;
            let dst = made.dst();
            at.is_some_and(|at| {
                once && mounts[..at].iter().all(|m| {
                    let other = normalize(m.dst());
                    !is_within(&other, dst) && !is_within(dst, &other)
                })
            })
        })
}

/// The root: `spec.mounts` (on `prebuilt`, when given and it fits the spec), then — once
/// `cgroup_made` has waited for the supervisor to make the job's cgroup — `spec.cgroup_view`
/// (a draft that fits laid out both already); then read-only, and `pivot_root` into it.
/// Whether the root is the one a draft laid out.
pub fn build_root(
    spec: &JailSpec,
    prebuilt: Option<Prebuilt>,
    cgroup_made: impl FnOnce() -> Result<(), SetupError>,
) -> Result<Built, SetupError> {
    let prebuilt = match prebuilt {
        Some(prebuilt) if prebuilt.drafted_for(spec) => Some(prebuilt),
        Some(prebuilt) if prebuilt.drafted.is_none() && prebuilt.fits(spec) => Some(prebuilt),
        Some(prebuilt) => {
            prebuilt.discard();
            None
        }
        None => None,
    };
    if prebuilt.is_none() {
        make_private()?;
    }
    // A draft laid out every mount of the spec already: nothing to open or attach.
    let drafted = prebuilt.as_ref().is_some_and(|p| p.drafted.is_some());
    let sources = if drafted {
        spec.mounts.iter().map(|_| None).collect()
    } else {
        open_sources(&spec.mounts, spec.idmap.as_ref())?
    };
    // Entered ahead: once the cgroup is made (the draft bound its view already), joining
    // the jail's namespace is all that is left.
    if let Some(Prebuilt {
        entered: Some(entered),
        umask,
        ..
    }) = prebuilt
    {
        cgroup_made()?;
        nix::sched::setns(entered.jail.as_fd(), CloneFlags::CLONE_NEWNS)
            .map_err(SetupError::PivotRoot)?;
        nix::sys::stat::umask(umask);
        return Ok(Built {
            as_drafted: true,
            host_ns: Some(entered.host),
        });
    }
    let writable = writable_of(&spec.mounts);
    let (mut tree, umask, skip) = match prebuilt {
        Some(Prebuilt { tree, umask, .. }) if drafted => (tree, umask, spec.mounts.clone()),
        Some(Prebuilt { tree, umask, .. }) => (tree, umask, prebuilt_mounts().to_vec()),
        None => {
            // Files and nodes get exactly the modes we ask for.
            let umask = nix::sys::stat::umask(Mode::empty());
            let tree = Tree {
                root: attach_root(&new_root()?)?,
                dirs: HashMap::new(),
                writable: Vec::new(),
                tool: (0, 0),
            };
            (tree, umask, Vec::new())
        }
    };
    tree.writable = writable;
    tree.tool = (spec.uid, spec.gid);
    for (mount, source) in spec.mounts.iter().zip(sources) {
        if !skip.contains(mount) {
            tree.apply(mount, source)?;
        }
    }
    cgroup_made()?;
    if !drafted {
        let sources = open_sources(&spec.cgroup_view, None)?;
        for (mount, source) in spec.cgroup_view.iter().zip(sources) {
            tree.apply(mount, source)?;
        }
    }

    sys::mount_setattr(
        tree.root.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        false,
    )
    .map_err(|errno| mount_error("read-only root", "/", errno))?;
    nix::unistd::fchdir(&tree.root).map_err(SetupError::PivotRoot)?;
    pivot_into_cwd().map_err(SetupError::PivotRoot)?;
    nix::sys::stat::umask(umask);
    Ok(Built {
        as_drafted: drafted,
        host_ns: None,
    })
}

/// Into the new root that is our working directory: `pivot_root(".", ".")` stacks the old
/// root on top of it, and detaching the top leaves only the jail.
fn pivot_into_cwd() -> Result<(), Errno> {
    sys::pivot_root_here()?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
}

/// The jail's writable tmpfs mounts (see [`Tree::writable`]).
fn writable_of(mounts: &[Mount]) -> Vec<String> {
    mounts
        .iter()
        .filter_map(|mount| match mount {
            Mount::Tmpfs { dst, mode, .. } if mode & 0o002 != 0 => Some(normalize(dst)),
            _ => None,
        })
        .collect()
}

/// Nothing we mount from here on may propagate back to the host.
fn make_private() -> Result<(), SetupError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(SetupError::MountPrivate)
}

/// The root's tmpfs: it holds device nodes (so no nodev), never set-id programs; it
/// becomes read-only once every mount point exists.
fn new_root() -> Result<OwnedFd, SetupError> {
    sys::new_fs_mount(
        "tmpfs",
        &[("size", "1m"), ("mode", "0755")],
        MOUNT_ATTR_NOSUID,
    )
    .map_err(|errno| SetupError::NewFs {
        fstype: "tmpfs",
        dst: "/".into(),
        errno,
    })
}

fn open_sources(
    mounts: &[Mount],
    idmap: Option<&IdMap>,
) -> Result<Vec<Option<Source>>, SetupError> {
    mounts
        .iter()
        .map(|mount| match mount {
            Mount::Bind { src, dst, .. } => {
                let tree = sys::open_tree_clone(src).map_err(|errno| SetupError::BindSource {
                    path: src.clone(),
                    errno,
                })?;
                // The workspace the tool does not own: its owner's ids read as the tool's.
                if let Some(map) = idmap.filter(|map| &map.dst == dst) {
                    crate::idmap::user_namespace(map)
                        .and_then(|userns| sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd()))
                        .map_err(|errno| SetupError::Idmap {
                            path: src.clone(),
                            owner: map.owner_uid,
                            uid: map.uid,
                            errno,
                        })?;
                }
                Ok(Some(Source::Tree(tree)))
            }
            Mount::Copy { src, .. } => std::fs::File::open(src)
                .map(|file| Some(Source::File(file)))
                .map_err(|e| SetupError::BindSource {
                    path: src.clone(),
                    errno: io_errno(&e),
                }),
            _ => Ok(None),
        })
        .collect()
}

/// Attach the new root's tmpfs somewhere in our private copy of the host tree (pivot_root
/// needs it to be a mount point) and open it.
fn attach_root(root_fs: &OwnedFd) -> Result<OwnedFd, SetupError> {
    let open = |anchor| {
        nix::fcntl::openat(
            nix::fcntl::AT_FDCWD,
            anchor,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let mut last = Errno::ENOENT;
    for anchor in ANCHORS {
        match open(anchor).and_then(|fd| sys::move_mount(root_fs.as_fd(), fd.as_fd())) {
            // Opened again, the path now leads to the tmpfs.
            Ok(()) => return open(anchor).map_err(|errno| mount_error("jail root", "/", errno)),
            Err(errno) => last = errno,
        }
    }
    Err(mount_error("jail root", "/", last))
}

/// The root being built, with the directories opened so far (by path inside the jail).
struct Tree {
    root: OwnedFd,
    dirs: HashMap<String, OwnedFd>,
    /// The jail's writable tmpfs mounts (/tmp, /var/tmp, the caller's home): a directory
    /// made in one as a mount point's parent (`~/.cargo` for `~/.cargo/bin`) is given to
    /// the tool, so it can write beside what is bound there (npm's `~/.npm/_logs`).
    writable: Vec<String>,
    tool: (u32, u32),
}

impl Tree {
    fn apply(&mut self, mount: &Mount, source: Option<Source>) -> Result<(), SetupError> {
        match (mount, source) {
            (Mount::Bind { src, dst, writable }, Some(Source::Tree(tree))) => {
                let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
                if !writable {
                    attrs |= MOUNT_ATTR_RDONLY;
                }
                sys::mount_setattr(tree.as_fd(), attrs, true)
                    .map_err(|errno| mount_error(src, dst, errno))?;
                let mode = nix::sys::stat::fstat(&tree)
                    .map_err(|errno| mount_error(src, dst, errno))?
                    .st_mode;
                let kind = if mode & libc::S_IFMT == libc::S_IFDIR {
                    Kind::Dir
                } else {
                    Kind::File
                };
                self.attach(&tree, dst, kind, src)
            }
            (Mount::Copy { src, dst, mode }, Some(Source::File(file))) => {
                self.copy(file, src, dst, *mode)
            }
            (Mount::Tmpfs { dst, size, mode }, None) => {
                let fs = new_tmpfs(dst, *size, *mode, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?;
                self.attach(&fs, dst, Kind::Dir, "tmpfs")
            }
            (Mount::Proc { dst }, None) => {
                // No masks over kernel-wide files (as container runtimes need for their uid-0
                // containers): the tool is never uid 0 and has no capabilities, so root-only
                // procfs files stay closed to it, and Landlock leaves /proc read-only.
                let fs = sys::new_fs_mount(
                    "proc",
                    &[],
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                )
                .map_err(|errno| SetupError::NewFs {
                    fstype: "proc",
                    dst: dst.clone(),
                    errno,
                })?;
                self.attach(&fs, dst, Kind::Dir, "proc")
            }
            (Mount::Dev { dst }, None) => self.build_dev(dst),
            (Mount::Symlink { target, dst }, None) => self.symlink(target, dst),
            (mount, _) => Err(mount_error("mount", mount.dst(), Errno::EINVAL)),
        }
    }

    fn attach(
        &mut self,
        tree: &OwnedFd,
        dst: &str,
        kind: Kind,
        what: &str,
    ) -> Result<(), SetupError> {
        let target = self.mount_point(dst, kind)?;
        sys::move_mount(tree.as_fd(), target.as_fd())
            .map_err(|errno| mount_error(what, dst, errno))?;
        // Descriptors opened before lead to what is now covered.
        self.dirs.retain(|path, _| !is_within(path, dst));
        Ok(())
    }

    /// Copy a host file into the jail's root.
    fn copy(
        &mut self,
        mut file: std::fs::File,
        src: &str,
        dst: &str,
        mode: u32,
    ) -> Result<(), SetupError> {
        let err = |errno| SetupError::Mount {
            what: format!("copy of {src}"),
            dst: dst.to_string(),
            errno,
        };
        let (parent, name) = split_parent(dst);
        let dir = self.dir(parent)?;
        let out = sys::open_beneath(
            dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode & 0o777,
        )
        .map_err(err)?;
        std::io::copy(&mut file, &mut std::fs::File::from(out)).map_err(|e| err(io_errno(&e)))?;
        Ok(())
    }

    /// A minimal `/dev`: the harmless device nodes and fd symlinks in the (soon read-only)
    /// root, a tmpfs `shm`, and a devpts instance of the jail's own at `pts`.
    fn build_dev(&mut self, dst: &str) -> Result<(), SetupError> {
        for (name, major, minor) in DEVICES {
            let dev = self.dir(dst)?;
            let node = nix::sys::stat::makedev(major, minor);
            if nix::sys::stat::mknodat(
                dev,
                name,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                node,
            )
            .is_err()
            {
                // Where a devices cgroup (or a missing CAP_MKNOD) forbids mknod: bind the
                // host's node instead. The host's /dev is still in view.
                let host = format!("/dev/{name}");
                let tree = sys::open_tree_clone(&host).map_err(|errno| SetupError::BindSource {
                    path: host.clone(),
                    errno,
                })?;
                self.attach(&tree, &format!("{dst}/{name}"), Kind::File, &host)?;
            }
        }
        for (name, target) in DEV_LINKS {
            self.symlink(target, &format!("{dst}/{name}"))?;
        }
        let shm = format!("{dst}/shm");
        let fs = new_tmpfs(
            &shm,
            64 * 1024 * 1024,
            0o1777,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        )?;
        self.attach(&fs, &shm, Kind::Dir, "tmpfs")?;
        // Pseudo-terminals (openpty, script, REPL and pexpect-style tests): a new devpts
        // instance (every mount made through fsopen is one), so the jail sees only the ptys
        // it opens itself, never the host's. The slaves belong to whoever opens the master,
        // readable and writable by it alone; TIOCSTI/TIOCLINUX stay filtered by seccomp.
        let pts = format!("{dst}/pts");
        let fs = sys::new_fs_mount(
            "devpts",
            &[("ptmxmode", "0666"), ("mode", "0600")],
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        )
        .map_err(|errno| SetupError::NewFs {
            fstype: "devpts",
            dst: pts.clone(),
            errno,
        })?;
        self.attach(&fs, &pts, Kind::Dir, "devpts")
    }

    fn symlink(&mut self, target: &str, dst: &str) -> Result<(), SetupError> {
        let (parent, name) = split_parent(dst);
        let dir = self.dir(parent)?;
        nix::unistd::symlinkat(target, dir, name).map_err(|errno| SetupError::Symlink {
            dst: dst.to_string(),
            target: target.to_string(),
            errno,
        })
    }

    /// The directory `path`, created as needed.
    fn dir(&mut self, path: &str) -> Result<BorrowedFd<'_>, SetupError> {
        let path = normalize(path);
        if !self.dirs.contains_key(&path) {
            let fd = self.mount_point(&path, Kind::Dir)?;
            self.dirs.insert(path.clone(), fd);
        }
        let fd = self.dirs.get(&path).map(AsFd::as_fd);
        fd.ok_or(SetupError::MountPoint {
            dst: path,
            errno: Errno::ENOENT,
        })
    }

    /// Open (creating what is missing) the mount point `path`, one component at a time from
    /// the nearest directory already open, following no symlink. The directories on the way
    /// stay open for the next mount point beneath them (until a mount covers them).
    fn mount_point(&mut self, path: &str, kind: Kind) -> Result<OwnedFd, SetupError> {
        let err = |errno| SetupError::MountPoint {
            dst: path.to_string(),
            errno,
        };
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let prefix = |depth: usize| format!("/{}", components[..depth].join("/"));
        // Start from the deepest open ancestor.
        let (start, from) = (1..components.len())
            .rev()
            .find_map(|depth| self.dirs.get(&prefix(depth)).map(|fd| (depth, fd.as_fd())))
            .unwrap_or((0, self.root.as_fd()));
        // What is opened on the way, the last of it the directory we are in.
        let mut opened: Vec<(String, OwnedFd)> = Vec::new();
        // Whether that directory was made just now: then nothing is in it to look up first.
        let mut made_now = false;
        for (i, name) in components.iter().enumerate().skip(start) {
            let dir = opened.last().map_or(from, |(_, fd)| fd.as_fd());
            let last = i + 1 == components.len();
            let want = if last { kind } else { Kind::Dir };
            let flags = libc::O_PATH
                | libc::O_NOFOLLOW
                | if want == Kind::Dir {
                    libc::O_DIRECTORY
                } else {
                    0
                };
            let found = if made_now {
                Err(Errno::ENOENT)
            } else {
                sys::open_beneath(dir, name, flags, 0)
            };
            made_now = false;
            let next = match found {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match want {
                        Kind::Dir => {
                            nix::sys::stat::mkdirat(dir, *name, Mode::from_bits_truncate(0o755))
                                .map_err(err)?;
                            let made = prefix(i + 1);
                            let in_writable = self
                                .writable
                                .iter()
                                .any(|tmpfs| made.starts_with(&format!("{tmpfs}/")));
                            if in_writable {
                                nix::unistd::fchownat(
                                    dir,
                                    *name,
                                    Some(nix::unistd::Uid::from_raw(self.tool.0)),
                                    Some(nix::unistd::Gid::from_raw(self.tool.1)),
                                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                                )
                                .map_err(err)?;
                            }
                            made_now = true;
                        }
                        Kind::File => drop(
                            sys::open_beneath(
                                dir,
                                name,
                                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                                0o644,
                            )
                            .map_err(err)?,
                        ),
                    }
                    sys::open_beneath(dir, name, flags, 0).map_err(err)?
                }
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(SetupError::MountPointKind {
                        dst: path.to_string(),
                        expected: if want == Kind::Dir {
                            "directory"
                        } else {
                            "file"
                        },
                    })
                }
                Err(errno) => return Err(err(errno)),
            };
            if want == Kind::File {
                let mode = nix::sys::stat::fstat(&next).map_err(err)?.st_mode & libc::S_IFMT;
                if mode == libc::S_IFDIR || mode == libc::S_IFLNK {
                    return Err(SetupError::MountPointKind {
                        dst: path.to_string(),
                        expected: "file",
                    });
                }
            }
            opened.push((prefix(i + 1), next));
        }
        let target = match opened.pop() {
            Some((_, target)) => target,
            // The root itself.
            None => from.try_clone_to_owned().map_err(|e| err(io_errno(&e)))?,
        };
        self.dirs.extend(opened);
        Ok(target)
    }
}

fn new_tmpfs(dst: &str, size: u64, mode: u32, attrs: u64) -> Result<OwnedFd, SetupError> {
    let (size, mode) = (size.to_string(), format!("{mode:o}"));
    sys::new_fs_mount("tmpfs", &[("size", &size), ("mode", &mode)], attrs).map_err(|errno| {
        SetupError::NewFs {
            fstype: "tmpfs",
            dst: dst.to_string(),
            errno,
        }
    })
}

/// `/a/b/` and `a/b` alike as `/a/b`.
fn normalize(path: &str) -> String {
    let inner: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", inner.join("/"))
}

/// Whether `path` is `dir` or lies beneath it.
fn is_within(path: &str, dir: &str) -> bool {
    let dir = normalize(dir);
    dir == "/" || path == dir || path.starts_with(&format!("{dir}/"))
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

fn mount_error(what: &str, dst: &str, errno: Errno) -> SetupError {
    SetupError::Mount {
        what: what.to_string(),
        dst: dst.to_string(),
        errno,
    }
}

#[cfg(test)]
mod tests {
    use super::fits;
    use toolbox_spec::Mount;

    fn bind(src: &str, dst: &str) -> Mount {
        Mount::Bind {
            src: src.into(),
            dst: dst.into(),
            writable: false,
        }
    }

    fn view(middle: Vec<Mount>, tail: Vec<Mount>) -> Vec<Mount> {
        let mut mounts = vec![
            bind("/usr", "/usr"),
            Mount::Symlink {
                target: "usr/bin".into(),
                dst: "/bin".into(),
            },
        ];
        mounts.extend(middle);
        mounts.push(Mount::Proc {
            dst: "/proc".into(),
        });
        mounts.push(Mount::Dev { dst: "/dev".into() });
        mounts.extend(tail);
        mounts
    }

    const ANCHOR: &str = "/run/toolbox/anchor";

    #[test]
    fn a_prebuilt_root_serves_a_spec_that_lays_out_the_same() {
        let mounts = view(
            vec![bind("/home/me/ws", "/home/me/ws")],
            // After /dev in the spec: on top of it either way.
            vec![bind("/dev/kvm", "/dev/kvm"), bind("/opt", "/opt")],
        );
        assert!(fits(&mounts, &[], ANCHOR));
    }

    #[test]
    fn a_prebuilt_root_is_discarded_where_the_order_would_differ_or_a_source_is_in_it() {
        // A workspace in /dev/shm comes before /dev, which covers it when built in order.
        let covered = view(vec![bind("/dev/shm/ws", "/dev/shm/ws")], vec![]);
        assert!(!fits(&covered, &[], ANCHOR));
        // No /proc, or /dev twice: not the layout that was prebuilt.
        let mut no_proc = view(vec![], vec![]);
        no_proc.retain(|m| !matches!(m, Mount::Proc { .. }));
        assert!(!fits(&no_proc, &[], ANCHOR));
        let twice = view(vec![], vec![Mount::Dev { dst: "/dev".into() }]);
        assert!(!fits(&twice, &[], ANCHOR));
        // A source in the anchor would open the prebuilt root, not the host's directory.
        let inside = view(vec![], vec![bind("/run/toolbox/anchor/x", "/x")]);
        assert!(!fits(&inside, &[], ANCHOR));
        let cgroup_inside = [bind("/run/toolbox/anchor", "/sys/fs/cgroup/memory")];
        assert!(!fits(&view(vec![], vec![]), &cgroup_inside, ANCHOR));
        // Nor may a bind take it along from above (`--ro /run`, `--ro /`).
        let above = view(vec![], vec![bind("/run", "/run")]);
        assert!(!fits(&above, &[], ANCHOR));
        let root = view(vec![], vec![bind("/", "/host")]);
        assert!(!fits(&root, &[], ANCHOR));
        // A neighbour of the anchor is no problem.
        let beside = view(vec![], vec![bind("/run/toolbox/anchored", "/x")]);
        assert!(fits(&beside, &[], ANCHOR));
    }
}
