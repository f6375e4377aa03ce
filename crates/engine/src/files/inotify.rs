//! inotify instances and their watches.
//!
//! fdinfo names each watched inode by a file handle; dump turns it into a
//! path as the holding process sees it (open_by_handle_at through its
//! mount namespace, then the link of the opened descriptor, `fsnotify.rs`)
//! so the image does not depend on inode numbers. Restore makes the
//! instance with the other files, and adds the watches by path through
//! the restored process once the whole tree is shaped ([`watch`]), in
//! watch-descriptor order: the kernel hands out descriptors one after
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

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, InotifyImage, InotifyWatch, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;
use rustix::fs::inotify::{self, WatchFlags};

use super::{fsnotify, FileTable, Kind, OpenCx, Seen};
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

/// The path of the inode a watch names, through its file handle, as the
/// holding process sees it, and whether it is an unlinked inode the tree
/// holds open (its last name).
fn resolve(seen: &Seen, names: &mut fsnotify::Resolver, l: &Line, table: &FileTable) -> Result<(String, bool)> {
    let what = format!("inotify watch {}", l.wd);
    let named = names.by_handle(&what, l.sdev, l.handle_type, &l.handle)?;
    let dev = fsnotify::dev_of(l.sdev);
    if named.unlinked {
        if !held_unlinked(table, dev, l.ino) {
            return Err(seen.unsupported(format!(
                "{what} on unlinked {}, which no process of the tree holds open (nothing records its content)",
                named.path
            )));
        }
        return Ok((named.path, true));
    }
    if !fsnotify::leads_to(seen.ns_pid, &named.path, dev, l.ino) {
        return Err(seen.unsupported(format!("{what} on {}, which no longer leads to the watched inode", named.path)));
    }
    Ok((named.path, false))
}

/// The watches of an inotify instance, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<InotifyImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let mut watches = Vec::new();
    let mut names = fsnotify::Resolver::new(seen)?;
    for line in info.lines().filter(|l| l.starts_with("inotify ")) {
        let l = parse_line(line).ok_or_else(|| seen.unsupported(format!("inotify fdinfo line {line:?} does not parse")))?;
        if l.handle.is_empty() {
            return Err(seen.unsupported(format!("inotify watch {} on a filesystem without file handles", l.wd)));
        }
        let (path, unlinked) = resolve(seen, &mut names, &l, table)?;
        let dev = fsnotify::dev_of(l.sdev);
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
    Ok(InotifyImage { watches, seen_from: seen.ns_pid as u32 })
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

/// Adds the watches of inotify file `f` to its restored instance `fd`,
/// through restored process `pid` (the one the dump saw them from: its
/// root and mount namespace), in watch-descriptor order; `ghosts` holds
/// the restorer's descriptor of each remade unlinked file, by ghost id.
/// Runs once every process is shaped and its mounts are in place, so no
/// step of the restore after it opens a watched file.
pub(super) fn watch(f: &FileImage, fd: BorrowedFd<'_>, pid: i32, ghosts: &HashMap<u64, i32>) -> Result<()> {
    let img = f.inotify.as_ref().ok_or_else(|| EngineError::Incompatible(format!("inotify file {} has no watches", f.id)))?;
    let watched: Vec<(u64, u64)> = img.watches.iter().map(|w| (w.dev, w.ino)).collect();
    // A filler for gaps: an inode none of the watches names (any
    // namespace's: the watch is removed at once).
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
            let wd = inotify::add_watch(fd, filler, WatchFlags::ATTRIB)
                .map_err(|e| io_err(format!("inotify file {}: filler watch on {filler}", f.id))(e.into()))?;
            inotify::remove_watch(fd, wd).map_err(|e| io_err(format!("inotify file {}: remove filler watch", f.id))(e.into()))?;
            next = wd + 1;
        }
        let (path, flags) = if w.ghost_id != 0 {
            // The unlinked inode as the restore made it again: through
            // the magic link of a descriptor of it.
            let ghost = ghosts
                .get(&w.ghost_id)
                .ok_or_else(|| EngineError::Incompatible(format!("unlinked file {} is not in the image", w.ghost_id)))?;
            (format!("/proc/self/fd/{ghost}"), WatchFlags::from_bits_retain(w.mask))
        } else {
            if !fsnotify::leads_to(pid, &w.path, w.dev, w.ino) {
                return Err(EngineError::Incompatible(format!(
                    "inotify file {}: {} (seen by pid {pid}) is not the watched inode any more",
                    f.id, w.path
                )));
            }
            (fsnotify::through(pid, &w.path), WatchFlags::from_bits_retain(w.mask) | WatchFlags::DONT_FOLLOW)
        };
        let wd = inotify::add_watch(fd, &*path, flags)
            .map_err(|e| io_err(format!("inotify file {}: watch {} on {}", f.id, w.wd, w.path))(e.into()))?;
        if wd != w.wd {
            return Err(EngineError::Incompatible(format!(
                "inotify file {}: watch on {} got descriptor {wd}, the image has {}",
                f.id, w.path, w.wd
            )));
        }
        next = wd + 1;
    }
    // Removing fillers queued IN_IGNORED events the process never asked
    // for; the instance's flags are the image's (perhaps blocking), so
    // only what is queued is read.
    let mut r = std::fs::File::from(fd.try_clone_to_owned().map_err(io_err("dup inotify"))?);
    let mut buf = [0u8; 4096];
    while rustix::io::ioctl_fionread(&r).map_err(|e| io_err(format!("inotify file {}: FIONREAD", f.id))(e.into()))? != 0 {
        r.read(&mut buf).map_err(io_err(format!("inotify file {}: drain filler events", f.id)))?;
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

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        // The watches come later, through the restored process ([`watch`]).
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC).map_err(|e| io_err(format!("inotify_init for file {}", f.id))(e.into()))?;
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
