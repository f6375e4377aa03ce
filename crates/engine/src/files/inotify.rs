//! inotify instances and their watches.
//!
//! fdinfo names each watched inode by a file handle; dump turns it into a
//! path (open_by_handle_at, then the link of the opened descriptor) so the
//! image does not depend on inode numbers. Restore adds the watches by path
//! in watch-descriptor order: the kernel hands out descriptors one after
//! the other and never reuses one soon, so gaps are consumed with watches
//! added and removed on an unwatched inode. Events queued at dump are not
//! saved: such an instance is refused.
//!
//! A watch on an unlinked inode that a process of the tree still holds
//! open (the dump records it as a ghost, `regular.rs`) names that ghost;
//! the restore adds the watch through /proc/self/fd of the ghost made
//! again, after its names are gone, so no event of the remaking reaches
//! the instance and the program's next events (a write, the last close,
//! IN_DELETE_SELF and IN_IGNORED) come as they would have. An unlinked
//! inode nobody in the tree holds open has no recorded content: refused.
//! (A watch on a file unlinked with no descriptor open is gone at once,
//! its IN_DELETE_SELF and IN_IGNORED queued: pending events, refused.)

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, InotifyImage, InotifyWatch, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;
use rustix::fs::inotify::{self, WatchFlags};

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// inotify instances.
pub struct Inotify;

/// Largest run of unused watch descriptors restore consumes to reach one.
const MAX_GAP: i32 = 1 << 16;

/// One "inotify wd:... f_handle:..." line of fdinfo.
#[derive(Debug, PartialEq)]
struct Line {
    wd: i32,
    ino: u64,
    /// The kernel's s_dev (major << 20 | minor).
    sdev: u64,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = line.strip_prefix("inotify ")?;
    let get = |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix(':'));
    let hex = |key: &str| u64::from_str_radix(get(key)?, 16).ok();
    let bytes: usize = get("fhandle-bytes").and_then(|v| usize::from_str_radix(v, 16).ok())?;
    let h = get("f_handle")?;
    let handle: Vec<u8> = (0..h.len() / 2).map(|i| u8::from_str_radix(&h[i * 2..i * 2 + 2], 16)).collect::<Result<_, _>>().ok()?;
    if handle.len() != bytes {
        return None;
    }
    Some(Line {
        wd: hex("wd")? as i32,
        ino: hex("ino")?,
        sdev: hex("sdev")?,
        mask: hex("mask")? as u32,
        handle_type: get("fhandle-type").and_then(|v| i32::from_str_radix(v, 16).ok())?,
        handle,
    })
}

/// Placeholder for the ghost of a watched unlinked inode until every
/// process is dumped ([`link_ghosts`]).
const GHOST_PENDING: u64 = u64::MAX;

/// Whether a process of the tree holds a descriptor of the unlinked inode
/// `(dev, ino)` (the dump then records it as a ghost).
fn held_unlinked(table: &FileTable, dev: u64, ino: u64) -> bool {
    table.tree.iter().any(|&pid| {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        dir.filter_map(|e| e.ok()).any(|e| {
            let linked = std::fs::read_link(e.path()).is_ok_and(|l| !l.to_string_lossy().ends_with(" (deleted)"));
            !linked && std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino && m.nlink() == 0 && m.is_file())
        })
    })
}

/// The path of the inode a watch names, through its file handle, and
/// whether it is an unlinked inode the tree holds open (its last name).
fn resolve(seen: &Seen, l: &Line, table: &FileTable) -> Result<(String, bool)> {
    let dev = libc::makedev((l.sdev >> 20) as u32, (l.sdev & 0xfffff) as u32);
    let mountinfo = proc::read(std::process::id() as i32, "mountinfo")?;
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mount = mountinfo
        .lines()
        .find_map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            (f.get(2) == Some(&wanted.as_str())).then(|| f.get(4).map(|s| s.to_string())).flatten()
        })
        .ok_or_else(|| seen.unsupported(format!("inotify watch {} on device {wanted}, which is not mounted here", l.wd)))?;
    // Not O_PATH: open_by_handle_at does not take such a descriptor.
    let mfd = std::fs::File::open(&mount)
        .map_err(io_err(format!("open mount {mount} for inotify watch {} of fd {} of pid {}", l.wd, seen.fd, seen.pid)))?;
    let fd = misc::open_by_handle(mfd.as_fd(), l.handle_type, &l.handle, libc::O_PATH | libc::O_CLOEXEC)
        .step(seen.pid, || format!("open the inode of inotify watch {} of fd {}", l.wd, seen.fd))?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(io_err(format!("name the inode of inotify watch {}", l.wd)))?
        .to_string_lossy()
        .into_owned();
    if let Some(name) = path.strip_suffix(" (deleted)").filter(|p| p.starts_with('/')) {
        if !held_unlinked(table, dev, l.ino) {
            return Err(seen.unsupported(format!(
                "inotify watch {} on unlinked {name}, which no process of the tree holds open (nothing records its content)",
                l.wd
            )));
        }
        return Ok((name.to_string(), true));
    }
    if !path.starts_with('/') {
        return Err(seen.unsupported(format!("inotify watch {} on an inode with no path ({path})", l.wd)));
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.ino() == l.ino && m.dev() == dev => Ok((path, false)),
        _ => Err(seen.unsupported(format!("inotify watch {} on {path}, which no longer leads to the watched inode", l.wd))),
    }
}

/// The watches of an inotify instance, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<InotifyImage> {
    let ns = |pid: i32| proc::link(pid, "ns/mnt");
    if ns(seen.pid)? != ns(std::process::id() as i32)? {
        return Err(seen.unsupported("inotify instance in another mount namespace"));
    }
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let mut watches = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("inotify ")) {
        let l = parse_line(line).ok_or_else(|| seen.unsupported(format!("inotify fdinfo line {line:?} does not parse")))?;
        if l.handle.is_empty() {
            return Err(seen.unsupported(format!("inotify watch {} on a filesystem without file handles", l.wd)));
        }
        let (path, unlinked) = resolve(seen, &l, table)?;
        let dev = libc::makedev((l.sdev >> 20) as u32, (l.sdev & 0xfffff) as u32);
        let ghost_id = if unlinked { GHOST_PENDING } else { 0 };
        watches.push(InotifyWatch { wd: l.wd, mask: l.mask, path, ino: l.ino, dev, ghost_id });
    }
    watches.sort_by_key(|w| w.wd);
    // Queued events live in the instance; a copy of the descriptor
    // tells how many bytes wait.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(seen.pid).ok_or_else(|| seen.unsupported("bad pid"))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| io_err(format!("pidfd_open {}", seen.pid))(e.into()))?;
    let copy = rustix::process::pidfd_getfd(&pidfd, seen.fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| io_err(format!("pidfd_getfd fd {} of pid {}", seen.fd, seen.pid))(e.into()))?;
    let queued = rustix::io::ioctl_fionread(&copy).map_err(|e| io_err(format!("FIONREAD on inotify fd {}", seen.fd))(e.into()))?;
    if queued != 0 {
        return Err(seen.transient(format!("inotify instance with {queued} bytes of queued events")));
    }
    Ok(InotifyImage { watches })
}

/// Names the ghost of every watched unlinked inode, once every process
/// is dumped and every ghost recorded.
pub(super) fn link_ghosts(table: &mut FileTable) -> Result<()> {
    let ids = table.ghosts.ids.clone();
    for f in table.files.iter_mut() {
        for w in f.inotify.iter_mut().flat_map(|i| i.watches.iter_mut()).filter(|w| w.ghost_id == GHOST_PENDING) {
            w.ghost_id = *ids.get(&(w.dev, w.ino)).ok_or_else(|| {
                EngineError::Incompatible(format!(
                    "inotify file {}: watch {} on unlinked {}, of which no descriptor was recorded",
                    f.id, w.wd, w.path
                ))
            })?;
        }
    }
    Ok(())
}

impl Kind for Inotify {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.inotify = Some(read(seen, table)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let img = f.inotify.as_ref().ok_or_else(|| EngineError::Incompatible(format!("inotify file {} has no watches", f.id)))?;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| io_err(format!("inotify_init for file {}", f.id))(e.into()))?;
        let watched: Vec<(u64, u64)> = img.watches.iter().map(|w| (w.dev, w.ino)).collect();
        // A filler for gaps: an inode none of the watches names.
        let filler = ["/", "/proc", "/sys", "/dev", "/tmp"]
            .into_iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| !watched.contains(&(m.dev(), m.ino()))))
            .ok_or_else(|| EngineError::Incompatible(format!("inotify file {}: no unwatched inode to fill gaps with", f.id)))?;
        let mut next = 1;
        for w in &img.watches {
            if w.wd < next || w.wd - next > MAX_GAP {
                return Err(EngineError::Incompatible(format!(
                    "inotify file {}: watch descriptor {} cannot be reached from {next}",
                    f.id, w.wd
                )));
            }
            while next < w.wd {
                let wd = inotify::add_watch(&fd, filler, WatchFlags::ATTRIB)
                    .map_err(|e| io_err(format!("inotify file {}: filler watch on {filler}", f.id))(e.into()))?;
                inotify::remove_watch(&fd, wd).map_err(|e| io_err(format!("inotify file {}: remove filler watch", f.id))(e.into()))?;
                next = wd + 1;
            }
            let (path, flags) = if w.ghost_id != 0 {
                // The unlinked inode as the restore made it again: through
                // the magic link of a descriptor of it.
                let ghost = super::regular::ghost_fd(cx, w.ghost_id)?;
                (format!("/proc/self/fd/{ghost}"), WatchFlags::from_bits_retain(w.mask))
            } else {
                let m = std::fs::symlink_metadata(&w.path).map_err(io_err(format!("inotify file {}: stat watched {}", f.id, w.path)))?;
                if m.ino() != w.ino || m.dev() != w.dev {
                    return Err(EngineError::Incompatible(format!("inotify file {}: {} is not the watched inode any more", f.id, w.path)));
                }
                (w.path.clone(), WatchFlags::from_bits_retain(w.mask) | WatchFlags::DONT_FOLLOW)
            };
            let wd = inotify::add_watch(&fd, &*path, flags)
                .map_err(|e| io_err(format!("inotify file {}: watch {} on {}", f.id, w.wd, w.path))(e.into()))?;
            if wd != w.wd {
                return Err(EngineError::Incompatible(format!(
                    "inotify file {}: watch on {} got descriptor {wd}, the image has {}",
                    f.id, w.path, w.wd
                )));
            }
            next = wd + 1;
        }
        // Removing fillers queued IN_IGNORED events the process never asked for.
        let mut r = std::fs::File::from(fd.try_clone().map_err(io_err("dup inotify"))?);
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_err(format!("inotify file {}: drain filler events", f.id))(e)),
            }
        }
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of inotify {}", f.id))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Watches live in the shared instance; nothing is per puppet.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_watch() {
        let l =
            parse_line("inotify wd:2 ino:2e1 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e102000000000000")
                .expect("parses");
        assert_eq!(l, Line { wd: 2, ino: 0x2e1, sdev: 0xfe00000, mask: 2, handle_type: 1, handle: vec![0xe1, 2, 0, 0, 0, 0, 0, 0] });
        assert!(parse_line("inotify wd:2 ino:2e1").is_none());
    }
}
