//! Per-task state: registers, signals, credentials, limits, and the rest of
//! what a process or thread carries besides memory and files. Dump reads it
//! through ptrace, /proc and remote syscalls; restore sets it by remote
//! syscalls in the puppet.

use lpm_image::{Creds, Itimer, Process, ProcessPrctl, Rlimit, Rseq, Sched, SigAction, SigAltStack, Thread};
use lpm_sys::ptrace;
use lpm_sys::remote::Remote;

use crate::proc::{self, Status};
use crate::{EngineError, Result, StepExt};

/// Signals whose disposition cannot be read or changed.
fn settable(sig: u32) -> bool {
    sig != libc::SIGKILL as u32 && sig != libc::SIGSTOP as u32
}

/// Scratch memory inside a tracee for remote syscalls' in/out arguments.
#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    /// Address in the tracee.
    pub addr: u64,
    /// Bytes available.
    pub len: u64,
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Dumps one thread (stopped, seized); `regs` are its registers already
/// fixed up for syscall restart.
pub fn dump_thread(pid: i32, tid: i32, ns_tid: u32, regs: &ptrace::Regs, r: &mut Remote, s: Scratch) -> Result<Thread> {
    let xstate = ptrace::get_xstate(tid).step(tid, || "read xstate".into())?;
    let sigmask = ptrace::get_sigmask(tid).step(tid, || "read sigmask".into())?;
    let pending = ptrace::peek_siginfo(tid, false).step(tid, || "read pending signals".into())?;
    let rseq = ptrace::get_rseq(tid).step(tid, || "read rseq".into())?;
    let (robust_list, robust_list_len) = lpm_sys::misc::get_robust_list(tid).step(tid, || "get_robust_list".into())?;
    let mut b = Batch::new(s);
    let ss = b.add(libc::SYS_sigaltstack, |out| [0, out, 0, 0, 0, 0]);
    let tid_addr = b.add(libc::SYS_prctl, |out| [libc::PR_GET_TID_ADDRESS as u64, out, 0, 0, 0, 0]);
    let slack = b.add(libc::SYS_prctl, |_| [libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0, 0]);
    let done = b.run(pid, tid, r)?;
    done.ok(ss, "remote sigaltstack")?;
    let ss = done.out(ss);
    done.ok(tid_addr, "remote PR_GET_TID_ADDRESS")?;
    let tid_addr = done.out(tid_addr);
    let timer_slack_ns = done.ok(slack, "remote PR_GET_TIMERSLACK")?;
    let comm = proc::read(pid, &format!("task/{tid}/comm"))?.trim_end_matches('\n').to_string();
    let nice = proc::Stat::parse(&proc::read(pid, &format!("task/{tid}/stat"))?).map(|st| st.num(19) as i64 as i32).unwrap_or(0);
    let sched = check_sched(pid, tid)?;
    Ok(Thread {
        tid: ns_tid,
        gpregs: ptrace::regs_to_bytes(regs),
        xstate,
        sigmask,
        pending,
        clear_child_tid: u64_at(tid_addr, 0),
        robust_list,
        robust_list_len,
        sigaltstack: Some(SigAltStack { sp: u64_at(ss, 0), flags: (u64_at(ss, 1) & 0xffff_ffff) as u32, size: u64_at(ss, 2) }),
        rseq: (rseq.rseq_abi_pointer != 0).then_some(Rseq { addr: rseq.rseq_abi_pointer, len: rseq.rseq_abi_size, sig: rseq.signature }),
        comm,
        host_tid: tid as u32,
        nice,
        timer_slack_ns,
        nstid: Vec::new(),
        sched: Some(sched),
    })
}

/// The scheduling policy of thread `tid` of `pid`, or why it cannot be
/// kept: a SCHED_DEADLINE reservation (runtime, deadline, period) holds
/// a share of this host's CPU bandwidth that the target must admit, and
/// its budget and deadline at this instant cannot be carried over.
/// Rule of both the dump and the inspection (it needs no stop).
pub fn check_sched(pid: i32, tid: i32) -> Result<Sched> {
    let a = lpm_sys::sched::get(tid).step(tid, || "sched_getattr".into())?;
    if a.policy == lpm_sys::sched::SCHED_DEADLINE {
        return Err(EngineError::Unsupported {
            pid,
            kind: "thread",
            what: format!(
                "tid {tid}: SCHED_DEADLINE (runtime {} ns, deadline {} ns, period {} ns): its bandwidth reservation and current budget are this host's scheduler state",
                a.runtime, a.deadline, a.period
            ),
        });
    }
    Ok(Sched {
        policy: a.policy,
        flags: a.flags & lpm_sys::sched::FLAG_RESET_ON_FORK,
        priority: a.priority,
        util_min: a.util_min,
        util_max: a.util_max,
    })
}

/// Sets the scheduling policy of restored thread `tid` (image thread `t`)
/// from outside: done last, once no remote call of the restore runs in
/// the thread any more (a SCHED_IDLE thread would run them at the
/// back of every queue). The nice value goes with it, as sched_setattr
/// sets it for the fair policies (and keeps it aside for the real-time
/// ones, where setpriority set it before).
pub fn restore_sched(tid: i32, t: &Thread) -> Result<()> {
    let Some(sc) = &t.sched else { return Ok(()) };
    // Never asked for: what a task starts with (and the only values a
    // kernel without utilization clamping reports).
    let unclamped = (sc.util_min, sc.util_max) == (0, 1024) || sc.util_max == 0;
    if sc.policy == libc::SCHED_OTHER as u32 && sc.flags == 0 && unclamped {
        return Ok(());
    }
    let a = lpm_sys::sched::SchedAttr {
        policy: sc.policy,
        flags: sc.flags | if unclamped { 0 } else { lpm_sys::sched::FLAG_UTIL_CLAMP },
        nice: t.nice,
        priority: sc.priority,
        util_min: sc.util_min,
        util_max: sc.util_max,
        ..Default::default()
    };
    lpm_sys::sched::set(tid, &a)
        .step(tid, || format!("sched_setattr policy {} flags {:#x} priority {} nice {}", sc.policy, a.flags, sc.priority, t.nice))
}

/// Dumps process-wide task state into `p` through the leader's remote.
pub fn dump_process(pid: i32, r: &mut Remote, s: Scratch, p: &mut Process) -> Result<()> {
    let st = Status::read(pid)?;
    let caps = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].iter().map(|k| st.hex(k)).collect();
    // Everything asked from inside goes in one batch: one resume and one
    // stop for the process, where a call each cost a resume and a stop
    // apiece (PostgreSQL's two dozen processes asked some 25 each).
    let mut b = Batch::new(s);
    let securebits = b.add(libc::SYS_prctl, |_| [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0]);
    let get = |b: &mut Batch, op: i32| b.add(libc::SYS_prctl, |_| [op as u64, 0, 0, 0, 0, 0]);
    let no_new_privs = get(&mut b, libc::PR_GET_NO_NEW_PRIVS);
    let thp_disable = get(&mut b, libc::PR_GET_THP_DISABLE);
    let dumpable = get(&mut b, libc::PR_GET_DUMPABLE);
    let subreaper = b.add(libc::SYS_prctl, |out| [libc::PR_GET_CHILD_SUBREAPER as u64, out, 0, 0, 0, 0]);
    let pdeathsig = b.add(libc::SYS_prctl, |out| [libc::PR_GET_PDEATHSIG as u64, out, 0, 0, 0, 0]);
    let membarrier = b.add(libc::SYS_membarrier, |_| [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0]);
    // Only signals with a handler or ignored, and SIGCHLD (whose
    // SA_NOCLDWAIT matters at its default action too), are asked. A
    // signal at its default action is restored with no flags and an empty
    // mask, which only sigaction() could tell.
    let asked = st.hex("SigCgt") | st.hex("SigIgn") | 1 << (libc::SIGCHLD - 1);
    let sigs: Vec<(u32, usize)> = (1..=64u32)
        .filter(|&sig| settable(sig) && asked & 1 << (sig - 1) != 0)
        .map(|sig| (sig, b.add(libc::SYS_rt_sigaction, |out| [sig as u64, 0, out, 8, 0, 0])))
        .collect();
    let itimers: Vec<(u32, usize)> =
        (0..3u32).map(|which| (which, b.add(libc::SYS_getitimer, |out| [which as u64, out, 0, 0, 0, 0]))).collect();
    let done = b.run(pid, pid, r)?;
    let ok = |i: usize, what: &str| done.ok(i, what);
    p.creds = Some(Creds {
        uids: st.nums("Uid"),
        gids: st.nums("Gid"),
        groups: st.nums("Groups"),
        caps,
        securebits: ok(securebits, "remote PR_GET_SECUREBITS")? as u32,
    });
    let mut pr = ProcessPrctl {
        no_new_privs: ok(no_new_privs, "remote PR_GET_NO_NEW_PRIVS")? != 0,
        thp_disable: ok(thp_disable, "remote PR_GET_THP_DISABLE")? != 0,
        dumpable: ok(dumpable, "remote PR_GET_DUMPABLE")? as u32,
        ..Default::default()
    };
    ok(subreaper, "remote PR_GET_CHILD_SUBREAPER")?;
    pr.child_subreaper = done.out(subreaper)[..4] != [0; 4];
    ok(pdeathsig, "remote PR_GET_PDEATHSIG")?;
    pr.pdeathsig = u32::from_le_bytes(done.out(pdeathsig)[..4].try_into().expect("4 bytes"));
    p.prctl = Some(pr);
    p.umask = st.oct("Umask");
    // A test of the checkpoint's read-back makes it record a wrong value.
    if crate::verify::sabotaged("dump-umask") {
        p.umask ^= 0o020;
    }
    p.oom_score_adj = read_oom_score_adj(pid)?;
    p.membarrier = membarrier_registrations(pid, done.raw(membarrier))?;
    p.rlimits =
        proc::parse_limits(&proc::read(pid, "limits")?).into_iter().map(|(resource, soft, hard)| Rlimit { resource, soft, hard }).collect();
    p.cwd = proc::link(pid, "cwd")?;
    p.root = proc::link(pid, "root")?;
    p.personality = u32::from_str_radix(proc::read(pid, "personality")?.trim(), 16).unwrap_or(0);
    p.shared_pending = ptrace::peek_siginfo(pid, true).step(pid, || "read shared pending signals".into())?;
    for (sig, i) in sigs {
        ok(i, &format!("remote rt_sigaction({sig})"))?;
        let a = done.out(i);
        let act = SigAction { signo: sig, handler: u64_at(a, 0), flags: u64_at(a, 1), restorer: u64_at(a, 2), mask: u64_at(a, 3) };
        if act.handler != 0 || act.flags != 0 || act.mask != 0 {
            p.sigactions.push(act);
        }
    }
    for (which, i) in itimers {
        ok(i, &format!("remote getitimer({which})"))?;
        let t = done.out(i);
        let us = |i: usize| u64_at(t, i) * 1_000_000 + u64_at(t, i + 1);
        if us(0) != 0 || us(2) != 0 {
            p.itimers.push(Itimer { which, interval_us: us(0), value_us: us(2) });
        }
    }
    Ok(())
}

/// /proc/PID/oom_score_adj.
pub fn read_oom_score_adj(pid: i32) -> Result<i32> {
    let text = proc::read(pid, "oom_score_adj")?;
    text.trim().parse().map_err(|_| EngineError::Parse { what: format!("/proc/{pid}/oom_score_adj: {text:?}") })
}

/// Gives restored process `pid` its oom_score_adj, written from here like
/// any process's: a value below the lowest one a privileged writer gave
/// the puppet's line (the restorer's, 0 by default) needs
/// CAP_SYS_RESOURCE, and fails by name without it.
pub fn restore_oom_score_adj(pid: i32, value: i32) -> Result<()> {
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, value.to_string()).map_err(crate::io_err(format!("write {value} to {path}")))
}

/// MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3).
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The MEMBARRIER_CMD_REGISTER_* commands: global expedited, private
/// expedited, private expedited sync-core, private expedited rseq.
const MEMBARRIER_REGISTER: u32 = 1 << 2 | 1 << 4 | 1 << 6 | 1 << 8;

/// The membarrier registrations of `pid`'s address space from what
/// MEMBARRIER_CMD_GET_REGISTRATIONS returned inside it (nothing shows
/// them from outside).
fn membarrier_registrations(pid: i32, got: i64) -> Result<u32> {
    match got {
        // Without membarrier nothing can be registered.
        n if n == -(libc::ENOSYS as i64) => Ok(0),
        n if n < 0 => Err(EngineError::Unsupported {
            pid,
            kind: "process",
            what: format!(
                "its membarrier registrations cannot be read on this kernel (MEMBARRIER_CMD_GET_REGISTRATIONS, Linux 6.3: errno {})",
                -n
            ),
        }),
        n => Ok(n as u32),
    }
}

/// Registers restored process `pid` for what the image's process was
/// registered for; fails when the puppet holds a registration the image
/// lacks (a fork inherits them, and none can be undone).
fn restore_membarrier(pid: i32, r: &mut Remote, want: u32) -> Result<()> {
    let have = r.call(libc::SYS_membarrier, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]).step(pid, || "remote membarrier".into())? as u32;
    if have & !want != 0 {
        return Err(EngineError::Incompatible(format!(
            "pid {pid}: the puppet holds membarrier registrations {:#x} the image lacks (inherited from the restorer)",
            have & !want
        )));
    }
    for bit in (0..32).map(|b| 1u32 << b).filter(|b| want & b & !have != 0) {
        if bit & MEMBARRIER_REGISTER == 0 {
            return Err(EngineError::Incompatible(format!("pid {pid}: unknown membarrier registration {bit:#x} in the image")));
        }
        r.call(libc::SYS_membarrier, &[bit as u64, 0, 0]).step(pid, || format!("remote membarrier register {bit:#x}"))?;
    }
    Ok(())
}

/// Writes `data` into the puppet's scratch at `off`; returns its address.
pub fn put(pid: i32, s: Scratch, off: u64, data: &[u8]) -> Result<u64> {
    if off + data.len() as u64 > s.len {
        return Err(EngineError::Incompatible(format!("{} bytes do not fit the restore scratch area", data.len())));
    }
    ptrace::write_mem(pid, s.addr + off, data).step(pid, || "write scratch".into())?;
    Ok(s.addr + off)
}

/// Writes a NUL-terminated path into scratch; returns its address.
pub fn put_path(pid: i32, s: Scratch, off: u64, path: &str) -> Result<u64> {
    if path.len() >= 4096 {
        return Err(EngineError::Incompatible(format!("path longer than PATH_MAX: {path:.80}...")));
    }
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    put(pid, s, off, &b)
}

/// Enters the working directory of `p`: by its path, or a removed one
/// through the restorer's descriptor of its ghost (`ghosts`, by id),
/// which the puppet still inherits: done before the puppet's own
/// descriptors replace what it inherited.
pub fn restore_cwd(pid: i32, r: &mut Remote, s: Scratch, p: &Process, ghosts: &std::collections::HashMap<u64, i32>) -> Result<()> {
    if p.cwd_ghost == 0 {
        let addr = put_path(pid, s, 0, &p.cwd)?;
        r.call(libc::SYS_chdir, &[addr]).step(pid, || format!("remote chdir({})", p.cwd))?;
        return Ok(());
    }
    let fd = ghosts.get(&p.cwd_ghost).ok_or_else(|| {
        EngineError::Incompatible(format!(
            "process {}: its working directory is unlinked directory {}, missing from the image",
            p.pid, p.cwd_ghost
        ))
    })?;
    r.call(libc::SYS_fchdir, &[*fd as u64]).step(pid, || format!("remote fchdir to removed directory {}", p.cwd))?;
    Ok(())
}

/// Restores process-wide state except credentials (set last, since they
/// may take away the rights the other steps need).
pub fn restore_process(pid: i32, r: &mut Remote, s: Scratch, p: &Process) -> Result<()> {
    // Signals are queued from inside, where the process sees its own pid.
    let ns_pid = p.nspid.last().copied().unwrap_or(p.pid) as u64;
    // Only what differs from the puppet's own actions is set: a remote
    // call each stops the puppet twice (62 of them took 3.5 ms of a
    // migration's downtime). The puppet's ignored and caught signals are
    // in its status; one at its default action has no flags and an empty
    // mask, but for SIGCHLD, whose SA_NOCLDWAIT shows nowhere else.
    let st = Status::read(pid)?;
    let puppet_set = st.hex("SigCgt") | st.hex("SigIgn") | 1 << (libc::SIGCHLD - 1);
    for sig in 1..=64u32 {
        let saved = p.sigactions.iter().find(|a| a.signo == sig);
        if !settable(sig) || (saved.is_none() && puppet_set & 1 << (sig - 1) == 0) {
            continue;
        }
        let a = saved.cloned().unwrap_or_default();
        let mut b = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = put(pid, s, 0, &b)?;
        r.call(libc::SYS_rt_sigaction, &[sig as u64, addr, 0, 8]).step(pid, || format!("remote rt_sigaction({sig})"))?;
    }
    // Time left is restored as it was at checkpoint: time spent
    // checkpointed does not count (as in CRIU; docs/support.md).
    for it in &p.itimers {
        // A periodic ITIMER_REAL reads 0 left between its expiry and the
        // dequeue of its SIGALRM, which re-arms it; a value of 0 would
        // disarm it for good, so it expires again at once instead.
        let value_us = if it.which == 0 && it.value_us == 0 && it.interval_us != 0 { 1 } else { it.value_us };
        let mut b = Vec::new();
        for w in [it.interval_us / 1_000_000, it.interval_us % 1_000_000, value_us / 1_000_000, value_us % 1_000_000] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = put(pid, s, 0, &b)?;
        r.call(libc::SYS_setitimer, &[it.which as u64, addr, 0]).step(pid, || format!("remote setitimer({})", it.which))?;
    }
    if p.root != "/" {
        let addr = put_path(pid, s, 0, &p.root)?;
        r.call(libc::SYS_chroot, &[addr]).step(pid, || format!("remote chroot({})", p.root))?;
    }
    // A test of `verify` makes the restore get one field wrong on purpose.
    let umask = if crate::verify::sabotaged("umask") { p.umask ^ 0o020 } else { p.umask };
    r.call(libc::SYS_umask, &[umask as u64]).step(pid, || "remote umask".into())?;
    r.call(libc::SYS_personality, &[p.personality as u64]).step(pid, || "remote personality".into())?;
    // Likewise the limits: the puppet's are lpmd's, mostly the same.
    let current = proc::parse_limits(&proc::read(pid, "limits")?);
    for l in p.rlimits.iter().filter(|l| !current.contains(&(l.resource, l.soft, l.hard))) {
        let mut b = l.soft.to_le_bytes().to_vec();
        b.extend_from_slice(&l.hard.to_le_bytes());
        let addr = put(pid, s, 0, &b)?;
        r.call(libc::SYS_prlimit64, &[0, l.resource as u64, addr, 0])
            .step(pid, || format!("remote prlimit(resource {}, soft {}, hard {})", l.resource, l.soft, l.hard))?;
    }
    if let Some(pr) = &p.prctl {
        r.call(libc::SYS_prctl, &[libc::PR_SET_THP_DISABLE as u64, pr.thp_disable as u64, 0, 0, 0])
            .step(pid, || "remote PR_SET_THP_DISABLE".into())?;
        r.call(libc::SYS_prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, pr.child_subreaper as u64])
            .step(pid, || "remote PR_SET_CHILD_SUBREAPER".into())?;
    }
    for (i, sig) in p.shared_pending.iter().enumerate() {
        let signo = u32::from_le_bytes(sig[..4].try_into().unwrap_or_default());
        let addr = put(pid, s, 0, sig)?;
        r.call(libc::SYS_rt_sigqueueinfo, &[ns_pid, signo as u64, addr])
            .step(pid, || format!("remote rt_sigqueueinfo (shared signal {i}: {signo})"))?;
    }
    restore_oom_score_adj(pid, p.oom_score_adj)?;
    restore_membarrier(pid, r, p.membarrier)
}

/// Sets credentials. The order is forced by the kernel's rules: the
/// bounding set shrinks while the task still has CAP_SETPCAP; keep-caps
/// lets the permitted set survive the switch away from uid 0; groups and
/// gids change before uids (after which they no longer can); then the
/// capability sets are set exactly and ambient capabilities raised.
pub fn restore_creds(pid: i32, r: &mut Remote, s: Scratch, p: &Process) -> Result<()> {
    let Some(c) = &p.creds else { return Ok(()) };
    if c.uids.len() < 3 || c.gids.len() < 3 || c.caps.len() < 5 {
        return Err(EngineError::Incompatible(format!("pid {pid}: credentials in the image are incomplete")));
    }
    let (inh, prm, eff, bnd, amb) = (c.caps[0], c.caps[1], c.caps[2], c.caps[3], c.caps[4]);
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    for cap in 0..=last_cap {
        if bnd & (1 << cap) == 0 {
            r.call(libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap])
                .step(pid, || format!("remote drop capability {cap} from the bounding set"))?;
        }
    }
    // The image's securebits plus keep-caps while the uids change.
    const SECBIT_KEEP_CAPS: u64 = 0x10;
    let securebits = c.securebits as u64;
    r.call(libc::SYS_prctl, &[libc::PR_SET_SECUREBITS as u64, securebits | SECBIT_KEEP_CAPS])
        .step(pid, || format!("remote PR_SET_SECUREBITS {securebits:#x}"))?;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let addr = put(pid, s, 0, &groups)?;
    r.call(libc::SYS_setgroups, &[c.groups.len() as u64, addr]).step(pid, || "remote setgroups".into())?;
    r.call(libc::SYS_setresgid, &[c.gids[0] as u64, c.gids[1] as u64, c.gids[2] as u64]).step(pid, || "remote setresgid".into())?;
    r.call(libc::SYS_setresuid, &[c.uids[0] as u64, c.uids[1] as u64, c.uids[2] as u64]).step(pid, || "remote setresuid".into())?;
    // struct __user_cap_header_struct (version 3, this task) followed by
    // two __user_cap_data_struct: low and high 32 bits of each set.
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    let hdr = put(pid, s, 0, &b)?;
    r.call(libc::SYS_capset, &[hdr, hdr + 8]).step(pid, || format!("remote capset eff {eff:#x} prm {prm:#x} inh {inh:#x}"))?;
    if securebits & SECBIT_KEEP_CAPS == 0 {
        r.call(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 0]).step(pid, || "remote clear PR_SET_KEEPCAPS".into())?;
    }
    for cap in 0..=last_cap {
        if amb & (1 << cap) != 0 {
            r.call(libc::SYS_prctl, &[libc::PR_CAP_AMBIENT as u64, libc::PR_CAP_AMBIENT_RAISE as u64, cap, 0, 0])
                .step(pid, || format!("remote raise ambient capability {cap}"))?;
        }
    }
    // Changing uids reset dumpable; no_new_privs cannot be undone, so last.
    if let Some(pr) = &p.prctl {
        r.call(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, pr.dumpable as u64]).step(pid, || "remote PR_SET_DUMPABLE".into())?;
        if pr.no_new_privs {
            r.call(libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0]).step(pid, || "remote PR_SET_NO_NEW_PRIVS".into())?;
        }
    }
    Ok(())
}

/// Restores a thread's state that only the thread itself can set.
/// `inherited` is the thread it was cloned from, already restored: what a
/// new thread inherits from it (name, nice, timer slack) and the disabled
/// alternate stack every new thread starts with are not set again, which
/// keeps a thousand-thread restore short.
pub fn restore_thread(pid: i32, ns_pid: u32, tid: i32, r: &mut Remote, s: Scratch, t: &Thread, inherited: Option<&Thread>) -> Result<()> {
    if let Some(q) = &t.rseq {
        r.call(libc::SYS_rseq, &[q.addr, q.len as u64, 0, q.sig as u64]).step(tid, || format!("remote rseq register at {:#x}", q.addr))?;
    }
    if t.robust_list != 0 {
        r.call(libc::SYS_set_robust_list, &[t.robust_list, t.robust_list_len]).step(tid, || "remote set_robust_list".into())?;
    }
    r.call(libc::SYS_set_tid_address, &[t.clear_child_tid]).step(tid, || "remote set_tid_address".into())?;
    let fresh_disabled = |ss: &SigAltStack| inherited.is_some() && ss.flags & libc::SS_DISABLE as u32 != 0;
    if let Some(ss) = t.sigaltstack.as_ref().filter(|ss| !fresh_disabled(ss)) {
        let mut b = ss.sp.to_le_bytes().to_vec();
        b.extend_from_slice(&(ss.flags as u64 & !(libc::SS_ONSTACK as u64)).to_le_bytes());
        b.extend_from_slice(&ss.size.to_le_bytes());
        let addr = put(pid, s, 0, &b)?;
        r.call(libc::SYS_sigaltstack, &[addr, 0]).step(tid, || "remote sigaltstack".into())?;
    }
    if inherited.is_none_or(|i| i.comm != t.comm) {
        let addr = put_path(pid, s, 0, &t.comm)?;
        r.call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, addr]).step(tid, || "remote PR_SET_NAME".into())?;
    }
    if inherited.is_none_or(|i| i.nice != t.nice) {
        r.call(libc::SYS_setpriority, &[libc::PRIO_PROCESS as u64, 0, t.nice as i64 as u64])
            .step(tid, || format!("remote setpriority({})", t.nice))?;
    }
    if t.timer_slack_ns != 0 && inherited.is_none_or(|i| i.timer_slack_ns != t.timer_slack_ns) {
        r.call(libc::SYS_prctl, &[libc::PR_SET_TIMERSLACK as u64, t.timer_slack_ns]).step(tid, || "remote PR_SET_TIMERSLACK".into())?;
    }
    for (i, sig) in t.pending.iter().enumerate() {
        let signo = u32::from_le_bytes(sig[..4].try_into().unwrap_or_default());
        let addr = put(pid, s, 0, sig)?;
        r.call(libc::SYS_rt_tgsigqueueinfo, &[ns_pid as u64, t.nstid.last().copied().unwrap_or(t.tid) as u64, signo as u64, addr])
            .step(tid, || format!("remote rt_tgsigqueueinfo (signal {i}: {signo})"))?;
    }
    Ok(())
}

/// Where a [`Batch`]'s out buffers start in the scratch, after the
/// table of its largest run.
const BATCH_OUTS_AT: u64 = ((BATCH_RUN + 1) * lpm_sys::remote::BATCH_ENTRY) as u64;
/// Calls run together at most (the scratch holds their table and out
/// buffers).
const BATCH_RUN: usize = 32;
/// Bytes of each call's out buffer: the largest struct the batched calls
/// write (struct sigaction, struct itimerval).
const BATCH_OUT: u64 = 32;

/// Reads from inside a stopped process run together in one resume
/// ([`Remote::batch`]), by runs of [`BATCH_RUN`]: each call gets an out
/// buffer of [`BATCH_OUT`] bytes in the scratch.
struct Batch {
    s: Scratch,
    calls: Vec<lpm_sys::remote::Call>,
}

/// What a [`Batch`]'s calls returned and wrote.
struct BatchDone {
    tid: i32,
    calls: Vec<lpm_sys::remote::Call>,
    res: Vec<i64>,
    outs: Vec<u8>,
}

impl Batch {
    fn new(s: Scratch) -> Batch {
        Batch { s, calls: Vec::new() }
    }

    /// Adds call `nr` whose arguments `args` makes from its out buffer's
    /// address; returns its index.
    fn add(&mut self, nr: i64, args: impl FnOnce(u64) -> [u64; 6]) -> usize {
        let i = self.calls.len();
        let out = self.s.addr + BATCH_OUTS_AT + (i % BATCH_RUN) as u64 * BATCH_OUT;
        self.calls.push(lpm_sys::remote::Call { nr, args: args(out) });
        i
    }

    /// Runs the calls in thread `tid` of `pid`, in order.
    fn run(self, pid: i32, tid: i32, r: &mut Remote) -> Result<BatchDone> {
        if BATCH_OUTS_AT + BATCH_RUN as u64 * BATCH_OUT > self.s.len {
            return Err(EngineError::Incompatible(format!("a batch of remote calls does not fit the scratch's {} bytes", self.s.len)));
        }
        let (mut res, mut outs) = (Vec::with_capacity(self.calls.len()), Vec::with_capacity(self.calls.len() * BATCH_OUT as usize));
        for run in self.calls.chunks(BATCH_RUN) {
            res.extend(r.batch(self.s.addr, run).step(tid, || format!("remote batch of {} calls", run.len()))?);
            let at = outs.len();
            outs.resize(at + run.len() * BATCH_OUT as usize, 0);
            ptrace::read_mem(pid, self.s.addr + BATCH_OUTS_AT, &mut outs[at..]).step(tid, || "read scratch".into())?;
        }
        Ok(BatchDone { tid, calls: self.calls, res, outs })
    }
}

impl BatchDone {
    /// Call `i`'s result, or its error as [`Remote::call`] gives it.
    fn ok(&self, i: usize, what: &str) -> Result<u64> {
        let r = self.res[i];
        if (-4095..0).contains(&r) {
            let e = lpm_sys::Error::Remote { tid: self.tid, nr: self.calls[i].nr, errno: -r as i32 };
            return Err(e).step(self.tid, || what.to_string());
        }
        Ok(r as u64)
    }

    /// Call `i`'s raw result (negative errno on failure).
    fn raw(&self, i: usize) -> i64 {
        self.res[i]
    }

    /// What call `i` wrote in its out buffer.
    fn out(&self, i: usize) -> &[u8] {
        let at = i * BATCH_OUT as usize;
        &self.outs[at..at + BATCH_OUT as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch longer than one run ([`BATCH_RUN`]) gives every call its
    /// own result and out buffer, in order, through the batch code and one
    /// by one alike.
    #[test]
    fn a_batch_of_several_runs_keeps_each_call_apart() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).unwrap();
        ptrace::interrupt(pid).unwrap();
        assert!(matches!(ptrace::wait(pid).unwrap().1, ptrace::Stop::Event(ptrace::EVENT_STOP, _)));
        let regs = ptrace::get_regs(pid).unwrap();
        let ip = crate::stop::syscall_ip(pid, &proc::maps(pid).unwrap()).unwrap();
        let mut r = Remote::new(pid, ip, regs);
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let page = r.call(libc::SYS_mmap, &[0, 4096, 7, flags, u64::MAX, 0]).unwrap();
        ptrace::write_mem(pid, page + 4096 - 64, &lpm_sys::remote::BATCH_CODE).unwrap();
        let s = Scratch { addr: page, len: 4096 - 64 };
        // 70 calls: sigaltstack (its out buffer written), getpid, and a
        // close of a descriptor that does not exist, in turn.
        let run = |r: &mut Remote| {
            let mut b = Batch::new(s);
            let calls: Vec<usize> = (0..70)
                .map(|i| match i % 3 {
                    0 => b.add(libc::SYS_sigaltstack, |out| [0, out, 0, 0, 0, 0]),
                    1 => b.add(libc::SYS_getpid, |_| [0; 6]),
                    _ => b.add(libc::SYS_close, |_| [1000 + i as u64, 0, 0, 0, 0, 0]),
                })
                .collect();
            let done = b.run(pid, pid, r).unwrap();
            for (i, &c) in calls.iter().enumerate() {
                match i % 3 {
                    0 => {
                        assert_eq!(done.ok(c, "sigaltstack").unwrap(), 0);
                        // ss_flags: SS_DISABLE, no alternate stack.
                        assert_eq!(u64_at(done.out(c), 1) & 0xffff_ffff, libc::SS_DISABLE as u64, "call {i}");
                    }
                    1 => assert_eq!(done.ok(c, "getpid").unwrap(), pid as u64, "call {i}"),
                    _ => {
                        assert_eq!(done.raw(c), -(libc::EBADF as i64), "call {i}");
                        assert!(done.ok(c, "close").unwrap_err().to_string().contains("close"));
                    }
                }
            }
        };
        run(&mut r.sibling(pid, regs).with_batch(page + 4096 - 64));
        run(&mut r);
        r.call(libc::SYS_munmap, &[page, 4096]).unwrap();
        r.set_final_regs(&regs).unwrap();
        ptrace::detach(pid, 0).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
