//! Unix sockets: stream, datagram and seqpacket; unnamed pairs, bound
//! (path or abstract), listening, connected inside the tree; data queued
//! in each receive queue; shutdown state.
//!
//! Dump: sock_diag (UNIX_DIAG, asked from inside the socket's network
//! namespace) gives state, name, peer, accept queue and shutdown bits; the
//! receive queue is read without consuming it, message by message, with
//! MSG_PEEK and SO_PEEK_OFF on a copy of the task's descriptor
//! (pidfd_getfd). Refused by name: a peer outside the tree, connections
//! waiting in an accept queue, descriptors in flight (SCM_RIGHTS), relative
//! paths, and datagram shapes the restore cannot rebuild.
//!
//! Restore builds every unix socket of the image at once, the first time
//! one is opened, since ends and listeners depend on each other: listeners
//! are bound and listening; a connected pair is a socketpair when neither
//! end has a name, else its client end connects to the listener (the real
//! one, or a temporary one at the accepted end's name) and the accepted end
//! comes out of accept(); datagram sockets are bound, then connected by
//! name. Queues are refilled from the peer end, then shutdowns applied.
//!
//! A socket bound to a path that was unlinked since (or now leads to
//! another file: sock_diag's UNIX_DIAG_VFS names the inode bind made) is
//! bound at that path again, for its name and for the connections made by
//! name, and the path is unlinked once they are made: a socket file
//! coming back would let other programs connect to it. A name taken
//! meanwhile by another file fails the restore rather than take its
//! place.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use lpm_image::{Fd, FileImage, FileKind, Process, SocketImage, SocketState};
use lpm_sys::net::{self, UnixDiag};
use lpm_sys::remote::Remote;

use super::sockets::{self, in_ns};
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{EngineError, Result, StepExt};

/// Unix sockets.
pub struct Unix;

/// Most bytes saved from one receive queue.
const MAX_QUEUE: usize = 64 << 20;
const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

fn diag(seen: &Seen, ino: u64) -> Result<Option<UnixDiag>> {
    sockets::in_task_netns(seen, || net::unix_diag(ino as u32))?.step(seen.pid, || format!("sock_diag unix socket {ino}"))
}

/// A name as the image keeps it: paths without their trailing NUL bytes.
fn clean_name(n: &[u8]) -> Vec<u8> {
    if n.first() == Some(&0) {
        return n.to_vec();
    }
    let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
    n[..end].to_vec()
}

fn show(name: &[u8]) -> String {
    match name.first() {
        None => "unnamed".into(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

fn sockaddr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    a
}

/// Reads a receive queue without consuming it.
fn peek_queue(seen: &Seen, s: BorrowedFd, ty: i32, shut_rd: bool) -> Result<Vec<Vec<u8>>> {
    let old = sockets::opt_int(seen, s, libc::SOL_SOCKET, net::SO_PEEK_OFF, "SO_PEEK_OFF")?;
    net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_PEEK_OFF, 0).step(seen.pid, || format!("set SO_PEEK_OFF on fd {}", seen.fd))?;
    let res = (|| {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | if ty == libc::SOCK_STREAM { 0 } else { libc::MSG_TRUNC };
            let r = match net::recv(s, &mut buf, flags) {
                Ok(r) => r,
                Err(e) if e.errno() == Some(libc::EAGAIN) => break,
                Err(e) => return Err(e).step(seen.pid, || format!("peek the queue of fd {}", seen.fd)),
            };
            if r.full > r.len {
                return Err(seen.unsupported(format!("unix socket: a queued message of {} bytes is too large to save", r.full)));
            }
            if r.len == 0 {
                if ty == libc::SOCK_STREAM || shut_rd {
                    break;
                }
                return Err(seen.unsupported("unix socket: a zero-length message is queued"));
            }
            total += r.len;
            if total > MAX_QUEUE {
                return Err(seen.unsupported(format!("unix socket: more than {MAX_QUEUE} bytes queued")));
            }
            if ty == libc::SOCK_STREAM {
                match out.first_mut() {
                    Some(v) => v.extend_from_slice(&buf[..r.len]),
                    None => out.push(buf[..r.len].to_vec()),
                }
            } else {
                if r.from.len() > 2 {
                    return Err(seen.unsupported(format!(
                        "unix socket: a datagram from the named socket {} is queued",
                        show(&clean_name(&r.from[2..]))
                    )));
                }
                out.push(buf[..r.len].to_vec());
            }
        }
        Ok(out)
    })();
    net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_PEEK_OFF, old).step(seen.pid, || format!("restore SO_PEEK_OFF on fd {}", seen.fd))?;
    res
}

/// Whether the path `name` a socket is bound to no longer leads to the
/// socket file bind made (`vfs`: its inode and device, in the kernel's
/// encoding), as the socket's process sees the path.
fn path_unlinked(seen: &Seen, name: &[u8], vfs: Option<(u32, u32)>) -> bool {
    let (Some(&b'/'), Some((ino, dev))) = (name.first(), vfs) else { return false };
    let path = format!("/proc/{}/root{}", seen.pid, String::from_utf8_lossy(name));
    match std::fs::symlink_metadata(&path) {
        Ok(m) => {
            let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
            m.ino() as u32 != ino || (major << 20 | minor) != dev
        }
        Err(_) => true,
    }
}

fn scm_fds(seen: &Seen) -> Result<u64> {
    let info = crate::proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    Ok(info.lines().find_map(|l| l.strip_prefix("scm_fds:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// A unix socket as sock_diag shows it, the rules applied: its image
/// without the queue and options, and a copy of the descriptor.
struct Observed {
    s: OwnedFd,
    ty: i32,
    shut_rd: bool,
    img: SocketImage,
}

/// Reads a unix socket from outside (sock_diag, fdinfo, getsockopt: the
/// socket is left as it was) and refuses what the restore cannot rebuild.
fn observe(seen: &Seen, table: &FileTable) -> Result<Observed> {
    let s = sockets::take(seen)?;
    let fd = s.as_fd();
    let ty = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let ino = seen.st.ino();
    let net_ns = sockets::netns_of(seen, fd)?;
    let d = diag(seen, ino)?.ok_or_else(|| seen.unsupported("unix socket unknown to sock_diag"))?;
    let name = d.name.as_deref().map(clean_name).unwrap_or_default();
    if !name.is_empty() && name[0] != 0 && name[0] != b'/' {
        return Err(seen.unsupported(format!("unix socket bound to the relative path {}", show(&name))));
    }
    let mut img = SocketImage {
        ino,
        family: libc::AF_UNIX as u32,
        sock_type: ty as u32,
        net_ns,
        name: name.clone(),
        shutdown: d.shutdown as u32,
        state: SocketState::Unconnected as i32,
        unlinked: path_unlinked(seen, &name, d.vfs),
        ..Default::default()
    };
    (img.filter, img.filter_locked) = sockets::filter(seen, fd)?;
    if d.state == TCP_LISTEN {
        if !d.icons.is_empty() || d.rqueue > 0 {
            return Err(seen.transient(format!(
                "unix socket {} has {} connections waiting in its accept queue",
                show(&name),
                d.rqueue.max(d.icons.len() as u32)
            )));
        }
        img.state = SocketState::Listening as i32;
        img.backlog = d.wqueue;
    } else if d.peer != 0 {
        let peer = diag(seen, d.peer as u64)?;
        let peer_name = peer.as_ref().and_then(|p| p.name.as_deref()).map(clean_name).unwrap_or_default();
        if sockets::holder(table, d.peer as u64).is_none() {
            return Err(seen.unsupported(format!("unix socket connected to {} (socket {}) outside the tree", show(&peer_name), d.peer)));
        }
        if ty == libc::SOCK_DGRAM {
            let mutual = peer.as_ref().is_some_and(|p| p.peer as u64 == ino);
            if peer_name.is_empty() && !(mutual && name.is_empty()) {
                return Err(seen.unsupported("unix datagram socket connected to an unnamed socket that is not its pair"));
            }
            if mutual && name.is_empty() != peer_name.is_empty() {
                return Err(seen.unsupported("unix datagram pair with one named end"));
            }
            if !mutual && d.rqueue > 0 {
                return Err(seen.transient("unix datagram socket connected one way with data queued"));
            }
        }
        img.state = SocketState::Connected as i32;
        img.peer_ino = d.peer as u64;
    } else if d.state == TCP_ESTABLISHED && ty != libc::SOCK_DGRAM {
        if d.shutdown & 3 != 3 {
            // The peer has no socket yet: it waits in the accept queue
            // of a listener, which is outside the tree (a listener
            // inside with a non-empty queue is refused on its own).
            return Err(seen.unsupported("unix socket connected to a listener outside the tree (its connection was not accepted yet)"));
        }
        img.state = SocketState::Connected as i32;
        img.peer_closed = true;
    }
    let n = scm_fds(seen)?;
    if n > 0 {
        return Err(seen.transient(format!("unix socket with {n} descriptors in flight (SCM_RIGHTS)")));
    }
    // sock_diag's receive queue length of a socket that does not listen
    // counts the bytes queued.
    if ty == libc::SOCK_DGRAM && img.peer_ino == 0 && name.is_empty() && d.rqueue > 0 {
        return Err(seen.transient("unnamed, unconnected unix datagram socket with data queued"));
    }
    Ok(Observed { s, ty, shut_rd: d.shutdown & 1 != 0, img })
}

impl Kind for Unix {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        observe(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        let Observed { s, ty, shut_rd, mut img } = observe(seen, table)?;
        let fd = s.as_fd();
        // A stream or seqpacket socket never connected has no queue (and
        // recvmsg answers EINVAL on it); a listener's is its accept queue.
        if img.state == SocketState::Connected as i32 || (ty == libc::SOCK_DGRAM && img.state != SocketState::Listening as i32) {
            // Read only here, with the tree stopped: peeking moves the
            // socket's peek offset for a while.
            img.queue = peek_queue(seen, fd, ty, shut_rd)?;
        }
        img.opts = sockets::read_opts(
            fd,
            &[(libc::SOL_SOCKET, libc::SO_PASSCRED), (libc::SOL_SOCKET, libc::SO_RCVTIMEO), (libc::SOL_SOCKET, libc::SO_SNDTIMEO)],
        );
        let peek = sockets::opt_int(seen, fd, libc::SOL_SOCKET, net::SO_PEEK_OFF, "SO_PEEK_OFF")?;
        if peek >= 0 {
            img.opts.push(lpm_image::SockOpt { level: libc::SOL_SOCKET, name: net::SO_PEEK_OFF, value: peek.to_ne_bytes().to_vec() });
        }
        img.opts.extend(sockets::buffer_opts(fd, libc::AF_UNIX, ty, 0));
        f.socket = Some(img);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let ino = sockets::image(f)?.ino;
        if !cx.sockets.contains_key(&ino) {
            build_all(cx)?;
        }
        let fd = cx.sockets.remove(&ino).ok_or_else(|| EngineError::Incompatible(format!("unix socket {ino} is used by two files")))?;
        sockets::set_flags(f, &fd)?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Built whole in the restorer; nothing lives in the puppet's tables.
        Ok(())
    }
}

fn restore_err(s: &SocketImage, what: String) -> impl FnOnce(lpm_sys::Error) -> EngineError {
    let what = format!("unix socket {} ({}): {what}", s.ino, show(&s.name));
    move |source| EngineError::Step { pid: 0, step: what, source }
}

fn path_of(s: &SocketImage) -> &std::path::Path {
    std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&s.name))
}

/// Makes a path name free for bind: a stale socket file left by the
/// checkpointed tree is removed; anything else stays and bind fails. The
/// path of a socket that was unlinked is not its file: whatever is there
/// now stays, and the restore fails naming it.
fn free_path(s: &SocketImage) -> Result<()> {
    if s.name.first().is_none_or(|&b| b == 0) {
        return Ok(());
    }
    let path = path_of(s);
    if s.unlinked {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(EngineError::Incompatible(format!(
                "unix socket {}: its path {} was unlinked, and now another file is there: binding it again would take that file's place",
                s.ino,
                path.display()
            )));
        }
        return Ok(());
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path).map_err(crate::io_err(format!("remove the stale socket file {}", path.display())))?;
    }
    Ok(())
}

fn bind(s: &SocketImage, fd: BorrowedFd) -> Result<()> {
    if s.name.is_empty() {
        return Ok(());
    }
    free_path(s)?;
    net::bind(fd, &sockaddr(&s.name)).map_err(restore_err(s, format!("bind to {}", show(&s.name))))
}

fn ty(s: &SocketImage) -> i32 {
    s.sock_type as i32
}

/// Builds every unix socket of the image into `cx.sockets`.
fn build_all(cx: &mut OpenCx) -> Result<()> {
    let all: Vec<&SocketImage> = cx
        .tree
        .files
        .iter()
        .filter(|f| f.kind == FileKind::UnixSocket as i32)
        .filter_map(|f| f.socket.as_ref())
        .filter(|s| !cx.sockets.contains_key(&s.ino))
        .collect();
    let by_ino: HashMap<u64, &SocketImage> = all.iter().map(|s| (s.ino, *s)).collect();
    // A listener and its accepted ends carry the same name; a socket that
    // still holds the path is another one.
    for s in all.iter().filter(|s| s.unlinked) {
        if let Some(o) = all.iter().find(|o| !o.unlinked && o.name == s.name) {
            return Err(EngineError::Incompatible(format!(
                "unix sockets {} and {} are both bound to {}, which was unlinked in between: the restore cannot give the path to both",
                s.ino,
                o.ino,
                path_of(s).display()
            )));
        }
    }
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    let listening = |s: &SocketImage| s.state == SocketState::Listening as i32;
    // Listeners first: accepted ends come out of them.
    for s in all.iter().filter(|s| listening(s)) {
        let fd = sockets::create(cx, s.net_ns, libc::AF_UNIX, ty(s), 0)?;
        bind(s, fd.as_fd())?;
        net::listen(fd.as_fd(), s.backlog as i32).map_err(restore_err(s, "listen".into()))?;
        made.insert(s.ino, fd);
    }
    for s in &all {
        if made.contains_key(&s.ino) {
            continue;
        }
        let connected = s.state == SocketState::Connected as i32;
        if connected && s.peer_closed {
            // The peer end exists long enough to refill the queue. A named
            // one (an accepted connection carries its listener's name) is
            // accepted from its listener, or from a temporary one at its
            // name, as a connection still open would be.
            let (a, b) = if s.name.is_empty() {
                in_ns(cx, s.net_ns, || net::socketpair(ty(s)))?
            } else {
                let client = SocketImage { ino: 0, name: Vec::new(), unlinked: false, ..(*s).clone() };
                connect_pair(cx, s, &client, &all, &made)?
            };
            fill(s, b.as_fd(), &[])?;
            made.insert(s.ino, a);
            continue;
        }
        let peer = if connected && s.peer_ino != 0 {
            Some(
                *by_ino
                    .get(&s.peer_ino)
                    .ok_or_else(|| EngineError::Incompatible(format!("unix socket {} has no peer {} in the image", s.ino, s.peer_ino)))?,
            )
        } else {
            None
        };
        match peer {
            Some(p) if ty(s) != libc::SOCK_DGRAM || (p.peer_ino == s.ino && s.name.is_empty() && p.name.is_empty()) => {
                if made.contains_key(&p.ino) {
                    continue;
                }
                let (a, b) = connect_pair(cx, s, p, &all, &made)?;
                made.insert(s.ino, a);
                made.insert(p.ino, b);
            }
            _ => {
                let fd = sockets::create(cx, s.net_ns, libc::AF_UNIX, ty(s), 0)?;
                bind(s, fd.as_fd())?;
                made.insert(s.ino, fd);
            }
        }
    }
    // Datagram sockets connect by name once every name is bound.
    for s in all.iter().filter(|s| ty(s) == libc::SOCK_DGRAM && s.state == SocketState::Connected as i32) {
        let p = by_ino[&s.peer_ino];
        if p.name.is_empty() {
            continue; // an unnamed pair, made by socketpair
        }
        net::connect(made[&s.ino].as_fd(), &sockaddr(&p.name)).map_err(restore_err(s, format!("connect to {}", show(&p.name))))?;
    }
    for s in all.iter().filter(|s| !s.queue.is_empty() && !s.peer_closed) {
        let sender = if s.peer_ino != 0 && (ty(s) != libc::SOCK_DGRAM || by_ino[&s.peer_ino].peer_ino == s.ino) {
            made[&s.peer_ino].try_clone().map_err(crate::io_err("dup socket"))?
        } else {
            sockets::create(cx, s.net_ns, libc::AF_UNIX, libc::SOCK_DGRAM, 0)?
        };
        let to = if s.peer_ino != 0 { Vec::new() } else { sockaddr(&s.name) };
        fill(s, sender.as_fd(), &to)?;
    }
    for s in &all {
        let fd = made[&s.ino].as_fd();
        if s.shutdown != 0 && !s.peer_closed && s.state == SocketState::Connected as i32 {
            let how = match s.shutdown & 3 {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            net::shutdown(fd, how).map_err(restore_err(s, "shutdown".into()))?;
        }
    }
    for f in cx.tree.files.iter().filter(|f| f.kind == FileKind::UnixSocket as i32) {
        if let Some(s) = f.socket.as_ref().filter(|s| made.contains_key(&s.ino)) {
            sockets::apply_opts(f, made[&s.ino].as_fd(), &s.opts)?;
            // After the refill, which the filter would have acted on.
            sockets::apply_filter(f, made[&s.ino].as_fd(), s)?;
        }
    }
    // Every connection by name is made and every queue refilled: the
    // paths that were unlinked go again (once each: a listener and its
    // accepted ends share one).
    let mut gone = std::collections::HashSet::new();
    for s in all.iter().filter(|s| s.unlinked && gone.insert(&s.name)) {
        std::fs::remove_file(path_of(s)).map_err(crate::io_err(format!(
            "unlink {} again (unix socket {})",
            path_of(s).display(),
            s.ino
        )))?;
    }
    cx.sockets.extend(made);
    Ok(())
}

/// Recreates a connected pair (`s`, `p`); returns their ends in that order.
fn connect_pair(
    cx: &OpenCx,
    s: &SocketImage,
    p: &SocketImage,
    all: &[&SocketImage],
    made: &HashMap<u64, OwnedFd>,
) -> Result<(OwnedFd, OwnedFd)> {
    if s.name.is_empty() && p.name.is_empty() {
        return in_ns(cx, s.net_ns, || net::socketpair(ty(s)));
    }
    let listener_of = |x: &SocketImage| {
        all.iter()
            .find(|l| l.state == SocketState::Listening as i32 && l.name == x.name && l.net_ns == x.net_ns && l.sock_type == x.sock_type)
    };
    // The accepted end carries the listener's name.
    let (acc, cli, swapped) = match (listener_of(s), listener_of(p)) {
        (Some(_), _) => (s, p, false),
        (None, Some(_)) => (p, s, true),
        (None, None) if !s.name.is_empty() => (s, p, false),
        (None, None) => (p, s, true),
    };
    let temp;
    let listener = match listener_of(acc) {
        Some(l) => made[&l.ino].as_fd(),
        None => {
            let fd = sockets::create(cx, acc.net_ns, libc::AF_UNIX, ty(acc), 0)?;
            bind(acc, fd.as_fd())?;
            net::listen(fd.as_fd(), 1).map_err(restore_err(acc, "listen (temporary listener)".into()))?;
            temp = fd;
            temp.as_fd()
        }
    };
    let c = sockets::create(cx, cli.net_ns, libc::AF_UNIX, ty(cli), 0)?;
    bind(cli, c.as_fd())?;
    net::connect(c.as_fd(), &sockaddr(&acc.name)).map_err(restore_err(cli, format!("connect to {}", show(&acc.name))))?;
    let a = net::accept(listener).map_err(restore_err(acc, "accept".into()))?;
    Ok(if swapped { (c, a) } else { (a, c) })
}

/// Refills `s`'s receive queue by sending from `from` (its peer end, or
/// an unnamed socket sending to `to`).
fn fill(s: &SocketImage, from: BorrowedFd, to: &[u8]) -> Result<()> {
    for m in &s.queue {
        let mut off = 0;
        while off < m.len() {
            off += net::send(from, &m[off..], to, libc::MSG_DONTWAIT).map_err(restore_err(s, "refill the receive queue".into()))?;
            if ty(s) != libc::SOCK_STREAM && off != m.len() {
                return Err(EngineError::Incompatible(format!("unix socket {}: a message was cut while refilling", s.ino)));
            }
        }
    }
    Ok(())
}
