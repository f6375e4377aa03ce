//! File descriptors: regular files (open or unlinked), character devices,
//! pipes and FIFOs with their buffered data.
//!
//! Dump records each open file description once (kcmp finds descriptors
//! that share one, within or across processes) and each fd by number.
//! Restore opens every description in the restorer before the first puppet
//! is cloned, at numbers above any the image uses; every puppet inherits
//! them all, so sharing (offsets, pipe ends) comes for free, and each
//! puppet only moves its own to their numbers with dup3 and closes the rest.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use lpm_image::{Fd, FileImage, FileKind, PipeImage, TreeImage};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use crate::proc;
use crate::{io_err, EngineError, Result, StepExt};

/// Largest unlinked file whose content is saved in the image.
const MAX_GHOST: u64 = 64 << 20;
/// Character devices (major 1: null, zero, full, random, urandom, ...) that
/// have no state and exist on every host.
const MEM_MAJOR: u32 = 1;

/// Files seen so far during a dump.
#[derive(Default)]
pub struct FileTable {
    /// Open file descriptions.
    pub files: Vec<FileImage>,
    owners: Vec<(i32, i32, u64, u64)>,
    /// Pipes and FIFOs by identity.
    pub pipes: HashMap<u64, PipeImage>,
}

fn read_pipe(pid: i32, fd: i32) -> Result<PipeImage> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(io_err(format!("reopen {path} to read its buffer")))?;
    let capacity = misc::pipe_size(reader.as_raw_fd()).step(pid, || format!("pipe size of fd {fd}"))?;
    let (mut rd, wr) = std::io::pipe().map_err(io_err("pipe"))?;
    misc::set_pipe_size(wr.as_raw_fd(), capacity.max(1 << 20)).step(pid, || "grow scratch pipe".into())?;
    let n = misc::tee(reader.as_raw_fd(), wr.as_raw_fd(), usize::MAX >> 1).step(pid, || format!("tee pipe of fd {fd}"))?;
    drop(wr);
    let mut data = Vec::with_capacity(n);
    rd.read_to_end(&mut data).map_err(io_err("read scratch pipe"))?;
    let st = std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?;
    Ok(PipeImage { id: st.ino(), data, capacity })
}

/// Dumps the file descriptors of stopped process `pid`.
pub fn dump(pid: i32, table: &mut FileTable) -> Result<Vec<Fd>> {
    let dir = format!("/proc/{pid}/fd");
    let mut nums: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(io_err(format!("list {dir}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out = Vec::new();
    for fd in nums {
        let link = proc::link(pid, &format!("fd/{fd}"))?;
        let info = proc::parse_fdinfo(&proc::read(pid, &format!("fdinfo/{fd}"))?);
        let unsupported = |why: &str| EngineError::Unsupported { pid, kind: "file descriptor", what: format!("fd {fd} -> {link}: {why}") };
        let kind_of_anon = link.split(':').next().unwrap_or("").to_string();
        if link.starts_with("socket:") {
            return Err(unsupported("socket"));
        }
        if link.starts_with("anon_inode:") {
            return Err(unsupported(&format!("{} object", link.trim_start_matches("anon_inode:"))));
        }
        let st = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err(format!("stat fd {fd} of pid {pid}")))?;
        let ft = st.file_type();
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let mut f = FileImage { id: 0, flags, pos: info.pos, mode: st.mode(), path: link.clone(), size: st.len(), ..Default::default() };
        if link.starts_with("pipe:") {
            f.kind = FileKind::Pipe as i32;
            f.pipe_id = st.ino();
        } else if !link.starts_with('/') {
            return Err(unsupported(&format!("{kind_of_anon} object")));
        } else if link.starts_with("/memfd:") {
            return Err(unsupported("memfd"));
        } else if ft.is_fifo() {
            f.kind = FileKind::Fifo as i32;
            f.pipe_id = st.ino();
        } else if ft.is_char_device() {
            let major = libc::major(st.rdev());
            if major != MEM_MAJOR {
                return Err(unsupported(&format!("character device {}:{}", major, libc::minor(st.rdev()))));
            }
            f.kind = FileKind::CharDevice as i32;
            f.rdev = st.rdev();
        } else if ft.is_file() || ft.is_dir() {
            if st.nlink() == 0 && link.ends_with(" (deleted)") {
                if !ft.is_file() || st.len() > MAX_GHOST {
                    return Err(unsupported("unlinked and too large to save (or not a regular file)"));
                }
                f.kind = FileKind::Unlinked as i32;
                f.path = link.trim_end_matches(" (deleted)").to_string();
                std::fs::File::open(format!("/proc/{pid}/fd/{fd}"))
                    .and_then(|mut h| h.read_to_end(&mut f.content))
                    .map_err(io_err(format!("read unlinked file of fd {fd} of pid {pid}")))?;
            } else {
                match std::fs::metadata(&link) {
                    Ok(m) if m.ino() == st.ino() && m.dev() == st.dev() => {}
                    _ => return Err(unsupported("path no longer leads to the open file")),
                }
                f.kind = FileKind::Regular as i32;
            }
        } else {
            return Err(unsupported("block device or unknown file type"));
        }
        let key = (st.dev(), st.ino());
        let mut id = None;
        for (i, &(opid, ofd, dev, ino)) in table.owners.iter().enumerate() {
            if (dev, ino) == key
                && table.files[i].flags == f.flags
                && misc::same_file(pid, fd, opid, ofd).step(pid, || format!("kcmp fd {fd}"))?
            {
                id = Some(table.files[i].id);
                break;
            }
        }
        let id = match id {
            Some(id) => id,
            None => {
                f.id = table.files.len() as u32 + 1;
                if f.pipe_id != 0 && !table.pipes.contains_key(&f.pipe_id) {
                    let p = read_pipe(pid, fd)?;
                    table.pipes.insert(f.pipe_id, p);
                }
                table.owners.push((pid, fd, key.0, key.1));
                table.files.push(f);
                table.files.len() as u32
            }
        };
        out.push(Fd { fd: fd as u32, cloexec: info.flags & libc::O_CLOEXEC as u32 != 0, file_id: id });
    }
    Ok(out)
}

/// Files opened by the restorer, at numbers every puppet inherits.
pub struct OpenFiles {
    by_id: HashMap<u32, OwnedFd>,
    _holders: Vec<OwnedFd>,
    /// Every inherited file is at this number or above.
    pub base: i32,
}

fn open_path(path: &str, flags: u32) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((flags as i32 & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)) | libc::O_CLOEXEC)
        .write(flags as i32 & libc::O_ACCMODE != libc::O_RDONLY)
        .read(flags as i32 & libc::O_ACCMODE != libc::O_WRONLY)
        .open(path)
        .map_err(io_err(format!("open {path}")))?;
    Ok(f.into())
}

fn seek(fd: &OwnedFd, pos: u64, what: &str) -> Result<()> {
    // SAFETY: lseek on a descriptor we own.
    if unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) } < 0 {
        return Err(io_err(format!("seek {what} to {pos}"))(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn ghost(f: &FileImage) -> Result<OwnedFd> {
    let path = std::path::Path::new(&f.path);
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    // At its own path when that is free, so the fd's link reads as before
    // ("PATH (deleted)"); beside it otherwise.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp =
        if path.symlink_metadata().is_err() { path.to_path_buf() } else { dir.join(format!(".lpm-ghost-{}-{nanos}", std::process::id())) };
    let mut w = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    let r = w
        .write_all(&f.content)
        .and_then(|_| w.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o7777)))
        .map_err(io_err(format!("write {}", tmp.display())))
        .and_then(|_| open_path(&tmp.to_string_lossy(), f.flags));
    let _ = std::fs::remove_file(&tmp);
    r
}

/// Opens every file description of the image in the restorer.
pub fn open_all(tree: &TreeImage) -> Result<OpenFiles> {
    let max_fd = tree.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd)).max().unwrap_or(0) as i32;
    let base = (max_fd + 1).max(64);
    let limit = misc::raise_nofile();
    let needed = base as u64 + tree.files.len() as u64 + 16;
    if limit < needed {
        return Err(EngineError::Incompatible(format!("the tree needs {needed} open files; RLIMIT_NOFILE here is {limit}")));
    }
    let pipes: HashMap<u64, &PipeImage> = tree.pipes.iter().map(|p| (p.id, p)).collect();
    let mut anon: HashMap<u64, (OwnedFd, OwnedFd)> = HashMap::new();
    let mut holders = Vec::new();
    let mut fifo_held: HashMap<u64, ()> = HashMap::new();
    let mut by_id = HashMap::new();
    for f in &tree.files {
        let kind = FileKind::try_from(f.kind).unwrap_or(FileKind::Invalid);
        let fd: OwnedFd = match kind {
            FileKind::Regular | FileKind::CharDevice => {
                let fd = open_path(&f.path, f.flags)?;
                if kind == FileKind::CharDevice {
                    let st = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io_err(format!("stat {}", f.path)))?;
                    if st.rdev() != f.rdev {
                        return Err(EngineError::Incompatible(format!(
                            "{} is device {:#x} here, {:#x} in the image",
                            f.path,
                            st.rdev(),
                            f.rdev
                        )));
                    }
                } else {
                    seek(&fd, f.pos, &f.path)?;
                }
                fd
            }
            FileKind::Unlinked => {
                let fd = ghost(f)?;
                seek(&fd, f.pos, &f.path)?;
                fd
            }
            FileKind::Pipe => {
                if let std::collections::hash_map::Entry::Vacant(e) = anon.entry(f.pipe_id) {
                    let (r, w) = std::io::pipe().map_err(io_err("pipe"))?;
                    let (r, w): (OwnedFd, OwnedFd) = (r.into(), w.into());
                    if let Some(p) = pipes.get(&f.pipe_id) {
                        fill_pipe(&w, p)?;
                    }
                    e.insert((r, w));
                }
                let (r, w) = &anon[&f.pipe_id];
                let end = if f.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY { r } else { w };
                let fd = end.try_clone().map_err(io_err("dup pipe end"))?;
                misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of pipe {}", f.pipe_id))?;
                fd
            }
            FileKind::Fifo => {
                if fifo_held.insert(f.pipe_id, ()).is_none() {
                    // Held read-write so that no open below blocks, and so
                    // the data written now stays until the tree runs.
                    let h = open_path(&f.path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
                    if let Some(p) = pipes.get(&f.pipe_id) {
                        fill_pipe(&h, p)?;
                    }
                    holders.push(h);
                }
                let fd = open_path(&f.path, f.flags | libc::O_NONBLOCK as u32)?;
                misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of fifo {}", f.path))?;
                fd
            }
            FileKind::Invalid => return Err(EngineError::Incompatible(format!("file {} has an unknown kind {}", f.id, f.kind))),
        };
        let fd = misc::move_fd_above(fd, base).step(0, || format!("move file {} above fd {base}", f.id))?;
        by_id.insert(f.id, fd);
    }
    Ok(OpenFiles { by_id, _holders: holders, base })
}

fn fill_pipe(w: &OwnedFd, p: &PipeImage) -> Result<()> {
    if p.capacity != 0 {
        misc::set_pipe_size(w.as_raw_fd(), p.capacity).step(0, || format!("set capacity of pipe {} to {}", p.id, p.capacity))?;
    }
    // SAFETY: borrowing our own descriptor as a File for one write; the
    // ManuallyDrop keeps it from being closed here.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(w.as_raw_fd()) });
    file.write_all(&p.data).map_err(io_err(format!("refill pipe {}", p.id)))
}

/// Installs a puppet's descriptors: drops everything it inherited below
/// the base, dup3s its files to their numbers, then drops the rest.
pub fn restore(pid: i32, r: &mut Remote, fds: &[Fd], open: &OpenFiles) -> Result<()> {
    const SYS_CLOSE_RANGE: i64 = 436;
    r.call(SYS_CLOSE_RANGE, &[0, open.base as u64 - 1, 0]).step(pid, || "remote close_range below base".into())?;
    for fd in fds {
        let src = open
            .by_id
            .get(&fd.file_id)
            .ok_or_else(|| EngineError::Incompatible(format!("fd {} refers to missing file {}", fd.fd, fd.file_id)))?;
        let flags = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        r.call(libc::SYS_dup3, &[src.as_raw_fd() as u64, fd.fd as u64, flags as u64])
            .step(pid, || format!("remote dup3 to fd {}", fd.fd))?;
    }
    r.call(SYS_CLOSE_RANGE, &[open.base as u64, u32::MAX as u64, 0]).step(pid, || "remote close_range above base".into())?;
    Ok(())
}
