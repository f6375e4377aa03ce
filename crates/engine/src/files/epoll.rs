//! epoll instances and their registrations.
//!
//! The kernel keys an epoll item by (file, descriptor number), so an item
//! can only be made again by a process holding the target at that number:
//! restore creates the empty instance in the restorer and registers every
//! item with remote epoll_ctl inside the owner once its descriptors are in
//! place. Readiness is recomputed by the kernel as each item is added, so
//! events pending at dump are reported again after restore.

use std::os::fd::{AsRawFd, OwnedFd};

use lpm_image::{EpollImage, EpollItem, Fd, FileImage, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;
use rustix::event::epoll;

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::{put, Scratch};
use crate::{io_err, proc, EngineError, Result, StepExt};

/// epoll instances.
pub struct Epoll;

/// Parses one "tfd: N events: HEX data: HEX ..." line of epoll fdinfo.
fn parse_item(line: &str) -> Option<EpollItem> {
    let mut words = line.split_whitespace();
    let mut next_after = |key: &str| -> Option<String> {
        words.by_ref().find(|w| *w == key)?;
        words.next().map(String::from)
    };
    let tfd = next_after("tfd:")?.parse().ok()?;
    let events = u32::from_str_radix(&next_after("events:")?, 16).ok()?;
    let data = u64::from_str_radix(&next_after("data:")?, 16).ok()?;
    Some(EpollItem { tfd, events, data })
}

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLPRI: u32 = libc::EPOLLPRI as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
/// The bits a fired one-shot item keeps (the kernel's EPOLL_PRIVATE_BITS).
const PRIVATE: u32 = (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

/// A one-shot item that has fired and waits for EPOLL_CTL_MOD.
fn disarmed(events: u32) -> bool {
    events & libc::EPOLLONESHOT as u32 != 0 && events & !PRIVATE == 0
}

/// Remote epoll_ctl(EPOLL_CTL_ADD) of `item` with `events` into epoll
/// `epfd` of the owner `pid`.
fn add(pid: i32, r: &mut Remote, s: Scratch, epfd: u32, item: &EpollItem, events: u32) -> Result<()> {
    // struct epoll_event is packed on x86_64: u32 events, u64 data.
    let mut ev = events.to_le_bytes().to_vec();
    ev.extend_from_slice(&item.data.to_le_bytes());
    let addr = put(pid, s, 0, &ev)?;
    r.call(libc::SYS_epoll_ctl, &[epfd as u64, libc::EPOLL_CTL_ADD as u64, item.tfd as u64, addr])
        .step(pid, || format!("remote epoll_ctl(ADD): epoll fd {epfd} target fd {} events {events:#x}", item.tfd))?;
    Ok(())
}

/// Whether the file at `tfd` of `pid` is ready for any event now.
fn ready(pid: i32, tfd: i32) -> Result<bool> {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or_else(|| EngineError::Incompatible(format!("bad pid {pid}")))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| io_err(format!("pidfd_open {pid}"))(e.into()))?;
    let copy = rustix::process::pidfd_getfd(&pidfd, tfd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| io_err(format!("pidfd_getfd fd {tfd} of pid {pid}"))(e.into()))?;
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&copy, PollFlags::IN | PollFlags::OUT | PollFlags::PRI | PollFlags::RDHUP)];
    let n = poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 }))
        .map_err(|e| io_err(format!("poll fd {tfd} of pid {pid}"))(e.into()))?;
    Ok(n > 0)
}

/// Whether registration `tfd` is no longer in the instance's fdinfo.
fn left(seen: &Seen, tfd: u32) -> Result<bool> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    Ok(!info.lines().filter(|l| l.starts_with("tfd:")).filter_map(parse_item).any(|i| i.tfd == tfd))
}

/// The registrations of an epoll instance, or why one cannot be made
/// again.
fn read(seen: &Seen) -> Result<EpollImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let mut items = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let item = parse_item(line).ok_or_else(|| seen.unsupported(format!("epoll fdinfo line {line:?} does not parse")))?;
        // The registration is made again by number in this process: the
        // number must still name the registered file here.
        let open = misc::epoll_target_is_open(seen.pid, seen.fd, item.tfd as i32)
            .step(seen.pid, || format!("compare epoll {} target fd {}", seen.fd, item.tfd));
        if !matches!(open, Ok(true)) && left(seen, item.tfd)? {
            // A running program (an inspection, not a dump of a frozen
            // one) closed the fd after fdinfo was read, and its
            // registration went with it.
            continue;
        }
        if !open? {
            return Err(
                seen.unsupported(format!("epoll registration of fd {}, which is closed or names another file in this process", item.tfd))
            );
        }
        let target = proc::link(seen.pid, &format!("fd/{}", item.tfd))?;
        // A pidfd is recreated inside its puppet after the instance
        // would have registered the stand-in.
        if target == "anon_inode:[pidfd]" {
            return Err(seen.unsupported(format!("epoll registration of fd {}, a pidfd", item.tfd)));
        }
        if disarmed(item.events) && !ready(seen.pid, item.tfd as i32)? {
            return Err(seen.unsupported(format!(
                "fired EPOLLONESHOT registration of fd {}, which is ready for nothing, so it cannot be fired again",
                item.tfd
            )));
        }
        items.push(item);
    }
    items.sort_by_key(|i| i.tfd);
    Ok(EpollImage { owner: seen.pid as u32, items })
}

impl Kind for Epoll {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.epoll = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err(format!("epoll_create for file {}", f.id))(e.into()))?;
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of epoll {}", f.id))?;
        Ok(fd)
    }

    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        let e = f.epoll.as_ref().ok_or_else(|| EngineError::Incompatible(format!("epoll file {} has no registrations", f.id)))?;
        // Once per instance: in its owner, through its lowest descriptor.
        let first = p.fds.iter().find(|x| x.file_id == f.id).map(|x| x.fd);
        if e.owner != p.pid || first != Some(fd.fd) {
            return Ok(());
        }
        // A one-shot item that fired keeps only its private bits, a state
        // epoll_ctl cannot set (it always adds EPOLLERR|EPOLLHUP): such
        // items go in first, armed for any event, and are fired with an
        // epoll_wait while nothing else is registered.
        let (fired, armed): (Vec<&EpollItem>, Vec<&EpollItem>) = e.items.iter().partition(|i| disarmed(i.events));
        for item in &fired {
            let any = EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDHUP;
            add(pid, r, s, fd.fd, item, item.events | any)?;
        }
        if !fired.is_empty() {
            let n = r
                .call(libc::SYS_epoll_wait, &[fd.fd as u64, s.addr, fired.len() as u64, 0])
                .step(pid, || format!("remote epoll_wait to fire the one-shot items of epoll fd {} in pid {}", fd.fd, p.pid))?;
            if n != fired.len() as u64 {
                return Err(EngineError::Incompatible(format!(
                    "epoll fd {} of pid {}: {n} of {} fired one-shot items could be fired again",
                    fd.fd,
                    p.pid,
                    fired.len()
                )));
            }
        }
        for item in &armed {
            add(pid, r, s, fd.fd, item, item.events)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_item() {
        let i = parse_item("tfd:        3 events: c0000019 data:             1234  pos:0 ino:40e sdev:10").expect("parses");
        assert_eq!(i, EpollItem { tfd: 3, events: 0xc000_0019, data: 0x1234 });
        assert!(parse_item("tfd: x events: 1 data: 2").is_none());
    }
}
