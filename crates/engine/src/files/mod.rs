//! File descriptors, one module per kind of open file, each holding both
//! directions behind the [`Kind`] trait.
//!
//! Dump records each open file description once (kcmp finds descriptors
//! that share one, within or across processes) and each fd by number; a
//! descriptor of a kind no module claims is refused by name. Restore opens
//! every description in the restorer before the first puppet is cloned, at
//! numbers above any the image uses; every puppet inherits them all, so
//! sharing (offsets, pipe ends) comes for free, and each puppet only moves
//! its own to their numbers with dup3 and closes the rest. Kinds whose state
//! lives in the fd table itself (epoll registrations) finish inside the
//! puppet once its descriptors are in place ([`Kind::install`]). inotify
//! watches and fanotify marks come last, through the restored processes'
//! own roots and mount namespaces ([`restore_fsnotify`]).

mod epoll;
mod eventfd;
mod fanotify;
mod fown;
mod fsnotify;
mod inet;
mod inotify;
mod memfd;
mod mqueue;
mod netlink;
mod nsfd;
mod packet;
mod pidfd;
mod pipe;
pub(crate) mod regular;
mod signalfd;
mod sockets;
mod tcp_segment;
mod timerfd;
pub(crate) mod tty;
mod unix;

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, FileKind, MemfdChunk, PipeImage, Process, TreeImage};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use crate::proc;
use crate::task::Scratch;
use crate::{io_err, EngineError, Result, StepExt};

/// What the dump of one descriptor sees from outside.
pub struct Seen<'a> {
    /// The process.
    pub pid: i32,
    /// The descriptor number.
    pub fd: i32,
    /// The process whose namespaces and root apply: `pid`, except for a
    /// descriptor in flight, which lpm holds (`pid` is lpm's own) on
    /// behalf of the tree's process holding its carrier.
    pub ns_pid: i32,
    /// Target of /proc/PID/fd/N.
    pub link: &'a str,
    /// stat of the open file.
    pub st: &'a Metadata,
}

impl Seen<'_> {
    /// An "unsupported" error naming this descriptor.
    pub fn unsupported(&self, why: impl std::fmt::Display) -> EngineError {
        EngineError::Unsupported { pid: self.pid, kind: "file descriptor", what: format!("fd {} -> {}: {why}", self.fd, self.link) }
    }

    /// A refusal of the descriptor's state at this moment (data queued, a
    /// connection waiting to be accepted), which may pass a moment later.
    pub fn transient(&self, why: impl std::fmt::Display) -> EngineError {
        EngineError::Transient { pid: self.pid, kind: "file descriptor", what: format!("fd {} -> {}: {why}", self.fd, self.link) }
    }
}

/// Restorer-side state shared by the kinds while files are opened.
pub struct OpenCx<'a> {
    /// The whole image.
    pub tree: &'a TreeImage,
    /// Descriptors to keep open until the tree runs (FIFO holders, ...).
    pub holders: Vec<OwnedFd>,
    /// Pipe pairs created so far, by pipe identity.
    pub pipes: HashMap<u64, (OwnedFd, OwnedFd)>,
    /// Sockets created ahead of their own file (peers, listeners), by
    /// socket identity.
    pub sockets: HashMap<u64, OwnedFd>,
    /// Network namespaces recreated for the tree, by identity.
    pub net: &'a HashMap<u64, OwnedFd>,
    /// Pty masters opened so far, by their index at dump.
    pub ptys: HashMap<u32, OwnedFd>,
    /// Descriptions of unlinked files opened ahead of their turn (every
    /// description of a ghost is opened when its first one is), by file id.
    pub ghosts: HashMap<u32, OwnedFd>,
    /// Descriptors of a shell job's user terminal open the restoring
    /// terminal ([`crate::RestoreOptions::shell_job`]).
    pub shell_job: bool,
    /// The restoring terminal, once a shell job's terminal opened it.
    pub terminal: Option<OwnedFd>,
    /// The O_PATH descriptor of each ghost, by ghost id (an unlinked
    /// FIFO's descriptions are opened through it).
    pub ghost_fds: HashMap<u64, i32>,
    /// Memfds recreated so far, by the file id of their first
    /// description: their other descriptions are reopened from them.
    pub memfds: HashMap<u32, OwnedFd>,
}

/// An established connection left in repair mode at install, to leave it
/// when the tree is released: the network is unlocked first (a plain
/// checkpoint's rules, a migration's partition link), so what the
/// connection sends on leaving repair (a window probe toward a peer
/// outside the tree, the never-sent data) reaches the peer at once.
#[derive(Clone, Debug)]
pub struct Deferred {
    /// Host pid of the puppet holding it.
    pub pid: i32,
    /// Its descriptor there.
    pub fd: Fd,
    /// Its image.
    pub file: FileImage,
    /// It sends a window probe as it leaves repair mode (see
    /// `inet::probes`).
    pub probe: bool,
}

/// The network namespace of restored process `host`, as its nsfs inode.
pub(crate) fn net_inode(host: i32) -> Result<u64> {
    nsfd::net_inode(host)
}

/// Leaves repair mode on every deferred connection.
pub fn finish_deferred(list: &[Deferred]) -> Result<()> {
    for d in list {
        inet::finish_deferred(d)?;
    }
    Ok(())
}

/// One kind of open file: how it is dumped and how it is restored.
pub trait Kind {
    /// Applies this kind's refusal rules to an open file of a process that
    /// may be running, reading only what can be read without changing the
    /// file, its queues or its holder (fdinfo, sock_diag, getsockopt,
    /// MSG_PEEK without a peek offset and read-only ioctls on a copy of the
    /// descriptor): what [`crate::inspect`] runs. `dump` applies the same
    /// rules through the same code before it records anything, so the two
    /// cannot disagree; only rules on state that can be read only while
    /// the tree is stopped (what a queue holds, read with MSG_PEEK and a
    /// peek offset, or in TCP repair mode) are left to `dump`.
    fn check(&self, seen: &Seen, f: &FileImage, table: &FileTable) -> Result<()>;
    /// Records the kind-specific state of a new open file into `f` (whose
    /// generic fields are filled), or refuses it by name.
    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()>;
    /// Recreates the open file in the restorer; puppets inherit it.
    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd>;
    /// Finishes the file inside a puppet that holds it at `fd`, once every
    /// descriptor of that puppet is in place.
    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()>;
}

/// The module that handles `kind`.
fn kind(kind: FileKind) -> Option<&'static dyn Kind> {
    match kind {
        FileKind::Regular | FileKind::Unlinked | FileKind::CharDevice => Some(&regular::Regular),
        FileKind::Pipe | FileKind::Fifo => Some(&pipe::Pipe),
        FileKind::Eventfd => Some(&eventfd::Eventfd),
        FileKind::Timerfd => Some(&timerfd::Timerfd),
        FileKind::Signalfd => Some(&signalfd::Signalfd),
        FileKind::Epoll => Some(&epoll::Epoll),
        FileKind::Inotify => Some(&inotify::Inotify),
        FileKind::Memfd => Some(&memfd::Memfd),
        FileKind::Pidfd => Some(&pidfd::Pidfd),
        FileKind::UnixSocket => Some(&unix::Unix),
        FileKind::InetSocket => Some(&inet::Inet),
        FileKind::NetlinkSocket => Some(&netlink::Netlink),
        FileKind::PacketSocket => Some(&packet::Packet),
        FileKind::Tty => Some(&tty::Tty),
        FileKind::Mqueue => Some(&mqueue::Mqueue),
        FileKind::Namespace => Some(&nsfd::NsFd),
        FileKind::Fanotify => Some(&fanotify::Fanotify),
        FileKind::Invalid => None,
    }
}

/// Which kind claims a descriptor, from what /proc shows of it.
fn classify(seen: &Seen) -> Result<FileKind> {
    let link = seen.link;
    let ft = seen.st.file_type();
    use std::os::unix::fs::FileTypeExt;
    Ok(if link.starts_with("pipe:") {
        FileKind::Pipe
    } else if let Some(rest) = link.strip_prefix("anon_inode:") {
        match rest {
            "[eventfd]" => FileKind::Eventfd,
            "[timerfd]" => FileKind::Timerfd,
            "[signalfd]" => FileKind::Signalfd,
            "[eventpoll]" => FileKind::Epoll,
            "inotify" => FileKind::Inotify,
            "[pidfd]" => FileKind::Pidfd,
            "[fanotify]" => FileKind::Fanotify,
            _ => return Err(seen.unsupported(format!("{} object", rest.trim_start_matches('[').trim_end_matches(']')))),
        }
    } else if link.starts_with("socket:") {
        sockets::classify(seen)?
    } else if nsfd::is_ns(link) {
        FileKind::Namespace
    } else if !link.starts_with('/') {
        return Err(seen.unsupported(format!("{} object", link.split(':').next().unwrap_or(link))));
    } else if mqueue::is_mqueue(seen) {
        FileKind::Mqueue
    } else if link.starts_with("/memfd:") {
        FileKind::Memfd
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_char_device() && (tty::is_pty(seen.st.rdev()) || tty::is_dev_tty(seen.st.rdev())) {
        FileKind::Tty
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        // A symbolic link is open only as O_PATH|O_NOFOLLOW. A regular
        // file whose name was removed while other names remain is
        // reopened by its handle (regular.rs).
        if (seen.st.nlink() == 0 || ft.is_file()) && link.ends_with(" (deleted)") {
            FileKind::Unlinked
        } else {
            FileKind::Regular
        }
    } else {
        return Err(seen.unsupported("block device or unknown file type"));
    })
}

/// Files seen so far during a dump.
#[derive(Default)]
pub struct FileTable {
    /// Open file descriptions.
    pub files: Vec<FileImage>,
    owners: Vec<(i32, i32, u64, u64)>,
    /// Pipes and FIFOs by identity.
    pub pipes: HashMap<u64, PipeImage>,
    /// The processes of the tree (a socket's peer must be held by one).
    pub tree: Vec<i32>,
    /// The caller locked the network: established TCP connections to
    /// peers outside the tree may be dumped.
    pub tcp_established: bool,
    /// The tree is a shell job ([`crate::DumpOptions::shell_job`]): a pty
    /// slave whose master is outside it is recorded, not refused.
    pub shell_job: bool,
    /// Unlinked files and removed directories, one per inode.
    pub ghosts: regular::Ghosts,
    /// lpm locks the network itself: each connection to a peer outside
    /// the tree is added to this lock before its state is read.
    pub lock: Option<crate::netlock::NetLock>,
    /// Descriptors in flight received while unix queues were read, kept
    /// open until the dump ends (their open files are compared by kcmp
    /// with the descriptors seen after them).
    pub inflight: Vec<OwnedFd>,
    /// Unix sockets whose peer no process of the tree holds, to resolve
    /// once every queue is read (the peer may be in flight): the index of
    /// the socket's file in `files`, and its refusal if the peer is not.
    pub unix_unheld: Vec<(usize, EngineError)>,
    /// The caller declared unix peers outside the tree external
    /// (`--ext-unix-sk`): such sockets are dumped, not refused.
    pub ext_unix_sk: bool,
    /// Indexes of the descriptions being recorded (their slots are taken,
    /// see `describe`): not yet "seen before".
    describing: Vec<usize>,
    /// The TCP sockets of each network namespace seen (by its inode), read
    /// once per dump (`inet::tcp_inode`).
    pub(crate) tcp_sockets: std::cell::RefCell<HashMap<u64, std::rc::Rc<inet::TcpSockets>>>,
}

impl FileTable {
    /// The id of the open file description of `fd` of `pid` if one was
    /// seen already (kcmp against each description of the same inode).
    fn known(&self, pid: i32, fd: i32, flags: u32, key: (u64, u64)) -> Result<Option<u32>> {
        for (i, &(opid, ofd, dev, ino)) in self.owners.iter().enumerate() {
            if (dev, ino) == key
                && self.files[i].flags == flags
                && misc::same_file(pid, fd, opid, ofd).step(pid, || format!("kcmp fd {fd}"))?
            {
                return Ok(Some(self.files[i].id));
            }
        }
        Ok(None)
    }

    /// Records a new open file description: its slot (and its id) is
    /// taken before `visit` runs, so that the descriptors in flight that
    /// `visit` meets, its own among them, find it.
    fn describe(
        &mut self,
        seen: &Seen,
        info: &proc::FdInfo,
        visit: impl FnOnce(&Seen, &mut FileImage, &mut FileTable) -> Result<()>,
    ) -> Result<u32> {
        let id = self.files.len() as u32 + 1;
        let mut f = FileImage {
            id,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            mode: seen.st.mode(),
            path: seen.link.to_string(),
            size: seen.st.len(),
            ..Default::default()
        };
        self.owners.push((seen.pid, seen.fd, seen.st.dev(), seen.st.ino()));
        self.files.push(f.clone());
        self.describing.push(id as usize - 1);
        let res = visit(seen, &mut f, self);
        self.describing.pop();
        self.files[id as usize - 1] = f;
        res.map(|_| id)
    }

    /// Whether an open file description of the inode `(dev, ino)` was
    /// seen already (another description of a file seen before).
    pub fn described(&self, dev: u64, ino: u64) -> bool {
        self.owners.iter().enumerate().any(|(i, o)| (o.2, o.3) == (dev, ino) && !self.describing.contains(&i))
    }

    /// The file id of the first open file description of the inode
    /// `(dev, ino)` seen, if any (one being described now is not seen yet:
    /// its slot is taken before it is recorded).
    pub fn first_description(&self, dev: u64, ino: u64) -> Option<u32> {
        self.owners
            .iter()
            .enumerate()
            .find(|(i, o)| (o.2, o.3) == (dev, ino) && !self.describing.contains(i))
            .map(|(i, _)| self.files[i].id)
    }
}

/// The packet mark of the segments a restore makes up for a connection,
/// which the network lock lets through.
pub(crate) fn tcp_mark() -> u32 {
    tcp_segment::MARK
}

/// An inet address as `1.2.3.4:80` or `[::1]:80`.
pub(crate) fn show_addr(a: &lpm_image::InetAddr) -> String {
    inet::show(a)
}

/// The peer of the inet socket with inode `ino` of process `pid`:
/// getpeername, or for a ping or raw socket connected with no port (which
/// getpeername calls unconnected) /proc/PID/net.
pub(crate) fn inet_peer(pid: i32, ino: u64, s: &lpm_image::SocketImage, sock: std::os::fd::BorrowedFd<'_>) -> Option<lpm_image::InetAddr> {
    inet::peer_of(pid, ino, s, sock)
}

/// Makes the two ends of every TCP connection inside the tree agree, once
/// every process is dumped (see `inet::reconcile`).
pub fn reconcile_connections(table: &mut FileTable) -> Result<()> {
    unix::reconcile(table)?;
    inet::reconcile(table)
}

/// Puts every TCP connection of a dumped tree back in repair mode just
/// before the tree is killed, so that its sockets close silently (see
/// `inet::silence`); the copies returned keep them until dropped.
pub fn silence_connections(tree: &TreeImage) -> Vec<OwnedFd> {
    inet::silence(tree)
}

/// Names, in each inotify watch of an unlinked inode, the ghost the dump
/// recorded for that inode, once every process is dumped (see `inotify`).
pub fn link_watched_ghosts(table: &mut FileTable) -> Result<()> {
    inotify::link_ghosts(table)
}

/// The module that handles a descriptor, from what /proc shows of it; a
/// kind no module claims is refused by name.
fn handler(seen: &Seen, f: &mut FileImage) -> Result<&'static dyn Kind> {
    let k = classify(seen)?;
    f.kind = k as i32;
    kind(k).ok_or_else(|| seen.unsupported("no module for its kind"))
}

/// Dumps the file descriptors of stopped process `pid`.
pub fn dump(pid: i32, table: &mut FileTable) -> Result<Vec<Fd>> {
    walk(pid, table, false, |seen, f, table| {
        handler(seen, f)?.dump(seen, f, table)?;
        if opath(f) {
            return Ok(());
        }
        fown::dump(seen, f, table)
    })
}

/// Records a descriptor in flight in a unix queue read while dumping the
/// socket of `carrier` (MSG_PEEK installed `fd` here, a new descriptor of
/// the same open file): its file id, the file dumped once like any other
/// (kcmp finds it among those seen, the carrier's own included). Only the
/// kinds whose dump and restore need no process holding them travel;
/// anything else is refused by name, as the carrier's.
pub(crate) fn dump_inflight(carrier: &Seen, fd: OwnedFd, table: &mut FileTable) -> Result<u32> {
    let me = std::process::id() as i32;
    let raw = fd.as_raw_fd();
    let link = proc::link(me, &format!("fd/{raw}"))?;
    let info = proc::parse_fdinfo(&proc::read(me, &format!("fdinfo/{raw}"))?);
    let st = std::fs::metadata(format!("/proc/{me}/fd/{raw}")).map_err(io_err(format!("stat descriptor in flight {raw}")))?;
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    if let Some(id) = table.known(me, raw, flags, (st.dev(), st.ino()))? {
        return Ok(id);
    }
    let seen = Seen { pid: me, fd: raw, ns_pid: carrier.ns_pid, link: &link, st: &st };
    let rename = |e: EngineError| match e {
        EngineError::Unsupported { what, .. } => carrier.unsupported(format!("a descriptor in flight in its queue: {what}")),
        EngineError::Transient { what, .. } => carrier.transient(format!("a descriptor in flight in its queue: {what}")),
        other => other,
    };
    let k = classify(&seen).map_err(rename)?;
    let travels = matches!(
        k,
        FileKind::UnixSocket
            | FileKind::Pipe
            | FileKind::Fifo
            | FileKind::Regular
            | FileKind::Unlinked
            | FileKind::Eventfd
            | FileKind::Memfd
    );
    if !travels {
        return Err(carrier.unsupported(format!("a descriptor in flight in its queue is a {k:?}, which the restore cannot send again")));
    }
    // Kept open until the dump ends: later descriptors are compared with it.
    table.inflight.push(fd);
    table
        .describe(&seen, &info, |seen, f, table| {
            f.kind = k as i32;
            kind(k).ok_or_else(|| seen.unsupported("no module for its kind"))?.dump(seen, f, table)?;
            fown::dump(seen, f, table)?;
            if f.owner.is_some() || f.signal != 0 || f.flags as i32 & libc::O_ASYNC != 0 {
                return Err(seen.unsupported("an owner for SIGIO, which only a descriptor in a process table keeps"));
            }
            Ok(())
        })
        .map_err(rename)
}

/// Whether the description is O_PATH: it only names a file (no I/O, so
/// no owner for SIGIO: fcntl refuses to tell).
fn opath(f: &FileImage) -> bool {
    f.flags as i32 & libc::O_PATH != 0
}

/// Adds the watches of every inotify instance and the marks of every
/// fanotify group of the image to the restored ones, each through the
/// restored process the dump saw them from (its root and mount
/// namespace: a partition's own mounts); `host` gives the host pid of an
/// image process. Runs once every process is shaped and the tree's
/// mounts are in place: no later step of the restore opens a watched
/// file, so no event of the restore reaches them.
pub fn restore_fsnotify(tree: &TreeImage, open: &OpenFiles, host: impl Fn(u32) -> Option<i32>) -> Result<()> {
    for f in &tree.files {
        let seen_from = match (&f.inotify, &f.fanotify) {
            (Some(i), _) => i.seen_from,
            (_, Some(g)) => g.seen_from,
            _ => continue,
        };
        // Images without it: the first holder, whom the dump met first.
        let pid = if seen_from != 0 { seen_from } else { fown::first_holder(tree, f.id).map_or(0, |h| h.0) };
        let pid = host(pid).ok_or_else(|| {
            EngineError::Incompatible(format!("file {}: its watches are seen from process {pid}, which is not in the tree", f.id))
        })?;
        // A test of `verify` makes the restore add them through lpm's own
        // root and mount namespace on purpose.
        let pid = if crate::verify::sabotaged("fsnotify-ns") { std::process::id() as i32 } else { pid };
        let fd = open.by_id.get(&f.id).ok_or_else(|| EngineError::Incompatible(format!("file {} was not opened", f.id)))?;
        if f.inotify.is_some() {
            inotify::watch(f, fd.as_fd(), pid, &open.ghosts())?;
        } else {
            fanotify::mark_all(f, fd.as_fd(), pid)?;
        }
    }
    Ok(())
}

/// Sets the owner for SIGIO and its signal on every restored description
/// that had one, once every task exists (see `fown`); `host` gives the
/// restored host id of an image thread, process or group leader.
pub fn restore_owners(tree: &TreeImage, host: impl Fn(lpm_image::OwnerKind, u32) -> Option<i32>) -> Result<()> {
    fown::restore(tree, host)
}

/// Applies the dump's rules to the file descriptors of process `pid`,
/// which may be running ([`Kind::check`]): each open file description
/// once, as the dump sees them. Every refusal goes to `refusals`; a
/// descriptor closed meanwhile is passed over. Returns the descriptors.
pub fn check(pid: i32, table: &mut FileTable, refusals: &mut Vec<EngineError>) -> Result<Vec<Fd>> {
    walk(pid, table, true, |seen, f, table| {
        match handler(seen, f).and_then(|k| k.check(seen, f, table)).and_then(|_| if opath(f) { Ok(()) } else { fown::check(seen, table) })
        {
            Err(e @ (EngineError::Unsupported { .. } | EngineError::Transient { .. })) => {
                refusals.push(e);
                Ok(())
            }
            // Closed, or its number reused, while it was looked at.
            Err(_) if proc::link(pid, &format!("fd/{}", seen.fd)).ok().as_deref() != Some(seen.link) => Ok(()),
            other => other,
        }
    })
}

/// Lists the descriptors of `pid` and runs `visit` on each open file
/// description the first time it is seen (kcmp finds descriptors that
/// share one, within a process or across the tree), with the generic
/// fields of its image filled. With `running`, a descriptor that is gone
/// by the time it is read is passed over (the process may close it).
fn walk(
    pid: i32,
    table: &mut FileTable,
    running: bool,
    mut visit: impl FnMut(&Seen, &mut FileImage, &mut FileTable) -> Result<()>,
) -> Result<Vec<Fd>> {
    let dir = format!("/proc/{pid}/fd");
    let mut nums: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(io_err(format!("list {dir}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out = Vec::new();
    for fd in nums {
        let read = || -> Result<(String, String, Metadata)> {
            let link = proc::link(pid, &format!("fd/{fd}"))?;
            let fdinfo = proc::read(pid, &format!("fdinfo/{fd}"))?;
            let st = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err(format!("stat fd {fd} of pid {pid}")))?;
            Ok((link, fdinfo, st))
        };
        let (link, fdinfo, st) = match read() {
            Ok(r) => r,
            Err(_) if running && proc::link(pid, &format!("fd/{fd}")).is_err() => continue,
            Err(e) => return Err(e),
        };
        let info = proc::parse_fdinfo(&fdinfo);
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let id = match table.known(pid, fd, flags, (st.dev(), st.ino()))? {
            Some(id) => id,
            None => {
                let seen = Seen { pid, fd, ns_pid: pid, link: &link, st: &st };
                table.describe(&seen, &info, |seen, f, table| visit(seen, f, table))?
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
    _pipes: HashMap<u64, (OwnedFd, OwnedFd)>,
    /// Network namespaces recreated for the tree, by identity: puppets
    /// join them.
    pub net: HashMap<u64, OwnedFd>,
    /// Every inherited file is at this number or above.
    pub base: i32,
    /// Per recorded pty index, a slave the session leader whose
    /// controlling terminal it is takes as such as it is born
    /// ([`tty::give_ctty`]).
    pub(crate) ctty: HashMap<u32, OwnedFd>,
    /// Recorded pty index to the index the host's devpts gave it here.
    pub ptys: HashMap<u32, u32>,
    /// The restoring terminal, when a shell job's descriptors were opened
    /// on it: its foreground group is set once the groups exist.
    pub(crate) terminal: Option<OwnedFd>,
    /// Where puppets of zombies that dumped core write their cores.
    pub(crate) core: Option<crate::zombie::CoreDir>,
    /// An O_PATH descriptor of each ghost (unlinked file or removed
    /// directory) by id, which puppets inherit until their own
    /// descriptors are set: what they map and enter.
    ghosts: HashMap<u64, OwnedFd>,
}

impl OpenFiles {
    /// Nothing open but the network namespaces the puppets join: what
    /// the spawn of a tree made ahead of the stop has (ahead.rs).
    pub(crate) fn only_net(net: HashMap<u64, OwnedFd>) -> OpenFiles {
        OpenFiles {
            by_id: HashMap::new(),
            _holders: Vec::new(),
            _pipes: HashMap::new(),
            net,
            base: 0,
            ctty: HashMap::new(),
            ptys: HashMap::new(),
            terminal: None,
            core: None,
            ghosts: HashMap::new(),
        }
    }

    /// Gives back the network namespaces of [`OpenFiles::only_net`].
    pub(crate) fn into_net(self) -> HashMap<u64, OwnedFd> {
        let OpenFiles { net, .. } = self;
        net
    }

    /// The restorer's descriptor of each memfd of `tree`, by its inode at
    /// dump (puppets inherit them until their own descriptors are set).
    pub fn memfds(&self, tree: &TreeImage) -> HashMap<u64, i32> {
        tree.files.iter().filter_map(|f| Some((f.memfd.as_ref()?.ino, self.by_id.get(&f.id)?.as_raw_fd()))).collect()
    }

    /// The restorer's O_PATH descriptor of each ghost of the image, by
    /// ghost id (puppets inherit them until their own descriptors are
    /// set).
    pub fn ghosts(&self) -> HashMap<u64, i32> {
        self.ghosts.iter().map(|(&id, fd)| (id, fd.as_raw_fd())).collect()
    }
}

/// The kernel's O_LARGEFILE: libc's is 0 on x86_64, where open(2) adds
/// the kernel's to every file it opens (other calls that make files do
/// not), so it tells how a description was made.
pub(crate) const O_LARGEFILE: u32 = 0o100000;

/// Opens every file description of the image in `dir` in the restorer.
pub fn open_all(tree: &TreeImage, dir: &std::path::Path, shell_job: bool) -> Result<OpenFiles> {
    let max_fd = tree.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd)).max().unwrap_or(0) as i32;
    let base = (max_fd + 1).max(64);
    let limit = misc::raise_nofile();
    let needed = base as u64 + tree.files.len() as u64 + tree.ghosts.len() as u64 + 16;
    if limit < needed {
        return Err(EngineError::Incompatible(format!("the tree needs {needed} open files; RLIMIT_NOFILE here is {limit}")));
    }
    // First: a host that cannot remake such a zombie is refused before
    // anything is made.
    let core = crate::zombie::CoreDir::for_tree(tree)?;
    let net = crate::ns::create_net(tree)?;
    let mut cx = OpenCx {
        tree,
        holders: Vec::new(),
        pipes: HashMap::new(),
        sockets: HashMap::new(),
        net: &net,
        ptys: HashMap::new(),
        ghosts: HashMap::new(),
        shell_job,
        terminal: None,
        memfds: HashMap::new(),
        ghost_fds: HashMap::new(),
    };
    let ghosts = regular::make_ghosts(&mut cx, dir, base)?;
    let mut by_id = HashMap::new();
    for f in &tree.files {
        let k = FileKind::try_from(f.kind)
            .ok()
            .and_then(kind)
            .ok_or_else(|| EngineError::Incompatible(format!("file {} has an unknown kind {}", f.id, f.kind)))?;
        let fd = k.open(f, &mut cx)?;
        let fd = misc::move_fd_above(fd, base).step(0, || format!("move file {} above fd {base}", f.id))?;
        by_id.insert(f.id, fd);
    }
    unix::finish_inflight(tree, &by_id, &net)?;
    let mut ctty = HashMap::new();
    for index in tree.processes.iter().filter(|p| p.sid == p.pid).filter_map(|p| p.ctty) {
        let fd = tty::open_ctty(index, &mut cx)?;
        ctty.insert(index, misc::move_fd_above(fd, base).step(0, || format!("move the slave of pty {index} above fd {base}"))?);
    }
    let ptys = tty::indices(&cx)?;
    // Every socket exists: the FINs of half-closed and closing
    // connections come now, before any connection leaves repair mode.
    for f in tree.files.iter().filter(|f| f.socket.as_ref().is_some_and(|s| s.tcp.is_some())) {
        if let Some(fd) = by_id.get(&f.id) {
            inet::settle_fins(f, fd.as_fd())?;
        }
    }
    let (holders, pipes, terminal) = (cx.holders, cx.pipes, cx.terminal);
    Ok(OpenFiles { by_id, _holders: holders, _pipes: pipes, net, base, ctty, ptys, terminal, core, ghosts })
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

/// What the restorer knows that a descriptor's install may need beyond
/// the image.
pub struct Restorer<'a> {
    /// The host pid of an image process.
    pub host_of: &'a dyn Fn(u32) -> Option<i32>,
    /// Where processes that must dump core write it.
    pub core: Option<&'a crate::zombie::CoreDir>,
}

/// Lets every kind finish inside the puppet now that its fds are in place.
/// A process that shares its parent's table (`Process::shares_parent_files`)
/// finishes only what belongs to the process, not to the table.
pub fn install(
    pid: i32,
    r: &mut Remote,
    s: Scratch,
    p: &Process,
    tree: &TreeImage,
    deferred: Option<&mut Vec<Deferred>>,
    with: &Restorer,
) -> Result<()> {
    let (host_of, core) = (with.host_of, with.core);
    let mut deferred = deferred;
    let files: HashMap<u32, &FileImage> = tree.files.iter().map(|f| (f.id, f)).collect();
    for fd in &p.fds {
        let f = files
            .get(&fd.file_id)
            .ok_or_else(|| EngineError::Incompatible(format!("fd {} refers to missing file {}", fd.fd, fd.file_id)))?;
        let k = FileKind::try_from(f.kind)
            .ok()
            .and_then(kind)
            .ok_or_else(|| EngineError::Incompatible(format!("file {} has an unknown kind {}", f.id, f.kind)))?;
        if p.shares_parent_files && FileKind::try_from(f.kind).is_ok_and(per_table) {
            continue;
        }
        if f.flags as i32 & libc::O_ASYNC != 0 && fown::first_holder(tree, f.id) == Some((p.pid, fd.fd)) {
            fown::arm_async(pid, r, fd, f)?;
        }
        if let (Some(list), Some(_)) = (deferred.as_deref_mut(), f.socket.as_ref().and_then(|s| s.tcp.as_ref())) {
            // Once per connection, from the first puppet holding it.
            if !list.iter().any(|d| d.file.id == f.id) {
                list.push(Deferred { pid, fd: fd.clone(), file: (*f).clone(), probe: inet::probes(&tree.files, f, true) });
            }
            continue;
        }
        if let Some(status) = f.pidfd.as_ref().and_then(|t| t.reaped_status) {
            pidfd::install_reaped(pid, r, s, fd, f, p, status, core)?;
            continue;
        }
        if let Some(n) = f.ns.as_ref().filter(|n| n.ns_type != "net") {
            let host = host_of(n.member)
                .ok_or_else(|| EngineError::Incompatible(format!("namespace file {}: its member {} is not in the tree", f.id, n.member)))?;
            nsfd::install_by_member(pid, r, s, fd, f, host)?;
            continue;
        }
        k.install(pid, r, s, fd, f, p)?;
    }
    Ok(())
}

/// Opens `path` with the flags of an image (never creating or truncating).
pub(crate) fn open_path(path: &str, flags: u32) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    // open(2) stores O_ASYNC without arming signal-driven I/O (the file's
    // fasync is not called), and F_SETFL arms it only when the flag
    // changes: it is set by F_SETFL below, never by open.
    let f = std::fs::OpenOptions::new()
        .custom_flags((flags as i32 & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_ASYNC)) | libc::O_CLOEXEC)
        .write(flags as i32 & libc::O_ACCMODE != libc::O_RDONLY)
        .read(flags as i32 & libc::O_ACCMODE != libc::O_WRONLY)
        .open(path)
        .map_err(io_err(format!("open {path}")))?;
    if flags as i32 & libc::O_ASYNC != 0 {
        misc::set_fl(f.as_raw_fd(), flags as i32).step(0, || format!("set O_ASYNC on {path}"))?;
    }
    Ok(f.into())
}

/// The extents `[start, end)` of the first `size` bytes of `file` that
/// hold data (SEEK_DATA, then SEEK_HOLE: nothing is read); `Err` with the
/// bytes counted so far once they pass `max`.
pub(crate) fn data_extents(file: &std::fs::File, size: u64, max: u64) -> std::result::Result<Vec<(u64, u64)>, u64> {
    use std::os::fd::AsFd;
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut off = 0u64;
    while off < size {
        let Some((data, hole)) = misc::next_data(file.as_fd(), off) else { break };
        let end = hole.min(size);
        if data >= end {
            break;
        }
        total += end - data;
        if total > max {
            return Err(total);
        }
        out.push((data, end));
        off = end;
    }
    Ok(out)
}

/// Reads the `extents` of `file` (see [`data_extents`]); `what` names the
/// file in errors.
pub(crate) fn read_extents(file: &std::fs::File, extents: &[(u64, u64)], what: &str) -> Result<Vec<MemfdChunk>> {
    use std::os::unix::fs::FileExt;
    let mut chunks = Vec::with_capacity(extents.len());
    for &(data, end) in extents {
        let mut buf = vec![0u8; (end - data) as usize];
        file.read_exact_at(&mut buf, data).map_err(io_err(format!("read {what} at {data}")))?;
        chunks.push(MemfdChunk { offset: data, data: buf });
    }
    Ok(chunks)
}

/// Whether process `pid` shares its parent's file descriptor table (it
/// was cloned with CLONE_FILES), which the restore rebuilds by cloning it
/// from its parent so; `parent` is its parent when that is in the tree,
/// `earlier` the processes of the tree before it (parents first),
/// `threads` its threads. Refused by name: a table shared with a process
/// of the tree other than its parent's table (a sibling cloned with
/// CLONE_PARENT|CLONE_FILES, say), which no clone from the parent makes,
/// and a thread with a table of its own (cloned without CLONE_FILES),
/// which /proc/PID/fd does not even show. The same rule for the dump and
/// the inspection.
pub fn fd_table(pid: i32, parent: Option<i32>, earlier: &[i32], threads: &[i32]) -> Result<bool> {
    let unsupported = |what: String| EngineError::Unsupported { pid, kind: "file descriptor table", what };
    let step = |other: i32| move || format!("kcmp KCMP_FILES with {other}");
    for &tid in threads.iter().filter(|&&t| t != pid) {
        // A thread that ended meanwhile shares nothing any more.
        if !misc::same_fd_table(pid, tid).unwrap_or(true) {
            return Err(unsupported(format!("thread {tid} has a file descriptor table of its own (cloned without CLONE_FILES)")));
        }
    }
    if let Some(ppid) = parent {
        if misc::same_fd_table(pid, ppid).step(pid, step(ppid))? {
            return Ok(true);
        }
    }
    for &other in earlier.iter().filter(|&&o| Some(o) != parent) {
        // A zombie has no table (kcmp compares two zombies equal).
        if proc::Stat::read(other).map_or(true, |s| s.state() == 'Z') {
            continue;
        }
        if misc::same_fd_table(pid, other).unwrap_or(false) {
            return Err(unsupported(format!(
                "shared with process {other}, which is not its parent (only a table shared with the parent is rebuilt, by cloning with CLONE_FILES)"
            )));
        }
    }
    Ok(false)
}

/// Whether what `install` does for a file of this kind acts on the
/// descriptor table (opens descriptors, registers them in an epoll) rather
/// than on the process (its memory, its session): a process sharing its
/// parent's table leaves that to the parent, which installed the table.
fn per_table(kind: FileKind) -> bool {
    matches!(kind, FileKind::Epoll | FileKind::Mqueue | FileKind::Pidfd | FileKind::Namespace)
}
