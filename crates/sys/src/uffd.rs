//! userfaultfd write-protection in asynchronous mode: the kernel resolves
//! write faults itself (no handler thread) and marks the page written, which
//! PAGEMAP_SCAN then reports and re-protects in one atomic step. This is the
//! dirty-page tracker of pre-copy on kernels without soft-dirty bits.

use std::os::fd::{AsRawFd, OwnedFd};

use linux_raw_sys::general::{uffdio_api, uffdio_range, uffdio_register, uffdio_writeprotect};
use linux_raw_sys::ioctl::{UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT};

use crate::{Error, Result};

pub use linux_raw_sys::general::{UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED};

/// A userfaultfd (usually taken from the tracked task with pidfd_getfd:
/// it acts on the mm of the task that created it, whoever holds it).
pub struct Uffd {
    fd: OwnedFd,
    pid: i32,
}

fn ioctl<T>(fd: &OwnedFd, req: u32, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the struct this userfaultfd ioctl expects, valid for
    // reads and writes for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a userfaultfd for the calling process's own memory.
pub fn create() -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd takes flags only and returns a new fd or -1.
    let mut r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // vm.unprivileged_userfaultfd=0 still allows user-mode-only faults,
        // which is all dirty tracking needs.
        // SAFETY: as above.
        r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | linux_raw_sys::general::UFFD_USER_MODE_ONLY as i32) };
    }
    if r < 0 {
        return Err(Error::sys("userfaultfd", 0, std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

impl Uffd {
    /// Wraps a userfaultfd that acts on the memory of `pid`.
    pub fn new(fd: OwnedFd, pid: i32) -> Uffd {
        Uffd { fd, pid }
    }

    /// UFFDIO_API handshake asking for `features`; returns those granted.
    pub fn api(&self, features: u64) -> Result<u64> {
        let mut a = uffdio_api { api: linux_raw_sys::general::UFFD_API as u64, features, ioctls: 0 };
        ioctl(&self.fd, UFFDIO_API, &mut a).map_err(|e| Error::sys("UFFDIO_API", self.pid, e))?;
        Ok(a.features)
    }

    /// Registers `[start, start+len)` for write-protect tracking.
    pub fn register_wp(&self, start: u64, len: u64) -> Result<()> {
        let mut r =
            uffdio_register { range: uffdio_range { start, len }, mode: linux_raw_sys::general::UFFDIO_REGISTER_MODE_WP as u64, ioctls: 0 };
        ioctl(&self.fd, UFFDIO_REGISTER, &mut r).map_err(|e| Error::mem("UFFDIO_REGISTER", self.pid, start, e))
    }

    /// Write-protects (or unprotects) `[start, start+len)`.
    pub fn writeprotect(&self, start: u64, len: u64, on: bool) -> Result<()> {
        // UFFDIO_WRITEPROTECT_MODE_WP, absent from linux-raw-sys.
        const MODE_WP: u64 = 1;
        let mode = if on { MODE_WP } else { 0 };
        let mut w = uffdio_writeprotect { range: uffdio_range { start, len }, mode };
        ioctl(&self.fd, UFFDIO_WRITEPROTECT, &mut w).map_err(|e| Error::mem("UFFDIO_WRITEPROTECT", self.pid, start, e))
    }

    /// Stops tracking `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut r = uffdio_range { start, len };
        ioctl(&self.fd, UFFDIO_UNREGISTER, &mut r).map_err(|e| Error::mem("UFFDIO_UNREGISTER", self.pid, start, e))
    }
}
