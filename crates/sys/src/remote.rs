//! Remote syscalls: making a ptrace-stopped thread execute a system call of
//! our choosing, for the state that is visible or settable only from inside
//! (signal actions, sigaltstack, brk, mmap at exact addresses, ...).
//!
//! The thread is pointed at a `syscall` instruction with the call's number
//! and arguments loaded, run to syscall entry and then to syscall exit
//! (PTRACE_SYSCALL twice), and its result read from rax. The caller restores
//! the thread's registers when done. orig_rax is set to -1 so that the
//! kernel's syscall-restart logic never rewrites our registers when the
//! thread was stopped inside an interrupted syscall.

use crate::ptrace::{self, Regs, Stop};
use crate::{Error, Result};

/// A thread we can run syscalls in.
pub struct Remote {
    tid: i32,
    syscall_ip: u64,
    /// An `int3` follows the `syscall` instruction: one resume per call
    /// (run to the trap) instead of two (syscall entry, then exit).
    trap_after: bool,
    base: Regs,
    /// Where [`BATCH_CODE`] sits in the thread's address space, when it
    /// does ([`Remote::with_batch`]).
    batch_ip: Option<u64>,
    /// PTRACE_EVENT stops seen during the last call: (event, message).
    pub events: Vec<(i32, u64)>,
}

/// Machine code (x86-64) that runs a table of system calls one after
/// another and stops on `int3` once done, so that a batch of calls costs
/// one resume and one stop instead of one each ([`Remote::batch`]).
///
/// r12 points at the table: entries of [`BATCH_ENTRY`] bytes, each the
/// call's number, its six arguments and a slot its result is written to,
/// ended by a number of -1. Only rax, rcx, r11 (the syscall's), the
/// argument registers and r12 change; no stack is used.
///
/// ```text
/// loop: mov rax, [r12]      ; 49 8b 04 24
///       cmp rax, -1         ; 48 83 f8 ff
///       je done             ; 74 2b
///       mov rdi, [r12+8]    ; 49 8b 7c 24 08
///       mov rsi, [r12+16]   ; 49 8b 74 24 10
///       mov rdx, [r12+24]   ; 49 8b 54 24 18
///       mov r10, [r12+32]   ; 4d 8b 54 24 20
///       mov r8, [r12+40]    ; 4d 8b 44 24 28
///       mov r9, [r12+48]    ; 4d 8b 4c 24 30
///       syscall             ; 0f 05
///       mov [r12+56], rax   ; 49 89 44 24 38
///       add r12, 64         ; 49 83 c4 40
///       jmp loop            ; eb cb
/// done: int3                ; cc
/// ```
pub const BATCH_CODE: [u8; 54] = [
    0x49, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x2b, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b,
    0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89,
    0x44, 0x24, 0x38, 0x49, 0x83, 0xc4, 0x40, 0xeb, 0xcb, 0xcc,
];

/// Bytes of one entry of a [`Remote::batch`] table.
pub const BATCH_ENTRY: usize = 64;

/// One system call of a [`Remote::batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Its number.
    pub nr: i64,
    /// Its arguments (unused ones 0).
    pub args: [u64; 6],
}

impl Remote {
    /// Prepares to inject into `tid`, which is stopped under our ptrace;
    /// `syscall_ip` is the address of a `syscall` instruction (0f 05)
    /// mapped executable in its address space; `base` the registers to
    /// start each call from (usually the thread's current ones).
    pub fn new(tid: i32, syscall_ip: u64, base: Regs) -> Remote {
        Remote { tid, syscall_ip, trap_after: false, base, batch_ip: None, events: Vec::new() }
    }

    /// This remote, able to run [`Remote::batch`]: `ip` is the address of
    /// [`BATCH_CODE`], mapped executable in the thread's address space.
    pub fn with_batch(mut self, ip: u64) -> Remote {
        self.batch_ip = Some(ip);
        self
    }

    /// Whether [`Remote::batch`] can run here.
    pub fn can_batch(&self) -> bool {
        self.batch_ip.is_some()
    }

    /// Like [`Remote::new`], for a `syscall` instruction followed by `int3`
    /// (lpm's restore trampoline): each call then costs one resume and one
    /// wait, as the thread runs the syscall and stops on the breakpoint.
    pub fn with_trap(tid: i32, syscall_ip: u64, base: Regs) -> Remote {
        Remote { trap_after: true, ..Remote::new(tid, syscall_ip, base) }
    }

    /// This remote, made to stop at syscall exit instead of on the trap:
    /// for a call after which the trap is gone (unmapping the trampoline).
    pub fn without_trap(mut self) -> Remote {
        self.trap_after = false;
        self
    }

    /// The thread.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The address of the `syscall` instruction calls run from.
    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }

    /// A remote for `tid` (stopped under our ptrace, sharing this one's
    /// `syscall` instruction: a child it forked) starting calls from `base`.
    pub fn sibling(&self, tid: i32, base: Regs) -> Remote {
        Remote { tid, syscall_ip: self.syscall_ip, trap_after: self.trap_after, base, batch_ip: self.batch_ip, events: Vec::new() }
    }

    /// Runs `calls` in order in one resume of the thread through
    /// [`BATCH_CODE`], its table written at `table` (writable, at least
    /// `(calls.len() + 1) * BATCH_ENTRY` bytes); returns each call's raw
    /// result (negative errno on failure). Every call runs whatever the
    /// ones before returned, so only calls that change nothing the later
    /// ones depend on belong in one batch (reads, mostly). A remote
    /// without the code ([`Remote::with_batch`]) runs them one by one.
    pub fn batch(&mut self, table: u64, calls: &[Call]) -> Result<Vec<i64>> {
        let Some(ip) = self.batch_ip else {
            return calls.iter().map(|c| self.raw(c.nr, &c.args)).collect();
        };
        let mut t = Vec::with_capacity((calls.len() + 1) * BATCH_ENTRY);
        for c in calls {
            t.extend_from_slice(&c.nr.to_le_bytes());
            c.args.iter().for_each(|a| t.extend_from_slice(&a.to_le_bytes()));
            // The result's slot: a value no syscall returns, so that a
            // call the thread never reached cannot pass for one that ran.
            t.extend_from_slice(&i64::MIN.to_le_bytes());
        }
        t.extend_from_slice(&(-1i64).to_le_bytes());
        ptrace::write_mem(self.tid, table, &t)?;
        let mut r = self.base;
        r.rip = ip;
        r.r12 = table;
        r.orig_rax = u64::MAX;
        ptrace::set_regs(self.tid, &r)?;
        self.events.clear();
        let during = calls.first().map_or(-1, |c| c.nr);
        ptrace::cont(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)?.1 {
                Stop::Signal(libc::SIGTRAP) => break,
                // As in [`Remote::raw`]: a pending stop trap fires before
                // the thread reaches user space.
                Stop::Event(ptrace::EVENT_STOP, _) => ptrace::cont(self.tid, 0)?,
                other => return Err(Error::UnexpectedStop { tid: self.tid, during, stop: format!("{other:?}") }),
            }
        }
        let end = ptrace::get_regs(self.tid)?;
        // The trap after the table's end, not some other breakpoint.
        if end.rip != ip + BATCH_CODE.len() as u64 || end.r12 != table + (calls.len() * BATCH_ENTRY) as u64 {
            return Err(Error::UnexpectedStop { tid: self.tid, during, stop: format!("trap at {:#x}, table at {:#x}", end.rip, end.r12) });
        }
        ptrace::read_mem(self.tid, table, &mut t[..calls.len() * BATCH_ENTRY])?;
        Ok(t.chunks_exact(BATCH_ENTRY).take(calls.len()).map(|e| i64::from_le_bytes(e[56..64].try_into().expect("8 bytes"))).collect())
    }

    /// Runs syscall `nr`; returns the raw result (negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let mut r = self.base;
        r.rip = self.syscall_ip;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let slots = [&mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.r10, &mut r.r8, &mut r.r9];
        for (slot, a) in slots.into_iter().zip(args.iter().copied().chain(std::iter::repeat(0))) {
            *slot = a;
        }
        ptrace::set_regs(self.tid, &r)?;
        self.events.clear();
        if self.trap_after {
            ptrace::cont(self.tid, 0)?;
            loop {
                match ptrace::wait(self.tid)?.1 {
                    // The breakpoint after the syscall; the SIGTRAP is
                    // never delivered, the next resume passes no signal.
                    Stop::Signal(libc::SIGTRAP) => break,
                    // A stop trap left pending (a stopped process's group
                    // stop, or an interrupt that met it) fires before the
                    // thread reaches user space: the syscall has not run.
                    Stop::Event(ptrace::EVENT_STOP, _) => ptrace::cont(self.tid, 0)?,
                    Stop::Event(ev, _) => {
                        let msg = ptrace::event_msg(self.tid)?;
                        self.events.push((ev, msg));
                        ptrace::cont(self.tid, 0)?;
                    }
                    other => return Err(Error::UnexpectedStop { tid: self.tid, during: nr, stop: format!("{other:?}") }),
                }
            }
            return Ok(ptrace::get_regs(self.tid)?.rax as i64);
        }
        ptrace::syscall(self.tid, 0)?;
        self.expect_syscall_stop(nr)?;
        ptrace::syscall(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)?.1 {
                Stop::Syscall => break,
                Stop::Event(ev, _) => {
                    // Fork and clone events arrive between entry and exit.
                    let msg = ptrace::event_msg(self.tid)?;
                    self.events.push((ev, msg));
                    ptrace::syscall(self.tid, 0)?;
                }
                other => return Err(Error::UnexpectedStop { tid: self.tid, during: nr, stop: format!("{other:?}") }),
            }
        }
        Ok(ptrace::get_regs(self.tid)?.rax as i64)
    }

    fn expect_syscall_stop(&mut self, nr: i64) -> Result<()> {
        loop {
            match ptrace::wait(self.tid)?.1 {
                Stop::Syscall => return Ok(()),
                // A pending stop trap, before the thread reached the
                // syscall (see [`Remote::raw`]).
                Stop::Event(ptrace::EVENT_STOP, _) => ptrace::syscall(self.tid, 0)?,
                other => return Err(Error::UnexpectedStop { tid: self.tid, during: nr, stop: format!("{other:?}") }),
            }
        }
    }

    /// Runs syscall `nr`; a negative result becomes [`Error::Remote`].
    pub fn call(&mut self, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::Remote { tid: self.tid, nr, errno: -r as i32 });
        }
        Ok(r as u64)
    }

    /// Puts back the registers the thread had before (or any others).
    pub fn set_final_regs(&self, regs: &Regs) -> Result<()> {
        ptrace::set_regs(self.tid, regs)
    }
}

/// Brings a tracee that ran remote syscalls back into a stop inside the
/// kernel's signal path (PTRACE_INTERRUPT, then resume: it traps before
/// reaching user space). Registers set there and a detach then let the
/// kernel finish an interrupted syscall exactly as it would have:
/// restarted when no handler runs, EINTR when one does. A syscall-exit stop
/// skips that logic, so a thread detached from one would see -ERESTART*
/// codes, or re-run a pause() after a signal handler instead of returning.
///
/// Returns the signal to pass on at detach when a signal-delivery stop
/// came first (it is as good a place to stop), else 0.
pub fn park(tid: i32) -> Result<i32> {
    ptrace::interrupt(tid)?;
    ptrace::cont(tid, 0)?;
    loop {
        match ptrace::wait(tid)?.1 {
            Stop::Event(ptrace::EVENT_STOP, _) => return Ok(0),
            Stop::Signal(sig) if sig != libc::SIGTRAP => return Ok(sig),
            Stop::Signal(_) | Stop::Syscall | Stop::Event(_, _) => ptrace::cont(tid, 0)?,
            other => return Err(Error::UnexpectedStop { tid, during: -1, stop: format!("{other:?}") }),
        }
    }
}

/// Hands a thread stopped under our ptrace to another tracer thread of
/// ours (ptrace requests must come from the thread that attached): it is
/// pointed at `syscall_ip` (a `syscall` instruction) with pause(2) loaded
/// and detached, so it sleeps in the kernel, with every signal it could
/// take blocked, until [`take_over`] interrupts it there. `base` is the
/// register set its remote calls start from. Nothing of its own runs in
/// between: only pause, whose interruption the taker's first remote call
/// discards (orig_rax is -1, so the kernel never restarts it).
pub fn hand_off(tid: i32, syscall_ip: u64, base: &Regs) -> Result<()> {
    let mut r = *base;
    r.rip = syscall_ip;
    r.rax = libc::SYS_pause as u64;
    r.orig_rax = u64::MAX;
    ptrace::set_regs(tid, &r)?;
    ptrace::detach(tid, 0)
}

/// Takes a thread that [`hand_off`] let go of: seized with `options` by
/// the calling thread, which becomes its tracer, and interrupted in its
/// pause (or wherever it is on its way there). Returns once it is in
/// that stop, ready for remote calls.
pub fn take_over(tid: i32, options: i32) -> Result<()> {
    ptrace::seize(tid, options)?;
    ptrace::interrupt(tid)?;
    match ptrace::wait(tid)?.1 {
        Stop::Event(ptrace::EVENT_STOP, _) => Ok(()),
        other => Err(Error::UnexpectedStop { tid, during: libc::SYS_pause, stop: format!("{other:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `syscall` instruction in `pid`'s [vdso].
    fn vdso_syscall(pid: i32) -> u64 {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = maps.lines().find(|l| l.ends_with("[vdso]")).expect("a vdso");
        let (s, e) = line.split(' ').next().unwrap().split_once('-').unwrap();
        let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
        let mut b = vec![0u8; (e - s) as usize];
        ptrace::read_mem(pid, s, &mut b).unwrap();
        s + b.windows(2).position(|w| w == [0x0f, 0x05]).expect("syscall in the vdso") as u64
    }

    /// A batch runs every call in order, a failing one included, and
    /// gives each its own result and out buffer, as calls one by one do.
    #[test]
    fn a_batch_runs_its_calls_in_order() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).unwrap();
        ptrace::interrupt(pid).unwrap();
        assert!(matches!(ptrace::wait(pid).unwrap().1, Stop::Event(ptrace::EVENT_STOP, _)));
        let base = ptrace::get_regs(pid).unwrap();
        let mut r = Remote::new(pid, vdso_syscall(pid), base);
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let page = r.call(libc::SYS_mmap, &[0, 4096, 7, flags, u64::MAX, 0]).unwrap();
        ptrace::write_mem(pid, page + 2048, &BATCH_CODE).unwrap();
        let out = page + 1024;
        let calls = [
            Call { nr: libc::SYS_getpid, args: [0; 6] },
            Call { nr: libc::SYS_close, args: [u64::MAX, 0, 0, 0, 0, 0] },
            Call { nr: libc::SYS_rt_sigaction, args: [libc::SIGTERM as u64, 0, out, 8, 0, 0] },
            Call { nr: libc::SYS_getppid, args: [0; 6] },
        ];
        let want = vec![pid as i64, -(libc::EBADF as i64), 0, std::process::id() as i64];
        let mut batched = r.sibling(pid, base).with_batch(page + 2048);
        assert!(batched.can_batch());
        ptrace::write_mem(pid, out, &[0xaa; 32]).unwrap();
        assert_eq!(batched.batch(page, &calls).unwrap(), want);
        let mut act = [0u8; 32];
        ptrace::read_mem(pid, out, &mut act).unwrap();
        assert_eq!(act, [0; 32], "SIGTERM at its default action, no flags, empty mask");
        // One by one, without the code: the same.
        assert!(!r.can_batch());
        assert_eq!(r.batch(page, &calls).unwrap(), want);
        r.call(libc::SYS_munmap, &[page, 4096]).unwrap();
        r.set_final_regs(&base).unwrap();
        ptrace::detach(pid, 0).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
