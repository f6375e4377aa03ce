//! Memory: the areas of an address space and their pages.
//!
//! Dump classifies every area from /proc/PID/smaps, refusing kinds it
//! cannot reproduce, and saves only pages that exist: PAGEMAP_SCAN tells
//! which are present or swapped, which are still the file's own page cache
//! (not saved: the file has them) and which are the shared zero page
//! (recorded without data). Restore empties a puppet's address space, moves
//! its vDSO to the recorded place, maps every area at its address, fills
//! pages with process_vm_writev from the mapped pages file, then sets the
//! final protections and the mm layout (PR_SET_MM_MAP).
//!
//! Live migration adds precopied pages: at the switchover the caller names
//! the ranges whose current content the receiver already holds (sent while
//! the tree ran, not written since). Present anonymous pages inside them
//! are recorded as precopied runs without data and without being read;
//! the restore reads them from the receiver's sparse precopy file, where
//! the page of address A sits at offset A.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use lpm_image::{Mm, MmLayout, PageRun, PagesReader, PagesWriter, ShmemImage, Vma, VmaKind};
use lpm_sys::misc::{Mapping, PrctlMmMap};
use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
use lpm_sys::ptrace;
use lpm_sys::remote::Remote;

use crate::proc::{self, MapEntry};
use crate::task::{put, put_path, Scratch};
use crate::{io_err, EngineError, Result, StepExt, PAGE};

/// Bytes read from a task per process_vm_readv call while dumping.
const CHUNK: usize = 8 << 20;

/// The VmFlags that madvise sets, with the advice that sets each again.
const MADVICE: [(&str, i32); 8] = [
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("dc", libc::MADV_DONTFORK),
    ("wf", libc::MADV_WIPEONFORK),
    ("dd", libc::MADV_DONTDUMP),
    ("mg", libc::MADV_MERGEABLE),
    ("sr", libc::MADV_SEQUENTIAL),
    ("rr", libc::MADV_RANDOM),
];

/// mmap's map type for droppable memory (Linux 6.11): its pages may be
/// dropped under memory pressure; implies VM_WIPEONFORK and VM_DONTDUMP.
const MAP_DROPPABLE: u32 = 0x08;

/// VmFlags the restore cannot make again, refused by name (besides
/// I/O and PFN mappings, refused with the kind of area, and the
/// hugetlbfs areas hugetlb.rs refuses).
const REFUSED_VMFLAGS: [(&str, &str); 2] = [("ss", "shadow stack"), ("sl", "sealed (mseal)")];

/// Whether the image's area `v` had VmFlag `f` (images that predate
/// `Vma::vm_flags` have none).
fn vm_flag(v: &Vma, f: &str) -> bool {
    v.vm_flags.iter().any(|x| x == f)
}

/// The protection a private area is mapped with at restore, before its
/// pages are filled: VM_ACCOUNT (VmFlags "ac", the commit charge a
/// private mapping takes once it is writable) stays with the area for
/// good, so an area that had it is mapped writable (and set to its final
/// protection afterwards), and one without it is mapped as it was, its
/// pages written through /proc/PID/mem. Images without VmFlags are
/// mapped writable, as before.
pub(crate) fn initial_prot(v: &Vma) -> u32 {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    if v.vm_flags.is_empty() || v.prot & libc::PROT_WRITE as u32 != 0 || vm_flag(v, "ac") {
        rw
    } else {
        v.prot
    }
}

/// Classifies one area, or says why it cannot be checkpointed.
pub fn classify(pid: i32, e: &MapEntry) -> Result<Vma> {
    let unsupported = |why: &str| EngineError::Unsupported {
        pid,
        kind: "memory area",
        what: format!("{:#x}-{:#x} {} {:?}: {why}", e.start, e.end, e.perms, e.path),
    };
    let special = e.path.starts_with('[') && !e.path.starts_with("[anon:") && !matches!(e.path.as_str(), "[heap]" | "[stack]");
    let mut huge_page_size = 0;
    if e.has("ht") && !special {
        if let Some(why) = crate::hugetlb::refused(e) {
            return Err(unsupported(&format!("hugetlbfs: {why}")));
        }
        huge_page_size = crate::hugetlb::page_size(pid, e)?;
    }
    for (flag, why) in [("io", "I/O memory"), ("pf", "PFN mapping")] {
        if e.has(flag) && !special {
            return Err(unsupported(why));
        }
    }
    for (flag, why) in REFUSED_VMFLAGS {
        if e.has(flag) {
            return Err(unsupported(why));
        }
    }
    let mut flags = if e.shared() { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
    if e.has("dp") {
        flags = MAP_DROPPABLE;
    }
    if e.has("gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    if e.has("nr") {
        flags |= libc::MAP_NORESERVE as u32;
    }
    let kind = match e.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        "" | "[heap]" | "[stack]" if !e.shared() => VmaKind::AnonPrivate,
        p if p.starts_with("[anon:") && !e.shared() => VmaKind::AnonPrivate,
        // Anonymous MAP_HUGETLB (hugetlb.rs).
        crate::hugetlb::ANON_HUGEPAGE if huge_page_size != 0 && e.shared() => VmaKind::AnonShared,
        p if p.starts_with("/memfd:") && huge_page_size != 0 && e.shared() => VmaKind::AnonShared,
        crate::hugetlb::ANON_HUGEPAGE if huge_page_size != 0 => VmaKind::AnonPrivate,
        "/dev/zero (deleted)" | "" if e.shared() => VmaKind::AnonShared,
        p if p.starts_with("/memfd:") && e.shared() => VmaKind::AnonShared,
        // A private mapping of a shared anonymous area's object (through
        // /proc/PID/map_files) or of a memfd.
        "/dev/zero (deleted)" => VmaKind::ShmemPrivate,
        p if p.starts_with("/memfd:") => VmaKind::ShmemPrivate,
        p if p.starts_with("/dev/zero") && !e.shared() => VmaKind::AnonPrivate,
        p if p.starts_with("/SYSV") => return Err(unsupported("SysV shared memory")),
        p if p.starts_with('/') && p.ends_with(" (deleted)") => {
            // The file is made again from the image (an unlinked file's
            // ghost, files/regular.rs), or reopened by its handle when
            // other names of it remain, and mapped from it.
            let md = std::fs::metadata(map_file(pid, e)).map_err(|err| unsupported(&format!("deleted backing file unreachable: {err}")))?;
            if !md.file_type().is_file() {
                return Err(unsupported("mapping of a deleted device or special file"));
            }
            if e.shared() {
                VmaKind::FileShared
            } else {
                VmaKind::FilePrivate
            }
        }
        p if p.starts_with('/') => {
            let md = std::fs::metadata(p).map_err(|err| unsupported(&format!("backing file unreachable: {err}")))?;
            if !md.file_type().is_file() {
                return Err(unsupported("mapping of a device or special file"));
            }
            if md.ino() != e.inode {
                return Err(unsupported("backing file was replaced since it was mapped"));
            }
            if e.shared() {
                VmaKind::FileShared
            } else {
                VmaKind::FilePrivate
            }
        }
        _ => return Err(unsupported("unknown special mapping")),
    };
    Ok(Vma {
        start: e.start,
        end: e.end,
        prot: e.prot(),
        flags,
        kind: kind as i32,
        path: e.path.clone(),
        pgoff: e.offset,
        shmem_id: match kind {
            VmaKind::AnonShared if huge_page_size != 0 => e.inode | crate::hugetlb::HUGE_ID,
            VmaKind::AnonShared | VmaKind::ShmemPrivate => e.inode,
            _ => 0,
        },
        madvise: MADVICE.iter().filter(|(f, _)| e.has(f)).map(|(_, a)| *a as u32).collect(),
        dev: ((e.major as u64) << 32) | e.minor as u64,
        inode: e.inode,
        vm_flags: e.vmflags.clone(),
        ghost_id: 0,
        huge_page_size,
    })
}

/// The area's file through /proc/PID/map_files.
fn map_file(pid: i32, e: &MapEntry) -> String {
    format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end)
}

/// Records the unlinked file mapped at `v` (its ghost, files/regular.rs)
/// and names it in the area.
fn record_ghost(pid: i32, v: &mut Vma, ghosts: &mut crate::files::regular::Ghosts) -> Result<()> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let file = crate::files::regular::reopen(&path)?;
    let st = file.metadata().map_err(io_err(format!("stat {path}")))?;
    let what = format!("unlinked file mapped at {:#x} by pid {pid}", v.start);
    let name = v.path.trim_end_matches(" (deleted)");
    v.ghost_id = if st.nlink() != 0 {
        // Its mapped name was removed while others remain: reopened by
        // its handle.
        ghosts.record_linked(&file, &st, name, &what)?
    } else {
        ghosts.record(Some(&file), &st, name, &what)?
    };
    Ok(())
}

use lpm_sys::misc::is_zero;

/// Splits `data` (pages from `vaddr`) into zero and non-zero runs; the
/// non-zero ones go to `w`.
pub(crate) fn emit(vaddr: u64, data: &[u8], w: &mut PagesWriter, runs: &mut Vec<PageRun>) -> lpm_image::Result<()> {
    let mut i = 0;
    let n = data.len() / PAGE as usize;
    while i < n {
        let zero = is_zero(&data[i * PAGE as usize..(i + 1) * PAGE as usize]);
        let mut j = i + 1;
        while j < n && is_zero(&data[j * PAGE as usize..(j + 1) * PAGE as usize]) == zero {
            j += 1;
        }
        let addr = vaddr + i as u64 * PAGE;
        let run = if zero {
            PageRun { vaddr: addr, npages: (j - i) as u64, zero: true, ..Default::default() }
        } else {
            w.append(addr, &data[i * PAGE as usize..j * PAGE as usize])?
        };
        push_run(runs, run);
        i = j;
    }
    Ok(())
}

/// Appends a run, merging zero runs that touch, precopied runs that touch
/// and runs shared with the same process that touch (data runs keep their
/// own checksums, so they stay apart).
fn push_run(runs: &mut Vec<PageRun>, run: PageRun) {
    if let Some(last) = runs.last_mut() {
        let same = (last.zero && run.zero) || (last.precopied && run.precopied) || (last.cow_pid != 0 && last.cow_pid == run.cow_pid);
        if same && last.vaddr + last.npages * PAGE == run.vaddr {
            last.npages += run.npages;
            return;
        }
    }
    runs.push(run);
}

/// Shared anonymous objects already saved, by identity.
#[derive(Default)]
pub struct ShmemTable {
    /// Saved objects.
    pub saved: HashMap<u64, ShmemImage>,
    /// The objects' pages a live migration's receiver holds already.
    pub precopied: HashMap<crate::ShmRef, crate::PrecopiedShm>,
}

fn save_shmem(pid: i32, v: &Vma, dir: &Path, table: &mut ShmemTable) -> Result<()> {
    if table.saved.contains_key(&v.shmem_id) {
        return Ok(());
    }
    if v.huge_page_size != 0 {
        table.saved.insert(v.shmem_id, crate::hugetlb::save_object(pid, v, dir)?);
        return Ok(());
    }
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let f = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    let size = f.metadata().map_err(io_err(format!("stat {path}")))?.len();
    let name = format!("shmem-{}.img", v.shmem_id);
    let mut w = PagesWriter::create(dir, &name)?;
    let mut runs = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    // Pre-copy tracks only these objects (dirty::shm_object).
    let held = match v.path.as_str() {
        "/dev/zero (deleted)" => table.precopied.get(&crate::ShmRef { sysv: false, inode: v.shmem_id }),
        _ => None,
    };
    let held_ranges = held.map(|h| h.ranges.as_slice()).unwrap_or(&[]);
    let mut off = 0u64;
    while off < size {
        let Some((data, hole)) = lpm_sys::misc::next_data(f.as_fd(), off) else { break };
        // Only data is looked at: a hole stays one, held or not.
        for (start, end, pre) in split_at_ranges(held_ranges, data, hole.min(size)) {
            if pre {
                push_run(&mut runs, PageRun { vaddr: start, npages: (end - start) / PAGE, precopied: true, ..Default::default() });
                continue;
            }
            let mut at = start;
            while at < end {
                let len = ((end - at) as usize).min(CHUNK);
                f.read_exact_at(&mut buf[..len], at).map_err(io_err(format!("read {path}")))?;
                emit(at, &buf[..len], &mut w, &mut runs)?;
                at += len as u64;
            }
        }
        off = hole;
    }
    w.finish()?;
    let memfd_name = v.path.strip_prefix("/memfd:").map(|n| n.strip_suffix(" (deleted)").unwrap_or(n).to_string()).unwrap_or_default();
    let precopy_file = match held {
        Some(h) if runs.iter().any(|r| r.precopied) => h.file.clone(),
        _ => String::new(),
    };
    table.saved.insert(
        v.shmem_id,
        ShmemImage { id: v.shmem_id, size, pages: runs, pages_file: name, memfd_name, huge_page_size: 0, precopy_file },
    );
    Ok(())
}

/// Pages to save: `len` bytes at `vaddr`, stored at `off` in the body
/// (for a precopied piece being restored: in the precopy file, where `off`
/// is `vaddr`).
#[derive(Clone, Copy, Debug)]
struct Piece {
    vaddr: u64,
    len: u64,
    off: u64,
    /// The area lets the task itself read them (dump) or write them
    /// (restore), so process_vm_readv/writev may; else /proc/PID/mem,
    /// which overrides protections.
    direct: bool,
    precopied: bool,
}

/// Largest piece one worker copies at a time.
const PIECE: u64 = 32 << 20;

/// How many threads copy pages: one per core, at most four.
fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4)
}

/// Splits `pieces` (contiguous in the body, in order) into `n` groups of
/// about equal bytes; returns index ranges.
fn groups(pieces: &[Piece], n: usize) -> Vec<std::ops::Range<usize>> {
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let per = total.div_ceil(n.max(1) as u64).max(1);
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        acc += p.len;
        if acc >= per * (out.len() as u64 + 1) {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < pieces.len() {
        out.push(start..pieces.len());
    }
    out
}

/// Bytes of the pages file that a worker fills at a time, at file offsets
/// that are multiples of it: a huge page of a tmpfs mounted with huge
/// pages. Each write then covers whole folios of the page cache, which the
/// kernel does not zero first (a page faulted into a mapping of the file
/// would be zeroed, then overwritten).
const SLAB: u64 = 2 << 20;

/// Bytes read from the task per process_vm_readv, and hashed right after,
/// while they are still in the core's L2 cache.
const STEP: u64 = 256 << 10;

/// A run being built: consecutive pages of one kind, contiguous in the
/// address space and in the body.
struct OpenRun {
    vaddr: u64,
    npages: u64,
    off: u64,
    /// The checksum so far, for a data run; None for a zero run.
    hash: Option<twox_hash::XxHash3_64>,
}

impl OpenRun {
    fn close(self) -> PageRun {
        use std::hash::Hasher;
        match self.hash {
            Some(h) => PageRun { vaddr: self.vaddr, npages: self.npages, offset: self.off, xxh3: h.finish(), ..Default::default() },
            None => PageRun { vaddr: self.vaddr, npages: self.npages, zero: true, ..Default::default() },
        }
    }
}

/// What one copy worker needs to fill slabs of the pages file.
struct Slabs<'a> {
    pid: i32,
    /// /proc/PID/mem, for areas process_vm_readv may not read.
    mem: &'a std::fs::File,
    file: &'a std::fs::File,
    path: &'a Path,
    pieces: &'a [Piece],
    /// Length of the body.
    total: u64,
}

impl Slabs<'_> {
    /// Fills slab `n` of the file: reads its pages from the task step by
    /// step into `buf`, hashes each step while it is hot, splits it into
    /// zero and data runs (appended to `runs`) and writes the data pages;
    /// zero pages are left as holes (the restore never reads them).
    fn fill(&self, n: u64, buf: &mut [u8], runs: &mut Vec<PageRun>) -> Result<()> {
        use std::hash::Hasher;
        let body_at = lpm_image::PAGES_BODY_OFFSET;
        let fstart = (n * SLAB).max(body_at);
        let fend = ((n + 1) * SLAB).min(body_at + self.total);
        if fstart >= fend {
            return Ok(());
        }
        let (bs, be) = (fstart - body_at, fend - body_at);
        let pg = PAGE as usize;
        let mut open: Option<OpenRun> = None;
        // Start (in the body) of the data pages not yet written.
        let mut unwritten: Option<u64> = None;
        let first = self.pieces.partition_point(|p| p.off + p.len <= bs);
        for p in self.pieces[first..].iter().take_while(|p| p.off < be) {
            let (s, e) = (p.off.max(bs), (p.off + p.len).min(be));
            let mut at = s;
            while at < e {
                let len = (e - at).min(STEP);
                let vaddr = p.vaddr + (at - p.off);
                let i0 = (at - bs) as usize;
                let dst = &mut buf[i0..i0 + len as usize];
                if p.direct {
                    ptrace::read_mem(self.pid, vaddr, dst).step(self.pid, || format!("read pages at {vaddr:#x}"))?;
                } else {
                    // Unreadable areas are read through /proc/PID/mem,
                    // which may override protections.
                    self.mem.read_exact_at(dst, vaddr).map_err(io_err(format!("read /proc/{}/mem at {vaddr:#x}", self.pid)))?;
                }
                let dst = &buf[i0..i0 + len as usize];
                let npages = dst.len() / pg;
                let mut i = 0;
                while i < npages {
                    let zero = is_zero(&dst[i * pg..(i + 1) * pg]);
                    let mut j = i + 1;
                    while j < npages && is_zero(&dst[j * pg..(j + 1) * pg]) == zero {
                        j += 1;
                    }
                    let (va, off, bytes) = (vaddr + (i * pg) as u64, at + (i * pg) as u64, &dst[i * pg..j * pg]);
                    let extends = open.as_ref().is_some_and(|r| r.hash.is_none() == zero && r.vaddr + r.npages * PAGE == va);
                    if !extends {
                        runs.extend(open.take().map(OpenRun::close));
                        let hash = (!zero).then(twox_hash::XxHash3_64::new);
                        open = Some(OpenRun { vaddr: va, npages: 0, off, hash });
                    }
                    let r = open.as_mut().expect("opened above");
                    r.npages += (j - i) as u64;
                    if let Some(h) = &mut r.hash {
                        h.write(bytes);
                    }
                    if zero {
                        self.write(buf, bs, &mut unwritten, off)?;
                    } else if unwritten.is_none() {
                        unwritten = Some(off);
                    }
                    i = j;
                }
                at += len;
            }
        }
        runs.extend(open.take().map(OpenRun::close));
        self.write(buf, bs, &mut unwritten, be)
    }

    /// Writes the data pages from `*unwritten` up to body offset `end`
    /// (`buf` holds the slab starting at body offset `bs`).
    fn write(&self, buf: &[u8], bs: u64, unwritten: &mut Option<u64>, end: u64) -> Result<()> {
        let Some(start) = unwritten.take() else { return Ok(()) };
        let data = &buf[(start - bs) as usize..(end - bs) as usize];
        self.file.write_all_at(data, lpm_image::PAGES_BODY_OFFSET + start).map_err(io_err(format!("write {}", self.path.display())))
    }
}

/// Copies every piece from the task into the pages file `file` (whose
/// body is `total` bytes), one worker thread per core taking slabs in
/// turn, and splits them into zero and data runs; data runs end at slab
/// edges, so each has its own checksum. The runs come back unordered.
fn save_pieces(pid: i32, pieces: &[Piece], total: u64, file: &std::fs::File, path: &Path) -> Result<Vec<PageRun>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(io_err(format!("open /proc/{pid}/mem")))?;
    let slabs = Slabs { pid, mem: &mem, file, path, pieces, total };
    let count = (lpm_image::PAGES_BODY_OFFSET + total).div_ceil(SLAB);
    let next = AtomicU64::new(0);
    let results: Vec<Result<Vec<PageRun>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers().min(count.max(1) as usize))
            .map(|_| {
                let (slabs, next) = (&slabs, &next);
                sc.spawn(move || -> Result<Vec<PageRun>> {
                    let mut buf = vec![0u8; SLAB as usize];
                    let mut runs = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count {
                            return Ok(runs);
                        }
                        if let Err(e) = slabs.fill(n, &mut buf, &mut runs) {
                            // The other workers stop at their next slab.
                            next.store(count, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Incompatible("page copy worker panicked".into()))))
            .collect()
    });
    let mut runs = Vec::new();
    for r in results {
        runs.extend(r?);
    }
    Ok(runs)
}

/// Splits `[start, end)` at the edges of `ranges` (sorted, disjoint, page
/// aligned): the parts inside one and the parts outside, in address order.
fn split_at_ranges(ranges: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = start;
    let first = ranges.partition_point(|&(_, e)| e <= start);
    for &(s, e) in &ranges[first..] {
        if s >= end {
            break;
        }
        let (s, e) = (s.max(at), e.min(end));
        if s > at {
            out.push((at, s, false));
        }
        if e > s {
            out.push((s, e, true));
            at = e;
        }
    }
    if at < end {
        out.push((at, end, false));
    }
    out
}

/// The precopy file of process `pid` (its pid as the image records it).
pub fn precopy_file_name(pid: u32) -> String {
    format!("precopy-{pid}.pages")
}

/// Dumps the address space of stopped process `pid` (areas as read before
/// any scratch was mapped) into `dir`. Present anonymous pages inside
/// `precopied` (sorted, disjoint, page-aligned ranges the receiver holds
/// current) become precopied runs: neither read nor written.
pub fn dump(
    pid: i32,
    entries: &[MapEntry],
    dir: &Path,
    table: &mut ShmemTable,
    precopied: &[(u64, u64)],
    mut cow: Option<&mut crate::cow::CowTable>,
    ghosts: &mut crate::files::regular::Ghosts,
) -> Result<Mm> {
    let mut vmas: Vec<Vma> = entries.iter().filter(|e| !crate::ipc::is_sysv_shm(e)).map(|e| classify(pid, e)).collect::<Result<_>>()?;
    for v in vmas.iter_mut().filter(|v| v.path.starts_with('/') && v.path.ends_with(" (deleted)")) {
        if matches!(VmaKind::try_from(v.kind), Ok(VmaKind::FilePrivate | VmaKind::FileShared)) {
            record_ghost(pid, v, ghosts)?;
        }
    }
    let mut pm = Pagemap::open(pid).step(pid, || "open pagemap".into())?;
    let mut zero_runs = Vec::new();
    let mut pieces = Vec::new();
    let mut precopied_runs = 0usize;
    let mut regions = Vec::new();
    let mut total = 0u64;
    for v in &vmas {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
        if matches!(kind, VmaKind::AnonShared | VmaKind::ShmemPrivate) {
            save_shmem(pid, v, dir, table)?;
        }
        if !is_private(kind) {
            continue;
        }
        regions.clear();
        // Whether a page is the file's own is asked only of file mappings:
        // the kernel then looks up every page's struct page, which costs
        // 9 ms per GiB (the stop of a migration) where the other categories
        // come from the page table entry alone.
        let file = if kind != VmaKind::AnonPrivate { PAGE_IS_FILE } else { 0 };
        let q = Query {
            flags: 0,
            category_mask: 0,
            anyof_mask: (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) as u64,
            return_mask: (PAGE_IS_PRESENT | PAGE_IS_SWAPPED | file | PAGE_IS_PFNZERO) as u64,
        };
        pm.scan(v.start, v.end, q, &mut regions).step(pid, || format!("scan pages of {:#x}-{:#x}", v.start, v.end))?;
        for r in &regions {
            if r.categories & PAGE_IS_FILE as u64 != 0 {
                continue;
            }
            if r.categories & PAGE_IS_PFNZERO as u64 != 0 {
                zero_runs.push(PageRun { vaddr: r.start, npages: (r.end - r.start) / PAGE, zero: true, ..Default::default() });
                continue;
            }
            // Not present, only swapped: perhaps the write-protect markers
            // of a dirty tracker still registered (a migration's), which
            // are no pages at all.
            let mut real = if r.categories & PAGE_IS_PRESENT as u64 == 0 {
                pm.without_markers(r.start, r.end).step(pid, || format!("read pagemap of {:#x}-{:#x}", r.start, r.end))?
            } else {
                vec![(r.start, r.end)]
            };
            // Pages shared copy-on-write with a process dumped before are
            // that process's (cow.rs): recorded, not read.
            // Huge pages are not (hugetlb.rs): each process gets its own.
            if let Some(cow) = cow.as_deref_mut().filter(|_| r.categories & PAGE_IS_PRESENT as u64 != 0 && v.huge_page_size == 0) {
                real.clear();
                for (start, end, with) in cow.split(pid, &mut pm, r.start, r.end)? {
                    match with {
                        Some(other) => {
                            zero_runs.push(PageRun { vaddr: start, npages: (end - start) / PAGE, cow_pid: other, ..Default::default() })
                        }
                        None => real.push((start, end)),
                    }
                }
            }
            for (start, end, pre) in real.iter().flat_map(|&(s, e)| split_at_ranges(precopied, s, e)) {
                if pre {
                    zero_runs.push(PageRun { vaddr: start, npages: (end - start) / PAGE, precopied: true, ..Default::default() });
                    precopied_runs += 1;
                    continue;
                }
                let mut at = start;
                while at < end {
                    let len = (end - at).min(PIECE);
                    // A process that may share pages copy-on-write is read
                    // through /proc/PID/mem: process_vm_readv pins what it
                    // reads, and the kernel gives the process its own copy
                    // of a shared page before it lets it be pinned, which
                    // would undo the sharing (in the tree that goes on
                    // running, and in what the next process's pagemap shows).
                    let direct = v.prot & libc::PROT_READ as u32 != 0 && cow.is_none();
                    pieces.push(Piece { vaddr: at, len, off: total, direct, precopied: false });
                    total += len;
                    at += len;
                }
            }
        }
    }
    let name = format!("pages-{pid}.img");
    let path = dir.join(&name);
    let file = lpm_image::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(format!("create {}", path.display())))?;
    file.set_len(lpm_image::PAGES_BODY_OFFSET + total).map_err(io_err(format!("size {}", path.display())))?;
    let t = std::time::Instant::now();
    let mut runs = save_pieces(pid, &pieces, total, &file, &path)?;
    tracing::debug!(pid, bytes = total, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "pages copied");
    // The header last: a file cut short by a crash has none.
    file.write_all_at(&PagesWriter::header(total), 0).map_err(io_err(format!("write {}", path.display())))?;
    runs.extend(zero_runs);
    runs.sort_by_key(|r| r.vaddr);
    let mut merged = Vec::with_capacity(runs.len());
    for r in runs {
        push_run(&mut merged, r);
    }
    let st = proc::Stat::read(pid)?;
    Ok(Mm {
        vmas,
        pages: merged,
        pages_file: name,
        precopy_file: if precopied_runs > 0 { precopy_file_name(pid as u32) } else { String::new() },
        layout: Some(MmLayout {
            start_code: st.num(26),
            end_code: st.num(27),
            start_stack: st.num(28),
            start_data: st.num(45),
            end_data: st.num(46),
            start_brk: st.num(47),
            brk: 0,
            arg_start: st.num(48),
            arg_end: st.num(49),
            env_start: st.num(50),
            env_end: st.num(51),
        }),
        auxv: proc::read_bytes(pid, "auxv")?,
        exe: proc::link(pid, "exe")?,
        ksm_merge_any: ksm_merge_any(pid)?,
    })
}

/// Whether `pid` made every area mergeable (PR_SET_MEMORY_MERGE); false
/// on a kernel without KSM (no ksm_stat).
fn ksm_merge_any(pid: i32) -> Result<bool> {
    match proc::read(pid, "ksm_stat") {
        Ok(text) => Ok(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ksm_merge_any:", "yes"])),
        Err(EngineError::Proc { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// PR_SET_MEMORY_MERGE (Linux 6.4).
const PR_SET_MEMORY_MERGE: u64 = 67;

/// The precopy file of a shared memory object or SysV segment, when
/// `pages` has precopied runs.
pub(crate) fn open_object_precopy(dir: &Path, name: &str, pages: &[PageRun], what: &str) -> Result<Option<std::fs::File>> {
    if !pages.iter().any(|r| r.precopied) {
        return Ok(None);
    }
    if name.is_empty() {
        return Err(EngineError::Incompatible(format!("{what}: precopied pages but no precopy file")));
    }
    let path = dir.join(name);
    Ok(Some(std::fs::File::open(&path).map_err(io_err(format!("open precopy file {} of {what}", path.display())))?))
}

/// Writes the precopied runs of `pages` from `file` (at offset = offset
/// in the object) into `object`, a mapping of the new object. All-zero
/// pages are not written: a page the sender never sent because it was
/// zero reads as zero from the file, and writing it would allocate what
/// the original did not hold.
pub(crate) fn fill_precopied(file: &std::fs::File, pages: &[PageRun], object: &mut [u8], what: &str) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for run in pages.iter().filter(|r| r.precopied) {
        let (start, end) = (run.vaddr, run.vaddr + run.npages * PAGE);
        if end as usize > object.len() {
            return Err(EngineError::Incompatible(format!("{what}: precopied pages at {start:#x} beyond its size")));
        }
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..len], at).map_err(io_err(format!("read the precopied pages of {what} at {at:#x}")))?;
            for (i, page) in buf[..len].chunks_exact(PAGE as usize).enumerate() {
                if !is_zero(page) {
                    let o = at as usize + i * PAGE as usize;
                    object[o..o + PAGE as usize].copy_from_slice(page);
                }
            }
            at += len as u64;
        }
    }
    Ok(())
}

/// Shared anonymous objects recreated by the restorer, mapped in lpm so
/// puppets can open them through /proc/LPM/map_files.
pub struct ShmemObjects {
    objects: HashMap<u64, Mapping>,
    /// The huge pages each hugetlbfs object holds (offsets in it).
    huge_held: HashMap<u64, Vec<u64>>,
}

impl ShmemObjects {
    /// Recreates and fills every object of the image.
    pub fn create(dir: &Path, shmems: &[ShmemImage]) -> Result<ShmemObjects> {
        let mut objects = HashMap::new();
        let mut huge_held = HashMap::new();
        let mut buf = Vec::new();
        for s in shmems {
            let mut m = if s.huge_page_size != 0 {
                objects.insert(s.id, crate::hugetlb::create_object(dir, s)?);
                let held = crate::hugetlb::held(&s.pages, 0, s.size, s.huge_page_size);
                huge_held.insert(s.id, held.into_iter().map(|i| i * s.huge_page_size).collect());
                continue;
            } else if s.memfd_name.is_empty() {
                Mapping::anonymous(s.size as usize, true).step(0, || format!("create shared memory {}", s.id))?
            } else {
                // A memfd again, so that its mappings read "/memfd:NAME".
                let what = || format!("create memfd {:?} for shared memory {}", s.memfd_name, s.id);
                let fd = rustix::fs::memfd_create(&*s.memfd_name, rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| io_err(what())(e.into()))?;
                rustix::fs::ftruncate(&fd, s.size).map_err(|e| io_err(what())(e.into()))?;
                Mapping::file_shared(fd.as_fd(), s.size as usize).step(0, what)?
            };
            let r = PagesReader::open(dir, &s.pages_file)?;
            let what = format!("shared memory {}", s.id);
            let precopy = open_object_precopy(dir, &s.precopy_file, &s.pages, &what)?;
            for run in s.pages.iter().filter(|r| !r.zero && !r.precopied) {
                r.read_run(run, &mut buf)?;
                let at = run.vaddr as usize;
                let dst = m
                    .as_mut_slice()
                    .get_mut(at..at + buf.len())
                    .ok_or_else(|| EngineError::Incompatible(format!("shared memory {}: page run at {at:#x} beyond its size", s.id)))?;
                dst.copy_from_slice(&buf);
            }
            if let Some(f) = &precopy {
                fill_precopied(f, &s.pages, m.as_mut_slice(), &what)?;
            }
            objects.insert(s.id, m);
        }
        Ok(ShmemObjects { objects, huge_held })
    }

    fn path(&self, id: u64) -> Option<String> {
        let m = self.objects.get(&id)?;
        let len = m.as_slice().len() as u64;
        let len = len.div_ceil(PAGE) * PAGE;
        Some(format!("/proc/{}/map_files/{:x}-{:x}", std::process::id(), m.addr(), m.addr() + len))
    }
}

fn kind(v: &Vma) -> VmaKind {
    VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid)
}

fn special_name(k: VmaKind) -> Option<&'static str> {
    match k {
        VmaKind::Vdso => Some("[vdso]"),
        VmaKind::Vvar => Some("[vvar]"),
        VmaKind::VvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

/// Everything the memory restore of one puppet needs to know.
pub struct RestoreCtx<'a> {
    /// Host pid of the puppet.
    pub pid: i32,
    /// Image directory.
    pub dir: &'a Path,
    /// Trampoline address (kept mapped).
    pub trampoline: u64,
    /// A free area where the special mappings can pass through.
    pub parking: u64,
    /// Shared memory objects.
    pub shmem: &'a ShmemObjects,
    /// The tree's memfds that descriptors hold, by inode at dump: the
    /// restorer's descriptor of each, which the puppet inherited, for its
    /// private mappings to map the memfd itself.
    pub memfds: &'a HashMap<u64, i32>,
    /// The restorer's O_PATH descriptor of each unlinked file of the
    /// image, by ghost id, which the puppet inherited, for mappings of
    /// unlinked files.
    pub ghosts: &'a HashMap<u64, i32>,
    /// Precopied pages are left to a lazy fill once the tree runs
    /// (lazy.rs) instead of being copied now.
    pub lazy: bool,
    /// Pages filled now even with `lazy`: those the restore itself makes
    /// the kernel write before the tree runs (each thread's rseq area: the
    /// kernel's write would allocate them zeroed and the fill, finding them
    /// present, would leave them so), those the kernel writes when a
    /// restored thread exits (its clear_child_tid word and robust list
    /// head: a fault of an exiting task is not handed to the fill, the
    /// write is lost, and a pthread_join waiting on that word waits for
    /// ever), and a migration's hot pages
    /// ([`crate::RestoreOptions::hot`]). Sorted, without repeats.
    pub eager: Vec<u64>,
    /// What it does about the pages it shares with other processes
    /// (cow.rs): the ranges it keeps of its parent's areas, the pages it
    /// holds for its children only, and its own shared pages, which the
    /// fill leaves alone.
    pub cow: &'a crate::cow::Steps,
    /// Parts of its areas that it keeps as it inherited them from the
    /// parent it was forked from ([`inheritable`]), instead of mapping
    /// them again. Sorted.
    pub inherited: &'a [(u64, u64)],
}

/// The parts of child `child`'s areas that a fork from its parent's
/// puppet, laid out (phase 1) and holding pages in `held` (its kept
/// ranges and the shared pages written so far), gives the child as a
/// fresh mapping of its own would: the same area in both images (every
/// field of it, so the same mmap call would make it), holding no page
/// (only a page written since the mapping tells a fork's copy from a
/// new mapping, and the parent's fill comes after its forks), and of a
/// kind a fork copies whole (not locked, droppable or of huge pages: a
/// fork drops VM_LOCKED, and a private hugetlb mapping's reservation
/// stays with the parent). Only outside the child's own kept ranges
/// (`child_kept`, which it keeps anyway). A server's workers, forked
/// from one parent, share most of their areas with it: each costs two
/// remote calls less (its unmap and its map) per area, a hundred or two
/// per process.
pub(crate) fn inheritable(parent: &Mm, child: &Mm, held: &[(u64, u64)], child_kept: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for v in &child.vmas {
        let k = kind(v);
        if special_name(k).is_some() || k == VmaKind::Vsyscall || v.huge_page_size != 0 || vm_flag(v, "lo") || vm_flag(v, "dp") {
            continue;
        }
        let i = parent.vmas.partition_point(|p| p.start < v.start);
        if parent.vmas.get(i) != Some(v) {
            continue;
        }
        for (start, end, kept) in split_at_ranges(child_kept, v.start, v.end) {
            if !kept && !held.iter().any(|&(s, e)| s < end && e > start) {
                out.push((start, end));
            }
        }
    }
    out
}

/// `[start, end)` cut where the areas of `mm` that a lazy fill serves
/// begin and end: each part with whether the fill takes it (never
/// without `lazy`).
fn lazy_parts(mm: &Mm, start: u64, end: u64, lazy: bool) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = start;
    while at < end {
        let area = mm.vmas.iter().find(|v| v.start <= at && at < v.end);
        let (to, takes) = match area {
            Some(v) => (v.end.min(end), lazy && lazy_area(v)),
            // Between areas (not in an image the dump wrote): up to the
            // next area, written now like any page the fill does not take.
            None => (mm.vmas.iter().map(|v| v.start).filter(|&s| s > at).min().unwrap_or(end).min(end), false),
        };
        match out.last_mut() {
            Some(l) if l.1 == at && l.2 == takes => l.1 = to,
            _ => out.push((at, to, takes)),
        }
        at = to;
    }
    out
}

/// Whether area `v` may be filled lazily: anonymous (userfaultfd's
/// missing mode takes nothing else), not droppable (no userfaultfd takes
/// it), not locked, as mlock faults in every page at once (zero pages
/// the fill would then leave alone), and not of huge pages (filled whole
/// now: the fill works in 4 KiB pages).
fn lazy_area(v: &Vma) -> bool {
    kind(v) == VmaKind::AnonPrivate && !vm_flag(v, "lo") && !vm_flag(v, "dp") && v.huge_page_size == 0
}

/// Phase 1 of the memory restore, as soon as the puppet exists (before it
/// forks its children): replaces its address space with the areas of
/// `mm`, empty but for what it keeps of its parent's (`c.cow.kept`: the
/// pages it shares with others, cow.rs), the vDSO at its place.
pub fn layout(c: &RestoreCtx, r: &mut Remote, s: Scratch, mm: &Mm) -> Result<()> {
    let pid = c.pid;
    // The puppet inherited the restorer's rseq registration, whose area is
    // about to disappear: the kernel would kill the task writing to it.
    let rs = ptrace::get_rseq(pid).step(pid, || "read puppet rseq".into())?;
    if rs.rseq_abi_pointer != 0 {
        r.call(libc::SYS_rseq, &[rs.rseq_abi_pointer, rs.rseq_abi_size as u64, 1, rs.signature as u64])
            .step(pid, || "remote rseq unregister".into())?;
    }
    let current = proc::maps(pid)?;
    let mut specials: HashMap<String, (u64, u64)> = HashMap::new();
    // Everything but the trampoline, the specials and the kept ranges
    // goes, one munmap per stretch between two of them (holes inside are
    // no matter): the puppet holds a copy of lpmd's areas, dozens of
    // them, and a remote call stops it twice.
    let mut keep: Vec<(u64, u64)> = c.cow.kept.iter().chain(c.inherited).copied().collect();
    let mut lo = u64::MAX;
    let mut hi = 0;
    for e in &current {
        let special = matches!(e.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]");
        if special {
            specials.insert(e.path.clone(), (e.start, e.end));
        }
        if e.path == "[vsyscall]" {
            continue;
        }
        if e.start == c.trampoline || special {
            keep.push((e.start, e.end));
        }
        lo = lo.min(e.start);
        hi = hi.max(e.end);
    }
    keep.sort_unstable();
    let mut at = lo;
    for &(ks, ke) in keep.iter().chain(std::iter::once(&(hi, hi))) {
        if ks > at && current.iter().any(|e| e.start < ks && e.end > at && e.path != "[vsyscall]") {
            r.call(libc::SYS_munmap, &[at, ks - at]).step(pid, || format!("remote munmap {at:#x}-{ks:#x}"))?;
        }
        at = at.max(ke);
    }
    if specials.is_empty() && mm.vmas.iter().any(|v| special_name(kind(v)).is_some()) {
        // A puppet forked from a parent that unmapped its vDSO has none;
        // the kernel maps a fresh set when asked, beyond the parking area
        // (the margin of the trampoline's range, free everywhere), and it
        // is moved like any.
        const ARCH_MAP_VDSO_64: u64 = 0x2003;
        let at = c.parking + crate::restore::PARKING;
        r.call(libc::SYS_arch_prctl, &[ARCH_MAP_VDSO_64, at]).step(pid, || format!("remote arch_prctl(ARCH_MAP_VDSO_64, {at:#x})"))?;
        for e in proc::maps(pid)? {
            if matches!(e.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]") {
                specials.insert(e.path.clone(), (e.start, e.end));
            }
        }
    }
    restore_specials(c, r, mm, &specials)?;
    let mut fds: HashMap<(String, bool), u64> = HashMap::new();
    for v in &mm.vmas {
        let k = kind(v);
        if special_name(k).is_some() || k == VmaKind::Vsyscall {
            continue;
        }
        // The parts of the area it does not keep from its parent.
        for (start, end, kept) in split_at_ranges(&c.cow.kept, v.start, v.end) {
            if !kept && c.inherited.binary_search(&(start, end)).is_err() {
                map_area(c, r, s, v, start, end, &mut fds)?;
            }
        }
    }
    for fd in fds.values() {
        r.call(libc::SYS_close, &[*fd]).step(pid, || "remote close".into())?;
    }
    Ok(())
}

/// Maps `[start, end)` of area `v` (all of it, or the part of it not kept
/// from the parent); `fds` holds the files opened for mapping, to close
/// once all are mapped.
fn map_area(
    c: &RestoreCtx,
    r: &mut Remote,
    s: Scratch,
    v: &Vma,
    start: u64,
    end: u64,
    fds: &mut HashMap<(String, bool), u64>,
) -> Result<()> {
    let pid = c.pid;
    let k = kind(v);
    let len = end - start;
    let pgoff = v.pgoff + (start - v.start);
    let fixed = (libc::MAP_FIXED_NOREPLACE as u32 | v.flags) as u64;
    let what = || format!("remote mmap {start:#x}-{end:#x} {:?} {}", k, v.path);
    match k {
        VmaKind::AnonPrivate => {
            // The `hugetlb-small` sabotage maps it in 4 KiB pages, for a
            // test to see --verify name it.
            let huge = if v.huge_page_size != 0 && !crate::verify::sabotaged("hugetlb-small") {
                crate::hugetlb::map_flags(v.huge_page_size)
            } else {
                0
            };
            r.call(libc::SYS_mmap, &[start, len, initial_prot(v) as u64, fixed | libc::MAP_ANONYMOUS as u64 | huge, u64::MAX, 0])
                .step(pid, what)?;
        }
        VmaKind::ShmemPrivate if c.memfds.contains_key(&v.shmem_id) => {
            // The memfd the tree's descriptors hold, which its pages
            // not written must follow.
            let fd = c.memfds[&v.shmem_id] as u64;
            r.call(libc::SYS_mmap, &[start, len, initial_prot(v) as u64, fixed, fd, pgoff]).step(pid, what)?;
        }
        VmaKind::FilePrivate | VmaKind::FileShared | VmaKind::AnonShared | VmaKind::ShmemPrivate => {
            let shared = !is_private(k);
            // What mprotect may later allow on a shared mapping
            // (VM_MAYWRITE, VmFlags "mw") comes from the descriptor it
            // was mapped from; images without VmFlags go by the
            // protection, as before.
            let may_write = if v.vm_flags.is_empty() { v.prot & libc::PROT_WRITE as u32 != 0 } else { vm_flag(v, "mw") };
            let writable = shared && may_write;
            let path = if let Some(fd) = c.memfds.get(&v.shmem_id).filter(|_| k == VmaKind::AnonShared && v.path.starts_with("/memfd:")) {
                // The memfd the tree's descriptors hold, also in a process
                // that holds none of them (it closed its own).
                format!("/proc/self/fd/{fd}")
            } else if matches!(k, VmaKind::AnonShared | VmaKind::ShmemPrivate) {
                c.shmem
                    .path(v.shmem_id)
                    .ok_or_else(|| EngineError::Incompatible(format!("shared memory {} missing from the image", v.shmem_id)))?
            } else if v.ghost_id != 0 {
                let fd = c.ghosts.get(&v.ghost_id).ok_or_else(|| {
                    EngineError::Incompatible(format!(
                        "area {:#x}-{:#x} maps unlinked file {}, missing from the image",
                        v.start, v.end, v.ghost_id
                    ))
                })?;
                format!("/proc/self/fd/{fd}")
            } else {
                v.path.clone()
            };
            let fd = match fds.get(&(path.clone(), writable)) {
                Some(fd) => *fd,
                None => {
                    let addr = put_path(pid, s, 0, &path)?;
                    let flags = if writable { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
                    let fd = r
                        .call(libc::SYS_openat, &[libc::AT_FDCWD as u64, addr, flags as u64, 0])
                        .step(pid, || format!("remote open {path}"))?;
                    fds.insert((path.clone(), writable), fd);
                    fd
                }
            };
            let prot = if shared { v.prot } else { initial_prot(v) };
            r.call(libc::SYS_mmap, &[start, len, prot as u64, fixed, fd, pgoff]).step(pid, what)?;
        }
        _ => return Err(EngineError::Incompatible(format!("memory area {:#x}-{:#x} of unknown kind {}", v.start, v.end, v.kind))),
    }
    Ok(())
}

/// Writes the pages `writes` (each with the process whose image holds its
/// data, cow.rs) into the puppet, as it does before forking a child that
/// is to share them.
pub(crate) fn write_shared(pid: i32, mm: &Mm, sources: &Sources, writes: &[(u64, u32)]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let target = Target::new(pid, mm)?;
    let mut i = 0;
    while i < writes.len() {
        // A stretch of pages of one process's one run.
        let (v0, rep) = writes[i];
        let mut j = i + 1;
        while j < writes.len() && writes[j].1 == rep && writes[j].0 == v0 + (j - i) as u64 * PAGE && sources.same_run(rep, v0, writes[j].0)
        {
            j += 1;
        }
        let data = sources.read(rep, v0, (j - i) as u64)?;
        target.write(v0, &data, || format!("write {} pages shared with pid {rep} at {v0:#x}", j - i))?;
        i = j;
    }
    Ok(())
}

/// The pages of every process's image, for the pages several processes
/// share: read from the process whose image holds them (its pages file,
/// checked, or its precopy file).
pub(crate) struct Sources<'a> {
    dir: &'a Path,
    mms: HashMap<u32, &'a Mm>,
    // Mutexes, not cells: the restore's context, which holds this, is
    // shared by the threads that shape processes side by side.
    readers: std::sync::Mutex<HashMap<u32, (PagesReader, Option<std::fs::File>)>>,
    /// Per process, the run read and checked last (its address, its data).
    last_run: std::sync::Mutex<HashMap<u32, (u64, Vec<u8>)>>,
}

impl<'a> Sources<'a> {
    pub(crate) fn new(dir: &'a Path, tree: &'a lpm_image::TreeImage) -> Sources<'a> {
        let mms = tree.processes.iter().filter_map(|p| Some((p.pid, p.mm.as_ref()?))).collect();
        Sources { dir, mms, readers: Default::default(), last_run: Default::default() }
    }

    fn run(&self, pid: u32, vaddr: u64) -> Result<&'a PageRun> {
        self.mms
            .get(&pid)
            .and_then(|mm| crate::cow::run_at(mm, vaddr))
            .filter(|r| r.cow_pid == 0)
            .ok_or_else(|| EngineError::Incompatible(format!("pid {pid}: no data in the image for shared page {vaddr:#x}")))
    }

    fn same_run(&self, pid: u32, a: u64, b: u64) -> bool {
        matches!((self.run(pid, a), self.run(pid, b)), (Ok(x), Ok(y)) if std::ptr::eq(x, y))
    }

    /// `npages` pages from `vaddr` of process `pid`, inside one run.
    fn read(&self, pid: u32, vaddr: u64, npages: u64) -> Result<Vec<u8>> {
        let run = self.run(pid, vaddr)?;
        if run.zero {
            // Written full of zeros (the image keeps no data for such a
            // page): written so, it is a page of its own to share.
            return Ok(vec![0u8; (npages * PAGE) as usize]);
        }
        let mm = self.mms[&pid];
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = readers.entry(pid) {
            let reader = PagesReader::open(self.dir, &mm.pages_file)?;
            let precopy = if mm.precopy_file.is_empty() {
                None
            } else {
                let path = self.dir.join(&mm.precopy_file);
                Some(std::fs::File::open(&path).map_err(io_err(format!("open precopy file {}", path.display())))?)
            };
            slot.insert((reader, precopy));
        }
        let (reader, precopy) = &readers[&pid];
        let mut buf = vec![0u8; (npages * PAGE) as usize];
        if run.precopied {
            let f = precopy.as_ref().ok_or_else(|| EngineError::Incompatible(format!("pid {pid}: precopied pages but no precopy file")))?;
            f.read_exact_at(&mut buf, vaddr).map_err(io_err(format!("read {} at {vaddr:#x}", mm.precopy_file)))?;
            return Ok(buf);
        }
        // The whole run, to check it, then the pages asked for. The pages
        // come in address order, a few at a time where processes share
        // pages here and there: the run last checked is kept (reading and
        // hashing a whole run for every stretch of a few pages took
        // seconds for a parent and children sharing 32 MiB).
        let mut last = self.last_run.lock().unwrap_or_else(|e| e.into_inner());
        let whole = match last.get_mut(&pid) {
            Some((at, data)) if *at == run.vaddr => data,
            _ => {
                let mut data = Vec::new();
                reader.read_run(run, &mut data)?;
                let slot = last.entry(pid).or_default();
                *slot = (run.vaddr, data);
                &mut slot.1
            }
        };
        let at = (vaddr - run.vaddr) as usize;
        let n = buf.len();
        buf.copy_from_slice(&whole[at..at + n]);
        Ok(buf)
    }
}

/// Phase 2 of the memory restore, once its children are forked: drops
/// what it held only for them, fills its own pages (not those it shares:
/// they are in already), sets the final protections, advice and the mm
/// layout; with `c.lazy`, returns the precopied pages still to fill.
pub fn finish(c: &RestoreCtx, r: &mut Remote, s: Scratch, mm: &Mm) -> Result<Option<crate::lazy::Space>> {
    let pid = c.pid;
    for &(start, end) in &c.cow.stale {
        r.call(libc::SYS_madvise, &[start, end - start, libc::MADV_DONTNEED as u64])
            .step(pid, || format!("remote madvise dontneed {start:#x}-{end:#x} (held for its children)"))?;
    }
    fill(c, mm)?;
    zero_pages(c, mm)?;
    for v in mm.vmas.iter().filter(|v| v.huge_page_size != 0 && kind(v) == VmaKind::AnonShared) {
        if let Some(held) = c.shmem.huge_held.get(&v.shmem_id) {
            crate::hugetlb::touch(pid, v, held)?;
        }
    }
    if mm.ksm_merge_any {
        // Every eligible area becomes mergeable; those the program made
        // unmergeable since are set back below.
        r.call(libc::SYS_prctl, &[PR_SET_MEMORY_MERGE, 1, 0, 0, 0]).step(pid, || "remote PR_SET_MEMORY_MERGE".into())?;
    }
    for v in &mm.vmas {
        let k = kind(v);
        if is_private(k) && v.prot != initial_prot(v) {
            if k == VmaKind::AnonPrivate && !written(c, mm, v) {
                keep_charge(c, r, v)?;
            }
            r.call(libc::SYS_mprotect, &[v.start, v.end - v.start, v.prot as u64])
                .step(pid, || format!("remote mprotect {:#x}-{:#x}", v.start, v.end))?;
        }
        advise(pid, r, v)?;
        if mm.ksm_merge_any && !v.vm_flags.is_empty() && !vm_flag(v, "mg") && special_name(k).is_none() && k != VmaKind::Vsyscall {
            // EINVAL for an area KSM never takes (shared, special): it
            // had no flag to lose.
            r.raw(libc::SYS_madvise, &[v.start, v.end - v.start, libc::MADV_UNMERGEABLE as u64])
                .step(pid, || format!("remote madvise unmergeable {:#x}", v.start))?;
        }
    }
    set_layout(c, r, s, mm)?;
    // The userfaultfd of the lazy fill is made now, while the puppet may
    // still make one; its areas are registered at the end of the restore.
    match open_precopy(c, mm)? {
        Some(store) if c.lazy => crate::lazy::register(pid, r, mm, std::sync::Arc::new(store), lazy_area, &c.eager, &c.cow.own),
        _ => Ok(None),
    }
}

/// Maps the zero page again where the original had it (an anonymous page
/// read before it was ever written): a read of each page, one byte, as
/// the original's read faulted it in. The pages of an area the puppet may
/// not read yet are read through /proc/PID/mem.
fn zero_pages(c: &RestoreCtx, mm: &Mm) -> Result<()> {
    let anon = |v: u64| mm.vmas.iter().any(|a| a.start <= v && v < a.end && kind(a) == VmaKind::AnonPrivate);
    let mut ranges: Vec<(u64, usize)> = Vec::new();
    let target = Target::new(c.pid, mm)?;
    let mut one = [0u8; 1];
    for run in mm.pages.iter().filter(|r| r.zero && anon(r.vaddr)) {
        for i in 0..run.npages {
            let v = run.vaddr + i * PAGE;
            if !target.direct(v, PAGE) {
                target.mem.read_exact_at(&mut one, v).map_err(io_err(format!("read /proc/{}/mem at {v:#x}", c.pid)))?;
                continue;
            }
            ranges.push((v, 1));
            if ranges.len() == ptrace::MAX_RANGES {
                let mut buf = vec![0u8; ranges.len()];
                ptrace::read_mem_ranges(c.pid, &ranges, &mut buf).step(c.pid, || format!("read zero pages from {:#x}", ranges[0].0))?;
                ranges.clear();
            }
        }
    }
    if !ranges.is_empty() {
        let mut buf = vec![0u8; ranges.len()];
        ptrace::read_mem_ranges(c.pid, &ranges, &mut buf).step(c.pid, || format!("read zero pages from {:#x}", ranges[0].0))?;
    }
    Ok(())
}

/// Whether the restore wrote a page of anonymous area `v` before it is
/// set to its final protection (its data, or its precopied pages when
/// they are not left to the lazy fill, or eager ones).
fn written(c: &RestoreCtx, mm: &Mm, v: &Vma) -> bool {
    let lazy = c.lazy && lazy_area(v);
    let inside = |s: u64, e: u64| s < v.end && e > v.start;
    mm.pages.iter().any(|r| inside(r.vaddr, r.vaddr + r.npages * PAGE) && !r.zero && (!r.precopied || !lazy))
        || (lazy && c.eager.iter().any(|&p| inside(p, p + PAGE)))
        || c.cow.own.iter().chain(&c.cow.kept).any(|&(s, e)| inside(s, e))
}

/// Keeps the commit charge (VM_ACCOUNT) of an anonymous area that the
/// restore made writable and is about to make read-only again, though no
/// page of it was written: mprotect uncharges an anonymous area that has
/// never held a page (no anon_vma), which the original, charged, once
/// did. A page written and dropped again gives it one; the page reads as
/// before (absent, or missing for the lazy fill).
fn keep_charge(c: &RestoreCtx, r: &mut Remote, v: &Vma) -> Result<()> {
    ptrace::write_mem(c.pid, v.start, &[0u8]).step(c.pid, || format!("touch {:#x} to keep its area charged", v.start))?;
    r.call(libc::SYS_madvise, &[v.start, PAGE, libc::MADV_DONTNEED as u64])
        .step(c.pid, || format!("remote madvise dontneed {:#x}", v.start))?;
    Ok(())
}

/// Gives area `v` its advice and lock back (what madvise and mlock set:
/// VmFlags hg nh dc wf dd mg sr rr, lo lf).
pub(crate) fn advise(pid: i32, r: &mut Remote, v: &Vma) -> Result<()> {
    for a in &v.madvise {
        r.call(libc::SYS_madvise, &[v.start, v.end - v.start, *a as u64]).step(pid, || format!("remote madvise {a} {:#x}", v.start))?;
    }
    if vm_flag(v, "lo") {
        // MLOCK_ONFAULT locks pages as they come; a plain lock faults
        // every page in now, as it did in the original.
        let onfault = if vm_flag(v, "lf") { 1 } else { 0 };
        r.call(libc::SYS_mlock2, &[v.start, v.end - v.start, onfault])
            .step(pid, || format!("remote mlock2 {:#x}-{:#x} flags {onfault}", v.start, v.end))?;
    }
    Ok(())
}

/// Moves the puppet's vDSO areas to where the image had them. They pass
/// through a parking area first so that no move lands on another special.
fn restore_specials(c: &RestoreCtx, r: &mut Remote, mm: &Mm, current: &HashMap<String, (u64, u64)>) -> Result<()> {
    let pid = c.pid;
    let mut parked = Vec::new();
    let mut at = c.parking;
    for (name, (start, end)) in current {
        let len = end - start;
        r.call(libc::SYS_mremap, &[*start, len, len, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, at])
            .step(pid, || format!("remote mremap {name} to parking"))?;
        parked.push((name.as_str(), at, len));
        at += len;
    }
    for (name, addr, len) in parked {
        let wanted = mm.vmas.iter().find(|v| special_name(kind(v)) == Some(name));
        match wanted {
            Some(v) if v.end - v.start == len => {
                r.call(libc::SYS_mremap, &[addr, len, len, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, v.start])
                    .step(pid, || format!("remote mremap {name} to {:#x}", v.start))?;
            }
            Some(v) => {
                return Err(EngineError::Incompatible(format!(
                    "{name} is {} bytes in the image but {len} bytes on this kernel",
                    v.end - v.start
                )))
            }
            None => {
                r.call(libc::SYS_munmap, &[addr, len]).step(pid, || format!("remote munmap {name}"))?;
            }
        }
    }
    for v in &mm.vmas {
        if let Some(name) = special_name(kind(v)) {
            if !current.contains_key(name) {
                return Err(EngineError::Incompatible(format!("the image has {name} but this kernel does not provide it")));
            }
        }
    }
    Ok(())
}

/// Opens the precopy file of `mm`, checking that it holds every
/// precopied run (a hole reads as zero, a short file would not).
fn open_precopy(c: &RestoreCtx, mm: &Mm) -> Result<Option<std::fs::File>> {
    let Some(end) = mm.pages.iter().filter(|r| r.precopied).map(|r| r.vaddr.saturating_add(r.npages.saturating_mul(PAGE))).max() else {
        return Ok(None);
    };
    if mm.precopy_file.is_empty() || mm.precopy_file.contains('/') {
        return Err(EngineError::Incompatible(format!(
            "pid {}: the image has precopied pages but names no precopy file ({:?})",
            c.pid, mm.precopy_file
        )));
    }
    let path = c.dir.join(&mm.precopy_file);
    let f = std::fs::File::open(&path).map_err(io_err(format!("open precopy file {}", path.display())))?;
    let len = f.metadata().map_err(io_err(format!("stat precopy file {}", path.display())))?.len();
    if len < end {
        return Err(lpm_image::ImageError::Truncated { path, what: "precopied pages".into(), needed: end, available: len }.into());
    }
    Ok(Some(f))
}

/// Where the fill writes: the puppet's memory, through process_vm_writev
/// where its areas are writable and through /proc/PID/mem (which
/// overrides protections on private areas) where they are mapped without
/// write permission ([`initial_prot`]).
struct Target {
    pid: i32,
    mem: std::fs::File,
    /// Areas mapped without PROT_WRITE, sorted.
    indirect: Vec<(u64, u64)>,
}

impl Target {
    fn new(pid: i32, mm: &Mm) -> Result<Target> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(io_err(format!("open /proc/{pid}/mem")))?;
        let indirect = mm
            .vmas
            .iter()
            .filter(|v| is_private(kind(v)) && initial_prot(v) & libc::PROT_WRITE as u32 == 0)
            .map(|v| (v.start, v.end))
            .collect();
        Ok(Target { pid, mem, indirect })
    }

    /// Whether `[vaddr, vaddr + len)` lies outside every area mapped
    /// without write permission.
    fn direct(&self, vaddr: u64, len: u64) -> bool {
        self.indirect.iter().all(|&(s, e)| e <= vaddr || s >= vaddr + len)
    }

    fn write(&self, vaddr: u64, data: &[u8], what: impl Fn() -> String) -> Result<()> {
        if self.direct(vaddr, data.len() as u64) {
            return ptrace::write_mem(self.pid, vaddr, data).step(self.pid, what);
        }
        self.mem.write_all_at(data, vaddr).map_err(io_err(format!("{} (through /proc/{}/mem)", what(), self.pid)))
    }
}

/// Private areas, whose pages the image holds.
/// Whether the dump reads the pages of area `e` as a private area's
/// (the areas [`crate::cow::CowTable`] looks at).
pub(crate) fn holds_private_pages(e: &MapEntry) -> bool {
    !crate::ipc::is_sysv_shm(e) && classify(0, e).is_ok_and(|v| is_private(VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid)))
}

fn is_private(k: VmaKind) -> bool {
    matches!(k, VmaKind::AnonPrivate | VmaKind::FilePrivate | VmaKind::ShmemPrivate)
}

/// Copies saved pages into the puppet from the mapped pages file, one
/// worker per core, each verifying the checksums of its runs; precopied
/// runs come from windows of the precopy file mapped at their addresses
/// (the receiver wrote them: no checksum to verify).
fn fill(c: &RestoreCtx, mm: &Mm) -> Result<()> {
    let reader = PagesReader::open(c.dir, &mm.pages_file)?;
    let file_len = reader.file().metadata().map_err(io_err(format!("stat {}", mm.pages_file)))?.len();
    let map = Mapping::file(reader.file().as_fd(), 0, file_len as usize).step(c.pid, || format!("map {}", mm.pages_file))?;
    let body = &map.as_slice()[reader.body_offset() as usize..];
    let precopy = open_precopy(c, mm)?;
    let target = Target::new(c.pid, mm)?;
    let zeros = vec![0u8; CHUNK];
    let mut data: Vec<Piece> = Vec::new();
    for run in &mm.pages {
        if run.precopied {
            // The image joins precopied runs that touch across areas: each
            // part is the lazy fill's (but for its eager pages) only where
            // its area is one the fill registers, and written now
            // elsewhere. Deciding by the run's first page once left the
            // rest of a run reaching into an area the fill does not take
            // unwritten: those pages kept their first content.
            for (start, end, lazy) in lazy_parts(mm, run.vaddr, run.vaddr + run.npages * PAGE, c.lazy) {
                if lazy {
                    // `eager` is sorted: its pages in this part, neighbours joined.
                    let (lo, hi) = (c.eager.partition_point(|&p| p < start), c.eager.partition_point(|&p| p < end));
                    for &page in &c.eager[lo..hi] {
                        match data.last_mut() {
                            Some(l) if l.precopied && l.vaddr + l.len == page && l.len < PIECE => l.len += PAGE,
                            _ => data.push(Piece { vaddr: page, len: PAGE, off: page, direct: true, precopied: true }),
                        }
                    }
                    continue;
                }
                let mut at = start;
                while at < end {
                    let len = (end - at).min(PIECE);
                    data.push(Piece { vaddr: at, len, off: at, direct: true, precopied: true });
                    at += len;
                }
            }
            continue;
        }
        if run.cow_pid != 0 {
            // Shared with another process: in already (cow.rs).
            continue;
        }
        if !run.zero {
            reader.check_bounds(run)?;
            data.push(Piece { vaddr: run.vaddr, len: run.npages * PAGE, off: run.offset, direct: true, precopied: false });
            continue;
        }
        // Fresh anonymous memory is already zero; a private page of a file
        // or object that became zero must be written over its content.
        let private_file = mm
            .vmas
            .iter()
            .any(|v| v.start <= run.vaddr && run.vaddr < v.end && matches!(kind(v), VmaKind::FilePrivate | VmaKind::ShmemPrivate));
        if private_file {
            let mut at = run.vaddr;
            let end = run.vaddr + run.npages * PAGE;
            while at < end {
                let len = ((end - at) as usize).min(CHUNK);
                target.write(at, &zeros[..len], || format!("write zero pages at {at:#x}"))?;
                at += len as u64;
            }
        }
    }
    for p in data.iter_mut() {
        p.direct = target.direct(p.vaddr, p.len);
    }
    let by_run: HashMap<u64, &PageRun> =
        mm.pages.iter().filter(|r| !r.zero && !r.precopied && r.cow_pid == 0).map(|r| (r.vaddr, r)).collect();
    // Its own shared pages are in already: written once, before the fork
    // of the first child to share them, or inherited.
    let own = &c.cow.own;
    let unshared = |start: u64, len: u64| split_at_ranges(own, start, start + len).into_iter().filter(|&(_, _, shared)| !shared);
    let results: Vec<Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = groups(&data, workers())
            .into_iter()
            .map(|g| {
                let (data, reader, by_run, precopy, target) = (&data, &reader, &by_run, &precopy, &target);
                sc.spawn(move || -> Result<()> {
                    // Short precopied pieces (a migration's last pages,
                    // scattered) are read into one buffer and written with
                    // one call per batch: a window mapped for each page
                    // costs 20 us, thousands of them inside the downtime.
                    let mut batch = Batch::default();
                    for p in &data[g] {
                        if !own.is_empty() && split_at_ranges(own, p.vaddr, p.vaddr + p.len).iter().any(|x| x.2) {
                            // Partly shared: the rest, page by page range.
                            if p.precopied {
                                let f = precopy.as_ref().expect("opened when a run is precopied");
                                for (s, e, _) in unshared(p.vaddr, p.len) {
                                    let mut buf = vec![0u8; (e - s) as usize];
                                    f.read_exact_at(&mut buf, s).map_err(io_err(format!("read {} at {s:#x}", mm.precopy_file)))?;
                                    target.write(s, &buf, || format!("write {} precopied pages at {s:#x}", (e - s) / PAGE))?;
                                }
                            } else {
                                let bytes = &body[p.off as usize..(p.off + p.len) as usize];
                                reader.verify(by_run[&p.vaddr], bytes)?;
                                for (s, e, _) in unshared(p.vaddr, p.len) {
                                    let at = (s - p.vaddr) as usize;
                                    target.write(s, &bytes[at..at + (e - s) as usize], || {
                                        format!("write {} pages at {s:#x}", (e - s) / PAGE)
                                    })?;
                                }
                            }
                            continue;
                        }
                        if p.precopied && p.len <= SMALL && p.direct {
                            let f = precopy.as_ref().expect("opened when a run is precopied");
                            if !batch.add(p) {
                                batch.flush(c.pid, f, &mm.precopy_file)?;
                                batch.add(p);
                            }
                            continue;
                        }
                        if p.precopied {
                            let f = precopy.as_ref().expect("opened when a run is precopied");
                            let window = Mapping::file(f.as_fd(), p.off, p.len as usize)
                                .step(c.pid, || format!("map {} at {:#x}", mm.precopy_file, p.off))?;
                            lpm_sys::misc::populate_read(window.as_slice());
                            target.write(p.vaddr, window.as_slice(), || {
                                format!("write {} precopied pages at {:#x}", p.len / PAGE, p.vaddr)
                            })?;
                            continue;
                        }
                        let bytes = &body[p.off as usize..(p.off + p.len) as usize];
                        lpm_sys::misc::populate_read(bytes);
                        reader.verify(by_run[&p.vaddr], bytes)?;
                        target.write(p.vaddr, bytes, || format!("write {} pages at {:#x}", p.len / PAGE, p.vaddr))?;
                    }
                    if let Some(f) = precopy.as_ref() {
                        batch.flush(c.pid, f, &mm.precopy_file)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Incompatible("page fill worker panicked".into()))))
            .collect()
    });
    results.into_iter().collect()
}

/// Precopied pieces at most this long are filled in batches.
const SMALL: u64 = 64 * 1024;

/// Short precopied pieces gathered for one write into the task.
#[derive(Default)]
struct Batch {
    ranges: Vec<(u64, usize)>,
    bytes: usize,
}

impl Batch {
    /// Adds `p` unless the batch is full.
    fn add(&mut self, p: &Piece) -> bool {
        if self.ranges.len() == ptrace::MAX_RANGES || self.bytes + p.len as usize > CHUNK {
            return false;
        }
        self.ranges.push((p.vaddr, p.len as usize));
        self.bytes += p.len as usize;
        true
    }

    /// Reads the pieces from the precopy file `f` (the page of address A
    /// at offset A) and writes them into `pid`; empties the batch.
    fn flush(&mut self, pid: i32, f: &std::fs::File, name: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if self.ranges.is_empty() {
            return Ok(());
        }
        let mut buf = vec![0u8; self.bytes];
        let mut at = 0;
        for &(vaddr, len) in &self.ranges {
            f.read_exact_at(&mut buf[at..at + len], vaddr).map_err(io_err(format!("read {name} at {vaddr:#x}")))?;
            at += len;
        }
        ptrace::write_mem_ranges(pid, &self.ranges, &buf)
            .step(pid, || format!("write {} scattered precopied pieces from {:#x}", self.ranges.len(), self.ranges[0].0))?;
        self.ranges.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// PR_SET_MM_MAP: code, data, brk, stack, argv, env, auxv and exe.
fn set_layout(c: &RestoreCtx, r: &mut Remote, s: Scratch, mm: &Mm) -> Result<()> {
    let pid = c.pid;
    let Some(l) = &mm.layout else { return Ok(()) };
    let auxv = put(pid, s, 12288, &mm.auxv)?;
    let path = put_path(pid, s, 0, &mm.exe)?;
    let exe_fd = r
        .call(libc::SYS_openat, &[libc::AT_FDCWD as u64, path, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0])
        .step(pid, || format!("remote open exe {}", mm.exe))?;
    let map = PrctlMmMap {
        start_code: l.start_code,
        end_code: l.end_code,
        start_data: l.start_data,
        end_data: l.end_data,
        start_brk: l.start_brk,
        brk: l.brk.max(l.start_brk),
        start_stack: l.start_stack,
        arg_start: l.arg_start,
        arg_end: l.arg_end,
        env_start: l.env_start,
        env_end: l.env_end,
        auxv,
        auxv_size: mm.auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    let addr = put(pid, s, 8192, &map.to_bytes())?;
    r.call(libc::SYS_prctl, &[libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, addr, lpm_sys::misc::PRCTL_MM_MAP_SIZE as u64])
        .step(pid, || "remote PR_SET_MM_MAP".into())?;
    r.call(libc::SYS_close, &[exe_fd]).step(pid, || "remote close exe".into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A scratch directory, removed however the test ends.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("lpm-mem-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A precopied run reaching from an anonymous area (the lazy fill's)
    /// into a private file mapping's copies on write and a locked area
    /// (neither the fill's) is cut at their bounds; without a lazy fill
    /// nothing is the fill's.
    #[test]
    fn precopied_runs_are_cut_where_the_fill_stops() {
        let area = |start: u64, end: u64, kind: VmaKind, flags: &[&str]| Vma {
            start,
            end,
            kind: kind as i32,
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        let p = |n: u64| n * PAGE;
        let mm = Mm {
            vmas: vec![
                area(p(10), p(20), VmaKind::AnonPrivate, &[]),
                area(p(20), p(30), VmaKind::FilePrivate, &[]),
                area(p(30), p(40), VmaKind::AnonPrivate, &[]),
                area(p(40), p(50), VmaKind::AnonPrivate, &["lo"]),
            ],
            ..Default::default()
        };
        assert_eq!(
            lazy_parts(&mm, p(15), p(45), true),
            vec![(p(15), p(20), true), (p(20), p(30), false), (p(30), p(40), true), (p(40), p(45), false)]
        );
        assert_eq!(lazy_parts(&mm, p(12), p(18), true), vec![(p(12), p(18), true)]);
        assert_eq!(lazy_parts(&mm, p(15), p(45), false), vec![(p(15), p(45), false)]);
    }

    /// Pages of this very process saved through save_pieces: every page
    /// lands in exactly one run, zero runs are zero and left as holes,
    /// data runs hold the memory at their offsets with its XXH3 (the
    /// streaming hash equals the one-shot one the restore verifies),
    /// no data run crosses a slab edge of the file, and a run is cut
    /// where the addresses jump.
    #[test]
    fn pieces_are_saved_hashed_and_split() {
        let d = dir("save");
        let pg = PAGE as usize;
        let npages = 2 * (SLAB / PAGE) as usize + 37;
        let mut mem = vec![0u8; npages * pg];
        // Zero pages: a long stretch, single pages, both ends, and the
        // pages either side of the first slab edge of the file (body page
        // 511 ends the first slab).
        let zero = |i: usize| i == 0 || (100..164).contains(&i) || i == 300 || i == 510 || i == 512 || i == npages - 1;
        for i in (0..npages).filter(|&i| !zero(i)) {
            let page = &mut mem[i * pg..(i + 1) * pg];
            for (k, b) in page.iter_mut().enumerate() {
                *b = (i * 131 + k * 7 + 1) as u8 | 1;
            }
        }
        // Three pieces, contiguous in the body; the third starts 8 pages
        // further on in memory than the second ends (a jump of address).
        let base = mem.as_ptr() as u64;
        let bounds = [(0usize, 400usize), (400, 700), (708, npages)];
        let mut pieces = Vec::new();
        let mut total = 0;
        for &(s, e) in &bounds {
            let len = ((e - s) * pg) as u64;
            pieces.push(Piece { vaddr: base + (s * pg) as u64, len, off: total, direct: true, precopied: false });
            total += len;
        }
        let path = d.0.join("pages.img");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(lpm_image::PAGES_BODY_OFFSET + total).unwrap();
        let mut runs = save_pieces(std::process::id() as i32, &pieces, total, &file, &path).unwrap();
        runs.sort_by_key(|r| r.vaddr);

        let body = std::fs::read(&path).unwrap();
        let body = &body[lpm_image::PAGES_BODY_OFFSET as usize..];
        let saved: Vec<usize> = bounds.iter().flat_map(|&(s, e)| s..e).collect();
        let mut next = 0;
        let mut zero_pages = 0;
        for r in &runs {
            let first = ((r.vaddr - base) / PAGE) as usize;
            assert_eq!(first, saved[next], "runs leave out or repeat pages: {r:?}");
            let pages: Vec<usize> = (first..first + r.npages as usize).collect();
            assert_eq!(pages, saved[next..next + r.npages as usize], "run {r:?} spans a jump of address");
            next += r.npages as usize;
            assert!(pages.iter().all(|&i| zero(i) == r.zero), "run {r:?} mixes zero and data pages");
            if r.zero {
                zero_pages += r.npages;
                continue;
            }
            let data = &body[r.offset as usize..(r.offset + r.npages * PAGE) as usize];
            assert_eq!(data, &mem[first * pg..(first + pages.len()) * pg], "run {r:?} holds other bytes");
            assert_eq!(r.xxh3, lpm_image::checksum(data), "run {r:?}: checksum");
            let (fs, fe) = (lpm_image::PAGES_BODY_OFFSET + r.offset, lpm_image::PAGES_BODY_OFFSET + r.offset + r.npages * PAGE);
            assert_eq!(fs / SLAB, (fe - 1) / SLAB, "run {r:?} crosses a slab edge");
        }
        assert_eq!(next, saved.len(), "pages missing from the runs");
        assert_eq!(zero_pages, saved.iter().filter(|&&i| zero(i)).count() as u64);
        // Zero pages take no space (a few blocks of slack for the file
        // system's own).
        let allocated = file.metadata().unwrap().blocks() * 512;
        let len = lpm_image::PAGES_BODY_OFFSET + total;
        assert!(allocated + zero_pages * PAGE <= len + 8 * PAGE, "zero pages were written: {allocated} bytes allocated of {len}");
    }

    /// An address the task does not map is an error naming it, not a
    /// short or silently zero image.
    #[test]
    fn unmapped_pages_are_an_error() {
        let d = dir("fault");
        let path = d.0.join("pages.img");
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let pieces = [Piece { vaddr: 0x1000, len: 4 * PAGE, off: 0, direct: true, precopied: false }];
        let e = save_pieces(std::process::id() as i32, &pieces, 4 * PAGE, &file, &path).unwrap_err();
        assert!(e.to_string().contains("read pages at 0x1000"), "{e}");
    }
}
