//! Pipes and FIFOs with the data buffered in them.
//!
//! The buffer is read at dump with tee(2) from a second reader, so it is
//! not consumed; restore creates the pipe (or opens the FIFO, holding it
//! read-write so no open blocks) in the restorer and writes the data back.
//!
//! Each open file description of a pipe keeps its own status flags
//! (O_NONBLOCK, ...), so each is restored as a description of its own:
//! the two that pipe(2) made are the only ones without O_LARGEFILE (every
//! open(2) of a 64-bit process sets it, as a reopen through /proc/PID/fd
//! does); they are the ends of the new pipe, and any other description,
//! read-only, write-only or read-write, is opened again through
//! /proc/self/fd of an end.
//!
//! A dump that leaves the tree frozen for a migration then empties its
//! FIFOs, since the target refills the same FIFO on shared storage, and
//! a rollback puts the bytes back (`crate::handoff`). Anonymous pipes are
//! private to the tree and keep their data.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use lpm_image::{Fd, FileImage, FileKind, PipeImage, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, EngineError, Result, StepExt};

/// Pipes and FIFOs.
pub struct Pipe;

/// Reads the buffer of the pipe or FIFO of `seen` without consuming it.
fn read_pipe(seen: &Seen) -> Result<PipeImage> {
    let (pid, fd) = (seen.pid, seen.fd);
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
    // One read takes every byte a pipe holds, unless a buffer written in
    // packet mode (O_DIRECT) ends it: each such write is a message of its
    // own, a boundary that plain bytes written back would lose.
    let mut data = vec![0u8; n];
    let got = if n == 0 { 0 } else { rd.read(&mut data).map_err(io_err("read scratch pipe"))? };
    if got < n {
        return Err(seen.unsupported(format!("pipe holding data written in packet mode (O_DIRECT): {got} of {n} bytes end a message")));
    }
    let st = std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?;
    Ok(PipeImage { id: st.ino(), data, capacity })
}

/// Whether a pipe's description is one of the two pipe(2) made (see the
/// module's doc).
fn made_by_pipe(f: &FileImage) -> bool {
    let access = f.flags as i32 & libc::O_ACCMODE;
    f.flags & super::O_LARGEFILE == 0 && (access == libc::O_RDONLY || access == libc::O_WRONLY)
}

fn fill_pipe(w: &OwnedFd, p: &PipeImage) -> Result<()> {
    if p.capacity != 0 {
        misc::set_pipe_size(w.as_raw_fd(), p.capacity).step(0, || format!("set capacity of pipe {} to {}", p.id, p.capacity))?;
    }
    let mut file = std::fs::File::from(w.try_clone().map_err(io_err("dup pipe"))?);
    file.write_all(&p.data).map_err(io_err(format!("refill pipe {}", p.id)))
}

impl Kind for Pipe {
    fn check(&self, _seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        // Every pipe and FIFO is supported, whatever it holds.
        Ok(())
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.pipe_id = seen.st.ino();
        if let Some(name) = super::regular::unlinked_node(seen).filter(|_| f.kind == FileKind::Fifo as i32) {
            // An unlinked FIFO: the node is made again as a ghost
            // (regular.rs), its descriptions opened through it here.
            f.path = name.to_string();
            let what = format!("unlinked FIFO of fd {} of pid {}", seen.fd, seen.pid);
            f.ghost_id = table.ghosts.record(None, seen.st, name, &what)?;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = table.pipes.entry(f.pipe_id) {
            e.insert(read_pipe(seen)?);
        }
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        use std::collections::hash_map::Entry;
        let data = cx.tree.pipes.iter().find(|p| p.id == f.pipe_id);
        let fifo = f.kind == FileKind::Fifo as i32;
        let path = match f.ghost_id {
            0 => f.path.clone(),
            id => format!(
                "/proc/self/fd/{}",
                cx.ghost_fds
                    .get(&id)
                    .ok_or_else(|| EngineError::Incompatible(format!("file {} names unlinked FIFO {id}, which the image lacks", f.id)))?
            ),
        };
        if let Entry::Vacant(e) = cx.pipes.entry(f.pipe_id) {
            let (r, w): (OwnedFd, OwnedFd) = if fifo {
                // Held read-write so that no open below blocks, and so the
                // data written now stays until the tree runs.
                let h = open_path(&path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
                (h.try_clone().map_err(io_err("dup fifo"))?, h)
            } else {
                let (r, w) = std::io::pipe().map_err(io_err("pipe"))?;
                (r.into(), w.into())
            };
            if let Some(p) = data {
                fill_pipe(&w, p)?;
            }
            e.insert((r, w));
        }
        if fifo {
            let fd = open_path(&path, f.flags | libc::O_NONBLOCK as u32)?;
            misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of fifo {}", f.path))?;
            return Ok(fd);
        }
        let (r, w) = &cx.pipes[&f.pipe_id];
        let access = f.flags as i32 & libc::O_ACCMODE;
        let end = if access == libc::O_RDONLY { r } else { w };
        let fd = if made_by_pipe(f) {
            if cx
                .tree
                .files
                .iter()
                .filter(|o| o.pipe_id == f.pipe_id && o.kind == f.kind && made_by_pipe(o) && o.flags as i32 & libc::O_ACCMODE == access)
                .count()
                > 1
            {
                return Err(EngineError::Incompatible(format!("pipe {} has two descriptions of one end made by pipe(2)", f.pipe_id)));
            }
            end.try_clone().map_err(io_err("dup pipe end"))?
        } else {
            // Non-blocking: the restorer holds both ends, but an open of
            // a pipe must never wait for a peer.
            open_path(&format!("/proc/self/fd/{}", end.as_raw_fd()), f.flags | libc::O_NONBLOCK as u32)?
        };
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of pipe {}", f.pipe_id))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // The pipe and its data exist already; nothing is per puppet.
        Ok(())
    }
}
