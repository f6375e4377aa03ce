//! Regular files and directories reached by path, unlinked files saved by
//! content and recreated as "ghosts", and stateless character devices.
//!
//! A ghost is recorded once per inode, however many open file
//! descriptions of it the tree holds (opened through several of its
//! names, reopened through /proc, in several processes): its attributes
//! (mode, owner, group, atime and mtime to the nanosecond, size) and the
//! extents holding data (SEEK_DATA and SEEK_HOLE), so its holes stay
//! holes. It is read with O_NOATIME: the checkpoint must not move the
//! access time of a file the tree keeps. The restore makes one inode at
//! the first name, writes the extents, sets the owner, then the mode
//! (chown clears setuid and setgid), then the times last, links it at
//! every other name its descriptions were opened through, opens every
//! description by its own name (so each fd's link reads as before,
//! "NAME (deleted)"), and unlinks every name again. Its ctime is the
//! restore's: no call sets it.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lpm_image::{Fd, FileImage, FileKind, GhostImage, Process};
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, EngineError, Result};

/// Most bytes of data (holes left out) saved of one unlinked file.
const MAX_GHOST: u64 = 64 << 20;
/// Character devices (major 1: null, zero, full, random, urandom, ...) that
/// have no state and exist on every host.
const MEM_MAJOR: u32 = 1;

/// Files reached by path.
pub struct Regular;

fn seek(fd: &OwnedFd, pos: u64, what: &str) -> Result<()> {
    // lseek through std: a File borrowed for the call.
    let f = std::fs::File::from(fd.try_clone().map_err(io_err(format!("dup {what}")))?);
    use std::io::Seek;
    (&f).seek(std::io::SeekFrom::Start(pos)).map_err(io_err(format!("seek {what} to {pos}")))?;
    Ok(())
}

/// A name for a new file at `path` when that is free, so a descriptor's
/// link reads as before ("PATH (deleted)"), or beside it otherwise.
fn free_name(path: &Path) -> PathBuf {
    if path.symlink_metadata().is_err() {
        return path.to_path_buf();
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    dir.join(format!(".lpm-ghost-{}-{nanos}-{n}", std::process::id()))
}

/// Recreates an unlinked file of an image written before ghosts were
/// recorded apart (`FileImage::content`).
fn ghost_v1(f: &FileImage) -> Result<OwnedFd> {
    let tmp = free_name(Path::new(&f.path));
    let mut w = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    let r = w
        .write_all(&f.content)
        .and_then(|_| w.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o7777)))
        .map_err(io_err(format!("write {}", tmp.display())))
        .and_then(|_| open_path(&tmp.to_string_lossy(), f.flags));
    let _ = std::fs::remove_file(&tmp);
    r
}

/// Opens the unlinked file of `seen` again to read it, without moving its
/// access time.
fn reopen_ghost(seen: &Seen) -> Result<std::fs::File> {
    let path = format!("/proc/{}/fd/{}", seen.pid, seen.fd);
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err(format!("reopen {path} (unlinked file)")))
}

/// The extents of an unlinked file holding data, refused past
/// [`MAX_GHOST`] bytes.
fn ghost_extents(seen: &Seen, file: &std::fs::File) -> Result<Vec<(u64, u64)>> {
    super::data_extents(file, seen.st.len(), MAX_GHOST)
        .map_err(|n| seen.unsupported(format!("unlinked file with more than {MAX_GHOST} bytes of data (at least {n})")))
}

/// Records the unlinked inode of `seen` in the table, once: attributes and
/// the extents holding data. Returns its ghost id.
fn record_ghost(seen: &Seen, table: &mut FileTable) -> Result<u64> {
    let st = seen.st;
    if let Some(&id) = table.ghost_ids.get(&(st.dev(), st.ino())) {
        return Ok(id);
    }
    let file = reopen_ghost(seen)?;
    let extents = ghost_extents(seen, &file)?;
    let chunks = super::read_extents(&file, &extents, &format!("unlinked file of fd {} of pid {}", seen.fd, seen.pid))?;
    let id = table.ghosts.len() as u64 + 1;
    table.ghosts.push(GhostImage {
        id,
        size: st.len(),
        mode: st.mode(),
        uid: st.uid(),
        gid: st.gid(),
        atime_sec: st.atime(),
        atime_nsec: st.atime_nsec() as u32,
        mtime_sec: st.mtime(),
        mtime_nsec: st.mtime_nsec() as u32,
        chunks,
    });
    table.ghost_ids.insert((st.dev(), st.ino()), id);
    Ok(id)
}

/// Recreates ghost `g` and opens every description of it in the image,
/// each by the name it was opened through; returns them by file id.
fn open_ghost(g: &GhostImage, files: &[&FileImage]) -> Result<Vec<(u32, OwnedFd)>> {
    let what = |step: &str| format!("{step} of unlinked file {} ({})", g.id, files.first().map(|f| f.path.as_str()).unwrap_or("?"));
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let res = (|| -> Result<Vec<(u32, OwnedFd)>> {
        for f in files {
            if names.iter().any(|(p, _)| *p == f.path) {
                continue;
            }
            let name = free_name(Path::new(&f.path));
            match names.first() {
                None => {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&name)
                        .map_err(io_err(what(&format!("create {}", name.display()))))?;
                    // Recorded before anything can fail, to be removed.
                    names.push((f.path.clone(), name));
                    fill_ghost(g, &file, &what)?;
                }
                Some((_, first)) => {
                    std::fs::hard_link(first, &name).map_err(io_err(what(&format!("link {}", name.display()))))?;
                    names.push((f.path.clone(), name));
                }
            }
        }
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let name = &names.iter().find(|(p, _)| *p == f.path).expect("named above").1;
            let fd = open_path(&name.to_string_lossy(), f.flags)?;
            seek(&fd, f.pos, &f.path)?;
            out.push((f.id, fd));
        }
        Ok(out)
    })();
    for (_, name) in &names {
        let _ = std::fs::remove_file(name);
    }
    res
}

/// A descriptor of ghost `ghost_id` as the restore made it, made now if
/// none of its descriptions was opened yet (they all are then, and wait in
/// `cx.ghosts` for their turn): what another kind needs of the inode (an
/// inotify watch on it) before the ghost's own files come.
pub(super) fn ghost_fd(cx: &mut OpenCx, ghost_id: u64) -> Result<std::os::fd::RawFd> {
    if let Some(fd) = cx.ghost_inodes.get(&ghost_id) {
        return Ok(fd.as_raw_fd());
    }
    let all: Vec<&FileImage> = cx.tree.files.iter().filter(|o| o.ghost_id == ghost_id).collect();
    let g = cx
        .tree
        .ghosts
        .iter()
        .find(|g| g.id == ghost_id)
        .ok_or_else(|| EngineError::Incompatible(format!("unlinked file {ghost_id} is not in the image")))?;
    let opened = open_ghost(g, &all)?;
    let (_, first) = opened.first().ok_or_else(|| EngineError::Incompatible(format!("unlinked file {ghost_id} has no descriptions")))?;
    let fd = keep_inode(cx, ghost_id, first)?;
    cx.ghosts.extend(opened);
    Ok(fd)
}

/// Keeps a descriptor of ghost `ghost_id`'s inode for [`ghost_fd`] while
/// files are opened; returns its number.
fn keep_inode(cx: &mut OpenCx, ghost_id: u64, fd: &OwnedFd) -> Result<std::os::fd::RawFd> {
    if let Some(kept) = cx.ghost_inodes.get(&ghost_id) {
        return Ok(kept.as_raw_fd());
    }
    let dup = fd.try_clone().map_err(io_err(format!("duplicate a descriptor of unlinked file {ghost_id}")))?;
    let raw = dup.as_raw_fd();
    cx.ghost_inodes.insert(ghost_id, dup);
    Ok(raw)
}

/// Writes a new ghost's content and attributes: data, size, owner, mode
/// (after the owner: chown clears setuid and setgid), times (last: every
/// write before moves mtime).
fn fill_ghost(g: &GhostImage, file: &std::fs::File, what: &dyn Fn(&str) -> String) -> Result<()> {
    use std::os::unix::fs::FileExt;
    for c in &g.chunks {
        file.write_all_at(&c.data, c.offset).map_err(io_err(what(&format!("write {} bytes at {}", c.data.len(), c.offset))))?;
    }
    file.set_len(g.size).map_err(io_err(what("set the size")))?;
    let sys = |step: &str| {
        let step = what(step);
        move |e: rustix::io::Errno| EngineError::Io { what: step, source: e.into() }
    };
    rustix::fs::fchown(file, Some(rustix::fs::Uid::from_raw(g.uid)), Some(rustix::fs::Gid::from_raw(g.gid))).map_err(sys("chown"))?;
    rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(g.mode & 0o7777)).map_err(sys("chmod"))?;
    let ts = |sec: i64, nsec: u32| rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    let times = rustix::fs::Timestamps { last_access: ts(g.atime_sec, g.atime_nsec), last_modification: ts(g.mtime_sec, g.mtime_nsec) };
    rustix::fs::futimens(file.as_fd(), &times).map_err(sys("set the times"))?;
    Ok(())
}

/// The refusals of a file reached by path, an unlinked file or a
/// character device.
fn rules(seen: &Seen, kind: Option<FileKind>) -> Result<()> {
    let st = seen.st;
    match kind {
        Some(FileKind::CharDevice) => {
            let major = libc::major(st.rdev());
            if major != MEM_MAJOR {
                let minor = libc::minor(st.rdev());
                // Pty ends are the Tty kind (tty.rs); other terminals
                // are named as such.
                let what = match (major, minor) {
                    (4 | 5, _) => "terminal".to_string(),
                    _ => "character device".to_string(),
                };
                return Err(seen.unsupported(format!("{what} {major}:{minor}")));
            }
        }
        Some(FileKind::Unlinked) => {
            if !st.file_type().is_file() {
                return Err(seen.unsupported("unlinked, and not a regular file"));
            }
            ghost_extents(seen, &reopen_ghost(seen)?)?;
        }
        _ => match std::fs::metadata(seen.link) {
            Ok(m) if m.ino() == st.ino() && m.dev() == st.dev() => {}
            _ => return Err(seen.unsupported("path no longer leads to the open file")),
        },
    }
    Ok(())
}

impl Kind for Regular {
    fn check(&self, seen: &Seen, f: &FileImage, _table: &FileTable) -> Result<()> {
        rules(seen, FileKind::try_from(f.kind).ok())
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        let kind = FileKind::try_from(f.kind).ok();
        if kind == Some(FileKind::Unlinked) && table.ghost_ids.contains_key(&(seen.st.dev(), seen.st.ino())) {
            // Another description of a ghost recorded already.
            f.path = seen.link.trim_end_matches(" (deleted)").to_string();
            f.ghost_id = record_ghost(seen, table)?;
            return Ok(());
        }
        rules(seen, kind)?;
        match kind {
            Some(FileKind::CharDevice) => f.rdev = seen.st.rdev(),
            Some(FileKind::Unlinked) => {
                f.path = seen.link.trim_end_matches(" (deleted)").to_string();
                f.ghost_id = record_ghost(seen, table)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        match FileKind::try_from(f.kind) {
            Ok(FileKind::CharDevice) => {
                let fd = open_path(&f.path, f.flags)?;
                let st = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io_err(format!("stat {}", f.path)))?;
                if st.rdev() != f.rdev {
                    return Err(EngineError::Incompatible(format!(
                        "{} is device {:#x} here, {:#x} in the image",
                        f.path,
                        st.rdev(),
                        f.rdev
                    )));
                }
                Ok(fd)
            }
            Ok(FileKind::Unlinked) if f.ghost_id != 0 => {
                if let Some(fd) = cx.ghosts.remove(&f.id) {
                    return Ok(fd);
                }
                let g = cx.tree.ghosts.iter().find(|g| g.id == f.ghost_id).ok_or_else(|| {
                    EngineError::Incompatible(format!("file {} names unlinked file {}, which the image lacks", f.id, f.ghost_id))
                })?;
                let all: Vec<&FileImage> = cx.tree.files.iter().filter(|o| o.ghost_id == f.ghost_id).collect();
                let mut opened = open_ghost(g, &all)?;
                let at = opened.iter().position(|(id, _)| *id == f.id).expect("opened with the others");
                let (_, fd) = opened.swap_remove(at);
                cx.ghosts.extend(opened);
                keep_inode(cx, f.ghost_id, &fd)?;
                Ok(fd)
            }
            Ok(FileKind::Unlinked) => {
                let fd = ghost_v1(f)?;
                seek(&fd, f.pos, &f.path)?;
                Ok(fd)
            }
            _ => {
                let fd = open_path(&f.path, f.flags)?;
                seek(&fd, f.pos, &f.path)?;
                Ok(fd)
            }
        }
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Opened, positioned and installed already: nothing lives in the
        // puppet's own tables.
        Ok(())
    }
}
