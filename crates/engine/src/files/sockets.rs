//! What the socket kinds (unix.rs, inet.rs, netlink.rs, packet.rs) share: which kind
//! a socket descriptor is, taking the task's socket (pidfd_getfd), the
//! network namespace it lives in, whether a peer is held inside the tree,
//! creating a socket inside a restored namespace, options kept as raw
//! getsockopt values, and socket filters.
//!
//! A classic BPF filter (SO_ATTACH_FILTER) is read back with SO_GET_FILTER
//! and attached again, locked again if it was (SO_LOCK_FILTER), once the
//! restored socket's queues are refilled: a filter runs on what arrives,
//! the restore's own refill included. An eBPF program (SO_ATTACH_BPF) has
//! no classic form to read back and is refused by name.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{FileImage, FileKind, SockOpt, SocketImage};
use lpm_sys::net;

use super::{FileTable, OpenCx, Seen};
use crate::{io_err, EngineError, Result, StepExt};

/// Which kind claims a socket descriptor (by its address family).
pub fn classify(seen: &Seen) -> Result<FileKind> {
    let s = take(seen)?;
    let domain =
        net::getsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).step(seen.pid, || format!("SO_DOMAIN of fd {}", seen.fd))?;
    match domain {
        libc::AF_UNIX => Ok(FileKind::UnixSocket),
        libc::AF_INET | libc::AF_INET6 => Ok(FileKind::InetSocket),
        libc::AF_NETLINK => Ok(FileKind::NetlinkSocket),
        libc::AF_PACKET => Ok(FileKind::PacketSocket),
        other => Err(seen.unsupported(format!("socket of address family {other}"))),
    }
}

/// A copy of the task's socket descriptor (the same open file).
pub fn take(seen: &Seen) -> Result<OwnedFd> {
    net::steal_fd(seen.pid, seen.fd).step(seen.pid, || format!("pidfd_getfd fd {}", seen.fd))
}

/// An int option of a socket taken from `seen`.
pub fn opt_int(seen: &Seen, s: BorrowedFd, level: i32, name: i32, what: &str) -> Result<i32> {
    net::getsockopt_int(s, level, name).step(seen.pid, || format!("getsockopt {what} of fd {}", seen.fd))
}

fn ns_ino(path: &str) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(io_err(format!("stat {path}")))?.ino())
}

/// The identity of the socket's network namespace as the image records it:
/// 0 for lpm's own, else the nsfs inode (which a process of the tree owns).
/// A socket from a namespace other than its process's is refused.
pub fn netns_of(seen: &Seen, s: BorrowedFd) -> Result<u64> {
    let ns = net::socket_netns(s).step(seen.pid, || format!("SIOCGSKNS fd {}", seen.fd))?;
    let ino = ns_ino(&format!("/proc/self/fd/{}", ns.as_raw_fd()))?;
    if ino != ns_ino(&format!("/proc/{}/ns/net", seen.ns_pid))? {
        return Err(seen.unsupported("socket of a network namespace other than its process's"));
    }
    Ok(if ino == ns_ino("/proc/self/ns/net")? { 0 } else { ino })
}

/// Runs `f` inside the socket's network namespace (the one `seen`'s
/// process lives in).
pub fn in_task_netns<T: Send>(seen: &Seen, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/proc/{}/ns/net", seen.ns_pid);
    let ns = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    net::in_netns(ns.as_fd(), f).step(seen.pid, || format!("enter the network namespace of fd {}", seen.fd))
}

/// The process of the tree holding socket inode `ino` in one of its
/// descriptors, if any.
pub fn holder(table: &FileTable, ino: u64) -> Option<i32> {
    let want = format!("socket:[{ino}]");
    table.tree.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str())))
            .unwrap_or(false)
    })
}

/// The classic BPF filter of a socket taken from `seen`, as raw
/// instructions (empty: none), and whether it is locked; an eBPF program
/// is refused.
pub fn filter(seen: &Seen, s: BorrowedFd) -> Result<(Vec<u8>, bool)> {
    let insns = match net::get_filter(s) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) if e.errno() == Some(libc::EACCES) => {
            return Err(seen.unsupported("socket with an eBPF filter (SO_ATTACH_BPF): it has no classic form to read back"));
        }
        Err(e) => return Err(e).step(seen.pid, || format!("SO_GET_FILTER of fd {}", seen.fd)),
    };
    let locked = opt_int(seen, s, libc::SOL_SOCKET, net::SO_LOCK_FILTER, "SO_LOCK_FILTER")? != 0;
    Ok((insns, locked))
}

/// Attaches the filter of a socket image again (and locks it): call once
/// the socket's queues are refilled.
pub fn apply_filter(f: &FileImage, s: BorrowedFd, img: &SocketImage) -> Result<()> {
    if !img.filter.is_empty() {
        net::attach_filter(s, &img.filter)
            .step(0, || format!("file {}: SO_ATTACH_FILTER of {} instructions", f.id, img.filter.len() / 8))?;
    }
    if img.filter_locked {
        net::setsockopt_int(s, libc::SOL_SOCKET, net::SO_LOCK_FILTER, 1).step(0, || format!("file {}: SO_LOCK_FILTER", f.id))?;
    }
    Ok(())
}

/// Reads the options of `list` that the socket supports.
pub fn read_opts(s: BorrowedFd, list: &[(i32, i32)]) -> Vec<SockOpt> {
    let mut out = Vec::new();
    for &(level, name) in list {
        // ICMPV6_FILTER, the longest, is 32 bytes.
        let mut b = [0u8; 64];
        if let Ok(n) = net::getsockopt(s, level, name, &mut b) {
            out.push(SockOpt { level, name, value: b[..n].to_vec() });
        }
    }
    out
}

/// The receive and send buffer sizes, when they differ from what a fresh
/// socket of the same kind gets (the program set them: SO_RCVBUF and
/// SO_SNDBUF lock them).
pub fn buffer_opts(s: BorrowedFd, domain: i32, ty: i32, proto: i32) -> Vec<SockOpt> {
    let Ok(fresh) = net::socket(domain, ty, proto) else { return Vec::new() };
    let mut out = Vec::new();
    for name in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let (Ok(v), Ok(d)) = (net::getsockopt_int(s, libc::SOL_SOCKET, name), net::getsockopt_int(fresh.as_fd(), libc::SOL_SOCKET, name))
        else {
            continue;
        };
        if v != d {
            // getsockopt shows twice what setsockopt asked for.
            out.push(SockOpt { level: libc::SOL_SOCKET, name, value: (v / 2).to_ne_bytes().to_vec() });
        }
    }
    out
}

/// Sets options recorded by [`read_opts`] or [`buffer_opts`].
pub fn apply_opts(f: &FileImage, s: BorrowedFd, opts: &[SockOpt]) -> Result<()> {
    for o in opts {
        net::setsockopt(s, o.level, o.name, &o.value)
            .step(0, || format!("file {}: setsockopt level {} option {}", f.id, o.level, o.name))?;
    }
    Ok(())
}

/// The socket part of a file image, or an error naming the file.
pub fn image(f: &FileImage) -> Result<&SocketImage> {
    f.socket.as_ref().ok_or_else(|| EngineError::Incompatible(format!("socket file {} has no socket state", f.id)))
}

/// Runs `f` in the restored network namespace `net_ns` (0: here).
pub fn in_ns<T: Send>(cx: &OpenCx, net_ns: u64, f: impl FnOnce() -> lpm_sys::Result<T> + Send) -> Result<T> {
    if net_ns == 0 {
        return f().step(0, || "create socket".into());
    }
    let ns =
        cx.net.get(&net_ns).ok_or_else(|| EngineError::Incompatible(format!("no process of the image owns network namespace {net_ns}")))?;
    net::in_netns(ns.as_fd(), f).step(0, || format!("enter network namespace {net_ns}"))?.step(0, || "create socket".into())
}

/// Creates a socket in the restored network namespace `net_ns`.
pub fn create(cx: &OpenCx, net_ns: u64, domain: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    in_ns(cx, net_ns, || net::socket(domain, ty, proto))
}

/// Creates the socket of `img` in its restored network namespace, owned
/// as it was (`SocketImage::owner_uid`).
pub fn create_owned(cx: &OpenCx, img: &SocketImage, domain: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    in_ns(cx, img.net_ns, || net::socket_owned(domain, ty, proto, img.owner_uid, img.owner_gid))
}

/// Applies the file's status flags (O_NONBLOCK, ...) to a restored socket.
pub fn set_flags(f: &FileImage, fd: &OwnedFd) -> Result<()> {
    lpm_sys::misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of socket file {}", f.id))
}
