//! hugetlbfs memory: anonymous MAP_HUGETLB areas, private and shared,
//! and memfds made with MFD_HUGETLB.
//!
//! A private area is an anonymous area whose pages are huge: the dump
//! reads the huge pages it holds (PAGEMAP_SCAN reports them whole) into
//! the process's pages file like any page, in 4 KiB runs, zero runs for
//! the zero parts; the restore maps it again with MAP_HUGETLB and the
//! page size, writes the data runs and touches the zero ones, so that
//! exactly the huge pages the original held are allocated, and none
//! other. A shared area's object (its file on the kernel's internal
//! hugetlbfs mount) is saved once, in whole huge pages: only those it
//! holds (its block count says how many; the ones holding data and the
//! ones the dumped process maps say which), and made again once by the
//! restorer as a shared MAP_HUGETLB mapping of its own (a memfd's as an
//! MFD_HUGETLB memfd of its name) that every sharer maps through
//! /proc/PID/map_files, so the sharers share one object as before; each
//! sharer's page table maps again the huge pages the object holds. A
//! memfd a descriptor holds keeps its held huge pages whole in the image
//! (files/memfd.rs) and is made again with MFD_HUGETLB, each page
//! allocated alone (fallocate) and written through a mapping of it, as
//! hugetlbfs has no write. Such an area is never filled lazily, never
//! tracked by a migration's pre-copy (its pages go whole in the stop)
//! and its pages are not shared copy-on-write with other processes after
//! restore (each process gets its own copy).
//!
//! A restore reserves huge pages as the original did: every private area
//! whole (mmap reserves them), every shared object whole. Before anything
//! is made it checks that the pool of each page size has that many free
//! ([`check_free`]); a migration's validation asks the target the same
//! ([`needed_live`]).
//!
//! Refused by name: private mappings of hugetlbfs memfds, files of a
//! hugetlbfs mount, SysV segments made with SHM_HUGETLB, and an object
//! holding an all-zero huge page that no process of the tree maps (which
//! one it is cannot be told: hugetlbfs answers SEEK_DATA with the whole
//! file, and a read of a page it does not hold gives zeros too).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use lpm_image::{PageRun, PagesReader, PagesWriter, ShmemImage, TreeImage, Vma, VmaKind};
use lpm_sys::misc::Mapping;
use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_PRESENT};

use crate::proc::{self, MapEntry};
use crate::{io_err, EngineError, Result, StepExt, PAGE};

/// The name /proc/PID/maps gives an anonymous MAP_HUGETLB area, private
/// or shared: its file on the kernel's internal hugetlbfs mount.
pub const ANON_HUGEPAGE: &str = "/anon_hugepage (deleted)";

/// statfs f_type of hugetlbfs.
pub(crate) const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// Set in the `shmem_id` of a hugetlbfs object: its inode number is one
/// of hugetlbfs's, which a shmem object's may equal.
pub(crate) const HUGE_ID: u64 = 1 << 63;

/// Where the kernel tells the pool of huge pages of `size` bytes.
fn pool_dir(size: u64) -> String {
    format!("/sys/kernel/mm/hugepages/hugepages-{}kB", size >> 10)
}

/// Why hugetlbfs area `e` is refused, or None for an anonymous
/// MAP_HUGETLB area or a shared mapping of an MFD_HUGETLB memfd.
pub(crate) fn refused(e: &MapEntry) -> Option<&'static str> {
    if e.path == ANON_HUGEPAGE || (e.path.starts_with("/memfd:") && e.shared()) {
        None
    } else if e.path.starts_with("/memfd:") {
        Some("private mapping of a memfd on hugetlbfs (MFD_HUGETLB): not supported yet (its pages not written are the memfd's, and would have to follow it)")
    } else if e.path.starts_with("/SYSV") {
        Some("SysV shared memory segment on hugetlbfs (SHM_HUGETLB): not supported yet (segments are made again without SHM_HUGETLB)")
    } else {
        Some("file of a hugetlbfs mount: the mount is the host's, outside the tree's image")
    }
}

/// The page size of hugetlbfs area `e` of `pid`: its file system's block
/// size.
pub(crate) fn page_size(pid: i32, e: &MapEntry) -> Result<u64> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
    let fs = rustix::fs::statfs(path.as_str()).map_err(|err| io_err(format!("statfs {path}"))(err.into()))?;
    if fs.f_type as u64 != HUGETLBFS_MAGIC {
        return Err(EngineError::Unsupported {
            pid,
            kind: "memory area",
            what: format!("{:#x}-{:#x} {:?}: VmFlags ht but not on hugetlbfs", e.start, e.end, e.path),
        });
    }
    Ok(fs.f_bsize as u64)
}

/// memfd_create flags that ask for huge pages of `size` bytes
/// (MFD_HUGETLB and the size's log2 at MFD_HUGE_SHIFT).
pub(crate) fn memfd_flags(size: u64) -> rustix::fs::MemfdFlags {
    const MFD_HUGE_SHIFT: u32 = 26;
    rustix::fs::MemfdFlags::HUGETLB | rustix::fs::MemfdFlags::from_bits_retain(size.trailing_zeros() << MFD_HUGE_SHIFT)
}

/// The huge pages (file offsets, each `size` long) that hugetlbfs file
/// `file` (device `dev`, inode `ino`) holds: those holding data and
/// those a process of `tree` maps. A page that holds zeros and that no
/// process maps (allocated by fallocate, or mapped once and let go)
/// cannot be told from one never allocated: `Err` with the counts.
pub(crate) fn file_pages(
    file: &std::fs::File,
    size: u64,
    dev: u64,
    ino: u64,
    tree: &[i32],
) -> Result<std::result::Result<Vec<u64>, (u64, u64)>> {
    let len = file.metadata().map_err(io_err("stat hugetlbfs file"))?.len();
    let holds = object_pages(file, size).map_err(io_err("stat hugetlbfs file"))?;
    let mut mapped = BTreeSet::new();
    for &pid in tree {
        for e in proc::maps(pid)?.iter().filter(|e| e.inode == ino && libc::makedev(e.major, e.minor) == dev && e.shared()) {
            mapped.extend(present(pid, e.start, e.end, size)?.into_iter().map(|i| e.offset / size + i));
        }
    }
    let mut buf = vec![0u8; size as usize];
    let mut out = Vec::new();
    for i in 0..len / size {
        if !mapped.contains(&i) {
            file.read_exact_at(&mut buf, i * size).map_err(io_err(format!("read hugetlbfs file at {:#x}", i * size)))?;
            if lpm_sys::misc::is_zero(&buf) {
                continue;
            }
        }
        out.push(i * size);
    }
    if out.len() as u64 != holds {
        return Ok(Err((holds, out.len() as u64)));
    }
    Ok(Ok(out))
}

/// mmap flags that ask for huge pages of `size` bytes (MAP_HUGETLB and
/// the size's log2 at MAP_HUGE_SHIFT).
pub(crate) fn map_flags(size: u64) -> u64 {
    const MAP_HUGE_SHIFT: u32 = 26;
    libc::MAP_HUGETLB as u64 | ((size.trailing_zeros() as u64) << MAP_HUGE_SHIFT)
}

/// Huge pages of each size (bytes) a restore of `tree` reserves: every
/// private hugetlbfs area whole (mmap reserves its pages, as the
/// original's did), every shared object whole, once.
pub fn needed(tree: &TreeImage) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for v in tree.processes.iter().filter_map(|p| p.mm.as_ref()).flat_map(|mm| &mm.vmas) {
        if v.huge_page_size != 0 && v.kind == VmaKind::AnonPrivate as i32 {
            *out.entry(v.huge_page_size).or_default() += (v.end - v.start).div_ceil(v.huge_page_size);
        }
    }
    for s in tree.shmems.iter().filter(|s| s.huge_page_size != 0) {
        *out.entry(s.huge_page_size).or_default() += s.size.div_ceil(s.huge_page_size);
    }
    // Memfds descriptors hold: whole too (their mappings reserve what
    // they map, at most the whole).
    for m in tree.files.iter().filter_map(|f| f.memfd.as_ref()).filter(|m| m.huge_page_size != 0) {
        *out.entry(m.huge_page_size).or_default() += m.size.div_ceil(m.huge_page_size);
    }
    out
}

/// The same count for the running tree of `root`, read from outside (a
/// migration's validation sends it to the target).
pub fn needed_live(root: i32) -> Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    let mut objects = HashSet::new();
    let mut memfds = HashSet::new();
    for pid in crate::stop::list_tree(root)? {
        let maps = match proc::maps(pid) {
            Ok(m) => m,
            // Gone meanwhile: nothing of it to move.
            Err(EngineError::Proc { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(e),
        };
        for e in maps.iter().filter(|e| e.path == ANON_HUGEPAGE || (e.path.starts_with("/memfd:") && e.shared())) {
            let Ok(size) = page_size(pid, e) else { continue };
            let pages = if e.shared() {
                if !objects.insert((e.major, e.minor, e.inode)) {
                    continue;
                }
                let path = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
                std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?.len().div_ceil(size)
            } else {
                (e.end - e.start).div_ceil(size)
            };
            *out.entry(size).or_default() += pages;
        }
        // Memfds its descriptors hold, once each, as the image counts
        // them (besides the copy of a mapped one).
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let path = fd.path();
            if !std::fs::read_link(&path).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:")) {
                continue;
            }
            let (Ok(fs), Ok(md)) = (rustix::fs::statfs(&path), std::fs::metadata(&path)) else { continue };
            if fs.f_type as u64 != HUGETLBFS_MAGIC || !memfds.insert((md.dev(), md.ino())) {
                continue;
            }
            *out.entry(fs.f_bsize as u64).or_default() += md.len().div_ceil(fs.f_bsize as u64);
        }
    }
    Ok(out)
}

/// Huge pages of `size` bytes this host can hand out now: free and not
/// reserved, plus what overcommit may still add; and how that was found.
pub fn available(size: u64) -> (u64, String) {
    let dir = pool_dir(size);
    let read = |name: &str| -> Option<u64> { std::fs::read_to_string(format!("{dir}/{name}")).ok()?.trim().parse().ok() };
    let (Some(free), Some(resv)) = (read("free_hugepages"), read("resv_hugepages")) else {
        return (0, format!("this kernel offers no huge pages of {} kB ({dir} unreadable)", size >> 10));
    };
    let over = read("nr_overcommit_hugepages").unwrap_or(0).saturating_sub(read("surplus_hugepages").unwrap_or(0));
    let avail = free.saturating_sub(resv) + over;
    (avail, format!("{dir}: free_hugepages {free}, resv_hugepages {resv}, overcommit headroom {over}"))
}

/// Fails, naming each size short and what its pool holds, unless this
/// host has the huge pages `needed` free.
pub fn check_free(needed: &BTreeMap<u64, u64>) -> Result<()> {
    let mut short = Vec::new();
    for (&size, &n) in needed.iter().filter(|(_, &n)| n > 0) {
        let (avail, how) = available(size);
        if avail < n {
            short.push(format!("{n} huge pages of {} kB needed, {avail} free ({how})", size >> 10));
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Incompatible(format!("not enough free huge pages: {}", short.join("; "))))
    }
}

/// The huge pages (indices from `start`) of `[start, end)` of `pid` that
/// its page table maps.
pub(crate) fn present(pid: i32, start: u64, end: u64, size: u64) -> Result<BTreeSet<u64>> {
    let mut pm = Pagemap::open(pid).step(pid, || "open pagemap".into())?;
    let q = Query { flags: 0, category_mask: 0, anyof_mask: PAGE_IS_PRESENT as u64, return_mask: PAGE_IS_PRESENT as u64 };
    let mut regions = Vec::new();
    pm.scan(start, end, q, &mut regions).step(pid, || format!("scan huge pages of {start:#x}-{end:#x}"))?;
    let mut out = BTreeSet::new();
    for r in &regions {
        out.extend((r.start - start) / size..(r.end - start).div_ceil(size));
    }
    Ok(out)
}

/// The huge pages (indices from `start`) that `runs` touch in `[start,
/// end)`: those an image holds.
pub(crate) fn held(runs: &[PageRun], start: u64, end: u64, size: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for r in runs.iter().filter(|r| r.vaddr < end && r.vaddr + r.npages * PAGE > start) {
        let (s, e) = (r.vaddr.max(start), (r.vaddr + r.npages * PAGE).min(end));
        out.extend((s - start) / size..(e - start).div_ceil(size));
    }
    out
}

/// Huge pages a hugetlbfs object holds now: its block count.
pub(crate) fn object_pages(file: &std::fs::File, size: u64) -> std::io::Result<u64> {
    Ok(file.metadata()?.blocks() * 512 / size)
}

/// Saves the hugetlbfs object that shared area `v` of stopped `pid` maps:
/// the huge pages it holds, each whole (data runs and zero runs), into
/// `dir`. They are told by their data, or by `pid` mapping them; one
/// both all zero and mapped by no one here cannot be told from a page
/// never allocated, and is refused.
pub(crate) fn save_object(pid: i32, v: &Vma, dir: &Path) -> Result<ShmemImage> {
    let size = v.huge_page_size;
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let f = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    let len = f.metadata().map_err(io_err(format!("stat {path}")))?.len();
    let holds = object_pages(&f, size).map_err(io_err(format!("stat {path}")))?;
    let first = v.pgoff / size;
    let mapped: BTreeSet<u64> = present(pid, v.start, v.end, size)?.into_iter().map(|i| first + i).collect();
    let name = format!("shmem-{}.img", v.shmem_id);
    let mut w = PagesWriter::create(dir, &name)?;
    let mut runs = Vec::new();
    let mut buf = vec![0u8; size as usize];
    let mut found = 0;
    for i in 0..len / size {
        let at = i * size;
        // A read of a huge page the object does not hold gives zeros and
        // allocates nothing.
        f.read_exact_at(&mut buf, at).map_err(io_err(format!("read {path} at {at:#x}")))?;
        if !mapped.contains(&i) && lpm_sys::misc::is_zero(&buf) {
            continue;
        }
        found += 1;
        crate::mem::emit(at, &buf, &mut w, &mut runs)?;
    }
    w.finish()?;
    if found != holds {
        return Err(EngineError::Unsupported {
            pid,
            kind: "memory area",
            what: format!(
                "{:#x}-{:#x} {}: its object holds {holds} huge pages, {found} of them hold data or are mapped here; the others are all zero and mapped by no process dumped so far, so which they are cannot be told",
                v.start, v.end, v.path
            ),
        });
    }
    let memfd_name = v.path.strip_prefix("/memfd:").map(|n| n.strip_suffix(" (deleted)").unwrap_or(n).to_string()).unwrap_or_default();
    Ok(ShmemImage {
        id: v.shmem_id,
        size: len,
        pages: runs,
        pages_file: name,
        memfd_name,
        huge_page_size: size,
        precopy_file: String::new(),
    })
}

/// Makes the hugetlbfs object of `s` again, mapped in lpm: the huge
/// pages the original held allocated (and only those), the data written.
pub(crate) fn create_object(dir: &Path, s: &ShmemImage) -> Result<Mapping> {
    let size = s.huge_page_size;
    let what = || format!("shared memory {} ({} bytes in huge pages of {} kB)", s.id, s.size, size >> 10);
    let mut m = if s.memfd_name.is_empty() {
        Mapping::anonymous_huge(s.size as usize, size).step(0, || format!("create {}", what()))?
    } else {
        // A memfd again, so that its mappings read "/memfd:NAME".
        let fd = rustix::fs::memfd_create(&*s.memfd_name, rustix::fs::MemfdFlags::CLOEXEC | memfd_flags(size))
            .map_err(|e| io_err(format!("create memfd {:?} for {}", s.memfd_name, what()))(e.into()))?;
        rustix::fs::ftruncate(&fd, s.size).map_err(|e| io_err(format!("size memfd {:?} for {}", s.memfd_name, what()))(e.into()))?;
        Mapping::file_shared(std::os::fd::AsFd::as_fd(&fd), s.size as usize).step(0, || format!("map memfd for {}", what()))?
    };
    let r = PagesReader::open(dir, &s.pages_file)?;
    let mut buf = Vec::new();
    for run in &s.pages {
        let (at, len) = (run.vaddr, run.npages * PAGE);
        if at.checked_add(len).is_none_or(|e| e > s.size) {
            return Err(EngineError::Incompatible(format!("{}: page run at {at:#x} beyond its size", what())));
        }
        let (lo, hi) = (at / size * size, (at + len).div_ceil(size) * size);
        m.populate(lo as usize, (hi - lo) as usize).step(0, || format!("allocate huge pages {lo:#x}-{hi:#x} of {}", what()))?;
        if !run.zero {
            r.read_run(run, &mut buf)?;
            m.as_mut_slice()[at as usize..(at + len) as usize].copy_from_slice(&buf);
        }
    }
    Ok(m)
}

/// Maps into the page table of `pid` the huge pages of its shared area
/// `v` that its object holds (`held`: offsets in the object), as the
/// original's were (it had touched them, or the dump would not have
/// found them): one byte of each read through /proc/PID/mem, which
/// faults in the page the object holds and allocates none.
pub(crate) fn touch(pid: i32, v: &Vma, held: &[u64]) -> Result<()> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(io_err(format!("open /proc/{pid}/mem")))?;
    let mut one = [0u8; 1];
    for &off in held.iter().filter(|&&o| o >= v.pgoff && o - v.pgoff < v.end - v.start) {
        let at = v.start + (off - v.pgoff);
        mem.read_exact_at(&mut one, at)
            .map_err(io_err(format!("read /proc/{pid}/mem at {at:#x} (huge page of {:#x}-{:#x})", v.start, v.end)))?;
    }
    Ok(())
}

/// Huge pages' size and whether smaps flags each area ht, by start:
/// what /proc/PID/smaps shows of the areas' pages.
pub(crate) fn smaps_pages(pid: i32) -> Result<BTreeMap<u64, (u64, bool)>> {
    let text = proc::read(pid, "smaps")?;
    let mut out = BTreeMap::new();
    let mut at = None;
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("KernelPageSize:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if let Some(s) = at {
                out.entry(s).or_insert((0, false)).0 = kb << 10;
            }
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(s) = at {
                out.entry(s).or_insert((0, false)).1 = flags.split_whitespace().any(|f| f == "ht");
            }
        } else if let Some(e) =
            line.split_whitespace().next().filter(|w| w.contains('-') && !w.ends_with(':')).and(proc::parse_maps_line(line))
        {
            at = Some(e.start);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = 2 << 20;

    /// A restore short of huge pages fails before anything is made,
    /// naming the size, how many it needs and what the pool holds; one
    /// that needs none passes whatever the pool.
    #[test]
    fn a_pool_too_small_is_named() {
        let need = BTreeMap::from([(M2, 1u64 << 40)]);
        let e = check_free(&need).unwrap_err().to_string();
        assert!(e.contains("1099511627776 huge pages of 2048 kB needed"), "{e}");
        assert!(e.contains("/sys/kernel/mm/hugepages/hugepages-2048kB"), "{e}");
        let odd = BTreeMap::from([(3 << 20, 1u64)]);
        let e = check_free(&odd).unwrap_err().to_string();
        assert!(e.contains("offers no huge pages of 3072 kB"), "{e}");
        check_free(&BTreeMap::from([(M2, 0)])).unwrap();
        check_free(&BTreeMap::new()).unwrap();
    }

    /// What a restore reserves: private areas whole, shared objects whole
    /// and once, other areas nothing.
    #[test]
    fn needed_counts_areas_and_objects() {
        let area = |start: u64, pages: u64, kind: VmaKind, size: u64| Vma {
            start,
            end: start + pages * M2,
            kind: kind as i32,
            huge_page_size: size,
            ..Default::default()
        };
        let mm = |vmas| lpm_image::Process { mm: Some(lpm_image::Mm { vmas, ..Default::default() }), ..Default::default() };
        let tree = TreeImage {
            processes: vec![
                mm(vec![
                    area(0, 3, VmaKind::AnonPrivate, M2),
                    area(10 * M2, 2, VmaKind::AnonShared, M2),
                    area(20 * M2, 5, VmaKind::AnonPrivate, 0),
                ]),
                mm(vec![
                    area(0, 3, VmaKind::AnonPrivate, M2),
                    area(10 * M2, 2, VmaKind::AnonShared, M2),
                    area(1 << 40, 1, VmaKind::AnonPrivate, 1 << 30),
                ]),
            ],
            shmems: vec![ShmemImage { id: 1, size: 2 * M2, huge_page_size: M2, ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(needed(&tree), BTreeMap::from([(M2, 8), (1 << 30, 1)]));
    }

    /// The huge pages runs touch, a run reaching into the next one and
    /// zero runs counting as held.
    #[test]
    fn held_pages_from_runs() {
        let run = |vaddr: u64, npages: u64, zero: bool| PageRun { vaddr, npages, zero, ..Default::default() };
        let base = 100 * M2;
        let runs =
            [run(base, 1, false), run(base + M2 - PAGE, 2, true), run(base + 3 * M2 + 5 * PAGE, 1, false), run(base + 9 * M2, 1, false)];
        assert_eq!(held(&runs, base, base + 4 * M2, M2), BTreeSet::from([0, 1, 3]));
    }

    #[test]
    fn map_flags_carry_the_size() {
        assert_eq!(map_flags(M2), libc::MAP_HUGETLB as u64 | (21 << 26));
        assert_eq!(map_flags(1 << 30), libc::MAP_HUGETLB as u64 | (30 << 26));
    }
}
