//! Pseudo-terminal pairs held inside the tree: the master (/dev/ptmx) and
//! its slaves (/dev/pts/N).
//!
//! Dump reads the pty's state through a copy of the master (pidfd_getfd):
//! termios, window size, packet mode, lock, the owner, group and mode of
//! the slave's device node, and the session whose controlling terminal it
//! is with its foreground group. Data buffered in
//! either direction cannot be read without consuming it: refused by name,
//! as is a slave whose master is outside the tree (a user's terminal) and
//! a controlling terminal shared by processes other than the session
//! leader. Restore opens a new /dev/ptmx in the restorer (its index is the
//! host devpts' choice and generally differs), sets the state and opens the
//! slaves with TIOCGPTPEER; the session leader's puppet takes the slave as
//! its controlling terminal (TIOCSCTTY) and sets the foreground group.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use lpm_image::{Fd, FileImage, FileKind, Process, TtyImage};
use lpm_sys::misc::{self, PtyState};
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, Seen};
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

/// The pty index of slave device `rdev`.
fn slave_index(rdev: u64) -> u32 {
    (libc::major(rdev) - 136) * 256 + libc::minor(rdev)
}

/// The tty_nr of /proc/PID/stat for slave `index` (new_encode_dev).
fn tty_nr(index: u32) -> u64 {
    let (major, minor) = (136 + index / 256, index % 256);
    (major as u64) << 8 | (minor as u64 & 0xff)
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

/// Whether `pid` holds a descriptor of the slave of pty `index` (where its
/// controlling terminal is set again at restore).
fn holds_slave(pid: i32, index: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.flatten().any(|e| {
        std::fs::metadata(e.path()).is_ok_and(|st| {
            st.file_type().is_char_device() && is_pty(st.rdev()) && libc::major(st.rdev()) >= 136 && slave_index(st.rdev()) == index
        })
    })
}

/// A copy of fd `fd` of `pid` (the same open file).
fn take(seen: &Seen, pid: i32, fd: i32) -> Result<OwnedFd> {
    lpm_sys::net::steal_fd(pid, fd).step(seen.pid, || format!("pidfd_getfd fd {fd} of pid {pid}"))
}

/// The session whose controlling terminal the pty is and its foreground
/// group as the leader sees it, read through the master `m`.
fn session(seen: &Seen, m: &OwnedFd, index: u32, table: &FileTable) -> Result<(u32, u32)> {
    let Some((sid, pgrp)) = misc::tty_session(m.as_raw_fd()).step(seen.pid, || "read the pty's session".into())? else {
        return Ok((0, 0));
    };
    if !table.tree.contains(&sid) {
        return Err(seen.unsupported(format!("pseudo-terminal {index} is the controlling terminal of session {sid}, outside the tree")));
    }
    for &pid in &table.tree {
        let nr = proc::Stat::read(pid).map(|s| s.num(7)).unwrap_or(0);
        if pid != sid && nr == tty_nr(index) {
            return Err(seen.unsupported(format!(
                "pseudo-terminal {index} is also the controlling terminal of pid {pid}, not its session leader (not restored)"
            )));
        }
    }
    if !holds_slave(sid, index) {
        return Err(seen.unsupported(format!(
            "pseudo-terminal {index} is the controlling terminal of session {sid}, whose leader holds no fd of its slave"
        )));
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

/// Refuses a pty end with data buffered (it cannot be read back).
fn check_empty(seen: &Seen, fd: &OwnedFd, what: &str) -> Result<()> {
    let (inq, outq) = misc::tty_queues(fd.as_raw_fd()).step(seen.pid, || format!("read the queues of the pty {what}"))?;
    if inq != 0 || outq != 0 {
        return Err(seen.transient(format!("pseudo-terminal {what} with data pending ({inq} bytes to read, {outq} to send)")));
    }
    Ok(())
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
        misc::pty_lock(m.as_raw_fd(), t.locked).step(0, || format!("lock pty {index}"))?;
        cx.ptys.insert(index, m);
    }
    Ok(&cx.ptys[&index])
}

/// The state of a pty end, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<TtyImage> {
    let rdev = seen.st.rdev();
    let t = if (libc::major(rdev), libc::minor(rdev)) == PTMX {
        let m = take(seen, seen.pid, seen.fd)?;
        let index = misc::pty_index(m.as_raw_fd()).step(seen.pid, || format!("TIOCGPTN on fd {}", seen.fd))?;
        check_empty(seen, &m, "master")?;
        let s = misc::pty_get(m.as_raw_fd()).step(seen.pid, || format!("read the state of pty {index}"))?;
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
            slave_uid: node.uid(),
            slave_gid: node.gid(),
            slave_mode: node.mode() & 0o7777,
        }
    } else {
        let index = slave_index(rdev);
        let Some((mpid, mfd)) = find_master(&table.tree, index) else {
            return Err(seen.unsupported("pseudo-terminal slave whose master is outside the tree"));
        };
        check_empty(seen, &take(seen, seen.pid, seen.fd)?, "slave")?;
        let m = take(seen, mpid, mfd)?;
        let (session, fg_pgrp) = session(seen, &m, index, table)?;
        TtyImage { index, master: false, session, fg_pgrp, ..Default::default() }
    };
    Ok(t)
}

impl Kind for Tty {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.tty = Some(read(seen, table)?);
        f.rdev = seen.st.rdev();
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let t = f.tty.as_ref().ok_or_else(|| EngineError::Incompatible(format!("tty file {} has no tty state", f.id)))?;
        let m = master(t.index, cx)?;
        if t.master {
            return m.try_clone().map_err(crate::io_err(format!("dup pty master {}", t.index)));
        }
        // The recorded flags as they are (O_LARGEFILE included: TIOCGPTPEER
        // does not add it as open(2) does); the fd is dup3'd without O_CLOEXEC.
        let flags = (f.flags as i32 & !libc::O_CLOEXEC) | libc::O_NOCTTY;
        let locked = misc::pty_get(m.as_raw_fd()).step(0, || format!("read the lock of pty {}", t.index))?.locked;
        misc::pty_lock(m.as_raw_fd(), false).step(0, || format!("unlock pty {}", t.index))?;
        let s = misc::pty_peer(m.as_raw_fd(), flags).step(0, || format!("open the slave of pty {}", t.index));
        misc::pty_lock(m.as_raw_fd(), locked).step(0, || format!("lock pty {}", t.index))?;
        s
    }

    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        let Some(t) = f.tty.as_ref().filter(|t| !t.master && t.session == p.pid) else { return Ok(()) };
        if FileKind::try_from(f.kind) != Ok(FileKind::Tty) {
            return Ok(());
        }
        // The session leader takes its controlling terminal back (its
        // puppet led a new session with none), then the foreground group.
        r.call(libc::SYS_ioctl, &[fd.fd as u64, libc::TIOCSCTTY, 0]).step(pid, || format!("remote TIOCSCTTY on fd {}", fd.fd))?;
        if t.fg_pgrp != 0 {
            let a = put(pid, s, 0, &(t.fg_pgrp as i32).to_ne_bytes())?;
            r.call(libc::SYS_ioctl, &[fd.fd as u64, libc::TIOCSPGRP, a])
                .step(pid, || format!("remote TIOCSPGRP({}) on fd {}", t.fg_pgrp, fd.fd))?;
        }
        Ok(())
    }
}
