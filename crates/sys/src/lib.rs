//! The kernel seam of lpm: safe wrappers for the interfaces that nix and
//! rustix lack (ptrace regsets and remote syscalls, clone3 with set_tid,
//! pidfd_getfd, PR_SET_MM_MAP, userfaultfd write-protect, PAGEMAP_SCAN,
//! TCP_REPAIR). All of lpm's unsafe code lives here.

pub mod arp;
pub mod devices;
pub mod fanotify;
pub mod fown;
pub mod fs;
pub mod ipc;
pub mod l2;
pub mod misc;
pub mod net;
pub mod pagemap;
pub mod pidfd;
pub mod probe;
pub mod procevents;
pub mod ptrace;
pub mod puppet;
pub mod remote;
pub mod sched;
pub mod spawn;
pub mod uffd;

use std::io;

/// Errors from the kernel seam; each names the call and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall on a task failed.
    #[error("{op} (pid {pid})")]
    Sys {
        /// The call.
        op: &'static str,
        /// The task (0 when none).
        pid: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A memory access in another task failed.
    #[error("{op} at {addr:#x} (pid {pid})")]
    Mem {
        /// The call.
        op: &'static str,
        /// The task.
        pid: i32,
        /// The address.
        addr: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A syscall run inside a tracee returned an error.
    #[error("remote syscall {nr} in tid {tid} failed: {}", io::Error::from_raw_os_error(*errno))]
    Remote {
        /// The tracee.
        tid: i32,
        /// Syscall number.
        nr: i64,
        /// errno.
        errno: i32,
    },
    /// A tracee stopped in a way the caller did not expect.
    #[error("tid {tid} stopped unexpectedly ({stop}) during syscall {during}")]
    UnexpectedStop {
        /// The tracee.
        tid: i32,
        /// The syscall being run (-1 when none).
        during: i64,
        /// How it stopped.
        stop: String,
    },
}

impl Error {
    /// A failed syscall on `pid`.
    pub fn sys(op: &'static str, pid: i32, source: io::Error) -> Error {
        Error::Sys { op, pid, source }
    }

    /// A failed memory access.
    pub fn mem(op: &'static str, pid: i32, addr: u64, source: io::Error) -> Error {
        Error::Mem { op, pid, addr, source }
    }

    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Sys { source, .. } | Error::Mem { source, .. } => source.raw_os_error(),
            Error::Remote { errno, .. } => Some(*errno),
            Error::UnexpectedStop { .. } => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a C-style -1 return into the thread's errno.
pub(crate) fn cvt<T: Into<i64> + Copy>(r: T) -> io::Result<T> {
    if r.into() == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
