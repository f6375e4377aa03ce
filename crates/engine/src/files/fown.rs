//! The owner of an open file for signal-driven I/O (F_SETOWN,
//! F_SETOWN_EX) and the signal it gets (F_SETSIG), for every kind of file:
//! they belong to the open file description, whatever it is.
//!
//! Dump reads them on a copy of the task's descriptor (pidfd_getfd):
//! F_GETOWN_EX gives the owning thread, process or group as lpm's pid
//! namespace numbers it, which are the image's ids, and F_GETOWNER_UIDS
//! the uid and euid of whoever set it, which the kernel checks before it
//! signals the owner. An owner that is not a thread, a process or the
//! group of a process of the tree is refused by name: the restore could
//! not point the file at it (a process outside the tree, or one that has
//! exited, whose number the file still holds).
//!
//! Restore sets them once every process and thread of the tree exists
//! (an owning thread is made late, in its process's shape), on a copy of
//! the restored description taken from a puppet that holds it: the
//! restorer's own copy is not that description for the kinds made inside
//! a puppet (message queues, pidfds).
//!
//! O_ASYNC comes back with the other status flags (F_SETFL arms it; open(2)
//! does not), then is armed again from inside the first process holding
//! the description, through its lowest descriptor of it: the kernel keeps
//! the number O_ASYNC was set through and puts it in the si_fd of every
//! F_SETSIG signal, and shows it nowhere else. A program that armed it
//! through another number it no longer holds gets that lowest number.

use std::os::fd::AsFd;

use lpm_image::{Fd, FileImage, FileOwner, OwnerKind, TreeImage};
use lpm_sys::fown;
use lpm_sys::remote::Remote;

use super::{FileTable, Seen};
use crate::{EngineError, Result, StepExt};

/// F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP.
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;

/// The owner and signal of the description of `seen`, in image terms;
/// refuses an owner the restore could not recreate.
fn observe(seen: &Seen, table: &FileTable) -> Result<(Option<FileOwner>, u32)> {
    let copy = lpm_sys::net::steal_fd(seen.pid, seen.fd).step(seen.pid, || format!("pidfd_getfd fd {}", seen.fd))?;
    let fd = copy.as_fd();
    let sig = fown::signal(fd).step(seen.pid, || format!("F_GETSIG of fd {}", seen.fd))?;
    let o = fown::owner(fd).step(seen.pid, || format!("F_GETOWN_EX of fd {}", seen.fd))?;
    if o.pid == 0 {
        return Ok((None, sig as u32));
    }
    let in_tree = |pid: i32| table.tree.contains(&pid);
    let (kind, known, what) = match o.kind {
        F_OWNER_TID => {
            (OwnerKind::Thread, table.tree.iter().any(|p| std::path::Path::new(&format!("/proc/{p}/task/{}", o.pid)).exists()), "thread")
        }
        F_OWNER_PID => (OwnerKind::Process, in_tree(o.pid), "process"),
        // A group is recreated from its leader, which must be in the tree.
        F_OWNER_PGRP => (OwnerKind::Group, in_tree(o.pid), "process group"),
        other => return Err(seen.unsupported(format!("owner of unknown type {other} for SIGIO (F_GETOWN_EX)"))),
    };
    if !known {
        return Err(seen.unsupported(format!("its owner for SIGIO (F_SETOWN) is {what} {}, outside the tree or exited", o.pid)));
    }
    let (uid, euid) = fown::owner_uids(fd).step(seen.pid, || format!("F_GETOWNER_UIDS of fd {}", seen.fd))?;
    Ok((Some(FileOwner { kind: kind as i32, pid: o.pid as u32, uid, euid }), sig as u32))
}

/// The rule of [`observe`], for the inspection of a running tree.
pub fn check(seen: &Seen, table: &FileTable) -> Result<()> {
    observe(seen, table).map(drop)
}

/// Records the owner and signal of the description of `seen` into `f`.
pub fn dump(seen: &Seen, f: &mut FileImage, table: &FileTable) -> Result<()> {
    (f.owner, f.signal) = observe(seen, table)?;
    Ok(())
}

/// Sets the owner and signal of every description of the restored tree
/// that had one; `host` gives the restored host id of an image thread,
/// process or group leader (by its kind) and the host pid of an image
/// process holding a file.
pub fn restore(tree: &TreeImage, host: impl Fn(OwnerKind, u32) -> Option<i32>) -> Result<()> {
    for f in tree.files.iter().filter(|f| f.owner.is_some() || f.signal != 0) {
        let (holder, fd) = tree
            .processes
            .iter()
            .filter(|p| p.zombie.is_none())
            .find_map(|p| p.fds.iter().find(|d| d.file_id == f.id).map(|d| (p.pid, d.fd)))
            .ok_or_else(|| EngineError::Incompatible(format!("file {} has an owner for SIGIO but no process holds it", f.id)))?;
        let pid = host(OwnerKind::Process, holder)
            .ok_or_else(|| EngineError::Incompatible(format!("file {}: process {holder} holding it was not restored", f.id)))?;
        let what = |step: &str| format!("{step} of fd {fd} (file {})", f.id);
        let copy = lpm_sys::net::steal_fd(pid, fd as i32).step(pid, || what("pidfd_getfd"))?;
        if f.signal != 0 {
            fown::set_signal(copy.as_fd(), f.signal as i32).step(pid, || what("F_SETSIG"))?;
        }
        let Some(o) = &f.owner else { continue };
        let kind = OwnerKind::try_from(o.kind).unwrap_or(OwnerKind::Invalid);
        let raw = match kind {
            OwnerKind::Thread => F_OWNER_TID,
            OwnerKind::Process => F_OWNER_PID,
            OwnerKind::Group => F_OWNER_PGRP,
            OwnerKind::Invalid => return Err(EngineError::Incompatible(format!("file {} has an owner of unknown kind {}", f.id, o.kind))),
        };
        let owner = host(kind, o.pid)
            .ok_or_else(|| EngineError::Incompatible(format!("file {}: its owner, {kind:?} {}, was not restored", f.id, o.pid)))?;
        fown::set_owner_as(copy.as_fd(), fown::Owner { kind: raw, pid: owner }, o.uid, o.euid)
            .step(pid, || what(&format!("F_SETOWN_EX to {kind:?} {owner} as uid {} euid {}", o.uid, o.euid)))?;
    }
    Ok(())
}

/// The first process of the image (not a zombie) holding file `id`, with
/// its lowest descriptor of it.
pub fn first_holder(tree: &TreeImage, id: u32) -> Option<(u32, u32)> {
    tree.processes
        .iter()
        .filter(|p| p.zombie.is_none())
        .find_map(|p| p.fds.iter().filter(|d| d.file_id == id).map(|d| d.fd).min().map(|fd| (p.pid, fd)))
}

/// Arms O_ASYNC of file `f` again through descriptor `fd` of puppet `pid`
/// (F_SETFL without it, then with it), so that its signals carry that
/// number in si_fd rather than the restorer's.
pub fn arm_async(pid: i32, r: &mut Remote, fd: &Fd, f: &FileImage) -> Result<()> {
    for flags in [f.flags & !(libc::O_ASYNC as u32), f.flags] {
        r.call(libc::SYS_fcntl, &[fd.fd as u64, libc::F_SETFL as u64, flags as u64])
            .step(pid, || format!("remote F_SETFL {flags:#o} on fd {} (O_ASYNC through its own number)", fd.fd))?;
    }
    Ok(())
}
