//! pidfds of processes of the tree.
//!
//! The target is recorded by its image pid. The restorer opens every file
//! before the first puppet exists, so it holds a stand-in (a pidfd of
//! itself) at first; once all puppets exist, each holder opens the real
//! pidfd with a remote pidfd_open and puts it at the descriptor's number
//! ([`Kind::install`]). Each holder, and each number, gets a description
//! of its own: a pidfd has no state but O_NONBLOCK, which is set as in the
//! image.

use std::os::fd::OwnedFd;

use lpm_image::{Fd, FileImage, PidfdImage, Process};
use lpm_sys::remote::Remote;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use super::eventfd::field;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::proc::Status;
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// pidfd objects.
pub struct Pidfd;

/// PIDFD_THREAD: the pidfd names a thread, not a process.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The process a pidfd names, or why it cannot be kept.
fn read(seen: &Seen, f: &FileImage, table: &FileTable) -> Result<PidfdImage> {
    if f.flags & PIDFD_THREAD != 0 {
        return Err(seen.unsupported("pidfd of a thread (PIDFD_THREAD)"));
    }
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let target: i32 =
        field(&info, "Pid").and_then(|v| v.parse().ok()).ok_or_else(|| seen.unsupported("pidfd without a readable Pid in fdinfo"))?;
    if target <= 0 {
        return Err(seen.unsupported("pidfd of a process that has exited"));
    }
    if !table.tree.contains(&target) {
        return Err(seen.unsupported(format!("pidfd of pid {target}, which is outside the checkpointed tree")));
    }
    // The holder opens it again by the number it sees the target by.
    let level = Status::read(seen.pid)?.nums("NSpid").len().max(1) - 1;
    let ns_pid = Status::read(target)?
        .nums("NSpid")
        .get(level)
        .copied()
        .ok_or_else(|| seen.unsupported(format!("pidfd of pid {target}, which is not in the holder's pid namespace")))?;
    Ok(PidfdImage { pid: target as u32, ns_pid })
}

impl Kind for Pidfd {
    fn check(&self, seen: &Seen, f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, f, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.pidfd = Some(read(seen, f, table)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        // A stand-in until the puppets exist (see the module comment).
        let me = Pid::from_raw(std::process::id() as i32).ok_or_else(|| EngineError::Incompatible("own pid".into()))?;
        pidfd_open(me, PidfdFlags::empty()).map_err(|e| io_err(format!("pidfd_open stand-in for file {}", f.id))(e.into()))
    }

    fn install(&self, pid: i32, r: &mut Remote, _s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        let t = f.pidfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("pidfd file {} has no target", f.id)))?;
        let flags = f.flags & libc::O_NONBLOCK as u32;
        let what = |step: &str| format!("{step} for pidfd {} (of process {}) in pid {}", fd.fd, t.pid, p.pid);
        let new = r.call(libc::SYS_pidfd_open, &[t.ns_pid as u64, flags as u64]).step(pid, || what("remote pidfd_open"))?;
        let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        let moved = r.call(libc::SYS_dup3, &[new, fd.fd as u64, cloexec as u64]).step(pid, || what("remote dup3"));
        r.call(libc::SYS_close, &[new]).step(pid, || what("remote close"))?;
        moved?;
        Ok(())
    }
}
