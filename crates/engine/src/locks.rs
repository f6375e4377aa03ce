//! File locks: flock(2), POSIX record locks (F_SETLK) and open file
//! description locks (F_OFD_SETLK) held by processes of the tree.
//!
//! Dump reads the "lock:" lines of each descriptor's fdinfo, which show the
//! locks taken through that open file whose owner is this process (POSIX)
//! or this open file description (flock, OFD). That is every lock the
//! process holds: a POSIX lock goes when any descriptor of its file is
//! closed, so the one it was taken through is still open. A lock request
//! still waiting is refused from the threads' registers (a stop interrupts
//! the wait: the thread sits in F_SETLKW, F_OFD_SETLKW or a blocking flock
//! about to restart). /proc/locks is not read: its first read after a quiet
//! while waits out an RCU grace period (10 to 20 ms), inside a migration's
//! stop. Leases and delegations are refused. Restore replays every lock with a
//! non-blocking remote flock or fcntl in the owning puppet once its
//! descriptors are in place; a description shared by several descriptors
//! or processes gets its flock or OFD lock again, which is a no-op.
//!
//! A dump that leaves the tree frozen for a migration lets go of every
//! lock once the image is complete ([`Released`], kept in the
//! [`crate::Handoff`]), so that the target can take them, and a rollback
//! takes them back.

use std::os::fd::OwnedFd;

use lpm_image::{Fd, FileLock, LockKind, Process};
use lpm_sys::ptrace::Regs;
use lpm_sys::remote::Remote;

use crate::proc;
use crate::task::{put, Scratch};
use crate::{io_err, EngineError, Result, StepExt};

/// One parsed lock line (fdinfo or /proc/locks).
#[derive(Debug, PartialEq)]
struct Line {
    waiting: bool,
    kind: String,
    write: bool,
    pid: i64,
    file: String,
    start: u64,
    /// Inclusive last byte; None for EOF.
    end: Option<u64>,
}

/// Parses "N: [->] KIND ADVISORY ACCESS PID MAJ:MIN:INO START END" (the
/// format of /proc/locks, which fdinfo's lines share).
fn parse_line(l: &str) -> Option<Line> {
    let mut f = l.split_whitespace().skip(1).peekable();
    let waiting = f.next_if_eq(&"->").is_some();
    let kind = f.next()?.to_string();
    let _mode = f.next()?;
    let access = f.next()?;
    let pid = f.next()?.parse().ok()?;
    let file = f.next()?.to_string();
    let start = f.next()?.parse().ok()?;
    let end = match f.next()? {
        "EOF" => None,
        e => Some(e.parse().ok()?),
    };
    Some(Line { waiting, kind, write: access == "WRITE", pid, file, start, end })
}

/// Whether syscall `nr` with second argument `arg1` waits for a lock:
/// F_SETLKW, F_OFD_SETLKW and flock without LOCK_NB.
fn lock_wait_call(nr: i64, arg1: u64) -> bool {
    const F_OFD_SETLKW: u64 = 38;
    match nr {
        libc::SYS_fcntl => arg1 == libc::F_SETLKW as u64 || arg1 == F_OFD_SETLKW,
        libc::SYS_flock => arg1 & libc::LOCK_NB as u64 == 0,
        _ => false,
    }
}

/// Whether a thread stopped with registers `r` was waiting for a lock
/// (the freeze interrupted the call, which is to restart).
fn waits_for_lock(r: &Regs) -> bool {
    const ERESTARTSYS: i64 = -512;
    matches!(r.rax as i64, ERESTARTSYS | -513 | -514) && lock_wait_call(r.orig_rax as i64, r.rsi)
}

/// Whether running thread `tid` of `pid` sleeps in a call that waits for
/// a lock, as /proc/PID/task/TID/syscall shows it ("NR ARG0 ARG1 ...";
/// "running" or "-1 ..." when it is in none).
fn running_waits_for_lock(pid: i32, tid: i32) -> bool {
    let Ok(text) = proc::read(pid, &format!("task/{tid}/syscall")) else { return false };
    let mut w = text.split_whitespace();
    let nr = w.next().and_then(|v| v.parse::<i64>().ok());
    let arg1 = w.nth(1).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
    matches!((nr, arg1), (Some(nr), Some(a)) if lock_wait_call(nr, a))
}

fn unsupported(pid: i32, what: String) -> EngineError {
    EngineError::Unsupported { pid, kind: "file lock", what }
}

/// The refusal of a thread waiting for a lock: the restore cannot make
/// the request again, and the wait ends when the lock is free.
fn waiting(pid: i32, tid: i32) -> EngineError {
    EngineError::Transient { pid, kind: "file lock", what: format!("thread {tid} is waiting for a lock") }
}

/// Dumps the locks held through the descriptors `fds` of stopped process
/// `pid`; `threads` are its threads' registers at the freeze.
pub fn dump(pid: i32, fds: &[Fd], threads: &[(i32, Regs)]) -> Result<Vec<FileLock>> {
    if let Some((tid, _)) = threads.iter().find(|(_, r)| waits_for_lock(r)) {
        return Err(waiting(pid, *tid));
    }
    held(pid, fds, false)
}

/// Applies the dump's rules to the locks of running process `pid`, with
/// descriptors `fds` and threads `tids`: a thread sleeping in a lock
/// request, leases and delegations are refused.
pub fn check(pid: i32, fds: &[Fd], tids: &[i32]) -> Result<()> {
    if let Some(&tid) = tids.iter().find(|&&tid| running_waits_for_lock(pid, tid)) {
        return Err(waiting(pid, tid));
    }
    held(pid, fds, true).map(drop)
}

/// The locks held through `fds` from their fdinfo "lock:" lines; leases
/// and delegations refused. With `running`, a descriptor closed since it
/// was listed holds none.
fn held(pid: i32, fds: &[Fd], running: bool) -> Result<Vec<FileLock>> {
    let mut out = Vec::new();
    for fd in fds {
        let info = match proc::read(pid, &format!("fdinfo/{}", fd.fd)) {
            Ok(info) => info,
            Err(_) if running && proc::link(pid, &format!("fd/{}", fd.fd)).is_err() => continue,
            Err(e) => return Err(e),
        };
        for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let line = parse_line(l.trim()).ok_or_else(|| EngineError::Parse { what: format!("lock line {l:?} of fd {}", fd.fd) })?;
            let kind = match line.kind.as_str() {
                "FLOCK" => LockKind::Flock,
                "POSIX" => LockKind::Posix,
                "OFDLCK" => LockKind::Ofd,
                other => return Err(unsupported(pid, format!("{other} on fd {} ({})", fd.fd, line.file))),
            };
            let (start, len) = if kind == LockKind::Flock { (0, 0) } else { (line.start, line.end.map_or(0, |e| e - line.start + 1)) };
            out.push(FileLock { kind: kind as i32, fd: fd.fd, write: line.write, start, len });
        }
    }
    Ok(out)
}

const F_OFD_SETLK: u64 = 37;

/// struct flock for a record lock: l_type, l_whence (shorts), l_start,
/// l_len, l_pid (0, as F_SETLK and F_OFD_SETLK want it).
fn flock_bytes(ty: i32, start: u64, len: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..2].copy_from_slice(&(ty as i16).to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// Takes the locks of `p` in its puppet, whose descriptors are in place.
pub fn restore(pid: i32, r: &mut Remote, s: Scratch, p: &Process) -> Result<()> {
    for l in &p.file_locks {
        let kind = LockKind::try_from(l.kind).unwrap_or(LockKind::Invalid);
        let what = || format!("remote {kind:?} lock on fd {} ({}, {}+{})", l.fd, if l.write { "write" } else { "read" }, l.start, l.len);
        match kind {
            LockKind::Flock => {
                let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                r.call(libc::SYS_flock, &[l.fd as u64, op as u64]).step(pid, what)?;
            }
            LockKind::Posix | LockKind::Ofd => {
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK };
                let a = put(pid, s, 0, &flock_bytes(ty, l.start, l.len))?;
                let cmd = if kind == LockKind::Ofd { F_OFD_SETLK } else { libc::F_SETLK as u64 };
                r.call(libc::SYS_fcntl, &[l.fd as u64, cmd, a]).step(pid, what)?;
            }
            LockKind::Invalid => {
                return Err(EngineError::Incompatible(format!("pid {}: lock on fd {} of unknown kind {}", p.pid, l.fd, l.kind)))
            }
        }
    }
    Ok(())
}

/// A lock of the tree let go of by a dump that leaves the tree frozen
/// ([`crate::Handoff`]), with what taking it back needs.
pub(crate) struct Released {
    /// The owning process (host pid).
    pub pid: i32,
    /// The descriptor it was taken through.
    pub fd: i32,
    /// The file's path, for messages.
    pub path: String,
    kind: LockKind,
    write: bool,
    start: u64,
    len: u64,
    /// For flock and OFD locks, whose owner is the open file description:
    /// a duplicate of it (pidfd_getfd), through which the lock is let go
    /// of and taken again from outside, even while the tree is frozen.
    /// POSIX locks belong to the process and are set from inside it.
    file: Option<OwnedFd>,
}

impl Released {
    /// Prepares the hand-over of lock `l` of stopped process `pid`,
    /// taken through a descriptor open on `path`; nothing is let go yet.
    pub fn new(pid: i32, l: &FileLock, path: String) -> Result<Released> {
        let kind = LockKind::try_from(l.kind).unwrap_or(LockKind::Invalid);
        let file = match kind {
            LockKind::Flock | LockKind::Ofd => Some(
                lpm_sys::net::steal_fd(pid, l.fd as i32).step(pid, || format!("duplicate fd {} ({path}) to hand its lock over", l.fd))?,
            ),
            LockKind::Posix => None,
            LockKind::Invalid => {
                return Err(EngineError::Incompatible(format!("pid {pid}: lock on fd {} of unknown kind {}", l.fd, l.kind)))
            }
        };
        Ok(Released { pid, fd: l.fd as i32, path, kind, write: l.write, start: l.start, len: l.len, file })
    }

    /// Whether it is set from inside its process (a POSIX lock).
    pub fn inside(&self) -> bool {
        self.kind == LockKind::Posix
    }

    /// The lock, its range, its file and its owner, for messages.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            LockKind::Flock => "flock",
            LockKind::Posix => "POSIX",
            LockKind::Ofd => "OFD",
            LockKind::Invalid => "unknown",
        };
        let range = match (self.kind, self.len) {
            (LockKind::Flock, _) => "whole file".to_string(),
            (_, 0) => format!("bytes {}-EOF", self.start),
            (_, n) => format!("bytes {}-{}", self.start, self.start + n - 1),
        };
        let access = if self.write { "write" } else { "read" };
        format!("{kind} {access} lock ({range}) on {} (pid {} fd {})", self.path, self.pid, self.fd)
    }

    /// Lets go of the lock; `inside` is its process, seized, for a POSIX
    /// lock.
    pub fn unlock(&self, inside: Option<(&mut Remote, Scratch)>) -> Result<()> {
        self.set(false, inside).map(|_| ())
    }

    /// Takes the lock again without waiting; false while another owner
    /// holds a conflicting one.
    pub fn take(&self, inside: Option<(&mut Remote, Scratch)>) -> Result<bool> {
        self.set(true, inside)
    }

    fn set(&self, take: bool, inside: Option<(&mut Remote, Scratch)>) -> Result<bool> {
        let pid = self.pid;
        let op = if take { "take" } else { "let go of" };
        let what = || format!("{op} {}", self.describe());
        let ty = match (take, self.write) {
            (false, _) => libc::F_UNLCK,
            (true, true) => libc::F_WRLCK,
            (true, false) => libc::F_RDLCK,
        };
        let busy = |e: i32| take && (e == libc::EAGAIN || e == libc::EACCES);
        match (self.kind, &self.file) {
            (LockKind::Flock, Some(f)) => {
                use rustix::fs::FlockOperation as F;
                let op = match (take, self.write) {
                    (false, _) => F::Unlock,
                    (true, true) => F::NonBlockingLockExclusive,
                    (true, false) => F::NonBlockingLockShared,
                };
                match rustix::fs::flock(f, op) {
                    Ok(()) => Ok(true),
                    Err(e) if busy(e.raw_os_error()) => Ok(false),
                    Err(e) => Err(io_err(what())(e.into())),
                }
            }
            (LockKind::Ofd, Some(f)) => {
                let fl = libc::flock {
                    l_type: ty as i16,
                    l_whence: libc::SEEK_SET as i16,
                    l_start: self.start as i64,
                    l_len: self.len as i64,
                    l_pid: 0,
                };
                match nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)) {
                    Ok(_) => Ok(true),
                    Err(e) if busy(e as i32) => Ok(false),
                    Err(e) => Err(io_err(what())(e.into())),
                }
            }
            (LockKind::Posix, _) => {
                let Some((r, s)) = inside else {
                    return Err(EngineError::BadTarget { pid, why: format!("cannot {op} {}: the process is not seized", self.describe()) });
                };
                let a = put(pid, s, 0, &flock_bytes(ty, self.start, self.len))?;
                match r.raw(libc::SYS_fcntl, &[self.fd as u64, libc::F_SETLK as u64, a]).step(pid, what)? {
                    e if e < 0 && busy(-e as i32) => Ok(false),
                    e if e < 0 => Err(EngineError::Step {
                        pid,
                        step: what(),
                        source: lpm_sys::Error::Remote { tid: r.tid(), nr: libc::SYS_fcntl, errno: -e as i32 },
                    }),
                    _ => Ok(true),
                }
            }
            _ => Err(EngineError::Incompatible(format!("cannot {op} {}", self.describe()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lock_lines() {
        let l = parse_line("1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 99").expect("parses");
        assert_eq!(
            l,
            Line { waiting: false, kind: "POSIX".into(), write: true, pid: 1234, file: "08:01:5678".into(), start: 0, end: Some(99) }
        );
        let l = parse_line("2: -> FLOCK  ADVISORY  READ  77 00:2a:9 0 EOF").expect("parses");
        assert!(l.waiting && !l.write && l.end.is_none() && l.kind == "FLOCK");
        let l = parse_line("3: OFDLCK ADVISORY  READ  -1 00:2a:9 50 EOF").expect("parses");
        assert_eq!((l.pid, l.start), (-1, 50));
        assert!(parse_line("4: POSIX").is_none());
    }
}
