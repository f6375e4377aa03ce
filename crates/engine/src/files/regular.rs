//! Regular files and directories reached by path, unlinked files and
//! removed directories still in use, recreated as "ghosts", and stateless
//! character devices.
//!
//! A ghost is recorded once per inode, however many open file
//! descriptions of it the tree holds (opened through several of its
//! names, reopened through /proc, in several processes), and whether the
//! tree holds it by a descriptor, a mapping (mem.rs) or as a working
//! directory: its attributes (mode, owner, group, atime and mtime to the
//! nanosecond, size) and, for a file, the extents holding data (SEEK_DATA
//! and SEEK_HOLE), so its holes stay holes. The data is streamed into a
//! file of the image of its own, a megabyte at a time, so a file of any
//! size costs the dump no more memory than a small one. It is read with
//! O_NOATIME: the checkpoint must not move the access time of a file the
//! tree keeps. The restore makes one inode at the first name (a removed
//! directory: an empty one, which it necessarily was), writes the
//! extents, sets the owner, then the mode (chown clears setuid and
//! setgid), then the times last, links it at every other name its
//! descriptions were opened through, opens every description by its own
//! name (so each fd's link reads as before, "NAME (deleted)") and an
//! O_PATH descriptor that puppets map it and enter it through, and
//! removes every name again. Its ctime is the restore's: no call sets it.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lpm_image::{Fd, FileImage, FileKind, GhostExtent, GhostImage, Process};
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, EngineError, Result};

/// Character devices (major 1: null, zero, full, random, urandom, ...) that
/// have no state and exist on every host.
const MEM_MAJOR: u32 = 1;

/// Files reached by path.
pub struct Regular;

/// Puts a reopened description at the image's offset; an O_PATH one has
/// none (and no seek).
fn seek(fd: &OwnedFd, f: &FileImage, what: &str) -> Result<()> {
    if f.flags as i32 & libc::O_PATH != 0 {
        return Ok(());
    }
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(f.pos)).map_err(|e| io_err(format!("seek {what} to {}", f.pos))(e.into()))?;
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

/// Bytes of an unlinked file's data copied at a time, at dump (into its
/// data file) and at restore (back into the new inode): the copy's memory
/// does not grow with the file.
const COPY: usize = 1 << 20;

/// Unlinked inodes the tree holds (files and removed directories, by
/// descriptor, mapping or working directory), one per inode, seen so
/// far during a dump.
#[derive(Default)]
pub struct Ghosts {
    /// Recorded so far.
    pub list: Vec<GhostImage>,
    /// The ghost of each inode `(dev, ino)`.
    pub ids: HashMap<(u64, u64), u64>,
    /// The image directory their data goes to; none while the tree is
    /// only inspected.
    pub dir: Option<PathBuf>,
}

impl Ghosts {
    /// Records the unlinked inode `st`, once: attributes (and a device
    /// node's number), and for a regular file, open as `file` (reopened
    /// with O_NOATIME), the extents holding data, streamed into a data
    /// file of the image. `name` is the path it was reached by ("(deleted)" cut off),
    /// `what` names it in errors. Returns its id.
    pub fn record(&mut self, file: Option<&std::fs::File>, st: &Metadata, name: &str, what: &str) -> Result<u64> {
        if let Some(&id) = self.ids.get(&(st.dev(), st.ino())) {
            return Ok(id);
        }
        let id = self.list.len() as u64 + 1;
        let mut g = GhostImage {
            id,
            size: st.len(),
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            atime_sec: st.atime(),
            atime_nsec: st.atime_nsec() as u32,
            mtime_sec: st.mtime(),
            mtime_nsec: st.mtime_nsec() as u32,
            path: name.to_string(),
            rdev: if is_node(st.mode()) { st.rdev() } else { 0 },
            ..Default::default()
        };
        if let (true, Some(file)) = (st.file_type().is_file(), file) {
            if let Some(dir) = &self.dir {
                g.data_file = format!("ghost-{id}.img");
                g.extents = save_data(file, st.len(), &dir.join(&g.data_file), what)?;
            }
        }
        self.list.push(g);
        self.ids.insert((st.dev(), st.ino()), id);
        Ok(id)
    }
}

impl Ghosts {
    /// Records, once, a regular file open as `file` whose name `name`
    /// was removed while it keeps other names, which nothing tells: by
    /// its file handle and the mount point of its filesystem, so the
    /// restore opens the very inode again (the same data, the same other
    /// names) on the shared filesystem.
    pub fn record_linked(&mut self, file: &std::fs::File, st: &Metadata, name: &str, what: &str) -> Result<u64> {
        if let Some(&id) = self.ids.get(&(st.dev(), st.ino())) {
            return Ok(id);
        }
        let h = lpm_sys::misc::file_handle(file.as_fd()).map_err(|e| EngineError::Unsupported {
            pid: 0,
            kind: "file descriptor",
            what: format!("{what}: it has no file handle to reopen it by ({e})"),
        })?;
        let dev = format!("{}:{}", libc::major(st.dev()), libc::minor(st.dev()));
        let mountinfo = crate::proc::read(std::process::id() as i32, "mountinfo")?;
        let mount = mountinfo
            .lines()
            .find_map(|m| {
                let f: Vec<&str> = m.split_whitespace().collect();
                (f.get(2) == Some(&dev.as_str())).then(|| f.get(4).map(|s| s.to_string())).flatten()
            })
            .ok_or_else(|| EngineError::Unsupported {
                pid: 0,
                kind: "file descriptor",
                what: format!("{what}: device {dev} is not mounted here"),
            })?;
        let id = self.list.len() as u64 + 1;
        self.list.push(GhostImage {
            id,
            size: st.len(),
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            atime_sec: st.atime(),
            atime_nsec: st.atime_nsec() as u32,
            mtime_sec: st.mtime(),
            mtime_nsec: st.mtime_nsec() as u32,
            path: name.to_string(),
            handle: h.bytes,
            handle_type: h.kind,
            mount,
            nlink: st.nlink() as u32,
            ..Default::default()
        });
        self.ids.insert((st.dev(), st.ino()), id);
        Ok(id)
    }
}

/// Copies the extents of `file` holding data (SEEK_DATA and SEEK_HOLE:
/// holes are not read) one after the other into a new file at `to`,
/// `COPY` bytes at a time, with the checksum of each.
fn save_data(file: &std::fs::File, size: u64, to: &Path, what: &str) -> Result<Vec<GhostExtent>> {
    use std::hash::Hasher;
    use std::os::unix::fs::FileExt;
    let extents = super::data_extents(file, size, u64::MAX).unwrap_or_default();
    let out =
        lpm_image::private_file().write(true).create(true).truncate(true).open(to).map_err(io_err(format!("create {}", to.display())))?;
    let mut buf = vec![0u8; COPY.min(extents.iter().map(|e| (e.1 - e.0) as usize).max().unwrap_or(0))];
    let mut at = 0u64;
    let mut list = Vec::with_capacity(extents.len());
    for (start, end) in extents {
        let mut h = twox_hash::XxHash3_64::new();
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(COPY);
            file.read_exact_at(&mut buf[..n], off).map_err(io_err(format!("read {what} at {off}")))?;
            h.write(&buf[..n]);
            out.write_all_at(&buf[..n], at + (off - start)).map_err(io_err(format!("write {}", to.display())))?;
            off += n as u64;
        }
        list.push(GhostExtent { offset: start, len: end - start, at, xxh3: h.finish() });
        at += end - start;
    }
    Ok(list)
}

/// The name of the FIFO or device node of `seen` when it was unlinked
/// (its link reads "NAME (deleted)" and it has no link left).
pub(crate) fn unlinked_node<'a>(seen: &Seen<'a>) -> Option<&'a str> {
    seen.link.strip_suffix(" (deleted)").filter(|_| seen.st.nlink() == 0)
}

/// Opens the unlinked file of `seen` again to read it, without moving its
/// access time.
fn reopen_ghost(seen: &Seen) -> Result<std::fs::File> {
    reopen(&format!("/proc/{}/fd/{}", seen.pid, seen.fd))
}

/// Opens `path` (a magic link of /proc) again to read what it leads to
/// without moving its access time; a directory as it is.
pub(crate) fn reopen(path: &str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("reopen {path} (unlinked)")))
}

/// Whether the mode is a FIFO's or a character device's (a node made
/// with mknod, without content).
fn is_node(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFCHR)
}

/// Whether the mode is a FIFO's: its descriptions are opened by the
/// pipe module (opening one end alone would block), through the ghost's
/// O_PATH descriptor.
fn is_fifo(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFIFO
}

/// Whether the image's mode is a directory's.
fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// Makes every unlinked inode of the image again: each one inode with
/// the names its descriptions were opened through (a directory with its
/// one name), every description of it opened by its own name (so each
/// fd's link reads as before, "NAME (deleted)") and put in
/// `cx.ghosts` by file id, then every name removed again. Returns, per
/// ghost, an O_PATH descriptor of it, through which the puppets map it
/// and enter it (a working directory).
pub(crate) fn make_ghosts(cx: &mut OpenCx, dir: &Path, base: i32) -> Result<HashMap<u64, OwnedFd>> {
    let mut holders = HashMap::new();
    for g in &cx.tree.ghosts {
        let files: Vec<&FileImage> = cx.tree.files.iter().filter(|f| f.ghost_id == g.id).collect();
        let (mut holder, opened) = make_ghost(g, &files, dir)?;
        // A test of `verify` makes the restore map a copy of a ghost
        // rather than the inode its descriptors hold.
        if crate::verify::sabotaged("ghost-copy") && g.handle.is_empty() && !files.is_empty() {
            holder = make_ghost(g, &[], dir)?.0;
        }
        let holder = lpm_sys::misc::move_fd_above(holder, base)
            .map_err(|e| EngineError::Incompatible(format!("move unlinked file {} above fd {base}: {e}", g.id)))?;
        cx.ghost_fds.insert(g.id, holder.as_raw_fd());
        holders.insert(g.id, holder);
        cx.ghosts.extend(opened);
    }
    Ok(holders)
}

fn make_ghost(g: &GhostImage, files: &[&FileImage], dir: &Path) -> Result<(OwnedFd, Vec<(u32, OwnedFd)>)> {
    if !g.handle.is_empty() {
        return open_linked(g, files);
    }
    let first_path = files.first().map(|f| f.path.as_str()).unwrap_or(g.path.as_str());
    let what = |step: &str| format!("{step} of unlinked {} {} ({first_path})", if is_dir(g.mode) { "directory" } else { "file" }, g.id);
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let res = (|| -> Result<(OwnedFd, Vec<(u32, OwnedFd)>)> {
        let wanted: Vec<&str> = if files.is_empty() { vec![first_path] } else { files.iter().map(|f| f.path.as_str()).collect() };
        for path in wanted {
            if names.iter().any(|(p, _)| p == path) {
                continue;
            }
            match names.first() {
                None if is_dir(g.mode) => {
                    let name = free_name(Path::new(path));
                    std::fs::DirBuilder::new().mode(0o700).create(&name).map_err(io_err(what(&format!("mkdir {}", name.display()))))?;
                    names.push((path.to_string(), name));
                    let d = std::fs::File::open(&names[0].1).map_err(io_err(what("open")))?;
                    set_attrs(g, &d, &what)?;
                }
                None if is_node(g.mode) => {
                    let name = free_name(Path::new(path));
                    let kind = if is_fifo(g.mode) { rustix::fs::FileType::Fifo } else { rustix::fs::FileType::CharacterDevice };
                    rustix::fs::mknodat(rustix::fs::CWD, &name, kind, rustix::fs::Mode::from_raw_mode(0o600), g.rdev)
                        .map_err(|e| io_err(what(&format!("mknod {}", name.display())))(e.into()))?;
                    names.push((path.to_string(), name));
                    set_node_attrs(g, &names[0].1, &what)?;
                }
                None => {
                    let name = free_name(Path::new(path));
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&name)
                        .map_err(io_err(what(&format!("create {}", name.display()))))?;
                    // Recorded before anything can fail, to be removed.
                    names.push((path.to_string(), name));
                    fill_ghost(g, &file, dir, &what)?;
                }
                // A directory has one name: every description is opened
                // through it.
                Some(_) if is_dir(g.mode) => {}
                Some((_, first)) => {
                    let name = free_name(Path::new(path));
                    std::fs::hard_link(first, &name).map_err(io_err(what(&format!("link {}", name.display()))))?;
                    names.push((path.to_string(), name));
                }
            }
        }
        let first = &names.first().expect("one name at least").1;
        let holder = open_path(&first.to_string_lossy(), (libc::O_PATH | libc::O_NOFOLLOW) as u32)?;
        let mut out = Vec::with_capacity(files.len());
        for f in files.iter().filter(|_| !is_fifo(g.mode)) {
            let name = &names.iter().find(|(p, _)| *p == f.path).unwrap_or(&names[0]).1;
            let fd = open_path(&name.to_string_lossy(), f.flags)?;
            seek(&fd, f, &f.path)?;
            out.push((f.id, fd));
        }
        Ok((holder, out))
    })();
    for (_, name) in &names {
        let _ = if is_dir(g.mode) { std::fs::remove_dir(name) } else { std::fs::remove_file(name) };
    }
    res
}

/// Opens again a file whose opened name was removed while it kept other
/// names: the very inode, by its handle; each description through the
/// name it was opened by, so its link reads "NAME (deleted)" again. The
/// inode is linked at that name for the open: where another file took
/// the name since, the two are swapped (RENAME_EXCHANGE) and swapped
/// back, so the other file keeps its name and inode (only its ctime
/// moves), and the name is removed from ours again.
fn open_linked(g: &GhostImage, files: &[&FileImage]) -> Result<(OwnedFd, Vec<(u32, OwnedFd)>)> {
    let what = |step: &str| format!("{step} of file {} (reopened by its handle; named {})", g.id, g.path);
    let mount = std::fs::File::open(&g.mount).map_err(io_err(what(&format!("open its mount {}", g.mount))))?;
    let h = lpm_sys::misc::open_by_handle(mount.as_fd(), g.handle_type, &g.handle, libc::O_PATH)
        .map_err(|e| EngineError::Incompatible(what(&format!("open_by_handle_at: {e}"))))?;
    let st = rustix::fs::fstat(&h).map_err(|e| io_err(what("fstat"))(e.into()))?;
    if st.st_mode & libc::S_IFMT != g.mode & libc::S_IFMT || st.st_nlink == 0 {
        return Err(EngineError::Incompatible(what(&format!("the handle leads to mode {:o} with {} links", st.st_mode, st.st_nlink))));
    }
    let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    if paths.is_empty() {
        paths.push(&g.path);
    }
    paths.dedup();
    let mut holder = None;
    let mut out = Vec::with_capacity(files.len());
    let mut done: Vec<&str> = Vec::new();
    for path in paths {
        if done.contains(&path) {
            continue;
        }
        done.push(path);
        let mut opened = Vec::new();
        with_name(&h, Path::new(path), &what, |name| {
            if holder.is_none() {
                holder = Some(open_path(&name.to_string_lossy(), (libc::O_PATH | libc::O_NOFOLLOW) as u32)?);
            }
            for f in files.iter().filter(|f| f.path == path) {
                let fd = open_path(&name.to_string_lossy(), f.flags)?;
                seek(&fd, f, &f.path)?;
                opened.push((f.id, fd));
            }
            Ok(())
        })?;
        out.extend(opened);
    }
    Ok((holder.expect("one name at least"), out))
}

/// Links the inode of O_PATH descriptor `h` at `path` for the time of
/// `open` (see [`open_linked`]), then removes that name again.
fn with_name(h: &OwnedFd, path: &Path, what: &dyn Fn(&str) -> String, open: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    use rustix::fs::{AtFlags, RenameFlags, CWD};
    let src = format!("/proc/self/fd/{}", h.as_raw_fd());
    let link = |to: &Path| {
        rustix::fs::linkat(CWD, src.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW)
            .map_err(|e| io_err(what(&format!("link it at {}", to.display())))(e.into()))
    };
    if path.symlink_metadata().is_err() {
        link(path)?;
        let r = open(path);
        let gone = std::fs::remove_file(path).map_err(io_err(what(&format!("remove {} again", path.display()))));
        return r.and(gone);
    }
    let tmp = free_name(path);
    link(&tmp)?;
    if let Err(e) = rustix::fs::renameat_with(CWD, &tmp, CWD, path, RenameFlags::EXCHANGE) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(what(&format!("swap {} with {}", tmp.display(), path.display())))(e.into()));
    }
    // Ours at `path`, the other file at `tmp` until it is put back.
    // Renamed over ours: the name is never missing, and ours is left
    // with its other names only.
    let r = open(path);
    let back = std::fs::rename(&tmp, path).map_err(io_err(what(&format!("give {} back to the file that holds it", path.display()))));
    r.and(back)
}

/// Writes a new ghost's content and attributes: data, size, then the
/// attributes ([`set_attrs`]).
fn fill_ghost(g: &GhostImage, file: &std::fs::File, dir: &Path, what: &dyn Fn(&str) -> String) -> Result<()> {
    use std::hash::Hasher;
    use std::os::unix::fs::FileExt;
    for c in &g.chunks {
        file.write_all_at(&c.data, c.offset).map_err(io_err(what(&format!("write {} bytes at {}", c.data.len(), c.offset))))?;
    }
    if !g.extents.is_empty() {
        let path = dir.join(&g.data_file);
        let data = std::fs::File::open(&path).map_err(io_err(what(&format!("open {}", path.display()))))?;
        let mut buf = vec![0u8; COPY.min(g.extents.iter().map(|e| e.len as usize).max().unwrap_or(0))];
        for e in &g.extents {
            let mut h = twox_hash::XxHash3_64::new();
            let mut done = 0u64;
            while done < e.len {
                let n = ((e.len - done) as usize).min(COPY);
                data.read_exact_at(&mut buf[..n], e.at + done).map_err(io_err(what(&format!(
                    "read {} at {}",
                    path.display(),
                    e.at + done
                ))))?;
                h.write(&buf[..n]);
                file.write_all_at(&buf[..n], e.offset + done).map_err(io_err(what(&format!("write {n} bytes at {}", e.offset + done))))?;
                done += n as u64;
            }
            if h.finish() != e.xxh3 {
                return Err(EngineError::Incompatible(what(&format!(
                    "checksum of the extent at {} ({} bytes at {} of {})",
                    e.offset, e.len, e.at, g.data_file
                ))));
            }
        }
    }
    file.set_len(g.size).map_err(io_err(what("set the size")))?;
    set_attrs(g, file, what)
}

/// [`set_attrs`] of a new FIFO or device node, by its `name` (opening
/// one could block, or act on the device).
fn set_node_attrs(g: &GhostImage, name: &Path, what: &dyn Fn(&str) -> String) -> Result<()> {
    use rustix::fs::{AtFlags, CWD};
    let sys = |step: &str| {
        let step = what(step);
        move |e: rustix::io::Errno| EngineError::Io { what: step, source: e.into() }
    };
    rustix::fs::chownat(CWD, name, Some(rustix::fs::Uid::from_raw(g.uid)), Some(rustix::fs::Gid::from_raw(g.gid)), AtFlags::empty())
        .map_err(sys("chown"))?;
    rustix::fs::chmodat(CWD, name, rustix::fs::Mode::from_raw_mode(g.mode & 0o7777), AtFlags::empty()).map_err(sys("chmod"))?;
    let ts = |sec: i64, nsec: u32| rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    let times = rustix::fs::Timestamps { last_access: ts(g.atime_sec, g.atime_nsec), last_modification: ts(g.mtime_sec, g.mtime_nsec) };
    rustix::fs::utimensat(CWD, name, &times, AtFlags::empty()).map_err(sys("set the times"))?;
    Ok(())
}

/// Sets a new ghost's owner, mode (after the owner: chown clears setuid
/// and setgid) and times (last: every write before moves mtime).
fn set_attrs(g: &GhostImage, file: &std::fs::File, what: &dyn Fn(&str) -> String) -> Result<()> {
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
/// The refusals of a file reached by path, an unlinked file or
/// directory or a character device.
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
            if !st.file_type().is_file() && !st.file_type().is_dir() {
                return Err(seen.unsupported("unlinked, and neither a regular file nor a directory"));
            }
        }
        _ => {
            // An O_PATH descriptor of a symbolic link (O_NOFOLLOW) is the
            // link itself.
            let here = if st.file_type().is_symlink() { std::fs::symlink_metadata(seen.link) } else { std::fs::metadata(seen.link) };
            match here {
                Ok(m) if m.ino() == st.ino() && m.dev() == st.dev() => {}
                _ => return Err(seen.unsupported("path no longer leads to the open file")),
            }
        }
    }
    Ok(())
}

impl Kind for Regular {
    fn check(&self, seen: &Seen, f: &FileImage, _table: &FileTable) -> Result<()> {
        rules(seen, FileKind::try_from(f.kind).ok())
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        let kind = FileKind::try_from(f.kind).ok();
        rules(seen, kind)?;
        match kind {
            Some(FileKind::CharDevice) => {
                f.rdev = seen.st.rdev();
                if let Some(name) = unlinked_node(seen) {
                    f.path = name.to_string();
                    let what = format!("unlinked device node of fd {} of pid {}", seen.fd, seen.pid);
                    f.ghost_id = table.ghosts.record(None, seen.st, name, &what)?;
                }
            }
            Some(FileKind::Unlinked) if seen.st.nlink() != 0 => {
                f.path = seen.link.trim_end_matches(" (deleted)").to_string();
                let what = format!("fd {} of pid {}, whose name was removed while others remain", seen.fd, seen.pid);
                let file = reopen_ghost(seen)?;
                f.ghost_id = table.ghosts.record_linked(&file, seen.st, &f.path, &what)?;
            }
            Some(FileKind::Unlinked) => {
                f.path = seen.link.trim_end_matches(" (deleted)").to_string();
                let what = format!("unlinked file of fd {} of pid {}", seen.fd, seen.pid);
                let file = reopen_ghost(seen)?;
                f.ghost_id = table.ghosts.record(Some(&file), seen.st, &f.path, &what)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        match FileKind::try_from(f.kind) {
            Ok(FileKind::CharDevice) => {
                let fd = match f.ghost_id {
                    0 => open_path(&f.path, f.flags)?,
                    // Opened with the others of its node ([`make_ghosts`]).
                    id => cx.ghosts.remove(&f.id).ok_or_else(|| {
                        EngineError::Incompatible(format!("file {} names unlinked device node {id}, which the image lacks", f.id))
                    })?,
                };
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
            // Opened with the others of its inode ([`make_ghosts`]).
            Ok(FileKind::Unlinked) if f.ghost_id != 0 => cx.ghosts.remove(&f.id).ok_or_else(|| {
                EngineError::Incompatible(format!("file {} names unlinked file {}, which the image lacks", f.id, f.ghost_id))
            }),
            Ok(FileKind::Unlinked) => {
                let fd = ghost_v1(f)?;
                seek(&fd, f, &f.path)?;
                Ok(fd)
            }
            _ => {
                let fd = open_path(&f.path, f.flags)?;
                seek(&fd, f, &f.path)?;
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

/// A working directory that is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GoneCwd {
    /// A removed directory, made again as this ghost.
    pub ghost: u64,
    /// The /proc directory of process N, which exited (N as the
    /// process's own pid namespace numbers it).
    pub proc_pid: u32,
}

/// What is gone of `pid`'s working directory (nothing, when it was not
/// removed), recorded in `ghosts` (or only checked, without): a removed
/// directory is made again as a ghost; the /proc directory of an exited
/// process, when that /proc is of the process's own pid namespace, by a
/// helper of that pid at restore.
pub(crate) fn cwd(pid: i32, ghosts: Option<&mut Ghosts>) -> Result<GoneCwd> {
    let link = crate::proc::link(pid, "cwd")?;
    let Some(name) = link.strip_suffix(" (deleted)") else { return Ok(GoneCwd::default()) };
    let path = format!("/proc/{pid}/cwd");
    // Not opened: a dead process's directory in /proc opens no more.
    let st = std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?;
    let unsupported = |why: &str| EngineError::Unsupported { pid, kind: "working directory", what: format!("{link}: {why}") };
    if st.nlink() != 0 {
        // A removed directory has no links left; /proc's directories of
        // exited processes keep theirs.
        let proc_dev = std::fs::metadata(format!("/proc/{pid}/root/proc")).map(|m| m.dev()).ok();
        let n = name.strip_prefix("/proc/").and_then(|n| n.parse::<u32>().ok()).filter(|_| proc_dev == Some(st.dev()));
        let Some(n) = n else { return Err(unsupported("removed, yet with links left")) };
        // That /proc numbers the process as its own pid namespace does.
        let st = crate::proc::Status::read(pid)?;
        let own = st.nums("NSpid").last().copied().unwrap_or(pid as u32);
        let there = std::fs::metadata(format!("/proc/{pid}/root/proc/{own}/ns/pid")).map(|m| (m.dev(), m.ino())).ok();
        let mine = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| (m.dev(), m.ino())).ok();
        if there.is_none() || there != mine {
            return Err(unsupported(
                "the /proc directory of an exited process, in a /proc of another pid namespace than the process's own",
            ));
        }
        return Ok(GoneCwd { ghost: 0, proc_pid: n });
    }
    match ghosts {
        Some(g) => Ok(GoneCwd { ghost: g.record(None, &st, name, &format!("removed working directory of pid {pid}"))?, proc_pid: 0 }),
        None => Ok(GoneCwd::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A sparse file's data goes to its data file extent by extent, holes
    /// left out, and comes back into a new inode at the same offsets, with
    /// the same holes, size and attributes; a corrupted byte is refused.
    #[test]
    fn ghost_data_is_streamed_out_and_back() {
        let dir = std::env::temp_dir().join(format!("lpm-ghost-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&src).unwrap();
        f.set_len(8 * COPY as u64).unwrap();
        let a: Vec<u8> = (0..COPY + 4096).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all_at(&a, 4096).unwrap();
        f.write_all_at(b"end", 8 * COPY as u64 - 3).unwrap();
        let st = f.metadata().unwrap();
        let mut g = Ghosts { dir: Some(dir.clone()), ..Default::default() };
        let id = g.record(Some(&f), &st, "/nowhere/src", "unit").unwrap();
        assert_eq!(g.record(Some(&f), &st, "/nowhere/src", "unit").unwrap(), id, "one ghost per inode");
        let img = g.list[0].clone();
        assert_eq!(img.extents.len(), 2, "{:?}", img.extents);
        let stored = std::fs::metadata(dir.join(&img.data_file)).unwrap().len();
        assert_eq!(stored, img.extents.iter().map(|e| e.len).sum::<u64>(), "only data is stored");

        let out = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("out")).unwrap();
        fill_ghost(&img, &out, &dir, &|s: &str| s.to_string()).unwrap();
        let back = out.metadata().unwrap();
        assert_eq!((back.len(), back.mode(), back.mtime(), back.mtime_nsec()), (st.len(), st.mode(), st.mtime(), st.mtime_nsec()));
        let mut got = vec![0u8; a.len()];
        out.read_exact_at(&mut got, 4096).unwrap();
        assert_eq!(got, a);
        let ext: Vec<(u64, u64)> = super::super::data_extents(&out, back.len(), u64::MAX).unwrap();
        let want: Vec<(u64, u64)> = super::super::data_extents(&f, st.len(), u64::MAX).unwrap();
        assert_eq!(ext, want, "holes stay holes");

        let data = std::fs::OpenOptions::new().write(true).open(dir.join(&img.data_file)).unwrap();
        data.write_all_at(b"X", 10).unwrap();
        let again = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("again")).unwrap();
        let err = fill_ghost(&img, &again, &dir, &|s: &str| s.to_string()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
