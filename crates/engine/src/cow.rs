//! Pages shared copy-on-write between processes of the tree since a fork.
//! A restore shares them again (one physical page until a process writes
//! it) instead of copying them into every process, which would change
//! what /proc/PID/pagemap shows and multiply the memory the tree uses.
//!
//! Dump ([`CowTable`]): for every process with a parent or a child in the
//! tree, the pagemap entries of its present private pages give their page
//! frames. A page mapped more than once whose frame a process dumped
//! earlier (parents come first) maps at the same address is recorded as a
//! run naming that process (`PageRun::cow_pid`, the representative of the
//! pages' group, whose own run holds the data) and is not read. A frame
//! shared at another address (moved by mremap since the fork) cannot be
//! shared again by forking, and is refused by name. KSM pages, merged by
//! content rather than by a fork, stay each process's own.
//!
//! Restore ([`Plan`]): sharing can only come from fork. The puppets are
//! cloned parent first, each from its parent once the parent's areas are
//! mapped ([`crate::mem::layout`]), and the plan says what every process
//! holds when it forks each child: for a group of processes sharing a
//! page (its members), the members' lowest common ancestor and every
//! process on the way down to a member hold the group's page when they
//! fork the child toward it. A process that is not a member of a page's
//! group drops what it held for its children before it is filled; a
//! member keeps the page it inherited (or wrote, at the top). As in the
//! original history, a process holds one page at an address at a time,
//! and can give a page to its children only while it holds it: a plan
//! that needs a member to give up its own shared page for a child forked
//! later, or a process to hand on a page at an address it no longer maps,
//! is refused at checkpoint (and at restore), naming the process and the
//! page. Children are forked in the order they were (start time, then
//! the order they were found in).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use lpm_image::{Mm, PageRun, Process, TreeImage, Vma, VmaKind};
use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT};

use crate::{EngineError, Result, StepExt, PAGE};

/// KPF_KSM in /proc/kpageflags.
const KPF_KSM: u64 = 1 << 21;

/// The page frames of the processes dumped so far, and where they map
/// them.
pub(crate) struct CowTable {
    frames: HashMap<u64, (u32, u64)>,
    /// /proc/kpageflags, open when KSM has merged pages somewhere on the
    /// host (else no page can be a KSM page, and none is looked up).
    kpageflags: Option<File>,
    /// The frames of every process's shared pages ([`CowTable::settle`]),
    /// by pid and address: read as one consistent picture, which the
    /// process-by-process dump would not give.
    settled: HashMap<i32, HashMap<u64, u64>>,
}

/// How long the tree's shared pages are read again at most to get two
/// reads in a row that agree. A page migrates rarely and the second read
/// nearly always agrees with the first; a compaction pass moves pages for
/// some tens of milliseconds on end, and the reads agree once it is done.
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

impl CowTable {
    pub(crate) fn new() -> Result<CowTable> {
        let merged = std::fs::read_to_string("/sys/kernel/mm/ksm/pages_shared").ok().and_then(|s| s.trim().parse::<u64>().ok());
        let kpageflags = match merged {
            Some(n) if n > 0 => Some(File::open("/proc/kpageflags").map_err(crate::io_err("open /proc/kpageflags"))?),
            _ => None,
        };
        Ok(CowTable { frames: HashMap::new(), kpageflags, settled: HashMap::new() })
    }

    /// Reads the frames of the present pages that `procs` (pid, areas)
    /// share with any other process, again and again until two reads in a
    /// row agree, and keeps them for [`CowTable::split`]. A read after one
    /// of the stopped tree reads only the pages that one found shared or
    /// in a swap entry ([`read_again`]): a PostgreSQL backend's pages of
    /// its own are not read again while compaction moves shared ones.
    ///
    /// The kernel migrates pages (compaction) even in a frozen tree,
    /// changing the frame of a page in every process that maps it at once.
    /// Read process by process as the dump goes, a page shared by a parent
    /// and two children and moved between the parent's read and theirs
    /// shows as two groups: the parent's with none and the children's
    /// with each other, a history no fork order gives, and the checkpoint
    /// was refused (seen with PostgreSQL: once in about 45 migrations).
    /// When two reads agree, every page kept its frame from its first
    /// read to its second, so every process read in between saw it there.
    ///
    /// `ahead` is a read taken before the stop ([`read_shared_pages`]): it
    /// counts as the first read of the processes it covers, so that a
    /// tree whose shared pages did not change since spares the
    /// stop one read of every page table. Reads taken one after another
    /// and agreeing prove the same whether the tree ran before the second
    /// or not: a page's frame cannot change and change back between them
    /// any more than between two reads in the stop.
    pub(crate) fn settle(&mut self, procs: &[(i32, &[crate::proc::MapEntry])], ahead: Option<&SharedPages>) -> Result<()> {
        let t = std::time::Instant::now();
        // A process the read ahead missed (forked since) is read here:
        // every part of the first read still precedes the second.
        let ahead = ahead.map(|a| &a.0);
        let missed: Vec<(i32, &[crate::proc::MapEntry])> =
            procs.iter().filter(|(pid, _)| ahead.is_none_or(|a| !a.contains_key(pid))).copied().collect();
        let used = missed.len() < procs.len();
        let (mut last, mut moving) = read_full(&missed)?;
        if let Some(a) = ahead {
            last.extend(procs.iter().filter_map(|(pid, _)| Some((*pid, a.get(pid)?.clone()))));
        }
        // The read ahead was taken while the tree ran: the read after it
        // is whole. After a read of the stopped tree, only what it found
        // shared or on its way (a swap or migration entry) is read again
        // ([`read_again`]).
        let mut whole = used;
        let mut reads = 1;
        while t.elapsed() < SETTLE_FOR {
            let (now, m) = if whole { read_full(procs)? } else { read_again(procs, &last, &moving)? };
            whole = false;
            reads += 1;
            if now == last {
                if reads > 2 {
                    tracing::debug!(reads, ms = t.elapsed().as_secs_f64() * 1e3, "shared pages moved while they were read");
                }
                tracing::debug!(reads, ahead = used, ms = t.elapsed().as_secs_f64() * 1e3, "shared pages settled");
                self.settled = now;
                return Ok(());
            }
            (last, moving) = (now, m);
        }
        Err(EngineError::Transient {
            pid: procs.first().map_or(0, |p| p.0),
            kind: "memory area",
            what: format!(
                "the frames of pages shared copy-on-write kept moving (page migration) for {} ms, {reads} reads of the tree's page tables",
                SETTLE_FOR.as_millis()
            ),
        })
    }

    fn ksm(&self, pfn: u64) -> Result<bool> {
        let Some(f) = &self.kpageflags else { return Ok(false) };
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, pfn * 8).map_err(crate::io_err(format!("read /proc/kpageflags at frame {pfn:#x}")))?;
        Ok(u64::from_le_bytes(b) & KPF_KSM != 0)
    }

    /// Splits the present pages `[start, end)` of `pid` into runs of its
    /// own pages (None) and of pages it shares with an earlier process of
    /// the tree at the same addresses (Some(that pid)); records its own
    /// pages that others may share.
    pub(crate) fn split(&mut self, pid: i32, pm: &mut Pagemap, start: u64, end: u64) -> Result<Vec<(u64, u64, Option<u32>)>> {
        let mut entries = Vec::with_capacity(((end - start) / PAGE) as usize);
        match self.settled.get(&pid) {
            // A page not among the settled shared ones was the process's
            // alone (or absent) then: no frame to look up.
            Some(shared) => entries.extend((start..end).step_by(PAGE as usize).map(|v| shared.get(&v).copied().unwrap_or(0))),
            None => pm.entries(start, end, &mut entries).step(pid, || format!("read pagemap of {start:#x}-{end:#x}"))?,
        }
        let mut out: Vec<(u64, u64, Option<u32>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let vaddr = start + i as u64 * PAGE;
            let pfn = e & PM_PFN_MASK;
            let shared = e & PM_PRESENT != 0 && e & PM_MMAP_EXCLUSIVE == 0 && pfn != 0;
            let with = if shared && !self.ksm(pfn)? {
                match self.frames.get(&pfn) {
                    Some(&(other, at)) if at == vaddr && other != pid as u32 => Some(other),
                    Some(&(other, at)) => {
                        return Err(EngineError::Unsupported {
                            pid,
                            kind: "memory area",
                            what: format!(
                                "page {vaddr:#x} is the page pid {other} maps at {at:#x}, shared copy-on-write since a fork and moved since (mremap): forking cannot share it again"
                            ),
                        })
                    }
                    None => {
                        self.frames.insert(pfn, (pid as u32, vaddr));
                        None
                    }
                }
            } else {
                None
            };
            match out.last_mut() {
                Some(last) if last.1 == vaddr && last.2 == with => last.1 = vaddr + PAGE,
                _ => out.push((vaddr, vaddr + PAGE, with)),
            }
        }
        Ok(out)
    }
}

/// The frames of the shared pages of a tree's processes, read while it
/// runs ([`read_shared_pages`]), for the stop's [`CowTable::settle`].
#[derive(Clone, Debug, Default)]
pub struct SharedPages(HashMap<i32, HashMap<u64, u64>>);

/// Reads the frames of the pages that each process of `maps` (pid, its
/// areas as [`crate::proc::smaps`] read them) shares with any other, as
/// [`CowTable::settle`] reads them; a process that cannot be read (gone)
/// is left out, and the stop reads it itself.
pub fn read_shared_pages(maps: &HashMap<i32, Vec<crate::proc::MapEntry>>) -> SharedPages {
    let mut out = HashMap::new();
    for (&pid, areas) in maps {
        if let Ok(mut one) = read_shared(&[(pid, areas.as_slice())]) {
            out.extend(one.drain());
        }
    }
    SharedPages(out)
}

/// The frames of the present pages of `procs` that are not the mapping
/// process's alone (pagemap entries as they are, by pid and address).
fn read_shared(procs: &[(i32, &[crate::proc::MapEntry])]) -> Result<HashMap<i32, HashMap<u64, u64>>> {
    Ok(read_full(procs)?.0)
}

/// One read of the shared pages: pagemap entries by pid and address.
type Frames = HashMap<i32, HashMap<u64, u64>>;
/// By pid, the ranges of a read's pages that were in a swap entry (a
/// page being migrated is in one meanwhile, in every process mapping
/// it), or may have been (a read of every page does not tell them from
/// userfaultfd's write-protect markers).
type Moving = HashMap<i32, Vec<(u64, u64)>>;

/// Pagemap entry: a swap entry (a page swapped out or being migrated, or
/// a marker).
const PM_SWAP: u64 = 1 << 62;
/// The swap type of userfaultfd's write-protect markers (the last one,
/// which no swap file gets; see [`Pagemap::without_markers`]).
const MARKER_TYPE: u64 = 31;

/// [`read_shared`] with the ranges of pages in a swap entry ([`Moving`]).
fn read_full(procs: &[(i32, &[crate::proc::MapEntry])]) -> Result<(Frames, Moving)> {
    let mut out = HashMap::new();
    let mut moving: Moving = HashMap::new();
    let mut regions = Vec::new();
    let mut entries = Vec::new();
    for &(pid, areas) in procs {
        let mut shared = HashMap::new();
        let private: Vec<_> = areas.iter().filter(|a| crate::mem::holds_private_pages(a)).collect();
        // A zombie has no areas, and no pagemap to open.
        if private.is_empty() {
            out.insert(pid, shared);
            continue;
        }
        let mut pm = Pagemap::open(pid).step(pid, || "open pagemap".into())?;
        for a in private {
            regions.clear();
            let both = (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) as u64;
            let q = Query { flags: 0, category_mask: 0, anyof_mask: both, return_mask: both };
            pm.scan(a.start, a.end, q, &mut regions).step(pid, || format!("scan pages of {:#x}-{:#x}", a.start, a.end))?;
            for r in &regions {
                if r.categories & PAGE_IS_PRESENT as u64 == 0 {
                    moving.entry(pid).or_default().push((r.start, r.end));
                    continue;
                }
                entries.clear();
                pm.entries(r.start, r.end, &mut entries).step(pid, || format!("read pagemap of {:#x}-{:#x}", r.start, r.end))?;
                for (i, &e) in entries.iter().enumerate() {
                    if e & PM_PRESENT != 0 && e & PM_MMAP_EXCLUSIVE == 0 && e & PM_PFN_MASK != 0 {
                        shared.insert(r.start + i as u64 * PAGE, e);
                    }
                }
            }
        }
        out.insert(pid, shared);
    }
    Ok((out, moving))
}

/// A read of the stopped tree after `last` (a read of it too), of the
/// pages `last` found shared or `moving` only: in a stopped tree no page
/// becomes shared that was not (only a fork, or KSM, whose pages stay
/// each process's own, maps a page in one more process; migration
/// changes where a page is, not who maps it), except one that was on its
/// way in a migration entry. What was shared and is no more (a page
/// that khugepaged copied into a huge page, or a mapping process outside
/// the tree that ended) shows as a difference, as a moved frame does.
fn read_again(procs: &[(i32, &[crate::proc::MapEntry])], last: &Frames, moving: &Moving) -> Result<(Frames, Moving)> {
    let mut out = HashMap::new();
    let mut next: Moving = HashMap::new();
    let mut entries = Vec::new();
    for &(pid, _) in procs {
        let mut shared = HashMap::new();
        let mut pages: Vec<u64> = last.get(&pid).map(|m| m.keys().copied().collect()).unwrap_or_default();
        pages.sort_unstable();
        let mut want = ranges(pages);
        want.extend(moving.get(&pid).into_iter().flatten().copied());
        want.sort_unstable();
        if want.is_empty() {
            out.insert(pid, shared);
            continue;
        }
        let mut pm = Pagemap::open(pid).step(pid, || "open pagemap".into())?;
        for (start, end) in merged(want) {
            entries.clear();
            pm.entries(start, end, &mut entries).step(pid, || format!("read pagemap of {start:#x}-{end:#x}"))?;
            for (i, &e) in entries.iter().enumerate() {
                let v = start + i as u64 * PAGE;
                if e & PM_PRESENT != 0 && e & PM_MMAP_EXCLUSIVE == 0 && e & PM_PFN_MASK != 0 {
                    shared.insert(v, e);
                } else if e & PM_PRESENT == 0 && e & PM_SWAP != 0 && e & 0x1f != MARKER_TYPE {
                    let m = next.entry(pid).or_default();
                    match m.last_mut() {
                        Some(l) if l.1 == v => l.1 = v + PAGE,
                        _ => m.push((v, v + PAGE)),
                    }
                }
            }
        }
        out.insert(pid, shared);
    }
    Ok((out, next))
}

/// Sorted ranges, overlapping or adjacent ones merged.
fn merged(sorted: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// What one process does about shared pages during the restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    /// Its children (zombies too), in the order they are forked.
    pub children: Vec<u32>,
    /// Before forking `children[i]`: the pages to write, each with the
    /// representative of its group (whose image holds the data).
    pub before: Vec<Vec<(u64, u32)>>,
    /// After the last fork: the pages of its own groups it does not hold
    /// yet (it is the top member of their groups).
    pub last: Vec<(u64, u32)>,
    /// Ranges it keeps of the areas it inherits from its parent: where
    /// the pages it shares, or hands on, are.
    pub kept: Vec<(u64, u64)>,
    /// Pages it holds once its children are forked that are not its own:
    /// dropped before its own pages are filled.
    pub stale: Vec<(u64, u64)>,
    /// Pages it holds that are its own, shared with others: its fill and
    /// the lazy fill leave them alone.
    pub own: Vec<(u64, u64)>,
}

/// What every process of a tree does about its shared pages.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    steps: HashMap<u32, Steps>,
}

impl Plan {
    /// The steps of process `pid` (image pid).
    /// No process shares a page with another: forking needs no page
    /// written first, and no area is kept from a parent for its pages.
    pub(crate) fn is_empty(&self) -> bool {
        self.steps
            .values()
            .all(|s| s.before.iter().all(Vec::is_empty) && s.last.is_empty() && s.kept.is_empty() && s.stale.is_empty() && s.own.is_empty())
    }

    pub(crate) fn of(&self, pid: u32) -> &Steps {
        static NONE: std::sync::OnceLock<Steps> = std::sync::OnceLock::new();
        self.steps.get(&pid).unwrap_or_else(|| NONE.get_or_init(Steps::default))
    }
}

/// The area of `mm` holding `vaddr`.
fn area(mm: &Mm, vaddr: u64) -> Option<&Vma> {
    let i = mm.vmas.partition_point(|v| v.end <= vaddr);
    mm.vmas.get(i).filter(|v| v.start <= vaddr)
}

fn kind(v: &Vma) -> VmaKind {
    VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid)
}

/// Whether a child's area `c` can keep, at the same addresses, what its
/// parent's area `p` holds when it forks: both map the same thing the
/// same way, as the restore maps them.
fn compatible(p: &Vma, c: &Vma) -> bool {
    let k = kind(p);
    let backing = match k {
        VmaKind::AnonPrivate => true,
        VmaKind::FilePrivate => p.path == c.path && p.inode == c.inode && p.pgoff.wrapping_sub(p.start) == c.pgoff.wrapping_sub(c.start),
        VmaKind::ShmemPrivate => p.shmem_id == c.shmem_id && p.pgoff.wrapping_sub(p.start) == c.pgoff.wrapping_sub(c.start),
        _ => false,
    };
    backing && k == kind(c) && p.flags == c.flags && crate::mem::initial_prot(p) == crate::mem::initial_prot(c) && charged(p) == charged(c)
}

fn charged(v: &Vma) -> bool {
    v.vm_flags.iter().any(|f| f == "ac")
}

/// Sorted pages to ranges.
fn ranges(pages: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match out.last_mut() {
            Some(last) if last.1 == p => last.1 = p + PAGE,
            _ => out.push((p, p + PAGE)),
        }
    }
    out
}

/// The plan of `tree` (module doc), or why no fork order shares its pages
/// again (an error naming the process and the page).
pub(crate) fn plan(tree: &TreeImage) -> Result<Plan> {
    let by_pid: HashMap<u32, &Process> = tree.processes.iter().map(|p| (p.pid, p)).collect();
    let refuse = |pid: u32, what: String| EngineError::Unsupported { pid: pid as i32, kind: "memory area", what };
    // member[pid][page] = representative of the page's group.
    let mut member: HashMap<u32, BTreeMap<u64, u32>> = HashMap::new();
    for p in &tree.processes {
        let Some(mm) = &p.mm else { continue };
        for r in mm.pages.iter().filter(|r| r.cow_pid != 0) {
            let rep = by_pid.get(&r.cow_pid).copied();
            let rep_mm = rep.and_then(|q| q.mm.as_ref()).ok_or_else(|| {
                EngineError::Incompatible(format!(
                    "pid {}: pages at {:#x} are shared with pid {}, which the image lacks",
                    p.pid, r.vaddr, r.cow_pid
                ))
            })?;
            for i in 0..r.npages {
                let v = r.vaddr + i * PAGE;
                if !holds_data(rep_mm, v) {
                    return Err(EngineError::Incompatible(format!(
                        "pid {}: page {v:#x} is shared with pid {}, whose image holds no data for it (its run there: {:?}; its area: {:?})",
                        p.pid,
                        r.cow_pid,
                        run_at(rep_mm, v).map(|r| (r.vaddr, r.npages, r.zero, r.cow_pid, r.precopied)),
                        area(rep_mm, v).map(|a| (a.start, a.end, a.kind, &a.path))
                    )));
                }
                member.entry(p.pid).or_default().insert(v, r.cow_pid);
                member.entry(r.cow_pid).or_default().insert(v, r.cow_pid);
            }
        }
    }
    let mut plan = Plan::default();
    for p in &tree.processes {
        plan.steps.entry(p.pid).or_default();
        if p.pid != tree.root_pid {
            plan.steps.entry(p.ppid).or_default().children.push(p.pid);
        }
    }
    // Children in the order they were forked: by start time, the image's
    // order within a clock tick (a restored tree's children, forked in
    // this order, are listed so).
    for s in plan.steps.values_mut() {
        s.children.sort_by_key(|c| by_pid[c].start_time);
    }
    if member.is_empty() {
        for s in plan.steps.values_mut() {
            s.before = vec![Vec::new(); s.children.len()];
        }
        return Ok(plan);
    }
    let parent = |pid: u32| by_pid.get(&pid).map(|p| p.ppid).filter(|_| pid != tree.root_pid);
    let depth = |mut pid: u32| {
        let mut d = 0;
        while let Some(q) = parent(pid) {
            pid = q;
            d += 1;
        }
        d
    };
    let lca = |a: u32, b: u32| {
        let (mut a, mut b, mut da, mut db) = (a, b, depth(a), depth(b));
        while da > db {
            a = parent(a).unwrap_or(a);
            da -= 1;
        }
        while db > da {
            b = parent(b).unwrap_or(b);
            db -= 1;
        }
        while a != b {
            a = parent(a).unwrap_or(a);
            b = parent(b).unwrap_or(b);
        }
        a
    };
    // Every group: its members.
    let mut groups: BTreeMap<(u32, u64), Vec<u32>> = BTreeMap::new();
    for (&pid, pages) in &member {
        for (&v, &rep) in pages {
            groups.entry((rep, v)).or_default().push(pid);
        }
    }
    // need[(X, Y)][page] = the group X must hold at page when it forks Y;
    // top[(rep, page)] = the group's lowest common ancestor.
    let mut need: HashMap<(u32, u32), BTreeMap<u64, u32>> = HashMap::new();
    let mut top: HashMap<(u32, u64), u32> = HashMap::new();
    for (&(rep, v), members) in &groups {
        let l = members.iter().copied().fold(rep, lca);
        top.insert((rep, v), l);
        for &m in members {
            let mut y = m;
            while y != l {
                let x = parent(y).expect("below the common ancestor");
                let slot = need.entry((x, y)).or_default();
                match slot.insert(v, rep) {
                    Some(other) if other != rep => {
                        return Err(refuse(
                            y,
                            format!(
                                "page {v:#x} would have to come from its parent {x} as the page of pid {rep} and of pid {other} at once"
                            ),
                        ))
                    }
                    _ => {}
                }
                y = x;
            }
        }
    }
    // Walk the tree from the root, parents first, as the restore forks.
    let empty = BTreeMap::new();
    let mut todo: Vec<(u32, BTreeMap<u64, u32>)> = vec![(tree.root_pid, BTreeMap::new())];
    while let Some((x, inherited)) = todo.pop() {
        let px = by_pid[&x];
        let own = member.get(&x).unwrap_or(&empty);
        let children = plan.steps[&x].children.clone();
        let mut steps = Steps { children: children.clone(), ..Default::default() };
        // What it needs of what it inherits: its own shared pages and those
        // it hands on, each kept with the part of its area and its parent's
        // that holds it.
        let mut hold: BTreeMap<u64, u32> = BTreeMap::new();
        if let (Some(mm), Some(pmm)) = (px.mm.as_ref(), parent(x).and_then(|q| by_pid[&q].mm.as_ref())) {
            let wanted: HashSet<u64> =
                own.keys().copied().chain(children.iter().filter_map(|y| need.get(&(x, *y))).flat_map(|n| n.keys().copied())).collect();
            for (&v, &rep) in inherited.iter().filter(|(v, _)| wanted.contains(v)) {
                let (Some(c), Some(p)) = (area(mm, v), area(pmm, v)) else { continue };
                if !compatible(p, c) {
                    continue;
                }
                let range = (p.start.max(c.start), p.end.min(c.end));
                if steps.kept.last() != Some(&range) && !steps.kept.contains(&range) {
                    steps.kept.push(range);
                }
                hold.insert(v, rep);
            }
            steps.kept.sort_unstable();
            // Anything else it inherited inside what it keeps is held too.
            for (&v, &rep) in &inherited {
                if steps.kept.iter().any(|&(s, e)| s <= v && v < e) {
                    hold.insert(v, rep);
                }
            }
        }
        for &y in &children {
            let mut writes = Vec::new();
            for (&v, &rep) in need.get(&(x, y)).unwrap_or(&empty) {
                if hold.get(&v) == Some(&rep) {
                    continue;
                }
                if top.get(&(rep, v)) != Some(&x) {
                    // Written here, the page would be a copy, not the
                    // group's: only the top of a group writes its page.
                    return Err(refuse(
                        x,
                        format!(
                            "its child {y} shares page {v:#x} with pid {rep} since a fork, but it does not map that address as its parent does (unmapped or mapped anew since), so the page cannot pass through it"
                        ),
                    ));
                }
                if let Some(&mine) = own.get(&v) {
                    if hold.get(&v) == Some(&mine) {
                        return Err(refuse(
                            x,
                            format!(
                                "page {v:#x}, shared with pid {mine}'s group, would have to be replaced by pid {rep}'s for its child {y}: no fork order gives that"
                            ),
                        ));
                    }
                }
                let writable = px
                    .mm
                    .as_ref()
                    .and_then(|mm| area(mm, v))
                    .is_some_and(|a| matches!(kind(a), VmaKind::AnonPrivate | VmaKind::FilePrivate | VmaKind::ShmemPrivate));
                if !writable {
                    return Err(refuse(
                        x,
                        format!("its child {y} shares page {v:#x} with pid {rep} since a fork, but it no longer maps that address privately to hand it on"),
                    ));
                }
                writes.push((v, rep));
                hold.insert(v, rep);
            }
            steps.before.push(writes);
            todo.push((y, hold.clone()));
        }
        for (&v, &rep) in own {
            if hold.get(&v) == Some(&rep) {
                continue;
            }
            if top.get(&(rep, v)) != Some(&x) {
                return Err(refuse(x, format!("page {v:#x} is shared with pid {rep}, but it did not get it from its parent")));
            }
            steps.last.push((v, rep));
            hold.insert(v, rep);
        }
        steps.own = ranges(own.keys().copied());
        steps.stale = ranges(hold.iter().filter(|(v, rep)| own.get(v) != Some(rep)).map(|(v, _)| *v));
        plan.steps.insert(x, steps);
    }
    Ok(plan)
}

/// Whether `mm` holds the content of page `vaddr` itself: a data or
/// precopied run, or a zero run (a page a child shares cannot be the zero
/// page, which is no process's: it is a page written full of zeros).
fn holds_data(mm: &Mm, vaddr: u64) -> bool {
    let i = mm.pages.partition_point(|r| r.vaddr + r.npages * PAGE <= vaddr);
    mm.pages.get(i).is_some_and(|r| r.vaddr <= vaddr && r.cow_pid == 0)
}

/// The run of `mm` holding `vaddr`.
pub(crate) fn run_at(mm: &Mm, vaddr: u64) -> Option<&PageRun> {
    let i = mm.pages.partition_point(|r| r.vaddr + r.npages * PAGE <= vaddr);
    mm.pages.get(i).filter(|r| r.vaddr <= vaddr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x10000;

    fn proc(pid: u32, ppid: u32, runs: Vec<PageRun>) -> Process {
        let vma = Vma {
            start: A,
            end: A + 16 * PAGE,
            prot: 3,
            flags: libc::MAP_PRIVATE as u32,
            kind: VmaKind::AnonPrivate as i32,
            vm_flags: vec!["rd".into(), "wr".into(), "ac".into()],
            ..Default::default()
        };
        Process { pid, ppid, mm: Some(Mm { vmas: vec![vma], pages: runs, ..Default::default() }), ..Default::default() }
    }

    fn data(page: u64, n: u64) -> PageRun {
        PageRun { vaddr: A + page * PAGE, npages: n, offset: 1, ..Default::default() }
    }

    fn cow(page: u64, n: u64, pid: u32) -> PageRun {
        PageRun { vaddr: A + page * PAGE, npages: n, cow_pid: pid, ..Default::default() }
    }

    fn tree(processes: Vec<Process>) -> TreeImage {
        TreeImage { root_pid: processes[0].pid, processes, ..Default::default() }
    }

    fn page(n: u64) -> u64 {
        A + n * PAGE
    }

    /// Kills the processes of a test on every way out.
    struct Reap(Vec<i32>, std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            for &pid in &self.0 {
                lpm_sys::misc::kill(pid, libc::SIGKILL);
            }
            let _ = self.1.kill();
            let _ = self.1.wait();
        }
    }

    /// A stopped parent and child sharing 6 MiB copy-on-write; one of its
    /// 2 MiB blocks is copied into a huge page in the child between two
    /// reads (MADV_COLLAPSE from outside, as khugepaged would): the read
    /// again of only the pages found shared sees the change, and the
    /// settled picture shares the rest and not that block.
    #[test]
    fn a_change_between_reads_of_a_stopped_tree_is_seen() {
        let script = "import mmap, os, signal, ctypes\n\
            m = mmap.mmap(-1, 6 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
            for i in range(0, 6 << 20, 4096): m[i] = 1\n\
            a = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
            pid = os.fork()\n\
            if pid == 0:\n    signal.pause()\n    os._exit(0)\n\
            print(pid, a, flush=True)\n\
            signal.pause()\n";
        let mut child =
            std::process::Command::new("python3").args(["-c", script]).stdout(std::process::Stdio::piped()).spawn().expect("python3");
        let parent = child.id() as i32;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let mut it = line.split_whitespace().map(|w| w.parse::<u64>().unwrap());
        let (kid, addr) = (it.next().unwrap() as i32, it.next().unwrap());
        let _reap = Reap(vec![kid, parent], child);
        for pid in [parent, kid] {
            lpm_sys::misc::signal_process(pid, libc::SIGSTOP).unwrap();
        }
        for pid in [parent, kid] {
            // Stopped: its state in /proc is T once the signal is taken.
            while crate::proc::Stat::read(pid).unwrap().state() != 'T' {
                std::thread::yield_now();
            }
        }
        let maps: Vec<(i32, Vec<crate::proc::MapEntry>)> = [parent, kid].iter().map(|&p| (p, crate::proc::smaps(p).unwrap())).collect();
        let procs: Vec<(i32, &[crate::proc::MapEntry])> = maps.iter().map(|(p, m)| (*p, m.as_slice())).collect();
        let end = addr + (6 << 20);
        let in_area = |f: &Frames, pid: i32, lo: u64, hi: u64| f[&pid].keys().filter(|&&v| lo <= v && v < hi).count() as u64;
        let (first, moving) = read_full(&procs).unwrap();
        assert_eq!(in_area(&first, parent, addr, end), 1536);
        assert_eq!(in_area(&first, kid, addr, end), 1536);
        let block = (addr + (2 << 20) - 1) & !((2 << 20) - 1);
        lpm_sys::misc::process_madvise(kid, block, 2 << 20, 25 /* MADV_COLLAPSE */)
            .expect("MADV_COLLAPSE of the child's block (transparent huge pages needed)");
        let (again, _) = read_again(&procs, &first, &moving).unwrap();
        assert_ne!(again, first);
        for pid in [parent, kid] {
            assert_eq!(in_area(&again, pid, block, block + (2 << 20)), 0, "pid {pid}: the block is no longer shared");
            assert_eq!(in_area(&again, pid, addr, end), 1024, "pid {pid}: the rest still is");
        }
        let mut cow = CowTable::new().unwrap();
        cow.settle(&procs, None).unwrap();
        let mut pm = Pagemap::open(parent).unwrap();
        assert!(cow.split(parent, &mut pm, addr, end).unwrap().iter().all(|r| r.2.is_none()));
        let mut pm = Pagemap::open(kid).unwrap();
        let runs = cow.split(kid, &mut pm, addr, end).unwrap();
        let shared: u64 = runs.iter().filter(|r| r.2 == Some(parent as u32)).map(|r| (r.1 - r.0) / PAGE).sum();
        assert_eq!(shared, 1024);
        assert!(runs.iter().filter(|r| r.2.is_some()).all(|r| r.1 <= block || r.0 >= block + (2 << 20)));
    }

    /// The history of zdtm mem_cow on one area: P forks C1, C1 forks G;
    /// C1 writes page 1, G page 4; P writes page 2, forks C2, which
    /// writes page 3; P writes page 5.
    #[test]
    fn a_fork_history_is_replayed() {
        let t = tree(vec![
            proc(1, 0, vec![data(0, 6)]),
            proc(2, 1, vec![cow(0, 1, 1), data(1, 1), data(2, 1), cow(3, 2, 1), data(5, 1)]),
            proc(4, 1, vec![cow(0, 3, 1), data(3, 1), cow(4, 1, 1), cow(5, 1, 2)]),
            proc(3, 2, vec![cow(0, 2, 1), cow(2, 1, 2), cow(3, 1, 1), data(4, 1), cow(5, 1, 2)]),
        ]);
        let plan = plan(&t).unwrap();
        let p = plan.of(1);
        assert_eq!(p.children, vec![2, 4]);
        // P holds its own pages for C1 (0, 1, 3, 4 shared down there), and
        // the old page 5 (C1's group) before C1; page 2 (its own, with C2)
        // before C2; nothing at the end.
        let pages = |w: &[(u64, u32)]| w.iter().map(|&(v, r)| ((v - A) / PAGE, r)).collect::<Vec<_>>();
        assert_eq!(pages(&p.before[0]), vec![(0, 1), (1, 1), (3, 1), (4, 1), (5, 2)]);
        assert_eq!(pages(&p.before[1]), vec![(2, 1)]);
        assert!(p.last.is_empty());
        assert_eq!(p.own, vec![(page(0), page(5))]);
        assert_eq!(p.stale, vec![(page(5), page(6))]);
        // C1 keeps what it inherited, writes page 2 (its group's top) and
        // page 5 before forking G, and drops page 1 (its own data).
        let c1 = plan.of(2);
        assert_eq!(c1.kept, vec![(page(0), page(16))]);
        assert_eq!(pages(&c1.before[0]), vec![(2, 2)]);
        assert_eq!(c1.stale, vec![(page(1), page(2))]);
        // G keeps everything it shares, drops page 4.
        let g = plan.of(3);
        assert_eq!(g.stale, vec![(page(4), page(5))]);
        assert_eq!(g.own, vec![(page(0), page(4)), (page(5), page(6))]);
        // C2 drops page 3 (its own) and page 5 it inherited? No: page 5
        // it shares with C1's group, which P held when it forked C2.
        let c2 = plan.of(4);
        assert_eq!(c2.stale, vec![(page(3), page(4))]);
    }

    /// A member that would have to give up its own shared page to hand
    /// another on to a later child: no fork order does that.
    #[test]
    fn a_history_no_fork_order_gives_is_refused() {
        // C1 (forked first) shares its own page 0 with its child G; P
        // shares its page 0 with C2 (forked second): P holds nothing for
        // C1, its own page for C2.
        let ok = tree(vec![
            proc(1, 0, vec![data(0, 1)]),
            proc(2, 1, vec![data(0, 1)]),
            proc(3, 2, vec![cow(0, 1, 2)]),
            proc(4, 1, vec![cow(0, 1, 1)]),
        ]);
        plan(&ok).unwrap();
        // The same, children the other way round: C2 (sharing P's page)
        // first, then a child sharing a page P does not hold, whose group
        // tops at P: P would have to give up its own page.
        let bad = tree(vec![
            proc(1, 0, vec![data(0, 1)]),
            proc(4, 1, vec![cow(0, 1, 1)]),
            proc(2, 1, vec![data(0, 1)]),
            proc(5, 1, vec![cow(0, 1, 2)]),
        ]);
        let e = plan(&bad).unwrap_err().to_string();
        assert!(e.contains("pid 1") && e.contains("no fork order"), "{e}");
    }

    /// A process that unmapped the address cannot hand the page on.
    #[test]
    fn a_carrier_without_the_area_is_refused() {
        let mut mid = proc(2, 1, vec![]);
        mid.mm.as_mut().unwrap().vmas.clear();
        let t = tree(vec![proc(1, 0, vec![data(0, 1)]), mid, proc(3, 2, vec![cow(0, 1, 1)])]);
        let e = plan(&t).unwrap_err().to_string();
        assert!(e.contains("pid 2") && e.contains("does not map that address as its parent"), "{e}");
    }
}
