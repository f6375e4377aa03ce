//! pidfds: what PIDFD_GET_INFO tells of the process one names.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{cvt, Error, Result};

/// PIDFD_INFO_PID: the pid, tgid and ppid (of a live process only).
pub const INFO_PID: u64 = 1 << 0;
/// PIDFD_INFO_EXIT: the wait status of a process that has exited and been
/// reaped.
pub const INFO_EXIT: u64 = 1 << 3;

/// The kernel's `struct pidfd_info` up to its second version (72 bytes,
/// Linux 6.16), of which lpm reads the mask, the pid and the exit code.
#[repr(C)]
#[derive(Default)]
struct RawInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ids: [u32; 8],
    exit_code: i32,
    coredump_mask: u32,
    spare: u32,
}

/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)` for [`RawInfo`]'s size:
/// the kernel takes any size from the first version on.
const PIDFD_GET_INFO: u64 = (3 << 30) | ((std::mem::size_of::<RawInfo>() as u64) << 16) | (0xff << 8) | 11;

/// What PIDFD_GET_INFO tells of the process a pidfd names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Which of the fields below the kernel filled (`INFO_*` bits).
    pub mask: u64,
    /// The pid in the caller's pid namespace (`INFO_PID`).
    pub pid: u32,
    /// The wait status, once the process has been reaped (`INFO_EXIT`).
    pub exit_code: i32,
}

/// PIDFD_GET_INFO on `fd`, asking for `mask`. A process that has been
/// reaped answers only `INFO_EXIT`; asked for nothing else, it answers
/// ESRCH.
pub fn info(fd: BorrowedFd<'_>, mask: u64) -> Result<Info> {
    let mut raw = RawInfo { mask, ..Default::default() };
    // SAFETY: raw is a writable struct of exactly the size the request
    // number encodes; the kernel writes at most that many bytes.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), PIDFD_GET_INFO as _, &mut raw as *mut RawInfo) })
        .map_err(|e| Error::sys("ioctl PIDFD_GET_INFO", 0, e))?;
    Ok(Info { mask: raw.mask, pid: raw.pid, exit_code: raw.exit_code })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reaped_processes_tell_their_wait_status() {
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().expect("spawn");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("pidfd_open");
        let mut child = child;
        child.wait().expect("wait");
        let i = info(fd.as_fd(), INFO_EXIT | INFO_PID).expect("info");
        assert_eq!((i.mask & (INFO_EXIT | INFO_PID), i.exit_code), (INFO_EXIT, 7 << 8));
    }
}
