//! What a dump that leaves the tree frozen ([`crate::After::Frozen`]) lets
//! go of so that the target of a migration can take it, and what a
//! rollback takes back before the tree runs again ([`thaw_tree`]).
//!
//! Two things of a frozen tree live outside it, on storage the hosts
//! share, and would otherwise stay with the frozen copy:
//!
//! - File locks. The kernel (or the NFS server) keeps a frozen process's
//!   flock, POSIX and OFD locks, so the target's restore could not take
//!   them. The dump lets go of each one once the image is complete: flock
//!   and OFD locks belong to the open file description and are let go of
//!   (and taken back) from outside, through a duplicate of the descriptor
//!   (pidfd_getfd); POSIX locks belong to the process (its files_struct)
//!   and are set inside it with remote fcntl calls.
//! - The buffers of FIFOs. When both hosts are one machine, source and
//!   target open the same FIFO and share its kernel buffer; the target
//!   refills it from the image, so bytes the source kept would be there
//!   twice. The dump empties every FIFO of the tree (the bytes are in the
//!   image). Anonymous pipes are private to the tree and keep theirs.
//!
//! A rollback refills the FIFOs and takes every lock again while the tree
//! is still frozen or stopped, then lets it run. A remote call cannot run
//! in a task held by the cgroup v2 freezer: PTRACE_SEIZE and
//! PTRACE_INTERRUPT do bring a frozen task into its ptrace stop (checked on
//! 6.18), but once resumed for the syscall it goes straight back into the
//! freezer's trap and never reaches the `syscall` instruction. So for POSIX
//! locks the tree is stopped the way a checkpoint stops it ([`crate::stop_tree`]:
//! every thread seized and interrupted while frozen, then the cgroup
//! thawed, each thread trapping into its ptrace stop before user space),
//! the locks are taken inside their processes, and the threads are put
//! back and detached. The target's copy may still hold a lock when the
//! rollback starts (it is dropped when the target hears of the abort):
//! taking it is retried for a while before it counts as lost.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use lpm_image::{FileKind, Process, TreeImage};
use lpm_sys::ptrace::{self, Regs};
use lpm_sys::remote::Remote;

use crate::locks::Released;
use crate::stop::{cgroup_freeze, frozen_cgroup, syscall_ip};
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// What a dump for [`crate::After::Frozen`] took from the tree it left
/// frozen: the file locks it let go of and the bytes it took out of the
/// tree's FIFOs, with the descriptors needed to give them back. Give it
/// to [`thaw_tree`] on rollback; on commit drop it with the tree
/// ([`crate::kill_frozen_tree`]). Dropping it closes its descriptors only:
/// nothing is taken back.
#[derive(Default)]
pub struct Handoff {
    locks: Vec<Released>,
    fifos: Vec<Drained>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("locks", &self.locks.iter().map(Released::describe).collect::<Vec<_>>())
            .field("fifos", &self.fifos.iter().map(|d| format!("{} ({} bytes)", d.path, d.data.len())).collect::<Vec<_>>())
            .finish()
    }
}

impl Handoff {
    /// Nothing was let go of.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.fifos.is_empty()
    }

    /// Locks let go of (a lock shared by several processes through one
    /// open file description counts once per process).
    pub fn locks(&self) -> usize {
        self.locks.len()
    }

    /// FIFOs emptied, and the bytes taken out of them.
    pub fn fifos(&self) -> (usize, usize) {
        (self.fifos.len(), self.fifos.iter().map(|d| d.data.len()).sum())
    }
}

/// A rollback could not give the tree everything back.
#[derive(Debug, thiserror::Error)]
pub enum HandbackError {
    /// The tree runs again, without what is listed (each entry names the
    /// process, the file, the lock and its range, and the cause).
    #[error("pid {root}: the tree runs again without: {}", .lost.join("; "))]
    Incomplete {
        /// The root of the tree.
        root: i32,
        /// What is missing, and why.
        lost: Vec<String>,
    },
    /// The tree could not be thawed: it stays frozen.
    #[error("pid {root}: thaw the frozen tree")]
    Thaw {
        /// The root of the tree.
        root: i32,
        /// The cause.
        #[source]
        source: EngineError,
    },
}

/// A FIFO emptied by the dump.
struct Drained {
    pid: i32,
    fd: i32,
    path: String,
    /// An end opened read-write: never blocks, keeps the buffer alive.
    end: OwnedFd,
    data: Vec<u8>,
}

impl Drained {
    /// Opens the FIFO at descriptor `fd` of stopped process `pid`
    /// read-write and takes out every buffered byte.
    fn take(pid: i32, fd: i32, path: &str) -> Result<Drained> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let end: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&link)
            .map_err(io_err(format!("reopen fifo {path} ({link}) to empty it")))?
            .into();
        let data = read_all(&end).map_err(io_err(format!("empty fifo {path}")))?;
        Ok(Drained { pid, fd, path: path.to_string(), end, data })
    }

    /// Puts the bytes back in front of whatever the FIFO holds now. When
    /// that begins with those very bytes, a copy of the tree sharing this
    /// buffer (the target's, on the same machine, restored before the
    /// rollback) put them back already, and nothing is added. (A target on
    /// the same machine that refills the buffer after this, still
    /// restoring when the source gave up, would double them: only a lab
    /// shares a FIFO's buffer between hosts.)
    fn refill(&self) -> Result<()> {
        let now = read_all(&self.end).map_err(io_err(format!("read fifo {} before refilling it", self.path)))?;
        let back = if now.starts_with(&self.data) { now } else { [self.data.as_slice(), &now].concat() };
        let mut file = std::fs::File::from(self.end.try_clone().map_err(io_err("dup fifo end"))?);
        file.write_all(&back).map_err(io_err(format!("refill fifo {} with {} bytes", self.path, back.len())))
    }

    fn describe(&self) -> String {
        format!("{} bytes of fifo {} (pid {} fd {})", self.data.len(), self.path, self.pid, self.fd)
    }
}

/// Reads a non-blocking pipe end until it is empty.
fn read_all(end: &OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(end.try_clone()?);
    let mut data = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(data),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A seized process's leader, borrowed for remote calls, with a scratch
/// page mapped in it.
struct Inside {
    pid: i32,
    remote: Remote,
    scratch: Scratch,
}

impl Inside {
    fn open(pid: i32, regs: Regs) -> Result<Inside> {
        let ip = syscall_ip(pid, &proc::maps(pid)?)?;
        // No signal may stop a remote call; the mask goes back with the
        // registers when the thread is released.
        ptrace::set_sigmask(pid, !0).step(pid, || "block signals".into())?;
        let mut remote = Remote::new(pid, ip, regs);
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = remote.call(libc::SYS_mmap, &[0, 4096, prot, flags, u64::MAX, 0]).step(pid, || "remote mmap scratch".into())?;
        Ok(Inside { pid, remote, scratch: Scratch { addr, len: 4096 } })
    }

    fn close(mut self) {
        if let Err(e) = self.remote.call(libc::SYS_munmap, &[self.scratch.addr, self.scratch.len]) {
            tracing::warn!(pid = self.pid, error = %e, "remote munmap of the lock scratch page");
        }
    }
}

/// The processes whose leaders are seized, with the registers to start
/// remote calls from, and those opened for calls so far.
struct Seized<'a> {
    leaders: &'a HashMap<i32, Regs>,
    open: HashMap<i32, Inside>,
}

impl Seized<'_> {
    fn inside(&mut self, pid: i32) -> Result<&mut Inside> {
        if !self.open.contains_key(&pid) {
            let regs =
                *self.leaders.get(&pid).ok_or_else(|| EngineError::BadTarget { pid, why: "its leader thread is not seized".into() })?;
            self.open.insert(pid, Inside::open(pid, regs)?);
        }
        Ok(self.open.get_mut(&pid).expect("opened above"))
    }

    fn set(&mut self, l: &Released, take: bool) -> Result<bool> {
        if !l.inside() {
            return if take { l.take(None) } else { l.unlock(None).map(|_| true) };
        }
        let i = self.inside(l.pid)?;
        let at = Some((&mut i.remote, i.scratch));
        if take {
            l.take(at)
        } else {
            l.unlock(at).map(|_| true)
        }
    }

    fn close(self) {
        for (_, i) in self.open {
            i.close();
        }
    }
}

/// An error with its causes, for a list of what was lost.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The path of descriptor `fd` of `p` as the image has it.
fn path_of(tree: &TreeImage, p: &Process, fd: u32) -> String {
    p.fds
        .iter()
        .find(|f| f.fd == fd)
        .and_then(|f| tree.files.iter().find(|x| x.id == f.file_id))
        .map(|x| x.path.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("/proc/{}/fd/{fd}", p.pid))
}

/// Lets go of the locks and empties the FIFOs of the dumped `tree`, every
/// thread still seized (`leaders`: each process's leader registers). On
/// error what was let go of is taken back, so the tree can continue.
pub(crate) fn release(tree: &TreeImage, leaders: &HashMap<i32, Regs>) -> Result<Handoff> {
    let mut h = Handoff::default();
    let mut seized = Seized { leaders, open: HashMap::new() };
    let res = let_go(tree, &mut seized, &mut h);
    if let Err(e) = res {
        for what in give_back(&h, &mut seized, Instant::now()) {
            tracing::error!(root = tree.root_pid, what, "taking back what a failed frozen dump let go of");
        }
        seized.close();
        return Err(e);
    }
    seized.close();
    if !h.is_empty() {
        let (fifos, bytes) = h.fifos();
        tracing::debug!(root = tree.root_pid, locks = h.locks(), fifos, bytes, "locks and fifo data let go of for the target");
    }
    Ok(h)
}

fn let_go(tree: &TreeImage, seized: &mut Seized, h: &mut Handoff) -> Result<()> {
    // Every descriptor first, while nothing is let go of yet.
    let mut locks = Vec::new();
    for p in &tree.processes {
        for l in &p.file_locks {
            locks.push(Released::new(p.pid as i32, l, path_of(tree, p, l.fd))?);
        }
    }
    for l in locks {
        seized.set(&l, false)?;
        h.locks.push(l);
    }
    let mut seen = Vec::new();
    for p in &tree.processes {
        for fd in &p.fds {
            // An unlinked FIFO is no shared object: the target makes a
            // new one from the image.
            let Some(f) = tree.files.iter().find(|f| f.id == fd.file_id && f.kind == FileKind::Fifo as i32 && f.ghost_id == 0) else {
                continue;
            };
            if seen.contains(&f.pipe_id) {
                continue;
            }
            seen.push(f.pipe_id);
            let d = Drained::take(p.pid as i32, fd.fd as i32, &f.path)?;
            let saved = tree.pipes.iter().find(|x| x.id == f.pipe_id).map(|x| x.data.as_slice()).unwrap_or(&[]);
            if d.data != saved {
                // Written from outside the tree since it was read: what the
                // image lacks stays here (and comes back on rollback).
                tracing::warn!(pid = p.pid, fifo = %f.path, saved = saved.len(), held = d.data.len(), "fifo changed during the dump");
            }
            h.fifos.push(d);
        }
    }
    Ok(())
}

/// Refills the FIFOs and takes every lock back, trying again until
/// `deadline` while another owner holds one; returns what could not be
/// given back, each naming the process, file, lock and range, and why.
fn give_back(h: &Handoff, seized: &mut Seized, deadline: Instant) -> Vec<String> {
    let mut lost = Vec::new();
    for d in &h.fifos {
        if let Err(e) = d.refill() {
            lost.push(format!("{}: {}", d.describe(), chain(&e)));
        }
    }
    let locks: Vec<&Released> = h.locks.iter().collect();
    take_all(&locks, seized, deadline, &mut lost);
    lost
}

fn take_all(locks: &[&Released], seized: &mut Seized, deadline: Instant, lost: &mut Vec<String>) {
    let mut pending = locks.to_vec();
    loop {
        pending.retain(|l| match seized.set(l, true) {
            Ok(taken) => !taken,
            Err(e) => {
                lost.push(format!("{}: {}", l.describe(), chain(&e)));
                false
            }
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for l in pending {
        lost.push(format!("{}: another owner holds a conflicting lock", l.describe()));
    }
}

/// Lets a tree left by [`crate::After::Frozen`] continue (the rollback of
/// a migration's handover), after giving back what its dump let go of
/// ([`crate::CheckpointStats::handoff`]): the FIFOs are refilled and every
/// lock is taken again before any thread of the tree runs. A lock another
/// owner holds (the target's copy of the tree, until it is dropped) is
/// tried again for up to `patience`.
///
/// The tree is thawed even when something could not be given back
/// ([`HandbackError::Incomplete`] says what); only a failure to thaw
/// leaves it frozen ([`HandbackError::Thaw`]).
pub fn thaw_tree(root: i32, handoff: Handoff, patience: Duration) -> Result<(), HandbackError> {
    let thaw_err = |source| HandbackError::Thaw { root, source };
    let cg = frozen_cgroup(root).map_err(thaw_err)?;
    let deadline = Instant::now() + patience;
    let mut lost = Vec::new();
    for d in &handoff.fifos {
        if let Err(e) = d.refill() {
            lost.push(format!("{}: {}", d.describe(), chain(&e)));
        }
    }
    let (outside, inside): (Vec<&Released>, Vec<&Released>) = handoff.locks.iter().partition(|l| !l.inside());
    let none = HashMap::new();
    // Through the duplicated descriptors, the tree still frozen.
    take_all(&outside, &mut Seized { leaders: &none, open: HashMap::new() }, deadline, &mut lost);
    if !inside.is_empty() {
        match crate::stop_tree(root) {
            Ok(stopped) => {
                let leaders = stopped.leaders();
                let mut seized = Seized { leaders: &leaders, open: HashMap::new() };
                take_all(&inside, &mut seized, deadline, &mut lost);
                seized.close();
                // Every thread back as it was, and detached: the tree runs
                // (stop_tree thawed its cgroup once every thread was held).
                stopped.resume();
            }
            Err(e) => {
                let why = chain(&e);
                lost.extend(inside.iter().map(|l| format!("{}: cannot stop the tree to take it inside: {why}", l.describe())));
            }
        }
    }
    cgroup_freeze(&cg, false).map_err(thaw_err)?;
    drop(handoff);
    if lost.is_empty() {
        Ok(())
    } else {
        Err(HandbackError::Incomplete { root, lost })
    }
}

/// Gives back what `h` holds while every thread is still seized and
/// stopped (a frozen dump that fails to hand the tree to its freezer, so
/// that the tree continues as it was); logs what could not be.
pub(crate) fn give_back_seized(root: i32, h: &Handoff, leaders: &HashMap<i32, Regs>) {
    let mut seized = Seized { leaders, open: HashMap::new() };
    for what in give_back(h, &mut seized, Instant::now()) {
        tracing::error!(root, what, "taking back what a failed frozen dump let go of");
    }
    seized.close();
}
