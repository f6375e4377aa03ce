//! The kernel's process events connector (cn_proc): a netlink socket that
//! hears of every fork on the system as it happens, the parent and the
//! child by pid. Pre-copy uses it to know that no process came into a
//! partition unseen (a process forked and gone between two looks leaves
//! no other trace). The connector talks only to sockets of the initial
//! network namespace: the socket is made there, from a thread of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

/// CN_IDX_PROC and CN_VAL_PROC: the connector's id of process events.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// PROC_CN_MCAST_LISTEN.
const MCAST_LISTEN: u32 = 1;
/// The inode of the initial network namespace (PROC_NET_INIT_INO).
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
/// PROC_EVENT_FORK.
const EVENT_FORK: u32 = 1;
/// sizeof(struct nlmsghdr) and sizeof(struct cn_msg).
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;

/// A fork: a new thread when `child_pid != child_tgid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The parent's process (thread group) id.
    pub parent_tgid: i32,
    /// The child's thread id.
    pub child_pid: i32,
    /// The child's process id.
    pub child_tgid: i32,
}

/// A listening process events socket.
pub struct ProcEvents {
    fd: OwnedFd,
}

fn socket_here() -> std::io::Result<OwnedFd> {
    // SAFETY: socket takes integers only and returns a new descriptor or -1.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_CONNECTOR) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ProcEvents {
    /// Starts listening to fork events (root only). Events from here on
    /// are queued until [`ProcEvents::forks`] reads them.
    pub fn listen() -> Result<ProcEvents> {
        let err = |op: &'static str| move |e: std::io::Error| Error::sys(op, 0, e);
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/ns/net").map_err(err("stat /proc/self/ns/net"))?;
        let fd = if own.ino() == PROC_NET_INIT_INO {
            socket_here().map_err(err("socket NETLINK_CONNECTOR"))?
        } else {
            // Network namespace membership is per thread: a thread of its
            // own joins the initial one (kthreadd's, which is always
            // there), makes the socket and ends.
            let ns = ["/proc/2/ns/net", "/proc/1/ns/net"]
                .iter()
                .filter_map(|p| std::fs::File::open(p).ok())
                .find(|f| f.metadata().is_ok_and(|m| m.ino() == PROC_NET_INIT_INO))
                .ok_or_else(|| err("open the initial network namespace")(std::io::Error::from_raw_os_error(libc::EACCES)))?;
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: setns on a descriptor this thread holds open;
                    // it changes only this thread, which ends right after.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                        return Err(err("setns into the initial network namespace")(std::io::Error::last_os_error()));
                    }
                    socket_here().map_err(err("socket NETLINK_CONNECTOR"))
                })
                .join()
                .unwrap_or_else(|_| Err(err("process events thread")(std::io::Error::other("panicked"))))
            })?
        };
        // Every fork of the machine comes in, and the reader looks only
        // now and then: room for some tens of thousands (each takes about
        // 800 bytes of buffer). Running out is not silent (ENOBUFS).
        let room: libc::c_int = 32 << 20;
        // SAFETY: setsockopt reads an int of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&room as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = CN_IDX_PROC;
        // SAFETY: `sa` is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(err("bind process events socket")(std::io::Error::last_os_error()));
        }
        let mut msg = [0u8; NLMSG_HDR + CN_MSG + 4];
        msg[0..4].copy_from_slice(&((NLMSG_HDR + CN_MSG + 4) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
        msg[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg[32..34].copy_from_slice(&4u16.to_ne_bytes());
        msg[36..40].copy_from_slice(&MCAST_LISTEN.to_ne_bytes());
        // SAFETY: sending from a local buffer of the length passed.
        let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(err("subscribe to process events")(std::io::Error::last_os_error()));
        }
        Ok(ProcEvents { fd })
    }

    /// The socket, to wait for events on.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Appends the forks heard since the last call to `out`. Returns
    /// false when some were lost (the socket's queue overflowed): the
    /// caller must assume any fork happened.
    pub fn forks(&self, out: &mut Vec<Fork>) -> Result<bool> {
        let mut buf = [0u8; 8192];
        let mut complete = true;
        loop {
            // SAFETY: receiving into a local buffer of the length passed.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(complete),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        complete = false;
                        continue;
                    }
                    _ => return Err(Error::sys("read process events", 0, e)),
                }
            }
            let msg = &buf[..n as usize];
            let mut at = 0;
            while at + NLMSG_HDR <= msg.len() {
                let u32_at = |i: usize| u32::from_ne_bytes(msg[i..i + 4].try_into().expect("4 bytes"));
                let len = (u32_at(at) as usize).max(NLMSG_HDR);
                let ev = at + NLMSG_HDR + CN_MSG;
                // struct proc_event: what, cpu, timestamp_ns, then the fork's
                // parent_pid, parent_tgid, child_pid, child_tgid.
                if ev + 32 <= msg.len().min(at + len) && u32_at(ev) == EVENT_FORK {
                    out.push(Fork {
                        parent_tgid: u32_at(ev + 20) as i32,
                        child_pid: u32_at(ev + 24) as i32,
                        child_tgid: u32_at(ev + 28) as i32,
                    });
                }
                at += len.div_ceil(4) * 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hears a fork of this process (root only: the tests run as root).
    #[test]
    fn hears_a_fork_of_this_process() {
        let ev = ProcEvents::listen().expect("listen to process events");
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let mut child = child;
        child.wait().unwrap();
        let mut forks = Vec::new();
        let t = std::time::Instant::now();
        while !forks.iter().any(|f: &Fork| f.child_tgid == pid) {
            assert!(ev.forks(&mut forks).unwrap(), "process events lost");
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "the fork of {pid} was not heard: {forks:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let f = forks.iter().find(|f| f.child_tgid == pid).unwrap();
        assert_eq!(f.parent_tgid, std::process::id() as i32);
        assert_eq!(f.child_pid, pid);
    }
}
