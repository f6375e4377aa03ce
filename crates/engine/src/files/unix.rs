//! Unix sockets: stream, datagram and seqpacket; unnamed pairs, bound
//! (path, relative path or abstract), listening with connections waiting
//! in their accept queue, connected inside the tree (or to a peer declared
//! external); data queued in each receive queue, with the descriptors in
//! flight (SCM_RIGHTS) and the datagrams' senders; shutdown state.
//!
//! Dump: sock_diag (UNIX_DIAG, asked from inside the socket's network
//! namespace) gives state, name, peer, accept queue and shutdown bits; the
//! receive queue is read without consuming it, message by message, with
//! MSG_PEEK and SO_PEEK_OFF on a copy of the task's descriptor
//! (pidfd_getfd). A peek installs copies of the descriptors in flight in
//! lpm, which are dumped as files of their own (`files::dump_inflight`).
//! A stream peek hands over a message's descriptors whatever bytes it
//! reads before that message, so a stream queue holding descriptors is
//! read for real, with the tree stopped, and put back at once from its
//! peer ([`take_stream`]). Refused by name: a peer outside the tree (unless
//! declared external), a waiting connection whose client sent data into
//! it, SO_PASSCRED with data queued, and datagram shapes the restore
//! cannot rebuild.
//!
//! Restore builds every unix socket of the image at once, the first time
//! one is opened, since ends and listeners depend on each other: listeners
//! are bound and listening; a connected pair is a socketpair when neither
//! end has a name, else its client end connects to the listener (the real
//! one, or a temporary one at the accepted end's name) and the accepted end
//! comes out of accept(); datagram sockets are bound, then connected by
//! name. Queues are refilled from the peer end (a datagram from a named
//! socket from that socket), then shutdowns applied; waiting connections
//! are made by connecting their clients in order. Queues holding
//! descriptors in flight are refilled once every file of the image is
//! open ([`finish_inflight`]).
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

/// The address to reach socket `s` at from the restorer: its name, or for
/// a relative one its path from the directory it was bound from.
fn addr_of(s: &SocketImage) -> Vec<u8> {
    if s.bind_dir.is_empty() {
        return sockaddr(&s.name);
    }
    sockaddr(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::as_bytes(path_of(s).as_os_str()))
}

fn sockaddr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    a
}

/// A receive queue as read at dump: its messages (stream: segments) and,
/// per message that carries any, the descriptors in flight with it.
#[derive(Default)]
struct Queue {
    msgs: Vec<Vec<u8>>,
    /// Per message that carries any: its descriptors and, for a datagram
    /// from a named socket, that name.
    meta: Vec<(usize, Vec<OwnedFd>, Vec<u8>)>,
}

/// Reads a receive queue without consuming it, message by message with
/// MSG_PEEK and a peek offset; the descriptors in flight come with it
/// (MSG_PEEK installs new copies of them here). A stream queue that holds
/// descriptors is read by [`take_stream`] instead.
fn peek_queue(seen: &Seen, s: BorrowedFd, ty: i32, shut_rd: bool) -> Result<Queue> {
    let old = sockets::opt_int(seen, s, libc::SOL_SOCKET, net::SO_PEEK_OFF, "SO_PEEK_OFF")?;
    net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_PEEK_OFF, 0).step(seen.pid, || format!("set SO_PEEK_OFF on fd {}", seen.fd))?;
    let res = (|| {
        let mut out = Queue::default();
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | if ty == libc::SOCK_STREAM { 0 } else { libc::MSG_TRUNC };
            let (r, anc) = match net::recv_msg(s, &mut buf, flags) {
                Ok(r) => r,
                Err(e) if e.errno() == Some(libc::EAGAIN) => break,
                Err(e) => return Err(e).step(seen.pid, || format!("peek the queue of fd {}", seen.fd)),
            };
            if anc.truncated {
                return Err(seen.unsupported("unix socket: a queued message carries more ancillary data than lpm reads"));
            }
            if anc.creds.is_some() {
                return Err(seen.unsupported(
                    "unix socket with SO_PASSCRED and data queued: the senders' credentials cannot be given again before their processes exist",
                ));
            }
            if r.full > r.len {
                return Err(seen.unsupported(format!("unix socket: a queued message of {} bytes is too large to save", r.full)));
            }
            if r.len == 0 && anc.fds.is_empty() {
                if ty == libc::SOCK_STREAM || shut_rd {
                    break;
                }
                return Err(seen.unsupported("unix socket: a zero-length message is queued"));
            }
            if ty == libc::SOCK_STREAM && !anc.fds.is_empty() {
                // A peek returns the descriptors of the next message that
                // carries any, however few bytes it reads: where that
                // message starts is not to be seen this way.
                return Err(seen.transient("unix stream socket: descriptors in flight arrived while its queue was read"));
            }
            total += r.len;
            if total > MAX_QUEUE {
                return Err(seen.unsupported(format!("unix socket: more than {MAX_QUEUE} bytes queued")));
            }
            if ty == libc::SOCK_STREAM {
                match out.msgs.first_mut() {
                    Some(v) => v.extend_from_slice(&buf[..r.len]),
                    None => out.msgs.push(buf[..r.len].to_vec()),
                }
            } else {
                let from = if r.from.len() > 2 { clean_name(&r.from[2..]) } else { Vec::new() };
                if !anc.fds.is_empty() || !from.is_empty() {
                    out.meta.push((out.msgs.len(), anc.fds, from));
                }
                out.msgs.push(buf[..r.len].to_vec());
            }
        }
        Ok(out)
    })();
    net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_PEEK_OFF, old).step(seen.pid, || format!("restore SO_PEEK_OFF on fd {}", seen.fd))?;
    res
}

/// Reads a stream queue that holds descriptors in flight, exactly, and
/// puts it back. A peek cannot tell where a message with descriptors
/// begins (it returns them whatever it reads before), but a read can: a
/// read hands them over with the first byte it takes of their message.
/// So the queue is read for real, the bytes before each such message one
/// at a time, with the tree stopped, and sent back at once, in order and
/// with the same descriptors, from its peer `peer` (a copy of the peer's
/// descriptor): the same queue as before, the same segments.
fn take_stream(seen: &Seen, s: BorrowedFd, peer: BorrowedFd) -> Result<Queue> {
    let mut q = Queue::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    let mut plain: Vec<u8> = Vec::new();
    let step = |what: &'static str| move || format!("{what} of fd {}", seen.fd);
    let read = (|| -> Result<()> {
        loop {
            net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_PEEK_OFF, 0).step(seen.pid, step("set SO_PEEK_OFF"))?;
            let (r, anc) = match net::recv_msg(s, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                Ok(r) => r,
                Err(e) if e.errno() == Some(libc::EAGAIN) => break,
                Err(e) => return Err(e).step(seen.pid, step("peek the queue")),
            };
            if r.len == 0 {
                break;
            }
            total += r.len;
            if total > MAX_QUEUE {
                return Err(seen.unsupported(format!("unix socket: more than {MAX_QUEUE} bytes queued")));
            }
            if anc.fds.is_empty() {
                let (got, _) = net::recv_msg(s, &mut buf[..r.len], libc::MSG_DONTWAIT).step(seen.pid, step("read the queue"))?;
                plain.extend_from_slice(&buf[..got.len]);
                continue;
            }
            drop(anc);
            // The peeked bytes end with the message carrying descriptors.
            let mut k = 0;
            let fds = loop {
                let (got, anc) = net::recv_msg(s, &mut buf[..1], libc::MSG_DONTWAIT).step(seen.pid, step("read the queue"))?;
                if got.len != 1 {
                    return Err(seen.transient("unix stream socket: its queue changed while it was read"));
                }
                k += 1;
                if !anc.fds.is_empty() || k == r.len {
                    if anc.fds.is_empty() {
                        return Err(seen.transient("unix stream socket: its descriptors in flight were not where the peek found them"));
                    }
                    break anc.fds;
                }
                plain.push(buf[0]);
            };
            let first = buf[0];
            let mut msg = vec![first];
            if k < r.len {
                let (got, _) = net::recv_msg(s, &mut buf[..r.len - k], libc::MSG_DONTWAIT).step(seen.pid, step("read the queue"))?;
                msg.extend_from_slice(&buf[..got.len]);
            }
            if !plain.is_empty() {
                q.msgs.push(std::mem::take(&mut plain));
            }
            q.meta.push((q.msgs.len(), fds, Vec::new()));
            q.msgs.push(msg);
        }
        Ok(())
    })();
    if !plain.is_empty() {
        q.msgs.push(plain);
    }
    // Back in any case: what was read must not be lost.
    for (i, m) in q.msgs.iter().enumerate() {
        let fds: Vec<BorrowedFd> =
            q.meta.iter().find(|(e, ..)| *e == i).map(|(_, f, _)| f.iter().map(|f| f.as_fd()).collect()).unwrap_or_default();
        let mut off = 0;
        while off < m.len() {
            let with: &[BorrowedFd] = if off == 0 { &fds } else { &[] };
            off += net::send_msg(peer, &m[off..], &[], with, None, libc::MSG_DONTWAIT).step(seen.pid, step("put the queue back"))?;
        }
    }
    read?;
    Ok(q)
}

/// Whether the path `name` a socket is bound to no longer leads to the
/// socket file bind made (`vfs`: its inode and device, in the kernel's
/// encoding), as the socket's process sees the path.
fn path_unlinked(seen: &Seen, name: &[u8], vfs: Option<(u32, u32)>) -> bool {
    let (Some(&b'/'), Some(vfs)) = (name.first(), vfs) else { return false };
    !leads_to(&format!("/proc/{}/root{}", seen.ns_pid, String::from_utf8_lossy(name)), vfs)
}

/// Whether `path` names the socket file whose inode and device (in the
/// kernel's encoding) sock_diag gave.
fn leads_to(path: &str, (ino, dev): (u32, u32)) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
        m.ino() as u32 == ino && (major << 20 | minor) == dev
    })
}

/// The directory a relative name was bound from: the process's current
/// directory when the name leads from there to the socket's file (where
/// a program binds it, as a rule); any other is refused by name.
fn bind_dir(seen: &Seen, name: &[u8], vfs: Option<(u32, u32)>) -> Result<String> {
    let refuse = |why: &str| seen.unsupported(format!("unix socket bound to the relative path {}: {why}", show(name)));
    let vfs = vfs.ok_or_else(|| refuse("sock_diag shows no file for it"))?;
    let cwd = crate::proc::link(seen.ns_pid, "cwd")?;
    if !cwd.starts_with('/') || cwd.ends_with(" (deleted)") {
        return Err(refuse("its process's current directory has no path"));
    }
    let full = format!("/proc/{}/root{}/{}", seen.ns_pid, cwd.trim_end_matches('/'), String::from_utf8_lossy(name));
    if !leads_to(&full, vfs) {
        return Err(refuse("it was bound from a directory other than its process's current one, or its file is gone"));
    }
    Ok(cwd)
}

/// Whether a listener held by the tree has the connection of client `ino`
/// waiting in its accept queue.
fn pending_inside(seen: &Seen, table: &FileTable, ino: u64) -> Result<bool> {
    let mut socks = Vec::new();
    for &pid in &table.tree {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
            let Ok(l) = std::fs::read_link(e.path()) else { continue };
            if let Some(n) =
                l.to_str().and_then(|l| l.strip_prefix("socket:[")).and_then(|l| l.strip_suffix(']')).and_then(|n| n.parse::<u64>().ok())
            {
                socks.push(n);
            }
        }
    }
    for n in socks {
        if diag(seen, n)?.is_some_and(|d| d.state == TCP_LISTEN && d.icons.iter().any(|&c| c as u64 == ino)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The process of the tree and its descriptor holding socket `ino`.
fn holder_fd(table: &FileTable, ino: u64) -> Option<(i32, i32)> {
    let want = format!("socket:[{ino}]");
    let pid = sockets::holder(table, ino)?;
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten().find_map(|e| {
        (std::fs::read_link(e.path()).ok()?.as_os_str() == want.as_str())
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
            .map(|fd| (pid, fd))
    })
}

/// Whether a unix socket held by the tree has descriptors in flight in
/// its queue (a peer no process holds may be one of them).
fn tree_has_inflight(table: &FileTable) -> bool {
    table.tree.iter().any(|&pid| {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten().any(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|t| t.lines().any(|l| l.strip_prefix("scm_fds:").is_some_and(|v| v.trim().parse::<u64>().is_ok_and(|n| n > 0))))
        })
    })
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
    /// No process of the tree holds the peer: the refusal, unless the
    /// peer turns out to be in flight or declared external.
    unheld: Option<EngineError>,
    /// Descriptors in flight in its queue, as fdinfo counts them.
    scm_fds: u64,
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
    let relative = !name.is_empty() && name[0] != 0 && name[0] != b'/';
    let dir = if relative { bind_dir(seen, &name, d.vfs)? } else { String::new() };
    let mut img = SocketImage {
        ino,
        family: libc::AF_UNIX as u32,
        sock_type: ty as u32,
        net_ns,
        name: name.clone(),
        shutdown: d.shutdown as u32,
        state: SocketState::Unconnected as i32,
        unlinked: path_unlinked(seen, &name, d.vfs),
        bind_dir: dir,
        ..Default::default()
    };
    (img.filter, img.filter_locked) = sockets::filter(seen, fd)?;
    let mut unheld = None;
    if d.state == TCP_LISTEN {
        if d.icons.len() != d.rqueue as usize {
            return Err(seen.transient(format!(
                "unix socket {}: {} connections wait in its accept queue, sock_diag names {}",
                show(&name),
                d.rqueue,
                d.icons.len()
            )));
        }
        // Each waiting connection is its client's: connected again, in
        // order, by the restore (their embryo sockets come back empty,
        // which each client's own rule makes sure of).
        for &c in &d.icons {
            if sockets::holder(table, c as u64).is_none() {
                return Err(seen.transient(format!(
                    "unix socket {} has {} connections waiting in its accept queue, one from socket {c}, which no process of the tree holds",
                    show(&name),
                    d.icons.len()
                )));
            }
        }
        img.accept_queue = d.icons.iter().map(|&c| c as u64).collect();
        img.state = SocketState::Listening as i32;
        img.backlog = d.wqueue;
    } else if d.peer != 0 {
        let peer = diag(seen, d.peer as u64)?;
        let peer_name = peer.as_ref().and_then(|p| p.name.as_deref()).map(clean_name).unwrap_or_default();
        if sockets::holder(table, d.peer as u64).is_none() {
            let refusal = seen.unsupported(format!(
                "unix socket connected to {} (socket {}) outside the tree (lpm checkpoint --ext-unix-sk declares such peers external)",
                show(&peer_name),
                d.peer
            ));
            // Only the dump sees every queue: the inspection lets a peer
            // pass that may be in flight, or is declared external.
            if !table.ext_unix_sk && !tree_has_inflight(table) {
                return Err(refusal);
            }
            unheld = Some(refusal);
            img.peer_name = peer_name.clone();
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
            // The peer has no socket yet: an embryo waiting in the accept
            // queue of a listener. What this client sent is in that
            // embryo's queue, which nothing reads without accepting it;
            // its send queue counts those bytes.
            if d.wqueue > 0 {
                return Err(seen.transient(
                    "unix socket connected to a listener that has not accepted it yet, with data sent into the waiting connection",
                ));
            }
            let refusal = seen.unsupported(
                "unix socket connected to a listener outside the tree (its connection was not accepted yet; lpm checkpoint --ext-unix-sk declares such peers external)",
            );
            img.state = SocketState::Connected as i32;
            img.peer_name = net::peer_name(fd).ok().and_then(|a| a.get(2..).map(clean_name)).unwrap_or_default();
            if !table.ext_unix_sk && !pending_inside(seen, table, ino)? {
                return Err(refusal);
            }
            unheld = Some(refusal);
            return Ok(Observed { s, ty, shut_rd: d.shutdown & 1 != 0, img, unheld, scm_fds: scm_fds(seen)? });
        }
        img.state = SocketState::Connected as i32;
        img.peer_closed = true;
    }
    let n = scm_fds(seen)?;
    // sock_diag's receive queue length of a socket that does not listen
    // counts the bytes queued.
    if ty == libc::SOCK_DGRAM && img.peer_ino == 0 && name.is_empty() && d.rqueue > 0 {
        return Err(seen.transient("unnamed, unconnected unix datagram socket with data queued"));
    }
    Ok(Observed { s, ty, shut_rd: d.shutdown & 1 != 0, img, unheld, scm_fds: n })
}

impl Kind for Unix {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        observe(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        let Observed { s, ty, shut_rd, mut img, unheld, scm_fds } = observe(seen, table)?;
        let fd = s.as_fd();
        // A stream or seqpacket socket never connected has no queue (and
        // recvmsg answers EINVAL on it); a listener's is its accept queue.
        if img.state == SocketState::Connected as i32 || (ty == libc::SOCK_DGRAM && img.state != SocketState::Listening as i32) {
            // Read only here, with the tree stopped: peeking moves the
            // socket's peek offset for a while.
            let q = if ty == libc::SOCK_STREAM && scm_fds > 0 {
                let (pid, pfd) = holder_fd(table, img.peer_ino).filter(|_| !img.peer_closed).ok_or_else(|| {
                    seen.unsupported("unix stream socket with descriptors in flight whose peer no process of the tree holds: its queue cannot be read and put back")
                })?;
                if shut_rd {
                    return Err(seen.unsupported(
                        "unix stream socket with descriptors in flight, shut down for reading: its queue cannot be put back",
                    ));
                }
                let peer = net::steal_fd(pid, pfd).step(pid, || format!("pidfd_getfd fd {pfd}"))?;
                let old = sockets::opt_int(seen, fd, libc::SOL_SOCKET, net::SO_PEEK_OFF, "SO_PEEK_OFF")?;
                let q = take_stream(seen, fd, peer.as_fd());
                net::setsockopt_int(fd, libc::SOL_SOCKET, net::SO_PEEK_OFF, old)
                    .step(seen.pid, || format!("restore SO_PEEK_OFF on fd {}", seen.fd))?;
                q?
            } else {
                peek_queue(seen, fd, ty, shut_rd)?
            };
            if img.peer_closed && q.meta.iter().any(|(_, f, _)| !f.is_empty()) {
                return Err(seen.unsupported("unix socket whose peer was closed, with descriptors in flight in its queue"));
            }
            img.queue = q.msgs;
            for (entry, fds, from) in q.meta {
                let mut files = Vec::new();
                for f in fds {
                    files.push(super::dump_inflight(seen, f, table)?);
                }
                img.queue_meta.push(lpm_image::QueueMeta { entry: entry as u32, files, from, ..Default::default() });
            }
        }
        if let Some(e) = unheld {
            table.unix_unheld.push((f.id as usize - 1, e));
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

/// The path of a socket's name (a relative one joined to the directory
/// it was bound from).
fn path_of(s: &SocketImage) -> std::path::PathBuf {
    std::path::Path::new(&s.bind_dir).join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&s.name))
}

/// Makes a path name free for bind: a stale socket file left by the
/// checkpointed tree is removed; anything else stays and bind fails. The
/// path of a socket that was unlinked is not its file: whatever is there
/// now stays, and the restore fails naming it.
fn free_path(s: &SocketImage) -> Result<()> {
    if s.name.first().is_none_or(|&b| b == 0) {
        return Ok(());
    }
    let path = &path_of(s);
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
    let what = || format!("bind to {}", show(&s.name));
    if s.bind_dir.is_empty() {
        return net::bind(fd, &sockaddr(&s.name)).map_err(restore_err(s, what()));
    }
    // From the directory it was bound from, so that the name stays
    // relative, as the program and /proc/net/unix know it.
    net::in_dir(std::path::Path::new(&s.bind_dir), || net::bind(fd, &sockaddr(&s.name)))
        .map_err(restore_err(s, format!("enter {}", s.bind_dir)))?
        .map_err(restore_err(s, what()))
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
        if connected && s.external_peer {
            made.insert(s.ino, connect_external(cx, s)?);
            continue;
        }
        if connected && pending(&all, s) {
            // Connected below, in the order of its listener's queue.
            let fd = sockets::create(cx, s.net_ns, libc::AF_UNIX, ty(s), 0)?;
            bind(s, fd.as_fd())?;
            made.insert(s.ino, fd);
            continue;
        }
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
            fill(s, b.as_fd(), &[], |_| Ok(None))?;
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
    // The connections waiting in accept queues, each listener's in its
    // order: each connect puts an embryo at the end of the queue.
    for l in all.iter().filter(|s| !s.accept_queue.is_empty()) {
        for c in &l.accept_queue {
            let s = by_ino
                .get(c)
                .ok_or_else(|| EngineError::Incompatible(format!("unix socket {}: its waiting client {c} is not in the image", l.ino)))?;
            net::connect(made[c].as_fd(), &addr_of(l))
                .map_err(restore_err(s, format!("connect to {} (waiting in its accept queue)", show(&l.name))))?;
        }
    }
    // Datagram sockets connect by name once every name is bound.
    for s in all.iter().filter(|s| ty(s) == libc::SOCK_DGRAM && s.state == SocketState::Connected as i32 && !s.external_peer) {
        let p = by_ino[&s.peer_ino];
        if p.name.is_empty() {
            continue; // an unnamed pair, made by socketpair
        }
        net::connect(made[&s.ino].as_fd(), &addr_of(p)).map_err(restore_err(s, format!("connect to {}", show(&p.name))))?;
    }
    // A queue with descriptors in flight waits for every file of the
    // image to be open ([`finish_inflight`]); so do its socket's shutdown,
    // options and filter, which come after the refill.
    for s in all.iter().filter(|s| !s.queue.is_empty() && !s.peer_closed && !carries(s)) {
        let sender = if s.peer_ino != 0 && (ty(s) != libc::SOCK_DGRAM || by_ino[&s.peer_ino].peer_ino == s.ino) {
            made[&s.peer_ino].try_clone().map_err(crate::io_err("dup socket"))?
        } else {
            sockets::create(cx, s.net_ns, libc::AF_UNIX, libc::SOCK_DGRAM, 0)?
        };
        let to = if s.peer_ino != 0 { Vec::new() } else { addr_of(s) };
        let named = |i: usize| named_sender(s, i, all.iter().map(|o| (*o, made.get(&o.ino).map(|f| f.as_fd()))));
        fill(s, sender.as_fd(), &to, named)?;
    }
    let waits = |s: &SocketImage| waits_inflight(&by_ino, s);
    for s in all.iter().filter(|s| !waits(s)) {
        shut(s, made[&s.ino].as_fd())?;
    }
    for f in cx.tree.files.iter().filter(|f| f.kind == FileKind::UnixSocket as i32) {
        if let Some(s) = f.socket.as_ref().filter(|s| made.contains_key(&s.ino) && !waits(s)) {
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

/// Whether socket `s` waits for [`finish_inflight`]: its own queue holds
/// descriptors in flight, or its peer's does (a shutdown of `s` for
/// writing would stop the refill of its peer's queue).
fn waits_inflight(by_ino: &HashMap<u64, &SocketImage>, s: &SocketImage) -> bool {
    carries(s) || by_ino.get(&s.peer_ino).is_some_and(|p| carries(p))
}

/// Whether `s` is a client whose connection waits in the accept queue of
/// a listener of the image.
fn pending(all: &[&SocketImage], s: &SocketImage) -> bool {
    s.peer_ino == 0 && !s.peer_closed && !s.external_peer && all.iter().any(|l| l.accept_queue.contains(&s.ino))
}

/// Whether descriptors are in flight in `s`'s queue.
fn carries(s: &SocketImage) -> bool {
    s.queue_meta.iter().any(|m| !m.files.is_empty())
}

fn shut(s: &SocketImage, fd: BorrowedFd) -> Result<()> {
    if s.shutdown != 0 && !s.peer_closed && s.state == SocketState::Connected as i32 {
        let how = match s.shutdown & 3 {
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RDWR,
        };
        net::shutdown(fd, how).map_err(restore_err(s, "shutdown".into()))?;
    }
    Ok(())
}

/// Refills the queues that hold descriptors in flight, once every file of
/// the image is open (`open`: the restorer's descriptor of each, by file
/// id): each message is sent again from the socket's peer (or an unnamed
/// socket, to a datagram socket's name) with the same files, in order;
/// then those sockets get their shutdowns, options and filters.
pub fn finish_inflight(tree: &lpm_image::TreeImage, open: &HashMap<u32, OwnedFd>, nets: &HashMap<u64, OwnedFd>) -> Result<()> {
    let unix: Vec<(&FileImage, &SocketImage)> =
        tree.files.iter().filter(|f| f.kind == FileKind::UnixSocket as i32).filter_map(|f| Some((f, f.socket.as_ref()?))).collect();
    let by_ino: HashMap<u64, &SocketImage> = unix.iter().map(|(_, s)| (s.ino, *s)).collect();
    let fd_of = |ino: u64| -> Result<BorrowedFd> {
        let (f, _) = unix
            .iter()
            .find(|(_, s)| s.ino == ino)
            .ok_or_else(|| EngineError::Incompatible(format!("unix socket {ino} is not in the image")))?;
        open.get(&f.id)
            .map(|fd| fd.as_fd())
            .ok_or_else(|| EngineError::Incompatible(format!("unix socket {ino} (file {}) was not opened", f.id)))
    };
    for (_, s) in unix.iter().filter(|(_, s)| carries(s)) {
        let dgram_named = ty(s) == libc::SOCK_DGRAM && by_ino.get(&s.peer_ino).is_none_or(|p| p.peer_ino != s.ino);
        let own;
        let (from, to) = if !dgram_named {
            (fd_of(s.peer_ino)?, Vec::new())
        } else {
            let make = || net::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
            own = match s.net_ns {
                0 => make(),
                ns => {
                    let ns = nets
                        .get(&ns)
                        .ok_or_else(|| EngineError::Incompatible(format!("no process of the image owns network namespace {ns}")))?;
                    net::in_netns(ns.as_fd(), make).map_err(restore_err(s, "enter its network namespace".into()))?
                }
            }
            .map_err(restore_err(s, "create a socket to refill its queue".into()))?;
            (own.as_fd(), addr_of(s))
        };
        for (i, m) in s.queue.iter().enumerate() {
            let mut fds = Vec::new();
            for id in s.queue_meta.iter().filter(|q| q.entry as usize == i).flat_map(|q| &q.files) {
                fds.push(
                    open.get(id)
                        .ok_or_else(|| EngineError::Incompatible(format!("unix socket {}: file {id} in flight was not opened", s.ino)))?
                        .as_fd(),
                );
            }
            let from = named_sender(s, i, unix.iter().map(|(f, o)| (*o, open.get(&f.id).map(|fd| fd.as_fd()))))?.unwrap_or(from);
            let mut off = 0;
            while off < m.len() || (off == 0 && m.is_empty()) {
                let with: &[BorrowedFd] = if off == 0 { &fds } else { &[] };
                off += net::send_msg(from, &m[off..], &to, with, None, libc::MSG_DONTWAIT)
                    .map_err(restore_err(s, format!("refill message {i} of its queue with {} descriptors", with.len())))?;
                if ty(s) != libc::SOCK_STREAM && off != m.len() {
                    return Err(EngineError::Incompatible(format!("unix socket {}: a message was cut while refilling", s.ino)));
                }
                if m.is_empty() {
                    break;
                }
            }
        }
    }
    for (f, s) in unix.iter().filter(|(_, s)| waits_inflight(&by_ino, s)) {
        let fd = fd_of(s.ino)?;
        shut(s, fd)?;
        sockets::apply_opts(f, fd, &s.opts)?;
        sockets::apply_filter(f, fd, s)?;
    }
    Ok(())
}

/// A socket connected to an external peer (`--ext-unix-sk`), connected
/// again to the peer's name: a new connection to whatever listens (or is
/// bound) there now, not the old one.
fn connect_external(cx: &OpenCx, s: &SocketImage) -> Result<OwnedFd> {
    let fd = sockets::create(cx, s.net_ns, libc::AF_UNIX, ty(s), 0)?;
    bind(s, fd.as_fd())?;
    net::connect(fd.as_fd(), &sockaddr(&s.peer_name))
        .map_err(restore_err(s, format!("connect again to its external peer {}", show(&s.peer_name))))?;
    Ok(fd)
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
    net::connect(c.as_fd(), &addr_of(acc)).map_err(restore_err(cli, format!("connect to {}", show(&acc.name))))?;
    let a = net::accept(listener).map_err(restore_err(acc, "accept".into()))?;
    Ok(if swapped { (c, a) } else { (a, c) })
}

/// Refills `s`'s receive queue by sending from `from` (its peer end, or
/// an unnamed socket sending to `to`).
fn fill<'a>(s: &SocketImage, from: BorrowedFd<'a>, to: &[u8], named: impl Fn(usize) -> Result<Option<BorrowedFd<'a>>>) -> Result<()> {
    for (i, m) in s.queue.iter().enumerate() {
        let from = named(i)?.unwrap_or(from);
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

/// The socket that sent datagram `i` of `s`'s queue, when that one came
/// from a named socket (`QueueMeta::from`): the socket of the image bound
/// to that name, which sends it again so that the receiver reads the same
/// source address. `socks`: every unix socket with its restored
/// descriptor.
fn named_sender<'a, 'b>(
    s: &SocketImage,
    i: usize,
    socks: impl Iterator<Item = (&'b SocketImage, Option<BorrowedFd<'a>>)>,
) -> Result<Option<BorrowedFd<'a>>> {
    let Some(from) = s.queue_meta.iter().find(|m| m.entry as usize == i && !m.from.is_empty()).map(|m| &m.from) else { return Ok(None) };
    for (o, fd) in socks {
        if &o.name == from && o.sock_type == libc::SOCK_DGRAM as u32 && o.net_ns == s.net_ns {
            return fd
                .map(Some)
                .ok_or_else(|| EngineError::Incompatible(format!("unix socket {}: the sender {} was not made", s.ino, show(from))));
        }
    }
    Err(EngineError::Incompatible(format!(
        "unix socket {}: datagram {i} came from {}, which no socket of the image is bound to",
        s.ino,
        show(from)
    )))
}

/// Resolves, once every queue is read, the unix sockets whose peer no
/// process holds: a peer found in flight is inside the tree; any other is
/// refused, unless the caller declared such peers external
/// (`--ext-unix-sk`): then the socket is recorded as connected to an
/// external peer, which the restore reconnects by name. Data queued from
/// an external peer is refused (only the peer can queue it again), and
/// so is an unnamed one, which nothing can reach.
pub fn reconcile(table: &mut FileTable) -> Result<()> {
    let inside: std::collections::HashSet<u64> =
        table.files.iter().filter(|f| f.kind == FileKind::UnixSocket as i32).filter_map(|f| f.socket.as_ref()).map(|s| s.ino).collect();
    // A datagram from a named socket is sent again by the socket bound to
    // that name: one of the tree's.
    let names: std::collections::HashSet<(&[u8], u64)> = table
        .files
        .iter()
        .filter(|f| f.kind == FileKind::UnixSocket as i32)
        .filter_map(|f| f.socket.as_ref())
        .filter(|s| s.sock_type == libc::SOCK_DGRAM as u32 && !s.name.is_empty())
        .map(|s| (s.name.as_slice(), s.net_ns))
        .collect();
    for (i, f) in table.files.iter().enumerate() {
        let Some(s) = f.socket.as_ref().filter(|_| f.kind == FileKind::UnixSocket as i32) else { continue };
        if let Some(m) = s.queue_meta.iter().find(|m| !m.from.is_empty() && !names.contains(&(m.from.as_slice(), s.net_ns))) {
            let (pid, fd, _, _) = table.owners[i];
            return Err(EngineError::Unsupported {
                pid,
                kind: "file descriptor",
                what: format!(
                    "fd {fd} -> socket:[{}]: a datagram queued from {}, a datagram socket outside the tree (or closed): no restore can send it from there",
                    s.ino,
                    show(&m.from)
                ),
            });
        }
    }
    let waiting: std::collections::HashSet<u64> = table
        .files
        .iter()
        .filter(|f| f.kind == FileKind::UnixSocket as i32)
        .filter_map(|f| f.socket.as_ref())
        .flat_map(|s| s.accept_queue.iter().copied())
        .collect();
    for (i, refusal) in std::mem::take(&mut table.unix_unheld) {
        let Some(s) = table.files.get_mut(i).and_then(|f| f.socket.as_mut()) else { continue };
        if (s.peer_ino != 0 && inside.contains(&s.peer_ino)) || (s.peer_ino == 0 && waiting.contains(&s.ino)) {
            s.peer_name.clear();
            continue;
        }
        if !table.ext_unix_sk {
            return Err(refusal);
        }
        let what = match refusal {
            EngineError::Unsupported { pid, what, .. } => (pid, what),
            other => return Err(other),
        };
        let refuse = |why: &str| EngineError::Unsupported {
            pid: what.0,
            kind: "file descriptor",
            what: format!("{}, declared external: {why}", what.1),
        };
        if !s.queue.is_empty() {
            return Err(refuse("data it queued cannot be queued again by anyone but itself"));
        }
        if s.peer_name.is_empty() {
            return Err(refuse("it has no name to reconnect to"));
        }
        s.external_peer = true;
        s.peer_ino = 0;
    }
    Ok(())
}
