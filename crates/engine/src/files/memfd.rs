//! memfds: name, seals, size, mode and content, and the sharing between a
//! memfd's descriptors and its shared mappings.
//!
//! The restorer recreates the memfd (content first, seals last, since
//! F_SEAL_WRITE forbids the writes). Memory restore maps a memfd's areas
//! from a copy of its pages made for mappings; every process that holds a
//! descriptor of the memfd then maps those areas again from the descriptor
//! ([`Kind::install`]), so mappings and descriptors share one object; a
//! process that maps a memfd whose descriptors only others hold maps the
//! restorer's descriptor of it (mem.rs). A second open file description
//! of a memfd (reopened through /proc/PID/fd) is recorded with its own
//! flags and offset and the first one's file id, and reopened from it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use lpm_image::{Fd, FileImage, MemfdImage, Process, VmaKind};
use lpm_sys::misc;
use lpm_sys::remote::Remote;
use rustix::fs::{MemfdFlags, SealFlags};

use super::{open_path, FileTable, Kind, OpenCx, Seen};
use crate::task::{put_path, Scratch};
use crate::{io_err, proc, EngineError, Result, StepExt};

/// memfd objects.
pub struct Memfd;

/// Largest memfd content saved in the image.
const MAX_CONTENT: u64 = 64 << 20;

/// Refuses mappings of the memfd that restore could not keep shared with
/// its descriptors.
fn check_mappings(seen: &Seen, seals: u32, tree: &[i32]) -> Result<()> {
    let (dev, ino) = (seen.st.dev(), seen.st.ino());
    for &pid in tree {
        let maps = proc::maps(pid)?;
        for e in maps.iter().filter(|e| e.inode == ino && e.path.starts_with("/memfd:")) {
            if libc::makedev(e.major, e.minor) != dev {
                continue;
            }
            // Every mapping maps the restored memfd itself (mem.rs); a
            // shared one of a process holding a descriptor is mapped
            // again from that descriptor ([`Kind::install`]).
            if e.shared() && e.prot() & libc::PROT_WRITE as u32 != 0 && seals & libc::F_SEAL_FUTURE_WRITE as u32 != 0 {
                return Err(
                    seen.unsupported(format!("memfd sealed F_SEAL_FUTURE_WRITE with a writable mapping at {:#x} in pid {pid}", e.start))
                );
            }
        }
    }
    Ok(())
}

/// What the image keeps of a memfd but its content: the name, the file
/// reopened, its seals and the extents holding data; or why it cannot
/// be kept.
struct Observed<'a> {
    name: &'a str,
    file: std::fs::File,
    seals: u32,
    extents: Vec<(u64, u64)>,
    /// On hugetlbfs: its page size (its extents are the huge pages it
    /// holds, whole); 0 otherwise.
    huge: u64,
}

fn observe<'a>(seen: &Seen<'a>, table: &FileTable) -> Result<Observed<'a>> {
    let name = seen
        .link
        .strip_prefix("/memfd:")
        .and_then(|n| n.strip_suffix(" (deleted)"))
        .ok_or_else(|| seen.unsupported("memfd whose link does not read \"/memfd:NAME (deleted)\""))?;
    let path = format!("/proc/{}/fd/{}", seen.pid, seen.fd);
    let file = std::fs::File::open(&path).map_err(io_err(format!("reopen {path}")))?;
    let fs = rustix::fs::fstatfs(&file).map_err(|e| io_err(format!("statfs {path}"))(e.into()))?;
    let huge = if fs.f_type as u64 == crate::hugetlb::HUGETLBFS_MAGIC { fs.f_bsize as u64 } else { 0 };
    let seals = rustix::fs::fcntl_get_seals(&file).map_err(|e| io_err(format!("F_GET_SEALS on {path}"))(e.into()))?.bits();
    check_mappings(seen, seals, &table.tree)?;
    let extents = if huge != 0 {
        // hugetlbfs tells no holes: the huge pages it holds, each whole
        // (hugetlb.rs).
        let pages = crate::hugetlb::file_pages(&file, huge, seen.st.dev(), seen.st.ino(), &table.tree)?.map_err(|(holds, found)| {
            seen.unsupported(format!(
                "memfd on hugetlbfs holding {holds} huge pages, {found} of them holding data or mapped: the others are all zero and mapped by no process of the tree (allocated by fallocate?), so which they are cannot be told"
            ))
        })?;
        if pages.len() as u64 * huge > MAX_CONTENT {
            return Err(seen.unsupported(format!("memfd on hugetlbfs holding more than {MAX_CONTENT} bytes")));
        }
        pages.into_iter().map(|o| (o, o + huge)).collect()
    } else {
        super::data_extents(&file, seen.st.len(), MAX_CONTENT)
            .map_err(|_| seen.unsupported(format!("memfd with more than {MAX_CONTENT} bytes of data")))?
    };
    Ok(Observed { name, file, seals, extents, huge })
}

impl Kind for Memfd {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        if table.described(seen.st.dev(), seen.st.ino()) {
            return Ok(());
        }
        observe(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        if let Some(first) = table.first_description(seen.st.dev(), seen.st.ino()) {
            // Another open file description of a memfd recorded already
            // (reopened through /proc): its own flags and offset, the
            // memfd's state once.
            f.memfd_of = first;
            return Ok(());
        }
        let o = observe(seen, table)?;
        let chunks = super::read_extents(&o.file, &o.extents, &format!("memfd fd {} of pid {}", seen.fd, seen.pid))?;
        // A hugetlbfs inode is told from a shmem one as its mappings'
        // `shmem_id` is (mem.rs).
        let ino = if o.huge != 0 { seen.st.ino() | crate::hugetlb::HUGE_ID } else { seen.st.ino() };
        f.memfd = Some(MemfdImage { name: o.name.to_string(), seals: o.seals, size: seen.st.len(), ino, chunks, huge_page_size: o.huge });
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        if f.memfd_of != 0 {
            let first = cx.memfds.get(&f.memfd_of).ok_or_else(|| {
                EngineError::Incompatible(format!("memfd file {} reopens file {}, not a memfd opened before it", f.id, f.memfd_of))
            })?;
            let fd = open_path(&format!("/proc/self/fd/{}", first.as_raw_fd()), f.flags)?;
            let what = || format!("memfd file {} (reopened from file {})", f.id, f.memfd_of);
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(f.pos)).map_err(|e| io_err(format!("seek {}", what()))(e.into()))?;
            misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of {}", what()))?;
            return Ok(fd);
        }
        let m = f.memfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("memfd file {} has no memfd state", f.id)))?;
        let what = |step: &str| format!("{step} of memfd {:?} (file {})", m.name, f.id);
        // Executable like the default, then the mode of the image; sealing
        // allowed, then the seals of the image.
        let huge = if m.huge_page_size != 0 { crate::hugetlb::memfd_flags(m.huge_page_size) } else { MemfdFlags::empty() };
        let fd = rustix::fs::memfd_create(&*m.name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::EXEC | huge)
            .map_err(|e| io_err(what("create"))(e.into()))?;
        let file = std::fs::File::from(fd);
        file.set_len(m.size).map_err(io_err(what("size")))?;
        for c in &m.chunks {
            if m.huge_page_size != 0 {
                // hugetlbfs has no write: each huge page it held is
                // allocated alone (no other reserved) and written through
                // a mapping of it.
                use std::os::fd::AsFd;
                let len = c.data.len() as u64;
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), c.offset, len)
                    .map_err(|e| io_err(what(&format!("allocate huge pages at {:#x} of", c.offset)))(e.into()))?;
                let mut window = lpm_sys::misc::Mapping::file_shared_at(file.as_fd(), c.offset, len as usize)
                    .step(0, || what(&format!("map huge pages at {:#x}", c.offset)))?;
                window.as_mut_slice()[..c.data.len()].copy_from_slice(&c.data);
                continue;
            }
            file.write_all_at(&c.data, c.offset).map_err(io_err(what("fill")))?;
        }
        let mode = rustix::fs::Mode::from_raw_mode(f.mode & 0o7777);
        rustix::fs::fchmod(&file, mode).map_err(|e| io_err(what("chmod"))(e.into()))?;
        if m.seals != 0 {
            rustix::fs::fcntl_add_seals(&file, SealFlags::from_bits_retain(m.seals)).map_err(|e| io_err(what("seal"))(e.into()))?;
        }
        let fd: OwnedFd = file.into();
        // memfd_create opens read-write; a description opened otherwise
        // (through /proc) is opened again that way.
        let fd = if f.flags as i32 & libc::O_ACCMODE != libc::O_RDWR {
            open_path(&format!("/proc/self/fd/{}", fd.as_raw_fd()), f.flags)?
        } else {
            fd
        };
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(f.pos)).map_err(|e| io_err(what("seek"))(e.into()))?;
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || what("set flags"))?;
        cx.memfds.insert(f.id, fd.try_clone().map_err(io_err(what("keep")))?);
        Ok(fd)
    }

    fn install(&self, pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, p: &Process) -> Result<()> {
        if f.memfd_of != 0 {
            // Its memfd's areas are the first description's to map again.
            return Ok(());
        }
        let m = f.memfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("memfd file {} has no memfd state", f.id)))?;
        let first = p.fds.iter().find(|x| x.file_id == f.id).map(|x| x.fd);
        let Some(mm) = p.mm.as_ref().filter(|_| first == Some(fd.fd)) else { return Ok(()) };
        let areas = mm.vmas.iter().filter(|v| v.kind == VmaKind::AnonShared as i32 && v.shmem_id == m.ino && v.path.starts_with("/memfd:"));
        for v in areas {
            let writable = v.prot & libc::PROT_WRITE as u32 != 0;
            let path = format!("/proc/self/fd/{}", fd.fd);
            let addr = put_path(pid, s, 0, &path)?;
            let flags = if writable { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
            let what = |step: &str| format!("{step} memfd {:?} at {:#x}-{:#x} in pid {}", m.name, v.start, v.end, p.pid);
            let tmp = r.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, addr, flags as u64, 0]).step(pid, || what("remote open"))?;
            let mapped = r
                .call(libc::SYS_mmap, &[v.start, v.end - v.start, v.prot as u64, (v.flags | libc::MAP_FIXED as u32) as u64, tmp, v.pgoff])
                .step(pid, || what("remote mmap"));
            r.call(libc::SYS_close, &[tmp]).step(pid, || what("remote close after mapping"))?;
            mapped?;
            if m.huge_page_size != 0 {
                // Its page table maps the huge pages again, as the
                // original's did (hugetlb.rs).
                let held: Vec<u64> = m.chunks.iter().map(|c| c.offset).collect();
                crate::hugetlb::touch(pid, v, &held)?;
            }
            crate::mem::advise(pid, r, v)?;
        }
        Ok(())
    }
}
