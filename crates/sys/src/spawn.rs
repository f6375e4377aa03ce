//! The init process of a partition: clone3 into fresh pid, mount, uts and
//! ipc namespaces, a given network namespace and (optionally) straight into
//! a cgroup2 directory, then exec.
//!
//! The child runs between clone3 and execve with a copy of a possibly
//! multi-threaded parent's memory, so it makes raw async-signal-safe
//! syscalls only: no allocation, no locks. Everything it needs (argv and
//! envp pointer arrays, the resolved program path, a default signal action,
//! an empty signal mask) is built before clone3.
//!
//! The child stops on a "go" socket before exec so the caller can first place
//! it in cgroup v1 hierarchies ([`Spawned::go`]). Failures in the child come
//! back over a close-on-exec pipe as (step, errno); end of file on that pipe
//! means execve succeeded.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::cvt;

/// The PATH searched when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run as a partition's init and in which surroundings.
#[derive(Debug)]
pub struct PartitionExec<'a> {
    /// argv; argv\[0\] without a slash is looked up in envp's PATH (in the
    /// caller, before clone3).
    pub argv: Vec<CString>,
    /// The environment, `KEY=VALUE` strings.
    pub envp: Vec<CString>,
    /// Working directory of the init.
    pub cwd: CString,
    /// Host name in the partition's own uts namespace.
    pub hostname: CString,
    /// The partition's network namespace; the child joins it first.
    pub netns: BorrowedFd<'a>,
    /// A cgroup2 directory to be born into (`CLONE_INTO_CGROUP`).
    pub cgroup_v2: Option<BorrowedFd<'a>>,
    /// Becomes fd 0 (normally /dev/null).
    pub stdin: BorrowedFd<'a>,
    /// Becomes fd 1.
    pub stdout: BorrowedFd<'a>,
    /// Becomes fd 2.
    pub stderr: BorrowedFd<'a>,
    /// Host paths the partition must not reach, each hidden in its mount
    /// namespace under a read-only mount that holds nothing: an empty tmpfs
    /// over a directory (`true`), the null device over a file. Missing
    /// paths are skipped.
    pub masks: Vec<(CString, bool)>,
    /// The capabilities the init keeps (bit N for capability N): every
    /// other one leaves its bounding, inheritable, permitted and effective
    /// sets before execve, so that no process of the partition can gain
    /// it again (a setuid root program is held to the bounding set). None
    /// keeps them all.
    pub caps: Option<u64>,
    /// Run in a user namespace of its own whose ids 0 to `count - 1` are
    /// the host's `first` to `first + count - 1` (uids and gids alike):
    /// root inside is an unprivileged id outside. None runs as the
    /// caller's ids.
    pub userns: Option<IdMap>,
}

/// A user namespace's id map: ids `0..count` inside are `first..first +
/// count` on the host, for uids and gids alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// The host id that is 0 inside.
    pub first: u32,
    /// How many ids are mapped.
    pub count: u32,
}

/// Errors of spawning a partition's init; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// argv was empty or a string held no program.
    #[error("bad partition command: {0}")]
    BadCommand(&'static str),
    /// The program was not found or is not executable.
    #[error("program {program:?}: {why}")]
    Program {
        /// What was looked up.
        program: String,
        /// Why it cannot run.
        why: String,
    },
    /// A call in the parent failed.
    #[error("{op}")]
    Parent {
        /// The call.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A step in the child failed before or at execve.
    #[error("partition init (pid {pid}): {step}")]
    Child {
        /// The child (reaped by now).
        pid: i32,
        /// The failed step.
        step: &'static str,
        /// The child's errno.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = SpawnError> = std::result::Result<T, E>;

/// The child's steps, in order; a failure reports the index.
const STEPS: [&str; 18] = [
    "setns into the partition's network namespace",
    "make mounts private",
    "mount /proc",
    "sethostname",
    "dup stdio",
    "close inherited descriptors",
    "wait for go",
    "chdir",
    "setsid",
    "execve",
    "reset signals",
    "mask a host path",
    "drop a capability from the bounding set",
    "capset",
    "unshare the user namespace",
    "wait for the id maps",
    "become root of the user namespace",
    "open low ports and ICMP sockets to the user namespace",
];
const STEP_SETNS: u32 = 0;
const STEP_PRIVATE: u32 = 1;
const STEP_PROC: u32 = 2;
const STEP_HOSTNAME: u32 = 3;
const STEP_DUP: u32 = 4;
const STEP_CLOSE: u32 = 5;
const STEP_GO: u32 = 6;
const STEP_CHDIR: u32 = 7;
const STEP_SETSID: u32 = 8;
const STEP_EXEC: u32 = 9;
const STEP_SIGNALS: u32 = 10;
const STEP_MASK: u32 = 11;
const STEP_BOUNDING: u32 = 12;
const STEP_CAPSET: u32 = 13;
const STEP_USERNS: u32 = 14;
const STEP_MAPS: u32 = 15;
const STEP_SETID: u32 = 16;
const STEP_SYSCTL: u32 = 17;

/// A partition init created and held before exec.
#[derive(Debug)]
pub struct Spawned {
    pid: i32,
    go: Option<OwnedFd>,
    report: Option<OwnedFd>,
    userns: Option<IdMap>,
}

impl Spawned {
    /// The init's pid in the caller's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lets the init continue to execve and waits for the outcome. On
    /// failure the child has exited and is reaped; the error names its step.
    pub fn go(mut self) -> Result<i32> {
        let go = self.go.take().expect("go socket present until go");
        let report = self.report.take().expect("report pipe present until go");
        // The child may have failed already and closed its end: EPIPE is
        // fine, the report below says why.
        let b = [b'G'];
        // SAFETY: sending one byte from a local buffer on a socket we own.
        let _ = unsafe { libc::send(go.as_raw_fd(), b.as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
        if let Some(map) = self.userns {
            // Only a process of the parent user namespace with CAP_SETUID
            // may write a map of more than its own id: this one, once the
            // child has its namespace. End of file instead: the child
            // failed, and the report below says where.
            if recv_byte(&go) == Some(b'U') {
                if let Err(source) = write_id_maps(self.pid, map) {
                    drop(go);
                    reap(self.pid);
                    return Err(SpawnError::Parent { op: "write the partition init's id maps", source });
                }
                let m = [b'M'];
                // SAFETY: as above.
                let _ = unsafe { libc::send(go.as_raw_fd(), m.as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
            }
        }
        drop(go);
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: reading into the unfilled tail of a local buffer.
            let n = unsafe { libc::read(report.as_raw_fd(), buf[got..].as_mut_ptr().cast(), buf.len() - got) };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    reap(self.pid);
                    return Err(SpawnError::Parent { op: "read the partition init's report", source: e });
                }
            }
        }
        if got == 0 {
            return Ok(self.pid);
        }
        reap(self.pid);
        if got < buf.len() {
            return Err(SpawnError::Child {
                pid: self.pid,
                step: "report",
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "short report"),
            });
        }
        let step = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
        Err(SpawnError::Child {
            pid: self.pid,
            step: STEPS.get(step as usize).copied().unwrap_or("unknown step"),
            source: io::Error::from_raw_os_error(errno),
        })
    }
}

impl Drop for Spawned {
    /// Without "go" the child sees end of file on its go socket and exits; it
    /// is reaped here so no zombie is left.
    fn drop(&mut self) {
        if self.go.take().is_some() {
            self.report.take();
            reap(self.pid);
        }
    }
}

/// One byte from `fd`, None at end of file or on an error.
fn recv_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return Some(b[0]);
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Writes `map` as the uid and gid maps of `pid`'s user namespace (each
/// in one write, as the kernel wants it).
fn write_id_maps(pid: i32, map: IdMap) -> io::Result<()> {
    let line = format!("0 {} {}\n", map.first, map.count);
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), &line).map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/{file}: {e}")))?;
    }
    Ok(())
}

/// Reaps our child `pid` (it has exited or is about to).
fn reap(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a local status word.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: a subreaper loop elsewhere reaped it first; fine.
        return;
    }
}

/// Finds `program` as execve would after a PATH search in `envp`.
pub fn resolve_program(program: &CStr, envp: &[CString]) -> Result<CString> {
    let bytes = program.to_bytes();
    if bytes.is_empty() {
        return Err(SpawnError::BadCommand("empty program name"));
    }
    let name = String::from_utf8_lossy(bytes).into_owned();
    if bytes.contains(&b'/') {
        // Relative paths with a slash are relative to the init's cwd, which
        // execve resolves itself.
        return Ok(program.to_owned());
    }
    let path = envp
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(&name);
        let Ok(meta) = std::fs::metadata(&candidate) else { continue };
        if meta.is_file() && rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK).is_ok() {
            return CString::new(candidate.as_os_str().as_bytes()).map_err(|_| SpawnError::BadCommand("nul in PATH"));
        }
    }
    Err(SpawnError::Program { program: name, why: format!("not found as an executable in PATH {path}") })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(|source| SpawnError::Parent { op: "pipe2", source })?;
    // SAFETY: pipe2 returned two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The "go" channel: a socket pair rather than a pipe, so that the parent's
/// send to a child that already failed returns EPIPE without raising
/// SIGPIPE (MSG_NOSIGNAL), whatever the caller's SIGPIPE disposition.
fn go_channel() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })
        .map_err(|source| SpawnError::Parent { op: "socketpair", source })?;
    // SAFETY: socketpair returned two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Moves `fd` to a number above 2 (it may be lower when the caller runs
/// with closed stdio).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })
        .map_err(|source| SpawnError::Parent { op: "fcntl F_DUPFD_CLOEXEC", source })?;
    // SAFETY: fcntl returned a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Everything the child touches, prepared before clone3.
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    hostname: *const libc::c_char,
    hostname_len: usize,
    netns: RawFd,
    stdio: [RawFd; 3],
    go: RawFd,
    report: RawFd,
    /// SIG_DFL, for every signal the parent may have ignored (ignored
    /// dispositions survive execve; the Rust runtime ignores SIGPIPE).
    default_action: libc::sigaction,
    /// An empty mask (the mask survives execve).
    empty_mask: libc::sigset_t,
    /// (path, directory) of each mask.
    masks: *const (*const libc::c_char, bool),
    masks_len: usize,
    /// Capabilities kept, and the highest capability this kernel knows.
    caps: Option<u64>,
    last_cap: u32,
    /// Unshare a user namespace before dropping capabilities.
    userns: bool,
}

/// Creates a partition's init: clone3 with new pid, mount, uts and ipc
/// namespaces, the child joins `p.netns`, makes its mounts private, mounts
/// its own /proc, sets its host name and stdio, closes every other
/// descriptor and waits for [`Spawned::go`] before it execs. The init is
/// pid 1 of its pid namespace: when it exits the kernel kills the rest.
pub fn spawn_partition(p: &PartitionExec<'_>) -> Result<Spawned> {
    let argv0 = p.argv.first().ok_or(SpawnError::BadCommand("empty argv"))?;
    let program = resolve_program(argv0, &p.envp)?;
    let argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let masks: Vec<(*const libc::c_char, bool)> = p.masks.iter().map(|(path, dir)| (path.as_ptr(), *dir)).collect();
    // capset cannot grant what the caller lacks (root here may lack
    // CAP_SYS_RESOURCE, say): the init keeps what it asks for of that.
    let caps = match p.caps {
        None => None,
        Some(keep) => {
            Some(keep & permitted_caps().map_err(|source| SpawnError::Parent { op: "read CapPrm of /proc/thread-self/status", source })?)
        }
    };
    let last_cap = match p.caps {
        None => 0,
        Some(_) => std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(SpawnError::Parent { op: "read /proc/sys/kernel/cap_last_cap", source: io::Error::from(io::ErrorKind::InvalidData) })?,
    };
    let (go_rd, go_wr) = go_channel()?;
    let (rep_rd, rep_wr) = pipe()?;
    // The child keeps these two across its stdio dup2s.
    let go_rd = above_stdio(go_rd)?;
    let rep_wr = above_stdio(rep_wr)?;

    // SAFETY: sigaction and sigset_t are plain C structs for which all
    // zeroes is a valid value; sigemptyset initialises the set.
    let (default_action, empty_mask) = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigemptyset(&mut act.sa_mask);
        (act, set)
    };
    let args = ChildArgs {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: p.cwd.as_ptr(),
        hostname: p.hostname.as_ptr(),
        hostname_len: p.hostname.as_bytes().len(),
        netns: p.netns.as_raw_fd(),
        stdio: [p.stdin.as_raw_fd(), p.stdout.as_raw_fd(), p.stderr.as_raw_fd()],
        go: go_rd.as_raw_fd(),
        report: rep_wr.as_raw_fd(),
        default_action,
        empty_mask,
        masks: masks.as_ptr(),
        masks_len: masks.len(),
        caps,
        last_cap,
        userns: p.userns.is_some(),
    };

    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;
    let mut cgroup = 0u64;
    if let Some(fd) = p.cgroup_v2 {
        flags |= linux_raw_sys::general::CLONE_INTO_CGROUP;
        cgroup = fd.as_raw_fd() as u64;
    }
    let clone_args = crate::puppet::CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, cgroup, ..Default::default() };
    // SAFETY: clone3 without CLONE_VM gives the child a copy of our address
    // space, in which `args` and the strings it points to stay valid; the
    // child runs only child_main, which makes raw syscalls and never
    // returns, allocates or takes locks.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone3, &clone_args as *const crate::puppet::CloneArgs, std::mem::size_of::<crate::puppet::CloneArgs>())
    };
    if pid < 0 {
        return Err(SpawnError::Parent { op: "clone3 partition init", source: io::Error::last_os_error() });
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see child_main.
        unsafe { child_main(&args) }
    }
    drop(go_rd);
    drop(rep_wr);
    Ok(Spawned { pid: pid as i32, go: Some(go_wr), report: Some(rep_rd), userns: p.userns })
}

/// Reports (step, errno) to the parent and exits.
///
/// # Safety
/// Only in the child of spawn_partition.
unsafe fn fail(report: RawFd, step: u32) -> ! {
    // SAFETY: errno is thread-local and the child is a copy of the calling
    // thread; write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&step.to_ne_bytes());
        b[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, b.as_ptr().cast(), b.len());
        libc::_exit(127)
    }
}

/// The init's code between clone3 and execve.
///
/// # Safety
/// Must be called only in the child of the clone3 in spawn_partition, with
/// `a` prepared there.
unsafe fn child_main(a: &ChildArgs) -> ! {
    // SAFETY: each call below is a raw syscall wrapper on our own process
    // with pointers into memory prepared before clone3 (valid in our copy of
    // the address space); none allocates or locks.
    unsafe {
        let r = a.report;
        if libc::setns(a.netns, libc::CLONE_NEWNET) != 0 {
            fail(r, STEP_SETNS);
        }
        // Our mount changes must not propagate back to the host.
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            fail(r, STEP_PRIVATE);
        }
        // The host's network namespaces, bound by name under /run/netns,
        // are the host's plumbing, not the partition's: a private copy of
        // them would only go stale as the host's come and go (and a
        // checkpoint refuses mounts the host no longer has). Not a mount
        // point here (EINVAL, ENOENT): nothing to hide.
        if libc::umount2(c"/run/netns".as_ptr(), libc::MNT_DETACH) != 0 {
            let e = *libc::__errno_location();
            if e != libc::EINVAL && e != libc::ENOENT {
                fail(r, STEP_PRIVATE);
            }
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) != 0 {
            fail(r, STEP_PROC);
        }
        for i in 0..a.masks_len {
            let (path, dir) = *a.masks.add(i);
            mask(r, path, dir);
        }
        if libc::sethostname(a.hostname, a.hostname_len) != 0 {
            fail(r, STEP_HOSTNAME);
        }
        // Lift the sources above 2 first so one target cannot clobber
        // another's source; dup2 leaves the targets without CLOEXEC.
        let mut high = [0; 3];
        for (i, src) in a.stdio.iter().enumerate() {
            high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 3);
            if high[i] < 0 {
                fail(r, STEP_DUP);
            }
        }
        for (i, h) in high.iter().enumerate() {
            if libc::dup2(*h, i as i32) < 0 {
                fail(r, STEP_DUP);
            }
        }
        // Close everything inherited except the go socket and the report pipe.
        let (lo, hi) = if a.go < r { (a.go as u32, r as u32) } else { (r as u32, a.go as u32) };
        let ranges = [(3u32, lo.wrapping_sub(1)), (lo + 1, hi - 1), (hi + 1, u32::MAX)];
        for (first, last) in ranges {
            if first <= last
                && first >= 3
                && libc::syscall(libc::SYS_close_range, first as libc::c_uint, last as libc::c_uint, 0 as libc::c_uint) != 0
            {
                fail(r, STEP_CLOSE);
            }
        }
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(a.go, b.as_mut_ptr().cast(), 1);
            if n == 1 {
                break;
            }
            if n == 0 {
                // The parent gave up before "go".
                libc::_exit(127);
            }
            if *libc::__errno_location() != libc::EINTR {
                fail(r, STEP_GO);
            }
        }
        if a.userns {
            become_userns_root(r, a.go);
        }
        libc::close(a.go);
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // Signals reserved by the C library refuse with EINVAL.
                libc::sigaction(sig, &a.default_action, std::ptr::null_mut());
            }
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &a.empty_mask, std::ptr::null_mut()) != 0 {
            fail(r, STEP_SIGNALS);
        }
        if let Some(keep) = a.caps {
            drop_caps(r, keep, a.last_cap);
        }
        if libc::chdir(a.cwd) != 0 {
            fail(r, STEP_CHDIR);
        }
        if libc::setsid() < 0 {
            fail(r, STEP_SETSID);
        }
        libc::execve(a.program, a.argv, a.envp);
        fail(r, STEP_EXEC)
    }
}

/// Moves the init into a user namespace of its own, last of its
/// namespaces: the others (and the network namespace it joined, which
/// only a process of the host's user namespace may join) stay the
/// host's, so its root, with capabilities in the new namespace only,
/// can change none of them. The parent writes the id maps when asked
/// (`U` on the go socket, `M` back); then the init takes id 0 of the
/// namespace and no supplementary groups (the host's are not mapped).
///
/// # Safety
/// Only in the child of spawn_partition.
unsafe fn become_userns_root(r: RawFd, go: RawFd) {
    // SAFETY: raw open, unshare, read, write and set*id syscalls with
    // local buffers and static strings; nothing allocates.
    unsafe {
        // Binding a port below 1024 and opening an ICMP socket need
        // capabilities in the network namespace's owner, the host's user
        // namespace, which root of the partition's lacks: both become
        // open to every id of this network namespace (Docker's default
        // since 20.10), written while the init still may.
        for (path, value) in [
            (c"/proc/sys/net/ipv4/ip_unprivileged_port_start", &b"0\n"[..]),
            (c"/proc/sys/net/ipv4/ping_group_range", &b"0 2147483647\n"[..]),
        ] {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) != value.len() as isize {
                fail(r, STEP_SYSCTL);
            }
            libc::close(fd);
        }
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            fail(r, STEP_USERNS);
        }
        let u = [b'U'];
        if libc::write(go, u.as_ptr().cast(), 1) != 1 {
            fail(r, STEP_MAPS);
        }
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(go, b.as_mut_ptr().cast(), 1);
            if n == 1 && b[0] == b'M' {
                break;
            }
            if n == 0 {
                libc::_exit(127);
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            fail(r, STEP_MAPS);
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            fail(r, STEP_SETID);
        }
        if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            fail(r, STEP_SETID);
        }
    }
}

/// The calling thread's permitted capabilities.
fn permitted_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapPrm line"))
}

/// Hides `path` under a read-only mount that holds nothing: an empty tmpfs
/// over a directory, the null device over a file. A path that is not there
/// has nothing to hide.
///
/// # Safety
/// Only in the child of spawn_partition, with `path` a NUL-terminated
/// string prepared before clone3.
unsafe fn mask(r: RawFd, path: *const libc::c_char, dir: bool) {
    // SAFETY: raw mount and stat syscalls on strings prepared before
    // clone3; nothing allocates.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::lstat(path, &mut st) != 0 {
            return;
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if dir {
            // Read-only and empty: nothing can be put there, and a
            // checkpoint makes it again as it is.
            let opts = c"size=4k,nr_inodes=16,mode=755";
            if libc::mount(c"tmpfs".as_ptr(), path, c"tmpfs".as_ptr(), flags | libc::MS_RDONLY, opts.as_ptr().cast()) != 0 {
                fail(r, STEP_MASK);
            }
        } else {
            if libc::mount(c"/dev/null".as_ptr(), path, std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                fail(r, STEP_MASK);
            }
            // Not nodev: the null device itself must open.
            let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC;
            if libc::mount(std::ptr::null(), path, std::ptr::null(), ro, std::ptr::null()) != 0 {
                fail(r, STEP_MASK);
            }
        }
    }
}

/// Keeps only the capabilities of `keep`: the others leave the bounding
/// set (so that execve of a setuid root program cannot give them back)
/// and the inheritable set is emptied (execve as root adds it to the
/// permitted set whatever the bounding set holds), then the permitted and
/// effective sets become `keep`.
///
/// # Safety
/// Only in the child of spawn_partition.
unsafe fn drop_caps(r: RawFd, keep: u64, last_cap: u32) {
    // SAFETY: raw prctl and capset syscalls with local structures.
    unsafe {
        for cap in 0..=last_cap.min(63) {
            if keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                fail(r, STEP_BOUNDING);
            }
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let hdr = Header { version: 0x2008_0522, pid: 0 };
        let lo = Data { effective: keep as u32, permitted: keep as u32, inheritable: 0 };
        let hi = Data { effective: (keep >> 32) as u32, permitted: (keep >> 32) as u32, inheritable: 0 };
        let data = [lo, hi];
        if libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) != 0 {
            fail(r, STEP_CAPSET);
        }
    }
}
