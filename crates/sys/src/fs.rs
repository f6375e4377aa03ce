//! Filesystem identity: the UUID a filesystem gives itself.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `FS_IOC_GETFSUUID`: `_IOR(0x15, 0, struct fsuuid2)`, a length byte and
/// 16 bytes (Linux 6.5; absent from the libc crate).
const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;

/// The UUID of the filesystem holding `fd` (ext4, xfs, btrfs, tmpfs... set
/// one), or None when the filesystem has none: the call is not supported
/// there, or the UUID is all zeros (an ext4 made without one).
pub fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    let mut u = FsUuid2 { len: 0, uuid: [0; 16] };
    // SAFETY: the ioctl writes at most size_of::<FsUuid2>() bytes into a
    // local structure we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut u as *mut FsUuid2) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    let id = &u.uuid[..(u.len as usize).min(16)];
    Ok(if id.iter().all(|b| *b == 0) { None } else { Some(id.to_vec()) })
}
