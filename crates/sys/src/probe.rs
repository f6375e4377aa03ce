//! Kernel feature probes behind `lpm check`.
//!
//! Each probe exercises the interface the way the engine will (a traced
//! child, a frozen cgroup, a socket in repair mode) instead of trusting a
//! config option or a header: distributions backport and disable, LSMs deny,
//! sysctls switch things off. Every probe kills and reaps its children,
//! closes its fds and removes its cgroup on every path, and bounds every wait,
//! so `lpm check` is safe to run on a production host.

use std::ffi::{c_int, c_ulong, c_void};
use std::fmt::Display;
use std::fs;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::size_of;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libc::pid_t;
use linux_raw_sys::general::{self as g, clone_args};
use linux_raw_sys::{net, prctl as pr, ptrace as pt};
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::pipe::PipeFlags;
use rustix::process::{PidfdFlags, PidfdGetfdFlags};

/// One probed kernel feature.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Short name printed by `lpm check`.
    pub name: &'static str,
    /// What lpm cannot do without it, so the user can judge what is lost.
    pub needed_for: &'static str,
    /// What the probe measured when the feature works, or why it is missing.
    pub result: Result<String, String>,
}

type Res<T> = Result<T, String>;
type Probe = Res<String>;

/// Probes every kernel feature lpm relies on, in `lpm check` order.
///
/// Needs root. Takes well under a second and leaves no process, fd or cgroup
/// behind, whatever fails.
pub fn probe_all() -> Vec<Feature> {
    let (uffd, scan) = probe_dirty_tracking();
    let results = [
        probe_ptrace(),
        probe_pidfd(),
        probe_set_tid(),
        uffd,
        scan,
        probe_mm_map(),
        probe_freezer(),
        probe_tcp_repair(),
        probe_namespaces(),
        probe_process_vm(),
    ];
    let zipped = FEATURES.iter().zip(results);
    zipped.map(|(&(name, needed_for), result)| Feature { name, needed_for, result }).collect()
}

/// Name and use of each feature, in the order of the results in `probe_all`.
const FEATURES: [(&str, &str); 10] = [
    ("ptrace seize, regsets", "dumping registers, xstate, sigmask, rseq"),
    ("pidfd_getfd", "dumping the open files of a task"),
    ("clone3 set_tid", "restoring tasks with their original pids"),
    ("userfaultfd wp-async", "tracking dirty memory in pre-copy"),
    ("PAGEMAP_SCAN", "collecting dirty pages during pre-copy"),
    ("PR_SET_MM_MAP", "restoring brk, stack, args, auxv and exe"),
    ("cgroup v2 freezer", "freezing a process tree atomically"),
    ("TCP_REPAIR", "restoring established TCP connections"),
    ("namespaces", "restoring pid, mnt, net, uts, ipc namespaces"),
    ("process_vm_readv/writev", "reading and writing task memory"),
];

/// Absent from linux-raw-sys 0.12 without its `elf_uapi` feature.
const NT_PRSTATUS: usize = 1;
const NT_X86_XSTATE: usize = 0x202;
/// Linux stores XCR0 in the first word of the FXSAVE software-reserved bytes
/// of NT_X86_XSTATE (gdb reads it there too).
const XCR0_OFFSET: usize = 464;
/// Legacy FXSAVE area plus XSAVE header: anything shorter is not XSAVE.
const XSTATE_MIN: usize = 576;
/// Bound on every wait; a healthy kernel answers in microseconds.
const WAIT: Duration = Duration::from_secs(5);

/// Adds the failed operation to an error, so every result names it.
trait Ctx<T> {
    fn ctx(self, op: impl Display) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, op: impl Display) -> Res<T> {
        self.map_err(|e| format!("{op}: {e}"))
    }
}

/// Turns a C return value into a result naming the operation and errno.
fn cvt(r: impl Into<i64>, op: impl Display) -> Res<i64> {
    match r.into() {
        r if r < 0 => Err(io::Error::last_os_error()).ctx(op),
        r => Ok(r),
    }
}

/// Fails the probe with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr; $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// `ptrace(2)` naming the request in the error; needs an unsafe block whose
/// SAFETY comment says why `data` suits the request.
macro_rules! ptrace {
    ($req:ident, $pid:expr, $addr:expr, $data:expr) => {
        cvt(libc::ptrace(pt::$req, $pid, $addr as usize, $data), stringify!($req))
    };
}

fn ptr<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

fn nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A child that is killed and reaped when dropped, so that no probe leaves a
/// process (or a zombie holding its pid) behind, whichever way it returns.
struct Child {
    pid: pid_t,
    reaped: bool,
}

impl Child {
    /// Waits for the next exit or ptrace stop, polling because waitpid has
    /// no timeout of its own.
    fn wait(&mut self, timeout: Duration) -> Res<c_int> {
        let deadline = Instant::now() + timeout;
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out-pointer for the call.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG | libc::__WALL) };
            if cvt(r, format_args!("waitpid {}", self.pid))? != 0 {
                self.reaped = libc::WIFEXITED(status) || libc::WIFSIGNALED(status);
                return Ok(status);
            }
            ensure!(Instant::now() < deadline; "pid {}: no change in {timeout:?}", self.pid);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        while !self.reaped {
            // SAFETY: the pid is our unreaped child, so it cannot be recycled.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            if self.wait(WAIT).is_err() {
                break;
            }
        }
    }
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).ctx("pipe")
}

/// Reads one byte (None at end of file) without ever blocking past `WAIT`.
fn read_byte(fd: BorrowedFd<'_>) -> Res<Option<u8>> {
    let timeout = Timespec::try_from(WAIT).ctx("timeout")?;
    let ready = loop {
        match rustix::event::poll(&mut [PollFd::new(&fd, PollFlags::IN)], Some(&timeout)) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r.ctx("poll")?,
        }
    };
    ensure!(ready > 0; "nothing to read within {WAIT:?}");
    let mut b = [0u8];
    Ok((rustix::io::read(fd, &mut b).ctx("read")? == 1).then_some(b[0]))
}

/// Forks a child that copies `value` into its copy of `poke`, says it is
/// ready and then sleeps until killed. Of the parent's descriptors it
/// keeps only `keep`.
fn spawn_blocked(poke: &mut [u8], value: &[u8], keep: Option<RawFd>) -> Res<Child> {
    let (rd, wr) = pipe()?;
    // Sorted before the fork: the child may not allocate.
    let mut kept = [wr.as_raw_fd(), keep.unwrap_or(wr.as_raw_fd())];
    kept.sort_unstable();
    let parent = std::process::id() as pid_t;
    // SAFETY: the child branch runs only async-signal-safe code (stores,
    // write, pause) and never returns, so no destructor, allocator or lock
    // runs in this copy of a multi-threaded process.
    let pid = cvt(unsafe { libc::fork() }, "fork")? as pid_t;
    if pid == 0 {
        // SAFETY: prctl and close_range are async-signal-safe raw
        // syscalls on this copy of the process. The child outlives no
        // lpmd (a killed one's paused probes would live on) and holds
        // none of its descriptors: a listening socket it kept would stop
        // the next lpmd from binding the port.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            let mut from = 0 as libc::c_uint;
            for k in kept {
                let k = k as libc::c_uint;
                if k > from {
                    libc::syscall(libc::SYS_close_range, from, k - 1, 0 as libc::c_uint);
                }
                from = from.max(k + 1);
            }
            libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0 as libc::c_uint);
        }
        for (dst, &src) in poke.iter_mut().zip(value) {
            // SAFETY: dst is a valid &mut u8; volatile so that the store
            // survives although this branch never reads it back.
            unsafe { std::ptr::write_volatile(dst, src) };
        }
        // SAFETY: write and pause are async-signal-safe; b"r" is static.
        unsafe {
            libc::write(wr.as_raw_fd(), b"r".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let child = Child { pid, reaped: false };
    drop(wr);
    match read_byte(rd.as_fd())? {
        Some(_) => Ok(child),
        None => Err(format!("child {pid} exited before it was ready")),
    }
}

/// Runs `body` in a clone3 child and `_exit`s with its result.
///
/// # Safety
/// `body` runs in a copy of a possibly multi-threaded process: it must be
/// async-signal-safe (raw syscalls only, no allocation, no locks).
unsafe fn clone3_child(args: &clone_args, body: fn() -> c_int) -> io::Result<Child> {
    let size = size_of::<clone_args>();
    // SAFETY: args is a valid clone_args of `size` bytes. Without CLONE_VM
    // the child runs on a copy of this stack, as after fork, and only calls
    // body (async-signal-safe per the caller) and _exit.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *const clone_args, size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(body()) }
    }
    let pid = r as pid_t;
    Ok(Child { pid, reaped: false })
}

fn clone_args(flags: u32, set_tid: Option<&pid_t>) -> clone_args {
    clone_args {
        flags: flags.into(),
        exit_signal: g::SIGCHLD.into(),
        set_tid: set_tid.map_or(0, |t| t as *const pid_t as u64),
        set_tid_size: set_tid.is_some().into(),
        // SAFETY: clone_args is plain integers, for which zero means unset.
        ..unsafe { std::mem::zeroed() }
    }
}

/// Reads regset `nt` into `buf` and returns how many bytes the kernel filled.
fn getregset(pid: pid_t, nt: usize, buf: &mut [u8]) -> Res<usize> {
    let (iov_base, iov_len) = (buf.as_mut_ptr().cast(), buf.len());
    let mut iov = libc::iovec { iov_base, iov_len };
    // SAFETY: iov describes buf, writable for iov_len bytes.
    unsafe { ptrace!(PTRACE_GETREGSET, pid, nt, ptr(&mut iov)) }.ctx(format_args!("{nt:#x}"))?;
    Ok(iov.iov_len)
}

/// Probes the kernel's process events connector (cn_proc): listens,
/// forks a child and waits to hear of that fork. Pre-copy hears through
/// it of the processes a partition forks, to keep its shared memory in
/// the rounds; without it lpm works, and sends shared memory whole in the
/// stop. Not in [`probe_all`]: a host without it is not refused.
pub fn probe_proc_events() -> Feature {
    let result = (|| {
        let ev = crate::procevents::ProcEvents::listen().map_err(|e| e.to_string())?;
        let child = spawn_blocked(&mut [], &[], None)?;
        let pid = child.pid;
        let deadline = Instant::now() + WAIT;
        let mut forks = Vec::new();
        loop {
            ensure!(ev.forks(&mut forks).map_err(|e| e.to_string())?; "process events were lost");
            if let Some(f) = forks.iter().find(|f| f.child_tgid == pid) {
                ensure!(f.parent_tgid == std::process::id() as i32; "the fork of pid {pid} names parent {}", f.parent_tgid);
                return Ok(format!("heard the fork of pid {pid}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(); "the fork of pid {pid} was not heard within {WAIT:?}");
            let timeout = Timespec::try_from(left).ctx("timeout")?;
            match rustix::event::poll(&mut [PollFd::new(&ev.as_fd(), PollFlags::IN)], Some(&timeout)) {
                Err(rustix::io::Errno::INTR) | Ok(_) => {}
                Err(e) => return Err(format!("poll process events: {e}")),
            }
        }
    })();
    Feature {
        name: "process events (cn_proc)",
        needed_for: "keeping shared memory in pre-copy across forks (else it goes whole in the stop)",
        result,
    }
}

fn probe_ptrace() -> Probe {
    let mut child = spawn_blocked(&mut [], &[], None)?;
    let pid = child.pid;
    // SAFETY: SEIZE and INTERRUPT use no pointer.
    unsafe {
        ptrace!(PTRACE_SEIZE, pid, 0, null_mut::<c_void>())?;
        ptrace!(PTRACE_INTERRUPT, pid, 0, null_mut::<c_void>())?;
    }
    let status = child.wait(WAIT)?;
    let stop = libc::WIFSTOPPED(status) && (status >> 16) as u32 == pt::PTRACE_EVENT_STOP;
    ensure!(stop; "PTRACE_INTERRUPT: wait status {status:#x} is no event stop");
    let mut regs = [0u8; size_of::<libc::user_regs_struct>()];
    let n = getregset(pid, NT_PRSTATUS, &mut regs)?;
    ensure!(n == regs.len(); "NT_PRSTATUS: {n} bytes, expected {}", regs.len());
    // Larger than any XSAVE layout (AMX needs about 11 KiB): the kernel
    // shrinks iov_len to the real size.
    let mut xstate = vec![0u8; 64 << 10];
    let size = getregset(pid, NT_X86_XSTATE, &mut xstate)?;
    let xcr0 = u64::from_le_bytes(xstate[XCR0_OFFSET..][..8].try_into().unwrap_or_default());
    // x87 and SSE are always enabled where XSAVE is.
    let plausible = size >= XSTATE_MIN && xcr0 & 3 == 3;
    ensure!(plausible; "NT_X86_XSTATE: {size} bytes, XCR0 {xcr0:#x}");
    let mut mask = 0u64;
    // SAFETY: GETSIGMASK writes addr (8) bytes through data, a u64.
    unsafe { ptrace!(PTRACE_GETSIGMASK, pid, 8, ptr(&mut mask))? };
    // SAFETY: plain integers, for which all-zero is valid.
    let mut rseq: pt::ptrace_rseq_configuration = unsafe { std::mem::zeroed() };
    let len = size_of_val(&rseq);
    // SAFETY: the request writes at most addr (len) bytes through data.
    unsafe { ptrace!(PTRACE_GET_RSEQ_CONFIGURATION, pid, len, ptr(&mut rseq))? };
    let rseq = match rseq.rseq_abi_pointer {
        0 => "not registered".to_string(),
        at => format!("{} bytes at {at:#x}", rseq.rseq_abi_size),
    };
    Ok(format!("xstate {size} bytes, XCR0 {xcr0:#x}, sigmask {mask:#x}, rseq {rseq}"))
}

fn probe_pidfd() -> Probe {
    let (mark_rd, mark_wr) = pipe()?;
    let fd = mark_wr.as_raw_fd();
    let child = spawn_blocked(&mut [], &[], Some(fd))?;
    // Now only the child holds the write end at `fd`: what pidfd_getfd
    // returns can only be its copy.
    drop(mark_wr);
    let pid = rustix::process::Pid::from_raw(child.pid).ok_or("fork returned pid 0")?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ctx("pidfd_open")?;
    let taken =
        rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).ctx(format_args!("pidfd_getfd fd {fd} of pid {pid:?}"))?;
    rustix::io::write(&taken, b"x").ctx("write to the fd taken")?;
    match read_byte(mark_rd.as_fd())? {
        Some(b'x') => Ok(format!("took fd {fd} from pid {}", child.pid)),
        got => Err(format!("the fd taken is not the child's pipe: read {got:?}")),
    }
}

fn probe_set_tid() -> Probe {
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").ctx("read pid_max")?;
    let pid_max: u64 = pid_max.trim().parse().ctx("parse pid_max")?;
    let span = pid_max.saturating_sub(300).max(1);
    let mut next = nanos();
    let mut last = String::from("no free pid in 300..pid_max");
    // Another process may take the pid between our look and clone3.
    for _ in 0..5 {
        let free = |p: &pid_t| !Path::new(&format!("/proc/{p}")).exists();
        let mut pids = (0..span).map(|i| (300 + (next + i) % span) as pid_t);
        let Some(want) = pids.find(free) else {
            break;
        };
        next = want as u64 - 300 + 1;
        // SAFETY: the body only returns.
        match unsafe { clone3_child(&clone_args(0, Some(&want)), || 0) } {
            Ok(mut child) => {
                let status = child.wait(WAIT)?;
                let ok = child.pid == want && libc::WIFEXITED(status);
                ensure!(ok; "clone3 set_tid {want}: pid {}", child.pid);
                return Ok(format!("child got the requested pid {want} of {pid_max}"));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = e.to_string(),
            Err(e) => return Err(e).ctx(format_args!("clone3 set_tid {want}")),
        }
    }
    Err(last)
}

fn probe_dirty_tracking() -> (Probe, Probe) {
    let map = match crate::misc::Mapping::anonymous(4 * 4096, false) {
        Ok(m) => m,
        Err(e) => {
            let e: Probe = Err(e.to_string());
            return (e.clone(), e);
        }
    };
    match write_protect(&map) {
        // The uffd stays open across the scan: closing it ends the tracking.
        Ok((_uffd, detail)) => (Ok(detail), scan_after_write(&map)),
        Err(e) => (Err(e), Err("not run: needs userfaultfd wp-async".into())),
    }
}

/// Registers `map` for asynchronous write-protect and protects it whole.
fn write_protect(map: &crate::misc::Mapping) -> Res<(crate::uffd::Uffd, String)> {
    use crate::uffd::{create, Uffd};
    let me = std::process::id() as i32;
    let need = u64::from(g::UFFD_FEATURE_WP_ASYNC | g::UFFD_FEATURE_WP_UNPOPULATED);
    // The handshake happens once per fd: ask what exists on a throwaway one.
    let have = Uffd::new(create().map_err(|e| e.to_string())?, me).api(0).map_err(|e| e.to_string())?;
    ensure!(have & need == need; "UFFDIO_API: {have:#x} lacks WP_ASYNC|WP_UNPOPULATED");
    let shmem = have & u64::from(g::UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    let uffd = Uffd::new(create().map_err(|e| e.to_string())?, me);
    uffd.api(need | shmem).map_err(|e| e.to_string())?;
    let len = map.as_slice().len() as u64;
    uffd.register_wp(map.addr(), len).map_err(|e| e.to_string())?;
    uffd.writeprotect(map.addr(), len, true).map_err(|e| e.to_string())?;
    let shmem = if shmem != 0 { "with" } else { "without" };
    Ok((uffd, format!("features {have:#x}, {shmem} hugetlbfs/shmem wp")))
}

/// Writes page 1 of the write-protected `map` and checks that PAGEMAP_SCAN
/// returns exactly that page, then nothing once it has re-protected it.
fn scan_after_write(map: &crate::misc::Mapping) -> Probe {
    use crate::pagemap::{Pagemap, Query};
    let page = 4096u64;
    let mut pm = Pagemap::open(std::process::id() as i32).map_err(|e| e.to_string())?;
    // SAFETY: page 1 lies inside our mapping. WP_ASYNC resolves the fault in
    // the kernel, so the store cannot block on the uffd.
    unsafe { std::ptr::write_volatile((map.addr() + page) as *mut u8, 1) };
    let page1 = map.addr() + page;
    let want = [(page1, page1 + page)];
    let (start, end) = (map.addr(), map.addr() + map.as_slice().len() as u64);
    let q = Query {
        flags: (g::PM_SCAN_WP_MATCHING | g::PM_SCAN_CHECK_WPASYNC).into(),
        category_mask: g::PAGE_IS_WRITTEN.into(),
        anyof_mask: 0,
        return_mask: g::PAGE_IS_WRITTEN.into(),
    };
    let mut first = Vec::new();
    pm.scan(start, end, q, &mut first).map_err(|e| e.to_string())?;
    let got: Vec<_> = first.iter().map(|r| (r.start, r.end)).collect();
    ensure!(got == want; "PAGEMAP_SCAN: written {got:x?}, expected {want:x?}");
    let mut again = Vec::new();
    pm.scan(start, end, q, &mut again).map_err(|e| e.to_string())?;
    ensure!(again.is_empty(); "PAGEMAP_SCAN: {} regions still written after WP_MATCHING", again.len());
    Ok("found the 1 written page of 4, re-protected it".into())
}

fn probe_mm_map() -> Probe {
    let (opt, sub, zero) = (pr::PR_SET_MM as c_int, pr::PR_SET_MM_MAP_SIZE as c_ulong, 0 as c_ulong);
    let mut size = 0u32;
    // SAFETY: PR_SET_MM_MAP_SIZE only stores an unsigned int through arg3.
    let r = unsafe { libc::prctl(opt, sub, &mut size as *mut u32, zero, zero) };
    cvt(r, "prctl PR_SET_MM_MAP_SIZE")?;
    let ours = size_of::<pr::prctl_mm_map>();
    ensure!(size as usize == ours; "prctl_mm_map: {size} bytes in the kernel, {ours} in lpm");
    Ok(format!("struct prctl_mm_map is {size} bytes"))
}

/// A mountinfo field with its escapes undone: mountinfo writes space,
/// tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup2 is mounted, from mountinfo text: `/sys/fs/cgroup` on pure
/// v2 hosts, often `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_from_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_mountinfo(left.split(' ').nth(4)?)))
    })
}

fn cgroup2_mount() -> Res<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ctx("read /proc/self/mountinfo")?;
    cgroup2_from_mountinfo(&text).ok_or_else(|| "no cgroup2 mount in mountinfo".into())
}

/// Probe cgroups start with this, unique per process and thread, so that
/// concurrent probes never collide and leftovers are attributable.
fn cgroup_prefix() -> String {
    let tid = rustix::thread::gettid().as_raw_nonzero();
    format!("lpm-probe-{}-{tid}-", std::process::id())
}

/// Removes the probe cgroups of processes that are gone (a probe cut
/// short by SIGKILL leaves its cgroup behind): their tasks are killed,
/// then the cgroup is removed. Returns the cgroups removed.
pub fn remove_stale_probes() -> Vec<PathBuf> {
    let Ok(root) = cgroup2_mount() else { return Vec::new() };
    let mut out = Vec::new();
    for e in fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("lpm-probe-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let cg = Cgroup(e.path());
        let _ = cg.write("cgroup.kill", "1");
        drop(cg);
        if !e.path().exists() {
            out.push(e.path());
        }
    }
    out
}

/// A cgroup we created, thawed and removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn write(&self, file: &str, value: &str) -> Res<()> {
        let path = self.0.join(file);
        fs::write(&path, value).ctx(format_args!("write {value} to {}", path.display()))
    }

    /// Polls cgroup.events, which changes asynchronously after a write.
    fn wait_event(&self, line: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let events = self.0.join("cgroup.events");
        loop {
            let now = fs::read_to_string(&events).ctx("read cgroup.events")?;
            if now.lines().any(|l| l == line) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline; "cgroup.events not {line:?} within 1 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.write("cgroup.freeze", "0");
        // The last task leaves at reap time: give the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(1);
        while fs::remove_dir(&self.0).is_err() && self.0.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn probe_freezer() -> Probe {
    let path = cgroup2_mount()?.join(format!("{}{}", cgroup_prefix(), nanos()));
    fs::create_dir(&path).ctx(format_args!("mkdir {}", path.display()))?;
    // Declared before the child, so the child is killed and reaped before
    // the cgroup is removed.
    let cg = Cgroup(path);
    let child = spawn_blocked(&mut [], &[], None)?;
    cg.write("cgroup.procs", &child.pid.to_string())?;
    cg.write("cgroup.freeze", "1")?;
    cg.wait_event("frozen 1")?;
    cg.write("cgroup.freeze", "0")?;
    cg.wait_event("frozen 0")?;
    Ok(format!("froze and thawed pid {} in {}", child.pid, cg.0.display()))
}

/// Only for u32 and structs of integers, for which any bit pattern is valid.
fn tcp_getsockopt<T: Copy>(fd: BorrowedFd<'_>, opt: u32, name: &str) -> Res<T> {
    let mut val = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    let (fd, opt, p) = (fd.as_raw_fd(), opt as c_int, val.as_mut_ptr().cast());
    // SAFETY: the kernel writes at most len bytes to p, which has len bytes.
    let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, opt, p, &mut len) };
    cvt(r, name)?;
    ensure!(len as usize == size_of::<T>(); "{name}: {len} bytes, expected {}", size_of::<T>());
    // SAFETY: zero-initialised and T accepts any bit pattern (see above).
    Ok(unsafe { val.assume_init() })
}

fn tcp_setsockopt(fd: BorrowedFd<'_>, opt: u32, value: u32, name: &str) -> Res<()> {
    let (fd, opt, p, len) = (fd.as_raw_fd(), opt as c_int, &value as *const u32, 4);
    // SAFETY: p points to a readable int of len bytes.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, opt, p.cast(), len) };
    cvt(r, name).map(drop)
}

/// Reads a queue's sequence number, which only repair mode reveals.
fn queue_seq(fd: BorrowedFd<'_>, queue: u32) -> Res<u32> {
    tcp_setsockopt(fd, net::TCP_REPAIR, net::TCP_REPAIR_ON, "TCP_REPAIR on")?;
    tcp_setsockopt(fd, net::TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    tcp_getsockopt(fd, net::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ")
}

fn probe_tcp_repair() -> Probe {
    let listener = TcpListener::bind("127.0.0.1:0").ctx("bind 127.0.0.1:0")?;
    listener.set_nonblocking(true).ctx("O_NONBLOCK")?;
    let addr = listener.local_addr().ctx("local_addr")?;
    let mut client = TcpStream::connect_timeout(&addr, WAIT).ctx("connect")?;
    let deadline = Instant::now() + WAIT;
    let mut server = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e).ctx("accept"),
        }
    };
    let (c, s) = (client.as_fd(), server.as_fd());
    // Nothing was sent: the client's next sequence is the server's next expected one.
    let snd = queue_seq(c, net::TCP_SEND_QUEUE as u32)?;
    let win: net::tcp_repair_window = tcp_getsockopt(c, net::TCP_REPAIR_WINDOW, "TCP_REPAIR_WINDOW")?;
    let rcv = queue_seq(s, net::TCP_RECV_QUEUE as u32)?;
    tcp_setsockopt(c, net::TCP_REPAIR, net::TCP_REPAIR_OFF, "TCP_REPAIR off")?;
    tcp_setsockopt(s, net::TCP_REPAIR, net::TCP_REPAIR_OFF, "TCP_REPAIR off")?;
    ensure!(snd == rcv; "TCP_QUEUE_SEQ: client sends {snd:#x}, server expects {rcv:#x}");
    // Out of repair mode the connection must carry data again.
    client.write_all(b"ok").ctx("write after repair")?;
    server.set_read_timeout(Some(WAIT)).ctx("SO_RCVTIMEO")?;
    let mut got = [0u8; 2];
    server.read_exact(&mut got).ctx("read after repair")?;
    ensure!(&got == b"ok"; "read {got:?} after repair");
    let (snd_wnd, rcv_wnd) = (win.snd_wnd, win.rcv_wnd);
    Ok(format!("seq {snd:#x} matches the peer, snd_wnd {snd_wnd}, rcv_wnd {rcv_wnd}"))
}

const NAMESPACES: [(u32, &str); 5] =
    [(g::CLONE_NEWPID, "pid"), (g::CLONE_NEWNS, "mnt"), (g::CLONE_NEWNET, "net"), (g::CLONE_NEWUTS, "uts"), (g::CLONE_NEWIPC, "ipc")];

fn sleep_forever() -> c_int {
    loop {
        // SAFETY: a raw pause syscall touches no memory.
        unsafe { libc::syscall(libc::SYS_pause) };
    }
}

/// Clones a child into new namespaces `flags` and checks from outside that
/// it sits in each of them, and is pid 1 in a new pid namespace (checked
/// here rather than in the child, which must stay async-signal-safe).
fn probe_ns(flags: u32) -> Res<()> {
    let names = NAMESPACES.iter().filter(|(f, _)| flags & f != 0);
    // SAFETY: sleep_forever is async-signal-safe.
    let child = unsafe { clone3_child(&clone_args(flags, None), sleep_forever) }.ctx(format_args!("clone3 {flags:#x}"))?;
    for (_, name) in names {
        let mine = fs::read_link(format!("/proc/thread-self/ns/{name}")).ctx("readlink")?;
        let theirs = fs::read_link(format!("/proc/{}/ns/{name}", child.pid)).ctx("readlink")?;
        ensure!(mine != theirs; "{name}: child {} still in our namespace", child.pid);
    }
    if flags & g::CLONE_NEWPID != 0 {
        let status = fs::read_to_string(format!("/proc/{}/status", child.pid)).ctx("status")?;
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
        let inner = nspid.and_then(|l| l.split_whitespace().last());
        ensure!(inner == Some("1"); "pid: child {} is {inner:?} inside", child.pid);
    }
    Ok(())
}

fn probe_namespaces() -> Probe {
    let (mut ok, mut missing) = (Vec::new(), Vec::new());
    for (flag, name) in NAMESPACES {
        match probe_ns(flag) {
            Ok(()) => ok.push(name),
            Err(e) => missing.push(e),
        }
    }
    let (missing, ok) = (missing.join("; "), ok.join(" "));
    ensure!(missing.is_empty(); "{missing} (working: {ok})");
    // A restore creates them all in one clone3.
    probe_ns(NAMESPACES.iter().fold(0, |acc, (f, _)| acc | f))?;
    Ok(format!("{ok}, also all in one clone3"))
}

fn probe_process_vm() -> Probe {
    let mut buf = *b"parent's copy...";
    let child = spawn_blocked(&mut buf, b"child's copy....", None)?;
    let pid = nix::unistd::Pid::from_raw(child.pid);
    let (base, len) = (buf.as_ptr() as usize, buf.len());
    let remote = [RemoteIoVec { base, len }];
    let read = || {
        let mut got = [0u8; 16];
        process_vm_readv(pid, &mut [IoSliceMut::new(&mut got)], &remote).ctx("process_vm_readv")?;
        Ok::<_, String>(got)
    };
    ensure!(&read()? == b"child's copy...."; "process_vm_readv: not the child's memory");
    let new = [IoSlice::new(b"written by lpm..")];
    process_vm_writev(pid, &new, &remote).ctx("process_vm_writev")?;
    ensure!(&read()? == b"written by lpm.."; "process_vm_writev: child's memory unchanged");
    Ok(format!("read and wrote {len} bytes of pid {}", child.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_probe_cgroups_go_and_live_ones_stay() {
        let root = cgroup2_mount().expect("cgroup2 is not mounted");
        // A pid that was and is no more: a child that exited and was reaped.
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        let stale = root.join(format!("lpm-probe-{dead_pid}-1-{}", nanos()));
        let live = root.join(format!("lpm-probe-{}-1-{}", std::process::id(), nanos()));
        fs::create_dir(&stale).unwrap();
        fs::create_dir(&live).unwrap();
        let removed = remove_stale_probes();
        let live_there = live.exists();
        let _ = fs::remove_dir(&live);
        let _ = fs::remove_dir(&stale);
        assert!(removed.contains(&stale), "{} not removed: {removed:?}", stale.display());
        assert!(live_there, "the probe cgroup of a live process was removed");
    }

    #[test]
    fn cgroup2_mount_found_on_hybrid_and_pure_v2() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let pure = "30 24 0:26 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        let escaped = "30 24 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        let v1 = "27 25 0:24 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n";
        let cases = [(hybrid, Some("/sys/fs/cgroup/unified")), (pure, Some("/sys/fs/cgroup")), (escaped, Some("/mnt/my cg")), (v1, None)];
        for (text, want) in cases {
            assert_eq!(cgroup2_from_mountinfo(text), want.map(PathBuf::from), "{text}");
        }
    }

    #[test]
    fn probe_all_finds_every_feature_and_leaves_nothing_behind() {
        let features = probe_all();
        for f in &features {
            eprintln!("{:<24} {:?}", f.name, f.result);
        }
        let events = probe_proc_events();
        eprintln!("{:<24} {:?}", events.name, events.result);
        let missing: Vec<String> =
            features.iter().chain([&events]).filter_map(|f| f.result.as_ref().err().map(|e| format!("{}: {e}", f.name))).collect();
        assert!(missing.is_empty(), "missing kernel features: {missing:#?}");

        // Children hang off the thread that forked them, so other tests'
        // children cannot show up here.
        let tid = rustix::thread::gettid().as_raw_nonzero();
        let children = fs::read_to_string(format!("/proc/self/task/{tid}/children")).unwrap();
        assert!(children.trim().is_empty(), "children left behind: {children}");

        let prefix = cgroup_prefix();
        let left: Vec<_> = fs::read_dir(cgroup2_mount().unwrap())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "probes left cgroups behind: {left:?}");
    }
}
