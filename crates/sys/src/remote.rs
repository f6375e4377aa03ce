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
    /// PTRACE_EVENT stops seen during the last call: (event, message).
    pub events: Vec<(i32, u64)>,
}

impl Remote {
    /// Prepares to inject into `tid`, which is stopped under our ptrace;
    /// `syscall_ip` is the address of a `syscall` instruction (0f 05)
    /// mapped executable in its address space; `base` the registers to
    /// start each call from (usually the thread's current ones).
    pub fn new(tid: i32, syscall_ip: u64, base: Regs) -> Remote {
        Remote { tid, syscall_ip, trap_after: false, base, events: Vec::new() }
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
        Remote { tid, syscall_ip: self.syscall_ip, trap_after: self.trap_after, base, events: Vec::new() }
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
