//! fanotify groups and their marks.
//!
//! fdinfo shows the group's fanotify_init flags and event flags, and each
//! mark: an inode by its file handle (turned into a path, as inotify's
//! watches are), a mount by its id (turned into its mount point), a
//! filesystem by its device (turned into a mount point of it), each with
//! its mark flags, mask and ignored mask. Every path is the holding
//! process's: its mountinfo and its mount namespace (`fsnotify.rs`), so a
//! group in a partition keeps marks on the partition's own mounts. The
//! restore makes the group with the same flags with the other files, and
//! adds every mark by path through the restored process once the tree is
//! shaped and its mounts are in place ([`mark_all`]), the mask and the
//! ignored mask apart.
//!
//! Refused by name: queued events (not saved), permission events in a
//! mask (an event read and not answered yet holds a process of the tree
//! in the kernel, and nothing shows it), a mark on an inode with no path
//! or an unlinked one, a mark on a mount the holding process does not see
//! or sees covered by another, mount namespace marks.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use lpm_image::{FanotifyImage, FanotifyMark, FanotifyMarkKind, Fd, FileImage, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use super::{fsnotify, FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// fanotify groups.
pub struct Fanotify;

/// FAN_ACCESS_PERM, FAN_OPEN_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS.
const PERMISSION_EVENTS: u64 = 0x0002_0000 | 0x0001_0000 | 0x0004_0000 | 0x0010_0000;
/// FAN_MARK_IGNORED_MASK, FAN_MARK_IGNORE (which includes it).
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORE: u32 = 0x400;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
/// FAN_CLOEXEC in fanotify_init's flags.
const FAN_CLOEXEC: u32 = 0x1;

/// Field `key` of one "fanotify ..." line of fdinfo.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
}

fn hex(v: Option<&str>) -> Option<u64> {
    u64::from_str_radix(v?, 16).ok()
}

/// The group's flags and marks, or why they cannot be kept.
fn read(seen: &Seen) -> Result<FanotifyImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let mut names = fsnotify::Resolver::new(seen)?;
    let mut img = FanotifyImage { seen_from: seen.ns_pid as u32, ..Default::default() };
    for line in info.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let get = |key: &str| field(line, key);
        let bad = || seen.unsupported(format!("fanotify fdinfo line {line:?} does not parse"));
        if let Some(flags) = get("flags") {
            img.flags = u32::from_str_radix(flags, 16).map_err(|_| bad())?;
            img.event_flags = hex(get("event-flags")).ok_or_else(bad)? as u32;
            continue;
        }
        let mflags = hex(get("mflags")).ok_or_else(bad)? as u32;
        let mask = hex(get("mask")).ok_or_else(bad)?;
        let ignored_mask = hex(get("ignored_mask")).ok_or_else(bad)?;
        if (mask | ignored_mask) & PERMISSION_EVENTS != 0 {
            return Err(seen.unsupported(format!(
                "fanotify mark with permission events (mask {mask:#x}): an event read and not answered is not visible"
            )));
        }
        let mut m = FanotifyMark { mflags, mask, ignored_mask, ..Default::default() };
        if let Some(ino) = hex(get("ino")) {
            let sdev = hex(get("sdev")).ok_or_else(bad)?;
            let handle_type = get("fhandle-type").and_then(|v| i32::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
            let h = get("f_handle").ok_or_else(bad)?;
            let handle: Vec<u8> =
                (0..h.len() / 2).map(|i| u8::from_str_radix(&h[i * 2..i * 2 + 2], 16)).collect::<Result<_, _>>().map_err(|_| bad())?;
            if handle.is_empty() {
                return Err(seen.unsupported("fanotify mark on a filesystem without file handles"));
            }
            let named = names.by_handle("a fanotify mark", sdev, handle_type, &handle)?;
            if named.unlinked {
                return Err(seen.unsupported(format!("fanotify mark on unlinked {}, an inode with no path", named.path)));
            }
            m.path = named.path;
            let dev = fsnotify::dev_of(sdev);
            if !fsnotify::leads_to(seen.ns_pid, &m.path, dev, ino) {
                return Err(seen.unsupported(format!("fanotify mark on {}, which no longer leads to the marked inode", m.path)));
            }
            (m.kind, m.ino, m.dev) = (FanotifyMarkKind::Inode as i32, ino, dev);
        } else if let Some(id) = get("mnt_id") {
            let id = u64::from_str_radix(id, 16).map_err(|_| bad())?;
            m.path = names.mount_of(id).map_err(|why| seen.unsupported(format!("fanotify mark on {why}")))?;
            m.kind = FanotifyMarkKind::Mount as i32;
        } else if let Some(sdev) = hex(get("sdev")) {
            let (major, minor) = ((sdev >> 20) as u32, (sdev & 0xfffff) as u32);
            m.path = fsnotify::mount_point(&names.mountinfo, 2, &format!("{major}:{minor}")).ok_or_else(|| {
                seen.unsupported(format!("fanotify mark on filesystem {major}:{minor}, which pid {} has no mount of", seen.ns_pid))
            })?;
            (m.kind, m.dev) = (FanotifyMarkKind::Filesystem as i32, libc::makedev(major, minor));
        } else {
            return Err(seen.unsupported(format!("fanotify mark of a kind lpm does not know ({line:?})")));
        }
        img.marks.push(m);
    }
    let copy = lpm_sys::net::steal_fd(seen.pid, seen.fd).step(seen.pid, || format!("take fanotify fd {}", seen.fd))?;
    let queued = rustix::io::ioctl_fionread(&copy).map_err(|e| io_err(format!("FIONREAD on fanotify fd {}", seen.fd))(e.into()))?;
    if queued != 0 {
        return Err(seen.transient(format!("fanotify group with {queued} bytes of queued events")));
    }
    Ok(img)
}

/// Adds mark `m` to group `fd` through restored process `pid` (its root
/// and mount namespace): its mask, then its ignored mask.
fn add_mark(fd: BorrowedFd<'_>, m: &FanotifyMark, file: u32, pid: i32) -> Result<()> {
    let kind = FanotifyMarkKind::try_from(m.kind).unwrap_or(FanotifyMarkKind::Invalid);
    let on = match kind {
        FanotifyMarkKind::Inode => {
            if !fsnotify::leads_to(pid, &m.path, m.dev, m.ino) {
                return Err(EngineError::Incompatible(format!(
                    "fanotify file {file}: {} (seen by pid {pid}) is not the marked inode any more",
                    m.path
                )));
            }
            // Never through a last symbolic link: the inode is the one
            // the path names.
            FAN_MARK_DONT_FOLLOW
        }
        FanotifyMarkKind::Mount => FAN_MARK_MOUNT,
        FanotifyMarkKind::Filesystem => FAN_MARK_FILESYSTEM,
        FanotifyMarkKind::Invalid => return Err(EngineError::Incompatible(format!("fanotify file {file}: a mark of no kind"))),
    };
    let path = fsnotify::through(pid, &m.path);
    let what = |which: &str| format!("fanotify file {file}: {which} of the mark on {} (seen by pid {pid})", m.path);
    let keep = m.mflags & !(FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORE);
    if m.mask != 0 {
        lpm_sys::fanotify::mark(fd, FAN_MARK_ADD | on | (keep & !0x40), m.mask, &path).step(0, || what("mask"))?;
    }
    if m.ignored_mask != 0 {
        let ignore = if m.mflags & FAN_MARK_IGNORE == FAN_MARK_IGNORE { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
        lpm_sys::fanotify::mark(fd, FAN_MARK_ADD | on | keep | ignore, m.ignored_mask, &path).step(0, || what("ignored mask"))?;
    }
    Ok(())
}

/// Adds every mark of fanotify file `f` to its restored group `fd`,
/// through restored process `pid` (the one the dump saw them from), once
/// every process is shaped and its mounts are in place. fdinfo lists the
/// newest mark first: added oldest first, they are listed again as they
/// were.
pub(super) fn mark_all(f: &FileImage, fd: BorrowedFd<'_>, pid: i32) -> Result<()> {
    let g = f.fanotify.as_ref().ok_or_else(|| EngineError::Incompatible(format!("fanotify file {} has no group", f.id)))?;
    for m in g.marks.iter().rev() {
        add_mark(fd, m, f.id, pid)?;
    }
    Ok(())
}

impl Kind for Fanotify {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.fanotify = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        let g = f.fanotify.as_ref().ok_or_else(|| EngineError::Incompatible(format!("fanotify file {} has no group", f.id)))?;
        let fd = lpm_sys::fanotify::init(g.flags, g.event_flags).step(0, || format!("fanotify_init({:#x}) for file {}", g.flags, f.id))?;
        if g.flags & FAN_CLOEXEC == 0 {
            // The group's flags are the image's; the restorer's own copy
            // still must not leak into what it runs.
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
                .map_err(|e| io_err(format!("FD_CLOEXEC on fanotify file {}", f.id))(e.into()))?;
        }
        // The marks come later, through the restored process ([`mark_all`]).
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of fanotify {}", f.id))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Marks live in the shared group; nothing is per puppet.
        Ok(())
    }
}
