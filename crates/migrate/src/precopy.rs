//! The source side of pre-copy: copy the memory of running processes to
//! the target round after round while a [`DirtyTracker`] per process
//! records what they write meanwhile, so that the stop has only the last
//! writes left to send.
//!
//! # What is sent
//!
//! The pages a checkpoint would save and a write can change: those of
//! private writable areas (shared memory is sent whole at the switchover)
//! that are present, are anonymous (a private file page not yet written is
//! the file's, which the target reads itself) and are not the shared zero
//! page. Swapped-out pages are not pre-copied: while a tracker is
//! registered, PAGEMAP_SCAN reports the write-protect markers on every
//! untouched page as swapped too, and cannot tell them apart; the final
//! checkpoint sends real swapped pages. Pages are read from the running process with
//! process_vm_readv in chunks of up to [`CHUNK`] bytes (areas without
//! PROT_READ through /proc/PID/mem) and handed to a [`PageSink`] in
//! contiguous runs: the mover sends them over the network, the target's
//! [`Store`](crate::store::Store) writes them, and tests connect the two
//! directly.
//!
//! A page whose content is all zero and that the sink never received is
//! not sent: the target's page file reads as zero where nothing was
//! written, so the page counts as held all the same (except above the
//! highest page ever sent, past the end of the target's file, which the
//! restore refuses to read). A zero page that was sent before is sent
//! again, since the target holds older data there.
//!
//! # Held, pending and the order that keeps them right
//!
//! Per process three range sets are kept: `held`, the pages whose current
//! content the target holds; `pending`, the pages found dirty and not sent
//! yet; `ever`, the pages the sink ever received. A collection
//! (re-protecting the pages it reports, atomically) always comes before the
//! reads of the pages it reports, so a write that lands after a page was
//! read is reported by a later collection: then the page leaves `held` and
//! joins `pending`. A write between the collection and the read is reported
//! later too and makes the page be sent once more than needed, never once
//! less.
//!
//! # How many pages are left: [`Precopy::collect`]
//!
//! What the processes wrote since the last round is only known by
//! collecting, and collecting re-protects: its result must not be lost. So
//! [`Precopy::collect`] merges what it finds into `pending` and returns the
//! counts the convergence policy needs (pages found, pages pending, and
//! the time they took to accumulate: the dirty rate); the next
//! [`Precopy::round`] collects once more (catching the writes since) and
//! sends everything pending. The loop of the source is:
//!
//! ```text
//! let mut pc = Precopy::start(&pids)?;
//! loop {
//!     let stats = pc.round(&mut sink)?;        // round 1 sends everything
//!     let c = pc.collect()?;                   // what the round left dirty
//!     match policy::decide(&measure(stats, c), &limits) { ... }
//! }
//! // frozen:
//! let precopied = pc.finish()?;               // for CheckpointOptions
//! ```
//!
//! # The end
//!
//! [`Precopy::finish`] runs once the tree is frozen: a last collection
//! (read-only: nothing runs to write again) and a last round send what
//! was written since the previous round, so `held` is then exactly what
//! the target holds. It is then cut down to the pages present now, by
//! the checkpoint: a page dropped with MADV_DONTNEED is not reported as
//! written (it reads as zero from then on, while the target holds its old
//! content), and a page swapped out is left to the checkpoint.
//! Dropping a [`Precopy`] (abort) drops the trackers, which unregisters
//! everything: the processes are left as they were.
//!
//! Processes forked after the start are not tracked while no shared
//! object is pre-copied: nothing is held for them and the final
//! checkpoint sends all their pages. A process that exited is dropped
//! quietly (a zombie has an empty entry in the result, a reaped one none).
//!
//! # Shared memory objects
//!
//! The objects whose only writers are page tables (MAP_SHARED anonymous
//! areas' objects and SysV segments, [`lpm_engine::shm_object`]) that a
//! process maps at the start are pre-copied too, each as an object of its
//! own: read from the object (through /proc/PID/map_files, so holes read
//! as zero without being allocated, and round 1 sends its data extents
//! only) and handed to the sink under a key of its own, a negative
//! "pid" ([`object_key`]), at offset = offset in the object. Their
//! writes are what the trackers report for every writable mapping of
//! them in every process, as offsets ([`lpm_engine::Dirty::shared`]).
//! What the page tables cannot see makes an object go whole into the
//! stop (nothing held for it): a write through a file opened on it again
//! (/proc/PID/map_files): an inotify watch on each object reports it
//! (IN_MODIFY, IN_ATTRIB).
//!
//! # Processes that come and go
//!
//! Every fork on the system is heard through the kernel's process events
//! connector ([`lpm_sys::procevents`]); one by a process of the tree
//! makes the child a process of the tree. While an object is pre-copied,
//! the child is tracked as soon as it is heard of (its own tracker, its
//! present pages pending), and every object's pages that may differ from
//! the target's (its data extents, and what the target ever received)
//! go again in the next round (`Obj::reset`): a fork is heard after the
//! fact, and between the fork and the registration the child writes
//! through page tables of its own that nothing tracks. The reset comes
//! after the registration, so the next round's read sees those writes and
//! the tracker every later one. A tracked process that exits takes with
//! its page tables what it wrote since its last collection: the same
//! reset. In the stop a fork heard in the last collection is not tracked
//! (the tree is frozen): the reset alone makes the last round read what
//! the child wrote. The reset costs a round of the objects' data; the
//! source runs one more round after the drain when the tree changed since
//! the last one ([`Precopy::tree_changed`]), so that a server's worker
//! that ended with its connection does not put the objects in the stop.
//! Tracking gives up (every object whole into the stop) only when events
//! were lost, or a forked process could not be tracked (it ran another
//! program: its tracker watched the address space it left). Without the
//! connector no object is pre-copied.
//!
//! Objects made after the start are not pre-copied either.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use lpm_engine::{proc, DirtyTracker, EngineError, PrecopiedShm, ShmRef, SABOTAGE_ENV};
use lpm_sys::misc::is_zero;
use lpm_sys::pagemap::{Pagemap, Query, Region, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT};

/// Bytes in a page.
pub const PAGE: u64 = 4096;

/// Most bytes read from a process per process_vm_readv call.
pub const CHUNK: usize = 1 << 20;

/// Rounds in which the shared objects may go again whole because a
/// process came or went; after them objects larger together than
/// [`RESET_MAX_BYTES`] are left whole to the stop, so that a tree forking
/// in every round (a server forking a worker per connection) still
/// converges. Smaller ones cost a round little and go again every time.
const MAX_RESETS: u32 = 3;

/// See [`MAX_RESETS`].
const RESET_MAX_BYTES: u64 = 16 << 20;

/// What a [`PageSink`] returns on failure: the mover's network errors and
/// the store's file errors alike.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where pre-copied pages go: the one page pipeline of migration.
///
/// A [`Precopy`] assumes its sink starts empty: a page it never handed
/// over reads as zero on the target (a hole of the store's sparse file),
/// which is how it skips zero pages. One migration attempt, one fresh sink.
pub trait PageSink {
    /// Takes `data`, whole pages of process `pid` starting at page-aligned
    /// address `vaddr`.
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> Result<(), SinkError>;
}

/// Errors of pre-copy; each names the process.
#[derive(Debug, thiserror::Error)]
pub enum PrecopyError {
    /// Tracking the writes of a process could not start.
    #[error("start tracking writes of pid {pid}")]
    Track {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: EngineError,
    },
    /// Collecting the writes of a process failed.
    #[error("collect writes of pid {pid}")]
    Collect {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: EngineError,
    },
    /// The memory areas of a process could not be read.
    #[error("read memory areas of pid {pid}")]
    Maps {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: EngineError,
    },
    /// The pagemap of a process could not be opened.
    #[error("open pagemap of pid {pid}")]
    Pagemap {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// Finding the present pages of an area failed.
    #[error("scan pages of pid {pid} in {start:#x}-{end:#x}")]
    Scan {
        /// The process.
        pid: i32,
        /// First address.
        start: u64,
        /// One past the end.
        end: u64,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// A shared memory object could not be watched for writes through
    /// files opened on it.
    #[error("watch shared memory {path} of pid {pid}")]
    Watch {
        /// The process mapping it.
        pid: i32,
        /// Its /proc/PID/map_files entry.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The sink did not take pages.
    #[error("send {len} bytes of pid {pid} at {vaddr:#x}")]
    Sink {
        /// The process.
        pid: i32,
        /// First address.
        vaddr: u64,
        /// Bytes.
        len: usize,
        /// The cause.
        #[source]
        source: SinkError,
    },
}

/// Result alias for pre-copy.
pub type Result<T, E = PrecopyError> = std::result::Result<T, E>;

/// A set of address ranges `[start, end)`, kept sorted, disjoint and
/// merged (touching ranges become one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    r: Vec<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// The set holding `ranges` (in any order, overlapping or not).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> RangeSet {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().filter(|(s, e)| s < e).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        RangeSet { r: out }
    }

    /// The ranges, in address order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.r
    }

    /// The ranges, in address order.
    pub fn into_vec(self) -> Vec<(u64, u64)> {
        self.r
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.r.iter().map(|(s, e)| e - s).sum()
    }

    /// Pages covered (the set is expected to hold whole pages).
    pub fn pages(&self) -> u64 {
        self.len() / PAGE
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges touching or overlapping the new one merge with it.
        let i = self.r.partition_point(|r| r.1 < start);
        let j = self.r.partition_point(|r| r.0 <= end);
        if i == j {
            self.r.insert(i, (start, end));
            return;
        }
        let merged = (start.min(self.r[i].0), end.max(self.r[j - 1].1));
        self.r.splice(i..j, [merged]);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let i = self.r.partition_point(|r| r.1 <= start);
        let j = self.r.partition_point(|r| r.0 < end);
        if i >= j {
            return;
        }
        let (first, last) = (self.r[i], self.r[j - 1]);
        let mut keep = Vec::with_capacity(2);
        if first.0 < start {
            keep.push((first.0, start));
        }
        if last.1 > end {
            keep.push((end, last.1));
        }
        self.r.splice(i..j, keep);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        if other.is_empty() {
            return;
        }
        let all = self.r.iter().chain(&other.r).copied().collect::<Vec<_>>();
        *self = RangeSet::from_ranges(all);
    }

    /// Removes every range of `other`.
    pub fn subtract(&mut self, other: &RangeSet) {
        if other.is_empty() || self.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.r.len());
        let mut k = 0;
        for &(s, e) in &self.r {
            let mut at = s;
            while k < other.r.len() && other.r[k].1 <= at {
                k += 1;
            }
            let mut m = k;
            while at < e && m < other.r.len() && other.r[m].0 < e {
                let (os, oe) = other.r[m];
                if os > at {
                    out.push((at, os));
                }
                at = at.max(oe);
                m += 1;
            }
            if at < e {
                out.push((at, e));
            }
        }
        self.r = out;
    }

    /// The ranges covered by both sets.
    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.r.len() && j < other.r.len() {
            let (a, b) = (self.r[i], other.r[j]);
            let (s, e) = (a.0.max(b.0), a.1.min(b.1));
            if s < e {
                out.push((s, e));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        RangeSet { r: out }
    }

    /// Whether any address of `[start, end)` is in the set.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let i = self.r.partition_point(|r| r.1 <= start);
        i < self.r.len() && self.r[i].0 < end
    }

    /// Whether all of `[start, end)` is in the set.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        let i = self.r.partition_point(|r| r.1 <= start);
        start >= end || (i < self.r.len() && self.r[i].0 <= start && end <= self.r[i].1)
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// The round's number, from 1.
    pub round: u32,
    /// Pages handed to the sink.
    pub pages: u64,
    /// Bytes handed to the sink.
    pub bytes: u64,
    /// Zero pages not sent (the target reads zero there).
    pub zero_skipped: u64,
    /// Pages the round set out to send (dirty or, in round 1, present).
    pub dirty_found: u64,
    /// Pages that could not be read (unmapped meanwhile): not held.
    pub unreadable: u64,
    /// How long the round took.
    pub duration: Duration,
}

/// Per process (pid), the sorted page ranges `[start, end)` the target
/// holds current.
pub type Held = HashMap<i32, Vec<(u64, u64)>>;

/// The sink key of the `index`th shared memory object: negative, so
/// that it never meets a pid.
pub fn object_key(index: usize) -> i32 {
    -(index as i32) - 1
}

/// What [`Precopy::finish`] did and leaves.
#[derive(Debug)]
pub struct Finished {
    /// The last round's figures.
    pub stats: RoundStats,
    /// What the target holds current, per process.
    pub held: Held,
    /// Per process, the ranges the last round sent, in order: what the
    /// processes wrote last, their working set, which a restore should
    /// fill before they run rather than on their first touch.
    pub last_sent: Held,
    /// The shared memory objects whose pages the target holds, with the
    /// name of the target's file for each (for
    /// `DumpOptions::precopied_shm`).
    pub shm: HashMap<ShmRef, PrecopiedShm>,
}

/// A sink that notes what passes through it.
struct Recording<'a> {
    inner: &'a mut dyn PageSink,
    sent: Held,
}

impl PageSink for Recording<'_> {
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> Result<(), SinkError> {
        self.inner.pages(pid, vaddr, data)?;
        let end = vaddr + data.len() as u64;
        let v = self.sent.entry(pid).or_default();
        match v.last_mut() {
            Some(last) if last.1 == vaddr => last.1 = end,
            _ => v.push((vaddr, end)),
        }
        Ok(())
    }
}

/// What a collection found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    /// Pages newly found dirty (written, or present in new areas).
    pub found: u64,
    /// Pages waiting for the next round: the remaining set.
    pub pending: u64,
    /// Of those, the pages of areas no userfaultfd tracks (droppable
    /// ones): sent again in every round and in the stop, however long
    /// pre-copy goes on.
    pub untracked: u64,
    /// Time since the previous collection (or the start), over which
    /// `found` accumulated.
    pub interval: Duration,
}

impl Collected {
    /// Pages dirtied per second over the interval.
    pub fn dirty_rate(&self) -> f64 {
        let s = self.interval.as_secs_f64();
        if s > 0.0 {
            self.found as f64 / s
        } else {
            0.0
        }
    }
}

/// One tracked process.
struct Proc {
    pid: i32,
    tracker: DirtyTracker,
    pagemap: Pagemap,
    /// /proc/PID/mem, opened on the first read that needs it.
    mem: Option<File>,
    /// It has a parent or a child among the processes: it may share
    /// pages copy-on-write with them, which it must still share when the
    /// switchover's checkpoint looks (see [`Sender::via_mem`]).
    related: bool,
    held: RangeSet,
    pending: RangeSet,
    ever: RangeSet,
    /// Present pages of areas no userfaultfd tracks, as the last
    /// collection found them: pending again after every round.
    untracked: u64,
    /// Writes to shared objects the last collection found.
    shared: Vec<(ShmRef, u64, u64)>,
    /// Forked during pre-copy and followed since (see "Processes that
    /// come and go" in the module's documentation).
    forked: bool,
}

/// One pre-copied shared memory object.
struct Obj {
    r: ShmRef,
    /// Its sink key ([`object_key`]).
    key: i32,
    /// The object, opened through /proc/PID/map_files.
    file: File,
    /// Its size: it cannot change (a SysV segment's, a MAP_SHARED
    /// anonymous area's object's) but through a file opened on it again,
    /// which spoils it.
    size: u64,
    /// Its inotify watch.
    wd: i32,
    held: RangeSet,
    pending: RangeSet,
    ever: RangeSet,
    /// Why the target cannot be said to hold it: it goes whole into the
    /// stop.
    spoiled: Option<&'static str>,
}

impl Obj {
    fn spoil(&mut self, why: &'static str) {
        if self.spoiled.is_none() {
            tracing::debug!(object = ?self.r, why, "shared memory object goes whole into the stop");
            self.spoiled = Some(why);
            self.held = RangeSet::new();
            self.pending = RangeSet::new();
        }
    }

    /// Its data extents (holes are neither read nor sent) and every page
    /// the sink ever received of it (a hole there now must be sent as
    /// zero): every page whose content may differ from the target's.
    fn extents(&self) -> RangeSet {
        let mut all = self.ever.clone();
        let mut off = 0;
        while off < self.size {
            let Some((data, hole)) = lpm_sys::misc::next_data(std::os::fd::AsFd::as_fd(&self.file), off) else { break };
            if data >= self.size {
                break;
            }
            all.insert(data / PAGE * PAGE, hole.min(self.size).div_ceil(PAGE) * PAGE);
            off = hole.max(data + PAGE);
        }
        all
    }

    /// Makes every page that may have changed pending again: a process
    /// came or went, and what it wrote outside a tracked page table is
    /// unknown. Called after the processes' trackers are registered, so
    /// the next read of the object sees every such write.
    fn reset(&mut self) {
        if self.spoiled.is_some() {
            return;
        }
        let all = self.extents();
        self.held.subtract(&all);
        self.pending.union(&all);
    }

    /// Sends everything pending to `sink`, read from the object.
    fn send_pending(&mut self, buf: &mut [u8], sink: &mut dyn PageSink, st: &mut RoundStats) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if self.spoiled.is_some() {
            return Ok(());
        }
        let mut s = Sender { pid: self.key, ever: &self.ever, mem: None, via_mem: false, file: Some(&self.file), out: Sent::default() };
        let res = s.send(pending.ranges(), buf, sink);
        s.out.apply(&mut self.held, &mut self.ever, st);
        res
    }
}

/// Pre-copy of a set of running processes.
pub struct Precopy {
    procs: Vec<Proc>,
    objs: Vec<Obj>,
    /// Watches the objects for writes through files opened on them.
    inotify: Option<std::os::fd::OwnedFd>,
    /// Hears the forks of the tracked processes.
    events: Option<lpm_sys::procevents::ProcEvents>,
    /// Every process ever tracked.
    tracked: Vec<i32>,
    /// Tracking of the tree's writes cannot be trusted any more (process
    /// events lost, a forked process that could not be followed): every
    /// object goes whole into the stop.
    lost: Option<String>,
    /// A process came or went since the last collection: every object's
    /// pages go again in the next round (see [`Obj::reset`]).
    reset: Option<String>,
    /// How many times the objects went again whole in a round.
    resets: u32,
    /// Forks heard before the collection that handles them.
    heard: Vec<lpm_sys::procevents::Fork>,
    gone: Vec<i32>,
    /// Read buffers, one per sending thread.
    bufs: Vec<Vec<u8>>,
    regions: Vec<Region>,
    rounds: u32,
    last_collect: Instant,
}

/// Whether `pid` exited, or is exiting: a zombie, or a process whose
/// memory is already gone (its size reads 0 between the release of its
/// memory and its zombie state): no memory left to copy.
fn gone(pid: i32) -> bool {
    match proc::Stat::read(pid) {
        Ok(s) => matches!(s.state(), 'Z' | 'X') || s.num(23) == 0,
        // Only a process that is no more has no stat file: any other
        // failure to read it (a signal, no memory) says nothing of its
        // exit, and dropping a live process from pre-copy would send its
        // memory whole in the stop.
        Err(lpm_engine::EngineError::Proc { source, .. }) => {
            source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH)
        }
        Err(_) => false,
    }
}

/// The areas whose pages pre-copy sends: private and writable, not of
/// huge pages (the same the tracker registers; huge pages go whole in the
/// stop).
fn trackable(pid: i32) -> Result<Vec<(u64, u64)>> {
    let maps = proc::maps(pid).map_err(|source| PrecopyError::Maps { pid, source })?;
    Ok(maps
        .iter()
        .filter(|e| !e.shared() && e.prot() & libc::PROT_WRITE as u32 != 0 && e.path != lpm_engine::hugetlb::ANON_HUGEPAGE)
        .map(|e| (e.start, e.end))
        .collect())
}

impl Proc {
    /// Adds the present anonymous, non-zero-pfn pages of `[start, end)`
    /// to `out`.
    fn existing(&mut self, start: u64, end: u64, regions: &mut Vec<Region>, out: &mut RangeSet) -> Result<()> {
        let q = Query {
            flags: 0,
            category_mask: 0,
            // Not PAGE_IS_SWAPPED: write-protection installs a pte marker on
            // every unpopulated page of a tracked area, and the scan reports
            // markers as swapped. Pages really swapped out are left to the
            // final checkpoint (which tells markers apart).
            anyof_mask: PAGE_IS_PRESENT as u64,
            return_mask: (PAGE_IS_FILE | PAGE_IS_PFNZERO) as u64,
        };
        regions.clear();
        let pid = self.pid;
        self.pagemap.scan(start, end, q, regions).map_err(|source| PrecopyError::Scan { pid, start, end, source })?;
        for r in regions.iter().filter(|r| r.categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO) as u64 == 0) {
            out.insert(r.start, r.end);
        }
        Ok(())
    }

    /// Every present anonymous page of the trackable areas.
    fn all_existing(&mut self, regions: &mut Vec<Region>) -> Result<RangeSet> {
        let mut out = RangeSet::new();
        for (s, e) in trackable(self.pid)? {
            self.existing(s, e, regions, &mut out)?;
        }
        Ok(out)
    }

    /// Collects writes: they leave `held` and join `pending`. Returns the
    /// pages newly pending.
    fn collect(&mut self, regions: &mut Vec<Region>, last: bool) -> Result<u64> {
        let pid = self.pid;
        let d = if last { self.tracker.collect_last() } else { self.tracker.collect() };
        let d = d.map_err(|source| PrecopyError::Collect { pid, source })?;
        let before = self.pending.pages();
        let written = RangeSet::from_ranges(d.written.iter().copied());
        // Written pages are present (one dropped since reads as zero and
        // is treated as such); a new area is sent where it has pages.
        let mut fresh = written.clone();
        for &(s, e) in &d.new_areas {
            self.existing(s, e, regions, &mut fresh)?;
        }
        let mut untracked = RangeSet::new();
        for &(s, e) in &d.untracked {
            self.existing(s, e, regions, &mut untracked)?;
        }
        self.untracked = untracked.pages();
        self.shared = d.shared;
        self.pending.union(&fresh);
        self.held.subtract(&written);
        self.held.subtract(&RangeSet::from_ranges(d.new_areas.iter().copied()));
        Ok(self.pending.pages() - before)
    }

    /// Sends everything pending to `sink`.
    fn send_pending(&mut self, buf: &mut [u8], sink: &mut dyn PageSink, st: &mut RoundStats) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut s =
            Sender { pid: self.pid, ever: &self.ever, mem: self.mem.take(), via_mem: self.related, file: None, out: Sent::default() };
        let res = s.send(pending.ranges(), buf, sink);
        let (mem, out) = (s.mem, s.out);
        self.mem = mem;
        self.apply(out, st);
        res
    }

    /// Sends everything pending over `sinks` at once, a share each, read
    /// and sent by a thread each: reading a process's memory costs as much
    /// CPU as sending it, which one thread cannot spread.
    fn send_pending_parallel(&mut self, bufs: &mut [Vec<u8>], sinks: &mut [&mut (dyn PageSink + Send)], st: &mut RoundStats) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let shares = split(pending.ranges(), sinks.len());
        let (pid, ever, via_mem) = (self.pid, &self.ever, self.related);
        let done: Vec<(Sent, Result<()>)> = std::thread::scope(|scope| {
            let threads: Vec<_> = shares
                .iter()
                .zip(sinks.iter_mut())
                .zip(bufs.iter_mut())
                .map(|((share, sink), buf)| {
                    scope.spawn(move || {
                        let mut s = Sender { pid, ever, mem: None, via_mem, file: None, out: Sent::default() };
                        let res = s.send(share, buf, &mut **sink);
                        (s.out, res)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut first_err = None;
        for (out, res) in done {
            self.apply(out, st);
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Records what a sender did: its ranges are held now, and those it
    /// handed to the sink were received.
    fn apply(&mut self, out: Sent, st: &mut RoundStats) {
        out.apply(&mut self.held, &mut self.ever, st);
    }
}

/// Splits sorted page ranges into `n` shares of about as many pages
/// each, in order, cutting a range at a page boundary where a share is
/// full.
fn split(ranges: &[(u64, u64)], n: usize) -> Vec<Vec<(u64, u64)>> {
    let n = n.max(1);
    let total: u64 = ranges.iter().map(|(s, e)| (e - s) / PAGE).sum();
    let per = total.div_ceil(n as u64).max(1);
    let mut out = vec![Vec::new(); n];
    let (mut k, mut filled) = (0, 0u64);
    for &(mut s, e) in ranges {
        while s < e {
            if filled >= per && k + 1 < n {
                k += 1;
                filled = 0;
            }
            let pages = (e - s) / PAGE;
            let take = if k + 1 == n { pages } else { pages.min(per - filled) };
            let end = if take == 0 { e } else { s + take * PAGE };
            out[k].push((s, end));
            filled += take;
            s = end;
        }
    }
    out
}

/// What a [`Sender`] did, applied to its process once it is done (the
/// shares of one round never overlap).
#[derive(Default)]
struct Sent {
    /// Ranges whose current content the target now holds: sent, or zero
    /// and never sent.
    held: Vec<(u64, u64)>,
    /// Ranges handed to the sink.
    sent: Vec<(u64, u64)>,
    /// Pages, bytes, zero pages skipped, pages unreadable.
    stats: RoundStats,
}

impl Sent {
    /// Records it: its ranges are `held` now, those handed to the sink
    /// were received (`ever`), and its figures count in the round's.
    fn apply(self, held: &mut RangeSet, ever: &mut RangeSet, st: &mut RoundStats) {
        for (a, b) in self.held {
            held.insert(a, b);
        }
        for (a, b) in self.sent {
            ever.insert(a, b);
        }
        st.pages += self.stats.pages;
        st.bytes += self.stats.bytes;
        st.zero_skipped += self.stats.zero_skipped;
        st.unreadable += self.stats.unreadable;
    }
}

/// Reads page ranges of one process and hands their non-zero runs to a
/// sink; what the target received before (`ever`) is only read.
struct Sender<'a> {
    pid: i32,
    ever: &'a RangeSet,
    /// /proc/PID/mem, opened on the first read that needs it.
    mem: Option<File>,
    /// Every read goes through /proc/PID/mem: process_vm_readv pins the
    /// pages it reads, and the kernel gives a process its own copy of a
    /// page it shares copy-on-write before it lets it be pinned, which
    /// would undo the sharing the restore is to make again.
    via_mem: bool,
    /// Reads go to this file at offset = address instead (a shared
    /// memory object's pages): a hole reads as zero and stays a hole.
    file: Option<&'a File>,
    out: Sent,
}

impl Sender<'_> {
    /// Reads up to `buf.len()` bytes at `vaddr`; returns how many whole
    /// pages' bytes were read before the first unreadable page.
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> usize {
        if let Some(f) = self.file {
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], vaddr + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            return got - got % PAGE as usize;
        }
        if !self.via_mem && lpm_sys::ptrace::read_mem(self.pid, vaddr, buf).is_ok() {
            return buf.len();
        }
        // Part of the range is gone, or the area has no PROT_READ:
        // /proc/PID/mem reads up to the first page that is not there.
        if self.mem.is_none() {
            self.mem = File::open(format!("/proc/{}/mem", self.pid)).ok();
        }
        let Some(mem) = &self.mem else { return 0 };
        let mut got = 0;
        while got < buf.len() {
            match mem.read_at(&mut buf[got..], vaddr + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        got - got % PAGE as usize
    }

    /// Sends `data` (pages read at `vaddr`) in contiguous runs, skipping
    /// zero pages the sink never received.
    fn emit(&mut self, vaddr: u64, data: &[u8], sink: &mut dyn PageSink) -> Result<()> {
        let pg = PAGE as usize;
        let n = data.len() / pg;
        let skip = |ever: &RangeSet, i: usize| {
            is_zero(&data[i * pg..(i + 1) * pg]) && !ever.overlaps(vaddr + (i * pg) as u64, vaddr + ((i + 1) * pg) as u64)
        };
        let mut i = 0;
        while i < n {
            let s = skip(self.ever, i);
            let mut j = i + 1;
            while j < n && skip(self.ever, j) == s {
                j += 1;
            }
            let (a, b) = (vaddr + (i * pg) as u64, vaddr + (j * pg) as u64);
            if s {
                self.out.stats.zero_skipped += (j - i) as u64;
            } else {
                let bytes = &data[i * pg..j * pg];
                sink.pages(self.pid, a, bytes).map_err(|source| PrecopyError::Sink {
                    pid: self.pid,
                    vaddr: a,
                    len: bytes.len(),
                    source,
                })?;
                self.out.sent.push((a, b));
                self.out.stats.pages += (j - i) as u64;
                self.out.stats.bytes += bytes.len() as u64;
            }
            self.out.held.push((a, b));
            i = j;
        }
        Ok(())
    }

    /// Sends the sorted ranges `ranges`.
    fn send(&mut self, ranges: &[(u64, u64)], buf: &mut [u8], sink: &mut dyn PageSink) -> Result<()> {
        let mut i = 0;
        while i < ranges.len() {
            // Short ranges (the scattered pages of later rounds) are read
            // many at a time.
            let mut batch = Vec::new();
            let mut room = buf.len();
            while let Some(&(s, e)) = ranges.get(i + batch.len()) {
                let len = (e - s) as usize;
                if len > room || batch.len() == lpm_sys::ptrace::MAX_RANGES || len >= buf.len() / 4 {
                    break;
                }
                batch.push((s, len));
                room -= len;
            }
            if batch.len() > 1 && !self.via_mem && self.file.is_none() {
                let got = lpm_sys::ptrace::read_mem_ranges(self.pid, &batch, buf).unwrap_or(0);
                let mut off = 0;
                let mut done = 0;
                for &(s, len) in &batch {
                    if off + len > got {
                        break;
                    }
                    self.emit(s, &buf[off..off + len], sink)?;
                    off += len;
                    done += 1;
                }
                i += done;
                if done < batch.len() {
                    // The range the batch stopped at, alone (what of it is
                    // still there); the next batch starts after it.
                    let (s, len) = batch[done];
                    self.send_range(s, s + len as u64, buf, sink)?;
                    i += 1;
                }
                continue;
            }
            let (s, e) = ranges[i];
            self.send_range(s, e, buf, sink)?;
            i += 1;
        }
        Ok(())
    }

    /// Sends one range, in pieces as large as `buf`.
    fn send_range(&mut self, s: u64, e: u64, buf: &mut [u8], sink: &mut dyn PageSink) -> Result<()> {
        let mut at = s;
        while at < e {
            let len = ((e - at) as usize).min(buf.len());
            let got = self.read(at, &mut buf[..len]);
            self.emit(at, &buf[..got], sink)?;
            at += got as u64;
            if got < len {
                // Unmapped since the collection: nothing to hold.
                self.out.stats.unreadable += 1;
                at += PAGE;
            }
        }
        Ok(())
    }
}

impl Precopy {
    /// Starts tracking the writes of running processes `pids` (each is
    /// stopped for a moment). A process that exited meanwhile is skipped.
    pub fn start(pids: &[i32]) -> Result<Precopy> {
        // Listening before any tracking starts: a fork after it is heard.
        let events = lpm_sys::procevents::ProcEvents::listen()
            .map_err(|e| tracing::debug!(error = %e, "no process events: shared memory goes whole into the stop"))
            .ok();
        let mut procs = Vec::with_capacity(pids.len());
        let mut dead = Vec::new();
        let ppid = |pid: i32| lpm_engine::proc::Stat::read(pid).map(|s| s.num(4) as i32).unwrap_or(0);
        let parents: Vec<i32> = pids.iter().map(|&p| ppid(p)).collect();
        for (i, &pid) in pids.iter().enumerate() {
            let related = pids.contains(&parents[i]) || parents.contains(&pid);
            let opened = DirtyTracker::start(pid).map_err(|source| PrecopyError::Track { pid, source }).and_then(|tracker| {
                let pagemap = Pagemap::open(pid).map_err(|source| PrecopyError::Pagemap { pid, source })?;
                Ok(Proc {
                    pid,
                    tracker,
                    pagemap,
                    mem: None,
                    related,
                    held: RangeSet::new(),
                    pending: RangeSet::new(),
                    ever: RangeSet::new(),
                    untracked: 0,
                    shared: Vec::new(),
                    forked: false,
                })
            });
            match opened {
                Ok(p) => procs.push(p),
                Err(_) if gone(pid) => dead.push(pid),
                Err(e) => return Err(e),
            }
        }
        let mut pc = Precopy {
            procs,
            objs: Vec::new(),
            inotify: None,
            events,
            tracked: pids.to_vec(),
            lost: None,
            reset: None,
            resets: 0,
            heard: Vec::new(),
            gone: dead,
            bufs: vec![vec![0; CHUNK]],
            regions: Vec::new(),
            rounds: 0,
            last_collect: Instant::now(),
        };
        pc.find_objects()?;
        Ok(pc)
    }

    /// Opens and watches the shared objects the tracked processes map,
    /// once their writes are tracked: what round 1 reads from them is
    /// then either current or reported written later.
    fn find_objects(&mut self) -> Result<()> {
        use rustix::fs::inotify;
        // Off for a comparison: every object then goes whole into the
        // stop, as before pre-copy took them.
        if std::env::var_os("LPM_SHM_PRECOPY").is_some_and(|v| v == "0") || self.events.is_none() {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.procs {
            let pid = p.pid;
            let maps = match proc::maps(pid) {
                Ok(m) => m,
                Err(_) if gone(pid) => continue,
                Err(source) => return Err(PrecopyError::Maps { pid, source }),
            };
            for e in &maps {
                let Some(r) = lpm_engine::shm_object(e) else { continue };
                if !seen.insert(r) {
                    continue;
                }
                let path = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
                // Unmapped meanwhile, or of huge pages (a SysV segment made
                // with SHM_HUGETLB, which the checkpoint refuses anyway):
                // not pre-copied.
                let Ok(file) = File::open(&path) else { continue };
                if !rustix::fs::fstatfs(&file).is_ok_and(|s| s.f_type == libc::TMPFS_MAGIC) {
                    continue;
                }
                let Ok(md) = file.metadata() else { continue };
                if self.inotify.is_none() {
                    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                        .map_err(|e| PrecopyError::Watch { pid, path: path.clone(), source: e.into() })?;
                    self.inotify = Some(fd);
                }
                let fd = self.inotify.as_ref().expect("made above");
                let wd = match inotify::add_watch(fd, &path, inotify::WatchFlags::MODIFY | inotify::WatchFlags::ATTRIB) {
                    Ok(wd) => wd,
                    Err(_) if File::open(&path).is_err() => continue,
                    Err(e) => return Err(PrecopyError::Watch { pid, path, source: e.into() }),
                };
                let key = object_key(self.objs.len());
                self.objs.push(Obj {
                    r,
                    key,
                    file,
                    size: md.len(),
                    wd,
                    held: RangeSet::new(),
                    pending: RangeSet::new(),
                    ever: RangeSet::new(),
                    spoiled: None,
                });
            }
        }
        Ok(())
    }

    /// Applies what the last collection found about the shared objects:
    /// writes through mappings (pending again), files opened on them
    /// (spoiled), processes that came or went (every object pending again,
    /// once the new ones are tracked). `last`: the tree is stopped for
    /// good, and a process forked since the previous collection is left
    /// untracked (the checkpoint then saves every object whole).
    fn collect_objects(&mut self, last: bool) {
        if self.objs.is_empty() {
            return;
        }
        for p in &mut self.procs {
            for (r, s, e) in std::mem::take(&mut p.shared) {
                let Some(o) = self.objs.iter_mut().find(|o| o.r == r) else { continue };
                let (s, e) = (s.min(o.size), e.min(o.size.div_ceil(PAGE) * PAGE));
                if s < e && o.spoiled.is_none() {
                    o.pending.insert(s, e);
                    o.held.remove(s, e);
                }
            }
        }
        self.hear();
        // A new thread shares its process's page tables: only new
        // processes count. In the order heard, so that a child's own
        // children are known as the tree's.
        for f in std::mem::take(&mut self.heard) {
            if f.child_pid != f.child_tgid || !self.tracked.contains(&f.parent_tgid) {
                continue;
            }
            let child = f.child_tgid;
            self.tracked.push(child);
            // What it wrote before its page tables are tracked (a fork is
            // heard after the fact) is unknown: every page again.
            self.reset.get_or_insert_with(|| format!("pid {} forked pid {child} during pre-copy", f.parent_tgid));
            if last {
                // Frozen, as all the tree: the objects read after the
                // reset below hold what it wrote.
                continue;
            }
            if self.objs.iter().all(|o| o.spoiled.is_some()) {
                continue;
            }
            if let Err(e) = self.follow(child) {
                if gone(child) {
                    tracing::debug!(pid = child, error = %e, "forked process gone before it was tracked");
                } else {
                    self.lost.get_or_insert_with(|| format!("pid {child}, forked during pre-copy, cannot be tracked: {e}"));
                }
            }
        }
        if let Some(fd) = &self.inotify {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut r = rustix::fs::inotify::Reader::new(fd, &mut buf);
            while let Ok(ev) = r.next() {
                let wd = ev.wd();
                for o in self.objs.iter_mut().filter(|o| o.wd == wd || wd < 0) {
                    o.spoil("written through a file opened on it");
                }
            }
        }
        if let Some(why) = &self.lost {
            if self.objs.iter().any(|o| o.spoiled.is_none()) {
                tracing::debug!(why = %why, "shared memory goes whole into the stop");
            }
            for o in &mut self.objs {
                o.spoil("tracking lost during pre-copy");
            }
        }
        if let Some(why) = self.reset.take() {
            if std::env::var(SABOTAGE_ENV).is_ok_and(|v| v.split(',').any(|f| f.trim() == "precopy-fork-window")) {
                tracing::warn!(why = %why, "sabotaged: what a process that came or went wrote unseen is not sent again");
                return;
            }
            self.resets += 1;
            let size: u64 = self.objs.iter().filter(|o| o.spoiled.is_none()).map(|o| o.size).sum();
            if self.resets > MAX_RESETS && size > RESET_MAX_BYTES {
                // A tree that forks in every round (a server forking a
                // worker per connection) would send its objects whole in
                // every round and never converge: after a few, they go
                // whole into the stop instead, as without tracking.
                tracing::debug!(why = %why, resets = self.resets, bytes = size, "processes keep coming and going: shared memory goes whole into the stop");
                for o in &mut self.objs {
                    o.spoil("processes kept coming and going during pre-copy");
                }
                return;
            }
            tracing::debug!(why = %why, "shared memory goes again in the next round");
            for o in &mut self.objs {
                o.reset();
            }
        }
    }

    /// Reads the forks heard since the last look into `heard`; lost
    /// events make tracking untrustworthy.
    fn hear(&mut self) {
        let Some(ev) = &self.events else { return };
        match ev.forks(&mut self.heard) {
            Ok(true) => {}
            Ok(false) => {
                self.lost.get_or_insert_with(|| "process events were lost".into());
            }
            Err(e) => {
                self.lost.get_or_insert_with(|| format!("process events unreadable: {e}"));
            }
        }
    }

    /// Starts tracking `pid`, forked by a tracked process during
    /// pre-copy: its writes from now on, and (the target holds nothing of
    /// it) every present page of its own for the next round.
    fn follow(&mut self, pid: i32) -> Result<()> {
        let tracker = DirtyTracker::start(pid).map_err(|source| PrecopyError::Track { pid, source })?;
        let pagemap = Pagemap::open(pid).map_err(|source| PrecopyError::Pagemap { pid, source })?;
        let mut p = Proc {
            pid,
            tracker,
            pagemap,
            mem: None,
            // It shares its parent's pages copy-on-write.
            related: true,
            held: RangeSet::new(),
            pending: RangeSet::new(),
            ever: RangeSet::new(),
            untracked: 0,
            shared: Vec::new(),
            forked: true,
        };
        p.pending = p.all_existing(&mut self.regions)?;
        tracing::debug!(pid, pages = p.pending.pages(), "forked process tracked");
        self.procs.push(p);
        Ok(())
    }

    /// Whether a process of the tree came or went since the last
    /// collection while shared memory is pre-copied: then the next round
    /// sends every object again, which the stop would otherwise do. Reads
    /// what was heard (kept for the next collection) and looks at each
    /// process.
    pub fn tree_changed(&mut self) -> bool {
        if self.objs.iter().all(|o| o.spoiled.is_some()) {
            return false;
        }
        self.hear();
        self.reset.is_some()
            || self.heard.iter().any(|f| f.child_pid == f.child_tgid && self.tracked.contains(&f.parent_tgid))
            || self.procs.iter().any(|p| gone(p.pid))
    }

    /// Sends the objects' pending pages to `sink`.
    fn send_objects(&mut self, sink: &mut dyn PageSink, st: &mut RoundStats) -> Result<()> {
        let buf = &mut self.bufs[0];
        for o in &mut self.objs {
            o.send_pending(buf, sink, st)?;
        }
        Ok(())
    }

    /// Runs `f` on every process; a process that failed because it exited
    /// is dropped (its tracker with it), any other failure is returned.
    fn each(&mut self, mut f: impl FnMut(&mut Proc, &mut Vec<Vec<u8>>, &mut Vec<Region>) -> Result<()>) -> Result<()> {
        let mut i = 0;
        while i < self.procs.len() {
            match f(&mut self.procs[i], &mut self.bufs, &mut self.regions) {
                Ok(()) => i += 1,
                Err(e) if gone(self.procs[i].pid) => {
                    let p = self.procs.remove(i);
                    tracing::debug!(pid = p.pid, error = %e, "process exited during pre-copy");
                    // What it wrote to shared memory since its last
                    // collection went away with its page tables.
                    self.reset.get_or_insert_with(|| format!("pid {} exited during pre-copy", p.pid));
                    self.gone.push(p.pid);
                }
                Err(e) if self.procs[i].forked => {
                    // A process followed since its fork that cannot be
                    // collected (it ran another program: its tracker
                    // watched the address space it left) is left to the
                    // checkpoint, which saves every object whole for an
                    // untracked process.
                    let p = self.procs.remove(i);
                    tracing::debug!(pid = p.pid, error = %e, "a forked process is no longer tracked");
                    self.lost.get_or_insert_with(|| format!("pid {} no longer tracked: {e}", p.pid));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Collects what the processes wrote since the last collection into
    /// the pending set: how much, and how much the next round sends.
    pub fn collect(&mut self) -> Result<Collected> {
        let mut found = 0;
        self.each(|p, _, regions| {
            found += p.collect(regions, false)?;
            Ok(())
        })?;
        let before: u64 = self.objs.iter().map(|o| o.pending.pages()).sum();
        self.collect_objects(false);
        found += self.objs.iter().map(|o| o.pending.pages()).sum::<u64>().saturating_sub(before);
        let now = Instant::now();
        let interval = now - std::mem::replace(&mut self.last_collect, now);
        let untracked = self.procs.iter().map(|p| p.untracked).sum();
        Ok(Collected { found, pending: self.pending_pages(), untracked, interval })
    }

    /// Runs one round: collects, then sends every pending page (in the
    /// first round every present page) to `sink`.
    pub fn round(&mut self, sink: &mut dyn PageSink) -> Result<RoundStats> {
        let t = Instant::now();
        let mut st = self.begin_round()?;
        self.each(|p, bufs, _| p.send_pending(&mut bufs[0], sink, &mut st))?;
        self.send_objects(sink, &mut st)?;
        Ok(self.end_round(st, t))
    }

    /// As [`Precopy::round`], over `sinks` at once: each process's pages
    /// are split into as many shares, each read and handed to its sink by
    /// a thread of its own. One sink runs no thread.
    pub fn round_parallel(&mut self, sinks: &mut [&mut (dyn PageSink + Send)]) -> Result<RoundStats> {
        if let [one] = sinks {
            return self.round(&mut **one);
        }
        let t = Instant::now();
        let mut st = self.begin_round()?;
        while self.bufs.len() < sinks.len() {
            self.bufs.push(vec![0; CHUNK]);
        }
        self.each(|p, bufs, _| p.send_pending_parallel(bufs, sinks, &mut st))?;
        self.send_objects(&mut *sinks[0], &mut st)?;
        Ok(self.end_round(st, t))
    }

    /// Collects, and in round 1 makes every present page pending.
    fn begin_round(&mut self) -> Result<RoundStats> {
        self.collect()?;
        if self.rounds == 0 {
            self.each(|p, _, regions| {
                let all = p.all_existing(regions)?;
                p.pending.union(&all);
                Ok(())
            })?;
            // An object's data extents: its holes are not read.
            for o in self.objs.iter_mut().filter(|o| o.spoiled.is_none()) {
                let all = o.extents();
                o.pending.union(&all);
            }
        }
        self.rounds += 1;
        Ok(RoundStats { round: self.rounds, dirty_found: self.pending_pages(), ..Default::default() })
    }

    fn end_round(&self, mut st: RoundStats, started: Instant) -> RoundStats {
        st.duration = started.elapsed();
        tracing::debug!(round = st.round, pages = st.pages, zero = st.zero_skipped, ms = st.duration.as_millis() as u64, "pre-copy round");
        st
    }

    /// Ends pre-copy once the processes are frozen: the last round sends
    /// what they wrote since the previous one, straight from their memory
    /// to `sink`, the way every round does (a checkpoint of those pages
    /// would copy them into image files, send the files and copy them
    /// again on the target, all inside the downtime). Returns the round's
    /// figures and, per process still alive, the sorted page ranges the
    /// target now holds current (for `DumpOptions::precopied`).
    ///
    /// The trackers stay until the [`Precopy`] is dropped: unregistering
    /// walks every page table of the tracked areas (20 ms for 1 GiB), which
    /// a migration does after its downtime, once the source copy is gone.
    /// Called once; a round after it would find the same pages again.
    pub fn finish(&mut self, sink: &mut dyn PageSink) -> Result<Finished> {
        let t = Instant::now();
        // A read-only look: nothing runs any more, so nothing needs to be
        // write-protected again.
        self.each(|p, _, regions| p.collect(regions, true).map(drop))?;
        self.collect_objects(true);
        self.rounds += 1;
        let mut st = RoundStats { round: self.rounds, dirty_found: self.pending_pages(), ..Default::default() };
        let mut rec = Recording { inner: sink, sent: HashMap::new() };
        self.each(|p, bufs, _| p.send_pending(&mut bufs[0], &mut rec, &mut st))?;
        let last_sent = rec.sent;
        self.send_objects(sink, &mut st)?;
        let mut shm = HashMap::new();
        for o in self.objs.iter().filter(|o| o.spoiled.is_none()) {
            let mut held = o.held.clone();
            // As for a process: past the end of the target's file a held
            // zero page would read short.
            held.remove(o.ever.ranges().last().map_or(0, |r| r.1), u64::MAX);
            shm.insert(o.r, PrecopiedShm { file: crate::store::pages_file_name(o.key), ranges: held.into_vec() });
        }
        st.duration = t.elapsed();
        tracing::debug!(pages = st.pages, zero = st.zero_skipped, ms = st.duration.as_secs_f64() * 1e3, "last round, frozen");
        let mut out = HashMap::new();
        for p in &self.procs {
            // No scan of what is present: the dump keeps only present,
            // non-zero anonymous pages of these ranges anyway.
            let mut held = p.held.clone();
            // Zero pages held without being sent read as zero only inside
            // the receiver's file: past its end (the end of the highest
            // page ever sent) a restore would find it short.
            held.remove(p.ever.ranges().last().map_or(0, |r| r.1), u64::MAX);
            out.insert(p.pid, held.into_vec());
        }
        // Every process the tree ever had is accounted for: one forked since
        // the last collection (frozen since, its writes read by this
        // round's reset of the objects) or one that exited and is still a
        // zombie of the tree has nothing of its own held (a zombie has no
        // memory to restore); so the checkpoint takes the objects' held
        // pages. One that could not be followed spoiled them.
        for &pid in &self.tracked {
            // Reaped: no longer of the tree.
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                out.entry(pid).or_default();
            }
        }
        for (pid, r) in out.iter_mut() {
            if gone(*pid) {
                r.clear();
            }
        }
        Ok(Finished { stats: st, held: out, last_sent, shm })
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Processes still tracked.
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// Processes that exited during pre-copy.
    pub fn exited(&self) -> &[i32] {
        &self.gone
    }

    /// Pages found dirty and not sent yet, over all processes.
    pub fn pending_pages(&self) -> u64 {
        self.procs.iter().map(|p| p.pending.pages()).sum::<u64>() + self.objs.iter().map(|o| o.pending.pages()).sum::<u64>()
    }

    /// The pages of `pid` whose current content the target holds, as far
    /// as the last collection knows.
    pub fn held(&self, pid: i32) -> Option<&RangeSet> {
        self.procs.iter().find(|p| p.pid == pid).map(|p| &p.held)
    }

    /// Pages held by the target, over all processes.
    pub fn held_pages(&self) -> u64 {
        self.procs.iter().map(|p| p.held.pages()).sum()
    }

    /// The shared memory objects pre-copied, with the pages the target
    /// holds of each, and whether it goes whole into the stop.
    pub fn objects(&self) -> Vec<(ShmRef, u64, bool)> {
        self.objs.iter().map(|o| (o.r, o.held.pages(), o.spoiled.is_some())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ranges = &'static [(u64, u64)];

    fn set(r: &[(u64, u64)]) -> RangeSet {
        RangeSet::from_ranges(r.iter().copied())
    }

    #[test]
    fn split_shares_pages_evenly_in_order() {
        let p = PAGE;
        let ranges = [(0, 10 * p), (20 * p, 21 * p), (30 * p, 35 * p)];
        let shares = split(&ranges, 4);
        assert_eq!(shares.len(), 4);
        // 16 pages: 4 each, in order, cut at page boundaries.
        assert_eq!(shares[0], vec![(0, 4 * p)]);
        assert_eq!(shares[1], vec![(4 * p, 8 * p)]);
        assert_eq!(shares[2], vec![(8 * p, 10 * p), (20 * p, 21 * p), (30 * p, 31 * p)]);
        assert_eq!(shares[3], vec![(31 * p, 35 * p)]);
        let all: Vec<(u64, u64)> = shares.concat();
        assert_eq!(RangeSet::from_ranges(all).into_vec(), ranges.to_vec());
        // More shares than pages: the rest are empty; one share: as given.
        let few = split(&[(0, 2 * p)], 3);
        assert_eq!(few, vec![vec![(0, p)], vec![(p, 2 * p)], vec![]]);
        assert_eq!(split(&ranges, 1), vec![ranges.to_vec()]);
        assert_eq!(split(&[], 2), vec![Vec::<(u64, u64)>::new(), vec![]]);
    }

    #[test]
    fn insert_merges_overlapping_and_touching() {
        #[rustfmt::skip]
        let table: &[(&str, Ranges, (u64, u64), Ranges)] = &[
            ("into empty", &[], (10, 20), &[(10, 20)]),
            ("empty range", &[(10, 20)], (30, 30), &[(10, 20)]),
            ("before, apart", &[(10, 20)], (0, 5), &[(0, 5), (10, 20)]),
            ("after, apart", &[(10, 20)], (25, 30), &[(10, 20), (25, 30)]),
            ("touching the end", &[(10, 20)], (20, 30), &[(10, 30)]),
            ("touching the start", &[(10, 20)], (5, 10), &[(5, 20)]),
            ("inside", &[(10, 20)], (12, 15), &[(10, 20)]),
            ("bridging two", &[(10, 20), (30, 40)], (20, 30), &[(10, 40)]),
            ("covering several", &[(10, 20), (30, 40), (50, 60)], (5, 55), &[(5, 60)]),
            ("between", &[(10, 20), (50, 60)], (30, 40), &[(10, 20), (30, 40), (50, 60)]),
        ];
        for (name, start, (s, e), want) in table {
            let mut r = set(start);
            r.insert(*s, *e);
            assert_eq!(r.ranges(), *want, "{name}");
        }
    }

    #[test]
    fn remove_splits_and_trims() {
        #[rustfmt::skip]
        let table: &[(&str, Ranges, (u64, u64), Ranges)] = &[
            ("from empty", &[], (10, 20), &[]),
            ("middle splits", &[(10, 40)], (20, 30), &[(10, 20), (30, 40)]),
            ("whole", &[(10, 40)], (10, 40), &[]),
            ("more than whole", &[(10, 40)], (0, 50), &[]),
            ("head", &[(10, 40)], (0, 20), &[(20, 40)]),
            ("tail", &[(10, 40)], (30, 50), &[(10, 30)]),
            ("touching only", &[(10, 20), (30, 40)], (20, 30), &[(10, 20), (30, 40)]),
            ("across several", &[(10, 20), (30, 40), (50, 60)], (15, 55), &[(10, 15), (55, 60)]),
            ("empty range", &[(10, 20)], (15, 15), &[(10, 20)]),
        ];
        for (name, start, (s, e), want) in table {
            let mut r = set(start);
            r.remove(*s, *e);
            assert_eq!(r.ranges(), *want, "{name}");
        }
    }

    #[test]
    fn subtract_union_intersect() {
        #[rustfmt::skip]
        let table: &[(Ranges, Ranges, Ranges, Ranges, Ranges)] = &[
            // a, b, a - b, a | b, a & b
            (&[(0, 100)], &[(10, 20), (30, 40)], &[(0, 10), (20, 30), (40, 100)], &[(0, 100)], &[(10, 20), (30, 40)]),
            (&[(0, 10), (20, 30)], &[(5, 25)], &[(0, 5), (25, 30)], &[(0, 30)], &[(5, 10), (20, 25)]),
            (&[(0, 10)], &[(10, 20)], &[(0, 10)], &[(0, 20)], &[]),
            (&[(0, 10), (20, 30), (40, 50)], &[(0, 50)], &[], &[(0, 50)], &[(0, 10), (20, 30), (40, 50)]),
            (&[], &[(0, 10)], &[], &[(0, 10)], &[]),
            (&[(0, 10)], &[], &[(0, 10)], &[(0, 10)], &[]),
            (&[(0, 10), (12, 14), (16, 30)], &[(5, 13), (15, 17), (29, 40)], &[(0, 5), (13, 14), (17, 29)], &[(0, 14), (15, 40)],
                &[(5, 10), (12, 13), (16, 17), (29, 30)]),
        ];
        for (a, b, diff, uni, inter) in table {
            let (sa, sb) = (set(a), set(b));
            let mut d = sa.clone();
            d.subtract(&sb);
            assert_eq!(d.ranges(), *diff, "{a:?} - {b:?}");
            let mut u = sa.clone();
            u.union(&sb);
            assert_eq!(u.ranges(), *uni, "{a:?} | {b:?}");
            assert_eq!(sa.intersect(&sb).ranges(), *inter, "{a:?} & {b:?}");
            assert_eq!(sb.intersect(&sa).ranges(), *inter, "{b:?} & {a:?}");
        }
    }

    #[test]
    fn queries_and_counts() {
        let r = set(&[(0x1000, 0x3000), (0x5000, 0x6000), (0x2000, 0x2800)]);
        assert_eq!(r.ranges(), &[(0x1000, 0x3000), (0x5000, 0x6000)]);
        assert_eq!((r.len(), r.pages()), (0x3000, 3));
        assert!(r.overlaps(0x2fff, 0x4000) && !r.overlaps(0x3000, 0x5000) && r.overlaps(0, 0x1001));
        assert!(r.contains(0x1000, 0x3000) && !r.contains(0x1000, 0x3001) && !r.contains(0x3000, 0x6000));
        assert!(RangeSet::new().is_empty() && !RangeSet::new().overlaps(0, u64::MAX));
    }

    /// Random operations against a bitmap model.
    #[test]
    fn matches_a_bitmap_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut r = RangeSet::new();
        let mut bits = [false; 200];
        for _ in 0..5000 {
            let (a, b) = (rnd(200), rnd(200));
            let (s, e) = (a.min(b), a.max(b));
            match rnd(3) {
                0 => {
                    r.insert(s, e);
                    bits[s as usize..e as usize].iter_mut().for_each(|x| *x = true);
                }
                1 => {
                    r.remove(s, e);
                    bits[s as usize..e as usize].iter_mut().for_each(|x| *x = false);
                }
                _ => {
                    let o = set(&[(s, e), (e.saturating_add(3), e.saturating_add(9).min(200))]);
                    r.subtract(&o);
                    for &(x, y) in o.ranges() {
                        bits[x as usize..y as usize].iter_mut().for_each(|v| *v = false);
                    }
                }
            }
            let model = RangeSet::from_ranges(bits.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| (i as u64, i as u64 + 1)));
            assert_eq!(r, model);
            assert!(r.ranges().windows(2).all(|w| w[0].1 < w[1].0), "not merged: {r:?}");
        }
    }
}
