//! The user namespace an idmapped workspace bind needs: one mapping, the workspace's
//! owner on disk to the tool's ids in the jail. Only its mappings matter; no process of the
//! jail ever runs in it.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use toolbox_spec::IdMap;

use crate::sys;

/// A user namespace whose uid and gid maps send `map`'s owner to the tool: a helper child
/// makes it and waits while PID 1 writes the maps (root in the parent namespace may write
/// any mapping) through a procfs of PID 1's own (the one mounted is the host's, numbered
/// for another pid namespace), and opens it; then the helper leaves.
pub fn user_namespace(map: &IdMap) -> Result<OwnedFd, Errno> {
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (hold_r, hold_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let child = match sys::fork()? {
        None => {
            drop((ready_r, hold_w));
            let byte = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
                Ok(()) => 0u8,
                Err(errno) => errno as i32 as u8,
            };
            let _ = nix::unistd::write(&ready_w, &[byte]);
            // Until PID 1 has the namespace open (it closes its end of `hold`).
            let _ = nix::unistd::read(&hold_r, &mut [0u8; 1]);
            sys::exit_now(0)
        }
        Some(pid) => pid,
    };
    drop((ready_w, hold_r));
    let opened = (|| {
        let mut byte = [0u8; 1];
        if nix::unistd::read(&ready_r, &mut byte)? != 1 {
            return Err(Errno::ECHILD);
        }
        if byte[0] != 0 {
            return Err(Errno::from_raw(i32::from(byte[0])));
        }
        let proc = sys::new_fs_mount("proc", &[], 0)?;
        let pid = child.as_raw();
        for (file, line) in [
            ("uid_map", format!("{} {} 1\n", map.owner_uid, map.uid)),
            ("gid_map", format!("{} {} 1\n", map.owner_gid, map.gid)),
        ] {
            let fd = nix::fcntl::openat(
                proc.as_fd(),
                format!("{pid}/{file}").as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            nix::unistd::write(&fd, line.as_bytes())?;
        }
        nix::fcntl::openat(
            proc.as_fd(),
            format!("{pid}/ns/user").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    })();
    drop(hold_w);
    while nix::sys::wait::waitpid(child, None) == Err(Errno::EINTR) {}
    opened
}
