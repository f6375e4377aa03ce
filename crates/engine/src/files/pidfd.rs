//! pidfds of processes of the tree, and of processes that have exited
//! and been reaped.
//!
//! The target is recorded by its image pid. The restorer opens every file
//! before the first puppet exists, so it holds a stand-in (a pidfd of
//! itself) at first; once all puppets exist, each holder opens the real
//! pidfd with a remote pidfd_open and puts it at the descriptor's number
//! ([`Kind::install`]). Each holder, and each number, gets a description
//! of its own: a pidfd has no state but O_NONBLOCK, which is set as in the
//! image.
//!
//! A pidfd of a process that has been reaped (fdinfo shows Pid -1) keeps
//! only the wait status of its process, which PIDFD_GET_INFO reads. Each
//! holder makes such a pidfd itself ([`install_reaped`]): a helper it
//! forks, in its own pid namespace (a pidfd of a process outside it would
//! make pidfd_send_signal answer EINVAL, not ESRCH), ends with that
//! status and is reaped; the pidfd then polls readable and hung up,
//! waitid on it answers ECHILD and pidfd_send_signal ESRCH, as the
//! original's did. A status with the core flag makes the helper write a
//! core of a few pages, removed at once, as a zombie's puppet does
//! (`zombie::CoreDir`).

use std::os::fd::{AsFd, OwnedFd};

use lpm_image::{Fd, FileImage, PidfdImage, Process};
use lpm_sys::ptrace;
use lpm_sys::puppet::CloneArgs;
use lpm_sys::remote::Remote;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use super::eventfd::field;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::proc::Status;
use crate::task::{put, Scratch};
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
    if target == -1 {
        return reaped(seen);
    }
    if target <= 0 {
        return Err(seen.unsupported(format!("pidfd of a process outside the holder's pid namespace (Pid {target})")));
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
    Ok(PidfdImage { pid: target as u32, ns_pid, reaped_status: None })
}

/// A pidfd whose process has exited and been reaped (fdinfo shows Pid
/// -1): its wait status, which is all the kernel still tells of it.
fn reaped(seen: &Seen) -> Result<PidfdImage> {
    let copy = lpm_sys::net::steal_fd(seen.pid, seen.fd).step(seen.pid, || format!("take pidfd {} to read it", seen.fd))?;
    let info = lpm_sys::pidfd::info(copy.as_fd(), lpm_sys::pidfd::INFO_EXIT)
        .map_err(|e| seen.unsupported(format!("pidfd of a process that has exited, whose end this kernel does not tell ({e})")))?;
    if info.mask & lpm_sys::pidfd::INFO_EXIT == 0 {
        return Err(seen.unsupported("pidfd of a process that has exited, whose wait status the kernel does not tell"));
    }
    Ok(PidfdImage { pid: 0, ns_pid: 0, reaped_status: Some(info.exit_code) })
}

/// Where in the scratch area the helper's pidfd number and wait
/// information land (clone3 and set_tid use the first 600 bytes).
const PIDFD_SLOT: u64 = 1024;
const SIGINFO_SLOT: u64 = 1088;

/// Puts at `fd` a pidfd of a process that ended with wait status `status`
/// and was reaped: the holder forks a helper (clone3 with CLONE_PIDFD and
/// no exit signal, so its parent's SIGCHLD state is untouched) in its own
/// pid namespace, the helper ends so (no core: it is made undumpable
/// first), and the holder reaps it through the pidfd, which it keeps.
#[allow(clippy::too_many_arguments)]
pub(super) fn install_reaped(
    pid: i32,
    r: &mut Remote,
    s: Scratch,
    fd: &Fd,
    f: &FileImage,
    p: &Process,
    status: i32,
    core: Option<&crate::zombie::CoreDir>,
) -> Result<()> {
    let what = |step: &str| format!("{step} for pidfd {} (of a process reaped with {status:#x}) in pid {}", fd.fd, p.pid);
    let slot = put(pid, s, PIDFD_SLOT, &(-1i32).to_le_bytes())?;
    let args = CloneArgs { flags: libc::CLONE_PIDFD as u64, pidfd: slot, exit_signal: 0, ..Default::default() };
    let helper = crate::restore::remote_clone3(r, s, args, &[], libc::PTRACE_EVENT_CLONE)?;
    let ended = ptrace::get_regs(helper)
        .step(helper, || what("read helper registers"))
        .and_then(|base| crate::zombie::end_helper(r.sibling(helper, base), s, base, status, core));
    if let Err(e) = ended {
        lpm_sys::misc::kill(helper, libc::SIGKILL);
        return Err(e);
    }
    let mut b = [0u8; 4];
    ptrace::read_mem(pid, slot, &mut b).step(pid, || what("read the helper's pidfd number"))?;
    let new = i32::from_le_bytes(b) as u64;
    let info = s.addr + SIGINFO_SLOT;
    // P_PIDFD; __WALL: its exit signal is none.
    r.call(libc::SYS_waitid, &[3, new, info, (libc::WEXITED | libc::__WALL) as u64, 0]).step(pid, || what("remote waitid"))?;
    let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
    let moved = r.call(libc::SYS_dup3, &[new, fd.fd as u64, cloexec as u64]).step(pid, || what("remote dup3"));
    r.call(libc::SYS_close, &[new]).step(pid, || what("remote close"))?;
    moved?;
    let flags = f.flags & libc::O_NONBLOCK as u32;
    r.call(libc::SYS_fcntl, &[fd.fd as u64, libc::F_SETFL as u64, flags as u64]).step(pid, || what("remote fcntl F_SETFL"))?;
    Ok(())
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
        if t.reaped_status.is_some() {
            return Err(EngineError::Incompatible(format!(
                "pidfd file {}: a reaped process's pidfd is installed with the core directory",
                f.id
            )));
        }
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
