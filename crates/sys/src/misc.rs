//! Small kernel calls that the ecosystem crates lack.

use std::io;

use crate::{cvt, Error, Result};

/// Reads a thread's robust futex list head and length.
pub fn get_robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer and one size_t to our locals.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut usize) };
    cvt(r).map_err(|e| Error::sys("get_robust_list", tid, e))?;
    Ok((head, len as u64))
}

/// Makes the calling process a child subreaper, so orphans of the trees it
/// restores are reparented to it (and reaped) instead of to pid 1.
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map_err(|e| Error::sys("prctl subreaper", 0, e))?;
    Ok(())
}

/// The kernel's `struct prctl_mm_map`, for a remote PR_SET_MM_MAP.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrctlMmMap {
    /// start_code.
    pub start_code: u64,
    /// end_code.
    pub end_code: u64,
    /// start_data.
    pub start_data: u64,
    /// end_data.
    pub end_data: u64,
    /// start_brk.
    pub start_brk: u64,
    /// brk.
    pub brk: u64,
    /// start_stack.
    pub start_stack: u64,
    /// arg_start.
    pub arg_start: u64,
    /// arg_end.
    pub arg_end: u64,
    /// env_start.
    pub env_start: u64,
    /// env_end.
    pub env_end: u64,
    /// Address of the auxv copy in the tracee.
    pub auxv: u64,
    /// Bytes of auxv.
    pub auxv_size: u32,
    /// Executable's fd in the tracee, or u32::MAX to leave it.
    pub exe_fd: u32,
}

/// Size of `struct prctl_mm_map` on x86_64.
pub const PRCTL_MM_MAP_SIZE: usize = 104;

impl PrctlMmMap {
    /// The struct as the kernel lays it out.
    pub fn to_bytes(&self) -> [u8; PRCTL_MM_MAP_SIZE] {
        let words = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
            self.auxv,
        ];
        let mut b = [0u8; PRCTL_MM_MAP_SIZE];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b[96..100].copy_from_slice(&self.auxv_size.to_le_bytes());
        b[100..104].copy_from_slice(&self.exe_fd.to_le_bytes());
        b
    }
}

/// An anonymous mapping owned by lpm itself (shared memory it prepares for
/// puppets to open through /proc/PID/map_files, or page buffers).
pub struct Mapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value.
unsafe impl Send for Mapping {}
// SAFETY: shared references only read; writing needs `&mut self`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of anonymous memory, shared (MAP_SHARED, so other
    /// processes can map the same object) or private.
    pub fn anonymous(len: usize, shared: bool) -> Result<Mapping> {
        let flags = libc::MAP_ANONYMOUS | if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::sys("mmap", 0, io::Error::last_os_error()));
        }
        Ok(Mapping { addr: p.cast(), len: len.max(1) })
    }

    /// Maps `len` bytes of shared anonymous hugetlbfs memory
    /// (MAP_HUGETLB) in pages of `page_size` bytes (a power of two the
    /// kernel offers): an object puppets can map through
    /// /proc/PID/map_files. The whole length is reserved from the pool of
    /// huge pages at once; pages are allocated as they are first touched.
    pub fn anonymous_huge(len: usize, page_size: u64) -> Result<Mapping> {
        const MAP_HUGE_SHIFT: i32 = 26;
        let flags = libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_HUGETLB | ((page_size.trailing_zeros() as i32) << MAP_HUGE_SHIFT);
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::sys("mmap MAP_HUGETLB", 0, io::Error::last_os_error()));
        }
        Ok(Mapping { addr: p.cast(), len: len.max(1) })
    }

    /// Allocates the pages of `[offset, offset + len)` of the mapping for
    /// writing (MADV_POPULATE_WRITE), their content unchanged; fails when
    /// the kernel cannot (a pool of huge pages run dry).
    pub fn populate(&mut self, offset: usize, len: usize) -> Result<()> {
        const MADV_POPULATE_WRITE: i32 = 23;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::sys("madvise MADV_POPULATE_WRITE", 0, io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // SAFETY: advice on pages inside our own writable mapping; the
        // kernel does not change their contents.
        let r = unsafe { libc::madvise(self.addr.add(offset).cast(), len, MADV_POPULATE_WRITE) };
        if r != 0 {
            return Err(Error::sys("madvise MADV_POPULATE_WRITE", 0, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Maps `len` bytes of `fd` at `offset` read-only, for zero-copy reads.
    pub fn file(fd: std::os::fd::BorrowedFd<'_>, offset: u64, len: usize) -> Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only private mapping of a file we hold open.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ, libc::MAP_PRIVATE, fd.as_raw_fd(), offset as libc::off_t)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::sys("mmap file", 0, io::Error::last_os_error()));
        }
        Ok(Mapping { addr: p.cast(), len: len.max(1) })
    }

    /// Maps `len` bytes of `fd` from offset 0 shared and writable, to fill
    /// a file (an image on tmpfs) by copying straight into its pages.
    pub fn file_shared(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open read-write.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::sys("mmap file shared", 0, io::Error::last_os_error()));
        }
        Ok(Mapping { addr: p.cast(), len: len.max(1) })
    }

    /// Maps `len` bytes of `fd` at `offset` shared and writable (a part
    /// of a hugetlbfs file, whose pages cannot be written otherwise).
    pub fn file_shared_at(fd: std::os::fd::BorrowedFd<'_>, offset: u64, len: usize) -> Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open read-write.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::sys("mmap file shared", 0, io::Error::last_os_error()));
        }
        Ok(Mapping { addr: p.cast(), len: len.max(1) })
    }

    /// Start address in lpm's address space.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// The memory.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: addr..addr+len is mapped readable for our lifetime.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// The memory, writable (anonymous and shared file mappings).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: writable mappings are mapped read-write for our lifetime
        // and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what we mapped.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Duplicates bytes buffered in pipe `from` into pipe `to` without
/// consuming them (tee(2)); returns the bytes copied (0 when empty).
pub fn tee(from: i32, to: i32, len: usize) -> Result<usize> {
    // SAFETY: tee takes two descriptors and flags, no pointers.
    let n = unsafe { libc::tee(from, to, len, libc::SPLICE_F_NONBLOCK) };
    match cvt(n as i64) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
        Err(e) => Err(Error::sys("tee", 0, e)),
    }
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file
/// description (kcmp KCMP_FILE).
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64) };
    cvt(r).map_err(|e| Error::sys("kcmp", pid1, e))?;
    Ok(r == 0)
}

/// Whether processes `pid1` and `pid2` share one file descriptor table
/// (kcmp KCMP_FILES: one was cloned from the other with CLONE_FILES).
pub fn same_fd_table(pid1: i32, pid2: i32) -> Result<bool> {
    const KCMP_FILES: i32 = 2;
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILES, 0u64, 0u64) };
    cvt(r).map_err(|e| Error::sys("kcmp KCMP_FILES", pid1, e))?;
    Ok(r == 0)
}

/// Moves `fd` to the lowest free number at or above `min` (F_DUPFD), closing
/// the original.
pub fn move_fd_above(fd: std::os::fd::OwnedFd, min: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: F_DUPFD returns a new descriptor we then own.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, min) }).map_err(|e| Error::sys("fcntl F_DUPFD", 0, e))?;
    // SAFETY: n is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (no privilege
/// needed), so a restore can hold every file of a tree open at once.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on our own process with valid pointers.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// Pipe capacity (F_GETPIPE_SZ).
pub fn pipe_size(fd: i32) -> Result<u32> {
    // SAFETY: fcntl on a descriptor with no pointer arguments.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }).map(|n| n as u32).map_err(|e| Error::sys("fcntl F_GETPIPE_SZ", 0, e))
}

/// Sets pipe capacity (F_SETPIPE_SZ).
pub fn set_pipe_size(fd: i32, size: u32) -> Result<()> {
    // SAFETY: fcntl on a descriptor with no pointer arguments.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) }).map_err(|e| Error::sys("fcntl F_SETPIPE_SZ", 0, e))?;
    Ok(())
}

/// Sets file status flags (F_SETFL).
pub fn set_fl(fd: i32, flags: i32) -> Result<()> {
    // SAFETY: fcntl on a descriptor with no pointer arguments.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map_err(|e| Error::sys("fcntl F_SETFL", 0, e))?;
    Ok(())
}

/// Sends `sig` to `pid` (errors ignored: used on cleanup paths).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(pid, sig) };
}

/// Sends `sig` to process `pid` as a whole (its shared pending set).
pub fn signal_process(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill takes integers only.
    cvt(unsafe { libc::kill(pid, sig) }).map_err(|e| Error::sys("kill", pid, e))?;
    Ok(())
}

/// Reaps any exited child without blocking; returns its pid.
pub fn reap_any() -> Option<i32> {
    // SAFETY: waitpid with a null status pointer.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
    (r > 0).then_some(r)
}

/// Waits for child `pid` to exit; returns its wait status.
pub fn wait_exit(pid: i32) -> Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return Ok(st);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::sys("waitpid", pid, e));
        }
    }
}

/// Faults in the pages of `buf` for writing in one call
/// (MADV_POPULATE_WRITE): much cheaper than a fault per page in the middle
/// of a copy. Failure only means the copy faults them in itself.
pub fn populate_write(buf: &mut [u8]) {
    const MADV_POPULATE_WRITE: i32 = 23;
    let start = buf.as_ptr() as usize;
    let aligned = start & !4095;
    // SAFETY: advice on pages that back `buf`, which we may write; the
    // kernel does not change their contents.
    unsafe { libc::madvise(aligned as *mut libc::c_void, buf.len() + (start - aligned), MADV_POPULATE_WRITE) };
}

/// Faults in the pages of `buf` for reading (MADV_POPULATE_READ).
pub fn populate_read(buf: &[u8]) {
    const MADV_POPULATE_READ: i32 = 22;
    let start = buf.as_ptr() as usize;
    let aligned = start & !4095;
    // SAFETY: advice on pages that back `buf`; contents are unchanged.
    unsafe { libc::madvise(aligned as *mut libc::c_void, buf.len() + (start - aligned), MADV_POPULATE_READ) };
}

/// Moves the calling (single-threaded) process into a private mount
/// namespace and mounts a tmpfs at `path` there, with transparent huge
/// pages when `huge`; the mount vanishes with the process, whatever way it
/// ends.
pub fn private_tmpfs(path: &std::path::Path, huge: bool) -> Result<()> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(|_| Error::sys("mount path", 0, io::Error::from_raw_os_error(libc::EINVAL)));
    let target = c(&path.to_string_lossy())?;
    let (fstype, root) = (c("tmpfs")?, c("/")?);
    let opts = c(if huge { "huge=always,mode=0700" } else { "mode=0700" })?;
    // SAFETY: unshare and mount with valid NUL-terminated strings; they
    // change only this process's view of mounts.
    unsafe {
        cvt(libc::unshare(libc::CLONE_NEWNS)).map_err(|e| Error::sys("unshare mount namespace", 0, e))?;
        cvt(libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))
            .map_err(|e| Error::sys("make mounts private", 0, e))?;
        cvt(libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()))
            .map_err(|e| Error::sys("mount tmpfs", 0, e))?;
    }
    Ok(())
}

/// Detaches the mount at `path` (umount2 MNT_DETACH).
pub fn unmount(path: &std::path::Path) -> Result<()> {
    let target = std::ffi::CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| Error::sys("umount path", 0, io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: umount2 with a valid NUL-terminated path.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map_err(|e| Error::sys("umount", 0, e))?;
    Ok(())
}

/// Whether `page` is all zero bytes (word at a time; the first non-zero
/// word ends it, so data pages cost almost nothing).
pub fn is_zero(page: &[u8]) -> bool {
    // SAFETY: viewing initialized bytes as u64 words is sound; align_to puts
    // any unaligned bytes in the head and tail slices.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// The next range holding data at or after `off` in a sparse file
/// (SEEK_DATA, then SEEK_HOLE), or None past the last data.
pub fn next_data(fd: std::os::fd::BorrowedFd<'_>, off: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor the caller holds open.
    let data = unsafe { libc::lseek(fd.as_raw_fd(), off as i64, libc::SEEK_DATA) };
    if data < 0 {
        return None;
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd.as_raw_fd(), data, libc::SEEK_HOLE) };
    Some((data as u64, hole.max(data) as u64))
}

/// Creates a timerfd on clock `clockid` (timerfd_create).
pub fn timerfd_create(clockid: i32, flags: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: timerfd_create takes integers only.
    let fd = cvt(unsafe { libc::timerfd_create(clockid, flags) }).map_err(|e| Error::sys("timerfd_create", 0, e))?;
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Arms timerfd `fd` (timerfd_settime): first expiry `value_ns` (relative,
/// or absolute on its clock with TFD_TIMER_ABSTIME in `flags`), then every
/// `interval_ns`.
pub fn timerfd_settime(fd: std::os::fd::BorrowedFd<'_>, flags: i32, interval_ns: u64, value_ns: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
    let its = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(value_ns) };
    // SAFETY: its is a valid itimerspec; the old value is not asked for.
    cvt(unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &its, std::ptr::null_mut()) })
        .map_err(|e| Error::sys("timerfd_settime", 0, e))?;
    Ok(())
}

/// Sets the expirations a timerfd reports as not yet read
/// (TFD_IOC_SET_TICKS, a checkpoint/restore ioctl).
pub fn timerfd_set_ticks(fd: std::os::fd::BorrowedFd<'_>, ticks: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the ioctl reads one u64 from the pointer we pass.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) })
        .map_err(|e| Error::sys("ioctl TFD_IOC_SET_TICKS", 0, e))?;
    Ok(())
}

/// The current time of clock `clockid` in nanoseconds.
pub fn clock_now_ns(clockid: i32) -> Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    cvt(unsafe { libc::clock_gettime(clockid, &mut ts) }).map_err(|e| Error::sys("clock_gettime", 0, e))?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Whether the file registered in epoll `epfd` of `pid` under descriptor
/// number `tfd` is the file open at `tfd` in `pid` (kcmp KCMP_EPOLL_TFD);
/// false when `tfd` is closed or now names another file.
pub fn epoll_target_is_open(pid: i32, epfd: i32, tfd: i32) -> Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot { efd: epfd as u32, tfd: tfd as u32, toff: 0 };
    // SAFETY: kcmp reads the slot through the pointer we pass.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, tfd as u64, &slot as *const Slot) };
    match cvt(r) {
        Ok(r) => Ok(r == 0),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(false),
        Err(e) => Err(Error::sys("kcmp KCMP_EPOLL_TFD", pid, e)),
    }
}

/// Opens the inode named by a file handle (open_by_handle_at) on the
/// filesystem of `mount_fd`; needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount_fd: std::os::fd::BorrowedFd<'_>, handle_type: i32, handle: &[u8], flags: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: buf holds a complete struct file_handle the kernel only reads.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd.as_raw_fd(), buf.as_ptr(), flags) };
    let fd = cvt(fd).map_err(|e| Error::sys("open_by_handle_at", 0, e))?;
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates a signalfd reading the signals in `mask` (bit N-1 for signal
/// N, real-time signals included).
pub fn signalfd(mask: u64, flags: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // The kernel's sigset is 64 bits on x86_64: pass it raw, so real-time
    // signals need no libc numbering.
    // SAFETY: the kernel reads 8 bytes of mask; -1 asks for a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    let fd = cvt(fd).map_err(|e| Error::sys("signalfd4", 0, e))?;
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// PTRACE_O_SUSPEND_SECCOMP: a tracee's seccomp filters do not apply to
/// it (nor to the syscalls a tracer makes it run) while it is traced with
/// this option. Needs CAP_SYS_ADMIN.
pub const PTRACE_O_SUSPEND_SECCOMP: i32 = 1 << 21;

/// Seccomp filter `index` of stopped tracee `tid` (0 = the newest) as raw
/// `struct sock_filter` instructions (PTRACE_SECCOMP_GET_FILTER); None past
/// the oldest.
pub fn seccomp_filter(tid: i32, index: u64) -> Result<Option<Vec<u8>>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // SAFETY: a null buffer asks only for the instruction count.
    let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as libc::c_ulong, std::ptr::null_mut::<u8>()) };
    let n = match cvt(n) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::sys("ptrace PTRACE_SECCOMP_GET_FILTER", tid, e)),
    };
    let mut buf = vec![0u8; n * 8];
    // SAFETY: buf holds room for the n 8-byte instructions the kernel writes.
    let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as libc::c_ulong, buf.as_mut_ptr()) };
    let got = cvt(got).map_err(|e| Error::sys("ptrace PTRACE_SECCOMP_GET_FILTER", tid, e))? as usize;
    buf.truncate(got.min(n) * 8);
    Ok(Some(buf))
}

/// The flags seccomp filter `index` of stopped tracee `tid` was installed
/// with, as far as the kernel reports them (PTRACE_SECCOMP_GET_METADATA).
pub fn seccomp_flags(tid: i32, index: u64) -> Result<u64> {
    const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut md = [index, 0u64];
    // SAFETY: the kernel reads and writes the 16-byte struct we pass.
    let r = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, std::mem::size_of_val(&md) as libc::c_ulong, md.as_mut_ptr()) };
    cvt(r).map_err(|e| Error::sys("ptrace PTRACE_SECCOMP_GET_METADATA", tid, e))?;
    Ok(md[1])
}

/// Size of the kernel's `struct termios` (TCGETS/TCSETS) on x86_64.
pub const TERMIOS_SIZE: usize = 36;

/// An ioctl reading an int into `*out`.
fn ioctl_get_int(fd: i32, req: libc::c_ulong, what: &'static str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int to the valid local pointer.
    cvt(unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) }).map_err(|e| Error::sys(what, 0, e))?;
    Ok(v)
}

/// An ioctl reading an int from `*in`.
fn ioctl_set_int(fd: i32, req: libc::c_ulong, v: i32, what: &'static str) -> Result<()> {
    // SAFETY: the request reads one int from the valid local pointer.
    cvt(unsafe { libc::ioctl(fd, req, &v as *const libc::c_int) }).map_err(|e| Error::sys(what, 0, e))?;
    Ok(())
}

/// The termios of terminal `fd` (either end of a pty, or any tty).
pub fn tty_termios(fd: i32) -> Result<Vec<u8>> {
    let mut t = [0u8; TERMIOS_SIZE];
    // SAFETY: TCGETS writes a kernel struct termios (TERMIOS_SIZE bytes) to the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TCGETS, t.as_mut_ptr()) }).map_err(|e| Error::sys("ioctl TCGETS", 0, e))?;
    Ok(t.to_vec())
}

/// Sets the termios of terminal `fd` (`t` as [`tty_termios`] read it).
pub fn tty_set_termios(fd: i32, t: &[u8]) -> Result<()> {
    if t.len() != TERMIOS_SIZE {
        return Err(Error::sys("ioctl TCSETS", 0, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // SAFETY: TCSETS reads a kernel struct termios (TERMIOS_SIZE bytes, checked) from the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TCSETS, t.as_ptr()) }).map_err(|e| Error::sys("ioctl TCSETS", 0, e))?;
    Ok(())
}

/// The device number (major, minor) of the terminal behind `fd`: what
/// /dev/tty stands for when `fd` is open on it (TIOCGDEV).
pub fn tty_device(fd: i32) -> Result<(u32, u32)> {
    let mut v: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int to the valid local pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCGDEV, &mut v as *mut libc::c_uint) }).map_err(|e| Error::sys("ioctl TIOCGDEV", 0, e))?;
    // new_encode_dev: minor's low byte, major, then minor's high bits.
    Ok(((v >> 8) & 0xfff, (v & 0xff) | ((v >> 12) & 0xfff00)))
}

/// Makes process group `pgid` the foreground group of terminal `fd`, the
/// caller's controlling terminal (TIOCSPGRP).
pub fn tty_set_foreground(fd: i32, pgid: i32) -> Result<()> {
    ioctl_set_int(fd, libc::TIOCSPGRP, pgid, "ioctl TIOCSPGRP")
}

/// The state of a pseudo-terminal read from its master.
#[derive(Clone, Debug, Default)]
pub struct PtyState {
    /// Raw kernel `struct termios` (of the slave side).
    pub termios: Vec<u8>,
    /// rows, cols, xpixel, ypixel.
    pub winsize: [u16; 4],
    /// Packet mode (TIOCPKT).
    pub packet: bool,
    /// The slave is locked (TIOCSPTLCK).
    pub locked: bool,
}

/// Reads termios, window size, packet mode and lock of a pty from its
/// master `fd`.
pub fn pty_get(fd: i32) -> Result<PtyState> {
    let mut t = [0u8; TERMIOS_SIZE];
    // SAFETY: TCGETS writes a kernel struct termios (TERMIOS_SIZE bytes) to the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TCGETS, t.as_mut_ptr()) }).map_err(|e| Error::sys("ioctl TCGETS", 0, e))?;
    let mut w = [0u16; 4];
    // SAFETY: TIOCGWINSZ writes a struct winsize (four u16) to the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, w.as_mut_ptr()) }).map_err(|e| Error::sys("ioctl TIOCGWINSZ", 0, e))?;
    let packet = ioctl_get_int(fd, libc::TIOCGPKT, "ioctl TIOCGPKT")? != 0;
    let locked = ioctl_get_int(fd, libc::TIOCGPTLCK, "ioctl TIOCGPTLCK")? != 0;
    Ok(PtyState { termios: t.to_vec(), winsize: w, packet, locked })
}

/// Sets termios, window size and packet mode of a pty through its master
/// `fd` (the lock is set with [`pty_lock`]).
pub fn pty_set(fd: i32, s: &PtyState) -> Result<()> {
    if s.termios.len() != TERMIOS_SIZE {
        return Err(Error::sys("ioctl TCSETS", 0, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // SAFETY: TCSETS reads a kernel struct termios (TERMIOS_SIZE bytes, checked) from the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TCSETS, s.termios.as_ptr()) }).map_err(|e| Error::sys("ioctl TCSETS", 0, e))?;
    // SAFETY: TIOCSWINSZ reads a struct winsize (four u16) from the buffer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, s.winsize.as_ptr()) }).map_err(|e| Error::sys("ioctl TIOCSWINSZ", 0, e))?;
    ioctl_set_int(fd, libc::TIOCPKT, i32::from(s.packet), "ioctl TIOCPKT")
}

/// Locks or unlocks the slave of pty master `fd` (TIOCSPTLCK).
pub fn pty_lock(fd: i32, locked: bool) -> Result<()> {
    ioctl_set_int(fd, libc::TIOCSPTLCK, i32::from(locked), "ioctl TIOCSPTLCK")
}

/// The index (N of /dev/pts/N) of pty master `fd` (TIOCGPTN).
pub fn pty_index(fd: i32) -> Result<u32> {
    ioctl_get_int(fd, libc::TIOCGPTN, "ioctl TIOCGPTN").map(|n| n as u32)
}

/// Opens the slave of pty master `fd` (TIOCGPTPEER) with open `flags`.
pub fn pty_peer(fd: i32, flags: i32) -> Result<std::os::fd::OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument.
    let n =
        cvt(unsafe { libc::ioctl(fd, libc::TIOCGPTPEER, flags as libc::c_ulong) }).map_err(|e| Error::sys("ioctl TIOCGPTPEER", 0, e))?;
    // SAFETY: TIOCGPTPEER returned a fresh descriptor we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(n) })
}

/// Bytes waiting to be read (FIONREAD) and to be sent (TIOCOUTQ) on a tty.
pub fn tty_queues(fd: i32) -> Result<(i32, i32)> {
    Ok((ioctl_get_int(fd, libc::FIONREAD, "ioctl FIONREAD")?, ioctl_get_int(fd, libc::TIOCOUTQ, "ioctl TIOCOUTQ")?))
}

/// Reads everything a tty end `fd` holds for its reader, without
/// blocking: what its line discipline has, and what the kernel's flip
/// buffers still carry to it (a poll that finds nothing ready pushes them
/// through first).
pub fn tty_drain(fd: i32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no timeout.
        cvt(unsafe { libc::poll(&mut p, 1, 0) }).map_err(|e| Error::sys("poll tty", 0, e))?;
        let n = ioctl_get_int(fd, libc::FIONREAD, "ioctl FIONREAD")?;
        if n <= 0 {
            return Ok(out);
        }
        let at = out.len();
        out.resize(at + n as usize, 0);
        // SAFETY: the buffer has n bytes free at `at`.
        let r = unsafe { libc::read(fd, out[at..].as_mut_ptr().cast(), n as usize) };
        let r = cvt(r as i64).map_err(|e| Error::sys("read tty", 0, e))?;
        out.truncate(at + r as usize);
        if r == 0 {
            return Ok(out);
        }
    }
}

/// Writes `data` to tty end `to` and waits until its peer `peer` has all
/// of it for its reader (a pty carries data through a kernel worker, and
/// the termios in force when the worker runs is what processes it).
pub fn tty_inject(to: i32, peer: i32, data: &[u8], deadline: std::time::Instant) -> Result<()> {
    let before = ioctl_get_int(peer, libc::FIONREAD, "ioctl FIONREAD")?.max(0) as usize;
    let mut off = 0;
    while off < data.len() {
        // SAFETY: writes from a valid slice.
        let r = unsafe { libc::write(to, data[off..].as_ptr().cast(), data.len() - off) };
        match cvt(r as i64) {
            Ok(n) => off += n as usize,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(Error::sys("write tty", 0, e)),
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::sys("write tty", 0, io::Error::from_raw_os_error(libc::ETIMEDOUT)));
        }
    }
    loop {
        let mut p = libc::pollfd { fd: peer, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no timeout.
        cvt(unsafe { libc::poll(&mut p, 1, 0) }).map_err(|e| Error::sys("poll tty", 0, e))?;
        if ioctl_get_int(peer, libc::FIONREAD, "ioctl FIONREAD")?.max(0) as usize >= before + data.len() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::sys("wait for tty data to arrive", 0, io::Error::from_raw_os_error(libc::ETIMEDOUT)));
        }
        std::thread::yield_now();
    }
}

/// The session (TIOCGSID) and foreground group (TIOCGPGRP) of the tty, as
/// this process's pid namespace sees them; None when it is no session's
/// controlling terminal.
pub fn tty_session(fd: i32) -> Result<Option<(i32, i32)>> {
    match ioctl_get_int(fd, libc::TIOCGSID, "ioctl TIOCGSID") {
        Ok(sid) => Ok(Some((sid, ioctl_get_int(fd, libc::TIOCGPGRP, "ioctl TIOCGPGRP")?))),
        Err(Error::Sys { source, .. }) if source.raw_os_error() == Some(libc::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The XSAVE features the kernel enabled on this CPU (XCR0) and the size
/// of an XSAVE area holding them (CPUID leaf 0xD), as a restored task's
/// state needs them: what a migration's validation compares between
/// hosts before anything moves. (0, 0) off x86-64 or without XSAVE.
pub fn xsave_features() -> (u64, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 1 ECX bit 27 (OSXSAVE) says XGETBV may run.
        let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
        if !osxsave {
            return (0, 0);
        }
        let (lo, hi): (u32, u32);
        // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 (XCR0) is allowed
        // at any privilege level; it reads two registers and nothing else.
        unsafe { std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
        let size = __cpuid_count(0xd, 0).ebx;
        ((hi as u64) << 32 | lo as u64, size)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (0, 0)
    }
}

/// Sends `data` and the descriptors `fds` (SCM_RIGHTS) as one message on
/// Unix socket `sock`.
pub fn send_fds(sock: std::os::fd::BorrowedFd<'_>, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::sys("sendmsg", 0, io::Error::other("no room for the descriptors")));
    }
    let n = rustix::net::sendmsg(sock, &[io::IoSlice::new(data)], &mut anc, SendFlags::NOSIGNAL)
        .map_err(|e| Error::sys("sendmsg", 0, e.into()))?;
    if n != data.len() {
        return Err(Error::sys("sendmsg", 0, io::Error::other(format!("sent {n} of {} bytes", data.len()))));
    }
    Ok(())
}

/// Receives one message from Unix socket `sock` into `buf`, with at most
/// `max_fds` descriptors (close-on-exec); 0 bytes and no descriptor when
/// the peer closed.
pub fn recv_fds(sock: std::os::fd::BorrowedFd<'_>, buf: &mut [u8], max_fds: usize) -> Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(sock, &mut [io::IoSliceMut::new(buf)], &mut anc, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| Error::sys("recvmsg", 0, e.into()))?;
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    Ok((r.bytes, fds))
}

/// A file handle (name_to_handle_at): the kernel's own name of an inode
/// on its filesystem, valid as long as the inode lives, whatever its
/// names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    /// The filesystem's type of handle.
    pub kind: i32,
    /// The handle's bytes.
    pub bytes: Vec<u8>,
    /// The id of the mount it was taken through (mountinfo's first field).
    pub mount_id: i32,
}

/// Largest handle the kernel gives (MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

/// The handle of the file `fd` is open on (AT_EMPTY_PATH: `fd` itself,
/// of any kind, O_PATH too).
pub fn file_handle(fd: std::os::fd::BorrowedFd<'_>) -> Result<FileHandle> {
    use std::os::fd::AsRawFd;
    // struct file_handle: handle_bytes, handle_type, then the bytes.
    let mut buf = [0u8; 8 + MAX_HANDLE_SZ];
    buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the buffer holds a file_handle with room for MAX_HANDLE_SZ
    // bytes, as its handle_bytes says; the path is a NUL-terminated empty
    // string; mount_id is a local int.
    let r = unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr(), &mut mount_id, libc::AT_EMPTY_PATH)
    };
    cvt(r).map_err(|e| Error::sys("name_to_handle_at", 0, e))?;
    let len = (u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize).min(MAX_HANDLE_SZ);
    let kind = i32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
    Ok(FileHandle { kind, bytes: buf[8..8 + len].to_vec(), mount_id })
}

/// process_madvise(2): gives `advice` (MADV_COLLAPSE, MADV_COLD, ...) for
/// `[addr, addr + len)` of process `pid`'s address space; returns the
/// bytes advised.
pub fn process_madvise(pid: i32, addr: u64, len: usize, advice: i32) -> Result<usize> {
    let p =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| Error::sys("pidfd_open", pid, std::io::Error::from_raw_os_error(libc::ESRCH)))?;
    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(|e| Error::sys("pidfd_open", pid, e.into()))?;
    let iov = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    // SAFETY: one iovec naming a range of the other process's memory, which
    // the kernel only reads the bounds of; no memory of ours is written.
    let n = cvt(unsafe { libc::syscall(libc::SYS_process_madvise, std::os::fd::AsRawFd::as_raw_fd(&fd), &iov, 1, advice, 0) })
        .map_err(|e| Error::sys("process_madvise", pid, e))?;
    Ok(n as usize)
}
