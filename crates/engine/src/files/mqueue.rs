//! POSIX message queues (mq_open descriptors): name, capacity, message
//! size, mode, owner and the queued messages with their priorities.
//!
//! Dump reopens the queue through /proc/PID/fd/N (a description of lpm's
//! own, non-blocking, so the tree's flags are untouched), takes every
//! message with mq_timedreceive and sends them all back in the order they
//! came out (highest priority first, oldest first within one), which
//! rebuilds the queue exactly; on any failure midway what was taken is
//! sent back before the error is returned. The tree is stopped, so no
//! process of it is waiting in the queue's receiver or sender lists.
//!
//! Restore: the queue lives in the ipc namespace the tree owns, which only
//! exists once the puppets are cloned, so the restorer holds a placeholder
//! (/dev/null) for the file; [`Kind::install`] creates the queue (once, from
//! a thread that joined the puppet's ipc namespace, after `ipc::restore` put
//! the namespace's fs.mqueue limits back), refills it, then has the puppet
//! open it by remote mq_open with the recorded flags over the placeholder.
//! Descriptors of one process sharing a description stay shared (dup3);
//! processes that shared one (by fork) get one description each, with the
//! same flags.
//!
//! Refused by name: queues of the host's ipc namespace (shared with the
//! host), unlinked queues, queues with a registered notification (mq_notify).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, MqMessage, MqueueImage, Process};
use lpm_sys::ipc as sys;
use lpm_sys::remote::Remote;

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::{put_path, Scratch};
use crate::{io_err, proc, EngineError, Result, StepExt};

/// statfs f_type of the mqueue filesystem.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// POSIX message queue descriptors.
pub struct Mqueue;

/// Whether the descriptor is a file of an mqueue filesystem.
pub(super) fn is_mqueue(seen: &Seen) -> bool {
    rustix::fs::statfs(format!("/proc/{}/fd/{}", seen.pid, seen.fd)).is_ok_and(|st| st.f_type == MQUEUE_MAGIC)
}

/// A "KEY:value" field of the text an mqueue file reads as.
fn field(text: &str, key: &str) -> Option<i64> {
    text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix(':')?.parse().ok())
}

/// Takes every message of the queue open at `q` and sends them back in the
/// same order; on failure, sends back what was taken.
fn read_messages(q: &OwnedFd, msgsize: usize) -> std::result::Result<Vec<MqMessage>, lpm_sys::Error> {
    let mut taken = Vec::new();
    let took = loop {
        match sys::mq_receive_now(q.as_fd(), msgsize) {
            Ok(Some((prio, data))) => taken.push(MqMessage { prio, data }),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut back = Ok(());
    for m in &taken {
        if let Err(e) = sys::mq_send_now(q.as_fd(), m.prio, &m.data) {
            tracing::error!(prio = m.prio, len = m.data.len(), error = %e, "message taken from a POSIX queue could not be sent back");
            if back.is_ok() {
                back = Err(e);
            }
        }
    }
    took.and(back).map(|()| taken)
}

/// Refuses a queue the restore cannot make again: of the host's ipc
/// namespace, unlinked, or with a notification registered (read from the
/// text the queue's file reads as, which changes nothing).
fn rules(seen: &Seen) -> Result<()> {
    if proc::link(seen.pid, "ns/ipc")? == proc::link(std::process::id() as i32, "ns/ipc")? {
        return Err(seen.unsupported("POSIX message queue of the host's ipc namespace, which the tree does not own"));
    }
    if seen.st.nlink() == 0 || seen.link.ends_with(" (deleted)") {
        return Err(seen.unsupported("unlinked POSIX message queue"));
    }
    let path = format!("/proc/{}/fd/{}", seen.pid, seen.fd);
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("read {path}")))?;
    match field(&text, "NOTIFY_PID") {
        Some(0) => Ok(()),
        Some(_) => Err(seen.unsupported("POSIX message queue with a registered notification (mq_notify)")),
        None => Err(seen.unsupported(format!("POSIX message queue reading as {text:?}"))),
    }
}

impl Kind for Mqueue {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        rules(seen)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        rules(seen)?;
        let path = format!("/proc/{}/fd/{}", seen.pid, seen.fd);
        use std::os::unix::fs::OpenOptionsExt;
        let q: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(format!("reopen {path}")))?
            .into();
        let attr = sys::mq_getattr(q.as_fd()).step(seen.pid, || format!("mq_getattr of fd {}", seen.fd))?;
        let messages = read_messages(&q, attr.mq_msgsize as usize).step(seen.pid, || format!("copy the messages of fd {}", seen.fd))?;
        if messages.len() as i64 != attr.mq_curmsgs as i64 {
            return Err(seen.unsupported(format!("{} messages queued, {} read", attr.mq_curmsgs, messages.len())));
        }
        f.mqueue = Some(MqueueImage {
            name: seen.link.to_string(),
            maxmsg: attr.mq_maxmsg as i64,
            msgsize: attr.mq_msgsize as i64,
            mode: seen.st.mode() & 0o7777,
            uid: seen.st.uid(),
            gid: seen.st.gid(),
            messages,
        });
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        f.mqueue.as_ref().ok_or_else(|| missing(f))?;
        super::open_path("/dev/null", libc::O_RDONLY as u32)
    }

    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        let q = f.mqueue.as_ref().ok_or_else(|| missing(f))?;
        let cloexec = if fd.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        // Another descriptor of this process already holds the description.
        if let Some(first) = p.fds.iter().find(|o| o.file_id == fd.file_id).filter(|o| o.fd != fd.fd) {
            r.call(libc::SYS_dup3, &[first.fd as u64, fd.fd as u64, cloexec]).step(pid, || format!("remote dup3 to fd {}", fd.fd))?;
            return Ok(());
        }
        crate::ipc::in_ns(pid, || create(pid, q))?;
        let name = put_path(pid, s, 0, q.name.trim_start_matches('/'))?;
        // Not O_CLOEXEC: mq_open keeps its flags in the description as
        // given (fdinfo would show it) and always makes the fd close-on-exec.
        let flags = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK);
        let got = r.call(libc::SYS_mq_open, &[name, flags as u64, 0, 0]).step(pid, || format!("remote mq_open {}", q.name))?;
        let res = r.call(libc::SYS_dup3, &[got, fd.fd as u64, cloexec]).step(pid, || format!("remote dup3 to fd {}", fd.fd));
        r.call(libc::SYS_close, &[got]).step(pid, || format!("remote close of fd {got}"))?;
        res.map(|_| ())
    }
}

fn missing(f: &FileImage) -> EngineError {
    EngineError::Incompatible(format!("message queue file {} has no queue state", f.id))
}

/// Creates queue `q` with its messages in the calling thread's ipc
/// namespace, unless an earlier file of the image already did.
fn create(pid: i32, q: &MqueueImage) -> Result<()> {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK;
    let fd = match sys::mq_open(&q.name, flags, q.mode & 0o777, Some((q.maxmsg, q.msgsize))) {
        Ok(fd) => fd,
        Err(e) if e.errno() == Some(libc::EEXIST) => return Ok(()),
        Err(e) => return Err(EngineError::Step { pid, step: format!("create message queue {}", q.name), source: e }),
    };
    for (i, m) in q.messages.iter().enumerate() {
        sys::mq_send_now(fd.as_fd(), m.prio, &m.data).step(pid, || format!("send message {i} to queue {}", q.name))?;
    }
    let raw = fd.as_raw_fd();
    rustix::fs::fchown(fd.as_fd(), Some(rustix::fs::Uid::from_raw(q.uid)), Some(rustix::fs::Gid::from_raw(q.gid)))
        .map_err(|e| io_err(format!("chown message queue {} (fd {raw})", q.name))(e.into()))?;
    rustix::fs::fchmod(fd.as_fd(), rustix::fs::Mode::from_raw_mode(q.mode & 0o7777))
        .map_err(|e| io_err(format!("chmod message queue {}", q.name))(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queue_file() {
        let text = "QSIZE:129        NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n";
        assert_eq!(field(text, "QSIZE"), Some(129));
        assert_eq!(field(text, "NOTIFY_PID"), Some(0));
        assert_eq!(field("QSIZE:3 NOTIFY:2 SIGNO:10 NOTIFY_PID:4242\n", "NOTIFY_PID"), Some(4242));
        assert_eq!(field(text, "OTHER"), None);
    }
}
