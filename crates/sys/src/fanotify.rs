//! fanotify groups and marks, which rustix and nix lack.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{cvt, Error, Result};

/// fanotify_init(flags, event_f_flags): a new group.
pub fn init(flags: u32, event_flags: u32) -> Result<OwnedFd> {
    // SAFETY: fanotify_init takes integers only.
    let fd = cvt(unsafe { libc::fanotify_init(flags, event_flags) }).map_err(|e| Error::sys("fanotify_init", 0, e))?;
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path).
pub fn mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &str) -> Result<()> {
    let p =
        CString::new(path).map_err(|_| Error::sys("fanotify_mark (path with NUL)", 0, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: p is a valid C string for the duration of the call.
    cvt(unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, p.as_ptr()) })
        .map_err(|e| Error::sys("fanotify_mark", 0, e))?;
    Ok(())
}
