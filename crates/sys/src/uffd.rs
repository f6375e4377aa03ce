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

    /// The descriptor, to hand to another process.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
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

pub use linux_raw_sys::general::{UFFD_FEATURE_EVENT_FORK, UFFD_FEATURE_EVENT_REMAP, UFFD_FEATURE_EVENT_REMOVE, UFFD_FEATURE_EVENT_UNMAP};

/// How far a UFFDIO_COPY went ([`Uffd::copy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// This many bytes from the start are in place: all of them, or as
    /// many as went in before the kernel stopped (call again for the rest).
    Bytes(u64),
    /// The first page is present already (EEXIST): nothing was copied.
    Present,
    /// The address space is changing (EAGAIN): read the pending events,
    /// then try again.
    Changing,
    /// No registered area holds the whole range (ENOENT): it straddles
    /// two areas, or an area is gone. Nothing was copied; a single page
    /// that gets this has no registered area left.
    NoArea,
    /// The process has no memory any more (ESRCH).
    Gone,
}

/// What a userfaultfd reports (missing-page mode with the non-cooperative
/// events): a fault to resolve, or a change of the address space that
/// the resolver must follow.
#[derive(Debug)]
pub enum Event {
    /// A task touched a missing page at `address`.
    Fault {
        /// The faulting address.
        address: u64,
    },
    /// The process forked: the child's memory is reported on `uffd`.
    Fork {
        /// The child's userfaultfd, now ours.
        uffd: OwnedFd,
    },
    /// `[from, from+len)` moved to `to` (mremap).
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `[start, end)` was dropped (MADV_DONTNEED/REMOVE) or unmapped: it
    /// must not be filled any more.
    Gone {
        /// First address.
        start: u64,
        /// End.
        end: u64,
    },
}

impl Uffd {
    /// The raw descriptor, to poll.
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Registers `[start, start+len)` for missing-page faults.
    pub fn register_missing(&self, start: u64, len: u64) -> Result<()> {
        let mut r = uffdio_register {
            range: uffdio_range { start, len },
            mode: linux_raw_sys::general::UFFDIO_REGISTER_MODE_MISSING as u64,
            ioctls: 0,
        };
        ioctl(&self.fd, UFFDIO_REGISTER, &mut r).map_err(|e| Error::mem("UFFDIO_REGISTER missing", self.pid, start, e))
    }

    /// Places `data` at `dst` atomically (UFFDIO_COPY) and wakes whoever
    /// waits on the pages copied. The kernel copies only into one
    /// registered area, and stops at the first page already present;
    /// [`Copied`] says how far it went and why it stopped.
    pub fn copy(&self, dst: u64, data: &[u8]) -> Result<Copied> {
        let mut c = linux_raw_sys::general::uffdio_copy { dst, src: data.as_ptr() as u64, len: data.len() as u64, mode: 0, copy: 0 };
        let res = ioctl(&self.fd, linux_raw_sys::ioctl::UFFDIO_COPY, &mut c);
        // `copy` holds the bytes copied, or the negative errno when none
        // was: a copy cut short (a present page, the end of the area,
        // memory) returns EAGAIN with the bytes it did copy.
        if c.copy > 0 {
            return Ok(Copied::Bytes(c.copy as u64));
        }
        match res {
            Ok(()) => Ok(Copied::Bytes(data.len() as u64)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => Ok(Copied::Present),
                Some(libc::EAGAIN) => Ok(Copied::Changing),
                Some(libc::ENOENT) => Ok(Copied::NoArea),
                Some(libc::ESRCH) => Ok(Copied::Gone),
                _ => Err(Error::mem("UFFDIO_COPY", self.pid, dst, e)),
            },
        }
    }

    /// Wakes the tasks waiting on a fault in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        let mut r = uffdio_range { start, len };
        ioctl(&self.fd, linux_raw_sys::ioctl::UFFDIO_WAKE, &mut r).map_err(|e| Error::mem("UFFDIO_WAKE", self.pid, start, e))
    }

    /// Maps the zero page over `[start, start+len)` where nothing is
    /// present yet, waking waiters.
    pub fn zeropage(&self, start: u64, len: u64) -> Result<()> {
        let mut z = linux_raw_sys::general::uffdio_zeropage { range: uffdio_range { start, len }, mode: 0, zeropage: 0 };
        match ioctl(&self.fd, linux_raw_sys::ioctl::UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::EAGAIN) | Some(libc::ENOENT) | Some(libc::ESRCH)) => {
                let mut r = uffdio_range { start, len };
                let _ = ioctl(&self.fd, linux_raw_sys::ioctl::UFFDIO_WAKE, &mut r);
                Ok(())
            }
            Err(e) => Err(Error::mem("UFFDIO_ZEROPAGE", self.pid, start, e)),
        }
    }

    /// Reads one event without blocking (`None`: none pending, or the
    /// process is gone).
    pub fn read_event(&self) -> Result<Option<Event>> {
        use std::os::fd::FromRawFd;
        let mut m = [0u8; 32];
        // SAFETY: reading into a local 32-byte buffer, the size of uffd_msg.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), m.as_mut_ptr().cast(), m.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(Error::sys("read userfaultfd", self.pid, e)),
            };
        }
        if n == 0 {
            return Ok(None);
        }
        let u64_at = |i: usize| u64::from_ne_bytes(m[i..i + 8].try_into().expect("8 bytes"));
        use linux_raw_sys::general as g;
        Ok(Some(match m[0] as u32 {
            g::UFFD_EVENT_PAGEFAULT => Event::Fault { address: u64_at(16) },
            g::UFFD_EVENT_FORK => {
                let fd = u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes")) as i32;
                // SAFETY: the kernel installed this descriptor in our table
                // for us with the message; nothing else owns it.
                Event::Fork { uffd: unsafe { OwnedFd::from_raw_fd(fd) } }
            }
            g::UFFD_EVENT_REMAP => Event::Remap { from: u64_at(8), to: u64_at(16), len: u64_at(24) },
            g::UFFD_EVENT_REMOVE | g::UFFD_EVENT_UNMAP => Event::Gone { start: u64_at(8), end: u64_at(16) },
            other => return Err(Error::sys("userfaultfd event", self.pid, std::io::Error::other(format!("unknown event {other}")))),
        }))
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; returns
/// the indexes of the readable ones.
pub fn poll_readable(fds: &[i32], timeout_ms: i32) -> Vec<usize> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` is a valid array of pollfd of the length passed.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return Vec::new();
    }
    p.iter().enumerate().filter(|(_, q)| q.revents != 0).map(|(i, _)| i).collect()
}
