//! Dirty-page tracking for pre-copy: which pages a running process wrote
//! since the last look.
//!
//! This kernel has no soft-dirty bits, so tracking uses userfaultfd
//! write-protection in asynchronous mode: a userfaultfd is created inside
//! the task by a remote syscall (it acts on the mm of its creator), taken
//! into lpm with pidfd_getfd and closed in the task again, so the task's fd
//! table is unchanged. Every writable private area is registered and
//! write-protected; a write then only marks its page, and PAGEMAP_SCAN
//! reports written pages and re-protects them in one atomic step. Areas
//! mapped after the start count as wholly dirty and are registered from
//! then on. The process runs while its areas are registered: one it
//! unmaps or changes between the read of its maps and the registration is
//! skipped and counts as new at the next collection. Dropping the tracker closes the last reference to the
//! userfaultfd, which unregisters everything: an abort leaves the process
//! as it was.
//!
//! Shared memory objects whose only writers are page tables (a MAP_SHARED
//! anonymous area's object, a SysV segment: see [`shm_object`]) are
//! tracked the same way, through every writable mapping of them in the
//! process: write-protection is per page table, so each mapping is
//! registered, and what is written through it is reported as offsets in
//! the object. A page whose entry is gone since it was written (dropped
//! with MADV_DONTNEED, reclaimed to swap: a shmem page leaves no swap
//! entry behind) reads as written, since the scan reports every entry
//! that is neither write-protected nor a marker. What a mapping that went
//! away or changed since the last look had written goes away with its
//! page table, so such a mapping's whole range counts as written.

use std::os::fd::{AsFd, OwnedFd};

use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};
use lpm_sys::ptrace;
use lpm_sys::remote::{park, Remote};
use lpm_sys::uffd::{Uffd, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED};

use crate::proc::{self, MapEntry};
use crate::stop::{syscall_ip, wait_interrupt_stop};
use crate::{EngineError, Result, StepExt};

/// Pages written since the previous collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Written ranges inside tracked areas, page aligned, in address order.
    pub written: Vec<(u64, u64)>,
    /// Areas that appeared since the previous collection: wholly dirty.
    pub new_areas: Vec<(u64, u64)>,
    /// Areas no userfaultfd takes (droppable ones): wholly dirty at every
    /// collection, whatever the process does. Also in `new_areas`.
    pub untracked: Vec<(u64, u64)>,
    /// Writes to tracked shared memory objects, as `[start, end)` offsets
    /// in the object: written through a mapping, or the whole mapped
    /// range of a mapping that appeared, changed or went away.
    pub shared: Vec<(ShmRef, u64, u64)>,
}

/// A shared memory object that pre-copy tracks, by the inode its
/// mappings show (a SysV segment's inode number is its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShmRef {
    /// A SysV segment (else a MAP_SHARED anonymous area's object).
    pub sysv: bool,
    /// Its inode number.
    pub inode: u64,
}

/// The object `e` maps, when its pages can be tracked through page
/// tables alone: a MAP_SHARED anonymous area's object ("/dev/zero
/// (deleted)") or a SysV segment. Their own files are the kernel's: no
/// descriptor writes them unless one is opened again (through
/// /proc/PID/map_files), which pre-copy watches for. A memfd is not: its
/// own open file (held by descriptors, or in flight in a unix socket)
/// writes without a page table and without a notification, so memfds
/// are sent whole in the stop. Nor are huge pages (tracking works in
/// 4 KiB pages).
pub fn shm_object(e: &MapEntry) -> Option<ShmRef> {
    if !e.shared() {
        return None;
    }
    if crate::ipc::is_sysv_shm(e) {
        Some(ShmRef { sysv: true, inode: e.inode })
    } else if e.path == "/dev/zero (deleted)" {
        Some(ShmRef { sysv: false, inode: e.inode })
    } else {
        None
    }
}

/// A writable mapping of a tracked object, as the last look found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SharedArea {
    start: u64,
    end: u64,
    obj: ShmRef,
    /// Offset in the object of `start`.
    off: u64,
}

impl SharedArea {
    fn of(e: &MapEntry) -> Option<SharedArea> {
        let obj = shm_object(e).filter(|_| e.prot() & libc::PROT_WRITE as u32 != 0)?;
        Some(SharedArea { start: e.start, end: e.end, obj, off: e.offset })
    }

    /// `[start, end)` of the area as offsets in the object.
    fn offsets(&self, start: u64, end: u64) -> (ShmRef, u64, u64) {
        (self.obj, self.off + (start - self.start), self.off + (end - self.start))
    }
}

impl Dirty {
    /// Number of pages in both lists.
    pub fn pages(&self) -> u64 {
        self.written.iter().chain(&self.new_areas).map(|(s, e)| (e - s) / crate::PAGE).sum()
    }
}

/// Tracks the writes of one running process.
pub struct DirtyTracker {
    pid: i32,
    uffd: Uffd,
    pagemap: Pagemap,
    /// Areas a userfaultfd refused to take, as they were.
    untrackable: std::collections::HashSet<(u64, u64)>,
    /// Writable mappings of tracked shared objects at the last look.
    shared_areas: Vec<SharedArea>,
}

/// Areas whose pages a dump saves and a write can dirty: private and
/// writable (shared memory is sent whole at the switchover), not of huge
/// pages (sent whole at the switchover too: tracking and pre-copy work
/// in 4 KiB pages).
fn trackable(maps: &[MapEntry]) -> Vec<(u64, u64)> {
    maps.iter().filter(|e| is_trackable(e)).map(|e| (e.start, e.end)).collect()
}

fn is_trackable(e: &MapEntry) -> bool {
    !e.shared() && e.prot() & libc::PROT_WRITE as u32 != 0 && e.path != crate::hugetlb::ANON_HUGEPAGE
}

/// Creates a userfaultfd inside `pid` and takes it over.
fn take_uffd(pid: i32) -> Result<OwnedFd> {
    ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).step(pid, || "seize for userfaultfd".into())?;
    let res = (|| {
        ptrace::interrupt(pid).step(pid, || "interrupt".into())?;
        wait_interrupt_stop(pid, pid)?;
        let regs = ptrace::get_regs(pid).step(pid, || "read registers".into())?;
        let mask = ptrace::get_sigmask(pid).step(pid, || "read sigmask".into())?;
        ptrace::set_sigmask(pid, !0).step(pid, || "block signals".into())?;
        let ip = syscall_ip(pid, &proc::maps(pid)?);
        let taken = ip.and_then(|ip| {
            let mut r = Remote::new(pid, ip, regs);
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            // A task without CAP_SYS_PTRACE may still make a user-mode-only
            // userfaultfd (vm.unprivileged_userfaultfd=0). Write-protect in
            // async mode marks writes from the kernel too: it resolves them
            // without a handler, which is what user-mode-only limits.
            let fd = match r.call(libc::SYS_userfaultfd, &[flags]) {
                Err(e) if e.errno() == Some(libc::EPERM) => {
                    r.call(libc::SYS_userfaultfd, &[flags | linux_raw_sys::general::UFFD_USER_MODE_ONLY as u64])
                }
                other => other,
            }
            .step(pid, || "remote userfaultfd".into())?;
            let got =
                rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid).expect("pid > 0"), rustix::process::PidfdFlags::empty())
                    .and_then(|pidfd| rustix::process::pidfd_getfd(pidfd.as_fd(), fd as i32, rustix::process::PidfdGetfdFlags::empty()));
            // The task's fd table is left as it was, whatever happened.
            r.call(libc::SYS_close, &[fd]).step(pid, || "remote close userfaultfd".into())?;
            got.map_err(|e| EngineError::Step {
                pid,
                step: "pidfd_getfd userfaultfd".into(),
                source: lpm_sys::Error::sys("pidfd_getfd", pid, e.into()),
            })
        });
        let sig = park(pid).step(pid, || "park".into())?;
        ptrace::set_regs(pid, &regs).step(pid, || "restore registers".into())?;
        ptrace::set_sigmask(pid, mask).step(pid, || "restore sigmask".into())?;
        Ok((taken, sig))
    })();
    let sig = res.as_ref().map(|r| r.1).unwrap_or(0);
    let _ = ptrace::detach(pid, sig);
    res.and_then(|r| r.0)
}

impl DirtyTracker {
    /// Starts tracking the writes of running process `pid` to its private
    /// writable memory. The process is stopped for a moment.
    pub fn start(pid: i32) -> Result<DirtyTracker> {
        let uffd = Uffd::new(take_uffd(pid)?, pid);
        let want = (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED) as u64;
        let got = uffd.api(want).step(pid, || "userfaultfd handshake".into())?;
        if got & want != want {
            return Err(EngineError::Incompatible(format!("userfaultfd lacks write-protect async features (got {got:#x})")));
        }
        let mut t = DirtyTracker {
            pid,
            uffd,
            pagemap: Pagemap::open(pid).step(pid, || "open pagemap".into())?,
            untrackable: Default::default(),
            shared_areas: Vec::new(),
        };
        let maps = proc::maps(pid)?;
        for (s, e) in trackable(&maps) {
            t.track(s, e)?;
        }
        // One not registered after all reads as new at the next look.
        t.shared_areas = maps.iter().filter_map(SharedArea::of).collect();
        for a in t.shared_areas.clone() {
            t.track(a.start, a.end)?;
        }
        Ok(t)
    }

    /// Registers and write-protects `[start, end)`, an area as
    /// /proc/PID/maps showed it a moment ago. The process runs meanwhile:
    /// an area it unmapped, moved or resized since cannot be registered as
    /// read (the kernel answers EINVAL, or ENOENT or ENOMEM when
    /// write-protecting). Such an area is skipped: what is there now is not
    /// tracked, so the next collection reports it as a new area (wholly
    /// dirty) and tracks it. A part registered but not write-protected
    /// reports its present pages as written: more is sent, never less.
    /// Returns whether the area is tracked.
    fn track(&mut self, start: u64, end: u64) -> Result<bool> {
        let len = end - start;
        let res = match self.uffd.register_wp(start, len) {
            Err(e) => Err(("register", e)),
            Ok(()) => self.uffd.writeprotect(start, len, true).map_err(|e| ("write-protect", e)),
        };
        match res {
            Ok(()) => Ok(true),
            Err(("write-protect", e)) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT | libc::ENOMEM)) => {
                // Unmapped and mapped again, perhaps at the same bounds,
                // between the two calls: whatever is there is either not
                // registered (a new area at the next collection) or
                // registered and not protected (its pages read as written).
                tracing::debug!(pid = self.pid, start, end, error = %e, "area changed while it was being write-protected");
                Ok(false)
            }
            Err((_, e)) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT | libc::ENOMEM)) && !self.still_mapped(start, end)? => {
                tracing::debug!(pid = self.pid, start, end, error = %e, "area changed while it was being tracked");
                Ok(false)
            }
            Err(("register", e)) if e.errno() == Some(libc::EINVAL) => {
                // Still there, and no userfaultfd takes it (a droppable
                // area): untracked, it counts as wholly written at every
                // collection, the last one inside the stop included.
                tracing::debug!(pid = self.pid, start, end, error = %e, "area userfaultfd cannot track: sent whole every round");
                self.untrackable.insert((start, end));
                Ok(false)
            }
            Err((what, e)) => Err(e).step(self.pid, || format!("{what} {start:#x}-{end:#x}")),
        }
    }

    /// Whether `[start, end)` is still one trackable area.
    fn still_mapped(&self, start: u64, end: u64) -> Result<bool> {
        Ok(proc::maps(self.pid)?.iter().any(|m| m.start == start && m.end == end && (is_trackable(m) || SharedArea::of(m).is_some())))
    }

    /// The tracked shared objects the process maps writable, as the last
    /// look found them.
    pub fn shared_objects(&self) -> Vec<ShmRef> {
        let mut v: Vec<ShmRef> = self.shared_areas.iter().map(|a| a.obj).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Pages written since the last call (or the start), each re-protected
    /// as it is reported, and areas that appeared meanwhile.
    ///
    /// Whether an area is tracked is asked of the kernel, not of a list of
    /// what was registered: PAGEMAP_SCAN refuses (EPERM) to match on an
    /// area without write-protect tracking. So an area unmapped and mapped
    /// again, even at the same bounds, or the new part of a grown heap,
    /// counts as wholly dirty and is registered from then on. (/proc/PID/
    /// maps, not smaps: smaps walks every page table to count, which costs
    /// tens of milliseconds on a big process, and the last collection runs
    /// while the partition is stopped.)
    pub fn collect(&mut self) -> Result<Dirty> {
        self.scan(true)
    }

    /// The last collection, once the process is stopped for good: the
    /// same report, without re-protecting what was written or registering
    /// new areas, as nothing runs after it to be tracked. It changes no
    /// page table entry and flushes no TLB, so it walks the page tables
    /// several times faster than [`DirtyTracker::collect`]: it runs inside
    /// the downtime. A second call reports the same pages again.
    pub fn collect_last(&mut self) -> Result<Dirty> {
        self.scan(false)
    }

    fn scan(&mut self, again: bool) -> Result<Dirty> {
        let mut out = Dirty::default();
        let q = Query {
            flags: (if again { PM_SCAN_WP_MATCHING } else { 0 } | PM_SCAN_CHECK_WPASYNC) as u64,
            category_mask: PAGE_IS_WRITTEN as u64,
            anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN as u64,
        };
        let mut regions = Vec::new();
        let now = proc::maps(self.pid)?;
        for e in now.iter().filter(|e| is_trackable(e)) {
            regions.clear();
            match self.pagemap.scan(e.start, e.end, q, &mut regions) {
                Ok(()) => out.written.extend(regions.iter().map(|r| (r.start, r.end))),
                Err(err) if err.errno() == Some(libc::EPERM) => {
                    // Pages the scan reported before it met the untracked
                    // part are covered by the whole area anyway.
                    out.new_areas.push((e.start, e.end));
                    if self.untrackable.contains(&(e.start, e.end)) {
                        out.untracked.push((e.start, e.end));
                    } else if again {
                        self.track(e.start, e.end)?;
                    }
                }
                Err(err) => return Err(err).step(self.pid, || format!("scan written pages of {:#x}-{:#x}", e.start, e.end)),
            }
        }
        out.written.sort_unstable();
        let mut areas = Vec::new();
        for a in now.iter().filter_map(SharedArea::of) {
            regions.clear();
            match self.pagemap.scan(a.start, a.end, q, &mut regions) {
                Ok(()) => out.shared.extend(regions.iter().map(|r| a.offsets(r.start, r.end))),
                Err(err) if err.errno() == Some(libc::EPERM) => {
                    out.shared.push(a.offsets(a.start, a.end));
                    if again && !self.untrackable.contains(&(a.start, a.end)) {
                        self.track(a.start, a.end)?;
                    }
                }
                Err(err) => return Err(err).step(self.pid, || format!("scan written pages of shared {:#x}-{:#x}", a.start, a.end)),
            }
            areas.push(a);
        }
        // A mapping gone or changed since the last look took with its page
        // table what was written through it and not reported yet.
        for a in self.shared_areas.iter().filter(|a| !areas.contains(a)) {
            out.shared.push(a.offsets(a.start, a.end));
        }
        if again {
            self.shared_areas = areas;
        }
        Ok(out)
    }
}
