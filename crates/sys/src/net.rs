//! Sockets: the socket calls lpm makes on descriptors it took from a task
//! (pidfd_getfd) or creates for a restore, with raw addresses and option
//! values; TCP repair mode; unix sock_diag queries; network namespaces and
//! interface flags.
//!
//! Addresses are raw `struct sockaddr_*` bytes and option values raw bytes,
//! so that the engine builds and reads them without unsafe code.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{cvt, Error, Result};

/// `SIOCINQ`: bytes in the receive queue (TCP: unread; unix stream: all).
pub const SIOCINQ: u64 = 0x541B;
/// `SIOCOUTQ`: bytes in the send queue not yet acknowledged.
pub const SIOCOUTQ: u64 = 0x5411;
/// `SIOCOUTQNSD`: bytes in the send queue not yet sent.
pub const SIOCOUTQNSD: u64 = 0x894B;
/// `SIOCGSKNS`: a descriptor for the socket's network namespace.
const SIOCGSKNS: u64 = 0x894C;
/// `SO_PEEK_OFF`.
pub const SO_PEEK_OFF: i32 = 42;
/// `TCP_REPAIR_OFF`: leave repair mode, sending a window probe.
pub const TCP_REPAIR_OFF: i32 = 0;
/// `TCP_REPAIR_OFF_NO_WP`: leave repair mode without a window probe.
pub const TCP_REPAIR_OFF_NO_WP: i32 = -1;
/// `NETLINK_LIST_MEMBERSHIPS`.
pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

fn err(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::sys(op, 0, e)
}

/// Takes a copy of descriptor `fd` of process `pid` (pidfd_getfd): the same
/// open file, so options set on it are the task's.
pub fn steal_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| Error::sys("pidfd_open", pid, io::Error::from_raw_os_error(libc::ESRCH)))?;
    let pidfd =
        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(|e| Error::sys("pidfd_open", pid, e.into()))?;
    rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| Error::sys("pidfd_getfd", pid, e.into()))
}

/// `socket(domain, ty | SOCK_CLOEXEC, proto)`.
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    // SAFETY: socket takes integers only.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) }).map_err(err("socket"))?;
    // SAFETY: socket returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the calling thread's filesystem uid and gid (raw syscalls, which
/// change this thread only), checking that they took.
fn set_fs_ids(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: the raw setfsgid and setfsuid syscalls change the
    // credentials of the calling thread only; they take integers.
    let (g, u) = unsafe {
        libc::syscall(libc::SYS_setfsgid, gid as i64);
        libc::syscall(libc::SYS_setfsuid, uid as i64);
        // Each returns the id in force, which is the one asked for once
        // it took.
        (libc::syscall(libc::SYS_setfsgid, gid as i64), libc::syscall(libc::SYS_setfsuid, uid as i64))
    };
    if g != gid as i64 || u != uid as i64 {
        return Err(Error::sys("setfsuid/setfsgid", 0, io::Error::from_raw_os_error(libc::EPERM)));
    }
    Ok(())
}

/// `socket(domain, ty | SOCK_CLOEXEC, proto)` owned by `uid` and `gid`
/// (the socket's inode, and its sk_uid, take the creator's filesystem
/// ids): from a short-lived thread with those filesystem ids when they
/// are not the caller's. Capabilities other than the filesystem ones stay.
pub fn socket_owned(domain: i32, ty: i32, proto: i32, uid: u32, gid: u32) -> Result<OwnedFd> {
    // SAFETY: getuid and getgid have no preconditions.
    if (uid, gid) == unsafe { (libc::getuid(), libc::getgid()) } {
        return socket(domain, ty, proto);
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            set_fs_ids(uid, gid)?;
            socket(domain, ty, proto)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("socket thread", 0, io::Error::other("panicked"))))
    })
}

/// Creates an ICMP ("ping") socket, `socket(domain, SOCK_DGRAM, proto)`,
/// owned by `uid` and `gid` (see [`socket_owned`]), in the calling
/// thread's network namespace, which lets only the gids of its
/// `net.ipv4.ping_group_range` make one (root included): from a
/// short-lived thread whose effective gid is the first of that range when
/// the caller's is not in it. Credentials are per thread in the kernel:
/// the caller's stay as they are.
pub fn ping_socket(domain: i32, proto: i32, uid: u32, gid: u32) -> Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd> {
            let path = "/proc/sys/net/ipv4/ping_group_range";
            let text = std::fs::read_to_string(path).map_err(err("read /proc/sys/net/ipv4/ping_group_range"))?;
            let r: Vec<u32> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            let (lo, hi) = match r[..] {
                [lo, hi] if lo <= hi => (lo, hi),
                _ => return Err(Error::sys("ping_group_range allows no gid", 0, io::Error::from_raw_os_error(libc::EACCES))),
            };
            // SAFETY: getegid has no preconditions.
            let egid = unsafe { libc::getegid() };
            if !(lo..=hi).contains(&egid) {
                // SAFETY: the raw setresgid syscall (not glibc's, which would
                // change every thread) changes the credentials of this
                // short-lived thread only.
                cvt(unsafe { libc::syscall(libc::SYS_setresgid, -1i64, lo as i64, -1i64) }).map_err(err("setresgid"))?;
            }
            // After setresgid, which sets the filesystem gid too.
            set_fs_ids(uid, gid)?;
            socket(domain, libc::SOCK_DGRAM, proto)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("ping socket thread", 0, io::Error::other("panicked"))))
    })
}

/// `socketpair(AF_UNIX, ty | SOCK_CLOEXEC)`.
pub fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }).map_err(err("socketpair"))?;
    // SAFETY: socketpair returned two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `bind` to a raw sockaddr.
pub fn bind(fd: BorrowedFd, addr: &[u8]) -> Result<()> {
    // SAFETY: addr is a readable buffer of the length passed.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as u32) }).map_err(err("bind"))?;
    Ok(())
}

/// `connect` to a raw sockaddr.
pub fn connect(fd: BorrowedFd, addr: &[u8]) -> Result<()> {
    // SAFETY: addr is a readable buffer of the length passed.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as u32) }).map_err(err("connect"))?;
    Ok(())
}

/// `listen`.
pub fn listen(fd: BorrowedFd, backlog: i32) -> Result<()> {
    // SAFETY: integers only.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(err("listen"))?;
    Ok(())
}

/// `accept4(.., SOCK_CLOEXEC)`, ignoring the peer address.
pub fn accept(fd: BorrowedFd) -> Result<OwnedFd> {
    // SAFETY: null address pointers are allowed.
    let r = cvt(unsafe { libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) })
        .map_err(err("accept"))?;
    // SAFETY: accept4 returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `shutdown(how)`.
pub fn shutdown(fd: BorrowedFd, how: i32) -> Result<()> {
    // SAFETY: integers only.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map_err(err("shutdown"))?;
    Ok(())
}

fn name_of(fd: BorrowedFd, peer: bool) -> Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len describe a writable buffer; the kernel writes at
    // most len bytes and stores the full length in len.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len)
        }
    };
    cvt(r).map_err(err(if peer { "getpeername" } else { "getsockname" }))?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// `getsockname` as raw sockaddr bytes.
pub fn local_name(fd: BorrowedFd) -> Result<Vec<u8>> {
    name_of(fd, false)
}

/// `getpeername` as raw sockaddr bytes (ENOTCONN when not connected).
pub fn peer_name(fd: BorrowedFd) -> Result<Vec<u8>> {
    name_of(fd, true)
}

/// `getsockopt` into `buf`; returns the length the kernel wrote.
pub fn getsockopt(fd: BorrowedFd, level: i32, name: i32, buf: &mut [u8]) -> Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len describe a writable buffer.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) }).map_err(err("getsockopt"))?;
    Ok((len as usize).min(buf.len()))
}

/// `getsockopt` of an int option.
pub fn getsockopt_int(fd: BorrowedFd, level: i32, name: i32) -> Result<i32> {
    let mut b = [0u8; 4];
    getsockopt(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

/// `setsockopt` from raw bytes.
pub fn setsockopt(fd: BorrowedFd, level: i32, name: i32, val: &[u8]) -> Result<()> {
    // SAFETY: val is a readable buffer of the length passed.
    cvt(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), val.len() as u32) }).map_err(err("setsockopt"))?;
    Ok(())
}

/// `setsockopt` of an int option.
pub fn setsockopt_int(fd: BorrowedFd, level: i32, name: i32, val: i32) -> Result<()> {
    setsockopt(fd, level, name, &val.to_ne_bytes())
}

/// An int-returning socket ioctl (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: BorrowedFd, req: u64) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut libc::c_int) }).map_err(err("socket ioctl"))?;
    Ok(v)
}

/// `SO_GET_FILTER` (the same number as SO_ATTACH_FILTER).
const SO_GET_FILTER: i32 = 26;
/// `SO_LOCK_FILTER`.
pub const SO_LOCK_FILTER: i32 = 44;
/// Size of one classic BPF instruction (`struct sock_filter`).
pub const BPF_INSN: usize = 8;

/// The classic BPF filter attached to a socket (SO_GET_FILTER), as raw
/// `struct sock_filter` bytes; None when it has none. An eBPF program
/// (SO_ATTACH_BPF) has no classic form to give back: the kernel answers
/// EACCES, which is returned as the error.
pub fn get_filter(fd: BorrowedFd) -> Result<Option<Vec<u8>>> {
    // SO_GET_FILTER counts in instructions, not bytes, both ways: asked
    // with a length of 0 it only says how many there are.
    let mut n: libc::socklen_t = 0;
    // SAFETY: a zero length: the kernel writes nothing but `n`.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_GET_FILTER, std::ptr::null_mut(), &mut n) })
        .map_err(err("getsockopt SO_GET_FILTER"))?;
    if n == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; n as usize * BPF_INSN];
    let mut len = n;
    // SAFETY: buf holds `n` instructions, the count passed in `len`.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_GET_FILTER, buf.as_mut_ptr().cast(), &mut len) })
        .map_err(err("getsockopt SO_GET_FILTER"))?;
    buf.truncate(len as usize * BPF_INSN);
    Ok(Some(buf))
}

/// Attaches a classic BPF filter given as raw `struct sock_filter` bytes
/// (SO_ATTACH_FILTER).
pub fn attach_filter(fd: BorrowedFd, insns: &[u8]) -> Result<()> {
    if insns.is_empty() || !insns.len().is_multiple_of(BPF_INSN) || insns.len() / BPF_INSN > u16::MAX as usize {
        return Err(Error::sys("setsockopt SO_ATTACH_FILTER", 0, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // The kernel copies the program during the call; it only reads it.
    let prog = libc::sock_fprog { len: (insns.len() / BPF_INSN) as u16, filter: insns.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prog points at `len` instructions in `insns`, alive for the
    // call; the option's value is the sock_fprog itself.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    })
    .map_err(err("setsockopt SO_ATTACH_FILTER"))?;
    Ok(())
}

/// The events `poll` reports on a socket at once (POLLIN, POLLOUT,
/// POLLRDHUP, POLLHUP, ...), without waiting.
pub fn poll_now(fd: BorrowedFd) -> Result<i16> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one pollfd, a zero timeout.
    cvt(unsafe { libc::poll(&mut p, 1, 0) }).map_err(err("poll"))?;
    Ok(p.revents)
}

/// The socket's network namespace (SIOCGSKNS), as a descriptor.
pub fn socket_netns(fd: BorrowedFd) -> Result<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor.
    let r = cvt(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _, 0) }).map_err(err("SIOCGSKNS"))?;
    // SAFETY: the ioctl returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// What one `recvmsg` saw.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Bytes of data.
    pub len: usize,
    /// What recvmsg returned: with MSG_TRUNC on a datagram, the full length
    /// of the message, larger than `len` when the buffer was too small.
    pub full: usize,
    /// msg_flags.
    pub flags: i32,
    /// Sender address (raw sockaddr), empty when none.
    pub from: Vec<u8>,
}

/// `recvmsg` with `flags` (MSG_PEEK, MSG_DONTWAIT, MSG_TRUNC for datagrams,
/// ...), no control buffer (so no descriptor in flight is ever installed
/// here).
pub fn recv(fd: BorrowedFd, buf: &mut [u8], flags: i32) -> Result<Received> {
    let mut from = [0u8; 128];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = from.len() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points at the iovec and name buffer above, valid for the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    let full = cvt(n as i64).map_err(err("recvmsg"))? as usize;
    Ok(Received { len: full.min(buf.len()), full, flags: msg.msg_flags, from: from[..(msg.msg_namelen as usize).min(128)].to_vec() })
}

/// Sender credentials of a unix message (`struct ucred`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creds {
    /// Process id, as the receiver's pid namespace sees it.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// What [`recv_msg`] read besides the data.
pub struct Ancillary {
    /// Descriptors passed with SCM_RIGHTS, installed close-on-exec here.
    pub fds: Vec<OwnedFd>,
    /// SCM_CREDENTIALS, when the socket passes them (SO_PASSCRED).
    pub creds: Option<Creds>,
    /// The control buffer was too small (MSG_CTRUNC): descriptors were
    /// lost to the caller.
    pub truncated: bool,
}

/// Room for the most descriptors one message carries (SCM_MAX_FD, 253)
/// and one `struct ucred`.
const CONTROL_LEN: usize = 2048;

/// `recvmsg` with `flags` like [`recv`], also reading the ancillary data
/// (descriptors in flight, which MSG_PEEK installs here as new copies of
/// the same open files, and credentials).
pub fn recv_msg(fd: BorrowedFd, buf: &mut [u8], flags: i32) -> Result<(Received, Ancillary)> {
    let mut from = [0u8; 128];
    let mut control = [0u64; CONTROL_LEN / 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = from.len() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN;
    // SAFETY: msg points at the iovec, name and control buffers above,
    // valid for the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    let full = cvt(n as i64).map_err(err("recvmsg"))? as usize;
    let mut anc = Ancillary { fds: Vec::new(), creds: None, truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 };
    // SAFETY: msg's control buffer was filled by the kernel; the CMSG
    // macros walk it within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c points at a complete cmsghdr inside the control buffer.
        let h = unsafe { &*c };
        // SAFETY: as above; CMSG_LEN(0) is the header's length.
        let data_len = h.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
        // SAFETY: the data follows the header inside the buffer.
        let data = unsafe { libc::CMSG_DATA(c) };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            for i in 0..data_len / 4 {
                // SAFETY: data_len bytes of ints follow; read unaligned.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<i32>().add(i)) };
                // SAFETY: the kernel installed this descriptor for us.
                anc.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_CREDENTIALS && data_len >= 12 {
            // SAFETY: a struct ucred follows; read unaligned.
            let u = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
            anc.creds = Some(Creds { pid: u.pid, uid: u.uid, gid: u.gid });
        }
        // SAFETY: walks to the next header within the buffer, or null.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok((Received { len: full.min(buf.len()), full, flags: msg.msg_flags, from: from[..(msg.msg_namelen as usize).min(128)].to_vec() }, anc))
}

/// `sendmsg` of `data` to `to` (empty: the connected peer) passing `fds`
/// with SCM_RIGHTS and `creds` with SCM_CREDENTIALS; returns the bytes
/// sent.
pub fn send_msg(fd: BorrowedFd, data: &[u8], to: &[u8], fds: &[BorrowedFd], creds: Option<Creds>, flags: i32) -> Result<usize> {
    let mut control = [0u64; CONTROL_LEN / 8];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if !to.is_empty() {
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len() as u32;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let rights = (fds.len() * 4) as u32;
    let cred_len = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let need = unsafe {
        (if fds.is_empty() { 0 } else { libc::CMSG_SPACE(rights) }) + if creds.is_some() { libc::CMSG_SPACE(cred_len) } else { 0 }
    } as usize;
    if need > CONTROL_LEN {
        return Err(Error::sys("sendmsg", 0, io::Error::from_raw_os_error(libc::E2BIG)));
    }
    if need > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = need;
        // SAFETY: the control buffer holds `need` bytes, room for both
        // headers and their data as CMSG_SPACE counted them.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            if !fds.is_empty() {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(rights) as usize;
                for (i, f) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>().add(i), f.as_raw_fd());
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if let Some(cr) = creds {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(cred_len) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>(), libc::ucred { pid: cr.pid, uid: cr.uid, gid: cr.gid });
            }
        }
    }
    // SAFETY: msg points at the data, address and control buffers above.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
    Ok(cvt(n as i64).map_err(err("sendmsg"))? as usize)
}

/// Runs `f` on a short-lived thread with a working directory of its own,
/// `dir` (a unix socket bound there to a relative path takes its name from
/// it); the caller's stays where it is.
pub fn in_dir<T: Send>(dir: &std::path::Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) gives only this thread its own
            // working directory; the thread ends right after.
            cvt(unsafe { libc::unshare(libc::CLONE_FS) }).map_err(err("unshare(CLONE_FS)"))?;
            std::env::set_current_dir(dir).map_err(err("chdir"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("chdir thread", 0, io::Error::other("panicked"))))
    })
}

/// `sendto` (`to` empty: send); returns the bytes sent.
pub fn send(fd: BorrowedFd, data: &[u8], to: &[u8], flags: i32) -> Result<usize> {
    let (p, l) = if to.is_empty() { (std::ptr::null(), 0) } else { (to.as_ptr(), to.len() as u32) };
    // SAFETY: data and the optional address are readable buffers of the
    // lengths passed.
    let n = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags | libc::MSG_NOSIGNAL, p.cast(), l) };
    Ok(cvt(n as i64).map_err(err("sendto"))? as usize)
}

/// Creates a new network namespace (from a short-lived thread, so the
/// caller stays where it is) and returns a descriptor for it.
pub fn new_netns() -> Result<OwnedFd> {
    std::thread::spawn(|| -> Result<OwnedFd> {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
        // namespace; the thread ends right after.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map_err(err("unshare(CLONE_NEWNET)"))?;
        let f = std::fs::File::open("/proc/thread-self/ns/net").map_err(err("open /proc/thread-self/ns/net"))?;
        Ok(f.into())
    })
    .join()
    .unwrap_or_else(|_| Err(Error::sys("netns thread", 0, io::Error::other("panicked"))))
}

/// Runs `f` on a short-lived thread that joined network namespace `ns`
/// (sockets it creates belong to that namespace).
pub fn in_netns<T: Send>(ns: BorrowedFd, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::Network))
                .map_err(|e| Error::sys("setns(CLONE_NEWNET)", 0, e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::sys("netns thread", 0, io::Error::other("panicked"))))
    })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    r
}

/// Interface flags (SIOCGIFFLAGS) of `name`, through any socket of its
/// namespace.
pub fn if_flags(sock: BorrowedFd, name: &str) -> Result<u32> {
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFFLAGS reads and writes the ifreq we pass.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut r) }).map_err(err("SIOCGIFFLAGS"))?;
    // SAFETY: the kernel filled the flags member of the union.
    Ok(unsafe { r.ifr_ifru.ifru_flags } as u16 as u32)
}

/// Sets interface flags (SIOCSIFFLAGS).
pub fn set_if_flags(sock: BorrowedFd, name: &str, flags: u32) -> Result<()> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_flags = flags as u16 as i16;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut r) }).map_err(err("SIOCSIFFLAGS"))?;
    Ok(())
}

/// What sock_diag tells about one unix socket.
#[derive(Clone, Debug, Default)]
pub struct UnixDiag {
    /// Inode.
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub ty: u8,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7) or TCP_LISTEN (10).
    pub state: u8,
    /// Bound name (path, or abstract with a leading NUL), if any.
    pub name: Option<Vec<u8>>,
    /// Inode of the peer (0: none).
    pub peer: u32,
    /// Inodes of connections waiting in a listener's accept queue.
    pub icons: Vec<u32>,
    /// Receive queue: bytes, or for a listener its accept queue length.
    pub rqueue: u32,
    /// Send queue bytes, or for a listener its backlog.
    pub wqueue: u32,
    /// sk_shutdown bits (1: receive, 2: send).
    pub shutdown: u8,
    /// The inode of the socket file a path name was bound to, with its
    /// device in the kernel's own encoding (major << 20 | minor), as bind
    /// made it: None for unnamed and abstract sockets.
    pub vfs: Option<(u32, u32)>,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10; // NAME, VFS, PEER, ICONS, RQLEN

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|x| u32::from_ne_bytes(x.try_into().unwrap_or_default())).unwrap_or(0)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map(|x| u16::from_ne_bytes(x.try_into().unwrap_or_default())).unwrap_or(0)
}

/// Sends netlink request `req` to the kernel on `nl` and returns the
/// first datagram of the answer.
fn ask_kernel(nl: &OwnedFd, req: &[u8]) -> Result<Vec<u8>> {
    use std::os::fd::AsFd;
    let mut kernel = [0u8; 12];
    kernel[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    send(nl.as_fd(), req, &kernel, 0)?;
    let mut buf = vec![0u8; 16384];
    let got = recv(nl.as_fd(), &mut buf, 0)?;
    buf.truncate(got.len);
    Ok(buf)
}

/// Sends dump request `req` to the kernel on sock_diag socket `nl` and
/// hands `each` the payload of every message of the answer, until its
/// end; an error answer fails naming `what`.
fn dump_diag(nl: &OwnedFd, req: &[u8], what: &'static str, mut each: impl FnMut(&[u8])) -> Result<()> {
    use std::os::fd::AsFd;
    let mut kernel = [0u8; 12];
    kernel[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    send(nl.as_fd(), req, &kernel, 0)?;
    let mut buf = vec![0u8; 32768];
    loop {
        let got = recv(nl.as_fd(), &mut buf, 0)?;
        let b = &buf[..got.len];
        let mut off = 0;
        while off + 16 <= b.len() {
            let len = u32_at(b, off) as usize;
            let ty = u16_at(b, off + 4);
            if len < 16 || off + len > b.len() {
                break;
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let e = -(u32_at(b, off + 16) as i32);
                    return Err(Error::sys(what, 0, io::Error::from_raw_os_error(e)));
                }
                SOCK_DIAG_BY_FAMILY => each(&b[off + 16..off + len]),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// Parses one unix_diag_msg with its attributes.
fn parse_unix_diag(m: &[u8]) -> Option<UnixDiag> {
    if m.len() < 16 {
        return None;
    }
    let mut d = UnixDiag { ty: m[1], state: m[2], ino: u32_at(m, 4), ..Default::default() };
    let mut off = 16;
    while off + 4 <= m.len() {
        let len = u16_at(m, off) as usize;
        let ty = u16_at(m, off + 2);
        if len < 4 || off + len > m.len() {
            break;
        }
        let val = &m[off + 4..off + len];
        match ty {
            0 => d.name = Some(val.to_vec()),
            1 if val.len() >= 8 => d.vfs = Some((u32_at(val, 0), u32_at(val, 4))),
            2 => d.peer = u32_at(val, 0),
            3 => d.icons = val.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            4 => {
                d.rqueue = u32_at(val, 0);
                d.wqueue = u32_at(val, 4);
            }
            6 => d.shutdown = val.first().copied().unwrap_or(0),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(d)
}

/// Asks sock_diag about the unix socket with inode `ino` in the network
/// namespace of the calling thread; None when the kernel knows no such
/// socket there.
pub fn unix_diag(ino: u32) -> Result<Option<UnixDiag>> {
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.extend_from_slice(&[0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // states
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let buf = ask_kernel(&nl, &req)?;
    let b = buf.as_slice();
    let mut off = 0;
    while off + 16 <= b.len() {
        let len = u32_at(b, off) as usize;
        let ty = u16_at(b, off + 4);
        if len < 16 || off + len > b.len() {
            break;
        }
        match ty {
            NLMSG_ERROR => {
                let e = -(u32_at(b, off + 16) as i32);
                if e == 0 {
                    return Ok(None);
                }
                if e == libc::ENOENT {
                    return Ok(None);
                }
                return Err(Error::sys("sock_diag unix", 0, io::Error::from_raw_os_error(e)));
            }
            NLMSG_DONE => return Ok(None),
            SOCK_DIAG_BY_FAMILY => return Ok(parse_unix_diag(&b[off + 16..off + len])),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(None)
}

/// What netlink_diag tells about one netlink socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetlinkDiag {
    /// Inode.
    pub ino: u32,
    /// Protocol (NETLINK_ROUTE, ...).
    pub protocol: u8,
    /// 0: unconnected, 1: connected (connect(2), to a port id or the
    /// kernel's 0).
    pub state: u8,
    /// Its own port id.
    pub portid: u32,
    /// The port id it is connected to.
    pub dst_portid: u32,
    /// The group it is connected to (a group number, 0: none).
    pub dst_group: u32,
}

/// Every netlink socket of every protocol in the network namespace of the
/// calling thread (netlink_diag lists them all: it looks up none by
/// inode).
pub fn netlink_diag() -> Result<Vec<NetlinkDiag>> {
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
    // nlmsghdr, then netlink_diag_req: family, protocol (255: all), pad,
    // inode, show flags, cookie.
    let mut req = Vec::with_capacity(36);
    req.extend_from_slice(&36u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_NETLINK as u8, 255, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut out = Vec::new();
    dump_diag(&nl, &req, "sock_diag netlink", |m| {
        // netlink_diag_msg: family, type, protocol, state, portid,
        // dst_portid, dst_group, inode, cookie.
        if m.len() >= 20 {
            out.push(NetlinkDiag {
                protocol: m[2],
                state: m[3],
                portid: u32_at(m, 4),
                dst_portid: u32_at(m, 8),
                dst_group: u32_at(m, 12),
                ino: u32_at(m, 16),
            });
        }
    })?;
    Ok(out)
}

/// What packet_diag tells about one packet socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketDiag {
    /// Inode.
    pub ino: u32,
    /// The protocol it is bound to, host byte order (`po->num`).
    pub num: u16,
    /// Interface index (0: every interface).
    pub ifindex: u32,
    /// PACKET_VERSION.
    pub version: u32,
    /// PACKET_RESERVE.
    pub reserve: u32,
    /// PACKET_COPY_THRESH (which no getsockopt reads).
    pub copy_thresh: u32,
    /// PACKET_TIMESTAMP.
    pub tstamp: u32,
    /// PDI_RUNNING 1, PDI_AUXDATA 2, PDI_ORIGDEV 4, PDI_VNETHDR 8, PDI_LOSS 16.
    pub flags: u32,
    /// Memberships: interface index, count, type, address.
    pub mclist: Vec<(u32, u32, u16, Vec<u8>)>,
    /// An RX ring is set up (PACKET_RX_RING).
    pub rx_ring: bool,
    /// A TX ring is set up (PACKET_TX_RING).
    pub tx_ring: bool,
}

/// The packet socket with inode `ino` in the network namespace of the
/// calling thread, as packet_diag shows it; None when it lists no such
/// socket.
pub fn packet_diag(ino: u32) -> Result<Option<PacketDiag>> {
    const SHOW: u32 = 0x1 | 0x2 | 0x4; // INFO, MCLIST, RING_CFG
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
    // nlmsghdr, then packet_diag_req: family, protocol, pad, inode, show
    // flags, cookie.
    let mut req = Vec::with_capacity(36);
    req.extend_from_slice(&36u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&SHOW.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut found = None;
    dump_diag(&nl, &req, "sock_diag packet", |m| {
        // packet_diag_msg: family, type, num, inode, cookie (16 bytes),
        // then attributes.
        if m.len() >= 16 && u32_at(m, 4) == ino {
            found = Some(parse_packet_diag(m));
        }
    })?;
    Ok(found)
}

fn parse_packet_diag(m: &[u8]) -> PacketDiag {
    let mut d = PacketDiag { num: u16_at(m, 2), ino: u32_at(m, 4), ..Default::default() };
    let mut a = 16;
    while a + 4 <= m.len() {
        let alen = u16_at(m, a) as usize;
        if alen < 4 || a + alen > m.len() {
            break;
        }
        let v = &m[a + 4..a + alen];
        match u16_at(m, a + 2) {
            // PACKET_DIAG_INFO
            0 if v.len() >= 24 => {
                (d.ifindex, d.version, d.reserve, d.copy_thresh, d.tstamp, d.flags) =
                    (u32_at(v, 0), u32_at(v, 4), u32_at(v, 8), u32_at(v, 12), u32_at(v, 16), u32_at(v, 20));
            }
            // PACKET_DIAG_MCLIST: packet_diag_mclist, 44 bytes each.
            1 => {
                for e in v.chunks_exact(44) {
                    let alen = (u16_at(e, 10) as usize).min(32);
                    d.mclist.push((u32_at(e, 0), u32_at(e, 4), u16_at(e, 8), e[12..12 + alen].to_vec()));
                }
            }
            2 => d.rx_ring = true,
            3 => d.tx_ring = true,
            _ => {}
        }
        a += (alen + 3) & !3;
    }
    d
}

/// The name of interface `index` in the calling thread's network
/// namespace.
pub fn if_name(index: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(Error::sys("if_indextoname", 0, io::Error::last_os_error()));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

const INET_DIAG_SHUTDOWN: u16 = 8;

/// A sock_diag request for every socket of `family` and `proto`, in every
/// state: nlmsghdr, then inet_diag_req_v2 (family, protocol, ext, pad,
/// states, and a zero inet_diag_sockid of 48 bytes).
fn inet_diag_dump(family: i32, proto: i32) -> Vec<u8> {
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[family as u8, proto as u8, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&[0u8; 48]);
    req
}

/// The shutdown bits (1: receive, 2: send) of the inet socket with inode
/// `ino`, family `family` and protocol `proto` in the network namespace
/// of the calling thread, as sock_diag shows them; None when sock_diag
/// does not list it (a socket never bound, which no table holds).
pub fn inet_shutdown(family: i32, proto: i32, ino: u64) -> Result<Option<u8>> {
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
    let req = inet_diag_dump(family, proto);
    let mut found = None;
    dump_diag(&nl, &req, "sock_diag inet", |m| {
        // inet_diag_msg: 4 bytes, the sockid (48), expires, rqueue,
        // wqueue, uid, inode: 72 bytes, then attributes.
        if m.len() >= 72 && u32_at(m, 68) as u64 == ino {
            let mut a = 72;
            while a + 4 <= m.len() {
                let alen = u16_at(m, a) as usize;
                if alen < 4 || a + alen > m.len() {
                    break;
                }
                if u16_at(m, a + 2) == INET_DIAG_SHUTDOWN && alen > 4 {
                    found = Some(m[a + 4]);
                }
                a += (alen + 3) & !3;
            }
        }
    })?;
    Ok(found)
}

/// One TCP socket of an inet_diag dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpDiag {
    /// TCP state (TCP_ESTABLISHED = 1 ... TCP_LISTEN = 10); a connection
    /// in the handshake (a request socket) shows as SYN_RECV (3).
    pub state: u8,
    /// Local address: 4 bytes (AF_INET) or 16 (AF_INET6), network order.
    pub src: Vec<u8>,
    /// Local port.
    pub sport: u16,
    /// Peer address, as `src`.
    pub dst: Vec<u8>,
    /// Peer port.
    pub dport: u16,
    /// Socket inode; 0 for request and time-wait sockets, which no file
    /// holds.
    pub ino: u64,
}

/// Every TCP socket of family `family` (AF_INET or AF_INET6) in the
/// network namespace of the calling thread, in every state, as one
/// inet_diag dump lists them (the same sockets as /proc/net/tcp{,6}, at
/// a quarter of the cost: the kernel's established hash table is walked
/// once, not once per read(2) of the file).
pub fn tcp_diag(family: i32) -> Result<Vec<TcpDiag>> {
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
    let req = inet_diag_dump(family, libc::IPPROTO_TCP);
    let alen = if family == libc::AF_INET { 4 } else { 16 };
    let mut out = Vec::new();
    dump_diag(&nl, &req, "sock_diag tcp", |m| {
        // inet_diag_msg: family, state, timer, retrans; the sockid (sport
        // and dport big-endian, src and dst 16 bytes each, if, cookie);
        // expires, rqueue, wqueue, uid, inode.
        if m.len() < 72 {
            return;
        }
        out.push(TcpDiag {
            state: m[1],
            sport: u16::from_be_bytes([m[4], m[5]]),
            dport: u16::from_be_bytes([m[6], m[7]]),
            src: m[8..8 + alen].to_vec(),
            dst: m[24..24 + alen].to_vec(),
            ino: u32_at(m, 68) as u64,
        });
    })?;
    Ok(out)
}

const RTM_NEWLINK: u16 = 16;
const IFLA_MASTER: u16 = 10;

/// The index of interface `name` in the calling thread's network
/// namespace.
pub fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::sys("if_nametoindex", 0, io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(Error::sys("if_nametoindex", 0, io::Error::last_os_error()));
    }
    Ok(i)
}

/// Puts interface `name` on bridge `master`, or takes it off its bridge
/// with None (`ip link set NAME master M` / `nomaster`), by one rtnetlink
/// request in the calling thread's network namespace. The migration locks
/// and unlocks a partition's network this way inside its downtime, where
/// running `ip` costs a fork and an exec (2 ms here, more under load).
pub fn set_link_master(name: &str, master: Option<&str>) -> Result<()> {
    let index = if_index(name)?;
    let master = match master {
        Some(m) => if_index(m)?,
        None => 0,
    };
    let nl = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_ROUTE)?;
    // nlmsghdr (16) + ifinfomsg (16) + IFLA_MASTER attribute (8).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
    req.extend_from_slice(&(index as i32).to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // flags
    req.extend_from_slice(&0u32.to_ne_bytes()); // change
    req.extend_from_slice(&8u16.to_ne_bytes());
    req.extend_from_slice(&IFLA_MASTER.to_ne_bytes());
    req.extend_from_slice(&master.to_ne_bytes());
    let buf = ask_kernel(&nl, &req)?;
    let b = buf.as_slice();
    if b.len() >= 20 && u16_at(b, 4) == NLMSG_ERROR {
        let e = -(u32_at(b, 16) as i32);
        if e == 0 {
            return Ok(());
        }
        return Err(Error::sys("rtnetlink set master", 0, io::Error::from_raw_os_error(e)));
    }
    Err(Error::sys("rtnetlink set master (no acknowledgement)", 0, io::Error::from_raw_os_error(libc::EPROTO)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn unix_diag_sees_a_socketpair_and_peek_keeps_data() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).expect("socketpair");
        let st = |fd: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("stat").ino() as u32
        };
        send(a.as_fd(), b"one", &[], 0).expect("send");
        send(a.as_fd(), b"three", &[], 0).expect("send");
        let d = unix_diag(st(&b)).expect("diag").expect("known");
        assert_eq!(d.peer, st(&a));
        assert_eq!(d.ty as i32, libc::SOCK_SEQPACKET);
        assert_eq!(d.rqueue, 8);
        setsockopt_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF, 0).expect("peek off");
        let mut buf = [0u8; 16];
        let r1 = recv(b.as_fd(), &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).expect("peek");
        assert_eq!(&buf[..r1.len], b"one");
        let r2 = recv(b.as_fd(), &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).expect("peek");
        assert_eq!(&buf[..r2.len], b"three");
        assert_eq!(recv(b.as_fd(), &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).unwrap_err().errno(), Some(libc::EAGAIN));
        setsockopt_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF, -1).expect("peek off");
        let r = recv(b.as_fd(), &mut buf, libc::MSG_DONTWAIT).expect("read");
        assert_eq!(&buf[..r.len], b"one");
    }
}
