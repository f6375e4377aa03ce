//! File locks: flock(2), POSIX record locks (F_SETLK) and open file
//! description locks (F_OFD_SETLK) held by processes of the tree.
//!
//! Dump reads the "lock:" lines of each descriptor's fdinfo, which show the
//! locks taken through that open file whose owner is this process (POSIX)
//! or this open file description (flock, OFD); /proc/locks is read to
//! refuse what fdinfo cannot show: a lock request still waiting, and a
//! POSIX lock of the process reachable through none of its descriptors.
//! Leases and delegations are refused. Restore replays every lock with a
//! non-blocking remote flock or fcntl in the owning puppet once its
//! descriptors are in place; a description shared by several descriptors
//! or processes gets its flock or OFD lock again, which is a no-op.

use std::collections::BTreeSet;

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

/// Parses "N: [->] KIND ADVISORY ACCESS PID MAJ:MIN:INO START END".
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

/// Syscalls a thread can be waiting for a lock in: F_SETLKW, F_OFD_SETLKW
/// and flock without LOCK_NB, interrupted by the freeze.
fn waits_for_lock(r: &Regs) -> bool {
    const ERESTARTSYS: i64 = -512;
    const F_OFD_SETLKW: u64 = 38;
    let interrupted = matches!(r.rax as i64, ERESTARTSYS | -513 | -514);
    interrupted
        && match r.orig_rax as i64 {
            libc::SYS_fcntl => r.rsi == libc::F_SETLKW as u64 || r.rsi == F_OFD_SETLKW,
            libc::SYS_flock => r.rsi & libc::LOCK_NB as u64 == 0,
            _ => false,
        }
}

/// Dumps the locks held through the descriptors `fds` of stopped process
/// `pid`; `threads` are its threads' registers at the freeze.
pub fn dump(pid: i32, fds: &[Fd], threads: &[(i32, Regs)]) -> Result<Vec<FileLock>> {
    let unsupported = |what: String| EngineError::Unsupported { pid, kind: "file lock", what };
    if let Some((tid, _)) = threads.iter().find(|(_, r)| waits_for_lock(r)) {
        return Err(unsupported(format!("thread {tid} is waiting for a lock")));
    }
    let all = std::fs::read_to_string("/proc/locks").map_err(io_err("read /proc/locks"))?;
    let mut posix_held = BTreeSet::new();
    for line in all.lines().filter_map(parse_line).filter(|l| l.pid == pid as i64) {
        if line.waiting {
            return Err(unsupported(format!("waiting {} lock request on {}", line.kind, line.file)));
        }
        if line.kind == "POSIX" {
            posix_held.insert((line.file, line.start, line.end, line.write));
        }
    }
    let mut out = Vec::new();
    let mut posix_seen = BTreeSet::new();
    for fd in fds {
        let info = proc::read(pid, &format!("fdinfo/{}", fd.fd))?;
        for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let line = parse_line(l.trim()).ok_or_else(|| EngineError::Parse { what: format!("lock line {l:?} of fd {}", fd.fd) })?;
            let kind = match line.kind.as_str() {
                "FLOCK" => LockKind::Flock,
                "POSIX" => LockKind::Posix,
                "OFDLCK" => LockKind::Ofd,
                other => return Err(unsupported(format!("{other} on fd {} ({})", fd.fd, line.file))),
            };
            if kind == LockKind::Posix {
                posix_seen.insert((line.file.clone(), line.start, line.end, line.write));
            }
            let (start, len) = if kind == LockKind::Flock { (0, 0) } else { (line.start, line.end.map_or(0, |e| e - line.start + 1)) };
            out.push(FileLock { kind: kind as i32, fd: fd.fd, write: line.write, start, len });
        }
    }
    if let Some((file, start, end, _)) = posix_held.difference(&posix_seen).next() {
        let end = end.map_or("EOF".to_string(), |e| e.to_string());
        return Err(unsupported(format!("POSIX lock {start}-{end} on {file} held through no open descriptor")));
    }
    Ok(out)
}

/// Takes the locks of `p` in its puppet, whose descriptors are in place.
pub fn restore(pid: i32, r: &mut Remote, s: Scratch, p: &Process) -> Result<()> {
    const F_OFD_SETLK: u64 = 37;
    for l in &p.file_locks {
        let kind = LockKind::try_from(l.kind).unwrap_or(LockKind::Invalid);
        let what = || format!("remote {kind:?} lock on fd {} ({}, {}+{})", l.fd, if l.write { "write" } else { "read" }, l.start, l.len);
        match kind {
            LockKind::Flock => {
                let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                r.call(libc::SYS_flock, &[l.fd as u64, op as u64]).step(pid, what)?;
            }
            LockKind::Posix | LockKind::Ofd => {
                // struct flock: l_type, l_whence (shorts), l_start, l_len,
                // l_pid (0 for OFD locks).
                let mut b = [0u8; 32];
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                b[0..2].copy_from_slice(&ty.to_le_bytes());
                b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
                b[8..16].copy_from_slice(&l.start.to_le_bytes());
                b[16..24].copy_from_slice(&l.len.to_le_bytes());
                let a = put(pid, s, 0, &b)?;
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
