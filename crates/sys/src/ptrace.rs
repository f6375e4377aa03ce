//! ptrace: attaching, stopping, and the register sets lpm saves.
//!
//! Every call here must come from the OS thread that attached the tracee:
//! the kernel ties a tracee to the tracing thread, not to the process.

use std::io;

use crate::{cvt, Error, Result};

/// Raw general-purpose registers (`struct user_regs_struct`).
pub type Regs = libc::user_regs_struct;

/// PTRACE_EVENT_STOP, the stop PTRACE_INTERRUPT and group-stops report.
pub const EVENT_STOP: i32 = 128;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
const PTRACE_PEEKSIGINFO: u32 = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
const NT_X86_XSTATE: usize = 0x202;
/// Options lpm sets on every puppet of a restore: syscall stops marked
/// with 0x80; new threads and children of an injected clone traced from
/// birth; and killed if their tracer (the restoring thread) ends, so that
/// an agent that dies mid-restore leaves no half-made task to run. A
/// restore that completes detaches them (or parks them, frozen, for a
/// migration's handover), which ends the tie.
pub const OPTIONS: i32 = libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_EXITKILL;

fn req(r: u32) -> libc::c_uint {
    r as libc::c_uint
}

/// Attaches to `tid` without stopping it.
pub fn seize(tid: i32, options: i32) -> Result<()> {
    // SAFETY: PTRACE_SEIZE takes no pointers; data carries the options.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, options as libc::c_long) }).map_err(|e| Error::sys("ptrace seize", tid, e))?;
    Ok(())
}

/// Sets options on an attached tracee.
pub fn set_options(tid: i32, options: i32) -> Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, tid, 0, options as libc::c_long) })
        .map_err(|e| Error::sys("ptrace setoptions", tid, e))?;
    Ok(())
}

/// Asks a seized tracee to stop; the stop is reported through waitpid.
pub fn interrupt(tid: i32) -> Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) }).map_err(|e| Error::sys("ptrace interrupt", tid, e))?;
    Ok(())
}

/// Detaches, delivering `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, sig as libc::c_long) }).map_err(|e| Error::sys("ptrace detach", tid, e))?;
    Ok(())
}

/// Resumes until the next syscall entry or exit.
pub fn syscall(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, sig as libc::c_long) }).map_err(|e| Error::sys("ptrace syscall", tid, e))?;
    Ok(())
}

/// Resumes the tracee.
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, sig as libc::c_long) }).map_err(|e| Error::sys("ptrace cont", tid, e))?;
    Ok(())
}

/// Reads the event message of the last PTRACE_EVENT stop (the new tid for
/// clone events).
pub fn event_msg(tid: i32) -> Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long to `msg`.
    cvt(unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut libc::c_ulong) })
        .map_err(|e| Error::sys("ptrace geteventmsg", tid, e))?;
    Ok(msg as u64)
}

fn getregset(tid: i32, nt: usize, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: iov describes `buf`, which outlives the call; the kernel
    // writes at most iov_len bytes and shrinks iov_len to what it wrote.
    cvt(unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, nt, &mut iov as *mut libc::iovec) })?;
    Ok(iov.iov_len)
}

fn setregset(tid: i32, nt: usize, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: iov describes `buf`; the kernel only reads it.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, nt, &mut iov as *mut libc::iovec) })?;
    Ok(())
}

/// Reads the general-purpose registers.
pub fn get_regs(tid: i32) -> Result<Regs> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one user_regs_struct into `regs`.
    cvt(unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut Regs) }).map_err(|e| Error::sys("ptrace getregs", tid, e))?;
    Ok(regs)
}

/// Writes the general-purpose registers.
pub fn set_regs(tid: i32, regs: &Regs) -> Result<()> {
    // SAFETY: the kernel reads one user_regs_struct from `regs`.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0, regs as *const Regs) }).map_err(|e| Error::sys("ptrace setregs", tid, e))?;
    Ok(())
}

/// The registers as raw bytes, the form the image stores.
pub fn regs_to_bytes(regs: &Regs) -> Vec<u8> {
    // SAFETY: Regs is repr(C) plain integers without padding; viewing it as
    // bytes for its exact size is sound.
    unsafe { std::slice::from_raw_parts((regs as *const Regs).cast::<u8>(), std::mem::size_of::<Regs>()) }.to_vec()
}

/// Registers from the raw bytes of an image; None if the size is wrong.
pub fn regs_from_bytes(b: &[u8]) -> Option<Regs> {
    if b.len() != std::mem::size_of::<Regs>() {
        return None;
    }
    // SAFETY: all-zero is a valid Regs.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the destination is exactly size_of::<Regs>() bytes, checked above.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut regs as *mut Regs).cast::<u8>(), b.len()) };
    Some(regs)
}

/// Reads the XSAVE area (x87, SSE, AVX, AVX-512, ...).
pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let n = getregset(tid, NT_X86_XSTATE, &mut buf).map_err(|e| Error::sys("ptrace getregset xstate", tid, e))?;
    buf.truncate(n);
    Ok(buf)
}

/// Writes the XSAVE area.
pub fn set_xstate(tid: i32, xstate: &[u8]) -> Result<()> {
    setregset(tid, NT_X86_XSTATE, xstate).map_err(|e| Error::sys("ptrace setregset xstate", tid, e))
}

/// XCR0 as Linux records it in the software-reserved bytes of an XSAVE
/// area read through ptrace.
pub fn xstate_xcr0(xstate: &[u8]) -> u64 {
    xstate.get(464..472).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())).unwrap_or(0)
}

/// Reads the blocked-signal mask.
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: addr is the size of the set, data points to one u64.
    cvt(unsafe { libc::ptrace(req(PTRACE_GETSIGMASK), tid, 8usize, &mut mask as *mut u64) })
        .map_err(|e| Error::sys("ptrace getsigmask", tid, e))?;
    Ok(mask)
}

/// Writes the blocked-signal mask.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: addr is the size of the set, data points to one u64.
    cvt(unsafe { libc::ptrace(req(PTRACE_SETSIGMASK), tid, 8usize, &mask as *const u64) })
        .map_err(|e| Error::sys("ptrace setsigmask", tid, e))?;
    Ok(())
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Reads the pending signals without dequeuing them: the thread's own queue,
/// or the process-wide queue when `shared`. Each entry is a raw 128-byte
/// siginfo.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * 32];
    loop {
        let args = PeekSiginfoArgs { off: out.len() as u64, flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 }, nr: 32 };
        // SAFETY: args is a valid ptrace_peeksiginfo_args; buf holds room
        // for `nr` siginfos of 128 bytes.
        let n = cvt(unsafe { libc::ptrace(req(PTRACE_PEEKSIGINFO), tid, &args as *const PeekSiginfoArgs, buf.as_mut_ptr()) })
            .map_err(|e| Error::sys("ptrace peeksiginfo", tid, e))?;
        if n == 0 {
            return Ok(out);
        }
        out.extend(buf[..n as usize * 128].chunks(128).map(|c| c.to_vec()));
    }
}

/// A thread's rseq registration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RseqConfig {
    /// Address of the registered struct rseq.
    pub rseq_abi_pointer: u64,
    /// Registered length.
    pub rseq_abi_size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Flags passed at registration.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// Reads the rseq registration (rseq_abi_pointer 0 when none).
pub fn get_rseq(tid: i32) -> Result<RseqConfig> {
    let mut c = RseqConfig::default();
    // SAFETY: the kernel writes at most `addr` bytes into `c`.
    cvt(unsafe { libc::ptrace(req(PTRACE_GET_RSEQ_CONFIGURATION), tid, std::mem::size_of::<RseqConfig>(), &mut c as *mut RseqConfig) })
        .map_err(|e| Error::sys("ptrace get rseq configuration", tid, e))?;
    Ok(c)
}

/// How a traced thread stopped or ended, from waitpid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Syscall entry or exit (with TRACESYSGOOD).
    Syscall,
    /// A PTRACE_EVENT_* stop: event number and stop signal.
    Event(i32, i32),
    /// Signal-delivery-stop or group-stop without event: the signal.
    Signal(i32),
    /// The thread exited with this status.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

/// Waits for `tid` (any tracee if -1) to change state; returns who and how.
pub fn wait(tid: i32) -> Result<(i32, Stop)> {
    let mut status = 0;
    let pid = loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r >= 0 {
            break r;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(Error::sys("waitpid", tid, e));
        }
    };
    Ok((pid, decode_status(status)))
}

/// Collects an exit notification of `tid` without blocking; true once the
/// thread is gone (reported, or no longer ours to wait for).
pub fn try_reap(tid: i32) -> bool {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
    (r == tid && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status))) || r < 0
}

/// Decodes a waitpid status of a tracee.
pub fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if sig == libc::SIGTRAP | 0x80 {
            Stop::Syscall
        } else if event != 0 {
            Stop::Event(event, sig)
        } else {
            Stop::Signal(sig)
        }
    }
}

/// Reads `len` bytes of tracee memory at `addr` with process_vm_readv.
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: local describes `buf`; remote memory is only read by the kernel.
    let n = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as i64)
        .map_err(|e| Error::mem("process_vm_readv", pid, addr, e))?;
    if n as usize != buf.len() {
        return Err(Error::mem("process_vm_readv (short)", pid, addr, io::Error::from_raw_os_error(libc::EFAULT)));
    }
    Ok(())
}

/// Most remote ranges one [`read_mem_ranges`] call takes (IOV_MAX).
pub const MAX_RANGES: usize = 1024;

/// Reads the ranges `remote` (address, length; at most [`MAX_RANGES`]) of
/// `pid`'s memory one after the other into `buf`, with one
/// process_vm_readv: many scattered pages cost one call instead of one
/// each. Returns the bytes read, which end at a range's end: the kernel
/// stops at the first range it cannot read whole.
pub fn read_mem_ranges(pid: i32, remote: &[(u64, usize)], buf: &mut [u8]) -> Result<usize> {
    let total: usize = remote.iter().map(|r| r.1).sum();
    if remote.len() > MAX_RANGES || total > buf.len() {
        return Err(Error::mem(
            "process_vm_readv (too many ranges)",
            pid,
            remote.first().map_or(0, |r| r.0),
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: total };
    let iov: Vec<libc::iovec> = remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: local describes the first `total` bytes of `buf`; remote
    // memory is only read by the kernel.
    let n = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, iov.as_ptr(), iov.len() as libc::c_ulong, 0) } as i64)
        .map_err(|e| Error::mem("process_vm_readv", pid, remote.first().map_or(0, |r| r.0), e))?;
    Ok(n as usize)
}

/// Writes `buf` into the ranges `remote` (address, length; at most
/// [`MAX_RANGES`], whose lengths add up to `buf`'s) of `pid`'s memory, one
/// after the other, with one process_vm_writev: scattered pages cost one
/// call instead of one each.
pub fn write_mem_ranges(pid: i32, remote: &[(u64, usize)], buf: &[u8]) -> Result<()> {
    let total: usize = remote.iter().map(|r| r.1).sum();
    let first = remote.first().map_or(0, |r| r.0);
    if remote.len() > MAX_RANGES || total != buf.len() {
        return Err(Error::mem("process_vm_writev (bad ranges)", pid, first, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let local = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: total };
    let iov: Vec<libc::iovec> = remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: local describes `buf`, which the kernel only reads; the
    // remote ranges are written in the tracee.
    let n = cvt(unsafe { libc::process_vm_writev(pid, &local, 1, iov.as_ptr(), iov.len() as libc::c_ulong, 0) } as i64)
        .map_err(|e| Error::mem("process_vm_writev", pid, first, e))?;
    if n as usize != total {
        return Err(Error::mem("process_vm_writev (short)", pid, first, io::Error::from_raw_os_error(libc::EFAULT)));
    }
    Ok(())
}

/// Writes `data` into tracee memory at `addr` with process_vm_writev.
pub fn write_mem(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: local describes `data`, which the kernel only reads.
    let n = cvt(unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) } as i64)
        .map_err(|e| Error::mem("process_vm_writev", pid, addr, e))?;
    if n as usize != data.len() {
        return Err(Error::mem("process_vm_writev (short)", pid, addr, io::Error::from_raw_os_error(libc::EFAULT)));
    }
    Ok(())
}
