//! Lazy fill of precopied memory: after a migration's restore the target
//! already holds every precopied page in its store, so copying them into
//! the restored tasks need not happen while the partition is stopped.
//!
//! The areas holding precopied pages are registered with a userfaultfd in
//! missing-page mode (created inside the task by a remote syscall and
//! taken with pidfd_getfd, like the dirty tracker's). Once the tree runs,
//! [`LazyFill::run`] copies the pages in with UFFDIO_COPY, in the
//! background in address order and at once for any page a task touches
//! first. It follows the address space as the program changes it: pages
//! dropped (MADV_DONTNEED) or unmapped are not filled any more, moved
//! areas (mremap) are filled at their new place, and a forked child's
//! missing pages are filled from the same store (at the fork they held
//! the same content). When nothing is left, closing the userfaultfds
//! unregisters everything.
//!
//! One UFFDIO_COPY fills one registered area: a range that reaches into
//! the next area fails whole with ENOENT, the same answer as a range
//! unmapped meanwhile. So the runs are cut at the areas' bounds when they
//! are registered (the image joins precopied runs that touch, across
//! areas: a thread's stack and the area above it), a copy the kernel
//! refuses for a range of several pages is tried again on its first half
//! (the program may have split an area since), and only a single page
//! without an area counts as gone. Taking "no area" for "gone" on a whole
//! range once left every page of such a run reading as zero: the
//! descriptor of a joined thread's cached stack, whose next thread then
//! crashed.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lpm_image::{Mm, Vma};
use lpm_sys::remote::Remote;
use lpm_sys::uffd::{self, Copied, Event, Uffd};

use crate::{EngineError, Result, StepExt, PAGE};

/// Pages copied per background step.
const STEP: u64 = 2 << 20;
/// Pages copied around a faulting address (the rest of the run follows
/// in the background).
const AROUND: u64 = 64 << 10;

/// A run of pages still to fill: addresses `[start, end)` now, whose
/// content is at `store` offset `off` (their address when precopied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u64,
    end: u64,
    off: u64,
}

/// One address space to fill.
pub(crate) struct Space {
    uffd: Uffd,
    pid: i32,
    store: Arc<File>,
    runs: Vec<Run>,
    /// The areas to register (see [`Space::arm`]).
    areas: Vec<(u64, u64)>,
}

/// The precopied memory of a restored tree, still to be filled.
pub struct LazyFill {
    spaces: Vec<Space>,
}

/// One address space of a lazy fill, as another process takes it over
/// (the fill may outlive the one that restored: see
/// [`LazyFill::into_parts`]).
#[derive(Debug)]
pub struct FillPart {
    /// The task whose memory it fills.
    pub pid: i32,
    /// Its userfaultfd (missing-page mode, areas registered).
    pub uffd: std::os::fd::OwnedFd,
    /// The page store its pages come from.
    pub store: std::os::fd::OwnedFd,
    /// Pages still to fill: `[start, end)` now, at store offset `off`,
    /// as (start, end, off).
    pub runs: Vec<(u64, u64, u64)>,
}

/// What a lazy fill did.
#[derive(Clone, Debug, Default)]
pub struct FillStats {
    /// Pages copied in.
    pub pages: u64,
    /// Of those, copied because a task touched them first.
    pub faulted: u64,
    /// Pages dropped or unmapped by the program before they were filled.
    pub dropped: u64,
    /// Time until the last page was in.
    pub elapsed: Duration,
}

impl std::fmt::Debug for LazyFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFill").field("spaces", &self.spaces.len()).field("pages", &self.pages_left()).finish()
    }
}

fn remove(runs: &mut Vec<Run>, start: u64, end: u64) -> u64 {
    let mut out = Vec::with_capacity(runs.len() + 1);
    let mut removed = 0;
    for r in runs.drain(..) {
        if r.end <= start || r.start >= end {
            out.push(r);
            continue;
        }
        removed += (r.end.min(end) - r.start.max(start)) / PAGE;
        if r.start < start {
            out.push(Run { start: r.start, end: start, off: r.off });
        }
        if r.end > end {
            out.push(Run { start: end, end: r.end, off: r.off + (end - r.start) });
        }
    }
    *runs = out;
    removed
}

/// The parts of `runs` inside `areas` (both sorted by address, areas
/// disjoint), cut at the areas' bounds.
fn clip(runs: impl IntoIterator<Item = Run>, areas: impl IntoIterator<Item = (u64, u64)>) -> Vec<Run> {
    let areas: Vec<(u64, u64)> = areas.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    for r in runs {
        while i < areas.len() && areas[i].1 <= r.start {
            i += 1;
        }
        let mut j = i;
        while j < areas.len() && areas[j].0 < r.end {
            let (s, e) = (r.start.max(areas[j].0), r.end.min(areas[j].1));
            if s < e {
                out.push(Run { start: s, end: e, off: r.off + (s - r.start) });
            }
            j += 1;
        }
    }
    out
}

fn moved(runs: &mut Vec<Run>, from: u64, to: u64, len: u64) {
    let mut inside = runs.clone();
    inside.retain(|r| r.start < from + len && r.end > from);
    remove(runs, from, from + len);
    for r in inside {
        let (s, e) = (r.start.max(from), r.end.min(from + len));
        runs.push(Run { start: s - from + to, end: e - from + to, off: r.off + (s - r.start) });
    }
    runs.sort_by_key(|r| r.start);
}

/// Registers the areas of `mm` holding precopied pages with a userfaultfd
/// made inside the stopped puppet `pid`, instead of filling them; the
/// pages come from `store` once the tree runs.
pub(crate) fn register(
    pid: i32,
    r: &mut Remote,
    mm: &Mm,
    store: Arc<File>,
    lazy: impl Fn(&Vma) -> bool,
    eager: &[u64],
    shared: &[(u64, u64)],
) -> Result<Option<Space>> {
    let areas: Vec<&Vma> = mm.vmas.iter().filter(|v| lazy(v)).collect();
    let precopied = mm.pages.iter().filter(|p| p.precopied && p.npages > 0).map(|p| Run {
        start: p.vaddr,
        end: p.vaddr + p.npages * PAGE,
        off: p.vaddr,
    });
    // The image joins precopied runs that touch across areas; one
    // UFFDIO_COPY fills one area only.
    let mut runs = clip(precopied, areas.iter().map(|v| (v.start, v.end)));
    // Filled during the restore already (see mem::RestoreCtx::eager), or
    // shared with other processes and in since before their fork
    // (cow.rs): a copy into them would only fail as present.
    for &page in eager {
        remove(&mut runs, page, page + PAGE);
    }
    for &(start, end) in shared {
        remove(&mut runs, start, end);
    }
    if runs.is_empty() {
        return Ok(None);
    }
    let fd = r.call(libc::SYS_userfaultfd, &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64]).step(pid, || "remote userfaultfd".into())?;
    let got = rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid).expect("pid > 0"), rustix::process::PidfdFlags::empty())
        .and_then(|pidfd| rustix::process::pidfd_getfd(pidfd.as_fd(), fd as i32, rustix::process::PidfdGetfdFlags::empty()));
    r.call(libc::SYS_close, &[fd]).step(pid, || "remote close userfaultfd".into())?;
    let fd = got.map_err(|e| EngineError::Step {
        pid,
        step: "pidfd_getfd userfaultfd".into(),
        source: lpm_sys::Error::sys("pidfd_getfd", pid, e.into()),
    })?;
    let u = Uffd::new(fd, pid);
    let want =
        (uffd::UFFD_FEATURE_EVENT_FORK | uffd::UFFD_FEATURE_EVENT_REMAP | uffd::UFFD_FEATURE_EVENT_REMOVE | uffd::UFFD_FEATURE_EVENT_UNMAP)
            as u64;
    let got = u.api(want).step(pid, || "userfaultfd handshake".into())?;
    if got & want != want {
        return Err(EngineError::Incompatible(format!("userfaultfd lacks the non-cooperative events (got {got:#x})")));
    }
    let areas = areas.iter().filter(|v| runs.iter().any(|x| x.start < v.end && x.end > v.start)).map(|v| (v.start, v.end)).collect();
    Ok(Some(Space { uffd: u, pid, store, runs, areas }))
}

impl Space {
    /// Writes now, from the store, every page of the runs that is present
    /// already, and takes it off the runs. Nothing the restore writes is
    /// on them (eager pages and saved data are not), so such a page was
    /// made by a touch since its area was mapped: its content is not the
    /// precopied one, and the fill, which never copies over a present
    /// page, would leave it so. Seen as restored programs crashing now and
    /// then after a move, with a page of theirs read as zero.
    fn write_present(&mut self) -> Result<()> {
        use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_PRESENT};
        let mut pm = Pagemap::open(self.pid).step(self.pid, || "open pagemap".into())?;
        let q = Query { flags: 0, category_mask: PAGE_IS_PRESENT as u64, anyof_mask: 0, return_mask: PAGE_IS_PRESENT as u64 };
        let mut present = Vec::new();
        let mut regions = Vec::new();
        for r in &self.runs {
            regions.clear();
            pm.scan(r.start, r.end, q, &mut regions).step(self.pid, || format!("scan present pages of {:#x}-{:#x}", r.start, r.end))?;
            present.extend(regions.iter().map(|g| (g.start.max(r.start), g.end.min(r.end), r.off + (g.start.max(r.start) - r.start))));
        }
        if present.is_empty() {
            return Ok(());
        }
        let path = format!("/proc/{}/mem", self.pid);
        let mem = std::fs::OpenOptions::new().write(true).open(&path).map_err(crate::io_err(format!("open {path}")))?;
        let mut pages = 0;
        for &(start, end, off) in &present {
            let mut buf = vec![0u8; (end - start) as usize];
            self.store
                .read_exact_at(&mut buf, off)
                .map_err(crate::io_err(format!("read the page store of pid {} at {off:#x}", self.pid)))?;
            mem.write_all_at(&buf, start).map_err(crate::io_err(format!("write the precopied pages of pid {} at {start:#x}", self.pid)))?;
            remove(&mut self.runs, start, end);
            pages += (end - start) / PAGE;
        }
        tracing::warn!(
            pid = self.pid,
            pages,
            first = format!("{:#x}", present[0].0),
            "precopied pages were present before the lazy fill (touched since their area was mapped): written now"
        );
        Ok(())
    }

    /// Registers the areas for missing-page faults. Done last, once no
    /// remote call of the restore can touch the task's memory any more
    /// (the kernel writing a thread's rseq area into a registered, missing
    /// page would wait for a filler that only starts at the release); the
    /// userfaultfd itself is made early, while the puppet still holds the
    /// privileges to make one.
    pub(crate) fn arm(&self) -> Result<()> {
        for &(s, e) in &self.areas {
            self.uffd.register_missing(s, e - s).step(self.pid, || format!("register {s:#x}-{e:#x} for lazy fill"))?;
        }
        Ok(())
    }
}

impl Space {
    /// Copies what of `[start, end)` the run holding `start` still needs
    /// from the store, or as much of it as the kernel takes at once;
    /// false when the address space is changing (read events first).
    /// Every call that returns true takes at least one page off the runs.
    fn copy(&mut self, start: u64, end: u64, buf: &mut Vec<u8>, stats: &mut FillStats) -> Result<bool> {
        let Some(r) = self.runs.iter().find(|r| r.start <= start && start < r.end).copied() else { return Ok(true) };
        let end = end.min(r.end);
        let len = (end - start) as usize;
        buf.resize(len, 0);
        self.store.read_exact_at(&mut buf[..len], r.off + (start - r.start)).map_err(crate::io_err(format!(
            "read the page store of pid {} at {:#x}",
            self.pid,
            r.off + (start - r.start)
        )))?;
        match self.uffd.copy(start, &buf[..len]).step(self.pid, || format!("fill {start:#x}"))? {
            Copied::Changing => Ok(false),
            Copied::Bytes(n) => {
                // The rest, if the kernel stopped short (at a present
                // page, or the end of an area split since), on a later
                // call.
                stats.pages += remove(&mut self.runs, start, start + n);
                Ok(true)
            }
            Copied::Present => {
                // Newer than the store (the final pages, or written
                // since): skip it.
                remove(&mut self.runs, start, start + PAGE);
                Ok(true)
            }
            Copied::NoArea if len as u64 > PAGE => {
                // The range straddles areas (the program split one, by
                // mprotect or a partial unmap): the first half alone,
                // down to the page at `start` if need be. Nothing is
                // dropped on this answer: it does not say which page
                // lacks an area.
                let half = (len as u64 / 2) & !(PAGE - 1);
                self.copy(start, start + half, buf, stats)
            }
            Copied::NoArea => {
                // No registered area holds this page any more: unmapped,
                // or mapped anew (the unmap's event follows).
                stats.dropped += remove(&mut self.runs, start, start + PAGE);
                Ok(true)
            }
            Copied::Gone => {
                stats.dropped += remove(&mut self.runs, 0, u64::MAX);
                Ok(true)
            }
        }
    }

    /// Handles every pending event; new spaces (forks) go to `born`.
    fn events(&mut self, buf: &mut Vec<u8>, stats: &mut FillStats, born: &mut Vec<Space>) -> Result<()> {
        while let Some(ev) = self.uffd.read_event().step(self.pid, || "read userfaultfd".into())? {
            match ev {
                Event::Fault { address } => {
                    let page = address & !(PAGE - 1);
                    if self.runs.iter().any(|r| r.start <= page && page < r.end) {
                        let start = (page & !(AROUND - 1))
                            .max(self.runs.iter().find(|r| r.start <= page && page < r.end).map(|r| r.start).unwrap_or(page));
                        let before = stats.pages;
                        while !self.copy(start, start + AROUND, buf, stats)? {
                            self.events(buf, stats, born)?;
                        }
                        stats.faulted += stats.pages - before;
                        while self.runs.iter().any(|r| r.start <= page && page < r.end) {
                            // The window started below the page and stopped
                            // before reaching it (a present page, the end
                            // of an area).
                            while !self.copy(page, page + PAGE, buf, stats)? {
                                self.events(buf, stats, born)?;
                            }
                        }
                        // Whatever took the page off the runs (a copy wakes
                        // what it fills; a page found present or without
                        // an area does not), the task must not wait on.
                        self.uffd.wake(page, PAGE).step(self.pid, || format!("wake at {page:#x}"))?;
                    } else {
                        self.uffd.zeropage(page, PAGE).step(self.pid, || format!("zero page at {page:#x}"))?;
                    }
                }
                Event::Fork { uffd } => {
                    born.push(Space {
                        uffd: Uffd::new(uffd, self.pid),
                        pid: self.pid,
                        store: self.store.clone(),
                        runs: self.runs.clone(),
                        areas: Vec::new(),
                    });
                }
                Event::Remap { from, to, len } => moved(&mut self.runs, from, to, len),
                Event::Gone { start, end } => stats.dropped += remove(&mut self.runs, start, end),
            }
        }
        Ok(())
    }
}

impl LazyFill {
    /// Registers every space's areas (see [`Space::arm`]), once the pages
    /// of its runs found present are written (see [`Space::write_present`]).
    pub(crate) fn arm(mut spaces: Vec<Space>) -> Result<Option<LazyFill>> {
        for s in &mut spaces {
            s.write_present()?;
            s.arm()?;
        }
        Ok((!spaces.is_empty()).then_some(LazyFill { spaces }))
    }

    /// Its state as descriptors and runs, for another process to run it
    /// ([`LazyFill::from_parts`]): a fill in a process of its own goes on
    /// when the one that restored dies, where a thread's would end with
    /// it and leave every page not yet filled reading as zero.
    /// On failure (no descriptor left to duplicate a store) the fill
    /// comes back whole, to run here.
    pub fn into_parts(self) -> std::result::Result<Vec<FillPart>, (EngineError, LazyFill)> {
        let mut stores = Vec::with_capacity(self.spaces.len());
        for s in &self.spaces {
            match s.store.try_clone() {
                Ok(f) => stores.push(f),
                Err(e) => return Err((crate::io_err(format!("duplicate the page store of pid {}", s.pid))(e), self)),
            }
        }
        Ok(self
            .spaces
            .into_iter()
            .zip(stores)
            .map(|(s, store)| FillPart {
                pid: s.pid,
                uffd: s.uffd.into_fd(),
                store: store.into(),
                runs: s.runs.iter().map(|r| (r.start, r.end, r.off)).collect(),
            })
            .collect())
    }

    /// A fill from [`LazyFill::into_parts`]'s parts.
    pub fn from_parts(parts: Vec<FillPart>) -> LazyFill {
        let spaces = parts
            .into_iter()
            .map(|p| Space {
                uffd: Uffd::new(p.uffd, p.pid),
                pid: p.pid,
                store: Arc::new(File::from(p.store)),
                runs: p.runs.into_iter().map(|(start, end, off)| Run { start, end, off }).collect(),
                areas: Vec::new(),
            })
            .collect();
        LazyFill { spaces }
    }

    /// Pages not filled yet.
    pub fn pages_left(&self) -> u64 {
        self.spaces.iter().flat_map(|s| &s.runs).map(|r| (r.end - r.start) / PAGE).sum()
    }

    /// Fills everything, serving faults first; returns when every page is
    /// in (or was dropped by the program, or its task is gone).
    pub fn run(mut self) -> Result<FillStats> {
        let t0 = Instant::now();
        let mut stats = FillStats::default();
        let mut buf = Vec::new();
        let mut born = Vec::new();
        loop {
            self.spaces.retain(|s| !s.runs.is_empty());
            if self.spaces.is_empty() {
                break;
            }
            let fds: Vec<i32> = self.spaces.iter().map(|s| s.uffd.as_raw_fd()).collect();
            for i in uffd::poll_readable(&fds, 0) {
                self.spaces[i].events(&mut buf, &mut stats, &mut born)?;
            }
            self.spaces.append(&mut born);
            // One background step per round, so faults wait at most one.
            if let Some(s) = self.spaces.iter_mut().find(|s| !s.runs.is_empty()) {
                let r = s.runs[0];
                if !s.copy(r.start, (r.start + STEP).min(r.end), &mut buf, &mut stats)? {
                    s.events(&mut buf, &mut stats, &mut born)?;
                }
            }
        }
        stats.elapsed = t0.elapsed();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_cut_at_the_bounds_of_areas() {
        // One precopied run over two touching areas (a thread's stack and
        // the area above it), one over a gap, one outside every area.
        let runs = [
            Run { start: 0x1000, end: 0x5000, off: 0x1000 },
            Run { start: 0x7000, end: 0xb000, off: 0x7000 },
            Run { start: 0x20000, end: 0x21000, off: 0x20000 },
        ];
        let areas = [(0x0, 0x3000), (0x3000, 0x8000), (0xa000, 0xc000)];
        assert_eq!(
            clip(runs, areas),
            vec![
                Run { start: 0x1000, end: 0x3000, off: 0x1000 },
                Run { start: 0x3000, end: 0x5000, off: 0x3000 },
                Run { start: 0x7000, end: 0x8000, off: 0x7000 },
                Run { start: 0xa000, end: 0xb000, off: 0xa000 },
            ]
        );
        assert_eq!(clip([Run { start: 0x1000, end: 0x2000, off: 0x1000 }], []), vec![]);
    }

    #[test]
    fn runs_split_and_move_with_their_store_offsets() {
        let mut runs = vec![Run { start: 0x1000, end: 0x9000, off: 0x1000 }];
        assert_eq!(remove(&mut runs, 0x3000, 0x5000), 2);
        assert_eq!(runs, vec![Run { start: 0x1000, end: 0x3000, off: 0x1000 }, Run { start: 0x5000, end: 0x9000, off: 0x5000 }]);
        moved(&mut runs, 0x6000, 0x20000, 0x2000);
        assert_eq!(
            runs,
            vec![
                Run { start: 0x1000, end: 0x3000, off: 0x1000 },
                Run { start: 0x5000, end: 0x6000, off: 0x5000 },
                Run { start: 0x8000, end: 0x9000, off: 0x8000 },
                Run { start: 0x20000, end: 0x22000, off: 0x6000 },
            ]
        );
    }
}
