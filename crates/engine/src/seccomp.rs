//! Seccomp filters (mode 2).
//!
//! Dump: every thread's chain is read with PTRACE_SECCOMP_GET_FILTER and
//! (the kernel's get_nth_filter counts from the oldest: index 0 is the
//! first filter installed, whatever ptrace(2) says; zdtm seccomp.c tells
//! the order apart) its flags with PTRACE_SECCOMP_GET_METADATA;
//! every thread must hold the same chain (else refused by name), and its
//! length must match `Seccomp_filters` of /proc/PID/status. Strict mode (1)
//! is refused. Threads with filters are seized with
//! PTRACE_O_SUSPEND_SECCOMP, so the dump's remote syscalls are not
//! filtered.
//!
//! Restore: every thread of the puppet is given PTRACE_O_SUSPEND_SECCOMP
//! (the rest of the restore runs unfiltered; the option ends at detach),
//! then the leader installs the filters oldest first with
//! SECCOMP_FILTER_FLAG_TSYNC, so every thread shares the chain. A process
//! with no_new_privs gets it in the leader first: TSYNC copies it to every
//! thread, as the original's threads inherited it. This runs
//! before credentials are set, while the puppet still has CAP_SYS_ADMIN
//! (the original may have installed them under no_new_privs, restored
//! with the credentials). Filters equal in content but installed
//! separately in each thread come back shared: no program can tell.

use lpm_image::{Seccomp, SeccompFilter};
use lpm_sys::misc;
use lpm_sys::ptrace;
use lpm_sys::remote::Remote;

use crate::proc::Status;
use crate::task::{put, Scratch};
use crate::{EngineError, Result, StepExt};

fn unsupported(pid: i32, what: impl Into<String>) -> EngineError {
    EngineError::Unsupported { pid, kind: "seccomp", what: what.into() }
}

/// Whether thread `tid` of `pid` runs under seccomp (it must then be
/// seized with PTRACE_O_SUSPEND_SECCOMP).
pub fn active(pid: i32, tid: i32) -> bool {
    Status::read_task(pid, tid).is_ok_and(|s| !matches!(s.get("Seccomp"), "" | "0"))
}

/// Whether thread `tid` of `pid` (status `st`) has filters, from /proc;
/// strict and unknown modes refused.
fn filtered(pid: i32, tid: i32, st: &Status) -> Result<bool> {
    match st.get("Seccomp") {
        "0" | "" => Ok(false),
        "2" => Ok(true),
        "1" => Err(unsupported(pid, format!("thread {tid} is in strict mode (SECCOMP_MODE_STRICT)"))),
        m => Err(unsupported(pid, format!("thread {tid} is in unknown seccomp mode {m}"))),
    }
}

/// How many filters /proc counts in a thread's chain (kernels before 5.9
/// do not say).
fn counted(st: &Status) -> Option<usize> {
    st.get("Seccomp_filters").parse().ok()
}

fn different(pid: i32, a: i32, b: i32) -> EngineError {
    unsupported(pid, format!("threads {a} and {b} have different seccomp filter chains"))
}

/// Applies the dump's rules to the threads `tids` of running process
/// `pid` from /proc alone: strict mode, and chains of different lengths.
/// (Chains of one length with different filters can only be told apart
/// by ptrace, with the tree stopped: the dump refuses those.)
pub fn check(pid: i32, tids: &[i32]) -> Result<()> {
    let mut first: Option<(i32, (bool, Option<usize>))> = None;
    for &tid in tids {
        let Ok(st) = Status::read_task(pid, tid) else { continue };
        let n = (filtered(pid, tid, &st)?, counted(&st));
        match first {
            None => first = Some((tid, n)),
            Some((a, m)) if m != n => return Err(different(pid, a, tid)),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads the filters, oldest first, of stopped process `pid` with threads `tids`.
pub fn dump(pid: i32, tids: &[i32]) -> Result<Option<Seccomp>> {
    let mut chains: Vec<(i32, Vec<SeccompFilter>)> = Vec::new();
    for &tid in tids {
        let st = Status::read_task(pid, tid)?;
        if !filtered(pid, tid, &st)? {
            chains.push((tid, Vec::new()));
            continue;
        }
        let mut filters = Vec::new();
        for index in 0.. {
            let Some(insns) = misc::seccomp_filter(tid, index).step(tid, || format!("read seccomp filter {index}"))? else { break };
            let flags = misc::seccomp_flags(tid, index).step(tid, || format!("read seccomp filter {index} metadata"))?;
            filters.push(SeccompFilter { insns, flags });
        }
        let counted = counted(&st).unwrap_or(filters.len());
        if counted != filters.len() {
            return Err(unsupported(pid, format!("thread {tid}: status shows {counted} filters, ptrace returned {}", filters.len())));
        }
        chains.push((tid, filters));
    }
    let Some((first_tid, first)) = chains.first().cloned() else { return Ok(None) };
    if let Some((tid, _)) = chains.iter().find(|(_, c)| *c != first) {
        return Err(different(pid, first_tid, *tid));
    }
    Ok((!first.is_empty()).then_some(Seccomp { filters: first }))
}

/// Installs the filters in a shaped puppet (`pid`, threads `tids`, leader
/// first) through the leader's remote.
pub fn restore(pid: i32, tids: &[i32], r: &mut Remote, s: Scratch, sc: &Seccomp, no_new_privs: bool) -> Result<()> {
    if no_new_privs {
        r.call(libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0]).step(pid, || "remote PR_SET_NO_NEW_PRIVS".into())?;
    }
    for &tid in tids {
        ptrace::set_options(tid, ptrace::OPTIONS | misc::PTRACE_O_SUSPEND_SECCOMP).step(tid, || "set PTRACE_O_SUSPEND_SECCOMP".into())?;
    }
    for (i, f) in sc.filters.iter().enumerate() {
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let insns = put(pid, s, 16, &f.insns)?;
        let mut prog = ((f.insns.len() / 8) as u64).to_le_bytes().to_vec();
        prog.extend_from_slice(&insns.to_le_bytes());
        let prog = put(pid, s, 0, &prog)?;
        let flags = libc::SECCOMP_FILTER_FLAG_TSYNC | f.flags;
        let got = r
            .call(libc::SYS_seccomp, &[libc::SECCOMP_SET_MODE_FILTER as u64, flags, prog])
            .step(pid, || format!("remote seccomp(SET_MODE_FILTER) of filter {i} (oldest first)"))?;
        if got != 0 {
            return Err(EngineError::Incompatible(format!("pid {pid}: seccomp filter {i} could not be synchronized to thread {got}")));
        }
    }
    for &tid in tids {
        let n: usize = Status::read_task(pid, tid)?.get("Seccomp_filters").parse().unwrap_or(0);
        if n != sc.filters.len() {
            return Err(EngineError::Incompatible(format!(
                "pid {pid}: thread {tid} has {n} seccomp filters, {} restored",
                sc.filters.len()
            )));
        }
    }
    Ok(())
}
