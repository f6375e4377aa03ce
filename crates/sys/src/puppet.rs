//! Puppets: the tasks a restore turns into the checkpointed ones.
//!
//! A puppet is a child of the restorer created with clone3 (so it can get an
//! exact pid through set_tid and fresh namespaces). Before it stops it maps a
//! trampoline at an address free in the image, holding `syscall; int3`,
//! through which every later remote syscall runs, plus scratch space for
//! their arguments. It then blocks until the restorer seizes it. Children
//! of puppets are made by remote clone3 calls and inherit the trampoline.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{cvt, ptrace, Error, Result};

/// Size of the trampoline mapping: one code page, the rest scratch.
pub const TRAMPOLINE_LEN: u64 = 64 * 1024;
/// Offset of the first scratch byte inside the trampoline.
pub const SCRATCH_OFFSET: u64 = 4096;
/// The trampoline's code: `syscall; int3`.
pub const TRAMPOLINE_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];

/// The kernel's `struct clone_args`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct CloneArgs {
    /// CLONE_* flags.
    pub flags: u64,
    /// Where to store a pidfd (CLONE_PIDFD).
    pub pidfd: u64,
    /// CLONE_CHILD_SETTID address.
    pub child_tid: u64,
    /// CLONE_PARENT_SETTID address.
    pub parent_tid: u64,
    /// Signal sent to the parent at exit.
    pub exit_signal: u64,
    /// Stack base.
    pub stack: u64,
    /// Stack size.
    pub stack_size: u64,
    /// TLS (CLONE_SETTLS).
    pub tls: u64,
    /// Pointer to an array of pids, innermost namespace first.
    pub set_tid: u64,
    /// Number of entries in set_tid.
    pub set_tid_size: u64,
    /// cgroup fd (CLONE_INTO_CGROUP).
    pub cgroup: u64,
}

impl CloneArgs {
    /// The struct as bytes, to copy into a tracee for a remote clone3.
    pub fn to_bytes(&self) -> [u8; 88] {
        let words = [
            self.flags,
            self.pidfd,
            self.child_tid,
            self.parent_tid,
            self.exit_signal,
            self.stack,
            self.stack_size,
            self.tls,
            self.set_tid,
            self.set_tid_size,
            self.cgroup,
        ];
        let mut b = [0u8; 88];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

/// Creates the root puppet: a child in new namespaces `ns_flags`
/// (CLONE_NEW*), with pid `set_tid[0]` in its innermost pid namespace when
/// given, its trampoline mapped at `trampoline`; returns it seized and
/// stopped (PTRACE_EVENT_STOP) with [`ptrace::OPTIONS`].
pub fn spawn_root(ns_flags: u64, set_tid: &[i32], trampoline: u64) -> Result<i32> {
    spawn(ns_flags, set_tid, trampoline)
}

/// Creates a vessel: a puppet in our namespaces that shares our descriptor
/// table (CLONE_FILES) but not our memory, returned seized and stopped
/// like [`spawn_root`]. A task it clones later (without CLONE_FILES) gets
/// a copy of our table as it is then, as one spawned by us would: so it
/// can be made ahead of a restore, and placed in cgroups ahead, while the
/// restore opens its files afterwards.
pub fn spawn_vessel(trampoline: u64) -> Result<i32> {
    spawn(libc::CLONE_FILES as u64, &[], trampoline)
}

fn spawn(flags: u64, set_tid: &[i32], trampoline: u64) -> Result<i32> {
    let shared = flags & libc::CLONE_FILES as u64 != 0;
    let (rd, wr) = pipe()?;
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if set_tid.is_empty() { 0 } else { set_tid.as_ptr() as u64 },
        set_tid_size: set_tid.len() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child a copy of our address
    // space; the child runs only puppet_main, which makes raw syscalls and
    // never returns, allocates or takes locks.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::sys("clone3 root puppet", set_tid.first().copied().unwrap_or(0), e));
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see puppet_main. With a
        // shared table the pipe is ours too: the child closes nothing.
        unsafe { puppet_main(trampoline, wr.as_raw_fd(), if shared { -1 } else { rd.as_raw_fd() }) }
    }
    let pid = pid as i32;
    // With a shared table, closing the write end here would close it under
    // the child before it wrote: it goes after the read.
    let wr = if shared { Some(wr) } else { None };
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    drop(wr);
    if n != 1 || b[0] != b'R' {
        reap(pid);
        return Err(Error::sys(
            "puppet setup (trampoline mmap)",
            pid,
            std::io::Error::from_raw_os_error(if n == 1 { b[0] as i32 } else { libc::ECHILD }),
        ));
    }
    let r = ptrace::seize(pid, ptrace::OPTIONS).and_then(|_| ptrace::interrupt(pid)).and_then(|_| match ptrace::wait(pid)?.1 {
        ptrace::Stop::Event(ptrace::EVENT_STOP, _) => Ok(()),
        other => Err(Error::UnexpectedStop { tid: pid, during: -1, stop: format!("{other:?}") }),
    });
    if let Err(e) = r {
        reap(pid);
        return Err(e);
    }
    Ok(pid)
}

fn reap(pid: i32) {
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(|e| Error::sys("pipe2", 0, e))?;
    // SAFETY: pipe2 returned two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The puppet's own code after clone3: raw syscalls only.
///
/// # Safety
/// Must be called only in the child of a clone3 without CLONE_VM.
unsafe fn puppet_main(trampoline: u64, ready: i32, other: i32) -> ! {
    // SAFETY: raw syscalls on our own process; the trampoline address was
    // chosen free in the restorer's (and so our) layout.
    unsafe {
        // other < 0: the descriptor table is the restorer's own.
        if other >= 0 {
            libc::close(other);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let p = libc::mmap(
            trampoline as *mut libc::c_void,
            TRAMPOLINE_LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let status: u8 = if p as u64 == trampoline {
            std::ptr::copy_nonoverlapping(TRAMPOLINE_CODE.as_ptr(), p.cast::<u8>(), TRAMPOLINE_CODE.len());
            b'R'
        } else {
            libc::ENOMEM as u8
        };
        libc::write(ready, (&status as *const u8).cast(), 1);
        if other >= 0 {
            libc::close(ready);
        }
        // Wait to be seized; every wakeup goes back to sleep until the
        // restorer takes the registers over.
        loop {
            libc::pause();
        }
    }
}
