//! Pseudo-terminal pairs held inside the tree: the master (/dev/ptmx) and
//! its slaves (/dev/pts/N).
//!
//! Dump reads the pty's state through a copy of the master (pidfd_getfd):
//! termios, window size, packet mode, lock, the owner, group and mode of
//! the slave's device node, and the session whose
//! controlling terminal it is with its foreground group; each process
//! records whether the pty is its own controlling terminal ([`ctty`]).
//! Data buffered in either direction cannot be read without consuming it:
//! refused by name, as is a slave whose master is outside the tree (a
//! user's terminal). Restore opens a new /dev/ptmx in the restorer (its
//! index is the host devpts' choice and generally differs), sets the state
//! and opens the slaves with TIOCGPTPEER. A session leader takes its
//! terminal (TIOCSCTTY) as it is born, before its children, which inherit
//! it as the kernel gives it at fork; once every group exists the leader
//! sets the foreground group, and a process that had let the terminal go
//! (TIOCNOTTY) lets it go again.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use lpm_image::{Fd, FileImage, Process, TreeImage, TtyImage};
use lpm_sys::misc::{self, PtyState};
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, OpenFiles, Seen};
use crate::task::{put, Scratch};
use crate::{proc, EngineError, Result, StepExt};

/// Pseudo-terminal ends.
pub struct Tty;

/// The device of the pty master multiplexer (/dev/ptmx).
const PTMX: (u32, u32) = (5, 2);

/// Whether a character device is a pty end this module handles.
pub(super) fn is_pty(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (major, minor) == PTMX || (136..=143).contains(&major)
}

/// Whether `rdev` is /dev/tty, which stands for the opener's controlling
/// terminal.
pub(super) fn is_dev_tty(rdev: u64) -> bool {
    (libc::major(rdev), libc::minor(rdev)) == (5, 0)
}

/// The pty index of slave device `rdev`.
fn slave_index(rdev: u64) -> u32 {
    (libc::major(rdev) - 136) * 256 + libc::minor(rdev)
}

/// A master in the tree with pty `index`: (pid, fd).
fn find_master(tree: &[i32], index: u32) -> Option<(i32, i32)> {
    for &pid in tree {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(st) = std::fs::metadata(e.path()) else { continue };
            if (libc::major(st.rdev()), libc::minor(st.rdev())) != PTMX || !st.file_type().is_char_device() {
                continue;
            }
            let info = proc::read(pid, &format!("fdinfo/{fd}")).unwrap_or_default();
            if super::eventfd::field(&info, "tty-index").and_then(|v| v.parse::<u32>().ok()) == Some(index) {
                return Some((pid, fd));
            }
        }
    }
    None
}

/// A copy of fd `fd` of `pid` (the same open file).
fn steal(seen: &Seen, pid: i32, fd: i32) -> Result<OwnedFd> {
    lpm_sys::net::steal_fd(pid, fd).step(seen.pid, || format!("pidfd_getfd fd {fd} of pid {pid}"))
}

/// The session whose controlling terminal the pty is and its foreground
/// group as the leader sees it, read through the master `m`. Every
/// process of the session may have it as its own ([`ctty`]): the restore
/// gives it to the leader as the leader is born, before its children.
fn session(seen: &Seen, m: &OwnedFd, index: u32, table: &FileTable) -> Result<(u32, u32)> {
    let Some((sid, pgrp)) = misc::tty_session(m.as_raw_fd()).step(seen.pid, || "read the pty's session".into())? else {
        return Ok((0, 0));
    };
    if !table.tree.contains(&sid) {
        return Err(seen.unsupported(format!("pseudo-terminal {index} is the controlling terminal of session {sid}, outside the tree")));
    }
    if !table.tree.contains(&pgrp) {
        return Err(seen.unsupported(format!("foreground group {pgrp} of pseudo-terminal {index} has no leader in the tree")));
    }
    let depth = proc::Status::read(sid)?.nums("NSpid").len().max(1);
    let view = proc::Status::read(pgrp)
        .ok()
        .and_then(|s| s.nums("NSpid").get(depth - 1).copied())
        .ok_or_else(|| seen.unsupported(format!("foreground group {pgrp} of pseudo-terminal {index} has no leader in the tree")))?;
    Ok((sid as u32, view))
}

/// The pty of the tree that is `pid`'s controlling terminal (its index),
/// when `pid`'s session is the tree's; None when it has none, or when its
/// session leader is outside the tree (the restored process then joins
/// the restorer's session, and has its terminal). Refused: a controlling
/// terminal that is not a pty whose master the tree holds.
pub(crate) fn ctty(pid: i32, tree: &[i32]) -> Result<Option<u32>> {
    let stat = proc::Stat::read(pid)?;
    let (nr, sid) = (stat.num(7), stat.num(6) as i32);
    if nr == 0 || !tree.contains(&sid) {
        return Ok(None);
    }
    // new_encode_dev: minor's low byte, major, then minor's high bits.
    let (major, minor) = ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00));
    let refuse = |what: String| EngineError::Unsupported { pid, kind: "controlling terminal", what };
    if !(136..=143).contains(&major) {
        return Err(refuse(format!("device {major}:{minor} is not a pseudo-terminal (only ptys are restored)")));
    }
    let index = (major as u32 - 136) * 256 + minor as u32;
    if find_master(tree, index).is_none() {
        return Err(refuse(format!("/dev/pts/{index}, whose master is outside the tree (a user's terminal)")));
    }
    Ok(Some(index))
}

/// Bytes a pty may hold pending in one direction and still be kept: what
/// fits its line discipline's buffer (4 KiB), so that data put back is
/// all processed under the termios set for it.
const MAX_PENDING: usize = 4000;

/// The termios `t` with output processing off (OPOST), or with input
/// processing, echo and signals off: data put back passes unchanged.
fn passthrough(t: &[u8], output: bool) -> Vec<u8> {
    let mut t = t.to_vec();
    let mut flag = |at: usize, clear: u32| {
        let v = u32::from_ne_bytes(t[at..at + 4].try_into().expect("termios flag")) & !clear;
        t[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    };
    if output {
        flag(4, libc::OPOST);
    } else {
        flag(0, u32::MAX);
        flag(12, libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN | libc::ICANON);
    }
    t
}

/// Puts data back into pty `m` (a master) through slave `s`: `output` as
/// if the slave side had written it, `input` as if written to the master,
/// each under a termios that passes it unchanged, then `state` again.
fn put_back(m: &OwnedFd, s: &OwnedFd, state: &PtyState, output: &[u8], input: &[u8]) -> lpm_sys::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let with = |termios: Vec<u8>| PtyState { termios, ..state.clone() };
    if !output.is_empty() {
        misc::pty_set(m.as_raw_fd(), &with(passthrough(&state.termios, true)))?;
        misc::tty_inject(s.as_raw_fd(), m.as_raw_fd(), output, deadline)?;
    }
    if !input.is_empty() {
        misc::pty_set(m.as_raw_fd(), &with(passthrough(&state.termios, false)))?;
        misc::tty_inject(m.as_raw_fd(), s.as_raw_fd(), input, deadline)?;
    }
    misc::pty_set(m.as_raw_fd(), state)
}

/// A slave of master `m` (TIOCGPTPEER) opened with `flags`, whatever the
/// slave's lock. TIOCGPTPEER keeps O_CLOEXEC among the file's flags, where
/// fdinfo shows it whatever the descriptor's: only our own pass it.
fn own_slave(m: &OwnedFd, flags: i32) -> lpm_sys::Result<OwnedFd> {
    let locked = misc::pty_get(m.as_raw_fd())?.locked;
    misc::pty_lock(m.as_raw_fd(), false)?;
    let s = misc::pty_peer(m.as_raw_fd(), flags | libc::O_NOCTTY);
    misc::pty_lock(m.as_raw_fd(), locked)?;
    s
}

/// The data pending in the pty of master `m` both ways, or why it cannot
/// be kept. With `take` (the tree is stopped for its dump) it is read out
/// and put straight back, so the tree finds its pty as it was whatever
/// happens to the dump.
fn pending(seen: &Seen, m: &OwnedFd, index: u32, st: &PtyState, take: bool) -> Result<(Vec<u8>, Vec<u8>)> {
    let s = own_slave(m, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC).step(seen.pid, || format!("open a slave of pty {index}"))?;
    let (out, inq) = (
        misc::tty_queues(m.as_raw_fd()).step(seen.pid, || format!("read the queue of pty {index}'s master"))?.0,
        misc::tty_queues(s.as_raw_fd()).step(seen.pid, || format!("read the queue of pty {index}'s slave"))?.0,
    );
    let lflag = st.termios.get(12..16).map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    if inq > 0 && lflag & libc::ICANON != 0 {
        // A partial line is invisible until its end, and lines read back
        // and put back would be one line: neither could be kept exactly.
        return Err(seen.transient(format!("pseudo-terminal {index} with typed input not yet read ({inq} bytes, canonical mode)")));
    }
    if out > 0 && st.packet {
        return Err(seen.transient(format!("pseudo-terminal {index} in packet mode with output pending ({out} bytes)")));
    }
    if !take {
        return Ok((Vec::new(), Vec::new()));
    }
    let output = misc::tty_drain(m.as_raw_fd()).step(seen.pid, || format!("read the output pending in pty {index}"))?;
    let input = misc::tty_drain(s.as_raw_fd()).step(seen.pid, || format!("read the input pending in pty {index}"))?;
    if output.is_empty() && input.is_empty() {
        return Ok((output, input));
    }
    put_back(m, &s, st, &output, &input).step(seen.pid, || format!("put the data pending in pty {index} back"))?;
    if output.len() > MAX_PENDING || input.len() > MAX_PENDING {
        return Err(seen.transient(format!(
            "pseudo-terminal {index} with more than {MAX_PENDING} bytes pending ({} to the master, {} to the slave)",
            output.len(),
            input.len()
        )));
    }
    Ok((output, input))
}

/// The slave's device node of master `m`, through an O_PATH descriptor
/// (TIOCGPTPEER): it opens nothing, so it works on a locked pty and
/// leaves the pty's open count alone.
fn slave_node(m: &OwnedFd) -> lpm_sys::Result<std::fs::Metadata> {
    let peer = misc::pty_peer(m.as_raw_fd(), libc::O_PATH | libc::O_CLOEXEC)?;
    std::fs::metadata(format!("/proc/self/fd/{}", peer.as_raw_fd())).map_err(|e| lpm_sys::Error::sys("stat pty slave", 0, e))
}

/// Gives the slave's device node of new master `m` the recorded owner,
/// group and mode (devpts made it ours, with its mount's mode).
fn set_slave_node(m: &OwnedFd, t: &TtyImage) -> Result<()> {
    if t.slave_mode == 0 {
        return Ok(());
    }
    let peer = misc::pty_peer(m.as_raw_fd(), libc::O_PATH | libc::O_CLOEXEC).step(0, || format!("open the slave of pty {}", t.index))?;
    let path = format!("/proc/self/fd/{}", peer.as_raw_fd());
    let what = || format!("give the slave of pty {} owner {}:{} mode {:o}", t.index, t.slave_uid, t.slave_gid, t.slave_mode);
    std::os::unix::fs::chown(&path, Some(t.slave_uid), Some(t.slave_gid)).map_err(crate::io_err(what()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(t.slave_mode)).map_err(crate::io_err(what()))
}

/// The recorded state of `t` for the ioctls.
fn state(t: &TtyImage) -> PtyState {
    let w = |i: usize| t.winsize.get(i).copied().unwrap_or(0) as u16;
    PtyState { termios: t.termios.clone(), winsize: [w(0), w(1), w(2), w(3)], packet: t.packet, locked: t.locked }
}

/// The restorer's master of recorded pty `index`, created with its state
/// on first use.
fn master<'a>(index: u32, cx: &'a mut OpenCx) -> Result<&'a OwnedFd> {
    if !cx.ptys.contains_key(&index) {
        let (f, t) = cx
            .tree
            .files
            .iter()
            .find_map(|f| f.tty.as_ref().filter(|t| t.master && t.index == index).map(|t| (f, t)))
            .ok_or_else(|| EngineError::Incompatible(format!("pseudo-terminal {index} has no master in the image")))?;
        let m = open_path("/dev/ptmx", f.flags | libc::O_NOCTTY as u32)?;
        misc::pty_lock(m.as_raw_fd(), false).step(0, || format!("unlock new pty for {index}"))?;
        misc::pty_set(m.as_raw_fd(), &state(t)).step(0, || format!("set the state of pty {index}"))?;
        set_slave_node(&m, t)?;
        if !t.pending_output.is_empty() || !t.pending_input.is_empty() {
            // Our slave stays open until the tree's are: the last slave's
            // close would mark the pair hung up.
            let s = misc::pty_peer(m.as_raw_fd(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .step(0, || format!("open a slave of pty {index}"))?;
            put_back(&m, &s, &state(t), &t.pending_output, &t.pending_input)
                .step(0, || format!("put the data pending in pty {index} back"))?;
            cx.holders.push(s);
        }
        misc::pty_lock(m.as_raw_fd(), t.locked).step(0, || format!("lock pty {index}"))?;
        cx.ptys.insert(index, m);
    }
    Ok(&cx.ptys[&index])
}

/// A slave of recorded pty `index`, opened in the restorer without making
/// it the restorer's terminal, for the session leader to take.
pub(super) fn open_ctty(index: u32, cx: &mut OpenCx) -> Result<OwnedFd> {
    own_slave(master(index, cx)?, libc::O_RDWR | libc::O_CLOEXEC).step(0, || format!("open the slave of pty {index} for its session"))
}

/// Recorded pty index to the index of the pty made for it here.
pub(super) fn indices(cx: &OpenCx) -> Result<HashMap<u32, u32>> {
    cx.ptys
        .iter()
        .map(|(&index, m)| Ok((index, misc::pty_index(m.as_raw_fd()).step(0, || format!("TIOCGPTN of the pty made for {index}"))?)))
        .collect()
}

/// Gives newborn session leader `p` (puppet `host`, still holding the
/// restorer's descriptors) its controlling terminal, before it has
/// children: they inherit it, as they had it.
pub(crate) fn give_ctty(host: i32, r: &mut Remote, p: &Process, open: &OpenFiles) -> Result<()> {
    let Some(index) = p.ctty.filter(|_| p.sid == p.pid) else { return Ok(()) };
    let fd = ctty_fd(open, index)?;
    r.call(libc::SYS_ioctl, &[fd, libc::TIOCSCTTY, 0]).step(host, || format!("remote TIOCSCTTY of pty {index} in pid {}", p.pid))?;
    Ok(())
}

/// Once every process group exists: a session leader sets its terminal's
/// foreground group, and a process that had let its inherited terminal go
/// (TIOCNOTTY) lets it go again. `inherited` is the terminal `p` got from
/// its parent at birth.
pub(crate) fn settle_ctty(
    host: i32,
    r: &mut Remote,
    s: Scratch,
    p: &Process,
    inherited: Option<u32>,
    tree: &TreeImage,
    open: &OpenFiles,
) -> Result<()> {
    if p.sid == p.pid {
        let Some(index) = p.ctty else { return Ok(()) };
        let fg = tree
            .files
            .iter()
            .filter_map(|f| f.tty.as_ref())
            .find(|t| t.index == index && t.session == p.pid && t.fg_pgrp != 0)
            .map(|t| t.fg_pgrp);
        if let Some(fg) = fg {
            let a = put(host, s, 0, &(fg as i32).to_ne_bytes())?;
            r.call(libc::SYS_ioctl, &[ctty_fd(open, index)?, libc::TIOCSPGRP, a])
                .step(host, || format!("remote TIOCSPGRP({fg}) of pty {index} in pid {}", p.pid))?;
        }
        return Ok(());
    }
    match (inherited, p.ctty) {
        (a, b) if a == b => Ok(()),
        (Some(index), _) if p.ctty.is_none() => {
            r.call(libc::SYS_ioctl, &[ctty_fd(open, index)?, libc::TIOCNOTTY, 0])
                .step(host, || format!("remote TIOCNOTTY of pty {index} in pid {}", p.pid))?;
            Ok(())
        }
        (_, ctty) => Err(EngineError::Incompatible(format!(
            "process {} had pty {ctty:?} as its controlling terminal but is born with pty {inherited:?} here",
            p.pid
        ))),
    }
}

/// The restorer's number of the slave opened for pty `index`'s session.
fn ctty_fd(open: &OpenFiles, index: u32) -> Result<u64> {
    open.ctty.get(&index).map(|f| f.as_raw_fd() as u64).ok_or_else(|| {
        EngineError::Incompatible(format!("pty {index} is a controlling terminal but no session leader of the image has it"))
    })
}

/// The state of a pty end, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable, take: bool) -> Result<TtyImage> {
    let rdev = seen.st.rdev();
    if is_dev_tty(rdev) {
        return dev_tty(seen, table);
    }
    let t = if (libc::major(rdev), libc::minor(rdev)) == PTMX {
        let m = steal(seen, seen.pid, seen.fd)?;
        let index = misc::pty_index(m.as_raw_fd()).step(seen.pid, || format!("TIOCGPTN on fd {}", seen.fd))?;
        let s = misc::pty_get(m.as_raw_fd()).step(seen.pid, || format!("read the state of pty {index}"))?;
        let (pending_output, pending_input) = pending(seen, &m, index, &s, take)?;
        let (session, fg_pgrp) = session(seen, &m, index, table)?;
        let node = slave_node(&m).step(seen.pid, || format!("stat the slave of pty {index}"))?;
        TtyImage {
            index,
            master: true,
            termios: s.termios,
            winsize: s.winsize.iter().map(|&v| v as u32).collect(),
            packet: s.packet,
            locked: s.locked,
            session,
            fg_pgrp,
            pending_output,
            pending_input,
            slave_uid: node.uid(),
            slave_gid: node.gid(),
            slave_mode: node.mode() & 0o7777,
            external: false,
            dev_tty: false,
        }
    } else {
        let index = slave_index(rdev);
        let Some((mpid, mfd)) = find_master(&table.tree, index) else {
            return user_terminal(seen, index, table);
        };
        // What is pending is the pty's, recorded with its master.
        let m = steal(seen, mpid, mfd)?;
        let (session, fg_pgrp) = session(seen, &m, index, table)?;
        TtyImage { index, master: false, session, fg_pgrp, ..Default::default() }
    };
    Ok(t)
}

/// A description opened through /dev/tty: the terminal it stands for must
/// be the process's controlling terminal still (the restore opens /dev/tty
/// again in the process), a pty of the tree's in a session of the tree's,
/// or a shell job's terminal.
fn dev_tty(seen: &Seen, table: &FileTable) -> Result<TtyImage> {
    let fd = steal(seen, seen.pid, seen.fd)?;
    let (major, minor) = misc::tty_device(fd.as_raw_fd()).step(seen.pid, || format!("TIOCGDEV of fd {} (/dev/tty)", seen.fd))?;
    let stat = proc::Stat::read(seen.pid)?;
    if stat.num(7) != (u64::from(major) << 8 | u64::from(minor & 0xff) | (u64::from(minor & !0xff) << 12)) {
        return Err(seen.unsupported(format!(
            "/dev/tty opened when the controlling terminal was device {major}:{minor}, no longer the process's: opened again, it would stand for another"
        )));
    }
    if !(136..=143).contains(&major) {
        return Err(seen.unsupported(format!("/dev/tty standing for terminal {major}:{minor}, not a pseudo-terminal")));
    }
    let index = (major - 136) * 256 + minor;
    let mut t = if find_master(&table.tree, index).is_some() {
        if !table.tree.contains(&(stat.num(6) as i32)) {
            return Err(seen.unsupported(format!("/dev/tty standing for pty {index} of the tree, the terminal of a session outside it")));
        }
        TtyImage { index, ..Default::default() }
    } else {
        user_terminal(seen, index, table)?
    };
    t.dev_tty = true;
    Ok(t)
}

/// Refuses a description opened through /dev/tty that several processes
/// hold: each opens /dev/tty again at restore, which would make one
/// description each (their status flags would no longer follow each
/// other).
pub(crate) fn check_dev_tty_sharing(files: &[FileImage], processes: &[Process]) -> Result<()> {
    for f in files.iter().filter(|f| f.tty.as_ref().is_some_and(|t| t.dev_tty)) {
        let holders: Vec<u32> = processes.iter().filter(|p| p.fds.iter().any(|d| d.file_id == f.id)).map(|p| p.pid).collect();
        if holders.len() > 1 {
            return Err(EngineError::Unsupported {
                pid: holders[0] as i32,
                kind: "file descriptor",
                what: format!("/dev/tty opened once and held by processes {holders:?}: each would open its own again"),
            });
        }
    }
    Ok(())
}

/// A slave of pty `index` whose master is outside the tree: the user's
/// terminal of a shell job, recorded with its termios and the tree's
/// foreground group on it (as its processes' /proc/PID/stat shows it);
/// refused unless the checkpoint is of a shell job.
fn user_terminal(seen: &Seen, index: u32, table: &FileTable) -> Result<TtyImage> {
    if !table.shell_job {
        return Err(seen.unsupported(format!(
            "pseudo-terminal slave /dev/pts/{index} whose master is outside the tree (a user's terminal: a checkpoint with --shell-job records it for the restoring terminal)"
        )));
    }
    let fd = steal(seen, seen.pid, seen.fd)?;
    let termios = misc::tty_termios(fd.as_raw_fd()).step(seen.pid, || format!("read the termios of /dev/pts/{index}"))?;
    let nr = (u64::from(136 + index / 256) << 8) | u64::from(index % 256);
    let fg = table
        .tree
        .iter()
        .filter_map(|&p| proc::Stat::read(p).ok())
        .find(|st| st.num(7) == nr)
        .map(|st| st.num(8) as i32)
        .filter(|g| table.tree.contains(g))
        .unwrap_or(0);
    Ok(TtyImage { index, master: false, external: true, termios, fg_pgrp: fg as u32, ..Default::default() })
}

/// The restorer's controlling terminal, through /dev/tty.
fn controlling_tty() -> Result<OwnedFd> {
    open_path("/dev/tty", (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u32).map_err(|e| {
        EngineError::Incompatible(format!("the image holds a shell job's terminal, and this restore has no terminal to give it: {e}"))
    })
}

/// The restoring terminal (the pty slave the restorer's /dev/tty stands
/// for), as an open file description with status flags `flags`. One that
/// open(2) made (O_LARGEFILE among its flags) is opened again by path; one
/// that a terminal emulator handed down (tmux, sshd open their slaves
/// without it) is the one lpm's own standard descriptors hold, shared as
/// the job shared it with its shell. Errors name what is missing.
fn restoring_terminal(flags: i32) -> Result<OwnedFd> {
    use std::os::fd::AsFd;
    let tty = controlling_tty()?;
    let (major, minor) = misc::tty_device(tty.as_raw_fd()).step(0, || "TIOCGDEV of /dev/tty".into())?;
    if !(136..=143).contains(&major) {
        return Err(EngineError::Incompatible(format!(
            "the restoring terminal is device {major}:{minor}, not a pseudo-terminal: a shell job is restored on a pty"
        )));
    }
    let path = format!("/dev/pts/{}", (major - 136) * 256 + minor);
    if flags as u32 & super::O_LARGEFILE != 0 {
        return open_path(&path, (flags | libc::O_NOCTTY) as u32);
    }
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut seen = Vec::new();
    for fd in [i.as_fd(), o.as_fd(), e.as_fd()] {
        let Ok(st) = rustix::fs::fstat(fd) else { continue };
        if (libc::major(st.st_rdev), libc::minor(st.st_rdev)) != (major, minor) || st.st_mode & libc::S_IFMT != libc::S_IFCHR {
            continue;
        }
        let fl = rustix::fs::fcntl_getfl(fd).map(|f| f.bits() as i32).unwrap_or(-1);
        if fl == flags {
            return fd.try_clone_to_owned().map_err(crate::io_err(format!("duplicate lpm's descriptor of {path}")));
        }
        seen.push(format!("{fl:o}"));
    }
    Err(EngineError::Incompatible(format!(
        "the shell job's terminal had status flags {flags:o}, which neither open(2) of {path} gives nor lpm's standard descriptors of it have ({})",
        if seen.is_empty() { "none is on it".to_string() } else { seen.join(", ") }
    )))
}

/// Opens recorded user terminal `t` of file `f` on the restoring terminal,
/// which takes the recorded termios once.
fn open_user_terminal(f: &FileImage, t: &TtyImage, cx: &mut OpenCx) -> Result<OwnedFd> {
    if !cx.shell_job {
        return Err(EngineError::Incompatible(format!(
            "file {} is a shell job's terminal (/dev/pts/{} at checkpoint): restore it with --shell-job, from a terminal",
            f.id, t.index
        )));
    }
    let fd = restoring_terminal(f.flags as i32 & !libc::O_CLOEXEC)?;
    if cx.terminal.is_none() {
        misc::tty_set_termios(fd.as_raw_fd(), &t.termios).step(0, || "set the recorded termios on the restoring terminal".into())?;
        cx.terminal = Some(controlling_tty()?);
    }
    Ok(fd)
}

/// Gives the restoring terminal's foreground back to the shell job's group
/// that held it at checkpoint (`host` maps its recorded leader to the
/// restored one), when the restorer holds the foreground itself: a
/// restorer in the background leaves it to the shell's job control.
pub(crate) fn settle_user_terminal(tree: &TreeImage, open: &OpenFiles, host: impl Fn(u32) -> Option<i32>) -> Result<()> {
    let Some(term) = &open.terminal else { return Ok(()) };
    let Some(fg) = tree.files.iter().filter_map(|f| f.tty.as_ref()).find(|t| t.external && t.fg_pgrp != 0).map(|t| t.fg_pgrp) else {
        return Ok(());
    };
    let Some(leader) = tree.processes.iter().find(|p| p.host_pid == fg).and_then(|p| host(p.pid)) else {
        return Err(EngineError::Incompatible(format!("the shell job's foreground group {fg} has no leader in the image")));
    };
    let ours = misc::tty_session(term.as_raw_fd()).step(0, || "read the restoring terminal's foreground group".into())?;
    if ours.map(|(_, pgrp)| pgrp) != Some(rustix::process::getpgrp().as_raw_nonzero().get()) {
        tracing::info!(group = leader, "the restorer is not in the foreground of its terminal: the job stays in the background");
        return Ok(());
    }
    misc::tty_set_foreground(term.as_raw_fd(), leader).step(0, || format!("give the restoring terminal's foreground to group {leader}"))
}

/// Opens /dev/tty in puppet `pid` (image process `p`), which has its
/// controlling terminal by now, at descriptor `fd` in place of the stand-in.
fn reopen_dev_tty(pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
    let path = crate::task::put_path(pid, s, 0, "/dev/tty")?;
    let flags = (f.flags as i32 & !libc::O_CLOEXEC) as u64;
    let at = libc::AT_FDCWD as u64;
    let new =
        r.call(libc::SYS_openat, &[at, path, flags, 0]).step(pid, || format!("remote open /dev/tty for fd {} in pid {}", fd.fd, p.pid))?;
    let cloexec = if fd.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
    r.call(libc::SYS_dup3, &[new, fd.fd as u64, cloexec]).step(pid, || format!("remote dup3 /dev/tty to fd {} in pid {}", fd.fd, p.pid))?;
    r.call(libc::SYS_close, &[new]).step(pid, || format!("remote close the first fd of /dev/tty in pid {}", p.pid))?;
    Ok(())
}

impl Kind for Tty {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, table, false).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.tty = Some(read(seen, table, true)?);
        f.rdev = seen.st.rdev();
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let t = f.tty.as_ref().ok_or_else(|| EngineError::Incompatible(format!("tty file {} has no tty state", f.id)))?;
        if t.dev_tty {
            if t.external {
                // The restoring terminal takes the recorded termios.
                drop(open_user_terminal(f, t, cx)?);
            }
            // Opened again by each process that holds it ([`Kind::install`]),
            // once it has its controlling terminal; this stands in for it
            // until then.
            return open_path("/dev/null", libc::O_RDONLY as u32);
        }
        if t.external {
            return open_user_terminal(f, t, cx);
        }
        let m = master(t.index, cx)?;
        if t.master {
            return m.try_clone().map_err(crate::io_err(format!("dup pty master {}", t.index)));
        }
        // The recorded flags as they are (O_LARGEFILE included: TIOCGPTPEER
        // does not add it as open(2) does); close-on-exec is the fd's, set
        // by dup3.
        own_slave(m, f.flags as i32 & !libc::O_CLOEXEC).step(0, || format!("open the slave of pty {}", t.index))
    }

    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        if f.tty.as_ref().is_some_and(|t| t.dev_tty) {
            return reopen_dev_tty(pid, r, s, fd, f, p);
        }
        // The controlling terminal and its foreground group are set as the
        // tree is spawned ([`give_ctty`], [`settle_ctty`]), while every
        // puppet still holds the restorer's descriptors.
        Ok(())
    }
}
