//! POSIX timers (timer_create): listed from /proc/PID/timers, read with
//! remote timer_gettime and timer_getoverrun, recreated in the puppet with
//! the same ids, clocks and notification, then armed with timer_settime.
//!
//! Time left is restored as is, like the itimers of task.rs (and like
//! CRIU): the time a tree spends checkpointed does not exist for it, so a
//! periodic timer keeps its phase relative to the program's own progress
//! and a long checkpoint does not end in a burst of expiries. A timer whose
//! signal was queued but not delivered at checkpoint is armed to expire at
//! once on restore, so the signal comes from the timer itself (with its
//! overrun accounting) rather than as a copied siginfo.
//!
//! Ids: with PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+) timer_create takes
//! the wanted id; on older kernels ids are allocated sequentially per
//! process, so timers are created in id order, gaps filled with throw-away
//! timers deleted afterwards. Either way an id that does not come back
//! identical is an error naming it.

use lpm_image::{PosixTimer, Process, TimerNotify};
use lpm_sys::ptrace;
use lpm_sys::remote::Remote;

use crate::proc;
use crate::task::{put, Scratch};
use crate::{EngineError, Result, StepExt};

const SIGEV_SIGNAL: u32 = 0;
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD_ID: u32 = 4;
const SI_TIMER: i32 = -2;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
/// The process CPU clock of the calling process: MAKE_PROCESS_CPUCLOCK(0,
/// CPUCLOCK_SCHED), what CLOCK_PROCESS_CPUTIME_ID becomes in the kernel.
const SELF_PROCESS_CPUCLOCK: i32 = -6;

/// One entry of /proc/PID/timers.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    id: u32,
    signo: u32,
    sigval: u64,
    notify: String,
    target: i32,
    clock: i32,
}

/// Parses /proc/PID/timers ("ID:", "signal: N/VALUE", "notify: KIND/pid.N"
/// or "KIND/tid.N", "ClockID:").
fn parse(text: &str) -> Option<Vec<Listed>> {
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        if k == "ID" {
            out.push(Listed { id: v.parse().ok()?, ..Default::default() });
            continue;
        }
        let t = out.last_mut()?;
        match k {
            "signal" => {
                let (n, val) = v.split_once('/')?;
                t.signo = n.parse().ok()?;
                t.sigval = u64::from_str_radix(val, 16).ok()?;
            }
            "notify" => {
                let (kind, who) = v.split_once('/')?;
                let (scope, n) = who.split_once('.')?;
                t.notify = format!("{kind}/{scope}");
                t.target = n.parse().ok()?;
            }
            "ClockID" => t.clock = v.parse().ok()?,
            _ => {}
        }
    }
    out.sort_by_key(|t| t.id);
    Some(out)
}

/// The clock to create a timer on in the restored process, or why not.
fn restorable_clock(clock: i32, own_pid: u32) -> Result<i32, String> {
    match clock {
        0 | 1 | 7 | 8 | 9 | 11 => Ok(clock),
        2 | SELF_PROCESS_CPUCLOCK => Ok(clock),
        3 => Err("thread CPU-time clock (the thread it measures is not recorded)".into()),
        c if c < 0 => {
            let pid = !(c >> 3);
            if c & 4 != 0 {
                Err(format!("CPU-time clock of thread {pid}"))
            } else if pid as u32 == own_pid {
                Ok(c)
            } else {
                Err(format!("CPU-time clock of another process ({pid})"))
            }
        }
        c => Err(format!("clock {c}")),
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// True if raw siginfo `si` is the queued signal of timer `id`.
fn is_timer_signal(si: &[u8], id: u32) -> bool {
    let word = |o: usize| si.get(o..o + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    word(8) == Some(SI_TIMER) && word(16) == Some(id as i32)
}

/// The timers of process `pid` (`own`: its pid in its own namespace;
/// `tids`: its threads' host tids) from /proc/PID/timers, with the clock
/// and notification the restore uses; refused: clocks it cannot make
/// again (a thread's CPU clock, another process's) and notifications of
/// other kinds or of threads not of the process.
fn listed(pid: i32, own: u32, tids: &[u32]) -> Result<Vec<(Listed, i32, TimerNotify, u32)>> {
    let text = proc::read(pid, "timers")?;
    let listed = parse(&text).ok_or_else(|| EngineError::Parse { what: format!("/proc/{pid}/timers") })?;
    let mut out = Vec::new();
    for t in listed {
        let unsupported = |what: String| EngineError::Unsupported { pid, kind: "POSIX timer", what: format!("timer {}: {what}", t.id) };
        let clock = restorable_clock(t.clock, own).map_err(unsupported)?;
        let (notify, thread) = match t.notify.as_str() {
            "signal/pid" => (TimerNotify::Signal, 0),
            "none/pid" => (TimerNotify::None, 0),
            "signal/tid" => {
                let tid = tids
                    .iter()
                    .copied()
                    .find(|&tid| tid == t.target as u32)
                    .ok_or_else(|| unsupported(format!("notifies thread {} that is not one of the process's threads", t.target)))?;
                (TimerNotify::ThreadId, tid)
            }
            other => return Err(unsupported(format!("notification {other}"))),
        };
        out.push((t, clock, notify, thread));
    }
    Ok(out)
}

/// Applies the dump's rules to the POSIX timers of running process `pid`
/// (`own`: its pid in its own namespace; `tids`: its threads).
pub fn check(pid: i32, own: u32, tids: &[u32]) -> Result<()> {
    listed(pid, own, tids).map(drop)
}

/// Dumps the POSIX timers of stopped process `pid` (threads already in
/// `p`) through the leader's remote; takes their queued signals out of
/// the pending lists.
pub fn dump(pid: i32, r: &mut Remote, s: Scratch, p: &mut Process) -> Result<()> {
    let own = p.nspid.last().copied().unwrap_or(p.pid);
    let tids: Vec<u32> = p.threads.iter().map(|th| th.tid).collect();
    for (t, clock, notify, thread) in listed(pid, own, &tids)? {
        r.call(libc::SYS_timer_gettime, &[t.id as u64, s.addr]).step(pid, || format!("remote timer_gettime({})", t.id))?;
        let mut b = [0u8; 32];
        ptrace::read_mem(pid, s.addr, &mut b).step(pid, || "read scratch".into())?;
        let ns = |i: usize| u64_at(&b, i) * 1_000_000_000 + u64_at(&b, i + 1);
        let overrun = r.call(libc::SYS_timer_getoverrun, &[t.id as u64]).step(pid, || format!("remote timer_getoverrun({})", t.id))?;
        let before = p.shared_pending.len() + p.threads.iter().map(|th| th.pending.len()).sum::<usize>();
        p.shared_pending.retain(|si| !is_timer_signal(si, t.id));
        for th in &mut p.threads {
            th.pending.retain(|si| !is_timer_signal(si, t.id));
        }
        let after = p.shared_pending.len() + p.threads.iter().map(|th| th.pending.len()).sum::<usize>();
        p.posix_timers.push(PosixTimer {
            id: t.id,
            clock,
            notify: notify as i32,
            signo: t.signo,
            sigval: t.sigval,
            thread,
            interval_ns: ns(0),
            value_ns: ns(2),
            overrun: overrun as u32,
            pending: after < before,
        });
    }
    Ok(())
}

/// struct sigevent for timer `t` in a process whose threads are `p`'s.
fn sigevent(t: &PosixTimer, p: &Process) -> Result<[u8; 64]> {
    let mut b = [0u8; 64];
    b[..8].copy_from_slice(&t.sigval.to_le_bytes());
    b[8..12].copy_from_slice(&t.signo.to_le_bytes());
    let (notify, tid) = match TimerNotify::try_from(t.notify) {
        Ok(TimerNotify::Signal) => (SIGEV_SIGNAL, 0),
        Ok(TimerNotify::None) => (SIGEV_NONE, 0),
        Ok(TimerNotify::ThreadId) => {
            let th =
                p.threads.iter().find(|th| th.tid == t.thread).ok_or_else(|| {
                    EngineError::Incompatible(format!("pid {}: timer {} notifies missing thread {}", p.pid, t.id, t.thread))
                })?;
            (SIGEV_SIGNAL | SIGEV_THREAD_ID, th.nstid.last().copied().unwrap_or(th.tid))
        }
        _ => return Err(EngineError::Incompatible(format!("pid {}: timer {} has an unknown notification {}", p.pid, t.id, t.notify))),
    };
    b[12..16].copy_from_slice(&notify.to_le_bytes());
    b[16..20].copy_from_slice(&tid.to_le_bytes());
    Ok(b)
}

/// Runs timer_create in the puppet asking for `want`; returns the id the
/// kernel gave.
fn create(pid: i32, r: &mut Remote, s: Scratch, clock: i32, sev: &[u8; 64], want: u32) -> Result<u32> {
    let sev = put(pid, s, 0, sev)?;
    let idp = put(pid, s, 64, &(want as i32).to_le_bytes())?;
    r.call(libc::SYS_timer_create, &[clock as i64 as u64, sev, idp]).step(pid, || format!("remote timer_create for timer {want}"))?;
    let mut b = [0u8; 4];
    ptrace::read_mem(pid, idp, &mut b).step(pid, || "read scratch".into())?;
    Ok(i32::from_le_bytes(b) as u32)
}

/// Recreates the timers of `p` in its puppet, once its threads exist
/// (a timer may target one).
pub fn restore(pid: i32, r: &mut Remote, s: Scratch, p: &Process) -> Result<()> {
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    let by_id = r.call(libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0]).is_ok();
    let mut throwaway = Vec::new();
    let max = p.posix_timers.iter().map(|t| t.id).max().unwrap_or(0);
    let mut next = 0u32;
    for t in &p.posix_timers {
        if !by_id {
            // Sequential allocation: fill the gap below this id.
            let filler = sigevent(&PosixTimer { notify: TimerNotify::None as i32, ..Default::default() }, p)?;
            while next < t.id {
                let got = create(pid, r, s, libc::CLOCK_MONOTONIC, &filler, next)?;
                throwaway.push(got);
                next = got + 1;
            }
        }
        let got = create(pid, r, s, t.clock, &sigevent(t, p)?, t.id)?;
        if got != t.id {
            return Err(EngineError::Incompatible(format!("pid {}: timer {} came back with id {got} (of at most {max})", p.pid, t.id)));
        }
        next = got + 1;
    }
    if by_id {
        r.call(libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0])
            .step(pid, || "remote PR_TIMER_CREATE_RESTORE_IDS off".into())?;
    }
    for id in throwaway {
        r.call(libc::SYS_timer_delete, &[id as u64]).step(pid, || format!("remote timer_delete({id}) of a gap filler"))?;
    }
    for t in &p.posix_timers {
        let value = if t.pending { 1 } else { t.value_ns };
        let mut b = Vec::with_capacity(32);
        for w in [t.interval_ns / 1_000_000_000, t.interval_ns % 1_000_000_000, value / 1_000_000_000, value % 1_000_000_000] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let a = put(pid, s, 0, &b)?;
        r.call(libc::SYS_timer_settime, &[t.id as u64, 0, a, 0]).step(pid, || format!("remote timer_settime({})", t.id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 3\nsignal: 34/0000000000001234\nnotify: signal/tid.24470\nClockID: 7\n\
                    ID: 0\nsignal: 14/0000000000000000\nnotify: none/pid.5\nClockID: -6\n";
        let l = parse(text).expect("parses");
        assert_eq!(l[0], Listed { id: 0, signo: 14, sigval: 0, notify: "none/pid".into(), target: 5, clock: -6 });
        assert_eq!(l[1], Listed { id: 3, signo: 34, sigval: 0x1234, notify: "signal/tid".into(), target: 24470, clock: 7 });
        assert!(parse("garbage\n").is_none());
    }

    #[test]
    fn clocks() {
        assert_eq!(restorable_clock(1, 10), Ok(1));
        assert_eq!(restorable_clock(-6, 10), Ok(-6));
        assert!(restorable_clock(-2, 10).is_err());
        assert!(restorable_clock(3, 10).is_err());
        let other = (!20) << 3 | 2;
        assert!(restorable_clock(other, 10).is_err());
        let own = (!10) << 3 | 2;
        assert_eq!(restorable_clock(own, 10), Ok(own));
        assert!(restorable_clock(5, 10).is_err());
    }
}
