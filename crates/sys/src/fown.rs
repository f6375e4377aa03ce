//! The owner of an open file for signal-driven I/O: who gets SIGIO (or the
//! signal F_SETSIG chose) when the file becomes ready (F_GETOWN_EX,
//! F_GETSIG, F_GETOWNER_UIDS, and their setters).
//!
//! The owner belongs to the open file description, so these calls work on
//! a copy of a task's descriptor (pidfd_getfd) as on the task's own.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{cvt, Error, Result};

/// `F_GETOWNER_UIDS` (CONFIG_CHECKPOINT_RESTORE): the real and effective
/// uid of whoever set the owner, which the kernel checks before it sends
/// the owner a signal.
const F_GETOWNER_UIDS: i32 = 17;
// From the kernel's uapi fcntl.h (libc lacks them).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;

/// Who owns an open file, as F_GETOWN_EX says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    pub kind: i32,
    /// The thread, process or group, as the caller's pid namespace numbers
    /// it; 0 when the file has no owner.
    pub pid: i32,
}

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The owner of the open file `fd` (F_GETOWN_EX).
pub fn owner(fd: BorrowedFd) -> Result<Owner> {
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one f_owner_ex to the pointer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o as *mut FOwnerEx) }).map_err(|e| Error::sys("fcntl F_GETOWN_EX", 0, e))?;
    Ok(Owner { kind: o.kind, pid: o.pid })
}

/// The signal the owner gets (F_GETSIG): 0 for a plain SIGIO.
pub fn signal(fd: BorrowedFd) -> Result<i32> {
    // SAFETY: F_GETSIG takes no argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) }).map_err(|e| Error::sys("fcntl F_GETSIG", 0, e))
}

/// The real and effective uid recorded with the owner (F_GETOWNER_UIDS),
/// as the caller's user namespace maps them.
pub fn owner_uids(fd: BorrowedFd) -> Result<(u32, u32)> {
    let mut uids = [0u32; 2];
    // SAFETY: F_GETOWNER_UIDS writes two uid_t to the pointer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) })
        .map_err(|e| Error::sys("fcntl F_GETOWNER_UIDS", 0, e))?;
    Ok((uids[0], uids[1]))
}

/// Sets the signal the owner gets (F_SETSIG; 0 for a plain SIGIO).
pub fn set_signal(fd: BorrowedFd, sig: i32) -> Result<()> {
    // SAFETY: F_SETSIG takes an integer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) }).map_err(|e| Error::sys("fcntl F_SETSIG", 0, e))?;
    Ok(())
}

/// Makes `owner` (numbered in the caller's pid namespace) the owner of
/// `fd`, with `uid` and `euid` recorded as the credentials of whoever set
/// it (the kernel records the caller's: the call runs on a short-lived
/// thread that takes them first, so the caller's own are never touched).
/// The caller must be allowed to change its uids (CAP_SETUID).
pub fn set_owner_as(fd: BorrowedFd, owner: Owner, uid: u32, euid: u32) -> Result<()> {
    let raw = fd.as_raw_fd();
    let set = move || -> Result<()> {
        let o = FOwnerEx { kind: owner.kind, pid: owner.pid };
        // SAFETY: F_SETOWN_EX reads one f_owner_ex from the pointer; `raw`
        // stays open: the caller's borrow outlives this function.
        cvt(unsafe { libc::fcntl(raw, F_SETOWN_EX, &o as *const FOwnerEx) }).map_err(|e| Error::sys("fcntl F_SETOWN_EX", owner.pid, e))?;
        Ok(())
    };
    // SAFETY: getuid and geteuid have no preconditions.
    if unsafe { (libc::getuid(), libc::geteuid()) } == (uid, euid) {
        return set();
    }
    std::thread::scope(|s| {
        s.spawn(move || -> Result<()> {
            // The raw syscall changes the calling thread's credentials only
            // (glibc's setresuid would change every thread's); this thread
            // ends right after, and a saved uid of 0 keeps the way back
            // open should anything need it.
            // SAFETY: setresuid takes integers only.
            cvt(unsafe { libc::syscall(libc::SYS_setresuid, uid, euid, 0u32) })
                .map_err(|e| Error::sys("setresuid for F_SETOWN_EX", 0, e))?;
            set()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("F_SETOWN_EX thread", 0, io::Error::other("panicked"))))
    })
}
